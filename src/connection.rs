//! The connection to either backend: the MultiConnection, URL handling and
//! the per-connection setup.

use std::fmt;
use std::path::Path;
use std::time::Duration;

use diesel::connection::{AnsiTransactionManager, CacheSize, SimpleConnection, TransactionManager};
use diesel::{Connection, PgConnection, SqliteConnection};

pub use crate::conninfo::mask_password;
use crate::conninfo::{self, mask_in_text};
use crate::error::{Error, Result};

/// A connection to SQLite or PostgreSQL; every query is written once against it.
///
/// The derive also generates [`MultiBackend`], the backend type the schema's
/// custom SQL types are mapped for (see [`crate::types`]).
#[derive(diesel::MultiConnection)]
pub enum AnyConnection {
    /// PostgreSQL through libpq.
    Postgres(PgConnection),
    /// SQLite through libsqlite3.
    Sqlite(SqliteConnection),
}

impl AnyConnection {
    /// Runs `f` in one write transaction: committed if it succeeds, rolled back if not.
    ///
    /// On SQLite the transaction is `BEGIN IMMEDIATE`: it takes the write lock
    /// up front (waiting up to the busy timeout), so writers queue instead of
    /// failing with "database is locked" when a read turns into a write.
    pub(crate) fn write_transaction<T>(
        &mut self,
        f: impl FnOnce(&mut AnyConnection) -> Result<T>,
    ) -> Result<T> {
        // Inside a caller's transaction (a migration step that records its
        // phase in the same commit) this is a savepoint of it.
        match self {
            AnyConnection::Sqlite(c) => {
                if in_transaction(c) {
                    AnsiTransactionManager::begin_transaction(c)
                } else {
                    AnsiTransactionManager::begin_transaction_sql(c, "BEGIN IMMEDIATE")
                }
            }
            AnyConnection::Postgres(c) => {
                if in_transaction(c) {
                    AnsiTransactionManager::begin_transaction(c)
                } else {
                    AnsiTransactionManager::begin_transaction_sql(c, "BEGIN")
                }
            }
        }?;
        let result = f(self);
        let end = match (self, result.is_ok()) {
            (AnyConnection::Sqlite(c), true) => AnsiTransactionManager::commit_transaction(c),
            (AnyConnection::Postgres(c), true) => AnsiTransactionManager::commit_transaction(c),
            (AnyConnection::Sqlite(c), false) => AnsiTransactionManager::rollback_transaction(c),
            (AnyConnection::Postgres(c), false) => AnsiTransactionManager::rollback_transaction(c),
        };
        match (result, end) {
            (Ok(v), Ok(())) => Ok(v),
            (Ok(_), Err(e)) => Err(e.into()),
            // The operation's own error says more than a failed rollback.
            (Err(e), _) => Err(e),
        }
    }
}

fn in_transaction<C>(c: &mut C) -> bool
where
    C: diesel::Connection<TransactionManager = AnsiTransactionManager>,
{
    !matches!(
        AnsiTransactionManager::transaction_manager_status_mut(c).transaction_depth(),
        Ok(None)
    )
}

/// Which database engine a [`DatabaseUrl`] points at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// An SQLite file.
    Sqlite,
    /// A PostgreSQL server.
    Postgres,
}

impl Backend {
    /// `"sqlite"` or `"postgres"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Backend {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "sqlite" => Ok(Backend::Sqlite),
            "postgres" | "postgresql" => Ok(Backend::Postgres),
            other => Err(Error::invalid(
                "backend",
                format!("{other:?} is neither \"sqlite\" nor \"postgres\""),
            )),
        }
    }
}

