//! Throughput and tail latency of one shared `Store` (default pool) under
//! 1, 2, 8 and 32 threads, each looping "append a message, read a session".
//!
//! `cargo bench --all-features --bench contention`; prints a Markdown table.
//! `INTERVIEW_BENCH_SESSIONS` shrinks the prefill, `INTERVIEW_BENCH_SECONDS`
//! sets the measured time per row (default 3).

#[macro_use]
mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Barrier;
use std::time::{Duration, Instant};

use interview_store::Role;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use common::{percentile, BenchDb};

const THREADS: [usize; 4] = [1, 2, 8, 32];
const TEXT: &str =
    "I split the nightly batch into idempotent steps, so a failed run resumes where it stopped.";

struct Row {
    ops_per_sec: f64,
    p50: Duration,
    p99: Duration,
    p99_append: Duration,
    p99_get: Duration,
    pool_waits: u64,
}

/// Runs `threads` workers for `time`; each op is timed on its own.
fn run(db: &BenchDb, threads: usize, time: Duration) -> Row {
    let barrier = Barrier::new(threads + 1);
    let stop = AtomicBool::new(false);
    let waits_before = db.store.pool_state().waits;
    let (elapsed, per_thread) = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                let (barrier, stop) = (&barrier, &stop);
                scope.spawn(move || {
                    let mut rng = SmallRng::seed_from_u64(t as u64);
                    let (mut append, mut get) = (Vec::new(), Vec::new());
                    barrier.wait();
                    while !stop.load(Ordering::Relaxed) {
                        let id = db.write_ids[rng.random_range(0..db.write_ids.len())];
                        let started = Instant::now();
                        db.store.append_message(id, Role::User, TEXT).unwrap();
                        append.push(started.elapsed());

                        let id = db.read_ids[rng.random_range(0..db.read_ids.len())];
                        let started = Instant::now();
                        db.store.get_session(id).unwrap();
                        get.push(started.elapsed());
                    }
                    (append, get)
                })
            })
            .collect();
        barrier.wait();
        let started = Instant::now();
        std::thread::sleep(time);
        stop.store(true, Ordering::Relaxed);
        let per_thread: Vec<_> = workers.into_iter().map(|w| w.join().unwrap()).collect();
        (started.elapsed(), per_thread)
    });

    let (mut append, mut get): (Vec<Duration>, Vec<Duration>) = (Vec::new(), Vec::new());
    for (a, g) in per_thread {
        append.extend(a);
        get.extend(g);
    }
    append.sort_unstable();
    get.sort_unstable();
    let mut all: Vec<Duration> = append.iter().chain(&get).copied().collect();
    all.sort_unstable();
    Row {
        ops_per_sec: all.len() as f64 / elapsed.as_secs_f64(),
        p50: percentile(&all, 50.0),
        p99: percentile(&all, 99.0),
        p99_append: percentile(&append, 99.0),
        p99_get: percentile(&get, 99.0),
        pool_waits: db.store.pool_state().waits - waits_before,
    }
}

fn micros(d: Duration) -> String {
    format!("{:.0}", d.as_secs_f64() * 1e6)
}

fn main() {
    let sessions = common::sessions_from_env();
    let time = std::env::var("INTERVIEW_BENCH_SECONDS")
        .ok()
        .and_then(|s| s.trim().parse::<f64>().ok())
        .map_or(Duration::from_secs(3), Duration::from_secs_f64);

    let mut table = vec![
        "| backend | threads | ops/s | p50 µs | p99 µs | p99 append µs | p99 get_session µs | pool waits |".to_string(),
        "|---|---:|---:|---:|---:|---:|---:|---:|".to_string(),
    ];
    for backend in common::BACKENDS {
        let db = BenchDb::new(backend, sessions);
        for threads in THREADS {
            // Untimed: lets the pool open its connections and the caches fill.
            run(&db, threads, Duration::from_millis(500));
            let r = run(&db, threads, time);
            let line = format!(
                "| {backend} | {threads} | {:.0} | {} | {} | {} | {} | {} |",
                r.ops_per_sec,
                micros(r.p50),
                micros(r.p99),
                micros(r.p99_append),
                micros(r.p99_get),
                r.pool_waits
            );
            eprintln!("{line}");
            table.push(line);
        }
    }
    println!(
        "\nOne Store (default pool, max 10 connections) shared by N threads, each looping \
         append_message + get_session; {sessions} sessions x {} messages prefilled, {:?} per row.\n",
        common::MESSAGES_PER_SESSION,
        time
    );
    println!("{}", table.join("\n"));
}
