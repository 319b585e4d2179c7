//! Zero-downtime cutover, the server's side: every process follows a switch
//! by itself, writes are held through the pause instead of refused, and
//! shadow reads compare the other backend. Real SQLite files and PostgreSQL
//! databases, the example server binary as separate processes (built by a
//! full `cargo test`; alone: `cargo build --all-features --example server` first).
#![cfg(feature = "server")]

mod common;

use common::bin::Killed;
use common::traffic::{
    all_on, client, health, migrate_cli, runtime, spawn_server, spawn_server_waiting, wait_healthy,
    Traffic,
};

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{PgDatabase, TestDb};
use interview_store::server::{self, AppState, LiveStore, Shadow, ShadowConfig};
use interview_store::{maintenance, DatabaseUrl, Store, StoreConfig};
use reqwest::StatusCode;
use serde_json::{json, Value};

/// What `migrate switch` does, with the data copied inside the pause: pause
/// SQLite, copy, pause PostgreSQL, retire SQLite, make PostgreSQL live, with
/// a while where both are paused.
fn switch(sqlite_path: &std::path::Path, postgres: &DatabaseUrl) {
    let sqlite = DatabaseUrl::existing_sqlite(sqlite_path).unwrap();
    let mut old = maintenance::connect(&sqlite).unwrap();
    maintenance::pause(&mut old).unwrap();
    interview_store::migrate::copy(sqlite_path, postgres, &Default::default()).unwrap();
    let mut new = maintenance::connect(postgres).unwrap();
    maintenance::pause(&mut new).unwrap();
    maintenance::retire(&mut old, "postgres (the test's database)").unwrap();
    // Both paused: the servers find the new side not live yet and keep holding.
    std::thread::sleep(Duration::from_millis(600));
    maintenance::make_live(&mut new).unwrap();
}

#[test]
fn two_server_processes_follow_a_switch_and_no_request_fails() {
    let dir = tempfile::tempdir().unwrap();
    let sqlite_path = dir.path().join("interview.db");
    let sqlite = sqlite_path.to_str().unwrap().to_string();
    Store::connect(&sqlite, StoreConfig::default())
        .unwrap()
        .migrate()
        .unwrap();
    let pg = PgDatabase::create();
    let pg_url = DatabaseUrl::postgres(&pg.url).unwrap();
    // Set up (schema only) before the servers start, as `migrate setup` would.
    Store::connect(&pg.url, StoreConfig::default())
        .unwrap()
        .migrate()
        .unwrap();

    let (mut one, base_one) = spawn_server(&sqlite, &pg.url);
    let (mut two, base_two) = spawn_server(&sqlite, &pg.url);
    let t = Arc::new(Traffic {
        stop: AtomicBool::new(false),
        switching: AtomicBool::new(false),
        seen: Mutex::default(),
    });
    runtime().block_on(async {
        let http = reqwest::Client::new();
        wait_healthy(&http, &base_one).await;
        wait_healthy(&http, &base_two).await;
        let bases = vec![base_one.clone(), base_two.clone()];
        let clients: Vec<_> = (0..4)
            .map(|n| tokio::spawn(client(t.clone(), bases.clone(), n)))
            .collect();
        tokio::time::sleep(Duration::from_millis(1500)).await;

        t.switching.store(true, Ordering::SeqCst);
        let before = Store::connect(&sqlite, StoreConfig::default()).unwrap();
        let (path, url) = (sqlite_path.clone(), pg_url.clone());
        tokio::task::spawn_blocking(move || switch(&path, &url))
            .await
            .unwrap();
        let at_switch = before.counts().unwrap();
        t.switching.store(false, Ordering::SeqCst);

        tokio::time::sleep(Duration::from_millis(1500)).await;
        t.stop.store(true, Ordering::SeqCst);
        for c in clients {
            c.await.unwrap();
        }

        all_on(&http, &bases, "postgres").await;
        assert_eq!(
            before.counts().unwrap(),
            at_switch,
            "nothing landed on the retired SQLite file"
        );
    });
    assert!(
        one.0.try_wait().unwrap().is_none(),
        "server one still the same process"
    );
    assert!(
        two.0.try_wait().unwrap().is_none(),
        "server two still the same process"
    );

    let seen = t.seen.lock().unwrap();
    assert!(
        seen.failed.is_empty(),
        "requests failed: {:#?}",
        seen.failed
    );
    assert!(seen.held > 0, "some writes were held through the switch");
    let pg_store = Store::connect(&pg.url, StoreConfig::default()).unwrap();
    for (session, text) in &seen.acked {
        let s = pg_store.get_session(session.parse().unwrap()).unwrap();
        assert!(
            s.messages.iter().any(|m| &m.text == text),
            "acknowledged {text:?} of {session} is on PostgreSQL"
        );
    }
    eprintln!(
        "{} chat turns acknowledged, {} held through the switch, none refused",
        seen.acked.len(),
        seen.held
    );
}