/// A parsed database location; its form picks the backend.
///
/// `postgres://…`, `postgresql://…` and libpq keyword/value strings
/// (`host=db user=app dbname=interview`) are PostgreSQL; `sqlite://PATH`,
/// `sqlite:PATH` and a plain path are SQLite. Any other `scheme://`, and a
/// keyword/value string libpq would refuse, is refused rather than silently
/// taken for a file name. `Display` and `Debug` mask every password.
///
/// ```
/// use interview_store::{Backend, DatabaseUrl};
/// let url: DatabaseUrl = "postgres://app:s3cret@db.internal/interview".parse().unwrap();
/// assert_eq!(url.backend(), Backend::Postgres);
/// assert_eq!(url.masked(), "postgres://app:***@db.internal/interview");
/// let kv: DatabaseUrl = "host=db user=app password='s3 cret' dbname=interview".parse().unwrap();
/// assert_eq!(kv.backend(), Backend::Postgres);
/// assert_eq!(kv.to_string(), "host=db user=app password=*** dbname=interview");
/// let file: DatabaseUrl = "sqlite://data/interview.db".parse().unwrap();
/// assert_eq!(file.connection_string(), "data/interview.db");
/// assert!(DatabaseUrl::postgres("data/interview.db").is_err());
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct DatabaseUrl {
    backend: Backend,
    // For SQLite: the path handed to sqlite3_open; for PostgreSQL: the URL as given.
    target: String,
    // Whether PostgreSQL connections keep diesel's prepared statement cache.
    statement_cache: bool,
    // SQLite only: whether opening may create the file. The migration tool
    // works on files that exist; only a service creates its own database.
    create: bool,
}

impl DatabaseUrl {
    /// An SQLite database at `path`, created if missing (a warning names it then).
    pub fn sqlite(path: impl Into<String>) -> Self {
        DatabaseUrl {
            backend: Backend::Sqlite,
            target: path.into(),
            create: true,
            statement_cache: true,
        }
    }

    /// The same URL with diesel's prepared statement cache on (the default) or
    /// off for PostgreSQL connections.
    ///
    /// Turn it off behind a transaction-mode pooler (PgBouncer before 1.21,
    /// Supavisor's transaction port): the cache prepares each SELECT and INSERT
    /// once under a name like `__diesel_stmt_0`, and the pooler runs the next
    /// transaction on a server connection where that name does not exist.
    /// Off, every query goes through libpq's unnamed statement. SQLite ignores it.
    ///
    /// ```
    /// use interview_store::DatabaseUrl;
    /// let url: DatabaseUrl = "postgres://app@pooler:6432/interview".parse().unwrap();
    /// assert!(url.statement_cache());
    /// assert!(!url.with_statement_cache(false).statement_cache());
    /// ```
    pub fn with_statement_cache(mut self, on: bool) -> Self {
        self.statement_cache = on;
        self
    }

    /// Whether PostgreSQL connections opened from this URL cache prepared statements.
    pub fn statement_cache(&self) -> bool {
        self.statement_cache
    }

    /// An SQLite file that must already exist: opening it never creates one,
    /// and fails with [`Error::NoSuchFile`] when it is missing.
    ///
    /// ```
    /// use interview_store::{DatabaseUrl, Error, Store, StoreConfig};
    /// let dir = tempfile::tempdir().unwrap();
    /// let path = dir.path().join("missing.db");
    /// let url = DatabaseUrl::existing_sqlite(&path).unwrap();
    /// let err = Store::open(url, StoreConfig::default()).unwrap_err();
    /// assert!(matches!(err, Error::NoSuchFile { .. }), "{err}");
    /// assert!(!path.exists());
    /// ```
    pub fn existing_sqlite(path: &Path) -> Result<Self> {
        let target = path.to_str().ok_or_else(|| {
            Error::invalid(
                "sqlite path",
                format!("{} is not valid UTF-8", path.display()),
            )
        })?;
        Ok(DatabaseUrl {
            backend: Backend::Sqlite,
            target: target.to_string(),
            create: false,
            statement_cache: true,
        })
    }

    /// Parses `s` and accepts only PostgreSQL: a `postgres://` or
    /// `postgresql://` URL, or a libpq keyword/value string.
    ///
    /// The error never repeats `s`, which may hold a password.
    ///
    /// ```
    /// use interview_store::DatabaseUrl;
    /// assert!(DatabaseUrl::postgres("host=db dbname=interview").is_ok());
    /// let err = DatabaseUrl::postgres("interview.db").unwrap_err();
    /// assert!(err.to_string().contains("not a PostgreSQL"), "{err}");
    /// ```
    pub fn postgres(s: &str) -> Result<Self> {
        let url: DatabaseUrl = s.parse()?;
        if url.backend != Backend::Postgres {
            return Err(Error::invalid(
                "postgres url",
                "is not a PostgreSQL URL: expected postgres://USER@HOST/DB or keyword/value pairs like host=HOST dbname=DB, not a SQLite file",
            ));
        }
        Ok(url)
    }

    /// Which backend this URL points at.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// What the driver is handed: a file path for SQLite, the URL for PostgreSQL.
    pub fn connection_string(&self) -> &str {
        &self.target
    }

