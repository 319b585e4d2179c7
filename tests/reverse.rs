//! The way back under traffic: a reverse follower reads PostgreSQL's change log by
//! transaction id while PostgreSQL serves, and the switch back pauses, catches up,
//! verifies the rows changed since the switch and makes SQLite live.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use interview_store::connection::DatabaseUrl;
use interview_store::error::Refusal;
use interview_store::migrate::{
    copy, rollback_sync, status, switch, sync, CopyOptions, MigrationLock, ReverseFollower,
    SyncOptions,
};
use interview_store::{maintenance, Backend, Error, Role, Store, StoreConfig};
use uuid::Uuid;

fn pause(url: &DatabaseUrl) {
    maintenance::pause(&mut maintenance::connect(url).unwrap()).unwrap();
}

/// A SQLite service's file copied and switched to PostgreSQL.
fn switched(ids: &[Uuid]) -> (tempfile::TempDir, PathBuf, common::PgDatabase, DatabaseUrl) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("interview.db");
    let lite = Store::connect(path.to_str().unwrap(), StoreConfig::default()).unwrap();
    lite.migrate().unwrap();
    common::seed_identical(&lite, ids);
    let db = common::PgDatabase::create();
    let url: DatabaseUrl = db.url.parse().unwrap();
    copy(&path, &url, &CopyOptions::default()).unwrap();
    pause(&DatabaseUrl::sqlite(path.display().to_string()));
    sync(&path, &url, &SyncOptions::default()).unwrap();
    switch(&path, &url, Backend::Postgres).unwrap();
    (dir, path, db, url)
}

fn sqlite_store(path: &Path) -> Store {
    Store::connect(path.to_str().unwrap(), StoreConfig::default()).unwrap()
}

/// Calls `done` until it says yes. The horizon of a pass is the oldest
/// transaction still running anywhere on the cluster, so another test's
/// transaction can hold a pass back for a moment; never for 60 s.
fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(Instant::now() < deadline, "never happened: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn insert_session(id: Uuid, summary: &str) -> String {
    format!(
        "INSERT INTO sessions (id, created_at, updated_at, summary) VALUES ('{id}', now(), now(), '{summary}')"
    )
}

#[derive(QueryableByName, Debug)]
struct Logged {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    seq: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    xid: i64,
}

fn logged(pg: &mut PgConnection, id: Uuid) -> Logged {
    diesel::sql_query(format!(
        "SELECT seq, xid FROM interview_change_log WHERE table_name = 'sessions' AND row_key = '{id}'"
    ))
    .get_result(pg)
    .unwrap()
}

/// Transaction B takes its id first; A writes first (the lower sequence number)
/// and stays open while B commits. Read by sequence number, the pass that
/// applies B moves the mark past A's entry and A is never applied; read by
/// transaction id, B is applied while A is open, and A by a pass after its commit.
#[test]
fn a_transaction_that_commits_late_is_applied_by_a_later_pass() {
    let ids: Vec<Uuid> = (0..2).map(|_| Uuid::now_v7()).collect();
    let (_dir, path, db, url) = switched(&ids);
    let mut follower = ReverseFollower::open(&path, &url).unwrap();
    let lite = sqlite_store(&path);
    let (sa, sb) = (Uuid::now_v7(), Uuid::now_v7());
    let mut a = PgConnection::establish(&db.url).unwrap();
    let mut b = PgConnection::establish(&db.url).unwrap();
    b.batch_execute("BEGIN; SELECT pg_current_xact_id();")
        .unwrap();
    a.batch_execute(&format!("BEGIN; {}", insert_session(sa, "A")))
        .unwrap();
    b.batch_execute(&format!("{}; COMMIT", insert_session(sb, "B")))
        .unwrap();

    eventually("B applied while A is open", || {
        follower.step().unwrap();
        lite.get_session(sb).is_ok()
    });
    assert!(
        matches!(lite.get_session(sa), Err(Error::NotFound { .. })),
        "A is not committed"
    );
    #[derive(QueryableByName)]
    struct Xid {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        xid: i64,
    }
    let xid_a = diesel::sql_query("SELECT pg_current_xact_id()::text::bigint AS xid")
        .get_result::<Xid>(&mut a)
        .unwrap()
        .xid;
    let horizon = status(&url).unwrap().state.unwrap().rollback_xid_horizon;
    assert!(
        horizon > 0 && horizon <= xid_a,
        "the horizon {horizon} stops at A ({xid_a})"
    );

    a.batch_execute("COMMIT").unwrap();
    let mut pg = PgConnection::establish(&db.url).unwrap();
    let (la, lb) = (logged(&mut pg, sa), logged(&mut pg, sb));
    assert!(
        la.seq < lb.seq && la.xid > lb.xid,
        "A's entry has the lower sequence number, B the older transaction: {la:?} {lb:?}"
    );
    eventually("A applied after its commit", || {
        follower.step().unwrap();
        lite.get_session(sa).is_ok()
    });
    assert_eq!(lite.get_session(sa).unwrap().session.summary, "A");
    eventually("nothing pending", || {
        follower.step().unwrap();
        follower.pending().unwrap() == 0
    });
}

