//! PostgreSQL behind PgBouncer in transaction mode, as managed providers run it.
//!
//! `scripts/test.sh` starts the pooler (`scripts/test-helpers.sh`) and exports
//! `INTERVIEW_TEST_PGBOUNCER_URL`. The repository and server bodies run through
//! it too: every `backend_test!` has a `pgbouncer` variant.

mod common;

use std::process::{Command, Output};

use chrono::Utc;
use common::legacy::{clean_sql, Legacy};
use common::TestDb;
use diesel::connection::SimpleConnection;
use interview_store::{Backend, PoolConfig, Role, Store, StoreConfig};

/// Two stores (two service processes) on one database through the pooler, one connection each.
fn two_stores(db: &TestDb, statement_cache: bool) -> (Store, Store) {
    let config = StoreConfig {
        pool: PoolConfig {
            max_size: 1,
            ..Default::default()
        },
        pg_statement_cache: statement_cache,
        ..Default::default()
    };
    let open = || Store::connect(&db.url, config.clone()).expect("connect through the pooler");
    (open(), open())
}

/// Each store's calls in turn, as two processes behind one pooler would make them.
fn take_turns(a: &Store, b: &Store) -> Vec<String> {
    let mut errors = Vec::new();
    for _ in 0..5 {
        for store in [a, b] {
            let r = store.start_session().and_then(|s| {
                store.append_message(s.id, Role::User, "an answer")?;
                store.get_session(s.id)
            });
            if let Err(e) = r {
                errors.push(e.to_string());
            }
        }
    }
    errors
}

#[test]
fn the_statement_cache_breaks_behind_a_transaction_pooler_and_off_it_works() {
    let Some(db) = TestDb::through_pooler() else {
        return;
    };
    Store::connect(&db.direct_url, StoreConfig::default())
        .unwrap()
        .migrate()
        .unwrap();

    // Cached: both clients prepare `__diesel_stmt_0` and friends, on whichever
    // server connection the pooler lends them for that transaction.
    let (a, b) = two_stores(&db, true);
    let errors = take_turns(&a, &b);
    assert!(
        !errors.is_empty(),
        "with the statement cache on, the pooler was expected to break prepared statements"
    );
    assert!(
        errors.iter().all(|e| e.contains("prepared statement")),
        "{errors:#?}"
    );
    drop((a, b));

    let (a, b) = two_stores(&db, false);
    assert_eq!(take_turns(&a, &b), Vec::<String>::new());
    assert!(!a.url().statement_cache());
}

/// diesel sets the session to UTC when it connects, and the store adds no
/// session setting of its own: timestamps travel as binary TIMESTAMPTZ, so a
/// session in another zone (what a pooled server connection may carry) reads
/// and writes the same instants.
#[test]
fn timestamps_do_not_depend_on_the_session_time_zone() {
    let db = TestDb::new(Backend::Postgres);
    let store = db.store_with(StoreConfig {
        pool: PoolConfig {
            max_size: 1,
            ..Default::default()
        },
        ..Default::default()
    });
    store
        .with_connection(|c| Ok(c.batch_execute("SET TIME ZONE 'Asia/Kathmandu'")?))
        .unwrap();
    let session = store.start_session().unwrap();
    let m = store
        .append_message(session.id, Role::User, "at +05:45")
        .unwrap();
    let read = store.get_session(session.id).unwrap();
    assert_eq!(read.session.created_at, session.created_at);
    assert_eq!(read.messages, vec![m.clone()]);
    let lag = Utc::now() - m.created_at;
    assert!(
        lag.num_seconds().abs() < 60,
        "created_at {} is now, not shifted by the zone",
        m.created_at
    );
    #[derive(diesel::QueryableByName)]
    struct Zone {
        #[diesel(sql_type = diesel::sql_types::Text)]
        zone: String,
    }
    let zone = store
        .with_connection(|c| {
            use diesel::RunQueryDsl;
            Ok(
                diesel::sql_query("SELECT current_setting('TimeZone') AS zone")
                    .get_result::<Zone>(c)?,
            )
        })
        .unwrap();
    assert_eq!(zone.zone, "Asia/Kathmandu", "the test ran in that zone");
}