    /// The URL with every password replaced by `***`: the only form fit for logs.
    pub fn masked(&self) -> String {
        match self.backend {
            Backend::Sqlite => format!("sqlite://{}", self.target),
            Backend::Postgres => mask_password(&self.target),
        }
    }

    /// The same database with libpq's `connect_timeout` set, unless the URL sets one.
    pub(crate) fn with_connect_timeout(&self, timeout: Duration) -> DatabaseUrl {
        // libpq counts whole seconds.
        let secs = (timeout.as_secs() + u64::from(timeout.subsec_nanos() > 0)).max(1);
        self.with_default("connect_timeout", &secs.to_string())
    }

    /// Whether this PostgreSQL connection string names several hosts, which
    /// libpq tries in turn (`postgres://u@a:5432,b:5433/db`, `host=a,b port=5432,5433`).
    ///
    /// ```
    /// use interview_store::DatabaseUrl;
    /// let url: DatabaseUrl = "postgres://app@db1:5432,db2:5432/interview".parse().unwrap();
    /// assert!(url.is_multi_host());
    /// let kv: DatabaseUrl = "host=db1,db2 port=5432,5433 dbname=interview".parse().unwrap();
    /// assert!(kv.is_multi_host());
    /// assert!(!"postgres://app@db1/interview".parse::<DatabaseUrl>().unwrap().is_multi_host());
    /// ```
    pub fn is_multi_host(&self) -> bool {
        if self.backend != Backend::Postgres {
            return false;
        }
        let listed = |v: &str| v.contains(',');
        if crate::conninfo::is_uri(&self.target) {
            let rest = self.target.split_once("://").map_or("", |(_, r)| r);
            // The user info ends at the first `@` before the first `/` (libpq's reading).
            let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
            let authority = &rest[..authority_end];
            let hosts = authority.split_once('@').map_or(authority, |(_, h)| h);
            let query = rest.split_once('?').map_or("", |(_, q)| q);
            return listed(hosts)
                || query.split('&').any(|p| match p.split_once('=') {
                    Some((k, v)) => {
                        (k.eq_ignore_ascii_case("host") || k.eq_ignore_ascii_case("hostaddr"))
                            && (listed(v) || v.to_ascii_lowercase().contains("%2c"))
                    }
                    None => false,
                });
        }
        crate::conninfo::parse_pairs(&self.target).is_ok_and(|pairs| {
            pairs
                .iter()
                .any(|p| (p.key == "host" || p.key == "hostaddr") && listed(&p.value))
        })
    }

    /// The URL a store's primary pool connects with: with several hosts and no
    /// `target_session_attrs`, `target_session_attrs=read-write`.
    ///
    /// libpq's default (`any`) takes the first host that answers: after a
    /// primary's crash that is a standby, which refuses every write with a
    /// database error. With `read-write` libpq skips standbys, so until one is
    /// promoted the connection fails, the breaker opens and writes get a quick
    /// "unavailable" (503) instead.
    pub(crate) fn for_writes(&self) -> DatabaseUrl {
        if self.is_multi_host() {
            self.with_default("target_session_attrs", "read-write")
        } else {
            self.clone()
        }
    }

    /// The same database with libpq parameter `key=value` added, unless the URL sets `key`.
    fn with_default(&self, key: &str, value: &str) -> DatabaseUrl {
        if self.backend != Backend::Postgres || self.sets(key) {
            return self.clone();
        }
        let separator = if !crate::conninfo::is_uri(&self.target) {
            " " // keyword/value form
        } else if self.target.contains('?') {
            "&"
        } else {
            "?"
        };
        DatabaseUrl {
            target: format!("{}{separator}{key}={value}", self.target),
            ..self.clone()
        }
    }

    /// Whether a PostgreSQL connection string sets `key` itself.
    fn sets(&self, key: &str) -> bool {
        if crate::conninfo::is_uri(&self.target) {
            let query = self.target.split_once('?').map_or("", |(_, q)| q);
            return query.split('&').any(|p| {
                p.split('=')
                    .next()
                    .is_some_and(|k| k.eq_ignore_ascii_case(key))
            });
        }
        crate::conninfo::parse_pairs(&self.target)
            .is_ok_and(|pairs| pairs.iter().any(|p| p.key.eq_ignore_ascii_case(key)))
    }

