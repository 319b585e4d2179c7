//! Legacy files written through real libraries take the whole runbook.
//!
//! The files under tests/fixtures/orm/ come from `scripts/make-orm-fixtures.sh`:
//! SQLAlchemy 2 (`Uuid`: 32 hex digits, an `alembic_version` table), Django's ORM
//! (`UUIDField`: 32 hex digits, its `django_migrations` and auth tables), Python's
//! `sqlite3` (upper case) and Node's better-sqlite3 (braced, upper case). Each goes
//! through check, setup, the store serving it on SQLite, copy, verify, compare, the
//! pause and the switch to PostgreSQL on a fresh database, and PostgreSQL then serves
//! the same sessions through the same body.

mod common;

use std::path::Path;

use chrono::{DateTime, Duration, NaiveDate, Utc};
use diesel::prelude::*;
use diesel::sql_types::Text;
use interview_store::migrate::{self, Selection};
use interview_store::{maintenance, Backend, DatabaseUrl, Role, Store, StoreConfig};
use uuid::Uuid;

/// A fixture: its file, the writer's number in its ids, the name in its texts, and its first instant.
struct Fixture {
    file: &'static str,
    writer: u32,
    name: &'static str,
    start: (u32, u32, u32, u32),
}

const FIXTURES: [Fixture; 4] = [
    Fixture {
        file: "sqlalchemy.db",
        writer: 1,
        name: "sqlalchemy",
        start: (1, 9, 0, 123_456),
    },
    Fixture {
        file: "django.db",
        writer: 2,
        name: "django",
        start: (2, 9, 0, 654_321),
    },
    Fixture {
        file: "sqlite3.db",
        writer: 3,
        name: "sqlite3",
        start: (3, 9, 0, 0),
    },
    Fixture {
        file: "node.db",
        writer: 4,
        name: "node",
        start: (4, 9, 0, 250_000),
    },
];

impl Fixture {
    fn session(&self, s: u32) -> Uuid {
        format!("{:08x}-abcd-4ef0-8abc-{s:012x}", self.writer)
            .parse()
            .unwrap()
    }

    fn created(&self, s: u32) -> DateTime<Utc> {
        let (day, h, m, us) = self.start;
        NaiveDate::from_ymd_opt(2025, 3, day)
            .unwrap()
            .and_hms_micro_opt(h, m, 0, us)
            .unwrap()
            .and_utc()
            + Duration::hours(s.into())
    }
}

#[derive(QueryableByName)]
struct Row {
    #[diesel(sql_type = Text)]
    row: String,
}

fn stored_ids(path: &Path) -> Vec<String> {
    let mut conn = SqliteConnection::establish(path.to_str().unwrap()).unwrap();
    diesel::sql_query(
        "SELECT id AS row FROM sessions UNION ALL SELECT session_id FROM messages \
         UNION ALL SELECT session_id FROM drafts",
    )
    .load::<Row>(&mut conn)
    .unwrap()
    .into_iter()
    .map(|r| r.row)
    .collect()
}

/// What the service reads of a fixture, on either backend: one body for both.
fn serves(store: &Store, f: &Fixture, appended: &str) {
    for s in 1..=3 {
        let id = f.session(s);
        let read = store
            .get_session(id)
            .unwrap_or_else(|e| panic!("{} on {}: session {id}: {e}", f.file, store.backend()));
        assert_eq!(read.session.id, id);
        assert_eq!(read.session.created_at, f.created(s), "{}", f.file);
        assert_eq!(read.session.summary, format!("{} session {s}", f.name));
        let texts: Vec<String> = read.messages.iter().map(|m| m.text.clone()).collect();
        let mut expected: Vec<String> = (0..3).map(|m| format!("{} {s}.{m}", f.name)).collect();
        if s == 1 {
            expected.push(appended.to_string());
        }
        assert_eq!(texts, expected, "{} on {}", f.file, store.backend());
        assert_eq!(read.messages[0].role, Role::Assistant);
        assert_eq!(read.messages[1].role, Role::User);
        assert_eq!(
            read.messages[1].created_at,
            f.created(s) + Duration::minutes(1)
        );
        let draft = store.latest_draft(id).unwrap().expect("a draft");
        assert_eq!(draft.content, format!("{} draft {s}", f.name));
    }
}

