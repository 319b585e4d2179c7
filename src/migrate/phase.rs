//! The cutover's phase and its named steps: the one place that knows which
//! move may follow which.
//!
//! The phase is persisted in PostgreSQL's bookkeeping row
//! (`interview_migration_state.phase`, plus `step` while a switch is under
//! way). A switch records its intent (`switching_to_*` at a [`Step`]) before
//! each step that spans both databases, so a process killed between any two
//! statements leaves a row that says where it stood; see
//! `docs/migrate-redesign.md` for the table of steps and what a rerun does at
//! each.

use std::fmt;

use diesel::prelude::*;
use diesel::sql_types::{Nullable, Text};

use crate::connection::Backend;
use crate::error::{Error, Refusal, Result};

/// A named step of a migration command.
///
/// The names are stable: `status` prints them, the crash hook stops at them
/// (`INTERVIEW_CRASH_AT`, feature `crash-hooks`) and the Promela model in
/// `model/` labels its steps with them (a test keeps the two lists equal).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
pub enum Step {
    /// `copy`: the phase `copying` recorded with the snapshot's marks.
    CopyStart,
    /// `copy`: one batch committed with its progress row.
    CopyBatch,
    /// `copy`: the phase `copied` recorded.
    CopyFinish,
    /// `sync` / `follow`: one pass of SQLite's change log into PostgreSQL.
    SyncPass,
    /// `switch --to postgres`: catch-up passes while SQLite still takes writes.
    SwitchCatchUp,
    /// The intent recorded, then SQLite paused.
    SwitchPause,
    /// The last pass and the check of the rows it names, SQLite paused.
    SwitchLastEntries,
    /// SQLite retired, naming PostgreSQL.
    SwitchRetire,
    /// One PostgreSQL transaction: its change log, the phase `switched`, PostgreSQL live.
    SwitchGoLive,
    /// `follow --reverse` / `rollback-sync`: one pass of PostgreSQL's log into SQLite.
    ReversePass,
    /// `switch --to sqlite`: catch-up passes while PostgreSQL still takes writes.
    BackCatchUp,
    /// One PostgreSQL transaction: the intent and PostgreSQL paused.
    BackPause,
    /// Every PostgreSQL writer locked out: the last pass and the check.
    BackLastEntries,
    /// One PostgreSQL transaction: PostgreSQL retired, the intent moved on.
    BackRetire,
    /// SQLite live.
    BackGoLive,
    /// The phase `rolled_back` recorded.
    BackRecord,
    /// SQLite's change log removed.
    BackRemoveLog,
}

impl Step {
    /// Every step, in the order a cutover meets them.
    pub const ALL: [Step; 17] = [
        Step::CopyStart,
        Step::CopyBatch,
        Step::CopyFinish,
        Step::SyncPass,
        Step::SwitchCatchUp,
        Step::SwitchPause,
        Step::SwitchLastEntries,
        Step::SwitchRetire,
        Step::SwitchGoLive,
        Step::ReversePass,
        Step::BackCatchUp,
        Step::BackPause,
        Step::BackLastEntries,
        Step::BackRetire,
        Step::BackGoLive,
        Step::BackRecord,
        Step::BackRemoveLog,
    ];

