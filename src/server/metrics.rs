//! Prometheus metrics: requests by route and status, errors by category,
//! latency per repository operation, and the connection pool's state.

use std::sync::OnceLock;
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;
use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::error::Category;
use crate::pool::PoolState;

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the process-wide Prometheus recorder once; later calls reuse it.
///
/// Returns `None` when another recorder was installed first (then `/metrics`
/// is empty, and the other recorder gets the figures).
pub fn install() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Suffix("_seconds".into()),
                    &[
                        0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                        0.25, 0.5, 1.0, 2.5, 5.0,
                    ],
                )
                .ok()?
                .build_recorder();
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder).ok()?;
            Some(handle)
        })
        .as_ref()
}

/// Renders all metrics in Prometheus text format, with the pool's state as of now.
pub fn render(pool: PoolState) -> String {
    gauge!("interview_db_pool_connections").set(f64::from(pool.connections));
    gauge!("interview_db_pool_idle").set(f64::from(pool.idle));
    gauge!("interview_db_pool_max_size").set(f64::from(pool.max_size));
    // Counters kept by the pool itself, exported as running totals.
    gauge!("interview_db_pool_waits_total").set(pool.waits as f64);
    gauge!("interview_db_pool_timeouts_total").set(pool.timeouts as f64);
    install().map(|h| h.render()).unwrap_or_default()
}

/// Counts an error answered to a client, by category (`db` is what to alert on).
pub fn store_error(category: Category) {
    counter!("interview_errors_total", "category" => category.as_str()).increment(1);
}

/// Times one repository operation.
pub fn operation(op: &'static str, started: Instant) {
    histogram!("interview_store_operation_seconds", "op" => op)
        .record(started.elapsed().as_secs_f64());
}

/// The `method` label: the standard methods by name, anything else `other`.
///
/// Label values come from fixed sets (methods, route templates, status codes),
/// so a client sending made-up methods or paths cannot create new series.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// Middleware: requests by route and status, and their latency.
pub async fn track_requests(req: Request, next: Next) -> Response {
    // The route template, never the path as sent: ids and unknown paths would each be a series.
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let method = method_label(req.method());
    let started = Instant::now();
    let response = next.run(req).await;
    let status = response.status().as_u16().to_string();
    counter!("interview_http_requests_total", "method" => method, "route" => route.clone(), "status" => status)
        .increment(1);
    histogram!("interview_http_request_seconds", "route" => route)
        .record(started.elapsed().as_secs_f64());
    response
}
