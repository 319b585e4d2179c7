//! rollback-sync: writes made on PostgreSQL after the switch come back to SQLite, from PostgreSQL's change log.

mod common;

use std::path::PathBuf;

use diesel::prelude::*;
use interview_store::connection::DatabaseUrl;
use interview_store::migrate::{
    compare, copy, rollback_sync, switch, sync, CopyOptions, Selection, SyncOptions,
};
use interview_store::{maintenance, Backend, Page, Role, Store, StoreConfig};

fn pause(url: &DatabaseUrl) {
    maintenance::pause(&mut maintenance::connect(url).unwrap()).unwrap();
}

/// A SQLite service's file copied and switched to PostgreSQL.
fn switched(ids: &[uuid::Uuid]) -> (tempfile::TempDir, PathBuf, common::PgDatabase, DatabaseUrl) {
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

#[test]
fn writes_after_the_switch_come_back_and_nothing_twice() {
    let ids: Vec<uuid::Uuid> = (0..4).map(|_| uuid::Uuid::now_v7()).collect();
    let (_dir, path, _db, url) = switched(&ids);
    let pg = Store::open(url.clone(), StoreConfig::default()).unwrap();

    // After the switch the service writes to PostgreSQL only.
    let new = pg.start_session().unwrap();
    pg.append_message(
        new.id,
        Role::Assistant,
        "Welcome back — «quotes», 'apostrophes'\nand lines",
    )
    .unwrap();
    pg.append_message(ids[0], Role::User, "an answer to an old session")
        .unwrap();
    pg.update_summary(ids[1], "changed after the switch")
        .unwrap();
    pg.save_draft(ids[2], "a draft written on postgres")
        .unwrap();
    pg.save_draft(new.id, "another").unwrap();

    pause(&url);
    let report = rollback_sync(&path, &url).unwrap();
    // ids[0] (its message bumps updated_at) and ids[1] changed; the new session came.
    assert_eq!(
        (
            report.sessions_inserted,
            report.sessions_updated,
            report.messages,
            report.drafts
        ),
        (1, 2, 2, 2),
        "{report:?}"
    );
    let lite = Store::connect(path.to_str().unwrap(), StoreConfig::default()).unwrap();
    assert_eq!(lite.counts().unwrap(), pg.counts().unwrap());
    let everything: Vec<uuid::Uuid> = pg
        .list_sessions(Page {
            offset: 0,
            limit: 100,
        })
        .unwrap()
        .iter()
        .map(|s| s.id)
        .collect();
    let diff = compare(&pg, &lite, &Selection::Sessions(everything.clone())).unwrap();
    assert!(diff.is_equal(), "{:?}", diff.differences);
    assert_eq!(diff.sessions, 5);

    // Running it again stores nothing twice (entries of transactions at the
    // horizon may be read again, their rows written again unchanged), and
    // SQLite takes new writes once live again.
    let again = rollback_sync(&path, &url).unwrap();
    assert!(again.entries <= report.entries, "{again:?}");
    assert_eq!(again.sessions_inserted, 0, "{again:?}");
    assert_eq!(lite.counts().unwrap(), pg.counts().unwrap());
    let diff = compare(&pg, &lite, &Selection::Sessions(everything)).unwrap();
    assert!(diff.is_equal(), "{:?}", diff.differences);
    switch(&path, &url, Backend::Sqlite).unwrap();
    let lite = Store::connect(path.to_str().unwrap(), StoreConfig::default()).unwrap();
    let m = lite
        .append_message(new.id, Role::User, "back on sqlite")
        .unwrap();
    let max_pg: i64 = pg
        .with_connection(|c| {
            Ok(interview_store::schema::messages::table
                .select(diesel::dsl::max(interview_store::schema::messages::id))
                .first::<Option<i64>>(c)?
                .unwrap_or(0))
        })
        .unwrap();
    assert!(m.id > max_pg, "SQLite's ids continue after the copied ones");
}

#[test]
fn refuses_before_any_switch() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("interview.db");
    let lite = Store::connect(path.to_str().unwrap(), StoreConfig::default()).unwrap();
    lite.migrate().unwrap();
    let db = common::PgDatabase::create();
    let url: DatabaseUrl = db.url.parse().unwrap();
    let err = rollback_sync(&path, &url).unwrap_err();
    assert!(err.to_string().contains("nothing to roll back"), "{err}");
    copy(&path, &url, &CopyOptions::default()).unwrap();
    let err = rollback_sync(&path, &url).unwrap_err();
    assert!(err.to_string().contains("phase copied"), "{err}");
}

/// Without a pause, rollback-sync applies what PostgreSQL's transactions
/// committed; a transaction still open is left for a later run, not lost.
#[test]
fn without_a_pause_committed_writes_come_back_and_an_open_transaction_waits() {
    use diesel::connection::SimpleConnection;
    let ids: Vec<uuid::Uuid> = (0..2).map(|_| uuid::Uuid::now_v7()).collect();
    let (_dir, path, db, url) = switched(&ids);
    let pg = Store::open(url.clone(), StoreConfig::default()).unwrap();
    let done = pg.append_message(ids[0], Role::User, "committed").unwrap();
    let mut open = PgConnection::establish(&db.url).unwrap();
    let late = uuid::Uuid::now_v7();
    open.batch_execute(&format!(
        "BEGIN; INSERT INTO sessions (id, created_at, updated_at, summary) VALUES ('{late}', now(), now(), 'late')"
    ))
    .unwrap();
    let lite = Store::connect(path.to_str().unwrap(), StoreConfig::default()).unwrap();
    let has = |id: i64| {
        lite.get_session(ids[0])
            .unwrap()
            .messages
            .iter()
            .any(|m| m.id == id)
    };
    // Another test's transaction on the cluster may hold the horizon back for a moment.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !has(done.id) {
        assert!(std::time::Instant::now() < deadline, "never applied");
        rollback_sync(&path, &url).unwrap();
    }
    assert!(lite.get_session(late).is_err(), "not committed yet");
    open.batch_execute("COMMIT").unwrap();
    pause(&url);
    rollback_sync(&path, &url).unwrap();
    assert_eq!(lite.get_session(late).unwrap().session.summary, "late");
}
