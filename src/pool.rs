//! The one place that owns database connections: an r2d2 pool with a bounded wait.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::breaker::Breaker;
use crate::connection::{Alive, AnyConnection, ConnectionSetup, Customizer, DatabaseUrl, Manager};
use crate::error::{Error, Result};

/// Pool sizing and time limits.
///
/// ```
/// use std::time::Duration;
/// let config = interview_store::PoolConfig { max_size: 4, ..Default::default() };
/// assert_eq!(config.connection_timeout, Duration::from_secs(5));
/// ```
#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// Most connections open at once.
    pub max_size: u32,
    /// Connections kept open while idle (`None`: same as `max_size`).
    pub min_idle: Option<u32>,
    /// Longest wait for a free connection before an operation fails with
    /// [`Error::PoolTimeout`]: saturation becomes an error, not a hang.
    pub connection_timeout: Duration,
    /// How long SQLite waits on a locked database before giving up.
    pub busy_timeout: Duration,
    /// PostgreSQL: longest wait to open one connection (libpq `connect_timeout`,
    /// whole seconds, rounded up). Without it a server that accepts TCP but never
    /// answers would hang the connection attempt forever. A `connect_timeout` in
    /// the URL wins.
    pub connect_timeout: Duration,
    /// PostgreSQL: longest a statement may run (`statement_timeout`, set on
    /// each new connection); `None` leaves the server's setting. Off by default
    /// because the migration tool runs long bulk statements; the HTTP server
    /// sets 30 s (`INTERVIEW_STATEMENT_TIMEOUT_MS`).
    pub statement_timeout: Option<Duration>,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            max_size: 10,
            min_idle: Some(1),
            connection_timeout: Duration::from_secs(5),
            busy_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(10),
            statement_timeout: None,
        }
    }
}

pub(crate) type PooledConnection = r2d2::PooledConnection<Manager>;

/// Pool state for monitoring.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct PoolState {
    /// Open connections.
    pub connections: u32,
    /// Open connections not in use.
    pub idle: u32,
    /// Configured maximum.
    pub max_size: u32,
    /// Waits for a connection that ended in [`Error::PoolTimeout`] since start.
    pub timeouts: u64,
    /// Checkouts that found no idle connection and had to wait or open one.
    pub waits: u64,
    /// Whether the circuit breaker is open: the database is unreachable and
    /// checkouts fail at once until a background probe connects again.
    pub breaker_open: bool,
}

#[derive(Debug)]
pub(crate) struct Pool {
    inner: r2d2::Pool<Manager>,
    url: DatabaseUrl,
    timeout: Duration,
    timeouts: AtomicU64,
    waits: AtomicU64,
    breaker: Arc<Breaker>,
    alive: Arc<Alive>,
}

impl Pool {
    /// Opens the pool and one connection, so a wrong URL fails here and not on first use.
    pub(crate) fn open(url: DatabaseUrl, config: &PoolConfig) -> Result<Self> {
        Pool::build(url, config, true)
    }

    /// A replica's pool: opens nothing here, so a replica that is down does not
    /// keep the store from opening (it stays out of rotation until it answers),
    /// and keeps the URL's own `target_session_attrs`.
    pub(crate) fn open_replica(url: DatabaseUrl, config: &PoolConfig) -> Result<Self> {
        Pool::build(url, config, false)
    }

    fn build(url: DatabaseUrl, config: &PoolConfig, primary: bool) -> Result<Self> {
        // An in-memory SQLite database lives in one connection: a second one would be a different database.
        let in_memory = url.backend() == crate::Backend::Sqlite
            && (url.connection_string() == ":memory:"
                || url.connection_string().contains("mode=memory"));
        let max_size = if in_memory { 1 } else { config.max_size.max(1) };
        // Fail fast with the driver's own reason rather than a generic pool timeout,
        // and switch a new SQLite file to WAL before the pool opens connections
        // in parallel (changing the journal mode needs the database to itself).
        let connect_url = url
            .with_connect_timeout(config.connect_timeout)
            .for_writes();
        let setup = ConnectionSetup {
            busy_timeout: config.busy_timeout,
            statement_timeout: config.statement_timeout,
        };
        if primary {
            let mut probe = connect_url.establish()?;
            setup.apply(&mut probe)?;
        }
        let breaker = Breaker::new(connect_url.clone());
        let alive = Arc::new(Alive::default());
        let inner = r2d2::Pool::builder()
            .max_size(max_size)
            .min_idle(config.min_idle.map(|m| m.min(max_size)))
            // Our own loop bounds a checkout (`get_within`, `connection_timeout`);
            // r2d2 uses its timeout only to cap the doubling delay between its
            // retries of a failed connection (half of it). Left at 5 s, a pool
            // that failed for a few seconds (a failover) retried only every 2.5 s,
            // and writes stayed refused up to that long after the new primary was up.
            .connection_timeout(RETRY_CAP * 2)
            // A ping per checkout would double the round trips of a short query;
            // dead connections are found by the operations instead (see `run`).
            .test_on_check_out(false)
            .connection_customizer(Box::new(Customizer(setup)))
            .error_handler(Box::new(LogErrors(breaker.clone())))
            .build_unchecked(Manager {
                url: connect_url,
                alive: alive.clone(),
            });
        let pool = Pool {
            inner,
            url,
            timeout: config.connection_timeout,
            timeouts: AtomicU64::new(0),
            waits: AtomicU64::new(0),
            breaker,
            alive,
        };
        Ok(pool)
    }

