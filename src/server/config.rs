//! Server settings from the environment.

use std::net::SocketAddr;
use std::time::Duration;

use crate::connection::{Backend, DatabaseUrl};
use crate::error::{Error, Result};
use crate::store::StoreConfig;

use super::shadow::ShadowConfig;
use super::Limits;

/// Everything the example server reads from its environment.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// `INTERVIEW_DB_BACKEND`: `sqlite` (default) or `postgres`. Rollback is flipping it back.
    pub backend: Backend,
    /// `INTERVIEW_SQLITE_PATH` (default `interview.db`).
    pub sqlite_path: String,
    /// Whether `INTERVIEW_SQLITE_PATH` was set: a server on PostgreSQL follows a
    /// switch back to SQLite only to a file it was told about.
    pub sqlite_path_given: bool,
    /// `INTERVIEW_POSTGRES_URL`, a PostgreSQL URL or keyword/value string
    /// (anything else is refused); required when the backend is `postgres`.
    /// Its `Debug` masks the password.
    pub postgres_url: Option<DatabaseUrl>,
    /// `INTERVIEW_ADDR` (default `127.0.0.1:8080`).
    pub addr: SocketAddr,
    /// `INTERVIEW_ADMIN_TOKEN`; admin endpoints are off when unset.
    pub admin_token: Option<String>,
    /// `INTERVIEW_POOL_SIZE`, `INTERVIEW_POOL_TIMEOUT_MS`, `INTERVIEW_HEALTH_TIMEOUT_MS`,
    /// `INTERVIEW_CONNECT_TIMEOUT_MS` (default 10,000),
    /// `INTERVIEW_STATEMENT_TIMEOUT_MS` (default 30,000; `0` leaves the server's setting),
    /// `INTERVIEW_PG_STATEMENT_CACHE` (`on`, the default, or `off` behind a transaction pooler),
    /// `INTERVIEW_POSTGRES_REPLICA_URLS` (comma-separated `postgres://` URLs of hot standbys),
    /// `INTERVIEW_REPLICA_WAIT_MS` (default 50) and `INTERVIEW_REPLICA_MAX_LAG_MS` (default 30,000).
    pub store: StoreConfig,
    /// `INTERVIEW_REQUEST_TIMEOUT_MS` (default 10,000): longest wait on the database per request.
    pub request_timeout: Duration,
    /// Header read and HTTP timeouts, concurrency, shutdown deadline, idempotency-key retention.
    pub limits: Limits,
    /// `INTERVIEW_PAUSE_WAIT_MS` (default 2,000): how long a write refused by a
    /// paused or retired database is held and retried before it answers 503.
    pub pause_wait: Duration,
    /// `INTERVIEW_SHADOW_READS` (default 0, off) and `INTERVIEW_SHADOW_SETTLE_MS`
    /// (default 5,000): the share of session and draft reads also read from the
    /// other backend and compared.
    pub shadow: ShadowConfig,
}

