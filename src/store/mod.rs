//! The repository: [`Store`] and the operations on sessions, messages and drafts.

pub(crate) mod drafts;
pub(crate) mod health;
pub(crate) mod idempotency;
pub(crate) mod messages;
pub(crate) mod replicas;
pub(crate) mod sessions;

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use uuid::Uuid;

pub use drafts::Draft;
pub use idempotency::{Claim, KeyPolicy, Recorded, Ticket};
pub use messages::{Message, Role};
pub use replicas::{Fallback, Position, ReplicaState};
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
    /// PostgreSQL hot standbys that serve session reads ([`Store::get_session`],
    /// [`Store::latest_draft`]); each gets a pool, a breaker and a lag
    /// measurement of its own. Empty (the default): every read goes to the primary.
    /// The server reads them from `INTERVIEW_POSTGRES_REPLICA_URLS`.
    pub replicas: Vec<DatabaseUrl>,
    /// How long a read waits for a replica to replay the read's [`Position`]
    /// before it goes to the primary (default 50 ms).
    pub replica_wait: Duration,
    /// A replica lagging more than this leaves rotation until it catches up (default 30 s).
    pub replica_max_lag: Duration,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            pool: PoolConfig::default(),
            max_text_bytes: 32 * 1024,
            health_timeout: Duration::from_secs(2),
            pg_statement_cache: true,
            replicas: Vec::new(),
            replica_wait: Duration::from_millis(50),
            replica_max_lag: Duration::from_secs(30),
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
    /// Whether writes are paused, as the database says (`false` when it did not answer).
    pub read_only: bool,
    /// Where the data moved, if the database is retired.
    pub retired_to: Option<String>,
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
/// Cheap to clone: clones share one pool. Every
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
    // Session reads through this handle see at least this position ([`Store::after`]).
    after: Option<Position>,
}