/// An in-process server on `state`.
async fn serve(state: AppState) -> (String, tokio::sync::oneshot::Sender<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (stop, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(server::serve(listener, state, async {
        let _ = rx.await;
    }));
    (base, stop)
}

backend_test!(
    a_write_is_held_through_a_short_pause_and_refused_past_the_wait,
    |db: &TestDb| {
        runtime().block_on(async {
            let store = db.store();
            let mut state = AppState::new(store.clone());
            state.pause_wait = Duration::from_millis(1500);
            let (base, _stop) = serve(state).await;
            let http = reqwest::Client::new();
            let started: Value = http
                .post(format!("{base}/interview/start"))
                .json(&json!({}))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            let id = started["session_id"].as_str().unwrap().to_string();
            let url = db.direct_url.parse::<DatabaseUrl>().unwrap();
            let mut conn = maintenance::connect(&url).unwrap();
            maintenance::pause(&mut conn).unwrap();

            // Lifted while the write waits: it lands.
            let resume = tokio::task::spawn_blocking(move || {
                std::thread::sleep(Duration::from_millis(300));
                maintenance::resume(&mut conn).unwrap();
                conn
            });
            let r = http
                .post(format!("{base}/interview/chat"))
                .json(&json!({"session_id": id, "text": "held"}))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::OK, "held, not refused");
            let mut conn = resume.await.unwrap();

            // Not lifted within the wait: 503 read_only with Retry-After, nothing stored.
            maintenance::pause(&mut conn).unwrap();
            let sent = Instant::now();
            let r = http
                .post(format!("{base}/interview/chat"))
                .json(&json!({"session_id": id, "text": "refused"}))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
            assert!(
                sent.elapsed() >= Duration::from_millis(1500),
                "held for the whole wait first"
            );
            assert_eq!(r.headers()["retry-after"], "5");
            let body: Value = r.json().await.unwrap();
            assert_eq!(body["error"]["category"], "read_only", "{body}");
            maintenance::resume(&mut conn).unwrap();
            let texts: Vec<String> = store
                .get_session(id.parse().unwrap())
                .unwrap()
                .messages
                .into_iter()
                .map(|m| m.text)
                .collect();
            assert!(texts.contains(&"held".to_string()));
            assert!(!texts.contains(&"refused".to_string()));
        });
    }
);