impl ServerConfig {
    /// Reads the configuration from the process environment.
    pub fn from_env() -> Result<Self> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// Reads the configuration through `get` (the environment, or a map in tests).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let get = |k: &str| get(k).filter(|v| !v.trim().is_empty());
        let ms = |k: &'static str, default: u64| -> Result<Duration> {
            get(k).map_or(Ok(Duration::from_millis(default)), |v| {
                v.trim().parse().map(Duration::from_millis).map_err(|_| {
                    Error::invalid(k, format!("{v:?} is not a number of milliseconds"))
                })
            })
        };
        let mut store = StoreConfig::default();
        if let Some(v) = get("INTERVIEW_POOL_SIZE") {
            store.pool.max_size = v.trim().parse().ok().filter(|n| *n > 0).ok_or_else(|| {
                Error::invalid(
                    "INTERVIEW_POOL_SIZE",
                    format!("{v:?} is not a positive number"),
                )
            })?;
        }
        store.pool.connection_timeout = ms("INTERVIEW_POOL_TIMEOUT_MS", 5_000)?;
        store.health_timeout = ms("INTERVIEW_HEALTH_TIMEOUT_MS", 2_000)?;
        if let Some(v) = get("INTERVIEW_PG_STATEMENT_CACHE") {
            store.pg_statement_cache = on_off("INTERVIEW_PG_STATEMENT_CACHE", &v)?;
        }
        store.pool.connect_timeout = ms("INTERVIEW_CONNECT_TIMEOUT_MS", 10_000)?;
        if let Some(v) = get("INTERVIEW_POSTGRES_REPLICA_URLS") {
            store.replicas = replica_urls(&v)?;
        }
        store.replica_wait = ms("INTERVIEW_REPLICA_WAIT_MS", 50)?;
        store.replica_max_lag = ms("INTERVIEW_REPLICA_MAX_LAG_MS", 30_000)?;
        store.pool.statement_timeout =
            Some(ms("INTERVIEW_STATEMENT_TIMEOUT_MS", 30_000)?).filter(|t| !t.is_zero());
        let count = |k: &'static str, default: usize| -> Result<usize> {
            get(k).map_or(Ok(default), |v| {
                v.trim()
                    .parse()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| Error::invalid(k, format!("{v:?} is not a positive number")))
            })
        };
        let defaults = Limits::default();
        let limits = Limits {
            header_read_timeout: ms("INTERVIEW_HEADER_READ_TIMEOUT_MS", 5_000)?,
            http_timeout: ms("INTERVIEW_HTTP_TIMEOUT_MS", 30_000)?,
            max_concurrent_requests: count(
                "INTERVIEW_MAX_CONCURRENT_REQUESTS",
                defaults.max_concurrent_requests,
            )?,
            shutdown_timeout: ms("INTERVIEW_SHUTDOWN_TIMEOUT_MS", 10_000)?,
            idempotency_retention: Duration::from_secs(3600).saturating_mul(
                u32::try_from(count("INTERVIEW_IDEMPOTENCY_RETENTION_HOURS", 24)?).map_err(
                    |_| Error::invalid("INTERVIEW_IDEMPOTENCY_RETENTION_HOURS", "is too large"),
                )?,
            ),
            slow_request: ms("INTERVIEW_SLOW_REQUEST_MS", 250)?,
        };
        let addr = get("INTERVIEW_ADDR").unwrap_or_else(|| "127.0.0.1:8080".into());
        Ok(ServerConfig {
            backend: get("INTERVIEW_DB_BACKEND").map_or(Ok(Backend::Sqlite), |v| v.parse())?,
            sqlite_path: get("INTERVIEW_SQLITE_PATH").unwrap_or_else(|| "interview.db".into()),
            sqlite_path_given: get("INTERVIEW_SQLITE_PATH").is_some(),
            postgres_url: get("INTERVIEW_POSTGRES_URL")
                .map(|v| DatabaseUrl::postgres(&v).map_err(postgres_setting))
                .transpose()?,
            addr: addr.parse().map_err(|_| {
                Error::invalid("INTERVIEW_ADDR", format!("{addr:?} is not HOST:PORT"))
            })?,
            admin_token: get("INTERVIEW_ADMIN_TOKEN"),
            store,
            request_timeout: ms("INTERVIEW_REQUEST_TIMEOUT_MS", 10_000)?,
            limits,
            pause_wait: ms("INTERVIEW_PAUSE_WAIT_MS", 2_000)?,
            shadow: ShadowConfig {
                fraction: get("INTERVIEW_SHADOW_READS")
                    .map_or(Ok(0.0), |v| fraction("INTERVIEW_SHADOW_READS", &v))?,
                settle: ms("INTERVIEW_SHADOW_SETTLE_MS", 5_000)?,
            },
        })
    }

    /// The database the backend flag selects, with the statement cache setting.
    pub fn database_url(&self) -> Result<DatabaseUrl> {
        self.url_of(self.backend)
    }

    /// The other backend's database, when it is configured: where a switch leads.
    ///
    /// Always from these settings, never from the database (a retired one
    /// names where its data went for humans only). The SQLite file must
    /// already exist: following a switch never creates one.
    pub fn other_url(&self) -> Option<DatabaseUrl> {
        match self.backend {
            Backend::Sqlite => self.url_of(Backend::Postgres).ok(),
            Backend::Postgres if self.sqlite_path_given => {
                DatabaseUrl::existing_sqlite(std::path::Path::new(&self.sqlite_path)).ok()
            }
            Backend::Postgres => None,
        }
    }

    fn url_of(&self, backend: Backend) -> Result<DatabaseUrl> {
        match backend {
            Backend::Sqlite => Ok(DatabaseUrl::sqlite(self.sqlite_path.clone())),
            Backend::Postgres => self
                .postgres_url
                .clone()
                .map(|url| url.with_statement_cache(self.store.pg_statement_cache))
                .ok_or_else(|| {
                    Error::invalid(
                        "INTERVIEW_POSTGRES_URL",
                        "must be set when INTERVIEW_DB_BACKEND=postgres",
                    )
                }),
        }
    }
}

