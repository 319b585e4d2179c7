//! Server settings from the environment.

use std::net::SocketAddr;
use std::time::Duration;

use crate::connection::{Backend, DatabaseUrl};
use crate::error::{Error, Result};
use crate::store::StoreConfig;

/// Everything the example server reads from its environment.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// `INTERVIEW_DB_BACKEND`: `sqlite` (default) or `postgres`. Rollback is flipping it back.
    pub backend: Backend,
    /// `INTERVIEW_SQLITE_PATH` (default `interview.db`).
    pub sqlite_path: String,
    /// `INTERVIEW_POSTGRES_URL`; required when the backend is `postgres`.
    pub postgres_url: Option<String>,
    /// `INTERVIEW_ADDR` (default `127.0.0.1:8080`).
    pub addr: SocketAddr,
    /// `INTERVIEW_ADMIN_TOKEN`; admin endpoints are off when unset.
    pub admin_token: Option<String>,
    /// `INTERVIEW_POOL_SIZE`, `INTERVIEW_POOL_TIMEOUT_MS`, `INTERVIEW_HEALTH_TIMEOUT_MS`,
    /// `INTERVIEW_PG_STATEMENT_CACHE` (`on`, the default, or `off` behind a transaction pooler).
    pub store: StoreConfig,
    /// `INTERVIEW_REQUEST_TIMEOUT_MS` (default 10,000): longest wait on the database per request.
    pub request_timeout: Duration,
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
        let addr = get("INTERVIEW_ADDR").unwrap_or_else(|| "127.0.0.1:8080".into());
        Ok(ServerConfig {
            backend: get("INTERVIEW_DB_BACKEND").map_or(Ok(Backend::Sqlite), |v| v.parse())?,
            sqlite_path: get("INTERVIEW_SQLITE_PATH").unwrap_or_else(|| "interview.db".into()),
            postgres_url: get("INTERVIEW_POSTGRES_URL"),
            addr: addr.parse().map_err(|_| {
                Error::invalid("INTERVIEW_ADDR", format!("{addr:?} is not HOST:PORT"))
            })?,
            admin_token: get("INTERVIEW_ADMIN_TOKEN"),
            store,
            request_timeout: ms("INTERVIEW_REQUEST_TIMEOUT_MS", 10_000)?,
        })
    }

    /// The database the backend flag selects, with the statement cache setting.
    pub fn database_url(&self) -> Result<DatabaseUrl> {
        match self.backend {
            Backend::Sqlite => Ok(DatabaseUrl::sqlite(self.sqlite_path.clone())),
            Backend::Postgres => {
                let url: DatabaseUrl = self
                    .postgres_url
                    .as_deref()
                    .ok_or_else(|| {
                        Error::invalid(
                            "INTERVIEW_POSTGRES_URL",
                            "must be set when INTERVIEW_DB_BACKEND=postgres",
                        )
                    })?
                    .parse()?;
                if url.backend() != Backend::Postgres {
                    return Err(Error::invalid(
                        "INTERVIEW_POSTGRES_URL",
                        "is not a postgres:// URL",
                    ));
                }
                Ok(url.with_statement_cache(self.store.pg_statement_cache))
            }
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
