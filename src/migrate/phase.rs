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

use crate::connection::Backend;

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