#[test]
fn a_retired_database_without_another_backend_configured_keeps_answering_503() {
    let db = TestDb::new(interview_store::Backend::Sqlite);
    runtime().block_on(async {
        let store = db.store();
        let mut state = AppState::new(store.clone());
        state.pause_wait = Duration::from_millis(300);
        let (base, _stop) = serve(state).await;
        let http = reqwest::Client::new();
        let url = db.direct_url.parse::<DatabaseUrl>().unwrap();
        let mut conn = maintenance::connect(&url).unwrap();
        maintenance::retire(&mut conn, "nowhere").unwrap();
        let r = http
            .post(format!("{base}/interview/start"))
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        let health = health(&http, &base).await;
        assert_eq!(
            (health["backend"].clone(), health["retired"].clone()),
            (json!("sqlite"), json!(true))
        );
    });
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

#[test]
fn shadow_reads_count_a_differing_row_wait_for_the_follower_and_pass_equal_ones() {
    let sqlite = TestDb::new(interview_store::Backend::Sqlite);
    let pg = TestDb::new(interview_store::Backend::Postgres);
    let ids = [uuid::Uuid::now_v7(), uuid::Uuid::now_v7()];
    common::seed_identical(&sqlite.store(), &ids);
    let sqlite_path = std::path::PathBuf::from(sqlite.url.trim_start_matches("sqlite://"));
    let pg_url = pg.url.parse::<DatabaseUrl>().unwrap();
    // Copied by the migration tool: PostgreSQL follows SQLite's change log from here.
    interview_store::migrate::copy(&sqlite_path, &pg_url, &Default::default()).unwrap();
    runtime().block_on(async {
        let mut state = AppState::new(sqlite.store());
        state.store = LiveStore::new(sqlite.store(), Some(pg_url.clone()), StoreConfig::default());
        // A settle time no read here reaches: only the change log can let a read be compared.
        state.shadow = Shadow::new(ShadowConfig {
            fraction: 1.0,
            settle: Duration::from_secs(3600),
        });
        let (base, _stop) = serve(state).await;
        let http = reqwest::Client::new();
        let metrics = || async {
            let text = http
                .get(format!("{base}/metrics"))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            (
                metric(&text, "interview_shadow_reads_compared_total"),
                metric(&text, "interview_shadow_read_mismatches_total"),
                metric(
                    &text,
                    "interview_shadow_reads_skipped_total{reason=\"behind\"}",
                ),
                text.lines()
                    .filter(|l| l.contains("shadow"))
                    .collect::<Vec<_>>()
                    .join("\n"),
            )
        };
        // Waits until the background check of the last read is counted, one way or the other.
        let settled = |from: (f64, f64, f64, String)| {
            let metrics = &metrics;
            async move {
                for _ in 0..200 {
                    let m = metrics().await;
                    if m.0 > from.0 || m.2 > from.2 {
                        return m;
                    }
                    tokio::time::sleep(Duration::from_millis(25)).await;
                }
                panic!(
                    "the shadow read was neither compared nor skipped: {}",
                    metrics().await.3
                );
            }
        };
        let get = |path: String| {
            let http = &http;
            let base = &base;
            async move {
                let r = http.get(format!("{base}{path}")).send().await.unwrap();
                assert_eq!(r.status(), StatusCode::OK);
                r.json::<Value>().await.unwrap()
            }
        };
        let m0 = metrics().await;
        get(format!("/interview/session/{}", ids[0])).await;
        let m1 = settled(m0.clone()).await;
        get(format!("/interview/draft/latest/{}", ids[0])).await;
        let m2 = settled(m1.clone()).await;
        assert_eq!(
            (m2.0, m2.1),
            (m0.0 + 2.0, m0.1),
            "equal rows compared, no mismatch"
        );

        // A change the follower has not applied yet: not compared.
        let r = http
            .post(format!("{base}/interview/chat"))
            .json(&json!({"session_id": ids[0], "text": "not synced yet"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        get(format!("/interview/session/{}", ids[0])).await;
        let m3 = settled(m2.clone()).await;
        assert_eq!(
            (m3.0, m3.1, m3.2),
            (m2.0, m2.1, m2.2 + 1.0),
            "skipped as behind"
        );
        // Synced: compared again, and equal.
        let (path, url) = (sqlite_path.clone(), pg_url.clone());
        tokio::task::spawn_blocking(move || {
            interview_store::migrate::sync(&path, &url, &Default::default()).unwrap()
        })
        .await
        .unwrap();
        get(format!("/interview/session/{}", ids[0])).await;
        let m4 = settled(m3.clone()).await;
        assert_eq!((m4.0, m4.1), (m3.0 + 1.0, m3.1), "caught up and equal");

        // A deliberately different row on the other side.
        pg.store()
            .with_connection(|c| {
                use diesel::prelude::*;
                use interview_store::schema::sessions;
                use interview_store::types::DbUuid;
                diesel::update(sessions::table.filter(sessions::id.eq(DbUuid(ids[1]))))
                    .set(sessions::summary.eq("changed on the other side only"))
                    .execute(c)?;
                Ok(())
            })
            .unwrap();
        let body = get(format!("/interview/session/{}", ids[1])).await;
        assert_eq!(
            body["summary"], "summary",
            "the client gets the live backend's answer"
        );
        let m5 = settled(m4.clone()).await;
        assert_eq!(
            (m5.0, m5.1),
            (m4.0 + 1.0, m4.1 + 1.0),
            "the differing row is counted"
        );
    });
}

#[test]
fn a_keyed_write_held_through_the_switch_lands_once_on_the_new_side() {
    let sqlite = TestDb::new(interview_store::Backend::Sqlite);
    let pg = TestDb::new(interview_store::Backend::Postgres);
    let id = uuid::Uuid::now_v7();
    common::seed_identical(&sqlite.store(), &[id]);
    common::seed_identical(&pg.store(), &[id]);
    runtime().block_on(async {
        let mut state = AppState::new(sqlite.store());
        state.store = LiveStore::new(
            sqlite.store(),
            Some(pg.url.parse::<DatabaseUrl>().unwrap()),
            StoreConfig::default(),
        );
        state.pause_wait = Duration::from_secs(20);
        let (base, _stop) = serve(state).await;
        let http = reqwest::Client::new();
        let old_url = sqlite.direct_url.parse::<DatabaseUrl>().unwrap();
        let new_url = pg.url.parse::<DatabaseUrl>().unwrap();
        let mut old = maintenance::connect(&old_url).unwrap();
        maintenance::pause(&mut old).unwrap();
        let switch = tokio::task::spawn_blocking(move || {
            std::thread::sleep(Duration::from_millis(300));
            let mut new = maintenance::connect(&new_url).unwrap();
            maintenance::pause(&mut new).unwrap();
            maintenance::retire(&mut old, "postgres").unwrap();
            std::thread::sleep(Duration::from_millis(300));
            maintenance::make_live(&mut new).unwrap();
        });
        let send = || {
            http.post(format!("{base}/interview/chat"))
                .header("idempotency-key", "turn-1")
                .json(&json!({"session_id": id, "text": "across the switch"}))
                .send()
        };
        let first = send().await.unwrap();
        assert_eq!(first.status(), StatusCode::OK, "held, then landed");
        let first: Value = first.json().await.unwrap();
        switch.await.unwrap();
        let again = send().await.unwrap();
        assert_eq!(again.status(), StatusCode::OK);
        assert_eq!(again.headers()["idempotent-replayed"], "true");
        assert_eq!(again.json::<Value>().await.unwrap(), first);
    });
    let on_pg = pg.store().get_session(id).unwrap().messages;
    assert_eq!(
        on_pg
            .iter()
            .filter(|m| m.text == "across the switch")
            .count(),
        1
    );
    let on_sqlite = sqlite.store().get_session(id).unwrap().messages;
    assert!(!on_sqlite.iter().any(|m| m.text == "across the switch"));
}

/// Starts `migrate follow` with `extra` arguments; its JSON lines go to `log`.
fn spawn_follow(sqlite: &str, postgres: &str, extra: &[&str], log: &std::path::Path) -> Killed {
    let out = std::fs::File::create(log).unwrap();
    Killed(
        std::process::Command::new(common::bin::example_bin("migrate"))
            .args(["follow", "--sqlite", sqlite, "--postgres", postgres])
            .args(["--json", "--report-secs", "1"])
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdout(out)
            .spawn()
            .unwrap(),
    )
}

/// Waits for a follower process to end by itself (the switch ends its direction).
fn wait_follower_ended(f: &mut Killed, log: &std::path::Path) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = f.0.try_wait().unwrap() {
            let out = std::fs::read_to_string(log).unwrap();
            assert!(status.success(), "follower: {status}\n{out}");
            assert!(out.contains(r#""ended":"switched""#), "{out}");
            assert!(out.contains(r#""lag_ms""#), "it reported its lag: {out}");
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the follower did not end with the switch"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// "writes held N ms" in a switch's output.
fn held_ms(out: &str) -> u64 {
    out.split("writes held ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no hold reported: {out}"))
}

/// Under the clients' traffic: `verify --live`, then `switch --to TO` with
/// `switching` set while it runs; the writes-held figure it printed.
async fn switch_under_traffic(t: &Arc<Traffic>, sqlite: &str, postgres: &str, to: &str) -> u64 {
    let cli = |command: &'static [&'static str]| {
        let mut args: Vec<String> = command.iter().map(|a| a.to_string()).collect();
        args.extend(["--sqlite", sqlite, "--postgres", postgres].map(String::from));
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            migrate_cli(&args)
        })
    };
    let (status, _) = cli(&["verify", "--live", "--record"]).await.unwrap();
    assert!(status.success(), "verify under traffic: {status}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    t.switching.store(true, Ordering::SeqCst);
    let command: &'static [&'static str] = match to {
        "sqlite" => &["switch", "--to", "sqlite"],
        _ => &["switch", "--to", "postgres"],
    };
    let (status, out) = cli(command).await.unwrap();
    t.switching.store(false, Ordering::SeqCst);
    assert!(status.success(), "switch --to {to} under traffic: {status}");
    held_ms(&out)
}

#[test]
fn the_zero_downtime_cutover_and_rollback_under_traffic_fail_no_request() {
    let dir = tempfile::tempdir().unwrap();
    let sqlite_path = dir.path().join("interview.db");
    let sqlite = sqlite_path.to_str().unwrap().to_string();
    let seed = Store::connect(&sqlite, StoreConfig::default()).unwrap();
    seed.migrate().unwrap();
    for _ in 0..20 {
        seed.start_session().unwrap();
    }
    drop(seed);
    let pg = PgDatabase::create();
    let pg_url = DatabaseUrl::postgres(&pg.url).unwrap();
    interview_store::migrate::copy(&sqlite_path, &pg_url, &Default::default()).unwrap();

    let forward_log = dir.path().join("follow.jsonl");
    let backward_log = dir.path().join("follow-back.jsonl");
    let mut forward = spawn_follow(&sqlite, &pg.url, &[], &forward_log);
    let (mut one, base_one) = spawn_server_waiting(&sqlite, &pg.url, 2000);
    let (mut two, base_two) = spawn_server_waiting(&sqlite, &pg.url, 2000);
    let t = Arc::new(Traffic {
        stop: AtomicBool::new(false),
        switching: AtomicBool::new(false),
        seen: Mutex::default(),
    });
    let bases = vec![base_one.clone(), base_two.clone()];
    let (held_there, longest_there, held_back) = runtime().block_on(async {
        let http = reqwest::Client::new();
        wait_healthy(&http, &base_one).await;
        wait_healthy(&http, &base_two).await;
        let clients: Vec<_> = (0..4)
            .map(|n| tokio::spawn(client(t.clone(), bases.clone(), n)))
            .collect();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let held_there = switch_under_traffic(&t, &sqlite, &pg.url, "postgres").await;
        let longest_there = std::mem::take(&mut t.seen.lock().unwrap().longest_during_switch);
        tokio::time::sleep(Duration::from_millis(1000)).await;
        all_on(&http, &bases, "postgres").await;

        // The way back, the same way: a reverse follower, then the switch under traffic.
        let (s, u, log) = (sqlite.clone(), pg.url.clone(), backward_log.clone());
        let mut backward =
            tokio::task::spawn_blocking(move || spawn_follow(&s, &u, &["--reverse"], &log))
                .await
                .unwrap();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let held_back = switch_under_traffic(&t, &sqlite, &pg.url, "sqlite").await;
        tokio::time::sleep(Duration::from_millis(1000)).await;
        t.stop.store(true, Ordering::SeqCst);
        for c in clients {
            c.await.unwrap();
        }
        all_on(&http, &bases, "sqlite").await;
        let log = backward_log.clone();
        tokio::task::spawn_blocking(move || wait_follower_ended(&mut backward, &log))
            .await
            .unwrap();
        (held_there, longest_there, held_back)
    });
    wait_follower_ended(&mut forward, &forward_log);
    assert!(one.0.try_wait().unwrap().is_none(), "server one restarted");
    assert!(two.0.try_wait().unwrap().is_none(), "server two restarted");

    let seen = t.seen.lock().unwrap();
    assert!(
        seen.failed.is_empty(),
        "requests failed: {:#?}",
        seen.failed
    );
    // Every acknowledged turn is on SQLite, live again, exactly once, and on
    // PostgreSQL too (the reverse follower and the switch back carried it over).
    let lite = Store::connect(&sqlite, StoreConfig::default()).unwrap();
    let pg_store = Store::connect(&pg.url, StoreConfig::default()).unwrap();
    let mut on_pg = 0;
    for (session, text) in &seen.acked {
        let id = session.parse().unwrap();
        let n = lite
            .get_session(id)
            .unwrap()
            .messages
            .iter()
            .filter(|m| &m.text == text)
            .count();
        assert_eq!(
            n, 1,
            "acknowledged {text:?} of {session} stored {n} times in SQLite"
        );
        on_pg += pg_store
            .get_session(id)
            .unwrap()
            .messages
            .iter()
            .filter(|m| &m.text == text)
            .count();
    }
    assert!(
        on_pg > 0,
        "some turns were written while PostgreSQL was live"
    );
    // Held, not refused: no write waited out the servers' 2 s bound.
    let longest_back = seen.longest_during_switch;
    for longest in [longest_there, longest_back] {
        assert!(longest < Duration::from_millis(2000), "{longest:?}");
    }
    eprintln!(
        "zero-downtime: switch held writes {held_there} ms (longest request {longest_there:?}), \
         switch back {held_back} ms (longest request {longest_back:?}); {} turns acknowledged",
        seen.acked.len()
    );
}
