//! The switch to PostgreSQL, step by step: catch up while SQLite takes
//! writes, record the intent with PostgreSQL paused, pause SQLite, apply and
//! check the last entries, retire SQLite, then go live in one PostgreSQL
//! transaction. `switch.rs` decides, from the recorded phase, which of these
//! a run starts at.

use std::time::Instant;

use diesel::Connection;

use super::changelog;
use super::cutover::{as_pg, Cutover};
use super::phase::{self, Phase, Step};
use super::switch_report::{require_is_equal, SwitchReport, Writes, CATCH_UP_PASSES, CAUGHT_UP};
use super::verify::{verify_locked, VerifyReport};
use crate::connection::Backend;
use crate::error::{Error, Refusal, Result};
use crate::maintenance;

/// A switch from the phase `copied`.
pub(crate) fn start(cx: &mut Cutover) -> Result<SwitchReport> {
    if maintenance::read(&mut cx.lite)?.paused {
        return paused_switch(cx);
    }
    let Some(verified) = cx.state.verified_change_seq else {
        return Err(Error::refused(Refusal::OutOfOrder, format!(
            "{} is not paused and no full verify was recorded: run `migrate verify --live --record` first (a \
             switch under traffic checks only the rows changed since it), or pause SQLite for a \
             switch with a full verify",
            cx.sqlite.display()
        )));
    };
    phase::reached(Step::SwitchCatchUp);
    let caught_up = catch_up(cx, verified)?;
    // Ready before the pause, so the pause does not wait for DDL; PostgreSQL
    // is not live yet, so what it logs until then is the tool's own writes.
    cx.pg()?.transaction(changelog::install_pg)?;
    phase::finished(Step::SwitchCatchUp);
    // PostgreSQL refuses writes from the intent on: a server that sees SQLite
    // retired before the go-live transaction holds its writes, whatever
    // instant this process dies at.
    cx.record_with(
        Phase::SwitchingToPostgres(Step::SwitchPause),
        maintenance::pause,
    )?;
    phase::reached(Step::SwitchPause);
    if let Err(e) = maintenance::pause(&mut cx.lite) {
        undo(cx, Writes::Accepted);
        return Err(e);
    }
    let held = Instant::now();
    phase::finished(Step::SwitchPause);
    match last_entries(cx, caught_up.from).and_then(|checked| {
        retire(cx)?;
        go_live(cx)?;
        Ok(checked)
    }) {
        Ok(checked) => {
            let held_ms = held.elapsed().as_millis() as u64;
            log::info!(
                "switched under traffic: {} is live; {} is retired; writes held {held_ms} ms, {} rows rechecked",
                cx.pg_shown(),
                cx.sqlite.display(),
                caught_up.rows + checked
            );
            Ok(SwitchReport {
                held_ms: Some(held_ms),
                verified_rows: Some(caught_up.rows + checked),
                ..SwitchReport::new(Backend::Postgres)
            })
        }
        Err(e) => {
            undo(cx, Writes::Accepted);
            Err(e)
        }
    }
}

/// The switch with SQLite paused by the operator: caught up, then the full
/// verify, then the intent, the retire and PostgreSQL live.
fn paused_switch(cx: &mut Cutover) -> Result<SwitchReport> {
    require_caught_up(cx)?;
    let verify = require_equal(cx)?;
    cx.record_with(
        Phase::SwitchingToPostgres(Step::SwitchRetire),
        maintenance::pause,
    )?;
    let done = retire(cx).and_then(|()| go_live(cx));
    if let Err(e) = done {
        undo(cx, Writes::Paused);
        return Err(e);
    }
    log::info!(
        "switched: {} is live; {} is retired",
        cx.pg_shown(),
        cx.sqlite.display()
    );
    Ok(SwitchReport {
        verify,
        ..SwitchReport::new(Backend::Postgres)
    })
}

