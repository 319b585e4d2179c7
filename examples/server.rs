//! The interview HTTP service. Configuration comes from the environment:
//!
//! - `INTERVIEW_DB_BACKEND`: `sqlite` (default) or `postgres`; rollback is setting it back and restarting
//! - `INTERVIEW_SQLITE_PATH` (default `interview.db`), `INTERVIEW_POSTGRES_URL`
//! - `INTERVIEW_ADDR` (default `127.0.0.1:8080`), `INTERVIEW_ADMIN_TOKEN` (admin endpoints off when unset)
//! - `INTERVIEW_POOL_SIZE`, `INTERVIEW_POOL_TIMEOUT_MS`, `INTERVIEW_HEALTH_TIMEOUT_MS`,
//!   `INTERVIEW_REQUEST_TIMEOUT_MS`, `INTERVIEW_CONNECT_TIMEOUT_MS`, `INTERVIEW_STATEMENT_TIMEOUT_MS`
//! - `INTERVIEW_HEADER_READ_TIMEOUT_MS`, `INTERVIEW_HTTP_TIMEOUT_MS`, `INTERVIEW_MAX_CONCURRENT_REQUESTS`,
//!   `INTERVIEW_SHUTDOWN_TIMEOUT_MS`, `INTERVIEW_IDEMPOTENCY_RETENTION_HOURS` (see docs/operations.md, "Security")
//! - `INTERVIEW_PAUSE_WAIT_MS` (hold writes through a pause or switch), `INTERVIEW_SHADOW_READS`,
//!   `INTERVIEW_SHADOW_SETTLE_MS` (see docs/operations.md, "Following a switch")
//! - `INTERVIEW_SLOW_REQUEST_MS` (default 250; `0` off): requests at least this slow are logged
//!   with the time held by a pause and the time in the database (docs/monitoring.md)
//! - `RUST_LOG` for logging (default `info`)
//!
//! Run: `cargo run --all-features --example server`; `GET /openapi.json` describes the API
//! (see docs/api.md).

use std::process::ExitCode;

use interview_store::server::{self, AppState, ServerConfig};
use interview_store::Store;

#[tokio::main]
async fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let config = ServerConfig::from_env()?;
    let url = config.database_url()?;
    log::info!("backend: {}, database: {}", config.backend, url.masked());
    let store_config = config.store.clone();
    let store = tokio::task::spawn_blocking(move || -> interview_store::Result<Store> {
        let store = Store::open(url, store_config)?;
        let applied = store.migrate()?;
        log::info!("migrations: {} applied now", applied.len());
        Ok(store)
    })
    .await??;
    if config.admin_token.is_none() {
        log::info!("admin endpoints disabled (INTERVIEW_ADMIN_TOKEN is not set)");
    }
    match config.other_url() {
        Some(other) => log::info!("follows a switch to {}", other.masked()),
        None => log::info!("no other backend configured: a switch is not followed"),
    }
    let state = AppState::from_config(store, &config);
    let listener = tokio::net::TcpListener::bind(config.addr).await?;
    log::info!("listening on http://{}", listener.local_addr()?);
    server::serve(listener, state, server::shutdown_signal()).await?;
    log::info!("stopped");
    Ok(())
}
