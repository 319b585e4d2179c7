//! The switch: which database is live, moved only when the other side is paused, caught up and equal.

use std::path::Path;
use std::time::{Duration, Instant};

use diesel::prelude::*;

use super::changelog;
use super::lock::MigrationLock;
use super::pause;
use super::rollback::{self, Reading};
use super::source::{source_name, Source};
use super::state::{self, State};
use super::verify::{verify_locked, VerifyReport};
use crate::connection::{AnyConnection, Backend, DatabaseUrl};
use crate::error::{Error, Result};

/// How long a switch waits for a follower's pass to let go of the migration lock.
const FOLLOWER_TURN: Duration = Duration::from_secs(10);

/// What [`switch`] did.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct SwitchReport {
    /// The backend now live.
    pub live: Backend,
    /// The verification the switch required.
    pub verify: VerifyReport,
    /// The switch had already happened; this run only redid its idempotent steps.
    pub already_switched: bool,
    /// How long the old side refused writes while the switch ran (from its
    /// pause by the switch to the new side going live); `None` when the
    /// operator had paused it before.
    pub held_ms: Option<u64>,
    /// Rows checked by the bounded verify of a switch under traffic (rows
    /// named by the change log since the last full verify); `None` when the
    /// full verify ran instead.
    pub verified_rows: Option<u64>,
}

/// Moves the service to `to`: PostgreSQL (after copy and sync) or back to SQLite.
///
/// To PostgreSQL it requires SQLite paused, SQLite's change log applied up to
/// its last entry, and verify equal; it then installs PostgreSQL's change log
/// (for a way back), records the phase `switched`, retires the SQLite file
/// (paused for good, naming the masked PostgreSQL URL) and makes PostgreSQL
/// live.
///
/// Back to SQLite it applies the last of PostgreSQL's change log with every
/// writer locked out, requires SQLite equal, records `rolled_back`, retires
/// PostgreSQL, makes SQLite live and removes SQLite's change log. With
/// PostgreSQL paused by the operator it runs the full verify, and a failure
/// leaves PostgreSQL paused. With PostgreSQL live (under traffic, a reverse
/// follower keeping SQLite close behind) it pauses PostgreSQL itself, waiting
/// up to 10 s for the follower's pass to end, and verifies only the rows
/// PostgreSQL's log named since SQLite was last found equal;
/// [`SwitchReport::held_ms`] says how long writes were held, and a failure
/// leaves PostgreSQL live and accepting writes.
///
/// Each step is idempotent and the phase is recorded first: a switch
/// interrupted half-way finishes when run again.
///
/// ```no_run
/// use interview_store::migrate::switch;
/// use interview_store::Backend;
/// let report = switch("interview.db".as_ref(), &"postgres://app@db/interview".parse()?, Backend::Postgres)?;
/// assert_eq!(report.live, Backend::Postgres);
/// # Ok::<(), interview_store::Error>(())
/// ```
pub fn switch(sqlite: &Path, postgres: &DatabaseUrl, to: Backend) -> Result<SwitchReport> {
    // The source first: a missing file must not leave PostgreSQL set up for nothing.
    crate::connection::require_sqlite_file(sqlite)?;
    // A running follower holds the lock for one batch at a time: take turns with it.
    let _lock = MigrationLock::acquire_waiting(postgres, FOLLOWER_TURN)?;
    let mut pg = state::connect(postgres)?;
    let st = state::load(&mut pg)?;
    let st = st.ok_or_else(|| {
        Error::Refused(format!(
            "nothing was copied into {} yet: run `migrate copy` and `migrate sync` first",
            postgres.masked()
        ))
    })?;
    if st.source != source_name(sqlite) {
        return Err(Error::Refused(format!(
            "{} holds a copy of {}, not of {}",
            postgres.masked(),
            st.source,
            source_name(sqlite)
        )));
    }
    match to {
        Backend::Postgres => to_postgres(sqlite, postgres, &mut pg, &st),
        Backend::Sqlite => to_sqlite(sqlite, postgres, &mut pg, &st),
    }
}

