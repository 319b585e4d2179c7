//! The cutover's guarantees held by the databases: change logs instead of clocks, phases no
//! command can skip, one migration command at a time.

mod common;

use common::legacy::{clean_sql, Legacy};

use std::sync::{Arc, Mutex};

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Text};
use interview_store::connection::DatabaseUrl;
use interview_store::migrate::{
    self, change_log_entries, copy, rollback_sync, switch, sync, verify, CopyOptions,
    MigrationLock, SyncOptions,
};
use interview_store::{maintenance, Backend, Category, Error, Role, Store, StoreConfig};

fn pg() -> (common::PgDatabase, DatabaseUrl) {
    let db = common::PgDatabase::create();
    let url: DatabaseUrl = db.url.parse().unwrap();
    (db, url)
}

fn pg_conn(url: &DatabaseUrl) -> PgConnection {
    PgConnection::establish(url.connection_string()).unwrap()
}

fn pg_store(url: &DatabaseUrl) -> Store {
    Store::open(url.clone(), StoreConfig::default()).unwrap()
}

#[derive(QueryableByName, Debug, PartialEq, Eq, Clone)]
struct Row {
    #[diesel(sql_type = Text)]
    id: String,
    #[diesel(sql_type = Text)]
    updated_at: String,
    #[diesel(sql_type = Text)]
    summary: String,
}

/// Every PostgreSQL session as text, in id order.
fn pg_sessions(url: &DatabaseUrl) -> Vec<Row> {
    diesel::sql_query(
        "SELECT id::text AS id, to_char(updated_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') AS updated_at, summary \
         FROM sessions ORDER BY id",
    )
    .load(&mut pg_conn(url))
    .unwrap()
}