    /// Opens one connection of the right variant (never tries the other backend).
    ///
    /// A failed TLS handshake or certificate check is [`Error::Tls`], any
    /// other failure [`Error::Connect`]; both carry the URL with its password masked.
    pub fn establish(&self) -> Result<AnyConnection> {
        match self.backend {
            Backend::Sqlite if !self.create => {
                open_existing_sqlite(Path::new(&self.target)).map(AnyConnection::Sqlite)
            }
            Backend::Sqlite => self.establish_or_create_sqlite().map(AnyConnection::Sqlite),
            Backend::Postgres => self.establish_postgres().map(AnyConnection::Postgres),
        }
    }

    fn establish_postgres(&self) -> Result<PgConnection> {
        let mut conn = PgConnection::establish(&self.target).map_err(|e| {
            let url = self.masked();
            let reason = mask_in_text(&e.to_string(), &self.target);
            if is_tls_failure(&reason) {
                Error::Tls { url, reason }
            } else {
                Error::Connect { url, reason }
            }
        })?;
        if !self.statement_cache {
            conn.set_prepared_statement_cache_size(CacheSize::Disabled);
        }
        Ok(conn)
    }

    fn establish_or_create_sqlite(&self) -> Result<SqliteConnection> {
        let path = Path::new(&self.target);
        let existed = path.exists();
        let conn = SqliteConnection::establish(&self.target).map_err(|e| Error::Connect {
            url: self.masked(),
            reason: e.to_string(),
        })?;
        if !existed && path.exists() {
            let shown = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
            log::warn!(
                "created a new, empty SQLite database at {}",
                shown.display()
            );
        }
        Ok(conn)
    }
}

/// Opens an SQLite file that must exist; never creates one.
///
/// Fails with [`Error::NoSuchFile`] when `path` is not a file, and opens it
/// with SQLite's `mode=rw`, so a file removed meanwhile is not recreated.
/// Every migration command that reads or updates a file opens it here (or
/// through [`DatabaseUrl::existing_sqlite`]).
pub fn open_existing_sqlite(path: &Path) -> Result<SqliteConnection> {
    open_existing(path, "rw")
}

/// Opens an SQLite file that must exist, read-only (`mode=ro`): for the
/// reporting commands, which must change nothing, not even by adopting a
/// legacy file's schema.
pub fn open_sqlite_read_only(path: &Path) -> Result<SqliteConnection> {
    open_existing(path, "ro")
}

fn open_existing(path: &Path, mode: &str) -> Result<SqliteConnection> {
    require_sqlite_file(path)?;
    let shown = path.display().to_string();
    let text = path
        .to_str()
        .ok_or_else(|| Error::invalid("sqlite path", format!("{shown} is not valid UTF-8")))?;
    SqliteConnection::establish(&existing_file_uri(text, mode)).map_err(|e| Error::Connect {
        url: format!("sqlite://{shown}"),
        reason: e.to_string(),
    })
}

/// Fails with [`Error::NoSuchFile`] unless `path` is an existing file.
///
/// For steps that must find the SQLite file before touching anything else
/// (e.g. before connecting to PostgreSQL).
pub fn require_sqlite_file(path: &Path) -> Result<()> {
    if path.is_file() {
        Ok(())
    } else {
        Err(Error::NoSuchFile {
            path: path.display().to_string(),
        })
    }
}

/// An SQLite URI opening `path` read-write without creating it.
fn existing_file_uri(path: &str, mode: &str) -> String {
    // An absolute path gets an empty authority, so a path starting with `//`
    // is not read as a host name.
    let mut uri = String::from(if path.starts_with('/') {
        "file://"
    } else {
        "file:"
    });
    for c in path.chars() {
        match c {
            '%' => uri.push_str("%25"),
            '?' => uri.push_str("%3F"),
            '#' => uri.push_str("%23"),
            c => uri.push(c),
        }
    }
    uri.push_str("?mode=");
    uri.push_str(mode);
    uri
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.masked())
    }
}

impl fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.masked())
    }
}