fn to_postgres(
    sqlite: &Path,
    postgres: &DatabaseUrl,
    pg: &mut PgConnection,
    st: &State,
) -> Result<SwitchReport> {
    let already_switched = match st.phase.as_str() {
        "copied" => false,
        "switched" => true,
        "copying" => {
            return Err(Error::Refused(
                "the bulk copy has not finished: run `migrate copy` again, then `migrate sync`"
                    .into(),
            ))
        }
        _ => {
            return Err(Error::Refused(format!(
                "{} is retired since the rollback to SQLite; start again with `migrate copy --truncate --yes`",
                postgres.masked()
            )))
        }
    };
    let mut lite = pause::open_sqlite(sqlite)?;
    if !already_switched && !pause::sqlite_paused(sqlite)? {
        return online_to_postgres(sqlite, postgres, pg, st, &mut lite);
    }
    if !already_switched {
        require_sqlite_caught_up(sqlite, st)?;
    }
    let report = require_equal(sqlite, postgres)?;
    // Retired first, then checked again: a write that slipped in after the
    // checks (someone resumed SQLite meanwhile) is caught before PostgreSQL
    // goes live, and SQLite is left paused, nothing lost.
    pause::retire(&mut lite, &postgres.masked())?;
    if !already_switched {
        if let Err(e) = require_sqlite_caught_up(sqlite, st) {
            pause::make_live(&mut lite)?;
            pause::pause(&mut lite)?;
            return Err(e);
        }
        pg.transaction(|pg| {
            changelog::install_pg(pg)?;
            // Left by an earlier switch under traffic that did not go through.
            changelog::clear_pg(pg)?;
            let from = changelog::pg_position(pg)?;
            state::mark_switched(pg, from)
        })?;
    }
    pause::make_live(&mut pause::open_pg(postgres)?)?;
    log::info!(
        "switched: {} is live; {} is retired",
        postgres.masked(),
        sqlite.display()
    );
    Ok(SwitchReport {
        live: Backend::Postgres,
        verify: report,
        already_switched,
        held_ms: None,
        verified_rows: None,
    })
}

