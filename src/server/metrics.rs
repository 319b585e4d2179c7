//! Prometheus metrics: requests by route and status, errors by category,
//! latency per repository operation, the connection pool's state, the
//! database's maintenance state, and (in `migrate follow --metrics-addr`) the
//! follower's lag. `deploy/prometheus/` has the rules and
//! `deploy/grafana/` the dashboard built on these names.

use std::sync::OnceLock;
use std::time::Instant;

use std::time::Duration;

use axum::extract::{MatchedPath, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;
use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::connection::Backend;
use crate::error::Category;
use crate::maintenance::Maintenance;
use crate::migrate::FollowStatus;
use crate::pool::PoolState;

use super::timing;

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
            zero_counters();
            Some(handle)
        })
        .as_ref()
}

/// Every error category, so each series exists (at 0) from startup.
const CATEGORIES: [Category; 5] = [
    Category::Db,
    Category::Input,
    Category::NotFound,
    Category::Unavailable,
    Category::ReadOnly,
];

/// Counters that would otherwise appear only with their first event (a db
/// error, a shadow-read mismatch) start at 0, so that a rule or a panel on
/// them has data, and `rate()` sees the first event as an increase.
fn zero_counters() {
    for category in CATEGORIES {
        counter!("interview_errors_total", "category" => category.as_str()).absolute(0);
    }
    counter!("interview_shadow_read_mismatches_total").absolute(0);
    counter!("interview_shadow_reads_compared_total").absolute(0);
    for reason in SHADOW_SKIP_REASONS {
        counter!("interview_shadow_reads_skipped_total", "reason" => reason).absolute(0);
    }
}

/// Every reason a shadow read is skipped for ([`super::shadow`]), so each
/// series exists (at 0) from startup. Here, with the other series' names,
/// so the shadow reader depends on the metrics and not the other way round.
const SHADOW_SKIP_REASONS: [&str; 6] = [
    "busy",
    "no_other_backend",
    "unreachable",
    "behind",
    "settling",
    "error",
];

/// Counts a shadow read skipped for `reason`, one of [`SHADOW_SKIP_REASONS`].
pub(super) fn shadow_read_skipped(reason: &'static str) {
    debug_assert!(
        SHADOW_SKIP_REASONS.contains(&reason),
        "{reason} is not in SHADOW_SKIP_REASONS"
    );
    counter!("interview_shadow_reads_skipped_total", "reason" => reason).increment(1);
}

/// Renders all metrics in Prometheus text format, with the pool's state as of now.
pub fn render(pool: PoolState) -> String {
    gauge!("interview_db_pool_connections").set(f64::from(pool.connections));
    gauge!("interview_db_pool_idle").set(f64::from(pool.idle));
    gauge!("interview_db_pool_max_size").set(f64::from(pool.max_size));
    // Counters kept by the pool itself, exported as running totals.
    gauge!("interview_db_pool_waits_total").set(pool.waits as f64);
    gauge!("interview_db_pool_timeouts_total").set(pool.timeouts as f64);
    gauge!("interview_db_breaker_open").set(if pool.breaker_open { 1.0 } else { 0.0 });
    install().map(|h| h.render()).unwrap_or_default()
}

/// Records each replica's rotation, lag and reads served, and the reads that
/// fell back to the primary by reason (`behind`, `no_replica`).
///
/// Replicas are labelled by their place in `INTERVIEW_POSTGRES_REPLICA_URLS`
/// (`replica="0"`), not their URL: no host names in the metrics.
pub fn replicas(store: &crate::Store) {
    for (i, r) in store.replicas().iter().enumerate() {
        let replica = i.to_string();
        gauge!("interview_db_replica_in_rotation", "replica" => replica.clone())
            .set(if r.in_rotation { 1.0 } else { 0.0 });
        // Unknown (never measured, unreachable): no sample rather than a made-up 0.
        if let Some(lag) = r.lag {
            gauge!("interview_db_replica_lag_seconds", "replica" => replica.clone())
                .set(lag.as_secs_f64());
        }
        gauge!("interview_db_replica_reads_total", "replica" => replica).set(r.reads as f64);
    }
    if !store.replicas().is_empty() {
        for (reason, n) in store.replica_fallbacks() {
            gauge!("interview_db_replica_fallbacks_total", "reason" => reason.as_str())
                .set(n as f64);
        }
    }
}

