//! Moving a live service from SQLite to PostgreSQL, and back.

mod backup;
mod compare;

pub use backup::{backup, BackupReport};
pub use compare::{compare, CompareReport, Difference, Selection};
