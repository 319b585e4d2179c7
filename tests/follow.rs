//! Continuous follow and the switch under traffic: PostgreSQL trails SQLite by
//! milliseconds, `verify` and `switch` take turns with the follower, the
//! switch holds writes only for its last steps, and nothing acknowledged is
//! lost or stored twice. Real SQLite files and PostgreSQL databases.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Text};
use interview_store::connection::DatabaseUrl;
use interview_store::error::Refusal;
use interview_store::migrate::{self, FollowEnd, FollowOptions, FollowStatus};
use interview_store::{Backend, Error, Role, Store, StoreConfig};

fn opts() -> FollowOptions {
    FollowOptions {
        poll: Duration::from_millis(10),
        report_every: Duration::from_millis(100),
        ..Default::default()
    }
}

/// A SQLite file with `n` sessions of two messages, copied into a fresh PostgreSQL database.
fn copied(dir: &Path, n: usize) -> (PathBuf, common::PgDatabase, DatabaseUrl, Vec<uuid::Uuid>) {
    let path = dir.join("interview.db");
    let store = Store::connect(path.to_str().unwrap(), StoreConfig::default()).unwrap();
    store.migrate().unwrap();
    let ids: Vec<uuid::Uuid> = (0..n)
        .map(|i| {
            let s = store.start_session().unwrap();
            store
                .append_message(s.id, Role::Assistant, &format!("question {i}"))
                .unwrap();
            store
                .append_message(s.id, Role::User, &format!("answer {i}"))
                .unwrap();
            s.id
        })
        .collect();
    drop(store);
    let db = common::PgDatabase::create();
    let url: DatabaseUrl = db.url.parse().unwrap();
    migrate::copy(&path, &url, &Default::default()).unwrap();
    (path, db, url, ids)
}

/// Runs a follower on a thread; its reports land in the returned list.
fn spawn_follower(
    path: &Path,
    url: &DatabaseUrl,
    opts: FollowOptions,
    stop: Arc<AtomicBool>,
) -> (
    std::thread::JoinHandle<interview_store::Result<FollowEnd>>,
    Arc<Mutex<Vec<FollowStatus>>>,
) {
    let seen: Arc<Mutex<Vec<FollowStatus>>> = Arc::default();
    let (path, url, sink) = (path.to_path_buf(), url.clone(), seen.clone());
    let handle = std::thread::spawn(move || {
        migrate::follow(&path, &url, &opts, &stop, |s| {
            sink.lock().unwrap().push(s.clone())
        })
    });
    (handle, seen)
}

/// A service's writer: appends numbered messages to the sessions in turn, on
/// SQLite until it is retired, then on PostgreSQL (as the servers do);
/// writes refused by a pause are retried (held), never given up.
struct Writer {
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<String>>>,
    /// The longest a single write took, pause and retries included.
    longest: Arc<Mutex<Duration>>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Writer {
    fn start(sqlite: &Path, postgres: &DatabaseUrl, sessions: Vec<uuid::Uuid>) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let acked: Arc<Mutex<Vec<String>>> = Arc::default();
        let longest: Arc<Mutex<Duration>> = Arc::default();
        let (sqlite, postgres) = (sqlite.to_str().unwrap().to_string(), postgres.clone());
        let (s, a, l) = (stop.clone(), acked.clone(), longest.clone());
        let handle = std::thread::spawn(move || {
            let mut store = Store::connect(&sqlite, StoreConfig::default()).unwrap();
            let mut i = 0usize;
            while !s.load(Ordering::SeqCst) {
                i += 1;
                let text = format!("live write {i}");
                let session = sessions[i % sessions.len()];
                let started = Instant::now();
                loop {
                    match store.append_message(session, Role::User, &text) {
                        Ok(_) => break,
                        Err(Error::Retired { .. }) => {
                            store = Store::open(postgres.clone(), StoreConfig::default()).unwrap()
                        }
                        Err(Error::ReadOnly) => std::thread::sleep(Duration::from_millis(5)),
                        Err(e) => panic!("write {i} failed: {e}"),
                    }
                    assert!(
                        started.elapsed() < Duration::from_secs(30),
                        "write {i} held for 30 s"
                    );
                }
                let took = started.elapsed();
                let mut longest = l.lock().unwrap();
                *longest = (*longest).max(took);
                a.lock().unwrap().push(text);
            }
        });
        Writer {
            stop,
            acked,
            longest,
            handle: Some(handle),
        }
    }

