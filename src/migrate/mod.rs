//! Moving a live service from SQLite to PostgreSQL, and back.
//!
//! The steps of a cutover, each a function here and a command of
//! `examples/migrate.rs`: [`check`] (preflight), [`copy`] (bulk copy of one
//! snapshot), [`sync`] (what changed since), [`verify`] (both sides hold the
//! same data), [`compare`] (dual read through the repository), [`backup`],
//! [`rollback_sync`] (PostgreSQL back into SQLite) and [`status`].

mod admin;
mod backup;
mod changed;
mod changelog;
mod check;
mod compare;
mod copy;
mod cutover;
mod digest;
mod follow;
mod id_merge;
mod keys;
mod lock;
mod normalize;
mod pause;
mod phase;
mod pipeline;
mod rebuild;
mod recheck;
mod report;
mod rollback;
mod sample;
mod source;
mod state;
mod status;
mod switch;
mod switch_back;
mod switch_report;
mod switch_there;
mod sync;
mod verify;

pub use admin::{
    compare_databases, pause, resume, row_counts, setup, FollowEnded, PauseReport, RowCounts,
    SetupReport,
};
pub use backup::{backup, BackupReport};
pub use changelog::{change_log_entries, install_change_log};
pub use check::{check, CheckReport};
pub use compare::{compare, compare_file, CompareReport, Difference, Selection};
pub use copy::{copy, CopyOptions, CopyReport, Progress, ProgressFn, TableCopy};
pub use follow::{follow, FollowEnd, FollowOptions, FollowStatus};
pub use keys::{KeyDifference, KeysApplied, KeysVerify};
pub use lock::{MigrationLock, MIGRATION_LOCK_KEY};
pub use normalize::Reject;
pub use phase::{Phase, Step};
pub use report::CheckOf;
pub use rollback::{rollback_sync, ReverseFollower, RollbackReport};
pub use sample::index_source;
pub use source::{Marks, Table};
pub use state::{State, TableProgress};
pub use status::{status, status_of, Status};
pub use switch::switch;
pub use switch_report::SwitchReport;
pub use sync::{sync, SyncOptions, SyncReport};
pub use verify::{verify, verify_and_record, RowDifference, TableVerify, VerifyReport};
