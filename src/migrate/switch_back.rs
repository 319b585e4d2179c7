//! The switch back: PostgreSQL's last changes into SQLite, then SQLite live.
//!
//! Its steps, each recorded before it acts (see `docs/migrate-redesign.md`):
//! `switch_back.catch_up` (passes while PostgreSQL takes writes),
//! `switch_back.pause` (the intent and PostgreSQL's pause in one transaction),
//! `switch_back.last_entries` (every writer locked out, the last pass and the
//! check), `switch_back.retire` (PostgreSQL retired in the transaction that
//! records it: the point of no return), `switch_back.go_live` (SQLite live),
//! `switch_back.record` (`rolled_back`) and `switch_back.remove_log`.

use std::time::Instant;

use super::changelog;
use super::cutover::{as_pg, Cutover};
use super::phase::{self, Phase, Step};
use super::rollback::{self, Reading};
use super::switch_report::{require_is_equal, SwitchReport, Writes, CATCH_UP_PASSES, CAUGHT_UP};
use super::verify::{verify_locked, VerifyReport};
use crate::connection::{AnyConnection, Backend};
use crate::error::{Error, Refusal, Result};
use crate::maintenance;

/// Which verify the switch back runs before retiring PostgreSQL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verify {
    /// Every row (`migrate verify`).
    Full,
    /// The rows PostgreSQL's log named since SQLite was last found equal (or
    /// since `from`); the full verify when that horizon is unknown.
    Since(Option<i64>),
}

/// A switch back from the phase `switched`.
pub(crate) fn start(cx: &mut Cutover) -> Result<SwitchReport> {
    let operator_paused = maintenance::read(&mut cx.pg)?.paused;
    let writes = if operator_paused {
        Writes::Paused
    } else {
        Writes::Accepted
    };
    let (check, prechecked) = if operator_paused {
        (Verify::Full, 0)
    } else {
        phase::reached(Step::BackCatchUp);
        let pre = catch_up(cx)?;
        phase::finished(Step::BackCatchUp);
        (Verify::Since(pre.from), pre.rows)
    };
    phase::reached(Step::BackPause);
    cx.record_with(
        Phase::SwitchingToSqlite(Step::BackPause),
        maintenance::pause,
    )?;
    let held = Instant::now();
    phase::finished(Step::BackPause);
    let back = match last_entries(cx, check) {
        Ok(back) => back,
        Err(e) => {
            undo_after_failure(cx, writes);
            return Err(e);
        }
    };
    let mut report = go_live(cx)?;
    report.verify = back.verify;
    if !operator_paused {
        report.held_ms = Some(held.elapsed().as_millis() as u64);
        report.verified_rows = back.verified_rows.map(|rows| rows + prechecked);
    }
    Ok(report)
}

/// A rerun after a switch back was interrupted at `step`.
pub(crate) fn finish(cx: &mut Cutover, step: Step) -> Result<SwitchReport> {
    if step == Step::BackPause || step == Step::BackLastEntries {
        // PostgreSQL was paused in the step's own transaction; pausing again
        // changes nothing, and the last pass is safe to repeat.
        maintenance::pause(&mut cx.pg)?;
        let back = last_entries(cx, Verify::Since(None))?;
        let mut report = go_live(cx)?;
        report.verify = back.verify;
        report.verified_rows = back.verified_rows;
        return Ok(report);
    }
    go_live(cx)
}

/// `switch --to postgres` while a switch back stands interrupted at `step`:
/// before the retire PostgreSQL is made live again, in the transaction that
/// records `switched`; past it, SQLite may already take writes, so it refuses.
pub(crate) fn undo(cx: &mut Cutover, step: Step) -> Result<SwitchReport> {
    if matches!(step, Step::BackPause | Step::BackLastEntries) {
        cx.record_with(Phase::Switched, maintenance::make_live)?;
        log::warn!(
            "the switch back was undone at {step}: {} is live again",
            cx.pg_shown()
        );
        return Ok(SwitchReport {
            undid: Some(step),
            ..SwitchReport::new(Backend::Postgres)
        });
    }
    Err(Error::refused(
        Refusal::OutOfOrder,
        format!(
            "a switch back to SQLite is past its point of no return (interrupted at {step}: \
         PostgreSQL is retired and SQLite may take writes); run `migrate switch --to sqlite` to \
         finish it"
        ),
    ))
}

