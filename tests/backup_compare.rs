//! The cutover's safety tools: a live backup, and the dual-read compare.

mod common;

use common::legacy::{clean_sql, Legacy};
use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use interview_store::connection::DatabaseUrl;
use interview_store::migrate::{self, backup, compare, compare_file, copy, CopyOptions, Selection};
use interview_store::schema::{drafts, messages, sessions};
use interview_store::types::DbUuid;
use interview_store::{Backend, Error, Role, Store, StoreConfig};

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

fn indexes_on(path: &std::path::Path, table: &str) -> i64 {
    #[derive(QueryableByName)]
    struct N {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    let mut conn = SqliteConnection::establish(path.to_str().unwrap()).unwrap();
    diesel::sql_query(format!(
        "SELECT count(*) AS n FROM sqlite_master WHERE type = 'index' AND tbl_name = '{table}'"
    ))
    .get_result::<N>(&mut conn)
    .unwrap()
    .n
}

#[test]
fn compare_on_a_legacy_file_without_its_index_reads_what_the_store_reads() {
    // As the old service left it: no index on messages(session_id) or drafts(session_id).
    let src = Legacy::new(&clean_sql(30, 4));
    // A row the store cannot decode: that session's read fails on the SQLite side.
    src.exec("UPDATE messages SET role = 'robot' WHERE id = 7");
    let db = common::PgDatabase::create();
    let url: DatabaseUrl = db.url.parse().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let lenient = CopyOptions {
        reject_file: Some(dir.path().join("rejects.jsonl")),
        ..Default::default()
    };
    copy(&src.path, &url, &lenient).unwrap();
    let pg = Store::open(url.clone(), StoreConfig::default()).unwrap();
    let id = |s: usize| uuid::Uuid::parse_str(&format!("00000000-0000-4000-8000-{s:012}")).unwrap();
    let mut conn = PgConnection::establish(url.connection_string()).unwrap();
    let (s20, s29, only_pg) = (id(20), id(29), uuid::Uuid::max());
    conn.batch_execute(&format!(
        "UPDATE messages SET text = 'changed' WHERE id = 50;
         UPDATE drafts SET content = 'changed' WHERE session_id = '{s20}';
         DELETE FROM messages WHERE session_id = '{s29}'; DELETE FROM drafts WHERE session_id = '{s29}';
         DELETE FROM sessions WHERE id = '{s29}';
         INSERT INTO sessions VALUES ('{only_pg}', now(), now(), '');"
    ))
    .unwrap();
    assert_eq!(indexes_on(&src.path, "messages"), 0);

    let mut picked: Vec<uuid::Uuid> = (0..30).map(id).collect();
    picked.push(only_pg);
    let report = compare_file(&src.path, &pg, &Selection::Sessions(picked.clone())).unwrap();
    let found: Vec<(uuid::Uuid, String)> = report
        .differences
        .iter()
        .map(|d| (d.session, d.what.clone()))
        .collect();
    assert_eq!(found.len(), 5, "{found:#?}");
    assert!(
        found[0].0 == id(1) && found[0].1.starts_with("unreadable on sqlite"),
        "{found:#?}"
    );
    assert!(found[0].1.contains("messages row 7"), "{found:#?}");
    assert_eq!(found[1], (id(12), "message 50 text".to_string()));
    assert_eq!(found[2], (id(20), "latest draft 21 vs 21".to_string()));
    assert_eq!(found[3], (id(29), "missing on postgres".to_string()));
    assert_eq!(found[4], (only_pg, "missing on sqlite".to_string()));
    assert_eq!((report.sessions, report.messages), (28, 28 * 4));
    // Reading did not touch the file: still no index.
    assert_eq!(indexes_on(&src.path, "messages"), 0);

    // setup --sqlite makes the indexes once (under the store's names: the plain one and
    // the one on the UUID key per child table); the same answer then comes through them
    // instead of a scan.
    assert!(migrate::index_source(&src.path).unwrap());
    assert!(!migrate::index_source(&src.path).unwrap(), "made once");
    assert_eq!(
        (
            indexes_on(&src.path, "messages"),
            indexes_on(&src.path, "drafts")
        ),
        (2, 2)
    );
    let through_index = compare_file(&src.path, &pg, &Selection::Sessions(picked.clone())).unwrap();
    assert_eq!(through_index, report);
    #[derive(QueryableByName)]
    struct Plan {
        #[diesel(sql_type = diesel::sql_types::Text)]
        detail: String,
    }
    let plan: Vec<String> = diesel::sql_query(
        "EXPLAIN QUERY PLAN SELECT id, role, text FROM messages WHERE session_id IN (?, ?) ORDER BY id",
    )
    .bind::<diesel::sql_types::Text, _>(id(1).to_string())
    .bind::<diesel::sql_types::Text, _>(id(2).to_string())
    .load::<Plan>(&mut SqliteConnection::establish(src.path.to_str().unwrap()).unwrap())
    .unwrap()
    .into_iter()
    .map(|p| p.detail)
    .collect();
    assert!(
        plan.iter()
            .any(|d| d.contains("messages_session_id_id_idx")),
        "{plan:?}"
    );

    // The store, one session at a time, finds exactly the same.
    let lite = Store::connect(src.path.to_str().unwrap(), StoreConfig::default()).unwrap();
    let by_store = compare(&lite, &pg, &Selection::Sessions(picked)).unwrap();
    assert_eq!(report, by_store);

    let sampled = compare_file(&src.path, &pg, &Selection::Sample(1000)).unwrap();
    assert_eq!(sampled.differences.len(), 4, "{:#?}", sampled.differences);
    assert_eq!(sampled.sessions, 28);
}
