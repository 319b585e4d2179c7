//! Read replicas with read-your-writes: a primary and two hot standbys of
//! their own, one replaying 500 ms late on purpose (`recovery_min_apply_delay`).
//!
//! Every read carries the position of its thread's last write (remembered by
//! the store for its own sessions, or passed explicitly to a second store, as
//! another process would get it from the server's header) and must see that
//! write. PostgreSQL-only by nature; clusters from `tests/common/cluster.rs`.
//!
//! Run: `cargo test --all-features --test replicas -- --nocapture` to see the figures.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::cluster::{Clusters, Standby};
use interview_store::{DatabaseUrl, Fallback, PoolConfig, Position, Role, Store, StoreConfig};

const DELAY: Duration = Duration::from_millis(500);
const THREADS: usize = 4;
const RUN: Duration = Duration::from_secs(4);

fn config(clusters: &Clusters, max_lag: Duration) -> StoreConfig {
    StoreConfig {
        pool: PoolConfig {
            max_size: 6,
            ..Default::default()
        },
        replicas: clusters
            .standbys
            .iter()
            .map(|n| DatabaseUrl::postgres(&n.url()).unwrap())
            .collect(),
        replica_max_lag: max_lag,
        ..Default::default()
    }
}

/// Waits until every replica is in rotation, or `within` passed; true if they are.
fn wait_rotation(store: &Store, want: &[bool], within: Duration) -> bool {
    let deadline = Instant::now() + within;
    loop {
        let now: Vec<bool> = store.replicas().iter().map(|r| r.in_rotation).collect();
        if now == want {
            return true;
        }
        if Instant::now() > deadline {
            eprintln!("rotation {now:?}, wanted {want:?}: {:#?}", store.replicas());
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn every_read_sees_the_write_whose_position_it_carries() {
    let Some(clusters) = Clusters::start(&[Standby::Async, Standby::Delayed(DELAY)]) else {
        return;
    };
    let primary = clusters.primary.url();
    let store = Store::connect(&primary, config(&clusters, Duration::from_secs(30))).unwrap();
    store.migrate().unwrap();
    // A second store on the same databases: another process, which knows
    // only the positions it is handed.
    let other = Store::connect(&primary, config(&clusters, Duration::from_secs(30))).unwrap();
    assert!(wait_rotation(&store, &[true, true], Duration::from_secs(5)));
    assert!(wait_rotation(&other, &[true, true], Duration::from_secs(5)));

    let reads = Arc::new(AtomicU64::new(0));
    let missing = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let (store, other, reads, missing) =
                (store.clone(), other.clone(), reads.clone(), missing.clone());
            std::thread::spawn(move || {
                let (first, opening) = store.start_session_with(Role::Assistant, "Hello").unwrap();
                let first_at: Position = store.position_of(first.id).expect("a write's position");
                let first_written = Instant::now();
                let mut n = 0;
                while started.elapsed() < RUN {
                    n += 1;
                    let m = store
                        .append_message(first.id, Role::User, &format!("thread {t} answer {n}"))
                        .unwrap();
                    let at = store.position_of(first.id).expect("a write's position");
                    let check = |seen: &interview_store::SessionWithMessages, want: i64| {
                        reads.fetch_add(1, Ordering::Relaxed);
                        if !seen.messages.iter().any(|x| x.id == want) {
                            missing.fetch_add(1, Ordering::Relaxed);
                        }
                    };
                    // This process: the store remembers the session's position.
                    check(&store.get_session(first.id).unwrap(), m.id);
                    // Another process, handed the position.
                    check(&other.after(Some(at)).get_session(first.id).unwrap(), m.id);
                    // An old position, which the delayed standby has replayed by now.
                    if first_written.elapsed() > DELAY * 2 {
                        check(
                            &other.after(Some(first_at)).get_session(first.id).unwrap(),
                            opening.id,
                        );
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("a reader thread panicked");
    }

    let served: Vec<_> = other
        .replicas()
        .iter()
        .chain(store.replicas().iter())
        .map(|r| r.reads)
        .collect();
    let fallbacks = |s: &Store| {
        s.replica_fallbacks()
            .into_iter()
            .map(|(f, n)| format!("{}={n}", f.as_str()))
            .collect::<Vec<_>>()
            .join(" ")
    };
    eprintln!(
        "replicas: {} reads, {} missing their write; served by [prompt, delayed]: this store {:?}, \
         the other {:?}; to the primary: this store {}, the other {}; lag {:?}",
        reads.load(Ordering::Relaxed),
        missing.load(Ordering::Relaxed),
        &served[2..],
        &served[..2],
        fallbacks(&store),
        fallbacks(&other),
        store.replicas().iter().map(|r| r.lag).collect::<Vec<_>>(),
    );
    assert_eq!(
        missing.load(Ordering::Relaxed),
        0,
        "reads missed writes they had a position for"
    );
    let [other_prompt, other_delayed, prompt, delayed] = served[..] else {
        panic!("two replicas per store")
    };
    assert!(prompt + other_prompt > 0, "the prompt standby served reads");
    // It is always 500 ms behind the newest write: only the reads of old
    // positions can be its, and they were checked above.
    assert!(
        other_delayed > 0,
        "the delayed standby served the reads it was not behind for"
    );
    assert_eq!(
        delayed, 0,
        "the delayed standby never had this store's newest position in time"
    );
    let behind: u64 = store
        .replica_fallbacks()
        .iter()
        .filter(|(f, _)| *f == Fallback::Behind)
        .map(|(_, n)| n)
        .sum();
    assert!(
        behind < reads.load(Ordering::Relaxed) / 4,
        "most fresh reads are served by the prompt standby"
    );
}

#[test]
fn a_replica_lagging_past_the_bound_or_down_leaves_rotation_and_comes_back() {
    let Some(clusters) = Clusters::start(&[Standby::Async, Standby::Delayed(DELAY)]) else {
        return;
    };
    let store = Store::connect(
        &clusters.primary.url(),
        config(&clusters, Duration::from_millis(400)),
    )
    .unwrap();
    store.migrate().unwrap();
    assert!(wait_rotation(&store, &[true, true], Duration::from_secs(5)));

    // Writes keep the delayed standby 500 ms behind: past the 400 ms bound
    // (lag is measured to within a 250 ms tick, never under the truth).
    let s = store.start_session().unwrap();
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut out = false;
    while Instant::now() < deadline && !out {
        store.append_message(s.id, Role::User, "tick").unwrap();
        out = !store.replicas()[1].in_rotation;
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        out,
        "the delayed standby left rotation: {:#?}",
        store.replicas()
    );
    assert!(store.replicas()[0].in_rotation, "the prompt one stayed");
    let why = store.replicas()[1].error.clone().unwrap_or_default();
    assert!(why.contains("lags"), "{why}");
    // Writes stop, it catches up, and it is back by itself.
    assert!(wait_rotation(&store, &[true, true], Duration::from_secs(5)));

    // Down: out of rotation, and reads go on (to the primary).
    clusters.stop(&clusters.standbys[0]);
    assert!(wait_rotation(
        &store,
        &[false, true],
        Duration::from_secs(5)
    ));
    assert_eq!(store.get_session(s.id).unwrap().session.id, s.id);
    clusters.start_again(&clusters.standbys[0]);
    assert!(wait_rotation(
        &store,
        &[true, true],
        Duration::from_secs(10)
    ));
}

/// Two servers (two processes) on the same primary and replicas: a chat's
/// answer on one carries `interview-position`, and a read on the other with
/// that header sees the chat. `/health` and `/metrics` show the replicas.
#[cfg(feature = "server")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_returns_the_position_on_writes_and_honours_it_on_reads() {
    use interview_store::server::{self, AppState};
    use reqwest::StatusCode;
    use serde_json::{json, Value};

    let Some(clusters) = Clusters::start(&[Standby::Async, Standby::Delayed(DELAY)]) else {
        return;
    };
    let open = || {
        let store = Store::connect(
            &clusters.primary.url(),
            config(&clusters, Duration::from_secs(30)),
        )
        .unwrap();
        store.migrate().unwrap();
        assert!(wait_rotation(&store, &[true, true], Duration::from_secs(5)));
        store
    };
    let mut stops = Vec::new();
    let mut bases = Vec::new();
    for store in [open(), open()] {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        bases.push(format!("http://{}", listener.local_addr().unwrap()));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(server::serve(listener, AppState::new(store), async {
            let _ = rx.await;
        }));
        stops.push(tx);
    }
    let (writer, reader) = (&bases[0], &bases[1]);
    let http = reqwest::Client::new();
    let position = |r: &reqwest::Response| -> Position {
        r.headers()
            .get("interview-position")
            .expect("a write's answer carries its position")
            .to_str()
            .unwrap()
            .parse()
            .unwrap()
    };

    let r = http
        .post(format!("{writer}/interview/start"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    position(&r);
    let id = r.json::<Value>().await.unwrap()["session_id"]
        .as_str()
        .unwrap()
        .to_string();
    for n in 0..20 {
        let text = format!("answer {n}");
        let r = http
            .post(format!("{writer}/interview/chat"))
            .json(&json!({"session_id": id, "text": text}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        let at = position(&r);
        let read = http
            .get(format!("{reader}/interview/session/{id}"))
            .header("Interview-Position", at.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(read.status(), StatusCode::OK);
        let body: Value = read.json().await.unwrap();
        let seen = body["messages"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["text"] == text.as_str());
        assert!(seen, "the read with the chat's position missed it: {body}");
    }

    let bad = http
        .get(format!("{reader}/interview/session/{id}"))
        .header("Interview-Position", "0/1; DROP TABLE sessions")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);

    let health: Value = http
        .get(format!("{reader}/health"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let replicas = health["replicas"].as_array().unwrap();
    assert_eq!(replicas.len(), 2, "{health}");
    assert!(
        replicas.iter().all(|r| r["in_rotation"] == true),
        "{health}"
    );

    let metrics = http
        .get(format!("{reader}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for series in [
        "interview_db_replica_in_rotation{replica=\"1\"} 1",
        "interview_db_replica_lag_seconds{replica=\"1\"}",
        "interview_db_replica_reads_total{replica=\"0\"}",
        "interview_db_replica_fallbacks_total{reason=\"behind\"}",
    ] {
        assert!(
            metrics.contains(series),
            "{series} missing from /metrics:\n{metrics}"
        );
    }
    for stop in stops {
        let _ = stop.send(());
    }
}
