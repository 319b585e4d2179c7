//! The way back: what was written to PostgreSQL after the switch, applied to SQLite from PostgreSQL's change log.
//!
//! A pass reads the log by transaction id (see [`super::changelog`]): in one
//! REPEATABLE READ transaction it takes the horizon `h` of its snapshot,
//! applies the entries from the recorded horizon up to `h`, and records `h`.
//! An entry of a transaction still open at the snapshot is never skipped: its
//! id is at or past `h`, so a later pass reads it. Passes take turns on the
//! migration lock and on the bookkeeping row ([`state::load_for_rollback_pass`]),
//! so SQLite only ever receives rows of a newer snapshot than the last pass's.
//! Applying an entry twice is harmless: a pass writes each named row as it is
//! in its snapshot, or deletes it.

mod apply;
mod bounded;
mod read;

use std::path::Path;

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::result::DatabaseErrorKind;

use super::changelog;
use super::keys;
use super::lock::{self, MigrationLock};
use super::phase::Phase;
use super::state::{self, State};
use crate::connection::{AnyConnection, DatabaseUrl};
use crate::error::{Error, Refusal, Result};
use apply::apply;
use read::read_rows;

pub use apply::RollbackReport;
pub(crate) use bounded::verify_named;

/// How a pass reads PostgreSQL's log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reading {
    /// Writers may be in flight: the entries of transactions below the
    /// snapshot's horizon only.
    Online,
    /// The four logged tables are locked in SHARE mode by the pass's
    /// transaction before its snapshot: no writer is in flight, every entry
    /// from the recorded horizon on is complete, and all of them are read.
    Locked,
}

/// Locks out every writer of the logged tables (the keys too: a prune touches
/// no other table); the first statement of a [`Reading::Locked`] pass, so that
/// its snapshot is taken after every writer in flight has finished.
const LOCK_WRITERS: &str = "LOCK TABLE sessions, messages, drafts, idempotency_keys IN SHARE MODE";

/// Applies to SQLite everything written to PostgreSQL since the switch (or the last rollback-sync).
///
/// Reads PostgreSQL's change log (installed by `migrate switch`) from the
/// horizon in the bookkeeping, collapses it per row, and writes each named
/// row as it is now into SQLite (ids kept, canonical formats), or deletes it,
/// in one SQLite transaction that passes SQLite's retirement. Then records the
/// new horizon in PostgreSQL and trims the entries no longer needed.
///
/// PostgreSQL need not be paused: the log is read by transaction id, and an
/// entry of a transaction still in flight is left for the next run. When
/// PostgreSQL is paused, the log is read holding SHARE locks on the logged
/// tables (waiting out any writer the pause let finish), so everything
/// written before the run is applied. Running it again writes the same rows
/// again, unchanged.
///
/// ```no_run
/// use interview_store::migrate::rollback_sync;
/// let report = rollback_sync("interview.db".as_ref(), &"postgres://app@db/interview".parse()?)?;
/// println!("{} messages back in SQLite", report.messages);
/// # Ok::<(), interview_store::Error>(())
/// ```
pub fn rollback_sync(sqlite: &Path, postgres: &DatabaseUrl) -> Result<RollbackReport> {
    // The source first: a missing file must not leave PostgreSQL set up for nothing.
    crate::connection::require_sqlite_file(sqlite)?;
    let _lock = MigrationLock::acquire(postgres)?;
    let mut pg = state::connect(postgres)?;
    rollback_allowed(&mut pg, postgres)?;
    let mut lite = super::pause::open_sqlite(sqlite)?;
    let reading = if super::pause::pg_paused(postgres)? {
        Reading::Locked
    } else {
        Reading::Online
    };
    let report = run_pass(&mut pg, &mut lite, reading)?.report;
    log::info!("rollback-sync: {report:?}");
    Ok(report)
}

