//! The cutover's safety tools: a live backup, and the dual-read compare.

mod common;

use diesel::prelude::*;
use interview_store::migrate::{backup, compare, Selection};
use interview_store::schema::{drafts, messages, sessions};
use interview_store::types::DbUuid;
use interview_store::{Backend, Error, Role, Store};

#[test]
fn backup_of_a_live_database_is_consistent_and_never_overwrites() {
    let db = common::TestDb::new(Backend::Sqlite);
    let store = db.store();
    let path = db.url.trim_start_matches("sqlite://").to_string();
    let s = store.start_session().unwrap();
    for i in 0..200 {
        store
            .append_message(s.id, Role::User, &format!("before {i}"))
            .unwrap();
    }
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (store, stop) = (store.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                store
                    .append_message(s.id, Role::Assistant, "during the backup")
                    .unwrap();
                n += 1;
            }
            n
        })
    };
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("backup.db");
    let report = backup(std::path::Path::new(&path), &out).unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let written_during = writer.join().unwrap();

    assert_eq!(report.counts.sessions, 1);
    assert!(report.counts.messages >= 200, "{report:?}");
    assert!(
        report.counts.messages <= 200 + written_during as i64,
        "{report:?}"
    );
    // The backup is a working database of its own.
    let copy = Store::connect(out.to_str().unwrap(), Default::default()).unwrap();
    let read = copy.get_session(s.id).unwrap();
    assert_eq!(read.messages.len() as i64, report.counts.messages);
    assert_eq!(read.messages[199].text, "before 199");

    let err = backup(std::path::Path::new(&path), &out).unwrap_err();
    assert!(matches!(err, Error::InvalidInput { .. }), "{err}");
    assert!(err.to_string().contains("already exists"), "{err}");
}

#[test]
fn a_backup_is_private_to_its_owner_and_needs_an_existing_source() {
    let db = common::TestDb::new(Backend::Sqlite);
    let store = db.store();
    store.start_session().unwrap();
    let path = db.url.trim_start_matches("sqlite://").to_string();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("backup.db");
    backup(std::path::Path::new(&path), &out).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&out).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "backup mode {mode:o}");
    }

    let missing = dir.path().join("missing.db");
    let err = backup(&missing, &dir.path().join("other.db")).unwrap_err();
    assert!(matches!(err, Error::NoSuchFile { .. }), "{err}");
    assert!(!missing.exists() && !dir.path().join("other.db").exists());
}

#[test]
fn compare_finds_equal_sides_equal_and_names_each_difference() {
    let lite = common::TestDb::new(Backend::Sqlite);
    let pg = common::TestDb::new(Backend::Postgres);
    let (left, right) = (lite.store(), pg.store());
    let ids: Vec<uuid::Uuid> = (0..5).map(|_| uuid::Uuid::now_v7()).collect();
    common::seed_identical(&left, &ids);
    common::seed_identical(&right, &ids);

    let report = compare(&left, &right, &Selection::Sample(100)).unwrap();
    assert!(report.is_equal(), "{:?}", report.differences);
    assert_eq!((report.sessions, report.messages), (5, 15));

    // One changed character in one message, and a session missing on one side.
    right
        .with_connection(|conn| {
            diesel::update(messages::table.find(12_i64))
                .set(messages::text.eq("message 1 — «ok!»"))
                .execute(conn)?;
            diesel::delete(drafts::table.filter(drafts::session_id.eq(DbUuid(ids[4]))))
                .execute(conn)?;
            diesel::delete(messages::table.filter(messages::session_id.eq(DbUuid(ids[4]))))
                .execute(conn)?;
            diesel::delete(sessions::table.find(DbUuid(ids[4]))).execute(conn)?;
            Ok(())
        })
        .unwrap();
    let report = compare(&left, &right, &Selection::Sessions(ids.clone())).unwrap();
    let found: Vec<(uuid::Uuid, &str)> = report
        .differences
        .iter()
        .map(|d| (d.session, d.what.as_str()))
        .collect();
    assert_eq!(
        found,
        vec![(ids[1], "message 12 text"), (ids[4], "missing on postgres")]
    );
}