/// A switch back that failed before the retire: PostgreSQL live again (or
/// paused, as the operator had it) in the transaction that records `switched`.
fn undo_after_failure(cx: &mut Cutover, writes: Writes) {
    let undone = match cx.reload() {
        Ok(Phase::SwitchingToSqlite(Step::BackPause | Step::BackLastEntries)) => {
            cx.record_with(Phase::Switched, |any| match writes {
                Writes::Accepted => maintenance::make_live(any),
                Writes::Paused => Ok(()),
            })
        }
        Ok(phase) => {
            log::error!("the switch back failed and the cutover is {phase}: run `migrate status`");
            return;
        }
        Err(e) => Err(e),
    };
    match undone {
        Ok(()) => log::warn!(
            "switch back failed: {} is {} again",
            cx.pg_shown(),
            match writes {
                Writes::Accepted => "live",
                Writes::Paused => "paused, not retired,",
            }
        ),
        Err(e) => log::error!(
            "the switch back failed, and undoing it failed too ({e}); {} stays paused: run \
             `migrate switch --to postgres` to undo it, or `migrate switch --to sqlite` to finish it",
            cx.pg_shown()
        ),
    }
}

/// Where the passes before the pause left off.
struct CaughtUp {
    /// The horizon the paused check starts from (`None`: not known, full verify).
    from: Option<i64>,
    rows: u64,
}

/// The switch back's work before its pause, while PostgreSQL still takes
/// writes: passes of the way back, each comparing the rows PostgreSQL's log
/// named since the one before (the first: since the last verify) in its own
/// snapshot, repeated as on the way there until one applies at most
/// [`CAUGHT_UP`] entries, so the paused pass covers only a few milliseconds
/// of writes (measured at 20,000 sessions under load: one pass left the
/// paused one 1,116 entries and 248 ms). Rows written by transactions at or
/// past a pass's horizon may differ there (in flight); their entries stay,
/// and the next check covers them. Refuses, with nothing paused, when
/// anything else differs.
fn catch_up(cx: &mut Cutover) -> Result<CaughtUp> {
    let Some(mut from) = cx.state.rollback_verified_horizon else {
        return Ok(CaughtUp {
            from: None,
            rows: 0,
        });
    };
    let mut rows = 0;
    for _ in 0..CATCH_UP_PASSES {
        let started = Instant::now();
        let pass = checked_pass(cx, from)?;
        log::info!(
            "switch back: {} entries applied, {} rows compared in {:?}",
            pass.entries,
            pass.rows,
            started.elapsed()
        );
        (from, rows) = (pass.horizon.max(from), rows + pass.rows);
        if pass.entries <= CAUGHT_UP {
            break;
        }
    }
    Ok(CaughtUp {
        from: Some(from),
        rows,
    })
}

struct Checked {
    horizon: i64,
    rows: u64,
    entries: u64,
}

/// One pass of the way back and the rows named past `from` compared, in one snapshot.
fn checked_pass(cx: &mut Cutover, from: i64) -> Result<Checked> {
    let (lite, src) = (&mut cx.lite, &mut cx.src);
    let (report, rows, horizon, entries) = as_pg(&mut cx.pg)?
        .build_transaction()
        .repeatable_read()
        .run(|pg| {
            let h = changelog::pg_snapshot_horizon(pg)?;
            let passed = rollback::pass(pg, lite, Reading::Online)?;
            log::debug!("switch back, before the pause: {:?}", passed.report);
            let mut check = rollback::verify_named(pg, src, from)?;
            check
                .report
                .settle_in_flight(&changelog::pg_changes(pg, h, None)?);
            Ok::<_, Error>((check.report, check.rows, h, passed.report.entries))
        })?;
    if !report.is_equal_but_in_flight() {
        return Err(Error::refused(
            Refusal::Differs,
            format!(
                "the rows changed on PostgreSQL since the last verify differ from SQLite's ({}); \
                 nothing was paused, PostgreSQL stays live",
                report.describe()
            ),
        ));
    }
    Ok(Checked {
        horizon,
        rows,
        entries,
    })
}

