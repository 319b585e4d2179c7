//! The connection to either backend: the MultiConnection, URL handling and
//! the per-connection setup.

use std::fmt;
use std::time::Duration;

use diesel::connection::{CacheSize, SimpleConnection};
use diesel::{Connection, PgConnection, SqliteConnection};

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

/// A parsed database location; the scheme picks the backend.
///
/// `postgres://…` and `postgresql://…` are PostgreSQL; `sqlite://PATH`,
/// `sqlite:PATH` and a plain path are SQLite. Any other `scheme://` is refused
/// rather than silently taken for a file name.
///
/// ```
/// use interview_store::{Backend, DatabaseUrl};
/// let url: DatabaseUrl = "postgres://app:s3cret@db.internal/interview".parse().unwrap();
/// assert_eq!(url.backend(), Backend::Postgres);
/// assert_eq!(url.masked(), "postgres://app:***@db.internal/interview");
/// let file: DatabaseUrl = "sqlite://data/interview.db".parse().unwrap();
/// assert_eq!(file.connection_string(), "data/interview.db");
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct DatabaseUrl {
    backend: Backend,
    // For SQLite: the path handed to sqlite3_open; for PostgreSQL: the URL as given.
    target: String,
    // Whether PostgreSQL connections keep diesel's prepared statement cache.
    statement_cache: bool,
}

impl DatabaseUrl {
    /// An SQLite database at `path`.
    pub fn sqlite(path: impl Into<String>) -> Self {
        DatabaseUrl {
            backend: Backend::Sqlite,
            target: path.into(),
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

    /// Which backend this URL points at.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// What the driver is handed: a file path for SQLite, the URL for PostgreSQL.
    pub fn connection_string(&self) -> &str {
        &self.target
    }

    /// The URL with any password replaced by `***`: the only form fit for logs.
    pub fn masked(&self) -> String {
        match self.backend {
            Backend::Sqlite => format!("sqlite://{}", self.target),
            Backend::Postgres => mask_password(&self.target),
        }
    }

    /// Opens one connection of the right variant (never tries the other backend).
    ///
    /// A failed TLS handshake or certificate check is [`Error::Tls`], any
    /// other failure [`Error::Connect`]; both carry the URL with its password masked.
    pub fn establish(&self) -> Result<AnyConnection> {
        let conn = match self.backend {
            Backend::Sqlite => SqliteConnection::establish(&self.target).map(AnyConnection::Sqlite),
            Backend::Postgres => PgConnection::establish(&self.target).map(|mut c| {
                if !self.statement_cache {
                    c.set_prepared_statement_cache_size(CacheSize::Disabled);
                }
                AnyConnection::Postgres(c)
            }),
        };
        conn.map_err(|e| {
            let url = self.masked();
            let reason = mask_in_text(&e.to_string(), &self.target);
            if self.backend == Backend::Postgres && is_tls_failure(&reason) {
                Error::Tls { url, reason }
            } else {
                Error::Connect { url, reason }
            }
        })
    }
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
        let lower = s.to_ascii_lowercase();
        if lower.starts_with("postgres://") || lower.starts_with("postgresql://") {
            return Ok(DatabaseUrl {
                backend: Backend::Postgres,
                target: s.to_string(),
                statement_cache: true,
            });
        }
        if let Some(path) =
            strip_prefix_ci(s, "sqlite://").or_else(|| strip_prefix_ci(s, "sqlite:"))
        {
            if path.is_empty() {
                return Err(Error::invalid("database url", "sqlite URL has no path"));
            }
            return Ok(DatabaseUrl::sqlite(path));
        }
        if let Some((scheme, _)) = s.split_once("://") {
            return Err(Error::invalid(
                "database url",
                format!("unsupported scheme {scheme:?}: use postgres://, sqlite:// or a file path"),
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
    (s.len() >= prefix.len() && s[..prefix.len()].eq_ignore_ascii_case(prefix))
        .then(|| &s[prefix.len()..])
}

/// Replaces the password of a `scheme://user:password@host…` URL, and any
/// `password=` query parameter, with `***`.
///
/// ```
/// use interview_store::connection::mask_password;
/// assert_eq!(mask_password("postgres://u:p%40ss@h:5432/db?sslmode=require"), "postgres://u:***@h:5432/db?sslmode=require");
/// assert_eq!(mask_password("postgres://h/db?user=u&password=x"), "postgres://h/db?user=u&password=***");
/// assert_eq!(mask_password("postgres://u@h/db"), "postgres://u@h/db");
/// ```
pub fn mask_password(url: &str) -> String {
    let mut out = url.to_string();
    if let Some(scheme_end) = out.find("://") {
        let auth_start = scheme_end + 3;
        let auth_end = out[auth_start..]
            .find(['/', '?', '#'])
            .map_or(out.len(), |i| auth_start + i);
        if let Some(at) = out[auth_start..auth_end].rfind('@') {
            let userinfo = &out[auth_start..auth_start + at];
            if let Some(colon) = userinfo.find(':') {
                out.replace_range(auth_start + colon + 1..auth_start + at, "***");
            }
        }
    }
    let lower = out.to_ascii_lowercase();
    if let Some(i) = lower.find("password=") {
        let start = i + "password=".len();
        let end = out[start..].find('&').map_or(out.len(), |j| start + j);
        out.replace_range(start..end, "***");
    }
    out
}

/// Removes the password of `url` from a driver message that might echo it.
fn mask_in_text(text: &str, url: &str) -> String {
    match password_of(url) {
        Some(p) if !p.is_empty() => text.replace(p, "***"),
        _ => text.to_string(),
    }
}

fn password_of(url: &str) -> Option<&str> {
    let rest = &url[url.find("://")? + 3..];
    let auth = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    let userinfo = &auth[..auth.rfind('@')?];
    Some(&userinfo[userinfo.find(':')? + 1..])
}

/// Runs the per-connection setup on every new pooled connection.
///
/// SQLite: WAL, enforced foreign keys, a busy timeout and `synchronous=NORMAL`
/// (durable across application crashes, and fast in WAL mode). PostgreSQL:
/// nothing, so a connection holds no session state a transaction-mode pooler
/// would lose: timestamps travel as binary `TIMESTAMPTZ`, whatever the
/// session's time zone.
#[derive(Debug, Clone)]
pub(crate) struct ConnectionSetup {
    pub busy_timeout: Duration,
}

impl ConnectionSetup {
    pub(crate) fn apply(&self, conn: &mut AnyConnection) -> diesel::QueryResult<()> {
        match conn {
            AnyConnection::Sqlite(c) => c.batch_execute(&format!(
                "PRAGMA busy_timeout = {}; PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON; PRAGMA mmap_size = 268435456;",
                self.busy_timeout.as_millis()
            )),
            AnyConnection::Postgres(_) => Ok(()),
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
}

/// A pooled connection, plus whether an operation saw it die.
///
/// Pinging on every checkout would cost a round trip per operation; instead
/// an operation that loses the server marks its connection, and the pool
/// drops it on return.
pub struct PoolConnection {
    pub(crate) conn: AnyConnection,
    pub(crate) lost: bool,
}

impl r2d2::ManageConnection for Manager {
    type Connection = PoolConnection;
    type Error = Error;

    fn connect(&self) -> Result<PoolConnection> {
        Ok(PoolConnection {
            conn: self.url.establish()?,
            lost: false,
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