    fn acked(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    /// Stops the writer; every text it was told was written.
    fn finish(mut self) -> (Vec<String>, Duration) {
        self.stop.store(true, Ordering::SeqCst);
        self.handle.take().unwrap().join().unwrap();
        let longest = *self.longest.lock().unwrap();
        (std::mem::take(&mut self.acked.lock().unwrap()), longest)
    }
}

#[derive(QueryableByName)]
struct Text1 {
    #[diesel(sql_type = Text)]
    text: String,
}

#[derive(QueryableByName)]
struct N {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

/// How many times each live write's text is stored in PostgreSQL.
fn pg_live_writes(url: &DatabaseUrl) -> HashMap<String, usize> {
    let mut pg = PgConnection::establish(url.connection_string()).unwrap();
    let rows: Vec<Text1> =
        diesel::sql_query("SELECT text FROM messages WHERE text LIKE 'live write %'")
            .load(&mut pg)
            .unwrap();
    let mut out = HashMap::new();
    for r in rows {
        *out.entry(r.text).or_default() += 1;
    }
    out
}

fn pg_messages(url: &DatabaseUrl) -> i64 {
    let mut pg = PgConnection::establish(url.connection_string()).unwrap();
    diesel::sql_query("SELECT count(*) AS n FROM messages")
        .get_result::<N>(&mut pg)
        .unwrap()
        .n
}

fn assert_each_once(acked: &[String], stored: &HashMap<String, usize>) {
    let twice: Vec<_> = stored.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "stored twice: {twice:?}");
    let lost: Vec<_> = acked.iter().filter(|t| !stored.contains_key(*t)).collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged writes lost: {lost:?}",
        lost.len()
    );
    assert_eq!(
        stored.len(),
        acked.len(),
        "writes stored that nobody was told of"
    );
}