/// Reads a switch: `on`/`off`, `true`/`false`, `yes`/`no` or `1`/`0`.
fn on_off(name: &'static str, value: &str) -> Result<bool> {
    match value.trim().to_ascii_lowercase().as_str() {
        "on" | "true" | "yes" | "1" => Ok(true),
        "off" | "false" | "no" | "0" => Ok(false),
        _ => Err(Error::invalid(
            name,
            format!("{value:?} is neither \"on\" nor \"off\""),
        )),
    }
}

/// Reads a share between 0 and 1, e.g. `0.1`.
fn fraction(name: &'static str, value: &str) -> Result<f64> {
    value
        .trim()
        .parse::<f64>()
        .ok()
        .filter(|f| (0.0..=1.0).contains(f))
        .ok_or_else(|| Error::invalid(name, format!("{value:?} is not a number from 0 to 1")))
}

/// Names the setting in a refusal of `INTERVIEW_POSTGRES_URL` (whose value is never repeated).
/// Splits `INTERVIEW_POSTGRES_REPLICA_URLS` at the commas that start another
/// `postgres://` URL: a comma inside a URL (a multi-host list) stays in it.
/// Keyword/value strings cannot be listed (their commas are ambiguous).
fn replica_urls(v: &str) -> Result<Vec<DatabaseUrl>> {
    const NAME: &str = "INTERVIEW_POSTGRES_REPLICA_URLS";
    let mut urls: Vec<String> = Vec::new();
    for piece in v.split(',') {
        let starts_url = crate::conninfo::is_uri(piece.trim_start());
        match urls.last_mut() {
            Some(last) if !starts_url => {
                last.push(',');
                last.push_str(piece);
            }
            _ if starts_url => urls.push(piece.trim().to_string()),
            _ => {
                return Err(Error::invalid(
                    NAME,
                    "must be postgres:// URLs separated by commas",
                ))
            }
        }
    }
    urls.iter()
        .map(|u| {
            DatabaseUrl::postgres(u.trim()).map_err(|e| match e {
                Error::InvalidInput { reason, .. } => Error::invalid(NAME, reason),
                other => other,
            })
        })
        .collect()
}