impl std::str::FromStr for DatabaseUrl {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let s = s.trim();
        if s.is_empty() {
            return Err(Error::invalid("database url", "is empty"));
        }
        let postgres = |target: &str| DatabaseUrl {
            backend: Backend::Postgres,
            target: target.to_string(),
            create: false,
            statement_cache: true,
        };
        if conninfo::is_uri(s) {
            return Ok(postgres(s));
        }
        if let Some(path) =
            strip_prefix_ci(s, "sqlite://").or_else(|| strip_prefix_ci(s, "sqlite:"))
        {
            if path.is_empty() {
                return Err(Error::invalid("database url", "sqlite URL has no path"));
            }
            return Ok(DatabaseUrl::sqlite(path));
        }
        if conninfo::looks_like_pairs(s) {
            return match conninfo::parse_pairs(s) {
                Ok(_) => Ok(postgres(s)),
                Err(e) => Err(Error::invalid("database url", e.to_string())),
            };
        }
        if let Some((scheme, _)) = s.split_once("://") {
            // Only a plain scheme is repeated: the text before `://` may hold anything.
            let shown = if !scheme.is_empty()
                && scheme
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
            {
                format!("unsupported scheme {scheme:?}")
            } else {
                "unsupported URL".to_string()
            };
            return Err(Error::invalid(
                "database url",
                format!("{shown}: use postgres://, keyword/value pairs, sqlite:// or a file path"),
            ));
        }
        Ok(DatabaseUrl::sqlite(s))
    }
}

/// Whether libpq's connection failure is about TLS: a certificate that does
/// not verify or name the host, a missing root certificate, a server without TLS.
fn is_tls_failure(reason: &str) -> bool {
    let lower = reason.to_ascii_lowercase();
    lower.contains("certificate")
        || lower.contains("ssl error")
        || lower.contains("does not support ssl")
}

fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    if conninfo::starts_with_ci(s, prefix) {
        s.get(prefix.len()..)
    } else {
        None
    }
}

/// Runs the per-connection setup on every new pooled connection.
///
/// SQLite: WAL, enforced foreign keys, a busy timeout and `synchronous=NORMAL`
/// (durable across application crashes, and fast in WAL mode). PostgreSQL:
/// the statement timeout when one is configured, and nothing else: timestamps
/// travel as binary `TIMESTAMPTZ` whatever the session's time zone, so a
/// transaction-mode pooler loses nothing the store relies on.
#[derive(Debug, Clone)]
pub(crate) struct ConnectionSetup {
    pub busy_timeout: Duration,
    pub statement_timeout: Option<Duration>,
}

impl ConnectionSetup {
    pub(crate) fn apply(&self, conn: &mut AnyConnection) -> diesel::QueryResult<()> {
        match conn {
            AnyConnection::Sqlite(c) => c.batch_execute(&format!(
                "PRAGMA busy_timeout = {}; PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON; PRAGMA mmap_size = 268435456;",
                self.busy_timeout.as_millis()
            )),
            AnyConnection::Postgres(c) => match self.statement_timeout {
                // A session setting: behind a transaction pooler it lands on one
                // server connection only; set it on the role there (docs/operations.md,
                // Managed PostgreSQL).
                Some(t) => c.batch_execute(&format!(
                    "SET statement_timeout = {}",
                    t.as_millis().max(1)
                )),
                None => Ok(()),
            },
        }
    }
}

/// The r2d2 manager: opens connections of the URL's own backend.
///
/// diesel's `ConnectionManager<AnyConnection>` would try PostgreSQL then SQLite
/// for every URL, and SQLite accepts any string as a file name, so an
/// unreachable PostgreSQL would quietly become a new local file.
#[derive(Debug)]
pub(crate) struct Manager {
    pub url: DatabaseUrl,
    /// The pool's connections, open or being opened (see [`Alive`]).
    pub alive: std::sync::Arc<Alive>,
}

/// How many connections of a pool are open or being opened, on any thread:
/// r2d2 opens them on threads of its own and has no join, so this is what a
/// closing store waits on (see [`crate::Store::close`]).
#[derive(Debug, Default)]
pub(crate) struct Alive {
    n: parking_lot::Mutex<usize>,
    gone: parking_lot::Condvar,
}

impl Alive {
    fn enter(self: &std::sync::Arc<Self>) -> AliveGuard {
        *self.n.lock() += 1;
        AliveGuard(self.clone())
    }

    /// Waits until no connection is open or being opened; false after `within`.
    pub(crate) fn wait_none(&self, within: std::time::Duration) -> bool {
        let deadline = std::time::Instant::now() + within;
        let mut n = self.n.lock();
        while *n > 0 {
            if self.gone.wait_until(&mut n, deadline).timed_out() {
                return *n == 0;
            }
        }
        true
    }
}

/// One connection counted by [`Alive`] from before it is opened until it is closed.
#[derive(Debug)]
pub(crate) struct AliveGuard(std::sync::Arc<Alive>);