/// A rerun after a switch to PostgreSQL was interrupted: SQLite paused again
/// (no-op when it is retired), the last entries applied and checked, then the
/// steps that remain.
pub(crate) fn finish(cx: &mut Cutover) -> Result<SwitchReport> {
    maintenance::pause(&mut cx.pg)?;
    maintenance::pause(&mut cx.lite)?;
    let mut report = SwitchReport::new(Backend::Postgres);
    match cx.state.verified_change_seq {
        Some(from) => report.verified_rows = Some(last_entries(cx, from)?),
        None => {
            let mark = cx.state.mark_change_seq.unwrap_or(0);
            last_entries(cx, mark)?;
            report.verify = require_equal(cx)?;
        }
    }
    retire(cx)?;
    go_live(cx)?;
    Ok(report)
}

/// Where the passes before the pause left off.
struct CaughtUp {
    /// The change-log position compared up to: the paused pass compares past it.
    from: i64,
    /// Rows compared.
    rows: u64,
}

fn catch_up(cx: &mut Cutover, verified: i64) -> Result<CaughtUp> {
    let mut done = CaughtUp {
        from: verified,
        rows: 0,
    };
    for _ in 0..CATCH_UP_PASSES {
        let pass = checked_pass(cx, done.from)?;
        done = CaughtUp {
            from: pass.upto,
            rows: done.rows + pass.rows,
        };
        if pass.entries <= CAUGHT_UP {
            break;
        }
    }
    Ok(done)
}

/// The step `switch.last_entries`: SQLite paused, the last pass and the
/// check of every row named past `from`. Returns the rows compared.
fn last_entries(cx: &mut Cutover, from: i64) -> Result<u64> {
    // A rerun from a later step repeats this one (nothing is lost by applying
    // an empty pass again) without moving the recorded step back.
    if !cx.phase()?.reached(Step::SwitchLastEntries) {
        cx.record(Phase::SwitchingToPostgres(Step::SwitchLastEntries))?;
    }
    phase::reached(Step::SwitchLastEntries);
    let pass = checked_pass(cx, from)?;
    phase::finished(Step::SwitchLastEntries);
    Ok(pass.rows)
}

/// The step `switch.retire`: SQLite retired, then checked again: a write
/// that slipped in after the last pass (someone resumed SQLite by hand) is
/// caught before PostgreSQL goes live, and a rerun applies it.
fn retire(cx: &mut Cutover) -> Result<()> {
    cx.record(Phase::SwitchingToPostgres(Step::SwitchRetire))?;
    phase::reached(Step::SwitchRetire);
    let shown = cx.pg_shown();
    maintenance::retire(&mut cx.lite, &shown)?;
    require_caught_up(cx)?;
    phase::finished(Step::SwitchRetire);
    Ok(())
}

/// The step `switch.go_live`: one PostgreSQL transaction installs its change
/// log (cleared of the tool's own writes), starts the way back's positions,
/// records `switched` and makes PostgreSQL live. Nothing else can see
/// PostgreSQL live without the phase, or the phase without it.
fn go_live(cx: &mut Cutover) -> Result<()> {
    phase::reached(Step::SwitchGoLive);
    cx.record_with(Phase::Switched, |any| {
        let pg = as_pg(any)?;
        changelog::install_pg(pg)?;
        changelog::clear_pg(pg)?;
        let from = changelog::pg_position(pg)?;
        super::state::start_way_back(pg, from)?;
        maintenance::make_live(any)
    })?;
    phase::finished(Step::SwitchGoLive);
    Ok(())
}

/// A switch to PostgreSQL that failed before going live: SQLite live again
/// (or paused, as the operator had it), then the phase back to `copied` with
/// PostgreSQL's pause lifted, as before the switch. In that order: killed
/// between the two, the intent is still recorded, and a rerun of either
/// switch ends it. Never when the phase cannot be read or
/// says PostgreSQL went live (a commit whose answer was lost): making SQLite
/// live then could leave both sides taking writes.
fn undo(cx: &mut Cutover, writes: Writes) {
    match cx.reload() {
        Ok(Phase::SwitchingToPostgres(step)) => {
            if let Err(e) = restore_sqlite(cx, writes, step) {
                log::error!(
                    "the switch failed and undoing it failed too ({e}): run `migrate switch --to \
                     postgres` to finish it, or `migrate switch --to sqlite` to undo it"
                );
            }
        }
        Ok(phase) => log::warn!("the switch failed; the cutover is {phase}"),
        Err(e) => log::error!(
            "the switch failed and its phase cannot be read ({e}); {} stays refusing writes: run \
             `migrate status`, then `migrate switch --to postgres` to finish it",
            cx.sqlite.display()
        ),
    }
}

