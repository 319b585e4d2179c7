//! Rows whatever their key: SQLite allows `INTEGER PRIMARY KEY` values (and
//! rowids) anywhere in `i64`, zero and negative ones included. Every reader
//! (check, copy, sync, verify, compare, the way back) must carry them.

mod common;

use std::path::{Path, PathBuf};

use common::legacy::Legacy;
use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use interview_store::connection::DatabaseUrl;
use interview_store::migrate::{
    check, compare, compare_file, copy, rollback_sync, switch, sync, verify, CopyOptions,
    Selection, SyncOptions,
};
use interview_store::schema::{drafts, messages};
use interview_store::{maintenance, Backend, Role, Store, StoreConfig};
use uuid::Uuid;

/// The ends of the range and its middle: every key a reader might assume away.
const KEYS: [i64; 5] = [i64::MIN, -1, 0, 1, i64::MAX];

fn session_id(n: usize) -> Uuid {
    Uuid::parse_str(&format!("00000000-0000-4000-8000-{:012}", 900 + n)).unwrap()
}

/// SQL writing one session per key (its rowid the key) and one message and
/// one draft per key (their ids the key).
fn rows_at_every_key() -> String {
    let mut sql = String::new();
    for (n, k) in KEYS.iter().enumerate() {
        // `-9223372036854775808` would parse as a real: written as a sum.
        let k = if *k == i64::MIN {
            "(-9223372036854775807 - 1)".to_string()
        } else {
            k.to_string()
        };
        let s = session_id(n);
        sql += &format!(
            "INSERT INTO sessions (rowid, id, created_at, updated_at, summary) \
             VALUES ({k}, '{s}', '2025-01-01T10:00:00Z', '2025-01-01T10:00:0{n}Z', 'at {k}');
             INSERT INTO messages (id, session_id, role, text, created_at) \
             VALUES ({k}, '{s}', 'user', 'message at {k}', '2025-01-01T10:00:00Z');
             INSERT INTO drafts (id, session_id, content, created_at) \
             VALUES ({k}, '{s}', 'draft at {k}', '2025-01-01T10:00:00Z');"
        );
    }
    sql
}

fn pg() -> (common::PgDatabase, DatabaseUrl) {
    let db = common::PgDatabase::create();
    let url: DatabaseUrl = db.url.parse().unwrap();
    (db, url)
}

fn pg_store(url: &DatabaseUrl) -> Store {
    Store::open(url.clone(), StoreConfig::default()).unwrap()
}

fn ids(store: &Store, table: &str) -> Vec<i64> {
    store
        .with_connection(|c| {
            Ok(match table {
                "messages" => messages::table
                    .select(messages::id)
                    .order(messages::id)
                    .load(c)?,
                _ => drafts::table.select(drafts::id).order(drafts::id).load(c)?,
            })
        })
        .unwrap()
}

fn all_sessions() -> Selection {
    Selection::Sessions((0..KEYS.len()).map(session_id).collect())
}

#[test]
fn check_copy_verify_and_compare_carry_every_key() {
    let src = Legacy::new(&rows_at_every_key());
    let report = check(&src.path).unwrap();
    assert_eq!(report.rows, [5, 5, 5], "{report:?}");
    assert!(report.is_clean(), "{:?}", report.rejects);

    let (_db, url) = pg();
    let copied = copy(&src.path, &url, &CopyOptions::default()).unwrap();
    assert_eq!(
        copied.tables.map(|t| (t.copied, t.rejected)),
        [(5, 0); 3],
        "{copied:?}"
    );
    let pg = pg_store(&url);
    assert_eq!(ids(&pg, "messages"), KEYS);
    assert_eq!(ids(&pg, "drafts"), KEYS);

    let v = verify(&src.path, &url).unwrap();
    assert!(v.is_equal(), "{:#?}", v.differences);
    for t in [&v.sessions, &v.messages, &v.drafts] {
        assert_eq!((t.sqlite_rows, t.postgres_rows), (5, 5), "{v:?}");
    }
    let c = compare_file(&src.path, &pg, &all_sessions()).unwrap();
    assert!(c.is_equal(), "{:?}", c.differences);
    assert_eq!((c.sessions, c.messages), (5, 5));

    // The service's next insert on PostgreSQL gets an id: the sequence cannot
    // go past i64::MAX, so it continues below it, after the largest free id.
    let m = pg.append_message(session_id(2), Role::User, "new").unwrap();
    assert_eq!(m.id, 2, "the first free id after 1");
    let d = pg.save_draft(session_id(2), "new").unwrap();
    assert_eq!(d.id, 2);
}