#[derive(QueryableByName)]
struct N {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

fn pg_count(url: &DatabaseUrl, sql: &str) -> i64 {
    diesel::sql_query(sql)
        .get_result::<N>(&mut pg_conn(url))
        .unwrap()
        .n
}

fn pause_sqlite(path: &std::path::Path) {
    let url = DatabaseUrl::sqlite(path.display().to_string());
    maintenance::pause(&mut maintenance::connect(&url).unwrap()).unwrap();
}

fn pause_pg(url: &DatabaseUrl) {
    maintenance::pause(&mut maintenance::connect(url).unwrap()).unwrap();
}

fn assert_equal(src: &Legacy, url: &DatabaseUrl) {
    let v = verify(&src.path, url).unwrap();
    assert!(v.is_equal(), "{v:#?}");
}

/// The reproduction: a session written on PostgreSQL is never
/// overwritten by SQLite's older row, whatever runs after.
#[test]
fn a_sync_never_overwrites_a_row_sqlite_did_not_change() {
    let src = Legacy::new(&clean_sql(4, 2));
    let (_db, url) = pg();
    copy(&src.path, &url, &CopyOptions::default()).unwrap();
    pg_conn(&url)
        .batch_execute(
            "UPDATE sessions SET summary = 'x', updated_at = now() \
             WHERE id = (SELECT id FROM sessions ORDER BY updated_at DESC, id DESC LIMIT 1)",
        )
        .unwrap();
    let before = pg_sessions(&url);
    let report = sync(&src.path, &url, &SyncOptions::default()).unwrap();
    assert_eq!(report.entries, 0, "{report:?}");
    assert_eq!(pg_sessions(&url), before, "PostgreSQL's write survives");
}

/// A legacy writer on the file: raw SQL, a summary edited without touching
/// `updated_at`, an `updated_at` moved into the past, a session deleted with
/// its children, a new session stamped by a clock years behind.
#[test]
fn a_legacy_writer_without_clock_discipline_is_carried_over() {
    let src = Legacy::new(&clean_sql(5, 3));
    let (_db, url) = pg();
    copy(&src.path, &url, &CopyOptions::default()).unwrap();
    assert_eq!(change_log_entries(&src.path).unwrap(), Some(0));
    // An update that changes no value (the store's row lock) is not a change.
    src.exec("UPDATE sessions SET updated_at = updated_at");
    assert_eq!(change_log_entries(&src.path).unwrap(), Some(0));
    let s = |n: usize| format!("00000000-0000-4000-8000-{n:012}");
    src.exec(&format!(
        "UPDATE sessions SET summary = 'edited, updated_at untouched' WHERE id = '{}';
         UPDATE sessions SET updated_at = '2001-01-01T00:00:00Z' WHERE id = '{}';
         DELETE FROM messages WHERE session_id = '{2}';
         DELETE FROM drafts WHERE session_id = '{2}';
         DELETE FROM sessions WHERE id = '{2}';
         UPDATE messages SET text = 'rewritten' WHERE id = 1;
         DELETE FROM messages WHERE id = 2;
         INSERT INTO sessions VALUES ('{3}', '1999-12-31 23:00:00', '1999-12-31 23:00:00', 'skewed clock');
         INSERT INTO messages (session_id, role, text, created_at) VALUES ('{3}', 'user', 'from the past', '1999-12-31 23:00:01');",
        s(0),
        s(1),
        s(2),
        "0190a5f0-0000-7000-8000-00000000beef"
    ));
    assert_eq!(change_log_entries(&src.path).unwrap(), Some(11));
    let report = sync(&src.path, &url, &SyncOptions::default()).unwrap();
    assert_eq!(
        (
            report.sessions_inserted,
            report.sessions_updated,
            report.sessions_deleted
        ),
        (1, 2, 1),
        "{report:?}"
    );
    assert_eq!(report.messages, 2, "one rewritten, one new: {report:?}");
    assert_eq!(report.messages_deleted, 4, "{report:?}");
    assert_eq!(report.drafts_deleted, 1, "{report:?}");
    assert_equal(&src, &url);
    let rows = pg_sessions(&url);
    let by_id = |id: &str| rows.iter().find(|r| r.id == id).cloned();
    assert_eq!(
        by_id(&s(0)).unwrap().summary,
        "edited, updated_at untouched"
    );
    assert_eq!(
        by_id(&s(1)).unwrap().updated_at,
        "2001-01-01 00:00:00.000000"
    );
    assert!(by_id(&s(2)).is_none());
    // Applied entries are trimmed; a second sync finds nothing.
    assert_eq!(change_log_entries(&src.path).unwrap(), Some(0));
    let again = sync(&src.path, &url, &SyncOptions::default()).unwrap();
    assert_eq!(again.entries, 0);
}

#[test]
fn a_second_migration_command_while_one_runs_is_refused_and_changes_nothing() {
    let src = Legacy::new(&clean_sql(6, 4));
    let (_db, url) = pg();
    pg_store(&url).migrate().unwrap();
    // Another sync holding the lock: refused at once, category unavailable.
    let held = MigrationLock::acquire(&url).unwrap();
    let err = copy(&src.path, &url, &CopyOptions::default()).unwrap_err();
    assert!(matches!(err, Error::Busy(_)), "{err:?}");
    assert_eq!(err.category(), Category::Unavailable);
    assert!(err
        .to_string()
        .contains("another migration command is running"));
    assert_eq!(pg_count(&url, "SELECT count(*) AS n FROM sessions"), 0);
    drop(held);

    // A copy in progress: sync, copy --truncate --yes and rollback-sync are refused meanwhile.
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let (path, u, s) = (src.path.clone(), url.clone(), seen.clone());
    let opts = CopyOptions {
        batch_size: 5,
        progress: Some(Arc::new(move |_p: &migrate::Progress| {
            let mut seen = s.lock().unwrap();
            if !seen.is_empty() {
                return;
            }
            let truncate = CopyOptions {
                truncate: true,
                confirmed: true,
                ..Default::default()
            };
            for err in [
                sync(&path, &u, &SyncOptions::default()).map(|_| ()),
                copy(&path, &u, &truncate).map(|_| ()),
                rollback_sync(&path, &u).map(|_| ()),
            ] {
                seen.push(format!("{err:?}"));
            }
        })),
        ..Default::default()
    };
    copy(&src.path, &url, &opts).unwrap();
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 3);
    for s in seen.iter() {
        assert!(
            s.contains("Busy") && s.contains("another migration command"),
            "{s}"
        );
    }
    assert_equal(&src, &url);
}