    /// Runs `f` on a pooled connection; a connection the server dropped is discarded afterwards.
    pub(crate) fn run<T>(&self, f: impl FnOnce(&mut AnyConnection) -> Result<T>) -> Result<T> {
        self.run_within(self.timeout, f)
    }

    /// [`Pool::run`], waiting at most `wait` for a connection.
    pub(crate) fn run_within<T>(
        &self,
        wait: Duration,
        f: impl FnOnce(&mut AnyConnection) -> Result<T>,
    ) -> Result<T> {
        let mut pooled = self.get_within(wait)?;
        let result = f(&mut pooled.conn);
        if let Err(e) = &result {
            if e.is_connection_lost() {
                pooled.lost = true;
            }
        }
        result
    }

    /// A connection within `wait`; at once an error while the database is known to be unreachable.
    pub(crate) fn get_within(&self, wait: Duration) -> Result<PooledConnection> {
        if self.inner.state().idle_connections == 0 {
            self.waits.fetch_add(1, Ordering::Relaxed);
        }
        let deadline = Instant::now() + wait;
        loop {
            if let Some(refused) = self.breaker.refusal() {
                // An idle connection may still work (the failure may have been
                // "too many clients"); a dead one fails at once on use anyway.
                // What must not happen is waiting for a new one.
                return self.inner.try_get().ok_or(refused);
            }
            // Short slices, so a breaker that opens meanwhile ends the wait.
            let slice = deadline
                .saturating_duration_since(Instant::now())
                .min(BREAKER_CHECK);
            match self.inner.get_timeout(slice) {
                Ok(c) => return Ok(c),
                Err(e) if Instant::now() >= deadline => {
                    self.timeouts.fetch_add(1, Ordering::Relaxed);
                    return Err(Error::PoolTimeout {
                        waited: wait,
                        url: self.url.masked(),
                        last_error: Some(e.to_string())
                            .filter(|m| !m.is_empty() && m != "timed out waiting for connection"),
                    });
                }
                Err(_) => {}
            }
        }
    }

    pub(crate) fn state(&self) -> PoolState {
        let s = self.inner.state();
        PoolState {
            connections: s.connections,
            idle: s.idle_connections,
            max_size: self.inner.max_size(),
            timeouts: self.timeouts.load(Ordering::Relaxed),
            waits: self.waits.load(Ordering::Relaxed),
            breaker_open: self.breaker.is_open(),
        }
    }

    pub(crate) fn url(&self) -> &DatabaseUrl {
        &self.url
    }

    /// The count of this pool's connections, open or being opened.
    pub(crate) fn alive(&self) -> Arc<Alive> {
        self.alive.clone()
    }
}

/// The longest r2d2 waits between two attempts to open a connection that failed.
const RETRY_CAP: Duration = Duration::from_millis(500);

/// How often a waiting checkout looks at the breaker.
const BREAKER_CHECK: Duration = Duration::from_millis(25);

/// Logs the pool's failed connection attempts, and opens the breaker on them.
#[derive(Debug)]
struct LogErrors(Arc<Breaker>);

impl r2d2::HandleError<Error> for LogErrors {
    fn handle_error(&self, error: Error) {
        log::warn!("connection pool: {error}");
        if let Error::Connect { .. } = error {
            self.0.trip(crate::breaker::reason_of(error));
        }
    }
}
