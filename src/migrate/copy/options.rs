//! How a copy runs: its options, and the progress it reports while it loads.
//!
//! Apart from the copy itself ([`super`]) because its loading pipeline
//! ([`super::load`]) reads them too: standing below both, they let the
//! pipeline stand apart from the copy that runs it.

use std::path::PathBuf;
use std::sync::Arc;

use crate::migrate::source::Table;

/// How a copy runs.
#[derive(Clone)]
pub struct CopyOptions {
    /// Rows per `COPY` transaction (default 5,000).
    pub batch_size: i64,
    /// Load valid rows and write the invalid ones here as JSON lines; without
    /// it the copy is strict and loads nothing when any row is invalid.
    pub reject_file: Option<PathBuf>,
    /// Empty the PostgreSQL tables first, instead of refusing rows it did not copy.
    pub truncate: bool,
    /// The operator confirmed `truncate` (`--yes`); without it a truncating
    /// copy only reports what it would delete and fails with
    /// [`Refusal::Unconfirmed`](crate::error::Refusal::Unconfirmed).
    pub confirmed: bool,
    /// Called after each committed batch.
    pub progress: Option<ProgressFn>,
    /// Connections that build the indexes and validate the foreign keys after
    /// the load, one table each (default: the number of CPUs, at most 3).
    pub rebuild_connections: usize,
    /// Memory per rebuild connection for its sort or hash, in MiB (default 256;
    /// the server's own `maintenance_work_mem` and `work_mem` when higher).
    pub rebuild_memory_mb: u64,
    /// Test hook: fail after this many committed batches, as a crash would.
    #[doc(hidden)]
    pub fail_after_batches: Option<u64>,
    /// Test hook: fail instead of this step of the rebuild (an index or
    /// constraint name, or `analyze <table>`), as a crash there would.
    #[doc(hidden)]
    pub fail_at_rebuild_step: Option<String>,
}

impl Default for CopyOptions {
    fn default() -> Self {
        CopyOptions {
            batch_size: 5_000,
            reject_file: None,
            truncate: false,
            confirmed: false,
            progress: None,
            rebuild_connections: std::thread::available_parallelism().map_or(2, |n| n.get().min(3)),
            rebuild_memory_mb: 256,
            fail_after_batches: None,
            fail_at_rebuild_step: None,
        }
    }
}

impl std::fmt::Debug for CopyOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CopyOptions")
            .field("batch_size", &self.batch_size)
            .field("reject_file", &self.reject_file)
            .field("truncate", &self.truncate)
            .field("confirmed", &self.confirmed)
            .field("rebuild_connections", &self.rebuild_connections)
            .field("rebuild_memory_mb", &self.rebuild_memory_mb)
            .finish_non_exhaustive()
    }
}

/// A progress callback, called from the loading thread.
pub type ProgressFn = Arc<dyn Fn(&Progress) + Send + Sync>;

/// Where a table's load stands, reported after each batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// The table being loaded.
    pub table: Table,
    /// Source rows handled so far (copied or rejected), this run and earlier ones.
    pub done: u64,
    /// Source rows up to the snapshot mark.
    pub total: u64,
}