#[test]
fn copy_truncate_checks_first_and_deletes_nothing_without_yes() {
    let src = Legacy::new(&clean_sql(3, 2));
    let (_db, url) = pg();
    copy(&src.path, &url, &CopyOptions::default()).unwrap();
    let truncate = CopyOptions {
        truncate: true,
        ..Default::default()
    };
    // An unreadable source is found before anything is deleted.
    let missing = src.path.with_file_name("missing.db");
    let err = copy(&missing, &url, &truncate).unwrap_err();
    assert!(matches!(err, Error::NoSuchFile { .. }), "{err:?}");
    let err = copy(&src.path, &url, &truncate).unwrap_err();
    assert_eq!(err.category(), Category::Input);
    assert!(
        err.to_string()
            .contains("sessions 3 rows, messages 6 rows, drafts 3 rows"),
        "{err}"
    );
    assert_eq!(pg_count(&url, "SELECT count(*) AS n FROM sessions"), 3);
    assert_equal(&src, &url);
}

/// The whole way there and back on one file: switch refuses until paused,
/// caught up and equal; afterwards sync and copy refuse and change nothing;
/// rollback-sync carries PostgreSQL's inserts, updates and deletes back.
#[test]
fn phases_no_command_can_skip() {
    let src = Legacy::new(&clean_sql(4, 2));
    let (_db, url) = pg();
    copy(&src.path, &url, &CopyOptions::default()).unwrap();
    let lite = src.store();
    let late = lite.start_session().unwrap();
    lite.append_message(late.id, Role::User, "written after the copy")
        .unwrap();

    // Not paused: refused.
    let err = switch(&src.path, &url, Backend::Postgres).unwrap_err();
    assert!(err.to_string().contains("not paused"), "{err}");
    pause_sqlite(&src.path);
    // Paused but not caught up: refused.
    let err = switch(&src.path, &url, Backend::Postgres).unwrap_err();
    assert!(
        err.to_string().contains("run `migrate sync` first"),
        "{err}"
    );
    sync(&src.path, &url, &SyncOptions::default()).unwrap();
    let report = switch(&src.path, &url, Backend::Postgres).unwrap();
    assert_eq!(report.live, Backend::Postgres);

    // The retired file reads, and refuses every write naming where the data went.
    let retired = src.store();
    assert_eq!(retired.get_session(late.id).unwrap().messages.len(), 1);
    match retired.start_session() {
        Err(Error::Retired { moved_to }) => assert_eq!(moved_to, url.masked()),
        other => panic!("{other:?}"),
    }

    // The service writes on PostgreSQL.
    let pgs = pg_store(&url);
    let fresh = pgs.start_session().unwrap();
    pgs.append_message(fresh.id, Role::Assistant, "on postgres — «é»")
        .unwrap();
    pgs.update_summary(late.id, "changed on postgres").unwrap();
    pgs.save_draft(fresh.id, "a draft").unwrap();
    let doomed = pgs.start_session().unwrap();
    pgs.append_message(doomed.id, Role::User, "soon gone")
        .unwrap();
    pg_conn(&url)
        .batch_execute(&format!(
            "DELETE FROM messages WHERE session_id = '{0}'; DELETE FROM sessions WHERE id = '{0}';
             DELETE FROM messages WHERE id = 1",
            doomed.id
        ))
        .unwrap();

    // After the switch: sync and copy refuse, exit category input, nothing changed.
    let before = pg_sessions(&url);
    let err = sync(&src.path, &url, &SyncOptions::default()).unwrap_err();
    assert_eq!(err.category(), Category::Input);
    assert!(err.to_string().contains("rollback-sync"), "{err}");
    for truncate in [false, true] {
        let opts = CopyOptions {
            truncate,
            confirmed: true,
            ..Default::default()
        };
        let err = copy(&src.path, &url, &opts).unwrap_err();
        assert_eq!(err.category(), Category::Input, "{err}");
    }
    assert_eq!(pg_sessions(&url), before, "PostgreSQL untouched");

    // The way back, paused here so that one rollback-sync applies everything
    // (unpaused it may leave a transaction still in flight for the next run).
    pause_pg(&url);
    let back = rollback_sync(&src.path, &url).unwrap();
    assert_eq!(
        (back.sessions_inserted, back.sessions_updated),
        (1, 1),
        "{back:?}"
    );
    assert_eq!(back.messages, 1, "{back:?}");
    assert_eq!(back.messages_deleted, 1, "{back:?}");
    assert_eq!(back.drafts, 1, "{back:?}");
    // Again: entries of transactions at the horizon may be read again, and
    // their rows written again unchanged; nothing is stored twice.
    let again = rollback_sync(&src.path, &url).unwrap();
    assert!(again.entries <= back.entries, "{again:?}");
    assert_eq!(again.sessions_inserted, 0, "{again:?}");
    let report = switch(&src.path, &url, Backend::Sqlite).unwrap();
    assert_eq!(report.live, Backend::Sqlite);
    assert_equal(&src, &url);
    assert_eq!(change_log_entries(&src.path).unwrap(), None, "log removed");
    let lite = src.store();
    assert_eq!(
        lite.get_session(late.id).unwrap().session.summary,
        "changed on postgres"
    );
    assert!(lite.get_session(doomed.id).is_err());
    // Back on SQLite, sync refuses too: a new cutover starts with copy --truncate --yes.
    let err = sync(&src.path, &url, &SyncOptions::default()).unwrap_err();
    assert!(err.to_string().contains("--truncate --yes"), "{err}");
    let again = CopyOptions {
        truncate: true,
        confirmed: true,
        ..Default::default()
    };
    copy(&src.path, &url, &again).unwrap();
    lite.append_message(late.id, Role::User, "a second attempt")
        .unwrap();
    sync(&src.path, &url, &SyncOptions::default()).unwrap();
    assert_equal(&src, &url);
}

