//! The interview HTTP API on top of the store (feature `server`).
//!
//! [`router`] builds the axum router, so a service can mount it; [`serve`]
//! runs it with graceful shutdown. Store calls run on tokio's blocking pool
//! (see [`blocking`]), never on the async workers.

pub mod blocking;
pub mod config;
pub mod error;
pub mod interviewer;
pub mod metrics;
mod routes;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::Router;
use tokio::net::TcpListener;
use tower_http::catch_panic::CatchPanicLayer;

pub use config::ServerConfig;
pub use error::ApiError;
pub use interviewer::{Interviewer, ScriptedInterviewer};

use crate::Store;

/// Largest request body accepted; larger ones get 413.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    /// The repository.
    pub store: Store,
    /// Writes the interviewer's side of the conversation.
    pub interviewer: Arc<dyn Interviewer>,
    /// Bearer token for `/admin/*`; admin endpoints answer 404 without one.
    pub admin_token: Option<String>,
    /// Longest a request waits for the database before answering 503.
    pub request_timeout: Duration,
}

impl AppState {
    /// State with the built-in scripted interviewer and no admin token.
    pub fn new(store: Store) -> Self {
        AppState {
            store,
            interviewer: Arc::new(ScriptedInterviewer),
            admin_token: None,
            request_timeout: Duration::from_secs(10),
        }
    }
}

/// The API's router: `/health`, `/interview/*`, `/admin/maintenance`, `/metrics`.
pub fn router(state: AppState) -> Router {
    metrics::install();
    routes::routes()
        .layer(axum::middleware::from_fn(metrics::track_requests))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(CatchPanicLayer::custom(error::panic_response))
        .with_state(state)
}

/// Serves the API on `listener` until `shutdown` resolves; requests in flight then finish.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
    log::info!("shutting down: finishing requests in flight");
}
