//! The interview HTTP API on top of the store (feature `server`).
//!
//! [`router`] builds the axum router, so a service can mount it; [`serve`]
//! runs it with a header read timeout and graceful shutdown with a deadline.
//! Store calls run on tokio's blocking pool (see [`blocking`]), never on the
//! async workers.

mod auth;
pub mod blocking;
pub mod config;
mod doc;
pub mod error;
mod hold;
pub mod idempotency;
pub mod interviewer;
pub mod limits;
pub mod live_store;
pub mod metrics;
mod routes;
mod serve;
pub mod shadow;
pub mod timing;

use std::sync::Arc;
use std::time::Duration;

use axum::error_handling::HandleErrorLayer;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Router;
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::timeout::TimeoutLayer;

pub use config::ServerConfig;
pub use error::ApiError;
pub use interviewer::{Interviewer, ScriptedInterviewer};
pub use limits::Limits;
pub use live_store::LiveStore;
pub use serve::{serve, shutdown_signal};
pub use shadow::{Shadow, ShadowConfig};

use crate::Store;

/// Largest request body accepted; larger ones get 413.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    /// The repository in use, swapped when the database is switched (see [`live_store`]).
    pub store: LiveStore,
    /// Writes the interviewer's side of the conversation.
    pub interviewer: Arc<dyn Interviewer>,
    /// Bearer token for `/admin/*`; admin endpoints answer 404 without one.
    pub admin_token: Option<String>,
    /// Longest a request waits for the database before answering 503.
    pub request_timeout: Duration,
    /// Timeouts, concurrency and idempotency-key retention.
    pub limits: Limits,
    /// How long a write refused by a paused or retired database is held and
    /// retried before it answers 503 (see `hold`).
    pub pause_wait: Duration,
    /// Shadow reads from the other backend (see [`shadow`]).
    pub shadow: Shadow,
}

impl AppState {
    /// State with the built-in scripted interviewer and no admin token, on
    /// `store` alone: no switch to follow, no shadow reads, and a write refused
    /// by a pause answers 503 at once (`pause_wait` zero).
    pub fn new(store: Store) -> Self {
        AppState {
            store: LiveStore::fixed(store),
            interviewer: Arc::new(ScriptedInterviewer),
            admin_token: None,
            request_timeout: Duration::from_secs(10),
            limits: Limits::default(),
            pause_wait: Duration::ZERO,
            shadow: Shadow::new(ShadowConfig::default()),
        }
    }

    /// State for `store` opened from `config`: it follows a switch to
    /// `config`'s other backend, holds writes for `INTERVIEW_PAUSE_WAIT_MS`
    /// and shadow-reads as `INTERVIEW_SHADOW_READS` says.
    pub fn from_config(store: Store, config: &ServerConfig) -> Self {
        AppState {
            store: LiveStore::new(store, config.other_url(), config.store.clone()),
            interviewer: Arc::new(ScriptedInterviewer),
            admin_token: config.admin_token.clone(),
            request_timeout: config.request_timeout,
            limits: config.limits.clone(),
            pause_wait: config.pause_wait,
            shadow: Shadow::new(config.shadow),
        }
    }
}

/// The API's OpenAPI 3.1 document, as `GET /openapi.json` serves it.
///
/// Made from the handlers' own `#[utoipa::path]` attributes and body types,
/// plus what the layers of [`router`] add to every route: it cannot drift
/// from the code. `docs/openapi.json` is a copy, checked by `tests/openapi.rs`.
pub fn openapi() -> &'static serde_json::Value {
    static DOC: std::sync::LazyLock<serde_json::Value> =
        std::sync::LazyLock::new(|| doc::document(routes::routes().1));
    &DOC
}

/// The API's router: `/health`, `/interview/*`, `/admin/maintenance`, `/metrics`, `/openapi.json`.
///
/// Every request gets an `x-request-id` (the client's when short and plain,
/// or a new UUID), a
/// deadline ([`Limits::http_timeout`]) and a place among at most
/// [`Limits::max_concurrent_requests`]; beyond that it is answered 503 at once.
pub fn router(state: AppState) -> Router {
    metrics::install();
    let limits = state.limits.clone();
    let overload = ServiceBuilder::new()
        .layer(HandleErrorLayer::new(|_: tower::BoxError| async {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                crate::Category::Unavailable.as_str(),
                "the server is at its limit of concurrent requests; retry later",
            )
            .into_response()
        }))
        .load_shed()
        .layer(tower::limit::GlobalConcurrencyLimitLayer::new(
            limits.max_concurrent_requests.max(1),
        ));
    routes::routes()
        .0
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(CatchPanicLayer::custom(error::panic_response))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            limits.http_timeout,
        ))
        .layer(overload)
        .layer(axum::middleware::from_fn(error::finish_errors))
        .layer(axum::middleware::from_fn_with_state(
            limits.slow_request,
            metrics::track_requests,
        ))
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
        .layer(axum::middleware::from_fn(error::drop_unfit_request_id))
        .with_state(state)
}