/// The switch under traffic: SQLite is paused here, for as short as it takes
/// to apply the last log entries, compare the rows they name, retire SQLite
/// and make PostgreSQL live. Writes arriving in that window are refused by the
/// database and held by the servers (see `INTERVIEW_PAUSE_WAIT_MS`), not
/// failed. Any failure resumes SQLite: the service never stays paused because
/// a switch did not go through.
///
/// Before the pause, with writes still flowing, the switch catches up itself
/// and compares the rows written since the last full verify; the pause then
/// covers only what was written during that catch-up. The hold therefore
/// follows the write rate over a few milliseconds, not the database's size.
fn online_to_postgres(
    sqlite: &Path,
    postgres: &DatabaseUrl,
    pg: &mut PgConnection,
    st: &State,
    lite: &mut crate::AnyConnection,
) -> Result<SwitchReport> {
    let Some(verified) = st.verified_change_seq else {
        return Err(Error::Refused(format!(
            "{} is not paused and no full verify was recorded: run `migrate verify` first (a \
             switch under traffic checks only the rows changed since it), or pause SQLite for a \
             switch with a full verify",
            sqlite.display()
        )));
    };
    let mut src = Source::open(sqlite)?;
    let mut live_pg = pause::open_pg(postgres)?;
    let mut from = verified;
    let mut rows = 0;
    for _ in 0..CATCH_UP_PASSES {
        let (upto, checked, entries) = checked_pass(sqlite, postgres, pg, &mut src, from)?;
        (from, rows) = (upto, rows + checked);
        if entries <= CAUGHT_UP {
            break;
        }
    }
    // Ready before the pause, so the pause does not wait for DDL; PostgreSQL is
    // not live yet, so what it logs until the switch is the tool's own writes.
    pg.transaction(changelog::install_pg)?;
    pause::pause(lite)?;
    let held = std::time::Instant::now();
    let mut steps = Vec::new();
    let mut step = |name: &'static str, since: &mut std::time::Instant| {
        steps.push((name, since.elapsed()));
        *since = std::time::Instant::now();
    };
    let mut t = held;
    let result = checked_pass(sqlite, postgres, pg, &mut src, from).and_then(|(_, checked, _)| {
        step("last entries", &mut t);
        pause::retire(lite, &postgres.masked())?;
        step("retire", &mut t);
        pg.transaction(|pg| {
            changelog::install_pg(pg)?;
            changelog::clear_pg(pg)?;
            let from = changelog::pg_position(pg)?;
            state::mark_switched(pg, from)
        })?;
        step("record", &mut t);
        pause::make_live(&mut live_pg)?;
        step("live", &mut t);
        Ok(checked)
    });
    log::info!("switch: writes held for {steps:?}");
    let held_ms = held.elapsed().as_millis() as u64;
    let rows = match result {
        Ok(checked) => rows + checked,
        Err(e) => {
            if let Err(resume) = pause::make_live(lite) {
                log::error!(
                    "the switch failed and SQLite could not be resumed ({resume}): run \
                     `migrate resume --sqlite {}`",
                    sqlite.display()
                );
            }
            return Err(e);
        }
    };
    log::info!(
        "switched under traffic: {} is live; {} is retired; writes held {held_ms} ms, {rows} rows rechecked",
        postgres.masked(),
        sqlite.display()
    );
    Ok(SwitchReport {
        live: Backend::Postgres,
        verify: VerifyReport::default(),
        already_switched: false,
        held_ms: Some(held_ms),
        verified_rows: Some(rows),
    })
}

/// Catch-up passes before the pause, at most: each covers what was written
/// during the one before, so they shrink as long as a pass outruns the
/// writers. The first one also compares every row written since the full
/// verify, which can take seconds (measured: 91,196 rows at 200,000 sessions
/// under load): three passes then still left the paused one 0.6 s of work.
const CATCH_UP_PASSES: usize = 10;

/// Entries a pass may leave for the paused one.
const CAUGHT_UP: u64 = 50;

/// One sync pass that also compares the rows named past `from`, in the same
/// snapshot: the position applied, the rows compared, the entries applied.
/// Refuses when any row differs.
fn checked_pass(
    sqlite: &Path,
    postgres: &DatabaseUrl,
    pg: &mut PgConnection,
    src: &mut Source,
    from: i64,
) -> Result<(i64, u64, u64)> {
    let started = std::time::Instant::now();
    let pass =
        pg.transaction(|pg| super::sync::pass(pg, src, sqlite, postgres, true, Some(from)))?;
    let recheck = pass.recheck.unwrap_or_default();
    log::info!(
        "switch: {} entries applied, {} rows compared in {:?}",
        pass.report.entries,
        recheck.rows,
        started.elapsed()
    );
    if !recheck.is_equal() {
        return Err(Error::Refused(format!(
            "the rows changed since the last full verify differ between the two sides, so the \
             switch would lose or change data; SQLite is live as before. {}",
            recheck.describe()
        )));
    }
    Ok((pass.report.change_seq, recheck.rows, pass.report.entries))
}

/// SQLite paused, and every entry of its log applied by sync.
fn require_sqlite_caught_up(sqlite: &Path, st: &State) -> Result<()> {
    if !pause::sqlite_paused(sqlite)? {
        return Err(Error::Refused(format!(
            "{} is not paused: run `migrate pause --sqlite …`, then `migrate sync`, then switch",
            sqlite.display()
        )));
    }
    let mut src = Source::open(sqlite)?;
    let position = changelog::sqlite_position(src.conn())?;
    let mark = st.mark_change_seq.unwrap_or(0);
    if position > mark {
        return Err(Error::Refused(format!(
            "{} has changes PostgreSQL does not (change log at {position}, applied up to {mark}): \
             run `migrate sync` first",
            sqlite.display()
        )));
    }
    Ok(())
}