/// A finished key written through the store on the SQLite file.
fn answer_under_key(store: &Store, key: &str) {
    let policy = interview_store::KeyPolicy::default();
    let interview_store::Claim::Run(ticket) = store
        .claim_idempotency_key("start", key, "hash", policy)
        .unwrap()
    else {
        panic!("the key {key} is new");
    };
    store
        .start_session_once(&ticket, Role::Assistant, "Hello", |_| {
            interview_store::Recorded {
                status: 201,
                body: format!("{{\"key\":\"{key}\"}}"),
            }
        })
        .unwrap();
}

/// A key pruned on SQLite after the copy is deleted on PostgreSQL by sync; a key
/// answered after the copy arrives; a claim still running never travels.
#[test]
fn sync_carries_idempotency_keys_and_their_pruning() {
    let src = Legacy::new(&clean_sql(2, 1));
    let store = src.store();
    answer_under_key(&store, "old");
    // Old before the copy, so that only the prune's delete names it afterwards.
    src.exec(
        "UPDATE idempotency_keys SET created_at = '2000-01-01T00:00:00.000000Z' WHERE key = 'old'",
    );
    let (_db, url) = pg();
    let copied = copy(&src.path, &url, &CopyOptions::default()).unwrap();
    assert_eq!(copied.idempotency_keys, 1);
    let keys = "SELECT count(*) AS n FROM idempotency_keys";
    assert_eq!(pg_count(&url, keys), 1);

    answer_under_key(&store, "new");
    let policy = interview_store::KeyPolicy::default();
    assert!(matches!(
        store.claim_idempotency_key("start", "running", "h", policy),
        Ok(interview_store::Claim::Run(_))
    ));
    store
        .prune_idempotency_keys(std::time::Duration::from_secs(3600))
        .unwrap();
    let report = sync(&src.path, &url, &SyncOptions::default()).unwrap();
    assert_eq!(
        (report.keys.written, report.keys.deleted),
        (1, 1),
        "{report:?}"
    );
    assert_eq!(
        pg_count(
            &url,
            "SELECT count(*) AS n FROM idempotency_keys WHERE key = 'new' AND status_code = 201"
        ),
        1
    );
    assert_eq!(pg_count(&url, keys), 1, "old pruned, running left behind");
    assert_equal(&src, &url);
    assert_eq!(migrate::status(&url).unwrap().idempotency_keys, 1);
}

