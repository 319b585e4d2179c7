//! Moving a live service from SQLite to PostgreSQL, and back.

mod backup;
mod compare;
mod rollback;

pub use backup::{backup, BackupReport};
pub use compare::{compare, CompareReport, Difference, Selection};
pub use rollback::{rollback_sync, RollbackMarks, RollbackReport};