fn require_equal(sqlite: &Path, postgres: &DatabaseUrl) -> Result<VerifyReport> {
    let report = verify_locked(sqlite, postgres)?;
    require_is_equal(&report)?;
    Ok(report)
}

fn require_is_equal(report: &VerifyReport) -> Result<()> {
    if !report.is_equal() {
        return Err(Error::Refused(format!(
            "verify found {} difference(s) between the two sides, so the switch would lose or \
             change data; run `migrate verify` to see them",
            report.sessions.differences
                + report.messages.differences
                + report.drafts.differences
                + report.idempotency_keys.differences
        )));
    }
    Ok(())
}

fn to_sqlite(
    sqlite: &Path,
    postgres: &DatabaseUrl,
    pg: &mut PgConnection,
    st: &State,
) -> Result<SwitchReport> {
    match st.phase.as_str() {
        "switched" => {}
        "rolled_back" => {
            // Interrupted after the phase was recorded: redo the idempotent steps.
            let report = require_equal(sqlite, postgres)?;
            let mut lite = pause::open_sqlite(sqlite)?;
            pause::retire(
                &mut pause::open_pg(postgres)?,
                &sqlite.display().to_string(),
            )?;
            pause::make_live(&mut lite)?;
            uninstall_sqlite_log(&mut lite)?;
            return Ok(switched_back(sqlite, postgres, report, true, None, None));
        }
        _ => {
            return Err(Error::Refused(format!(
                "the service never moved to {} (phase {}): SQLite is live already",
                postgres.masked(),
                st.phase
            )))
        }
    }
    let mut maint = pause::open_pg(postgres)?;
    if crate::maintenance::read(&mut maint)?.paused {
        // Paused by the operator: the final pass and the full verify; on a
        // failure PostgreSQL stays paused, as the operator left it.
        let back = switch_back(sqlite, postgres, pg, &mut maint, Verify::Full, None)
            .inspect_err(|_| stay_on_postgres(postgres, pg, &mut maint, Writes::Paused))?;
        return Ok(switched_back(
            sqlite,
            postgres,
            back.verify,
            false,
            None,
            None,
        ));
    }
    // Under traffic (a reverse follower usually keeps SQLite a moment
    // behind): writes are held from here until SQLite is live.
    let (from, checked) = precheck_back(sqlite, pg, st.rollback_verified_horizon)?;
    let held = Instant::now();
    let back = pause::pause(&mut maint).and_then(|()| {
        switch_back(
            sqlite,
            postgres,
            pg,
            &mut maint,
            Verify::SinceVerified,
            from,
        )
    });
    match back {
        Ok(back) => Ok(switched_back(
            sqlite,
            postgres,
            back.verify,
            false,
            Some(held.elapsed().as_millis() as u64),
            back.verified_rows.map(|rows| rows + checked),
        )),
        Err(e) => {
            stay_on_postgres(postgres, pg, &mut maint, Writes::Accepted);
            Err(e)
        }
    }
}

