//! The repository: [`Store`] and the operations on sessions, messages and drafts.

pub(crate) mod drafts;
pub(crate) mod health;
pub(crate) mod idempotency;
pub(crate) mod messages;
pub(crate) mod sessions;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use diesel::connection::{AnsiTransactionManager, TransactionManager};
use diesel::prelude::*;

pub use drafts::Draft;
pub use idempotency::{Claim, KeyPolicy, Recorded, Ticket};
pub use messages::{Message, Role};
pub use sessions::{Page, Session, SessionWithMessages};

use crate::connection::{AnyConnection, Backend, DatabaseUrl};
use crate::error::{Error, Result};
use crate::pool::{Pool, PoolConfig, PoolState};
use crate::schema::{drafts as drafts_t, messages as messages_t, sessions as sessions_t};
use crate::timestamp;

/// Settings of a [`Store`]; `Default` suits a small service.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Connection pool sizing and time limits.
    pub pool: PoolConfig,
    /// Largest message text, summary or draft accepted, in bytes.
    pub max_text_bytes: usize,
    /// How long [`Store::health`] waits for the database before saying it is down.
    pub health_timeout: Duration,
    /// Whether PostgreSQL connections cache prepared statements (default `true`).
    ///
    /// Set it to `false` behind a transaction-mode pooler (PgBouncer before
    /// 1.21, Supavisor's transaction port): see
    /// [`DatabaseUrl::with_statement_cache`]. The example server and the
    /// migration tool read it from `INTERVIEW_PG_STATEMENT_CACHE=off`.
    pub pg_statement_cache: bool,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            pool: PoolConfig::default(),
            max_text_bytes: 32 * 1024,
            health_timeout: Duration::from_secs(2),
            pg_statement_cache: true,
        }
    }
}

/// The result of [`Store::health`].
#[derive(Debug, Clone, serde::Serialize)]
pub struct Health {
    /// Whether the database answered within the health timeout.
    pub db_up: bool,
    /// The backend in use.
    pub backend: Backend,
    /// Whether writes are paused.
    pub read_only: bool,
    /// How long the check took.
    pub latency: Duration,
    /// Why the database is considered down.
    pub error: Option<String>,
}

/// Row counts of each table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct TableCounts {
    /// Rows in `sessions`.
    pub sessions: i64,
    /// Rows in `messages`.
    pub messages: i64,
    /// Rows in `drafts`.
    pub drafts: i64,
}

/// The interview repository over SQLite or PostgreSQL.
///
/// Cheap to clone: clones share one pool and one read-only switch. Every
/// method blocks on the database; async callers run them with
/// `spawn_blocking`.
///
/// ```
/// use interview_store::{Role, Store, StoreConfig};
///
/// # fn main() -> interview_store::Result<()> {
/// let dir = tempfile::tempdir().unwrap();
/// let store = Store::connect(dir.path().join("interview.db").to_str().unwrap(), StoreConfig::default())?;
/// store.migrate()?;
///
/// let session = store.start_session()?;
/// store.append_message(session.id, Role::Assistant, "Tell me about a project you led.")?;
/// store.append_message(session.id, Role::User, "I rebuilt our billing pipeline.")?;
///
/// let read = store.get_session(session.id)?;
/// assert_eq!(read.messages.len(), 2);
/// assert_eq!(read.messages[1].role, Role::User);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    pool: Pool,
    config: StoreConfig,
    read_only: AtomicBool,
    // Writers hold it shared for their whole transaction; turning read-only on
    // takes it exclusively, so it returns only after in-flight writes are done.
    write_gate: RwLock<()>,
    // SQLite admits one writer at a time. Queued here, the next writer starts as
    // soon as the previous one commits; left to the busy handler, it sleeps in
    // steps growing to 100 ms, which made p99 write latency tens of milliseconds
    // with a few threads (see benches/contention.rs). Fair (first come, first
    // served), so a writer's wait is bounded by the queue ahead of it.
    sqlite_writer: parking_lot::FairMutex<()>,
    // The one health check in flight, shared by every caller of `health`.
    health: health::Probe,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("url", self.url())
            .field("read_only", &self.is_read_only())
            .finish()
    }
}

impl Store {
    /// Opens a store at `url`: `sqlite://PATH`, a plain path, or `postgres://…`.
    ///
    /// Opens one connection straight away, so a wrong URL or an unreachable
    /// server fails here with [`Error::Connect`]. Does not run migrations.
    pub fn connect(url: &str, config: StoreConfig) -> Result<Store> {
        Store::open(url.parse()?, config)
    }

    /// Like [`Store::connect`], with an already parsed URL.
    ///
    /// The statement cache is off when either `url` or `config` turns it off.
    pub fn open(url: DatabaseUrl, config: StoreConfig) -> Result<Store> {
        let cache = url.statement_cache() && config.pg_statement_cache;
        let url = url.with_statement_cache(cache);
        log::info!("opening {} store at {}", url.backend(), url.masked());
        let pool = Pool::open(url, &config.pool)?;
        Ok(Store {
            inner: Arc::new(Inner {
                pool,
                config,
                read_only: AtomicBool::new(false),
                write_gate: RwLock::new(()),
                sqlite_writer: parking_lot::FairMutex::new(()),
                health: health::Probe::default(),
            }),
        })
    }

    /// The backend this store talks to.
    pub fn backend(&self) -> Backend {
        self.inner.pool.url().backend()
    }

    /// The database URL; its `Display` masks the password.
    pub fn url(&self) -> &DatabaseUrl {
        self.inner.pool.url()
    }

    /// The settings the store was opened with.
    pub fn config(&self) -> &StoreConfig {
        &self.inner.config
    }