/// A copy stopped after its first batches resumes after the last row it
/// committed, even when that row's key is negative (the cursor is not a
/// number that could stand for "nothing yet").
#[test]
fn a_resumed_copy_goes_on_after_a_negative_key() {
    let src = Legacy::new(&rows_at_every_key());
    let (_db, url) = pg();
    let first = CopyOptions {
        batch_size: 1,
        fail_after_batches: Some(7), // sessions done, messages at MIN and -1
        ..Default::default()
    };
    copy(&src.path, &url, &first).unwrap_err();
    let st = interview_store::migrate::status(&url).unwrap();
    let messages = st.tables.iter().find(|p| p.table_name == "messages");
    assert_eq!(
        messages.and_then(|p| p.last_source_rowid),
        Some(-1),
        "{st:?}"
    );
    let drafts = st.tables.iter().find(|p| p.table_name == "drafts");
    assert_eq!(drafts.and_then(|p| p.last_source_rowid), None, "{st:?}");

    let done = copy(&src.path, &url, &CopyOptions::default()).unwrap();
    assert!(done.resumed);
    assert_eq!(done.tables.map(|t| t.copied), [5, 5, 5], "{done:?}");
    let pg = pg_store(&url);
    assert_eq!(ids(&pg, "messages"), KEYS);
    assert_eq!(ids(&pg, "drafts"), KEYS);
    assert!(verify(&src.path, &url).unwrap().is_equal());
}

#[test]
fn verify_reports_a_row_missing_on_postgres_whatever_its_key() {
    let src = Legacy::new(&rows_at_every_key());
    let (_db, url) = pg();
    copy(&src.path, &url, &CopyOptions::default()).unwrap();
    let pg = pg_store(&url);
    let exec = |sql: &str| pg.with_connection(|c| Ok(c.batch_execute(sql)?)).unwrap();
    for (table, k) in [
        ("messages", i64::MIN),
        ("messages", 0),
        ("drafts", -1),
        ("drafts", i64::MAX),
    ] {
        exec(&format!(
            "CREATE TABLE kept AS SELECT * FROM {table} WHERE id = {k}; \
             DELETE FROM {table} WHERE id = {k}"
        ));
        let v = verify(&src.path, &url).unwrap();
        assert!(!v.is_equal(), "{table} {k} missing, yet EQUAL");
        assert!(
            v.differences
                .iter()
                .any(|d| d.table.as_str() == table && d.id == k.to_string()),
            "{table} {k} not named: {:?}",
            v.differences
        );
        // The counts alone tell it too, per table.
        let counted = v
            .differences
            .iter()
            .find(|d| d.table.as_str() == table && d.id == "count(*)")
            .unwrap_or_else(|| panic!("no count(*) difference: {:?}", v.differences));
        assert!(
            counted.detail.contains("sqlite 5 (0 invalid), postgres 4"),
            "{counted}"
        );
        exec(&format!(
            "INSERT INTO {table} SELECT * FROM kept; DROP TABLE kept"
        ));
        assert!(verify(&src.path, &url).unwrap().is_equal());
    }
}

fn pause(url: &DatabaseUrl) {
    maintenance::pause(&mut maintenance::connect(url).unwrap()).unwrap();
}

fn lite_sql(path: &Path, sql: &str) {
    SqliteConnection::establish(path.to_str().unwrap())
        .unwrap()
        .batch_execute(sql)
        .unwrap();
}