/// The switch back's work before its pause, while PostgreSQL still takes
/// writes: passes of the way back, each comparing the rows PostgreSQL's log
/// named since the one before (the first: since the last verify) in its own
/// snapshot, repeated as on the way there until one applies at most
/// [`CAUGHT_UP`] entries, so the paused pass covers only a few milliseconds
/// of writes (measured at 20,000 sessions under load: one pass left the
/// paused one 1,116 entries and 248 ms). Rows written by transactions at or
/// past a pass's horizon may differ there (in flight); their entries stay,
/// and the next check covers them. Returns the horizon the paused check
/// starts from and the rows compared; refuses, with nothing paused, when
/// anything else differs.
fn precheck_back(
    sqlite: &Path,
    pg: &mut PgConnection,
    verified: Option<i64>,
) -> Result<(Option<i64>, u64)> {
    let Some(mut from) = verified else {
        return Ok((None, 0));
    };
    let mut lite = pause::open_sqlite(sqlite)?;
    let mut src = Source::open(sqlite)?;
    let mut rows = 0;
    for _ in 0..CATCH_UP_PASSES {
        let started = Instant::now();
        let (horizon, checked, entries) = checked_pass_back(pg, &mut lite, &mut src, from)?;
        log::info!(
            "switch back: {entries} entries applied, {checked} rows compared in {:?}",
            started.elapsed()
        );
        (from, rows) = (horizon.max(from), rows + checked);
        if entries <= CAUGHT_UP {
            break;
        }
    }
    Ok((Some(from), rows))
}

/// One pass of the way back and the rows named past `from` compared, in one
/// snapshot: the pass's horizon, the rows compared, the entries applied.
fn checked_pass_back(
    pg: &mut PgConnection,
    lite: &mut AnyConnection,
    src: &mut Source,
    from: i64,
) -> Result<(i64, u64, u64)> {
    let (report, rows, h, entries) = pg.build_transaction().repeatable_read().run(|pg| {
        let h = changelog::pg_snapshot_horizon(pg)?;
        let passed = rollback::pass(pg, lite, Reading::Online)?;
        log::debug!("switch back, before the pause: {:?}", passed.report);
        let (mut report, rows) = rollback::verify_named(pg, src, from)?;
        report.settle_in_flight(&changelog::pg_changes(pg, h, None)?);
        Ok::<_, Error>((report, rows, h, passed.report.entries))
    })?;
    if !report.is_equal_but_in_flight() {
        return Err(Error::Refused(format!(
            "the rows changed on PostgreSQL since the last verify differ from SQLite's ({} \
             difference(s): {}); nothing was paused, PostgreSQL stays live",
            report.sessions.differences
                + report.messages.differences
                + report.drafts.differences
                + report.idempotency_keys.differences,
            report
                .differences
                .iter()
                .take(5)
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join("; ")
        )));
    }
    Ok((h, rows, entries))
}

/// Which verify the switch back runs before retiring PostgreSQL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verify {
    /// Every row (`migrate verify`).
    Full,
    /// The rows PostgreSQL's log named since SQLite was last found equal; the
    /// full verify when that horizon is unknown.
    SinceVerified,
}

/// What the switch back checked.
struct Back {
    verify: VerifyReport,
    verified_rows: Option<u64>,
}

/// With PostgreSQL paused: the last pass of the way back, the verify, then
/// PostgreSQL retired, the phase recorded and SQLite live.
fn switch_back(
    sqlite: &Path,
    postgres: &DatabaseUrl,
    pg: &mut PgConnection,
    maint: &mut AnyConnection,
    check: Verify,
    checked_upto: Option<i64>,
) -> Result<Back> {
    let mut lite = pause::open_sqlite(sqlite)?;
    let mut src = Source::open(sqlite)?;
    // One snapshot for the pass and the bounded verify, taken with every
    // writer locked out: every entry is complete, whatever the horizon.
    let (passed, position, bounded) = pg.build_transaction().repeatable_read().run(|pg| {
        rollback::lock_writers(pg)?;
        let passed = rollback::pass(pg, &mut lite, Reading::Locked)?;
        let position = changelog::pg_position(pg)?;
        let since = checked_upto.or(passed.state.rollback_verified_horizon);
        let bounded = match (check, since) {
            (Verify::SinceVerified, Some(from)) => {
                Some(rollback::verify_named(pg, &mut src, from)?)
            }
            _ => None,
        };
        Ok::<_, Error>((passed, position, bounded))
    })?;
    log::info!("switch back: last pass {:?}", passed.report);
    let (report, verified_rows) = match bounded {
        Some((report, rows)) => (report, Some(rows)),
        None => {
            if check == Verify::SinceVerified {
                log::warn!(
                    "switch back: no verified horizon recorded (a log installed by an older \
                     version): the full verify runs while writes are held"
                );
            }
            (verify_locked(sqlite, postgres)?, None)
        }
    };
    require_is_equal(&report)?;
    // Retired first, then checked again, as on the way there: a write let in
    // by a resume meanwhile is caught before SQLite goes live.
    pause::retire(maint, &sqlite.display().to_string())?;
    let now = changelog::pg_position(pg)?;
    if now > position {
        return Err(Error::Refused(format!(
            "{} was written to during the switch (change log at {now}, {position} applied): \
             switch again",
            postgres.masked()
        )));
    }
    state::mark_rolled_back(pg)?;
    if let Err(e) = pause::make_live(&mut lite) {
        state::unmark_rolled_back(pg)?;
        return Err(e);
    }
    // SQLite is live: from here on PostgreSQL must never be made live again.
    if let Err(e) = uninstall_sqlite_log(&mut lite) {
        log::warn!(
            "{} is live, but removing its change log failed ({e}); it only grows: run \
             `migrate switch --to sqlite` again to remove it",
            sqlite.display()
        );
    }
    Ok(Back {
        verify: report,
        verified_rows,
    })
}