/// A pass waits its turn while another migration command runs, and stops
/// the follower once the cutover is no longer in phase switched.
#[test]
fn a_pass_takes_turns_with_migration_commands() {
    let ids: Vec<Uuid> = (0..2).map(|_| Uuid::now_v7()).collect();
    let (_dir, path, _db, url) = switched(&ids);
    let pg = Store::open(url.clone(), StoreConfig::default()).unwrap();
    let m = pg
        .append_message(ids[0], Role::User, "on postgres")
        .unwrap();
    let mut follower = ReverseFollower::open(&path, &url).unwrap();
    let held = MigrationLock::acquire(&url).unwrap();
    assert_eq!(
        follower.step().unwrap(),
        None,
        "another command holds the lock"
    );
    drop(held);
    let lite = sqlite_store(&path);
    eventually("the message applied", || {
        follower.step().unwrap();
        lite.get_session(ids[0])
            .unwrap()
            .messages
            .iter()
            .any(|x| x.id == m.id)
    });

    let back = switch(&path, &url, Backend::Sqlite).unwrap();
    assert_eq!(back.live, Backend::Sqlite);
    match follower.step() {
        Err(Error::Refused {
            why: Refusal::OutOfOrder,
            message,
        }) => assert!(message.contains("rolled_back"), "{message}"),
        other => panic!("{other:?}"),
    }
}

/// What the writer thread was told, by id.
#[derive(Default)]
struct Told {
    /// Message id -> (session, text), for every append that succeeded.
    messages: HashMap<i64, (Uuid, String)>,
    /// Appends that succeeded on SQLite after the switch back.
    on_sqlite: usize,
    /// Sessions written to on PostgreSQL.
    pg_sessions: std::collections::HashSet<Uuid>,
    /// Appends refused for the pause or the retirement (and retried).
    held: usize,
}

/// Appends messages through the store until `stop`: on PostgreSQL, then on
/// SQLite once PostgreSQL says it is retired. A refusal for the pause (or
/// SQLite's retirement, until it is live) is retried.
fn write_until(stop: &AtomicBool, pg_url: &DatabaseUrl, sqlite: &Path, ids: &[Uuid]) -> Told {
    let config = StoreConfig {
        pg_statement_cache: pg_url.statement_cache(),
        ..Default::default()
    };
    let mut store = Store::open(pg_url.clone(), config).unwrap();
    let mut on_sqlite = false;
    let mut told = Told::default();
    let mut n = 0;
    while !stop.load(Ordering::SeqCst) {
        let session = ids[n % ids.len()];
        let text = format!("write {n} — «{}»", if on_sqlite { "sqlite" } else { "pg" });
        match store.append_message(session, Role::User, &text) {
            Ok(m) => {
                let before = told.messages.insert(m.id, (session, text));
                assert!(before.is_none(), "id {} handed out twice", m.id);
                told.on_sqlite += on_sqlite as usize;
                if !on_sqlite {
                    told.pg_sessions.insert(session);
                }
                n += 1;
            }
            Err(Error::Retired { .. }) if !on_sqlite => {
                store = sqlite_store(sqlite);
                on_sqlite = true;
            }
            // The pause; or SQLite, still retired for the moment between
            // PostgreSQL's retirement and SQLite going live.
            Err(Error::ReadOnly | Error::Retired { .. }) => {
                told.held += 1;
                std::thread::sleep(Duration::from_millis(2));
            }
            Err(e) => panic!("write {n} failed: {e}"),
        }
    }
    told
}