/// One pass of a reverse follower: applies to SQLite what PostgreSQL's
/// transactions committed since the last pass, while PostgreSQL serves.
///
/// `Ok(None)` when another migration command holds the migration lock, or
/// another pass committed meanwhile: try again shortly. [`Error::Refused`]
/// when the cutover is not in phase `switched` (nothing to follow: stop).
/// `lite` is SQLite's maintenance connection ([`crate::maintenance::connect`]).
pub(crate) fn reverse_step(
    pg: &mut PgConnection,
    lite: &mut AnyConnection,
) -> Result<Option<RollbackReport>> {
    require_log(pg, "PostgreSQL")?;
    let out = pg.build_transaction().repeatable_read().run(|pg| {
        if !lock::try_lock(pg)? {
            return Ok(None);
        }
        pass(pg, lite, Reading::Online).map(|p| Some(p.report))
    });
    match out {
        Err(e) if serialization_failure(&e) => Ok(None),
        other => other,
    }
}

/// How many PostgreSQL log entries a reverse follower has not applied yet
/// (at or past the horizon), for its lag report. 0 without a log.
pub(crate) fn reverse_pending(pg: &mut PgConnection) -> Result<changelog::PgPending> {
    if !changelog::pg_ready(pg)? {
        return Ok(changelog::PgPending::default());
    }
    let horizon = state::load(pg)?.map_or(0, |s| s.rollback_xid_horizon);
    changelog::pg_pending(pg, horizon)
}

/// A reverse follower's connections: PostgreSQL's and SQLite's maintenance
/// connection, kept open across passes.
///
/// ```no_run
/// use interview_store::migrate::ReverseFollower;
/// let mut follower = ReverseFollower::open("interview.db".as_ref(), &"postgres://app@db/interview".parse()?)?;
/// loop {
///     match follower.step()? {
///         Some(report) if report.entries > 0 => println!("{} entries applied", report.entries),
///         _ => std::thread::sleep(std::time::Duration::from_millis(100)),
///     }
/// }
/// # Ok::<(), interview_store::Error>(())
/// ```
pub struct ReverseFollower {
    pg: PgConnection,
    lite: AnyConnection,
}

impl ReverseFollower {
    /// Opens both sides (the SQLite file must exist).
    pub fn open(sqlite: &Path, postgres: &DatabaseUrl) -> Result<ReverseFollower> {
        crate::connection::require_sqlite_file(sqlite)?;
        Ok(ReverseFollower {
            pg: state::connect(postgres)?,
            lite: super::pause::open_sqlite(sqlite)?,
        })
    }

    /// One pass: applies to SQLite what PostgreSQL's transactions committed
    /// since the last one. `None` when it must wait its turn (another
    /// migration command holds the lock, or another pass committed
    /// meanwhile); [`Error::Refused`] once the cutover left phase `switched`.
    pub fn step(&mut self) -> Result<Option<RollbackReport>> {
        reverse_step(&mut self.pg, &mut self.lite)
    }

    /// PostgreSQL log entries not applied yet (at or past the horizon; a
    /// transaction still open is not counted until it commits).
    pub fn pending(&mut self) -> Result<u64> {
        Ok(reverse_pending(&mut self.pg)?.entries)
    }
}

impl std::fmt::Debug for ReverseFollower {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReverseFollower").finish_non_exhaustive()
    }
}

/// A pass done.
pub(crate) struct Passed {
    /// What it applied.
    pub report: RollbackReport,
    /// The bookkeeping as the pass found it (in its snapshot).
    pub state: State,
}

/// Runs one pass in a REPEATABLE READ transaction of its own; the caller holds
/// the migration lock.
pub(crate) fn run_pass(
    pg: &mut PgConnection,
    lite: &mut AnyConnection,
    reading: Reading,
) -> Result<Passed> {
    pg.build_transaction().repeatable_read().run(|pg| {
        if reading == Reading::Locked {
            pg.batch_execute(LOCK_WRITERS)?;
        }
        pass(pg, lite, reading)
    })
}

/// The first statement of a [`Reading::Locked`] pass's transaction, for a
/// caller that reads more in the same snapshot after the pass (the switch back's verify).
pub(crate) fn lock_writers(pg: &mut PgConnection) -> Result<()> {
    pg.batch_execute(LOCK_WRITERS)?;
    Ok(())
}

