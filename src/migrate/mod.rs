//! Moving a live service from SQLite to PostgreSQL, and back.
//!
//! The steps of a cutover, each a function here and a command of
//! `examples/migrate.rs`: [`check`] (preflight), [`copy`] (bulk copy of one
//! snapshot), [`sync`] (what changed since), [`verify`] (both sides hold the
//! same data), [`compare`] (dual read through the repository), [`backup`],
//! [`rollback_sync`] (PostgreSQL back into SQLite) and [`status`].

mod backup;
mod check;
mod compare;
mod copy;
mod id_merge;
mod normalize;
mod rollback;
mod sample;
mod source;
mod state;
mod sync;
mod verify;

pub use backup::{backup, BackupReport};
pub use check::{check, CheckReport};
pub use compare::{compare, compare_file, CompareReport, Difference, Selection};
pub use copy::{copy, CopyOptions, CopyReport, Progress, ProgressFn, TableCopy};
pub use normalize::Reject;
pub use rollback::{rollback_sync, RollbackMarks, RollbackReport};
pub use source::{Marks, Table};
pub use state::{status, State, Status, TableProgress};
pub use sync::{sync, SyncOptions, SyncReport};
pub use verify::{verify, RowDifference, TableVerify, VerifyReport};