/// Records the maintenance state of the database requests use now, as read by
/// the switch watcher (every [`WATCH_EVERY`](super::live_store::WATCH_EVERY)).
///
/// No backend label on these: after a switch the series go on with the new
/// database's state instead of a stale series left at the old one's.
/// `interview_db_backend{backend}` says which backend it is (1 for the one in use).
pub fn maintenance(backend: Backend, m: &Maintenance) {
    let flag = |b: bool| if b { 1.0 } else { 0.0 };
    gauge!("interview_db_paused").set(flag(m.paused));
    gauge!("interview_db_retired").set(flag(m.retired_to.is_some()));
    // 0 when the state never changed since the migration (a live database).
    gauge!("interview_db_state_changed_timestamp_seconds").set(
        m.changed_at
            .map_or(0.0, |t| t.timestamp_millis() as f64 / 1000.0),
    );
    for b in [Backend::Sqlite, Backend::Postgres] {
        gauge!("interview_db_backend", "backend" => b.as_str()).set(flag(b == backend));
    }
}

/// Records a follower's report (see `migrate follow --metrics-addr`).
pub fn follower(s: &FollowStatus) {
    let direction = s.direction;
    gauge!("interview_follow_lag_seconds", "direction" => direction).set(s.lag_ms as f64 / 1000.0);
    gauge!("interview_follow_pending_entries", "direction" => direction)
        .set(s.pending_entries as f64);
    counter!("interview_follow_applied_entries_total", "direction" => direction)
        .absolute(s.applied_entries);
    counter!("interview_follow_passes_total", "direction" => direction).absolute(s.passes);
    counter!("interview_follow_errors_total", "direction" => direction).absolute(s.errors);
    counter!("interview_follow_reconnects_total", "direction" => direction).absolute(s.reconnects);
    gauge!("interview_follow_connected", "direction" => direction).set(if s.connected {
        1.0
    } else {
        0.0
    });
    // A follower stuck inside one pass stops reporting: this tells it apart from one with no lag.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    gauge!("interview_follow_last_report_timestamp_seconds", "direction" => direction).set(now);
}

/// Serves `GET /metrics` (everything this process recorded) on `listener`,
/// for a process that is not the API server: `migrate follow --metrics-addr`.
///
/// Runs on a thread of its own with a small runtime, so a blocking caller
/// (the follower's loop) needs no async code; the thread ends with the process.
pub fn serve_in_background(listener: std::net::TcpListener) -> std::io::Result<()> {
    install();
    listener.set_nonblocking(true)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            runtime.block_on(async move {
                let app = axum::Router::new().route(
                    "/metrics",
                    axum::routing::get(|| async {
                        (
                            [(
                                axum::http::header::CONTENT_TYPE,
                                "text/plain; version=0.0.4",
                            )],
                            install().map(|h| h.render()).unwrap_or_default(),
                        )
                    }),
                );
                match tokio::net::TcpListener::from_std(listener) {
                    Ok(listener) => {
                        if let Err(e) = axum::serve(listener, app).await {
                            log::error!("metrics endpoint stopped: {e}");
                        }
                    }
                    Err(e) => log::error!("metrics endpoint: {e}"),
                }
            })
        })?;
    Ok(())
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

/// Middleware: requests by route and status, and their latency; a request
/// slower than `slow` (`INTERVIEW_SLOW_REQUEST_MS`) is logged with where its time went.
pub async fn track_requests(State(slow): State<Duration>, req: Request, next: Next) -> Response {
    // The route template, never the path as sent: ids and unknown paths would each be a series.
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let method = method_label(req.method());
    let request_id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
        .to_string();
    let started = Instant::now();
    let (response, spent) = timing::scope(next.run(req)).await;
    let total = started.elapsed();
    if !slow.is_zero() && total >= slow {
        log::warn!(
            "slow request: {method} {route} status={} backend={} total_ms={} held_ms={} db_ms={} request_id={request_id}",
            response.status().as_u16(),
            spent.backend.map_or("none", |b| b.as_str()),
            total.as_millis(),
            spent.held.as_millis(),
            spent.db.as_millis(),
        );
    }
    let status = response.status().as_u16().to_string();
    counter!("interview_http_requests_total", "method" => method, "route" => route.clone(), "status" => status)
        .increment(1);
    histogram!("interview_http_request_seconds", "route" => route).record(total.as_secs_f64());
    response
}