    /// Applies the embedded schema migrations of this backend that are not applied yet.
    ///
    /// Returns the versions applied now. On SQLite this adopts a database
    /// written by the legacy service without touching its rows.
    pub fn migrate(&self) -> Result<Vec<String>> {
        self.inner.pool.run(crate::migrations::run_pending)
    }

    /// Pauses (`true`) or resumes (`false`) writes.
    ///
    /// While paused every write returns [`Error::ReadOnly`] and reads go on.
    /// Turning the pause on waits for writes already in flight, so once this
    /// returns no write can commit until the pause is lifted.
    pub fn set_read_only(&self, on: bool) {
        let _exclusive = self
            .inner
            .write_gate
            .write()
            .unwrap_or_else(|p| p.into_inner());
        self.inner.read_only.store(on, Ordering::SeqCst);
        log::info!(
            "store writes {}",
            if on { "paused (read-only)" } else { "resumed" }
        );
    }

    /// Whether writes are paused.
    pub fn is_read_only(&self) -> bool {
        self.inner.read_only.load(Ordering::SeqCst)
    }

    /// Connection pool state, for monitoring.
    pub fn pool_state(&self) -> PoolState {
        self.inner.pool.state()
    }

    /// Checks that the database answers `SELECT 1` within the configured health timeout.
    ///
    /// Never blocks longer than that timeout, even when the server hangs, and
    /// never runs more than one check at a time: concurrent callers share the
    /// check in flight, so a hung database cannot pile up threads.
    pub fn health(&self) -> Health {
        let timeout = self.inner.config.health_timeout;
        let started = Instant::now();
        let error = self.inner.health.check(self, timeout).err();
        Health {
            db_up: error.is_none(),
            backend: self.backend(),
            read_only: self.is_read_only(),
            latency: started.elapsed(),
            error,
        }
    }

    /// Counts the rows of each table.
    pub fn counts(&self) -> Result<TableCounts> {
        self.read(|conn| {
            Ok(TableCounts {
                sessions: sessions_t::table.count().get_result(conn)?,
                messages: messages_t::table.count().get_result(conn)?,
                drafts: drafts_t::table.count().get_result(conn)?,
            })
        })
    }

    /// Runs `f` on a pooled connection, outside any transaction.
    ///
    /// For queries the repository does not offer; prefer its methods.
    pub fn with_connection<T>(&self, f: impl FnOnce(&mut AnyConnection) -> Result<T>) -> Result<T> {
        self.read(f)
    }

    fn read<T>(&self, f: impl FnOnce(&mut AnyConnection) -> Result<T>) -> Result<T> {
        self.inner.pool.run(f)
    }

    /// Runs `f` in one transaction, unless writes are paused.
    ///
    /// On SQLite the transaction is `BEGIN IMMEDIATE`: it takes the write lock
    /// up front (waiting up to the busy timeout), so writers queue instead of
    /// failing with "database is locked" when a read turns into a write.
    /// `f` gets the current time read after the lock is held: on SQLite,
    /// where writers are serialised, timestamps then follow commit order,
    /// which is what makes `updated_at` usable as a high-water mark.
    fn write<T>(
        &self,
        f: impl FnOnce(&mut AnyConnection, DateTime<Utc>) -> Result<T>,
    ) -> Result<T> {
        let _shared = self
            .inner
            .write_gate
            .read()
            .unwrap_or_else(|p| p.into_inner());
        if self.is_read_only() {
            return Err(Error::ReadOnly);
        }
        // Taken before the pool checkout, so queued writers do not hold connections.
        // Bounded like a checkout: a stuck writer turns the queue into 503s, not a pile of threads.
        let _writer = match self.backend() {
            Backend::Sqlite => Some(self.sqlite_writer_turn()?),
            Backend::Postgres => None,
        };
        self.inner.pool.run(|conn| {
            let begin = match conn {
                AnyConnection::Sqlite(c) => {
                    AnsiTransactionManager::begin_transaction_sql(c, "BEGIN IMMEDIATE")
                }
                AnyConnection::Postgres(c) => {
                    AnsiTransactionManager::begin_transaction_sql(c, "BEGIN")
                }
            };
            begin?;
            let result = f(conn, timestamp::now());
            let end = match (conn, result.is_ok()) {
                (AnyConnection::Sqlite(c), true) => AnsiTransactionManager::commit_transaction(c),
                (AnyConnection::Postgres(c), true) => AnsiTransactionManager::commit_transaction(c),
                (AnyConnection::Sqlite(c), false) => {
                    AnsiTransactionManager::rollback_transaction(c)
                }
                (AnyConnection::Postgres(c), false) => {
                    AnsiTransactionManager::rollback_transaction(c)
                }
            };
            match (result, end) {
                (Ok(v), Ok(())) => Ok(v),
                (Ok(_), Err(e)) => Err(e.into()),
                // The operation's own error says more than a failed rollback.
                (Err(e), _) => Err(e),
            }
        })
    }

    fn sqlite_writer_turn(&self) -> Result<parking_lot::FairMutexGuard<'_, ()>> {
        let wait = self.inner.config.pool.connection_timeout;
        self.inner
            .sqlite_writer
            .try_lock_for(wait)
            .ok_or_else(|| Error::PoolTimeout {
                waited: wait,
                url: self.url().masked(),
                last_error: Some("the writers queued ahead did not finish in time".into()),
            })
    }

    fn check_text(&self, field: &'static str, value: &str) -> Result<()> {
        let max = self.inner.config.max_text_bytes;
        if value.len() > max {
            return Err(Error::invalid(
                field,
                format!("is {} bytes, the limit is {max}", value.len()),
            ));
        }
        if value.contains('\0') {
            return Err(Error::invalid(field, "contains a NUL character"));
        }
        Ok(())
    }
}