/// What the last pass checked.
struct Back {
    verify: VerifyReport,
    verified_rows: Option<u64>,
}

/// The steps `switch_back.last_entries` and `switch_back.retire`: with every
/// PostgreSQL writer locked out, the last pass and the check in one snapshot;
/// then PostgreSQL retired in the transaction that records the retire, which
/// also makes sure nothing was written since the pass.
fn last_entries(cx: &mut Cutover, check: Verify) -> Result<Back> {
    cx.record(Phase::SwitchingToSqlite(Step::BackLastEntries))?;
    phase::reached(Step::BackLastEntries);
    let (lite, src) = (&mut cx.lite, &mut cx.src);
    let (passed, position, bounded) = as_pg(&mut cx.pg)?
        .build_transaction()
        .repeatable_read()
        .run(|pg| {
            rollback::lock_writers(pg)?;
            let passed = rollback::pass(pg, lite, Reading::Locked)?;
            let position = changelog::pg_position(pg)?;
            let bounded = match check {
                Verify::Since(from) => match from.or(passed.state.rollback_verified_horizon) {
                    Some(from) => Some(rollback::verify_named(pg, src, from)?),
                    None => None,
                },
                Verify::Full => None,
            };
            Ok::<_, Error>((passed, position, bounded))
        })?;
    log::info!("switch back: last pass {:?}", passed.report);
    let (verify, verified_rows) = match bounded {
        Some(check) => (check.report, Some(check.rows)),
        None => {
            if check != Verify::Full {
                log::warn!(
                    "switch back: no verified horizon recorded (a log installed by an older \
                     version): the full verify runs while writes are held"
                );
            }
            (verify_locked(cx.sqlite, cx.postgres)?, None)
        }
    };
    require_is_equal(&verify)?;
    phase::finished(Step::BackLastEntries);
    phase::reached(Step::BackRetire);
    let shown = cx.sqlite_shown();
    let pg_shown = cx.pg_shown();
    cx.record_with(Phase::SwitchingToSqlite(Step::BackRetire), |any| {
        maintenance::retire(any, &shown)?;
        let now = changelog::pg_position(as_pg(any)?)?;
        if now > position {
            return Err(Error::refused(
                Refusal::Moved,
                format!(
                    "{pg_shown} was written to during the switch (change log at {now}, {position} \
                 applied): switch again"
                ),
            ));
        }
        Ok(())
    })?;
    phase::finished(Step::BackRetire);
    Ok(Back {
        verify,
        verified_rows,
    })
}

/// Past the retire: SQLite live, the phase `rolled_back`, SQLite's log removed.
fn go_live(cx: &mut Cutover) -> Result<SwitchReport> {
    if cx.phase()? != Phase::SwitchingToSqlite(Step::BackGoLive) {
        cx.record(Phase::SwitchingToSqlite(Step::BackGoLive))?;
    }
    phase::reached(Step::BackGoLive);
    maintenance::make_live(&mut cx.lite)?;
    phase::finished(Step::BackGoLive);
    phase::reached(Step::BackRecord);
    cx.record(Phase::RolledBack)?;
    phase::finished(Step::BackRecord);
    remove_log(cx);
    log::info!(
        "switched back: {} is live; {} is retired",
        cx.sqlite.display(),
        cx.pg_shown()
    );
    Ok(SwitchReport::new(Backend::Sqlite))
}

/// The step `switch_back.remove_log`: SQLite serves without a migration in
/// view, where its log would only grow. A new cutover starts with `copy
/// --truncate --yes`, which installs it again. A failure is only a warning:
/// SQLite is live, and a rerun of the switch removes it.
pub(crate) fn remove_log(cx: &mut Cutover) {
    phase::reached(Step::BackRemoveLog);
    let removed = match &mut cx.lite {
        AnyConnection::Sqlite(c) => changelog::uninstall_sqlite(c),
        AnyConnection::Postgres(_) => Ok(()),
    };
    if let Err(e) = removed {
        log::warn!(
            "{} is live, but removing its change log failed ({e}); it only grows: run \
             `migrate switch --to sqlite` again to remove it",
            cx.sqlite.display()
        );
    }
    phase::finished(Step::BackRemoveLog);
}