    /// The stable dotted name.
    pub fn name(self) -> &'static str {
        match self {
            Step::CopyStart => "copy.start",
            Step::CopyBatch => "copy.batch",
            Step::CopyFinish => "copy.finish",
            Step::SyncPass => "sync.pass",
            Step::SwitchCatchUp => "switch.catch_up",
            Step::SwitchPause => "switch.pause",
            Step::SwitchLastEntries => "switch.last_entries",
            Step::SwitchRetire => "switch.retire",
            Step::SwitchGoLive => "switch.go_live",
            Step::ReversePass => "reverse.pass",
            Step::BackCatchUp => "switch_back.catch_up",
            Step::BackPause => "switch_back.pause",
            Step::BackLastEntries => "switch_back.last_entries",
            Step::BackRetire => "switch_back.retire",
            Step::BackGoLive => "switch_back.go_live",
            Step::BackRecord => "switch_back.record",
            Step::BackRemoveLog => "switch_back.remove_log",
        }
    }

    /// The step named `name`, if any.
    pub fn from_name(name: &str) -> Option<Step> {
        Step::ALL.into_iter().find(|s| s.name() == name)
    }

    /// Which way a switch step moves the service; `None` for the other commands' steps.
    pub fn switch_to(self) -> Option<Backend> {
        match self {
            Step::SwitchCatchUp
            | Step::SwitchPause
            | Step::SwitchLastEntries
            | Step::SwitchRetire
            | Step::SwitchGoLive => Some(Backend::Postgres),
            Step::BackCatchUp
            | Step::BackPause
            | Step::BackLastEntries
            | Step::BackRetire
            | Step::BackGoLive
            | Step::BackRecord
            | Step::BackRemoveLog => Some(Backend::Sqlite),
            Step::CopyStart
            | Step::CopyBatch
            | Step::CopyFinish
            | Step::SyncPass
            | Step::ReversePass => None,
        }
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Where the cutover stands, as recorded in PostgreSQL's bookkeeping row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "phase", content = "step", rename_all = "snake_case")]
pub enum Phase {
    /// A bulk copy started and has not finished; SQLite is live.
    Copying,
    /// The bulk copy finished; `sync` and `follow` keep PostgreSQL close behind. SQLite is live.
    Copied,
    /// A switch to PostgreSQL recorded its intent and is at this step.
    /// SQLite stays the live side until [`Step::SwitchGoLive`] commits.
    SwitchingToPostgres(Step),
    /// PostgreSQL is live.
    Switched,
    /// A switch back recorded its intent and is at this step. PostgreSQL stays
    /// the live side until [`Step::BackRetire`] commits.
    SwitchingToSqlite(Step),
    /// SQLite is live again; PostgreSQL is retired.
    RolledBack,
}

impl Phase {
    /// Reads the stored pair; an unknown value is an error naming it (a newer
    /// version of the tool wrote it, or someone edited the row by hand).
    pub fn parse(phase: &str, step: Option<&str>) -> Result<Phase> {
        let named = |step: Option<&str>, to: Backend| -> Result<Step> {
            let name = step.ok_or_else(|| Error::Corrupt {
                what: "interview_migration_state".into(),
                reason: format!("phase {phase} names no step"),
            })?;
            Step::from_name(name)
                .filter(|s| s.switch_to() == Some(to))
                .ok_or_else(|| Error::Corrupt {
                    what: "interview_migration_state".into(),
                    reason: format!("phase {phase} names an unknown step {name:?}"),
                })
        };
        Ok(match phase {
            "copying" => Phase::Copying,
            "copied" => Phase::Copied,
            "switching_to_postgres" => Phase::SwitchingToPostgres(named(step, Backend::Postgres)?),
            "switched" => Phase::Switched,
            "switching_to_sqlite" => Phase::SwitchingToSqlite(named(step, Backend::Sqlite)?),
            "rolled_back" => Phase::RolledBack,
            other => {
                return Err(Error::Corrupt {
                    what: "interview_migration_state".into(),
                    reason: format!("unknown phase {other:?} (written by a newer version?)"),
                })
            }
        })
    }

    /// The stored phase value.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Copying => "copying",
            Phase::Copied => "copied",
            Phase::SwitchingToPostgres(_) => "switching_to_postgres",
            Phase::Switched => "switched",
            Phase::SwitchingToSqlite(_) => "switching_to_sqlite",
            Phase::RolledBack => "rolled_back",
        }
    }

    /// The step a switch under way is at.
    pub fn step(self) -> Option<Step> {
        match self {
            Phase::SwitchingToPostgres(s) | Phase::SwitchingToSqlite(s) => Some(s),
            _ => None,
        }
    }

    /// The side that takes writes in this phase (the maintenance rows say the
    /// same; during a switch's hold both refuse them).
    pub fn live(self) -> Backend {
        match self {
            Phase::Copying | Phase::Copied | Phase::SwitchingToPostgres(_) | Phase::RolledBack => {
                Backend::Sqlite
            }
            Phase::Switched => Backend::Postgres,
            Phase::SwitchingToSqlite(s) if Self::past(s, Step::BackRetire) => Backend::Sqlite,
            Phase::SwitchingToSqlite(_) => Backend::Postgres,
        }
    }

    /// Whether a switch under way has reached `step` (or gone past it).
    pub fn reached(self, step: Step) -> bool {
        self.step().is_some_and(|s| Self::past(s, step))
    }

    /// Whether `step` is `mark` or comes after it.
    fn past(step: Step, mark: Step) -> bool {
        Self::order(step) >= Self::order(mark)
    }

    fn order(step: Step) -> usize {
        Step::ALL.iter().position(|s| *s == step).unwrap_or(0)
    }

    /// Whether the move `self -> to` is one the protocol has. The one list of
    /// legal moves: every write of the phase goes through `Phase::record`.
    pub fn may_become(self, to: Phase) -> bool {
        use Phase::*;
        match (self, to) {
            (Copying, Copied) => true,
            (Copied, SwitchingToPostgres(s)) => s.switch_to() == Some(Backend::Postgres),
            // A switch moves forward through its steps, or repeats one on a rerun.
            (SwitchingToPostgres(a), SwitchingToPostgres(b))
            | (SwitchingToSqlite(a), SwitchingToSqlite(b)) => {
                b.switch_to() == a.switch_to() && Self::past(b, a)
            }
            // Only the go-live transaction ends a switch there; undone at any
            // step, since PostgreSQL never took a write before it.
            (SwitchingToPostgres(_), Switched | Copied) => true,
            (Switched, SwitchingToSqlite(s)) => s.switch_to() == Some(Backend::Sqlite),
            // Undone only while PostgreSQL is not retired: once it is, a server
            // may already write to SQLite, so the way back goes forward only.
            (SwitchingToSqlite(a), Switched) => !Self::past(a, Step::BackRetire),
            (SwitchingToSqlite(a), RolledBack) => Self::past(a, Step::BackGoLive),
            _ => false,
        }
    }

    /// Moves the recorded phase from `self` to `to`, in the caller's
    /// transaction: refuses a move the protocol does not have, and a row that
    /// no longer says `self` (another command moved it meanwhile).
    pub(crate) fn record(self, pg: &mut PgConnection, to: Phase) -> Result<()> {
        if !self.may_become(to) {
            return Err(Error::refused(Refusal::OutOfOrder, format!(
                "the cutover cannot move from {self} to {to}; run `migrate status` to see what to do"
            )));
        }
        let moved = diesel::sql_query(
            "UPDATE interview_migration_state SET phase = $3, step = $4, \
             copied_at = CASE WHEN $3 = 'copied' AND phase = 'copying' THEN now() ELSE copied_at END, \
             switched_at = CASE WHEN $3 = 'switched' AND phase = 'switching_to_postgres' THEN now() ELSE switched_at END, \
             rolled_back_at = CASE WHEN $3 = 'rolled_back' THEN now() ELSE rolled_back_at END \
             WHERE phase = $1 AND step IS NOT DISTINCT FROM $2",
        )
        .bind::<Text, _>(self.as_str())
        .bind::<Nullable<Text>, _>(self.step().map(Step::name))
        .bind::<Text, _>(to.as_str())
        .bind::<Nullable<Text>, _>(to.step().map(Step::name))
        .execute(pg)?;
        if moved != 1 {
            return Err(Error::refused(
                Refusal::Moved,
                format!(
                    "the cutover is no longer {self} (another migration command moved it); run \
                 `migrate status`"
                ),
            ));
        }
        log::debug!("phase: {self} -> {to}");
        Ok(())
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Phase::SwitchingToPostgres(s) => write!(f, "switching to PostgreSQL (at {s})"),
            Phase::SwitchingToSqlite(s) => write!(f, "switching back to SQLite (at {s})"),
            other => f.write_str(other.as_str()),
        }
    }
}

/// Marks that the command reached `step`: logged, and the test-only crash
/// hook may end the process here, as `kill -9` would, before the step acts.
pub(crate) fn reached(step: Step) {
    log::debug!("step {step}");
    crash_hook("INTERVIEW_CRASH_AT", step);
}

/// Marks that `step` finished; the crash hook may end the process here.
pub(crate) fn finished(step: Step) {
    crash_hook("INTERVIEW_CRASH_AFTER", step);
}

/// The crash suite's hook (feature `crash-hooks`, never in a release build of
/// a service): when `var` names `step`, the process aborts at once: no
/// destructor runs, no transaction is rolled back politely, the lock's
/// connection just drops, exactly as a killed process leaves things.
#[cfg(feature = "crash-hooks")]
fn crash_hook(var: &str, step: Step) {
    if std::env::var(var).is_ok_and(|v| v == step.name()) {
        eprintln!("crash hook: {var}={step}: aborting");
        std::process::abort();
    }
}

#[cfg(not(feature = "crash-hooks"))]
fn crash_hook(_var: &str, _step: Step) {}