/// Runs passes until the follower is told to stop (the switch back happened).
fn follow_until_refused(sqlite: &Path, pg_url: &DatabaseUrl) -> (u64, String) {
    let mut follower = ReverseFollower::open(sqlite, pg_url).unwrap();
    let mut applied = 0;
    loop {
        match follower.step() {
            Ok(Some(r)) => applied += r.entries,
            Ok(None) => {}
            Err(Error::Refused { message, .. }) => return (applied, message),
            Err(e) => panic!("reverse pass failed: {e}"),
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn the_switch_back_under_writes_loses_nothing_and_stores_nothing_twice() {
    let ids: Vec<Uuid> = (0..4).map(|_| Uuid::now_v7()).collect();
    let (_dir, path, _db, url) = switched(&ids);
    switch_back_under_writes(&path, &url, &ids);
}

/// The same through PgBouncer in transaction mode: the writer, the follower
/// and the switch back (its waiting lock, the pause, the final pass).
#[test]
fn the_switch_back_under_writes_works_through_a_transaction_pooler() {
    let Some(pooler) = common::pgbouncer_url() else {
        return;
    };
    let ids: Vec<Uuid> = (0..4).map(|_| Uuid::now_v7()).collect();
    let (_dir, path, db, _direct) = switched(&ids);
    let url: DatabaseUrl = common::scratch::with_database(&pooler, &db.name)
        .parse::<DatabaseUrl>()
        .unwrap()
        .with_statement_cache(false);
    switch_back_under_writes(&path, &url, &ids);
}

/// A writer on PostgreSQL and a reverse follower run; the switch back
/// happens under them; then every write the writer was told succeeded is
/// checked in SQLite.
fn switch_back_under_writes(path: &Path, url: &DatabaseUrl, ids: &[Uuid]) {
    let (path, url, ids) = (path.to_path_buf(), url.clone(), ids.to_vec());
    let seeded = sqlite_store(&path).counts().unwrap().messages;
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (stop, url, path, ids) = (stop.clone(), url.clone(), path.clone(), ids.clone());
        std::thread::spawn(move || write_until(&stop, &url, &path, &ids))
    };
    let follower = {
        let (url, path) = (url.clone(), path.clone());
        std::thread::spawn(move || follow_until_refused(&path, &url))
    };
    std::thread::sleep(Duration::from_millis(1500));

    let report = switch(&path, &url, Backend::Sqlite).unwrap();
    eprintln!(
        "switch back under writes: held {:?} ms, {:?} rows verified",
        report.held_ms, report.verified_rows
    );
    assert_eq!(report.live, Backend::Sqlite);
    assert!(report.verify.is_equal(), "{report:#?}");
    let held = report.held_ms.expect("the switch paused PostgreSQL itself");
    assert!(held < 30_000, "{held} ms");
    let verified = report.verified_rows.expect("the bounded verify ran");
    assert!(verified > 0, "{report:#?}");

    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::SeqCst);
    let told = writer.join().unwrap();
    let (applied, why) = follower.join().unwrap();
    assert!(why.contains("rolled_back"), "{why}");
    assert!(
        applied > 0,
        "the follower applied entries before the switch"
    );
    assert!(told.on_sqlite > 0, "writes went on, on SQLite");
    // Every row written on PostgreSQL (its messages and their sessions) was
    // compared: before the pause, and those still in flight then again in it.
    let on_pg = told.messages.len() - told.on_sqlite;
    assert!(
        verified as usize >= on_pg + told.pg_sessions.len(),
        "{verified} rows compared, {on_pg} messages and {} sessions written on PostgreSQL",
        told.pg_sessions.len()
    );
    assert!(verified as usize <= 2 * (on_pg + told.pg_sessions.len()));
    eprintln!(
        "{} writes told ok ({} on sqlite), {} refused meanwhile and retried; follower applied {applied} entries",
        told.messages.len(),
        told.on_sqlite,
        told.held
    );

    // Every write the writer was told succeeded is in SQLite, once, as written.
    let lite = sqlite_store(&path);
    assert_eq!(
        lite.counts().unwrap().messages,
        seeded + told.messages.len() as i64
    );
    for id in &ids {
        for m in lite.get_session(*id).unwrap().messages {
            if let Some((session, text)) = told.messages.get(&m.id) {
                assert_eq!((*session, text.as_str()), (*id, m.text.as_str()));
            }
        }
    }
    let stored: usize = ids
        .iter()
        .map(|id| {
            lite.get_session(*id)
                .unwrap()
                .messages
                .iter()
                .filter(|m| told.messages.contains_key(&m.id))
                .count()
        })
        .sum();
    assert_eq!(stored, told.messages.len());
    assert_eq!(status(&url).unwrap().state.unwrap().phase, "rolled_back");
}

#[test]
fn a_difference_in_a_row_changed_after_the_switch_refuses_the_switch_back_and_postgres_stays_live()
{
    let ids: Vec<Uuid> = (0..3).map(|_| Uuid::now_v7()).collect();
    let (_dir, path, _db, url) = switched(&ids);
    let pg = Store::open(url.clone(), StoreConfig::default()).unwrap();
    let m = pg
        .append_message(ids[0], Role::User, "written on postgres")
        .unwrap();
    let mut follower = ReverseFollower::open(&path, &url).unwrap();
    // Applied, and past the horizon: the switch's last pass will not write it again.
    eventually("the follower caught up", || {
        follower.step().unwrap();
        follower.pending().unwrap() == 0
    });
    let lite_url = DatabaseUrl::sqlite(path.display().to_string());
    let mut lite = maintenance::connect(&lite_url).unwrap();
    maintenance::write_while_paused(&mut lite, |c| {
        diesel::sql_query(format!(
            "UPDATE messages SET text = 'changed behind the tool''s back' WHERE id = {}",
            m.id
        ))
        .execute(c)?;
        Ok(())
    })
    .unwrap();

    let err = switch(&path, &url, Backend::Sqlite).unwrap_err();
    assert_eq!(err.refusal(), Some(Refusal::Differs), "{err}");
    assert!(err.to_string().contains("1 row(s)"), "{err}");
    assert!(
        err.to_string().contains(&format!("messages {} text", m.id)),
        "{err}"
    );

    // PostgreSQL is live, accepts writes, and the cutover is still in phase switched.
    let st = status(&url).unwrap();
    assert_eq!(st.state.unwrap().phase, "switched");
    assert!(!st.maintenance.paused, "{:?}", st.maintenance);
    assert_eq!(st.maintenance.retired_to, None);
    pg.append_message(ids[1], Role::User, "still on postgres")
        .unwrap();
    // SQLite stayed retired.
    assert!(matches!(
        sqlite_store(&path).start_session(),
        Err(Error::Retired { .. })
    ));
    // Once SQLite's copy is right again, the switch back goes through.
    maintenance::write_while_paused(&mut lite, |c| {
        diesel::sql_query(format!(
            "UPDATE messages SET text = 'written on postgres' WHERE id = {}",
            m.id
        ))
        .execute(c)?;
        Ok(())
    })
    .unwrap();
    let back = switch(&path, &url, Backend::Sqlite).unwrap();
    assert!(back.verify.is_equal(), "{back:#?}");
}

/// A difference planted in a row nobody changed after the switch is outside
/// the bounded verify; the operator's full verify (PostgreSQL paused) finds it.
#[test]
fn with_postgres_paused_by_the_operator_the_switch_back_runs_the_full_verify() {
    let ids: Vec<Uuid> = (0..3).map(|_| Uuid::now_v7()).collect();
    let (_dir, path, _db, url) = switched(&ids);
    let pg = Store::open(url.clone(), StoreConfig::default()).unwrap();
    pg.update_summary(ids[0], "changed on postgres").unwrap();
    let lite_url = DatabaseUrl::sqlite(path.display().to_string());
    let mut lite = maintenance::connect(&lite_url).unwrap();
    maintenance::write_while_paused(&mut lite, |c| {
        diesel::sql_query(format!(
            "UPDATE sessions SET summary = 'planted' WHERE id = '{}'",
            ids[2]
        ))
        .execute(c)?;
        Ok(())
    })
    .unwrap();
    pause(&url);
    let err = switch(&path, &url, Backend::Sqlite).unwrap_err();
    assert_eq!(err.refusal(), Some(Refusal::Differs), "{err}");
    assert!(err.to_string().contains("1 difference"), "{err}");
    // Left paused, as the operator had it, not retired.
    let st = status(&url).unwrap();
    assert!(st.maintenance.paused);
    assert_eq!(st.maintenance.retired_to, None);
    assert_eq!(st.state.unwrap().phase, "switched");
    // The changed session came back with the switch's last pass.
    assert_eq!(
        sqlite_store(&path)
            .get_session(ids[0])
            .unwrap()
            .session
            .summary,
        "changed on postgres"
    );
}

/// A log installed before the transaction id column gets it, and its entries are applied.
#[test]
fn a_log_without_the_transaction_id_column_is_brought_up_to_date() {
    let ids: Vec<Uuid> = (0..2).map(|_| Uuid::now_v7()).collect();
    let (_dir, path, db, url) = switched(&ids);
    let mut raw = PgConnection::establish(&db.url).unwrap();
    raw.batch_execute("ALTER TABLE interview_change_log DROP COLUMN xid")
        .unwrap();
    let pg = Store::open(url.clone(), StoreConfig::default()).unwrap();
    let s = pg.start_session().unwrap();
    pg.append_message(s.id, Role::Assistant, "logged without an xid")
        .unwrap();
    pause(&url);
    let report = rollback_sync(&path, &url).unwrap();
    assert_eq!(report.sessions_inserted, 1, "{report:?}");
    assert_eq!(report.messages, 1, "{report:?}");
    assert_eq!(
        sqlite_store(&path).get_session(s.id).unwrap().messages[0].text,
        "logged without an xid"
    );
}