/// The migration tool with `INTERVIEW_PG_STATEMENT_CACHE=off`, as an operator behind a pooler runs it.
fn migrate(args: &[&str]) -> Output {
    let o = Command::new(common::bin::example_bin("migrate"))
        .args(args)
        .env_remove("INTERVIEW_SQLITE_PATH")
        .env_remove("INTERVIEW_POSTGRES_URL")
        .env("INTERVIEW_PG_STATEMENT_CACHE", "off")
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(0),
        "migrate {args:?}: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

#[test]
fn the_migration_tool_works_through_the_pooler_with_the_cache_off() {
    let Some(db) = TestDb::through_pooler() else {
        return;
    };
    let legacy = Legacy::new(&clean_sql(30, 6));
    let sqlite = legacy.path.to_str().unwrap();
    let pg = db.url.as_str();

    migrate(&["setup", "--postgres", pg]);
    migrate(&[
        "copy",
        "--sqlite",
        sqlite,
        "--postgres",
        pg,
        "--batch-size",
        "50",
    ]);
    legacy.exec(
        "INSERT INTO messages (session_id, role, text, created_at) VALUES ('00000000-0000-4000-8000-000000000003', 'user', 'written after the copy', '2025-02-01T00:00:00Z');
         UPDATE sessions SET summary = 'changed', updated_at = '2025-02-01T00:00:01Z' WHERE id = '00000000-0000-4000-8000-000000000004';",
    );
    let synced = migrate(&["sync", "--sqlite", sqlite, "--postgres", pg]);
    assert!(
        String::from_utf8_lossy(&synced.stdout)
            .contains("1 changed, 0 deleted; messages 1 written"),
        "{}",
        String::from_utf8_lossy(&synced.stdout)
    );
    let verified = migrate(&["verify", "--sqlite", sqlite, "--postgres", pg]);
    assert!(String::from_utf8_lossy(&verified.stdout).contains("EQUAL"));
    migrate(&[
        "compare",
        "--sqlite",
        sqlite,
        "--postgres",
        pg,
        "--sample",
        "10",
    ]);
    migrate(&["status", "--postgres", pg]);

    // The switch, then the service writes to PostgreSQL through the pooler; rollback-sync brings it back.
    migrate(&["pause", "--sqlite", sqlite]);
    migrate(&["switch", "--sqlite", sqlite, "--postgres", pg]);
    let store = db.store();
    let s = store.start_session().unwrap();
    store
        .append_message(s.id, Role::Assistant, "after the switch")
        .unwrap();
    migrate(&["pause", "--postgres", pg]);
    let back = migrate(&["rollback-sync", "--postgres", pg, "--sqlite", sqlite]);
    assert!(
        String::from_utf8_lossy(&back.stdout).contains("sessions 1 new"),
        "{}",
        String::from_utf8_lossy(&back.stdout)
    );
    assert_eq!(legacy.store().counts().unwrap(), store.counts().unwrap());
    migrate(&[
        "switch",
        "--to",
        "sqlite",
        "--sqlite",
        sqlite,
        "--postgres",
        pg,
    ]);
}

#[cfg(feature = "server")]
#[test]
fn the_server_reads_the_statement_cache_setting() {
    use interview_store::server::ServerConfig;
    let env = |cache: &'static str| {
        move |k: &str| match k {
            "INTERVIEW_DB_BACKEND" => Some("postgres".to_string()),
            "INTERVIEW_POSTGRES_URL" => Some("postgres://app@pooler:6432/interview".to_string()),
            "INTERVIEW_PG_STATEMENT_CACHE" => Some(cache.to_string()),
            _ => None,
        }
    };
    let off = ServerConfig::from_lookup(env("off")).unwrap();
    assert!(!off.store.pg_statement_cache);
    assert!(!off.database_url().unwrap().statement_cache());
    let on = ServerConfig::from_lookup(env("")).unwrap();
    assert!(on.store.pg_statement_cache, "on by default");
    let err = ServerConfig::from_lookup(env("sometimes")).unwrap_err();
    assert!(
        err.to_string().contains("INTERVIEW_PG_STATEMENT_CACHE"),
        "{err}"
    );
}