/// One pass inside the caller's REPEATABLE READ transaction.
pub(crate) fn pass(
    pg: &mut PgConnection,
    lite: &mut AnyConnection,
    reading: Reading,
) -> Result<Passed> {
    let st = require_switched(state::load(pg)?)?;
    let h = changelog::pg_snapshot_horizon(pg)?;
    let below = (reading == Reading::Online).then_some(h);
    let changes = changelog::pg_changes(pg, st.rollback_xid_horizon, below)?;
    let mut report = RollbackReport {
        entries: changes.entries,
        change_seq: changes.last_seq.max(st.rollback_change_seq),
        xid_horizon: st.rollback_xid_horizon,
        ..Default::default()
    };
    if changes.entries == 0 {
        // An idle poll writes nothing, not even a row lock (which would take a
        // transaction id). The horizon may stay behind: nothing lies below `h`
        // past it, so the next pass reads no more for it.
        return Ok(Passed { report, state: st });
    }
    report.xid_horizon = h.max(st.rollback_xid_horizon);
    // From here on this pass writes: it must be the newest snapshot to do so.
    state::load_for_rollback_pass(pg)?;
    let rows = read_rows(pg, changes)?;
    super::pause::write_into_sqlite(lite, |c| {
        apply(c, &rows, &mut report)?;
        report.keys = keys::apply_to_sqlite(c, &rows.keys)?;
        Ok(())
    })?;
    state::advance_rollback(pg, h, report.change_seq)?;
    // Entries the switch back must still verify stay.
    let keep_from = st.rollback_verified_horizon.map_or(h, |v| v.min(h));
    changelog::trim_pg(pg, keep_from)?;
    Ok(Passed { report, state: st })
}

/// Whether `e` is PostgreSQL refusing a transaction that raced another: here,
/// another pass committed after this one's snapshot.
fn serialization_failure(e: &Error) -> bool {
    matches!(
        e,
        Error::Database(diesel::result::Error::DatabaseError(
            DatabaseErrorKind::SerializationFailure,
            _
        ))
    )
}

/// The phase check of a pass, in its snapshot.
fn require_switched(st: Option<State>) -> Result<State> {
    match st {
        // The switch back's own last pass runs with its intent recorded.
        Some(st) if matches!(st.phase()?, Phase::Switched | Phase::SwitchingToSqlite(_)) => Ok(st),
        st => Err(Error::refused(
            Refusal::OutOfOrder,
            format!(
            "the way back applies what was written to PostgreSQL after `migrate switch`, but the \
             cutover is {}: nothing to follow",
            st.map_or("not started".to_string(), |s| format!("in phase {}", s.phase))
        ),
        )),
    }
}

/// PostgreSQL's log must exist (the switch installs it); brought up to date.
fn require_log(pg: &mut PgConnection, shown: &str) -> Result<()> {
    if changelog::pg_ready(pg)? {
        return Ok(());
    }
    require_switched(state::load(pg)?)?;
    Err(Error::refused(
        Refusal::NotReady,
        format!("{shown} has no change log: was `migrate switch` interrupted? Run it again"),
    ))
}

/// The phase and log checks of rollback-sync, naming the database.
fn rollback_allowed(pg: &mut PgConnection, postgres: &DatabaseUrl) -> Result<()> {
    let st = state::load(pg)?;
    match st.as_ref().map(|s| s.phase()).transpose()? {
        Some(Phase::Switched | Phase::SwitchingToSqlite(_)) => {}
        phase => {
            return Err(Error::refused(
                Refusal::OutOfOrder,
                format!(
                    "rollback-sync applies what was written to {} after `migrate switch`, but the \
                 cutover is {}: nothing to roll back",
                    postgres.masked(),
                    phase.map_or("not started".to_string(), |p| format!("in phase {p}"))
                ),
            ))
        }
    }
    require_log(pg, &postgres.masked())
}