#[test]
fn a_follower_keeps_postgres_within_a_second_and_the_switch_under_traffic_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (path, _db, url, ids) = copied(dir.path(), 30);
    let stop = Arc::new(AtomicBool::new(false));
    let (follower, reports) = spawn_follower(&path, &url, opts(), stop.clone());
    let writer = Writer::start(&path, &url, ids);

    // PostgreSQL trails: the writes show up there while the writer goes on.
    let deadline = Instant::now() + Duration::from_secs(30);
    while pg_live_writes(&url).len() < 200 {
        assert!(
            Instant::now() < deadline,
            "the follower applied nothing: {:?}",
            reports.lock().unwrap().last()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let before = writer.acked();
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        writer.acked() > before,
        "the service's writes were held by the follower"
    );

    // A full verify under traffic: the follower waits for it, and the rows
    // written meanwhile are in flight, not differences.
    let v = migrate::verify_and_record(&path, &url).unwrap();
    assert!(v.is_equal_but_in_flight(), "{v:#?}");
    assert!(v.verified_upto.is_some(), "{v:#?}");

    // The switch under traffic: one step, writes held briefly, then on PostgreSQL.
    std::thread::sleep(Duration::from_millis(300));
    let report = migrate::switch(&path, &url, Backend::Postgres).unwrap();
    assert_eq!(report.live, Backend::Postgres);
    let held = report
        .held_ms
        .expect("a switch under traffic reports how long it held writes");
    assert!(report.verified_rows.unwrap() > 0, "{report:?}");
    assert_eq!(
        follower.join().unwrap().unwrap(),
        FollowEnd::Switched,
        "the follower ends with the switch"
    );
    // The writer carries on on PostgreSQL.
    let at_switch = writer.acked();
    let deadline = Instant::now() + Duration::from_secs(30);
    while writer.acked() < at_switch + 50 {
        assert!(
            Instant::now() < deadline,
            "no write landed after the switch"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let (acked, longest) = writer.finish();
    assert_each_once(&acked, &pg_live_writes(&url));
    let reports = reports.lock().unwrap();
    assert!(
        reports.iter().any(|r| r.applied_entries > 0),
        "no report of applied entries: {reports:?}"
    );
    eprintln!(
        "switch under traffic: writes held {held} ms, longest write {longest:?}, {} writes",
        acked.len()
    );
}

/// Regression: `verify` held the migration lock for its whole scan, so a
/// follower (and `sync`, `switch`) waited minutes on a large file, and the
/// switch started far behind. It now holds it only while it takes both
/// sides' snapshots.
#[test]
fn a_full_verify_lets_sync_run_while_it_scans_and_reports_its_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let (path, _db, url, ids) = copied(dir.path(), 20);
    // Holds verify in its last read (idempotency keys), after the snapshots
    // are taken: no sync pass without keys touches that table.
    let mut blocker = PgConnection::establish(&_db.url).unwrap();
    blocker
        .batch_execute("BEGIN; LOCK TABLE idempotency_keys IN ACCESS EXCLUSIVE MODE")
        .unwrap();
    let verifying = {
        let (path, url) = (path.clone(), url.clone());
        std::thread::spawn(move || migrate::verify(&path, &url))
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    // Another connection: a transaction sees pg_stat_activity as of its first look.
    let mut watcher = PgConnection::establish(&_db.url).unwrap();
    loop {
        let waiting: N = diesel::sql_query(
            "SELECT count(*) AS n FROM pg_stat_activity WHERE datname = current_database() \
             AND wait_event_type = 'Lock' AND query LIKE '%idempotency_keys%'",
        )
        .get_result(&mut watcher)
        .unwrap();
        if waiting.n > 0 {
            break;
        }
        assert!(
            !verifying.is_finished(),
            "verify ended before reading the keys: {:?}",
            verifying.join()
        );
        assert!(Instant::now() < deadline, "verify never reached the keys");
        std::thread::sleep(Duration::from_millis(20));
    }

    // Mid-scan: the lock is free, and a write made now is synced at once.
    let store = Store::connect(path.to_str().unwrap(), StoreConfig::default()).unwrap();
    store
        .append_message(ids[0], Role::User, "written while verify scans")
        .unwrap();
    let started = Instant::now();
    let synced = migrate::sync(&path, &url, &Default::default()).unwrap();
    assert_eq!(synced.messages, 1, "{synced:?}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "sync waited {:?} for the verify",
        started.elapsed()
    );
    blocker.batch_execute("COMMIT").unwrap();

    // Verify compared the two snapshots it took: equal, nothing in flight,
    // and it records the position those snapshots stood at.
    let v = verifying.join().unwrap().unwrap();
    assert!(v.is_equal(), "{v:#?}");
    let mark_at_snapshot = v
        .verified_upto
        .expect("an equal verify records its position");
    let now = migrate::verify(&path, &url).unwrap();
    assert!(now.is_equal(), "{now:#?}");
    assert!(
        now.verified_upto.unwrap() > mark_at_snapshot,
        "the later verify stands past the synced write: {now:?} vs {mark_at_snapshot}"
    );
}

#[test]
fn a_switch_under_traffic_without_a_recorded_verify_is_refused_and_holds_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (path, _db, url, ids) = copied(dir.path(), 5);
    let writer = Writer::start(&path, &url, ids);
    std::thread::sleep(Duration::from_millis(200));
    let err = migrate::switch(&path, &url, Backend::Postgres).unwrap_err();
    assert!(
        matches!(&err, Error::Refused { why: Refusal::OutOfOrder, message } if message.contains("migrate verify")),
        "{err}"
    );
    let before = writer.acked();
    std::thread::sleep(Duration::from_millis(300));
    assert!(writer.acked() > before, "SQLite was left paused");
    let (acked, longest) = writer.finish();
    assert!(longest < Duration::from_secs(5), "{longest:?}");
    assert!(!acked.is_empty());
    // SQLite stays the live side.
    let status = migrate::status(&url).unwrap();
    assert_eq!(status.state.unwrap().phase, "copied");
}

#[test]
fn a_difference_found_by_the_switch_resumes_sqlite_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (path, _db, url, ids) = copied(dir.path(), 5);
    let v = migrate::verify_and_record(&path, &url).unwrap();
    assert!(v.is_equal(), "{v:#?}");
    assert!(v.verified_upto.is_some());
    // A row written after the verify and applied, then changed behind the
    // follower's back on PostgreSQL: the bounded verify must see it.
    let store = Store::connect(path.to_str().unwrap(), StoreConfig::default()).unwrap();
    let m = store
        .append_message(ids[0], Role::User, "after the verify")
        .unwrap();
    migrate::sync(&path, &url, &Default::default()).unwrap();
    let mut pg = PgConnection::establish(url.connection_string()).unwrap();
    diesel::sql_query("UPDATE messages SET text = 'tampered' WHERE id = $1")
        .bind::<BigInt, _>(m.id)
        .execute(&mut pg)
        .unwrap();
    let err = migrate::switch(&path, &url, Backend::Postgres).unwrap_err();
    assert!(
        matches!(&err, Error::Refused { why: Refusal::Differs, message } if message.contains("differ")),
        "{err}"
    );
    // The bounded check judges the row as verify does: it names the column.
    assert!(
        err.to_string()
            .contains(&format!("messages {} text: values differ", m.id)),
        "{err}"
    );
    // SQLite is writable again and the cutover is where it was.
    store
        .append_message(ids[0], Role::User, "still on sqlite")
        .unwrap();
    assert_eq!(
        migrate::status(&url).unwrap().state.unwrap().phase,
        "copied"
    );
}

