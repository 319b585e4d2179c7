//! The switch: which database is live, moved only when the other side is
//! paused, caught up and equal, with its intent recorded before every step
//! that spans both databases (see `docs/migrate-redesign.md`).
//!
//! This file reads the recorded phase and decides what a run does: start a
//! switch, finish one an earlier run left at a step, undo one the other way,
//! or say that it happened already. The steps are in `switch_there.rs` (to
//! PostgreSQL) and `switch_back.rs` (to SQLite).

use std::path::Path;

use super::cutover::Cutover;
use super::phase::Phase;
use super::switch_back;
use super::switch_report::SwitchReport;
use super::switch_there;
use crate::connection::{Backend, DatabaseUrl};
use crate::error::{Error, Refusal, Result};

/// Moves the service to `to`: PostgreSQL (after copy and sync) or back to SQLite.
///
/// To PostgreSQL it requires SQLite paused, SQLite's change log applied up to
/// its last entry, and verify equal; it then retires the SQLite file (paused
/// for good, naming the masked PostgreSQL URL) and, in one PostgreSQL
/// transaction, installs PostgreSQL's change log (for a way back), records the
/// phase `switched` and makes PostgreSQL live. With SQLite live (under
/// traffic, a follower keeping PostgreSQL close behind) it pauses SQLite
/// itself for as short as the last entries take, and verifies only the rows
/// named since the last full verify; [`SwitchReport::held_ms`] says how long
/// writes were held, and a failure leaves SQLite live.
///
/// Back to SQLite: see `switch_back.rs`; the same rules the other way.
///
/// Before each step that spans both databases the intent is recorded
/// (`switching_to_*` at a [`Step`](crate::migrate::Step)), so a run killed at any instant is
/// finished by running the same switch again, or undone by the switch the
/// other way (until the point of no return: PostgreSQL going live on the way
/// there, PostgreSQL retired on the way back). A switch that already happened
/// says so and changes nothing.
///
/// ```no_run
/// use interview_store::migrate::switch;
/// use interview_store::Backend;
/// let report = switch("interview.db".as_ref(), &"postgres://app@db/interview".parse()?, Backend::Postgres)?;
/// assert_eq!(report.live, Backend::Postgres);
/// # Ok::<(), interview_store::Error>(())
/// ```
pub fn switch(sqlite: &Path, postgres: &DatabaseUrl, to: Backend) -> Result<SwitchReport> {
    let mut cx = Cutover::open(sqlite, postgres)?;
    match to {
        Backend::Postgres => to_postgres(&mut cx),
        Backend::Sqlite => to_sqlite(&mut cx),
    }
}

fn to_postgres(cx: &mut Cutover) -> Result<SwitchReport> {
    match cx.phase()? {
        Phase::Copied => switch_there::start(cx),
        Phase::SwitchingToPostgres(step) => {
            log::warn!("a switch to PostgreSQL was interrupted at {step}: finishing it");
            let mut report = switch_there::finish(cx)?;
            report.finished_from = Some(step);
            Ok(report)
        }
        Phase::Switched => Ok(SwitchReport {
            already_switched: true,
            since: cx.state.switched_at,
            ..SwitchReport::new(Backend::Postgres)
        }),
        Phase::SwitchingToSqlite(step) => switch_back::undo(cx, step),
        Phase::Copying => Err(Error::refused(Refusal::OutOfOrder,
            "the bulk copy has not finished: run `migrate copy` again, then `migrate sync`",
        )),
        Phase::RolledBack => Err(Error::refused(Refusal::OutOfOrder, format!(
            "{} is retired since the rollback to SQLite; start again with `migrate copy --truncate --yes`",
            cx.pg_shown()
        ))),
    }
}

fn to_sqlite(cx: &mut Cutover) -> Result<SwitchReport> {
    match cx.phase()? {
        Phase::Switched => switch_back::start(cx),
        Phase::SwitchingToSqlite(step) => {
            log::warn!("a switch back to SQLite was interrupted at {step}: finishing it");
            let mut report = switch_back::finish(cx, step)?;
            report.finished_from = Some(step);
            Ok(report)
        }
        Phase::RolledBack => {
            // The last step may not have run: the log only grows where it stays.
            switch_back::remove_log(cx);
            Ok(SwitchReport {
                already_switched: true,
                since: cx.state.rolled_back_at,
                ..SwitchReport::new(Backend::Sqlite)
            })
        }
        Phase::SwitchingToPostgres(step) => switch_there::undo_interrupted(cx, step),
        Phase::Copying | Phase::Copied => Ok(SwitchReport {
            already_switched: true,
            ..SwitchReport::new(Backend::Sqlite)
        }),
    }
}