/// How a failed switch back leaves PostgreSQL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Writes {
    /// Live: the switch paused it, so a failure must not leave the service refusing writes.
    Accepted,
    /// Paused, as the operator had it before the switch.
    Paused,
}

/// A switch back that failed: the service goes on on PostgreSQL, no longer
/// retired (unless the phase says SQLite went live, see [`switch_back`]).
fn stay_on_postgres(
    postgres: &DatabaseUrl,
    pg: &mut PgConnection,
    maint: &mut AnyConnection,
    writes: Writes,
) {
    let phase = state::load(pg)
        .or_else(|_| state::connect(postgres).and_then(|mut c| state::load(&mut c)))
        .map(|s| s.map(|s| s.phase));
    if !matches!(&phase, Ok(Some(p)) if p == "switched") {
        log::error!(
            "the switch back failed and the phase is {phase:?}, not switched; {} stays paused: \
             run `migrate switch --to sqlite` again",
            postgres.masked()
        );
        return;
    }
    let restore = |c: &mut AnyConnection| {
        pause::make_live(c)?;
        match writes {
            Writes::Accepted => Ok(()),
            Writes::Paused => pause::pause(c),
        }
    };
    let resumed =
        restore(maint).or_else(|_| pause::open_pg(postgres).and_then(|mut c| restore(&mut c)));
    match resumed {
        Ok(()) => log::warn!(
            "switch back failed: {} is {} again",
            postgres.masked(),
            match writes {
                Writes::Accepted => "live",
                Writes::Paused => "paused, not retired,",
            }
        ),
        Err(e) => log::error!(
            "switch back failed, and resuming {} failed too ({e}): run `migrate resume --postgres …`",
            postgres.masked()
        ),
    }
}

/// SQLite serves without a migration in view, where its log would only
/// grow. A new cutover starts with `copy --truncate --yes`, which installs it again.
fn uninstall_sqlite_log(lite: &mut AnyConnection) -> Result<()> {
    if let AnyConnection::Sqlite(c) = lite {
        changelog::uninstall_sqlite(c)?;
    }
    Ok(())
}

fn switched_back(
    sqlite: &Path,
    postgres: &DatabaseUrl,
    verify: VerifyReport,
    already_switched: bool,
    held_ms: Option<u64>,
    verified_rows: Option<u64>,
) -> SwitchReport {
    log::info!(
        "switched back: {} is live; {} is retired{}",
        sqlite.display(),
        postgres.masked(),
        held_ms.map_or(String::new(), |ms| format!("; writes held {ms} ms"))
    );
    SwitchReport {
        live: Backend::Sqlite,
        verify,
        already_switched,
        held_ms,
        verified_rows,
    }
}