fn restore_sqlite(cx: &mut Cutover, writes: Writes, step: Step) -> Result<()> {
    maintenance::make_live(&mut cx.lite)?;
    if writes == Writes::Paused {
        maintenance::pause(&mut cx.lite)?;
    }
    cx.record_with(Phase::Copied, maintenance::make_live)?;
    log::warn!(
        "the switch to PostgreSQL was undone at {step}: {} is {} again",
        cx.sqlite.display(),
        match writes {
            Writes::Accepted => "live",
            Writes::Paused => "paused, not retired,",
        }
    );
    Ok(())
}

/// `switch --to sqlite` while a switch to PostgreSQL stands interrupted at
/// `step`: PostgreSQL never took a write, so SQLite becomes live again.
pub(crate) fn undo_interrupted(cx: &mut Cutover, step: Step) -> Result<SwitchReport> {
    restore_sqlite(cx, Writes::Accepted, step)?;
    Ok(SwitchReport {
        undid: Some(step),
        ..SwitchReport::new(Backend::Sqlite)
    })
}

/// The passes' result: the position applied, the rows compared, the entries applied.
struct Checked {
    upto: i64,
    rows: u64,
    entries: u64,
}

/// One sync pass that also compares the rows named past `from`, in the same
/// snapshot. Refuses when any row differs.
fn checked_pass(cx: &mut Cutover, from: i64) -> Result<Checked> {
    let started = Instant::now();
    let (sqlite, postgres) = (cx.sqlite, cx.postgres);
    let src = &mut cx.src;
    // PostgreSQL is paused from the switch's intent on: the pass's own
    // writes go through the pause, every other writer's are refused.
    let pass = maintenance::write_while_paused(&mut cx.pg, |any| {
        super::sync::pass(as_pg(any)?, src, sqlite, postgres, true, Some(from))
    })?;
    let recheck = pass.recheck.unwrap_or_default();
    log::info!(
        "switch: {} entries applied, {} rows compared in {:?}",
        pass.report.entries,
        recheck.rows,
        started.elapsed()
    );
    if !recheck.report.is_equal() {
        return Err(Error::refused(
            Refusal::Differs,
            format!(
                "the rows changed since the last full verify differ between the two sides, so the \
             switch would lose or change data; SQLite is live as before. {}",
                recheck.report.describe()
            ),
        ));
    }
    cx.reload()?;
    Ok(Checked {
        upto: pass.report.change_seq,
        rows: recheck.rows,
        entries: pass.report.entries,
    })
}

/// SQLite paused, and every entry of its log applied by sync.
fn require_caught_up(cx: &mut Cutover) -> Result<()> {
    if !maintenance::read(&mut cx.lite)?.paused {
        return Err(Error::refused(
            Refusal::OutOfOrder,
            format!(
            "{} is not paused: run `migrate pause --sqlite …`, then `migrate sync`, then switch",
            cx.sqlite.display()
        ),
        ));
    }
    let position = changelog::sqlite_position(cx.src.conn())?;
    let mark = cx.state.mark_change_seq.unwrap_or(0);
    if position > mark {
        return Err(Error::refused(
            Refusal::OutOfOrder,
            format!(
            "{} has changes PostgreSQL does not (change log at {position}, applied up to {mark}): \
             run `migrate sync` first, then switch again",
            cx.sqlite.display()
        ),
        ));
    }
    Ok(())
}

/// The full verify, required equal.
fn require_equal(cx: &mut Cutover) -> Result<VerifyReport> {
    let report = verify_locked(cx.sqlite, cx.postgres)?;
    require_is_equal(&report)?;
    Ok(report)
}
