//! The small commands around a cutover that are rules rather than printing:
//! setup, the operator's pause and resume, the dual read of two named
//! databases, the checklist's row counts and how a follower ended. Their
//! reports print through `report.rs`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::changelog::install_change_log;
use super::compare::{compare_file, CompareReport, Selection};
use super::follow::FollowEnd;
use super::lock::MigrationLock;
use super::sample::index_source;
use crate::connection::{require_sqlite_file, Backend, DatabaseUrl};
use crate::error::Result;
use crate::maintenance::{self, Maintenance};
use crate::store::{Store, StoreConfig, TableCounts};

/// How long a pause or resume waits for the migration lock: a follower holds
/// it for one batch at a time, so it comes round within a batch.
const PAUSE_LOCK_WAIT: Duration = Duration::from_secs(10);

/// What [`setup`] did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SetupReport {
    /// The PostgreSQL database set up (password masked).
    pub postgres: String,
    /// The migrations this run applied (none when the schema was up to date).
    pub applied: Vec<String>,
    /// The SQLite file whose change log was installed, if one was named.
    pub sqlite: Option<PathBuf>,
    /// How long building the SQLite indexes took; `None` when they existed
    /// already (or no file was named).
    pub indexed_in: Option<Duration>,
}

/// Creates or upgrades the PostgreSQL schema; with a SQLite file, installs its
/// change log and indexes its messages and drafts by session. Idempotent.
pub fn setup(postgres: &DatabaseUrl, sqlite: Option<&Path>) -> Result<SetupReport> {
    let store = command_store(postgres)?;
    let applied = store.migrate();
    store.close();
    let applied = applied?;
    let mut report = SetupReport {
        postgres: postgres.masked(),
        applied,
        sqlite: sqlite.map(Path::to_path_buf),
        indexed_in: None,
    };
    if let Some(path) = sqlite {
        install_change_log(path)?;
        let started = Instant::now();
        if index_source(path)? {
            report.indexed_in = Some(started.elapsed());
        }
    }
    Ok(report)
}

/// A database's write pause after [`pause`] or [`resume`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PauseReport {
    /// The database (password masked).
    pub database: String,
    /// Its state now.
    pub state: Maintenance,
}

/// Pauses writes in the database itself: every writer refused, reads go on.
///
/// On PostgreSQL it first takes the migration lock (waiting up to 10 s for a
/// follower's batch), so that a pause cannot land in the middle of a switch;
/// on SQLite the flag is written under the file's write lock.
pub fn pause(url: &DatabaseUrl) -> Result<PauseReport> {
    set_pause(url, true)
}

/// Lifts the pause, under the same lock as [`pause`]; refused on a retired
/// database (only switching back to it makes it live).
pub fn resume(url: &DatabaseUrl) -> Result<PauseReport> {
    set_pause(url, false)
}

fn set_pause(url: &DatabaseUrl, on: bool) -> Result<PauseReport> {
    let _lock = match url.backend() {
        Backend::Postgres => Some(MigrationLock::acquire_waiting(url, PAUSE_LOCK_WAIT)?),
        Backend::Sqlite => None,
    };
    let mut conn = maintenance::connect(url)?;
    if on {
        maintenance::pause(&mut conn)?;
    } else {
        maintenance::resume(&mut conn)?;
    }
    Ok(PauseReport {
        database: url.masked(),
        state: maintenance::read(&mut conn)?,
    })
}

/// Dual read of a SQLite file and a PostgreSQL database (see [`compare_file`]).
/// The file is looked for first, so a missing one is named before PostgreSQL is tried.
pub fn compare_databases(
    sqlite: &Path,
    postgres: &DatabaseUrl,
    selection: &Selection,
) -> Result<CompareReport> {
    require_sqlite_file(sqlite)?;
    // A report: the store below would apply pending migrations, so a schema
    // behind this tool's is refused here, before anything could be written.
    drop(super::state::connect_read_only(postgres)?);
    let right = command_store(postgres)?;
    let report = compare_file(sqlite, &right, selection);
    right.close();
    report
}

/// A store for one command: it opens connections only when asked for one
/// (no idle ones kept, so no pool thread opens one in the background), and
/// the command closes it ([`Store::close`]) before the process exits, so no
/// thread is in a TLS handshake while the exit handlers run.
fn command_store(url: &DatabaseUrl) -> Result<Store> {
    let config = StoreConfig {
        pool: crate::PoolConfig {
            max_size: 2,
            min_idle: Some(0),
            ..Default::default()
        },
        ..Default::default()
    };
    Store::open(url.clone(), config)
}

/// Row counts of the live side and the other one (the checklist's last step).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct RowCounts {
    /// The side the service runs on.
    pub live: Backend,
    /// Its rows.
    pub live_counts: TableCounts,
    /// The other side's rows.
    pub other: TableCounts,
}

impl RowCounts {
    /// Whether the live side holds at least as many rows as the other in every table.
    pub fn holds_all(&self) -> bool {
        self.live_counts.sessions >= self.other.sessions
            && self.live_counts.messages >= self.other.messages
            && self.live_counts.drafts >= self.other.drafts
    }
}

/// Counts the rows of both sides, `live` being the one the service runs on.
pub fn row_counts(sqlite: &Path, postgres: &DatabaseUrl, live: Backend) -> Result<RowCounts> {
    let counts = |url: &DatabaseUrl| {
        let store = command_store(url)?;
        let counts = store.counts();
        store.close();
        counts
    };
    let lite = counts(&DatabaseUrl::existing_sqlite(sqlite)?)?;
    let pg = counts(postgres)?;
    let (live_counts, other) = match live {
        Backend::Postgres => (pg, lite),
        Backend::Sqlite => (lite, pg),
    };
    Ok(RowCounts {
        live,
        live_counts,
        other,
    })
}

/// How a follower ended, and what that means for the operator.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FollowEnded {
    /// Why it ended.
    pub ended: FollowEnd,
    /// What that means, e.g. which side is live now.
    pub detail: String,
}

impl FollowEnded {
    /// The end of a follower of `sqlite` and `postgres` (`reverse`: PostgreSQL into SQLite).
    pub fn new(ended: FollowEnd, reverse: bool, sqlite: &Path, postgres: &DatabaseUrl) -> Self {
        let detail = match (ended, reverse) {
            (FollowEnd::Stopped, _) => "stopped".to_string(),
            (FollowEnd::Switched, false) => format!(
                "{} is live now (switched): run `migrate follow --reverse` to keep SQLite current",
                postgres.masked()
            ),
            (FollowEnd::Switched, true) => {
                format!("{} is live again (switched back)", sqlite.display())
            }
        };
        FollowEnded { ended, detail }
    }
}