struct Inner {
    pool: Pool,
    config: StoreConfig,
    // SQLite admits one writer at a time. Queued here, the next writer starts as
    // soon as the previous one commits; left to the busy handler, it sleeps in
    // steps growing to 100 ms, which made p99 write latency tens of milliseconds
    // with a few threads (see benches/contention.rs). Fair (first come, first
    // served), so a writer's wait is bounded by the queue ahead of it.
    sqlite_writer: parking_lot::FairMutex<()>,
    // The one health check in flight, shared by every caller of `health`.
    health: health::Probe,
    replicas: replicas::Replicas,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("url", self.url()).finish()
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
        // Replicas are standbys of a PostgreSQL primary. The server opens its
        // SQLite store (before a cutover, after a rollback) with the same
        // settings, so they are left out there rather than refused.
        let replica_urls = match url.backend() {
            Backend::Postgres => config.replicas.as_slice(),
            Backend::Sqlite => {
                if !config.replicas.is_empty() {
                    log::warn!("replicas ignored: the store is on SQLite");
                }
                &[]
            }
        };
        let pool = Pool::open(url, &config.pool)?;
        let replicas = replicas::Replicas::open(
            replica_urls,
            &config.pool,
            config.replica_wait,
            config.replica_max_lag,
        )?;
        let inner = Arc::new(Inner {
            pool,
            config,
            sqlite_writer: parking_lot::FairMutex::new(()),
            health: health::Probe::default(),
            replicas,
        });
        if !inner.replicas.is_empty() {
            replicas::monitor(Arc::downgrade(&inner));
        }
        Ok(Store { inner, after: None })
    }

    /// Closes this handle. When it is the last one, waits until every
    /// connection of its pool is closed, one a pool thread was still opening
    /// included (up to the connect timeout and a second): a process that exits
    /// right after (a command-line tool) then has no thread in a TLS handshake
    /// while its exit handlers run, which crashed it. With other handles
    /// alive it only drops this one.
    pub fn close(self) {
        let last = Arc::strong_count(&self.inner) == 1;
        let mut alive = vec![self.inner.pool.alive()];
        alive.extend(self.inner.replicas.alive());
        let within = self.inner.config.pool.connect_timeout + std::time::Duration::from_secs(1);
        drop(self);
        if last && !alive.iter().all(|a| a.wait_none(within)) {
            log::warn!("a connection of the store was still open {within:?} after it closed");
        }
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

    /// Pauses (`true`) or resumes (`false`) writes, in the database.
    ///
    /// The pause is a row of the database enforced by its triggers (see
    /// [`crate::maintenance`]), so it holds for every process and every other
    /// writer of the database, and survives restarts. While paused every write
    /// returns [`Error::ReadOnly`] and reads go on. Turning the pause on waits
    /// for writes already in flight, so once this returns no write can commit
    /// until the pause is lifted. Resuming a retired database fails with
    /// [`Error::Retired`].
    pub fn set_read_only(&self, on: bool) -> Result<()> {
        // On SQLite the flag is a write: it queues with this store's writers.
        let _writer = match self.backend() {
            Backend::Sqlite => Some(self.sqlite_writer_turn()?),
            Backend::Postgres => None,
        };
        self.inner.pool.run(|conn| {
            if on {
                crate::maintenance::pause(conn)
            } else {
                crate::maintenance::resume(conn)
            }
        })?;
        log::info!(
            "store writes {} at {}",
            if on { "paused (read-only)" } else { "resumed" },
            self.url().masked()
        );
        Ok(())
    }

    /// Whether writes are paused, as the database says.
    pub fn is_read_only(&self) -> Result<bool> {
        Ok(self.maintenance()?.paused)
    }

    /// The database's maintenance state: paused, retired and where to.
    pub fn maintenance(&self) -> Result<crate::maintenance::Maintenance> {
        self.read(crate::maintenance::read)
    }

    /// Connection pool state, for monitoring.
    pub fn pool_state(&self) -> PoolState {
        self.inner.pool.state()
    }

    /// Checks that the database answers within the configured health timeout, and reads its pause.
    ///
    /// One check (a read of the maintenance row, so a database without this
    /// crate's migrations counts as down). Never blocks longer than that timeout,
    /// even when the server hangs, and never runs more than one check at a time:
    /// concurrent callers share the check in flight, so a hung database cannot
    /// pile up threads.
    pub fn health(&self) -> Health {
        let timeout = self.inner.config.health_timeout;
        let started = Instant::now();
        let (maintenance, error) = match self.inner.health.check(self, timeout) {
            Ok(m) => (Some(m), None),
            Err(e) => (None, Some(e)),
        };
        Health {
            db_up: error.is_none(),
            backend: self.backend(),
            read_only: maintenance.as_ref().is_some_and(|m| m.paused),
            retired_to: maintenance.and_then(|m| m.retired_to),
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

    /// A handle whose session reads see at least `position` (`None`: only what
    /// this process wrote), e.g. the position another process's write returned.
    ///
    /// Shares everything else with `self`.
    pub fn after(&self, position: Option<Position>) -> Store {
        Store {
            inner: self.inner.clone(),
            after: position,
        }
    }

    /// A handle whose session reads go to the primary: for a read a write
    /// depends on (the history a reply is computed from), which must not be stale.
    pub fn primary(&self) -> Store {
        self.after(Some(Position::MAX))
    }

    /// The position of the last write to `session` this process made; `None`
    /// without replicas (positions are only read when replicas are configured).
    pub fn position_of(&self, session: Uuid) -> Option<Position> {
        self.inner.replicas.position_of(session)
    }

    /// Each replica's rotation, lag and reads served, in configuration order.
    pub fn replicas(&self) -> Vec<ReplicaState> {
        self.inner.replicas.states()
    }

    /// How many session reads went to the primary although replicas are configured, by reason.
    pub fn replica_fallbacks(&self) -> Vec<(Fallback, u64)> {
        self.inner.replicas.fallbacks()
    }

    /// A read of one session: on a replica that has replayed this process's
    /// last write to it (and [`Store::after`]'s position), else on the primary.
    fn read_session<T>(
        &self,
        session: Uuid,
        f: impl Fn(&mut AnyConnection) -> Result<T>,
    ) -> Result<T> {
        let replicas = &self.inner.replicas;
        if replicas.is_empty() {
            return self.read(f);
        }
        let need = self.after.max(replicas.position_of(session));
        // Asked for the primary ([`Store::primary`]), or a write whose position is unknown.
        if need == Some(Position::MAX) {
            return self.read(f);
        }
        match replicas.read(need, &f) {
            Ok(served) => served,
            Err(_) => self.read(f),
        }
    }

    /// Runs `f` in one write transaction ([`AnyConnection::write_transaction`]).
    ///
    /// `f` gets the current time read after the lock is held: on SQLite,
    /// where writers are serialised, timestamps then follow commit order,
    /// which is what makes `updated_at` usable as a high-water mark. No
    /// pause check here: the database's triggers refuse writes while paused.
    fn write<T>(
        &self,
        f: impl FnOnce(&mut AnyConnection, DateTime<Utc>) -> Result<T>,
    ) -> Result<T> {
        self.write_in(|_| None, f)
    }

    /// [`Store::write`] to the session `session` names in the result: with
    /// replicas, the primary's position after the commit is remembered for it.
    fn write_in<T>(
        &self,
        session: impl FnOnce(&T) -> Option<Uuid>,
        f: impl FnOnce(&mut AnyConnection, DateTime<Utc>) -> Result<T>,
    ) -> Result<T> {
        let track = !self.inner.replicas.is_empty();
        // Taken before the pool checkout, so queued writers do not hold connections.
        // Bounded like a checkout: a stuck writer turns the queue into 503s, not a pile of threads.
        let _writer = match self.backend() {
            Backend::Sqlite => Some(self.sqlite_writer_turn()?),
            Backend::Postgres => None,
        };
        let (value, at) = self.inner.pool.run(|conn| {
            let value = conn.write_transaction(|conn| f(conn, timestamp::now()))?;
            if !track {
                return Ok((value, None));
            }
            // The write is committed: failing it now would report a stored
            // write as failed. Without its position, its session is read on
            // the primary (the highest position no replica reaches).
            let at = replicas::after_commit(conn).unwrap_or_else(|e| {
                log::warn!(
                    "no WAL position after a commit ({e}): its session is read on the primary"
                );
                None
            });
            Ok((value, Some(at.unwrap_or(Position::MAX))))
        })?;
        if let (Some(at), Some(session)) = (at, session(&value)) {
            self.inner.replicas.remember(session, at);
        }
        Ok(value)
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