/// A legacy file has no keys table: copy carries none; once the store adopts the
/// file, keys answered before the next sync (before their triggers) arrive too.
#[test]
fn a_legacy_file_without_the_keys_table_copies_and_its_later_keys_sync() {
    let src = Legacy::new(&clean_sql(2, 1));
    let (_db, url) = pg();
    let copied = copy(&src.path, &url, &CopyOptions::default()).unwrap();
    assert_eq!(copied.idempotency_keys, 0);
    assert_equal(&src, &url);
    let store = src.store(); // the new service adopts the file: the table appears
    answer_under_key(&store, "after-adoption");
    let v = verify(&src.path, &url).unwrap();
    assert_eq!(v.idempotency_keys.differences, 1, "{v:#?}");
    let report = sync(&src.path, &url, &SyncOptions::default()).unwrap();
    assert_eq!(report.keys.written, 1, "{report:?}");
    assert_equal(&src, &url);
    answer_under_key(&store, "logged");
    let report = sync(&src.path, &url, &SyncOptions::default()).unwrap();
    assert_eq!(report.keys.written, 1, "now by its own entry: {report:?}");
    assert_equal(&src, &url);
}

/// Verify compares the recorded answers and names the key that differs.
#[test]
fn verify_reports_a_differing_idempotency_key() {
    let src = Legacy::new(&clean_sql(1, 1));
    let store = src.store();
    answer_under_key(&store, "k");
    let (_db, url) = pg();
    copy(&src.path, &url, &CopyOptions::default()).unwrap();
    assert_equal(&src, &url);
    pg_conn(&url)
        .batch_execute("UPDATE idempotency_keys SET response_body = '{}'")
        .unwrap();
    let v = verify(&src.path, &url).unwrap();
    assert!(!v.is_equal());
    assert_eq!(v.idempotency_keys.differences, 1, "{v:#?}");
    assert_eq!(v.idempotency_keys.listed[0].column, "response_body");
    pg_conn(&url)
        .batch_execute("INSERT INTO idempotency_keys SELECT scope, 'only-pg', request_hash, token, status_code, response_body, created_at, claimed_at, completed_at FROM idempotency_keys")
        .unwrap();
    let v = verify(&src.path, &url).unwrap();
    assert_eq!(v.idempotency_keys.differences, 2, "{v:#?}");
}

/// The way back: a key answered and one pruned on PostgreSQL reach SQLite by rollback-sync.
#[test]
fn rollback_sync_carries_idempotency_keys() {
    let src = Legacy::new(&clean_sql(1, 1));
    let store = src.store();
    answer_under_key(&store, "before");
    let (_db, url) = pg();
    copy(&src.path, &url, &CopyOptions::default()).unwrap();
    pause_sqlite(&src.path);
    switch(&src.path, &url, Backend::Postgres).unwrap();
    let on_pg = pg_store(&url);
    answer_under_key(&on_pg, "on-pg");
    pg_conn(&url)
        .batch_execute("UPDATE idempotency_keys SET created_at = '2000-01-01' WHERE key = 'before'")
        .unwrap();
    on_pg
        .prune_idempotency_keys(std::time::Duration::from_secs(3600))
        .unwrap();
    pause_pg(&url);
    let report = rollback_sync(&src.path, &url).unwrap();
    assert_eq!(
        (report.keys.written, report.keys.deleted),
        (1, 1),
        "{report:?}"
    );
    assert_equal(&src, &url);
    switch(&src.path, &url, Backend::Sqlite).unwrap();
}
