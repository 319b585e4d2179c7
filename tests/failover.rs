//! Failover: the primary crashes mid-load, a standby is promoted, and the same
//! [`Store`] (opened on a libpq multi-host URL) writes to it without a restart.
//!
//! With a synchronous standby no acknowledged write may be lost; with an
//! asynchronous one the loss is measured and printed, not asserted. Each test
//! starts its own clusters (`tests/common/cluster.rs`); PostgreSQL-only by nature.
//!
//! Run: `cargo test --all-features --test failover -- --nocapture --test-threads 1`
//! to see the figures.

mod common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::cluster::{in_recovery, Clusters, Standby};
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Text};
use interview_store::{Category, PoolConfig, Role, Store, StoreConfig};
use parking_lot::Mutex;

/// Writes must succeed again within this long after the promotion finished.
const RECOVERY_BOUND: Duration = Duration::from_secs(5);
const WRITERS: usize = 3;
/// From the crash to the promotion.
const DETECTION: Duration = Duration::from_secs(3);

/// One write's outcome, as the writer saw it.
#[derive(Default)]
struct Log {
    /// Acknowledged writes: (session id, message id), and when the ack came.
    acked: Vec<(String, i64, Instant)>,
    /// When writes failed, and the categories they failed with.
    refused: Vec<(Instant, Category)>,
}

struct Figures {
    acked: usize,
    lost: usize,
    refused_for: Duration,
    after_promotion: Duration,
    refusals: usize,
    slowest_refusal: Duration,
}

fn open(url: &str) -> Store {
    let config = StoreConfig {
        pool: PoolConfig {
            max_size: 4,
            ..Default::default()
        },
        ..Default::default()
    };
    let store = Store::connect(url, config).expect("connect over the multi-host URL");
    store.migrate().expect("migrate");
    store
}

/// Writes chats from a few threads, crashes the primary, promotes standby 0,
/// writes on until the store has recovered, and checks the new primary.
fn crash_and_promote(clusters: &Clusters) -> Figures {
    let store = open(&clusters.multi_host_url());
    let stop = Arc::new(AtomicBool::new(false));
    let log = Arc::new(Mutex::new(Log::default()));
    let slowest_refusal = Arc::new(Mutex::new(Duration::ZERO));
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let (store, stop, log, slowest) = (
                store.clone(),
                stop.clone(),
                log.clone(),
                slowest_refusal.clone(),
            );
            std::thread::spawn(move || {
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let started = Instant::now();
                    match store.start_session_with(Role::User, &format!("writer {w} chat {n}")) {
                        Ok((s, m)) => {
                            log.lock()
                                .acked
                                .push((s.id.to_string(), m.id, Instant::now()))
                        }
                        Err(e) => {
                            let took = started.elapsed();
                            let mut slowest = slowest.lock();
                            *slowest = (*slowest).max(took);
                            log.lock().refused.push((Instant::now(), e.category()));
                            // A refusal is quick: do not spin on it.
                            std::thread::sleep(Duration::from_millis(5));
                        }
                    }
                }
            })
        })
        .collect();

    std::thread::sleep(Duration::from_millis(800));
    let killed = Instant::now();
    clusters.kill_primary();
    // What an operator or a failover manager takes to notice and decide
    // (long enough for the pool's retries of failed connections to back off).
    std::thread::sleep(DETECTION);
    clusters.promote(0);
    let promoted = Instant::now();

    let recovered = loop {
        let first_after = log.lock().acked.iter().map(|a| a.2).find(|t| *t > promoted);
        if let Some(t) = first_after {
            break t;
        }
        if promoted.elapsed() > RECOVERY_BOUND * 2 {
            break Instant::now();
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.join().expect("a writer panicked");
    }
    let log = std::mem::take(&mut *log.lock());
    let after_promotion = recovered.saturating_duration_since(promoted);
    assert!(
        after_promotion <= RECOVERY_BOUND,
        "writes did not succeed again within {RECOVERY_BOUND:?} of the promotion ({} refusals)",
        log.refused.len()
    );
    // Every refusal says "try again later" (503), never a client or a data error,
    // and says it at once (the breaker), not after the pool's 5 s wait.
    for (_, category) in &log.refused {
        assert_eq!(*category, Category::Unavailable);
    }
    let slowest = *slowest_refusal.lock();
    assert!(
        slowest < Duration::from_secs(2),
        "a refusal took {slowest:?}"
    );
    assert!(!store.pool_state().breaker_open, "the breaker closed again");
    let acked_after = log.acked.iter().filter(|a| a.2 > killed).count();
    assert!(acked_after > 0, "no write succeeded after the failover");

    // What the new primary holds, read there directly.
    let mut conn = clusters.standbys[0].connect();
    assert!(!in_recovery(&mut conn), "standby 0 was promoted");
    let sessions: HashSet<String> = diesel::sql_query("SELECT id::text AS id FROM sessions")
        .load::<Id>(&mut conn)
        .unwrap()
        .into_iter()
        .map(|r| r.id)
        .collect();
    let messages: HashSet<i64> = diesel::sql_query("SELECT id AS n FROM messages")
        .load::<N>(&mut conn)
        .unwrap()
        .into_iter()
        .map(|r| r.n)
        .collect();
    let lost = log
        .acked
        .iter()
        .filter(|(s, m, _)| !sessions.contains(s) || !messages.contains(m))
        .count();

    let last_before = log
        .acked
        .iter()
        .map(|a| a.2)
        .filter(|t| *t <= killed)
        .max()
        .unwrap_or(killed);
    let figures = Figures {
        acked: log.acked.len(),
        lost,
        refused_for: recovered.saturating_duration_since(last_before),
        after_promotion,
        refusals: log.refused.len(),
        slowest_refusal: *slowest_refusal.lock(),
    };
    drop(store);
    figures
}

#[derive(QueryableByName)]
struct Id {
    #[diesel(sql_type = Text)]
    id: String,
}

#[derive(QueryableByName)]
struct N {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

fn print(kind: &str, f: &Figures) {
    eprintln!(
        "failover ({kind} standby): {} writes acknowledged, {} of them lost; writes refused for {:.2?} \
         (last ack before the crash to first ack after it; {:.2?} after the promotion finished), \
         {} refusals, the slowest answered in {:.0?}",
        f.acked, f.lost, f.refused_for, f.after_promotion, f.refusals, f.slowest_refusal
    );
}

#[test]
fn with_a_synchronous_standby_no_acknowledged_write_is_lost() {
    let Some(clusters) = Clusters::start(&[Standby::Sync]) else {
        return;
    };
    let f = crash_and_promote(&clusters);
    print("synchronous", &f);
    assert_eq!(
        f.lost, 0,
        "acknowledged writes missing on the promoted standby"
    );
}

#[test]
fn with_an_asynchronous_standby_the_store_recovers_and_the_loss_is_measured() {
    let Some(clusters) = Clusters::start(&[Standby::Async]) else {
        return;
    };
    let f = crash_and_promote(&clusters);
    print("asynchronous", &f);
}
