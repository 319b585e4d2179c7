//! What `/metrics` tells the alert rules (deploy/prometheus/): the state of
//! the database in use (paused, retired, since when, which backend), the
//! circuit breaker, counters that exist from startup, and a follower's figures
//! served by `follow --metrics-addr`.
//!
//! The recorder is process-wide, so the gauges of two servers in one process
//! would mix: the tests that start servers take [`ONE_SERVER`] and run theirs
//! one after the other (each runtime, and with it each server, ends before the next).
#![cfg(feature = "server")]

mod common;

use std::time::{Duration, Instant};

use common::proxy::Proxy;
use common::TestDb;
use interview_store::migrate::FollowStatus;
use interview_store::server::{self, metrics, AppState};
use interview_store::{maintenance, Backend, DatabaseUrl, PoolConfig, Store, StoreConfig};

static ONE_SERVER: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The value of the series `series` (name and labels as rendered), if present.
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| v.trim().parse().unwrap())
}

async fn scrape(base: &str) -> String {
    reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// Scrapes until `series` has `want`, for up to 5 s (the watcher reads every 250 ms).
async fn wait_for(base: &str, series: &str, want: f64) -> String {
    let until = Instant::now() + Duration::from_secs(5);
    loop {
        let text = scrape(base).await;
        if value(&text, series) == Some(want) || Instant::now() > until {
            assert_eq!(value(&text, series), Some(want), "{series}:\n{text}");
            return text;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn start(store: Store) -> (String, tokio::sync::oneshot::Sender<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(server::serve(listener, AppState::new(store), async {
        let _ = stopped.await;
    }));
    (base, stop)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn now_secs() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

#[test]
fn the_database_in_use_reports_its_pause_retirement_and_backend() {
    let _one = ONE_SERVER.lock().unwrap_or_else(|e| e.into_inner());
    for backend in [Backend::Sqlite, Backend::Postgres] {
        let db = TestDb::new(backend);
        runtime().block_on(async {
            let (base, stop) = start(db.store()).await;
            let other = match backend {
                Backend::Sqlite => Backend::Postgres,
                Backend::Postgres => Backend::Sqlite,
            };
            let series = |b: Backend| format!("interview_db_backend{{backend=\"{}\"}}", b.as_str());
            // The watcher sets the backend last: its other figures are this database's by then.
            let text = wait_for(&base, &series(backend), 1.0).await;
            assert_eq!(value(&text, &series(other)), Some(0.0), "{text}");
            assert_eq!(value(&text, "interview_db_paused"), Some(0.0));
            assert_eq!(value(&text, "interview_db_retired"), Some(0.0));
            // Present before the first error, so a rule on them has data.
            assert_eq!(
                value(&text, "interview_errors_total{category=\"db\"}"),
                Some(0.0)
            );
            assert_eq!(
                value(&text, "interview_shadow_read_mismatches_total"),
                Some(0.0)
            );
            assert_eq!(value(&text, "interview_db_breaker_open"), Some(0.0));

            let url: DatabaseUrl = db.direct_url.parse().unwrap();
            let mut conn = maintenance::connect(&url).unwrap();
            maintenance::pause(&mut conn).unwrap();
            let text = wait_for(&base, "interview_db_paused", 1.0).await;
            let since = value(&text, "interview_db_state_changed_timestamp_seconds").unwrap();
            assert!(
                (now_secs() - since).abs() < 30.0,
                "paused just now: {since}"
            );
            assert_eq!(value(&text, "interview_db_retired"), Some(0.0));

            maintenance::retire(&mut conn, "postgres://somewhere/else").unwrap();
            wait_for(&base, "interview_db_retired", 1.0).await;
            maintenance::make_live(&mut conn).unwrap();
            let text = wait_for(&base, "interview_db_retired", 0.0).await;
            assert_eq!(value(&text, "interview_db_paused"), Some(0.0));
            let _ = stop.send(());
        });
    }
}

#[test]
fn the_breaker_is_exported_open_while_the_database_is_unreachable() {
    let _one = ONE_SERVER.lock().unwrap_or_else(|e| e.into_inner());
    let pg = common::PgDatabase::create();
    runtime().block_on(async {
        let upstream = {
            let rest = pg.url.split("://").nth(1).unwrap();
            let hostport = rest.split('@').next_back().unwrap();
            let hostport = hostport.split('/').next().unwrap();
            if hostport.contains(':') {
                hostport.to_string()
            } else {
                format!("{hostport}:5432")
            }
        };
        let proxy = Proxy::start(0, upstream.clone()).await;
        let via_proxy = pg
            .url
            .replacen(&upstream, &format!("127.0.0.1:{}", proxy.port), 1);
        let config = StoreConfig {
            pool: PoolConfig {
                max_size: 2,
                connection_timeout: Duration::from_secs(2),
                ..Default::default()
            },
            health_timeout: Duration::from_secs(1),
            ..Default::default()
        };
        let store = tokio::task::spawn_blocking(move || {
            let s = Store::connect(&via_proxy, config).unwrap();
            s.migrate().unwrap();
            s
        })
        .await
        .unwrap();
        let (base, stop) = start(store).await;
        wait_for(&base, "interview_db_breaker_open", 0.0).await;
        proxy.stop();
        // Requests find the connections gone and open new ones, which fail: the breaker opens.
        let until = Instant::now() + Duration::from_secs(10);
        loop {
            let _ = reqwest::Client::new()
                .post(format!("{base}/interview/start"))
                .json(&serde_json::json!({}))
                .send()
                .await;
            let text = scrape(&base).await;
            if value(&text, "interview_db_breaker_open") == Some(1.0) {
                break;
            }
            assert!(
                Instant::now() < until,
                "the breaker never showed open:\n{text}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let _ = stop.send(());
    });
}

#[test]
fn a_followers_report_is_served_on_its_own_metrics_endpoint() {
    runtime().block_on(async {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        metrics::serve_in_background(listener).unwrap();
        metrics::follower(&FollowStatus {
            direction: "sqlite->postgres",
            pending_entries: 7,
            lag_ms: 1500,
            applied_entries: 40,
            passes: 3,
            reconnects: 1,
            errors: 2,
            connected: false,
            last_error: Some("connection refused".into()),
        });
        let text = scrape(&format!("http://{addr}")).await;
        let d = "{direction=\"sqlite->postgres\"}";
        let get = |name: &str| value(&text, &format!("{name}{d}"));
        assert_eq!(get("interview_follow_lag_seconds"), Some(1.5), "{text}");
        assert_eq!(get("interview_follow_pending_entries"), Some(7.0));
        assert_eq!(get("interview_follow_applied_entries_total"), Some(40.0));
        assert_eq!(get("interview_follow_errors_total"), Some(2.0));
        assert_eq!(get("interview_follow_reconnects_total"), Some(1.0));
        assert_eq!(get("interview_follow_connected"), Some(0.0));
        let reported = get("interview_follow_last_report_timestamp_seconds").unwrap();
        assert!((now_secs() - reported).abs() < 30.0, "{reported}");
    });
}