/// The service's own file (migrated by the store) with rows at every key
/// written after the copy: sync carries them, the switch's verify and
/// compare see them, and rows written at those keys on PostgreSQL come back.
#[test]
fn sync_and_the_way_back_carry_every_key() {
    let dir = tempfile::tempdir().unwrap();
    let path: PathBuf = dir.path().join("interview.db");
    let lite = Store::connect(path.to_str().unwrap(), StoreConfig::default()).unwrap();
    lite.migrate().unwrap();
    let seeded = Uuid::now_v7();
    common::seed_identical(&lite, &[seeded]);
    let (_db, url) = pg();
    copy(&path, &url, &CopyOptions::default()).unwrap();

    // Written after the copy, at every key; the seeded rows at 1 make way.
    lite_sql(
        &path,
        &format!(
            "DELETE FROM drafts WHERE id = 1; DELETE FROM messages WHERE id = 1; \
             UPDATE sessions SET rowid = 2 WHERE rowid = 1; {}",
            rows_at_every_key()
        ),
    );
    let s = sync(&path, &url, &SyncOptions::default()).unwrap();
    assert_eq!(
        (s.sessions_inserted, s.messages, s.drafts),
        (5, 5, 5),
        "{s:?}"
    );
    let pg = pg_store(&url);
    assert_eq!(ids(&pg, "messages"), [i64::MIN, -1, 0, 1, 2, 3, i64::MAX]);
    assert_eq!(ids(&pg, "drafts"), KEYS);
    let v = verify(&path, &url).unwrap();
    assert!(v.is_equal(), "{:#?}", v.differences);
    assert_eq!((v.messages.sqlite_rows, v.messages.postgres_rows), (7, 7));
    let c = compare_file(&path, &pg, &all_sessions()).unwrap();
    assert!(c.is_equal(), "{:?}", c.differences);

    // The switch verifies in full, over the whole range.
    pause(&DatabaseUrl::sqlite(path.display().to_string()));
    sync(&path, &url, &SyncOptions::default()).unwrap();
    switch(&path, &url, Backend::Postgres).unwrap();

    // On PostgreSQL: rows changed, removed and written again at the ends of the range.
    let exec = |sql: &str| pg.with_connection(|c| Ok(c.batch_execute(sql)?)).unwrap();
    exec(&format!(
        "UPDATE messages SET text = 'changed on postgres' WHERE id = {min};
         DELETE FROM drafts WHERE id IN ({max}, 0);
         INSERT INTO drafts (id, session_id, content, created_at) \
         VALUES ({max}, '{s}', 'again at the top', now());
         UPDATE sessions SET summary = 'changed at rowid -1' WHERE id = '{s1}';",
        min = i64::MIN,
        max = i64::MAX,
        s = session_id(4),
        s1 = session_id(1),
    ));
    let new = pg
        .append_message(session_id(0), Role::User, "new on postgres")
        .unwrap();
    pause(&url);
    let r = rollback_sync(&path, &url).unwrap();
    assert_eq!((r.messages, r.drafts, r.drafts_deleted), (2, 1, 1), "{r:?}");
    let lite = Store::connect(path.to_str().unwrap(), StoreConfig::default()).unwrap();
    assert_eq!(lite.counts().unwrap(), pg.counts().unwrap());
    let mut want: Vec<i64> = vec![i64::MIN, -1, 0, 1, 2, 3, new.id, i64::MAX];
    want.sort();
    want.dedup();
    assert_eq!(ids(&lite, "messages"), want);
    assert_eq!(ids(&lite, "drafts"), [i64::MIN, -1, 1, i64::MAX]);
    let mut everyone: Vec<Uuid> = (0..KEYS.len()).map(session_id).collect();
    everyone.push(seeded);
    let c = compare(&pg, &lite, &Selection::Sessions(everyone)).unwrap();
    assert!(c.is_equal(), "{:?}", c.differences);
    assert_eq!(c.sessions, 6);

    // The switch back verifies SQLite against PostgreSQL in full, then SQLite is live.
    let back = switch(&path, &url, Backend::Sqlite).unwrap();
    assert!(back.verify.is_equal(), "{:#?}", back.verify.differences);
    assert_eq!(back.live, Backend::Sqlite);
    let m = lite.get_session(session_id(0)).unwrap();
    assert!(m.messages.iter().any(|m| m.text == "changed on postgres"));
}