fn runbook(f: &Fixture) {
    let committed = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/orm")
        .join(f.file);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(f.file);
    std::fs::copy(&committed, &path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (made by scripts/make-orm-fixtures.sh)",
            committed.display()
        )
    });
    let ids_before = stored_ids(&path);
    let pg_db = common::PgDatabase::create();
    let url: DatabaseUrl = pg_db.url.parse().unwrap();

    // 2. Preflight: every row is valid.
    let check = migrate::check(&path).unwrap();
    assert!(check.is_clean(), "{}: {:?}", f.file, check.rejects);
    assert_eq!(check.rows, [3, 9, 3], "{}", f.file);

    // 3. Setup: PostgreSQL's schema, SQLite's change log and indexes.
    Store::open(url.clone(), StoreConfig::default())
        .unwrap()
        .migrate()
        .unwrap();
    migrate::install_change_log(&path).unwrap();
    migrate::index_source(&path).unwrap();

    // The service on SQLite, the store adopting the file: it serves every session by its
    // canonical id, and a message it appends is named as the file spells the session.
    let lite = Store::connect(path.to_str().unwrap(), StoreConfig::default()).unwrap();
    lite.migrate().unwrap();
    let appended = format!("{} appended on sqlite", f.name);
    lite.append_message(f.session(1), Role::User, &appended)
        .unwrap();
    serves(&lite, f, &appended);

    // 4. to 7.: copy, verify, catch up, compare.
    let copied = migrate::copy(&path, &url, &Default::default()).unwrap();
    assert!(
        copied.tables.iter().all(|t| t.rejected == 0),
        "{}: {copied:?}",
        f.file
    );
    assert_eq!(copied.tables[1].copied, 10, "{}", f.file);
    let v = migrate::verify(&path, &url).unwrap();
    assert!(v.is_equal(), "{}: {v:#?}", f.file);
    migrate::sync(&path, &url, &Default::default()).unwrap();
    let pg = Store::open(url.clone(), StoreConfig::default()).unwrap();
    let c = migrate::compare_file(&path, &pg, &Selection::Sample(100)).unwrap();
    assert!(c.is_equal(), "{}: {:?}", f.file, c.differences);
    assert_eq!((c.sessions, c.messages), (3, 10), "{}", f.file);
    let c = migrate::compare(&lite, &pg, &Selection::Sample(100)).unwrap();
    assert!(c.is_equal(), "{}: {:?}", f.file, c.differences);
    drop(lite);

    // 8. to 10.: pause, last sync, switch.
    let sqlite_url = DatabaseUrl::existing_sqlite(&path).unwrap();
    maintenance::pause(&mut maintenance::connect(&sqlite_url).unwrap()).unwrap();
    migrate::sync(&path, &url, &Default::default()).unwrap();
    let switched = migrate::switch(&path, &url, Backend::Postgres).unwrap();
    assert_eq!(switched.live, Backend::Postgres, "{}", f.file);
    assert!(switched.verify.is_equal(), "{}: {switched:?}", f.file);

    // PostgreSQL serves the same sessions, through the same body.
    serves(&pg, f, &appended);
    let mut after = stored_ids(&path);
    after.retain(|id| ids_before.contains(id));
    assert_eq!(
        after.len(),
        ids_before.len() + 1,
        "{}: every id as the writer spelled it, and the appended message under its session's spelling",
        f.file
    );
}

#[test]
fn sqlalchemy_file_takes_the_whole_runbook() {
    runbook(&FIXTURES[0]);
}

#[test]
fn django_file_takes_the_whole_runbook() {
    runbook(&FIXTURES[1]);
}

#[test]
fn python_sqlite3_upper_case_file_takes_the_whole_runbook() {
    runbook(&FIXTURES[2]);
}

#[test]
fn node_better_sqlite3_braced_file_takes_the_whole_runbook() {
    runbook(&FIXTURES[3]);
}