impl Drop for AliveGuard {
    fn drop(&mut self) {
        let mut n = self.0.n.lock();
        *n = n.saturating_sub(1);
        if *n == 0 {
            self.0.gone.notify_all();
        }
    }
}

/// A pooled connection, plus whether an operation saw it die.
///
/// Pinging on every checkout would cost a round trip per operation; instead
/// an operation that loses the server marks its connection, and the pool
/// drops it on return.
pub struct PoolConnection {
    pub(crate) conn: AnyConnection,
    pub(crate) lost: bool,
    /// Last, so that it is released after the connection closed.
    _alive: AliveGuard,
}

impl r2d2::ManageConnection for Manager {
    type Connection = PoolConnection;
    type Error = Error;

    fn connect(&self) -> Result<PoolConnection> {
        // Counted from before the attempt: a handshake in progress is what a
        // closing store must not leave behind.
        let alive = self.alive.enter();
        Ok(PoolConnection {
            conn: self.url.establish()?,
            lost: false,
            _alive: alive,
        })
    }

    fn is_valid(&self, conn: &mut PoolConnection) -> Result<()> {
        conn.conn.batch_execute("SELECT 1").map_err(Error::from)
    }

    fn has_broken(&self, conn: &mut PoolConnection) -> bool {
        use diesel::connection::{AnsiTransactionManager, TransactionManager};
        conn.lost
            || match &mut conn.conn {
                AnyConnection::Postgres(c) => {
                    AnsiTransactionManager::is_broken_transaction_manager(c)
                }
                AnyConnection::Sqlite(c) => {
                    AnsiTransactionManager::is_broken_transaction_manager(c)
                }
            }
    }
}

/// r2d2 hook that runs [`ConnectionSetup`] on each connection it opens.
#[derive(Debug)]
pub(crate) struct Customizer(pub ConnectionSetup);

impl r2d2::CustomizeConnection<PoolConnection, Error> for Customizer {
    fn on_acquire(&self, conn: &mut PoolConnection) -> Result<()> {
        self.0.apply(&mut conn.conn).map_err(Error::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_timeout(url: &str) -> String {
        let url: DatabaseUrl = url.parse().unwrap();
        url.with_connect_timeout(Duration::from_millis(2500))
            .connection_string()
            .to_string()
    }

    #[test]
    fn connect_timeout_is_added_in_the_form_of_the_string_unless_set() {
        assert_eq!(
            with_timeout("postgres://u@h/db"),
            "postgres://u@h/db?connect_timeout=3"
        );
        assert_eq!(
            with_timeout("postgres://u@h/db?sslmode=require"),
            "postgres://u@h/db?sslmode=require&connect_timeout=3"
        );
        assert_eq!(
            with_timeout("host=h user=u dbname=db"),
            "host=h user=u dbname=db connect_timeout=3"
        );
        assert_eq!(
            with_timeout("postgres://u@h/db?Connect_Timeout=7"),
            "postgres://u@h/db?Connect_Timeout=7"
        );
        assert_eq!(
            with_timeout("host=h connect_timeout = 7"),
            "host=h connect_timeout = 7"
        );
        assert_eq!(with_timeout("sqlite://x.db"), "x.db");
    }

    fn for_writes(url: &str) -> String {
        let url: DatabaseUrl = url.parse().unwrap();
        url.for_writes().connection_string().to_string()
    }

    #[test]
    fn several_hosts_get_read_write_sessions_unless_the_url_says_otherwise() {
        assert_eq!(
            for_writes("postgres://u:p@a:5432,b:5433/db"),
            "postgres://u:p@a:5432,b:5433/db?target_session_attrs=read-write"
        );
        assert_eq!(
            for_writes("host=a,b port=5432,5433 dbname=db"),
            "host=a,b port=5432,5433 dbname=db target_session_attrs=read-write"
        );
        assert_eq!(
            for_writes("postgres:///db?host=a,b&target_session_attrs=any"),
            "postgres:///db?host=a,b&target_session_attrs=any"
        );
        // One host: nothing added (a password with a comma is not a host list).
        assert_eq!(for_writes("postgres://u:p,q@a/db"), "postgres://u:p,q@a/db");
        assert_eq!(for_writes("host=a dbname=db"), "host=a dbname=db");
        assert_eq!(for_writes("sqlite://a,b.db"), "a,b.db");
    }
}