fn postgres_setting(e: Error) -> Error {
    match e {
        Error::InvalidInput { reason, .. } => Error::invalid("INTERVIEW_POSTGRES_URL", reason),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replica_urls_split_between_urls_not_inside_host_lists() {
        let urls = replica_urls(
            "postgres://u:p,w@a:5432,b:5433/db?sslmode=require, postgresql://c/db,POSTGRES://d/db",
        )
        .unwrap();
        let shown: Vec<String> = urls.iter().map(|u| u.masked()).collect();
        assert_eq!(
            shown,
            [
                "postgres://u:***@a:5432,b:5433/db?sslmode=require",
                "postgresql://c/db",
                "POSTGRES://d/db"
            ]
        );
        for bad in ["host=a dbname=x", "a.db,postgres://c/db"] {
            let err = replica_urls(bad).unwrap_err();
            assert!(
                matches!(
                    err,
                    Error::InvalidInput {
                        field: "INTERVIEW_POSTGRES_REPLICA_URLS",
                        ..
                    }
                ),
                "{bad}: {err}"
            );
        }
    }

    fn config(pairs: &[(&str, &str)]) -> Result<ServerConfig> {
        let map: std::collections::HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        ServerConfig::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn hardening_settings_have_defaults_and_read_the_environment() {
        let c = config(&[]).unwrap();
        assert_eq!(
            c.store.pool.statement_timeout,
            Some(Duration::from_secs(30))
        );
        assert_eq!(c.store.pool.connect_timeout, Duration::from_secs(10));
        assert_eq!(c.limits.header_read_timeout, Duration::from_secs(5));
        assert_eq!(
            c.limits.idempotency_retention,
            Duration::from_secs(24 * 3600)
        );
        let c = config(&[
            ("INTERVIEW_STATEMENT_TIMEOUT_MS", "0"),
            ("INTERVIEW_MAX_CONCURRENT_REQUESTS", "8"),
            ("INTERVIEW_IDEMPOTENCY_RETENTION_HOURS", "48"),
        ])
        .unwrap();
        assert_eq!(c.store.pool.statement_timeout, None);
        assert_eq!(c.limits.max_concurrent_requests, 8);
        assert_eq!(
            c.limits.idempotency_retention,
            Duration::from_secs(48 * 3600)
        );
        assert_eq!(c.pause_wait, Duration::from_secs(2));
        assert_eq!(c.limits.slow_request, Duration::from_millis(250));
        let c = config(&[("INTERVIEW_SLOW_REQUEST_MS", "0")]).unwrap();
        assert!(c.limits.slow_request.is_zero(), "0 logs no request");
        assert!(config(&[("INTERVIEW_SLOW_REQUEST_MS", "fast")]).is_err());
        let err = config(&[("INTERVIEW_MAX_CONCURRENT_REQUESTS", "0")]).unwrap_err();
        assert!(
            err.to_string()
                .contains("INTERVIEW_MAX_CONCURRENT_REQUESTS"),
            "{err}"
        );
    }

    #[test]
    fn the_other_backend_is_only_what_the_settings_name() {
        let c = config(&[("INTERVIEW_SQLITE_PATH", "/tmp/x.db")]).unwrap();
        assert!(c.other_url().is_none(), "no PostgreSQL configured");
        let c = config(&[
            ("INTERVIEW_SQLITE_PATH", "/tmp/x.db"),
            ("INTERVIEW_POSTGRES_URL", "postgres://app:pw@db/interview"),
        ])
        .unwrap();
        assert_eq!(c.other_url().unwrap().backend(), Backend::Postgres);
        let c = config(&[
            ("INTERVIEW_DB_BACKEND", "postgres"),
            ("INTERVIEW_POSTGRES_URL", "postgres://app:pw@db/interview"),
        ])
        .unwrap();
        assert!(
            c.other_url().is_none(),
            "the default SQLite path is not a place to switch to"
        );
        let c = config(&[
            ("INTERVIEW_SHADOW_READS", "0.1"),
            ("INTERVIEW_PAUSE_WAIT_MS", "500"),
        ])
        .unwrap();
        assert_eq!(c.shadow.fraction, 0.1);
        assert_eq!(c.pause_wait, Duration::from_millis(500));
        assert!(config(&[("INTERVIEW_SHADOW_READS", "1.5")]).is_err());
        assert!(config(&[("INTERVIEW_SHADOW_READS", "NaN")]).is_err());
    }
}