#[test]
fn a_follower_survives_postgres_going_away_and_resumes_from_its_mark() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (path, db, url, ids) = copied(dir.path(), 5);
    let upstream = "127.0.0.1:5432".to_string();
    assert!(
        db.url.contains(&upstream),
        "the test expects PostgreSQL at {upstream}"
    );
    let proxy = rt.block_on(common::proxy::Proxy::start(0, upstream.clone()));
    let via_proxy: DatabaseUrl = db
        .url
        .replacen(&upstream, &format!("127.0.0.1:{}", proxy.port), 1)
        .parse()
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let (follower, reports) = spawn_follower(&path, &via_proxy, opts(), stop.clone());
    let store = Store::connect(path.to_str().unwrap(), StoreConfig::default()).unwrap();
    let total = |n: i64| 10 + n; // 5 sessions of 2 messages, plus the live ones
    for i in 0..20 {
        store
            .append_message(ids[i % 5], Role::User, &format!("live write {i}"))
            .unwrap();
    }
    let wait_for = |want: i64| {
        let deadline = Instant::now() + Duration::from_secs(30);
        while pg_messages(&url) < want {
            assert!(
                Instant::now() < deadline,
                "PostgreSQL holds {} messages, not {want}: {:?}",
                pg_messages(&url),
                reports.lock().unwrap().last()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    wait_for(total(20));

    // PostgreSQL goes away; the service writes on.
    proxy.stop();
    for i in 20..60 {
        store
            .append_message(ids[i % 5], Role::User, &format!("live write {i}"))
            .unwrap();
    }
    std::thread::sleep(Duration::from_millis(700));
    assert_eq!(pg_messages(&url), total(20));
    assert!(
        !follower.is_finished(),
        "the follower gave up on a lost database"
    );

    let back = rt.block_on(common::proxy::Proxy::start(proxy.port, upstream));
    wait_for(total(60));
    stop.store(true, Ordering::SeqCst);
    assert_eq!(follower.join().unwrap().unwrap(), FollowEnd::Stopped);
    back.stop();
    let acked: Vec<String> = (0..60).map(|i| format!("live write {i}")).collect();
    assert_each_once(&acked, &pg_live_writes(&url));
    let last = reports.lock().unwrap().last().cloned().unwrap();
    assert!(last.reconnects >= 1, "{last:?}");
    assert!(last.connected, "{last:?}");
    assert_eq!(last.pending_entries, 0, "{last:?}");
}

#[test]
fn a_follower_refuses_what_it_cannot_follow_instead_of_idling() {
    let dir = tempfile::tempdir().unwrap();
    // A file without a change log: nothing would ever look pending.
    let path = dir.path().join("plain.db");
    Store::connect(path.to_str().unwrap(), StoreConfig::default())
        .unwrap()
        .migrate()
        .unwrap();
    let db = common::PgDatabase::create();
    let url: DatabaseUrl = db.url.parse().unwrap();
    let stop = AtomicBool::new(false);
    let err = migrate::follow(&path, &url, &opts(), &stop, |_| {}).unwrap_err();
    assert!(
        matches!(&err, Error::Refused { why: Refusal::NotReady, message } if message.contains("no change log")),
        "{err}"
    );
    // A copied file followed backwards before any switch.
    let (path, _db, url, _) = copied(dir.path(), 2);
    let reverse = FollowOptions {
        reverse: true,
        ..opts()
    };
    let err = migrate::follow(&path, &url, &reverse, &stop, |_| {}).unwrap_err();
    assert!(
        matches!(&err, Error::Refused { why: Refusal::OutOfOrder, message } if message.contains("follow --reverse")),
        "{err}"
    );
}
