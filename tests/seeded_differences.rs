//! verify as a witness: after an equal copy, one difference at a time on
//! either side must make it DIFFERENT and name the table and the row; once
//! undone, EQUAL again.

mod common;

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use interview_store::connection::DatabaseUrl;
use interview_store::migrate::{copy, verify, CopyOptions, Table, VerifyReport};
use interview_store::{Store, StoreConfig};

#[derive(Clone, Copy, Debug)]
enum Side {
    Sqlite,
    Postgres,
}

/// What verify must name.
#[derive(Debug)]
enum Names {
    Row(Table, String),
    Key(&'static str),
}

struct Case {
    name: &'static str,
    side: Side,
    /// SQL making the difference (both dialects: `keep` holds what undo restores).
    make: String,
    undo: String,
    names: Names,
}

fn case(name: &'static str, side: Side, make: &str, undo: &str, names: Names) -> Case {
    Case {
        name,
        side,
        make: make.into(),
        undo: undo.into(),
        names,
    }
}

/// Saves the rows of `table` matching `cond` into `keep`, for the undo.
fn keep(table: &str, cond: &str) -> String {
    format!("CREATE TABLE keep AS SELECT * FROM {table} WHERE {cond};")
}

/// Puts back the rows [`keep`] saved, as they were.
fn put_back(table: &str, cond: &str) -> String {
    format!("DELETE FROM {table} WHERE {cond}; INSERT INTO {table} SELECT * FROM keep; DROP TABLE keep;")
}

fn row(t: Table, id: impl ToString) -> Names {
    Names::Row(t, id.to_string())
}

fn cases(s: &[uuid::Uuid]) -> Vec<Case> {
    use Side::{Postgres as Pg, Sqlite as Lite};
    use Table::{Drafts, Messages, Sessions};
    // seed_identical: session n has messages n*10+1..=n*10+3 and draft n+1.
    let msg = |id: i64, set: &str| -> (String, String) {
        let cond = format!("id = {id}");
        (
            format!(
                "{} UPDATE messages SET {set} WHERE {cond};",
                keep("messages", &cond)
            ),
            put_back("messages", &cond),
        )
    };
    let session = |id: uuid::Uuid, set: &str| -> (String, String) {
        (
            format!(
                "CREATE TABLE keep AS SELECT * FROM sessions WHERE id = '{id}'; \
                 UPDATE sessions SET {set} WHERE id = '{id}';"
            ),
            format!(
                "UPDATE sessions SET created_at = (SELECT created_at FROM keep), \
                 updated_at = (SELECT updated_at FROM keep), summary = (SELECT summary FROM keep) \
                 WHERE id = '{id}'; DROP TABLE keep;"
            ),
        )
    };
    let mut out = Vec::new();
    let mut add = |name, side, (make, undo): (String, String), names| {
        out.push(case(name, side, &make, &undo, names));
    };
    add(
        "a timestamp a microsecond later",
        Pg,
        msg(2, "created_at = created_at + interval '1 microsecond'"),
        row(Messages, 2),
    );
    add(
        "a timestamp a microsecond later",
        Lite,
        session(s[1], "updated_at = '2025-03-01T12:00:09.000001Z'"),
        row(Sessions, s[1]),
    );
    add(
        "a trailing space",
        Pg,
        msg(3, "text = text || ' '"),
        row(Messages, 3),
    );
    add(
        "a trailing space",
        Lite,
        (
            format!(
                "{} UPDATE drafts SET content = content || ' ' WHERE id = 1;",
                keep("drafts", "id = 1")
            ),
            put_back("drafts", "id = 1"),
        ),
        row(Drafts, 1),
    );
    add(
        "a look-alike letter (Cyrillic а for Latin a)",
        Pg,
        session(s[0], "summary = 'summаry'"),
        row(Sessions, s[0]),
    );
    add(
        "a look-alike letter (Cyrillic а for Latin a)",
        Lite,
        msg(12, "text = replace(text, 'o', 'о')"),
        row(Messages, 12),
    );
    add(
        "a message moved to another session",
        Pg,
        msg(1, &format!("session_id = '{}'", s[1])),
        row(Messages, 1),
    );
    add(
        "a message moved to another session",
        Lite,
        msg(21, &format!("session_id = '{}'", s[0])),
        row(Messages, 21),
    );
    add(
        "two rows' contents swapped",
        Lite,
        (
            format!(
                "{} UPDATE messages SET text = 'message 1 — «ok»' WHERE id = 11; \
                 UPDATE messages SET text = 'message 0 — «ok»' WHERE id = 12;",
                keep("messages", "id IN (11, 12)")
            ),
            put_back("messages", "id IN (11, 12)"),
        ),
        row(Messages, 11),
    );
    add(
        "a role changed",
        Pg,
        msg(1, "role = 'user'"),
        row(Messages, 1),
    );
    add(
        "a NULL for a text (invalid in sqlite, not recorded as rejected)",
        Lite,
        msg(2, "text = NULL"),
        row(Messages, 2),
    );
    add(
        "a summary emptied",
        Pg,
        session(s[2], "summary = ''"),
        row(Sessions, s[2]),
    );
    add(
        "one row missing",
        Pg,
        (
            format!(
                "{} DELETE FROM messages WHERE id = 22;",
                keep("messages", "id = 22")
            ),
            "INSERT INTO messages SELECT * FROM keep; DROP TABLE keep;".into(),
        ),
        row(Messages, 22),
    );
    add(
        "one row missing",
        Lite,
        (
            format!(
                "{} DELETE FROM messages WHERE id = 13;",
                keep("messages", "id = 13")
            ),
            "INSERT INTO messages SELECT * FROM keep; DROP TABLE keep;".into(),
        ),
        row(Messages, 13),
    );
    add(
        "a draft removed",
        Pg,
        (
            format!(
                "{} DELETE FROM drafts WHERE id = 2;",
                keep("drafts", "id = 2")
            ),
            "INSERT INTO drafts SELECT * FROM keep; DROP TABLE keep;".into(),
        ),
        row(Drafts, 2),
    );
    add(
        "one row extra",
        Pg,
        (
            format!(
                "INSERT INTO messages (id, session_id, role, text, created_at) \
                 VALUES (1000, '{}', 'user', 'extra', now());",
                s[0]
            ),
            "DELETE FROM messages WHERE id = 1000;".into(),
        ),
        row(Messages, 1000),
    );
    add(
        "one session extra",
        Lite,
        (
            "INSERT INTO sessions VALUES ('0190a5f0-0000-7000-8000-0000000000ee', \
             '2025-03-01T12:00:00.000000Z', '2025-03-01T12:00:00.000000Z', '');"
                .into(),
            "DELETE FROM sessions WHERE id = '0190a5f0-0000-7000-8000-0000000000ee';".into(),
        ),
        row(Sessions, "0190a5f0-0000-7000-8000-0000000000ee"),
    );
    add(
        "an idempotency key's answer differing",
        Pg,
        (
            "UPDATE idempotency_keys SET response_body = '{\"id\":2}' WHERE key = 'k1';".into(),
            "UPDATE idempotency_keys SET response_body = '{\"id\":1}' WHERE key = 'k1';".into(),
        ),
        Names::Key("k1"),
    );
    add(
        "an idempotency key missing",
        Lite,
        (
            "CREATE TABLE keep AS SELECT * FROM idempotency_keys WHERE key = 'k1'; \
             DELETE FROM idempotency_keys WHERE key = 'k1';"
                .into(),
            "INSERT INTO idempotency_keys SELECT * FROM keep; DROP TABLE keep;".into(),
        ),
        Names::Key("k1"),
    );
    add(
        "a PostgreSQL sequence behind its rows",
        Pg,
        (
            "SELECT setval('messages_id_seq', 5);".into(),
            "SELECT setval('messages_id_seq', (SELECT max(id) FROM messages));".into(),
        ),
        row(Messages, "sequence"),
    );
    out
}

fn names(report: &VerifyReport, names: &Names) -> bool {
    match names {
        Names::Row(t, id) => report
            .differences
            .iter()
            .any(|d| d.table == *t && d.id == *id),
        Names::Key(k) => report.idempotency_keys.listed.iter().any(|d| d.key == *k),
    }
}

#[test]
fn verify_names_each_seeded_difference_and_is_equal_once_undone() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("interview.db");
    let lite = Store::connect(path.to_str().unwrap(), StoreConfig::default()).unwrap();
    lite.migrate().unwrap();
    let ids: Vec<uuid::Uuid> = (0..3).map(|_| uuid::Uuid::now_v7()).collect();
    common::seed_identical(&lite, &ids);
    drop(lite);
    let mut sqlite = SqliteConnection::establish(path.to_str().unwrap()).unwrap();
    sqlite
        .batch_execute(
            "INSERT INTO idempotency_keys VALUES ('POST /sessions', 'k1', 'ab', \
             '0190a5f0-0000-7000-8000-0000000000aa', 201, '{\"id\":1}', \
             '2025-03-01T12:00:00.000000Z', '2025-03-01T12:00:00.000000Z', '2025-03-01T12:00:01.000000Z')",
        )
        .unwrap();
    let db = common::PgDatabase::create();
    let url: DatabaseUrl = db.url.parse().unwrap();
    copy(&path, &url, &CopyOptions::default()).unwrap();
    let first = verify(&path, &url).unwrap();
    assert!(first.is_equal(), "{:#?}", first.differences);
    assert_eq!(first.idempotency_keys.postgres_keys, 1);
    let mut pg = PgConnection::establish(&db.url).unwrap();

    let cases = cases(&ids);
    assert!(cases.len() >= 12);
    for c in &cases {
        let run = |sql: &str, conn: &mut dyn FnMut(&str) -> QueryResult<()>| {
            conn(sql).unwrap_or_else(|e| panic!("{} ({:?}): {sql}: {e}", c.name, c.side))
        };
        let mut on_side = |sql: &str| -> QueryResult<()> {
            match c.side {
                Side::Sqlite => sqlite.batch_execute(sql),
                Side::Postgres => pg.batch_execute(sql),
            }
        };
        run(&c.make, &mut on_side);
        let v = verify(&path, &url).unwrap();
        assert!(
            !v.is_equal(),
            "{} ({:?}): verify says EQUAL",
            c.name,
            c.side
        );
        assert!(
            names(&v, &c.names),
            "{} ({:?}): {:?} not named in {:#?} / {:#?}",
            c.name,
            c.side,
            c.names,
            v.differences,
            v.idempotency_keys.listed
        );
        run(&c.undo, &mut on_side);
        let v = verify(&path, &url).unwrap();
        assert!(
            v.is_equal(),
            "{} ({:?}) undone, still: {:#?} {:#?}",
            c.name,
            c.side,
            v.differences,
            v.idempotency_keys.listed
        );
    }
}

/// A copied file with one finished idempotency key, and its PostgreSQL copy.
fn copied_with_a_key() -> (
    tempfile::TempDir,
    std::path::PathBuf,
    common::PgDatabase,
    DatabaseUrl,
) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("interview.db");
    let lite = Store::connect(path.to_str().unwrap(), StoreConfig::default()).unwrap();
    lite.migrate().unwrap();
    common::seed_identical(&lite, &[uuid::Uuid::now_v7()]);
    drop(lite);
    sqlite_exec(&path, &key_sql("k1", "{\"id\":1}"));
    let db = common::PgDatabase::create();
    let url: DatabaseUrl = db.url.parse().unwrap();
    copy(&path, &url, &CopyOptions::default()).unwrap();
    (dir, path, db, url)
}

fn key_sql(key: &str, body: &str) -> String {
    format!(
        "INSERT INTO idempotency_keys VALUES ('POST /sessions', '{key}', 'ab', \
         '0190a5f0-0000-7000-8000-0000000000aa', 201, '{body}', \
         '2025-03-01T12:00:00.000000Z', '2025-03-01T12:00:00.000000Z', '2025-03-01T12:00:01.000000Z')"
    )
}

fn sqlite_exec(path: &std::path::Path, sql: &str) {
    SqliteConnection::establish(path.to_str().unwrap())
        .unwrap()
        .batch_execute(sql)
        .unwrap();
}

/// `verify --live`: a key answered on the live side after the position
/// PostgreSQL stands at is in flight, as a row written then is, not a fault.
#[test]
fn a_key_answered_after_the_snapshot_is_in_flight() {
    let (_dir, path, _db, url) = copied_with_a_key();
    // The service answers a keyed request on SQLite; no sync has run since.
    sqlite_exec(&path, &key_sql("k2", "{\"id\":2}"));
    let v = verify(&path, &url).unwrap();
    assert!(!v.is_equal(), "k2 is not on postgres yet");
    assert_eq!(v.idempotency_keys.differences, 1, "{v:#?}");
    assert_eq!(v.idempotency_keys.in_flight, Some(1), "{v:#?}");
    assert!(v.is_equal_but_in_flight(), "{v:#?}");
}

/// A key that differs without a change-log entry past PostgreSQL's position
/// is a real difference, in flight or not around it.
#[test]
fn a_key_differing_for_real_is_not_in_flight() {
    let (_dir, path, db, url) = copied_with_a_key();
    sqlite_exec(&path, &key_sql("k2", "{\"id\":2}"));
    PgConnection::establish(&db.url)
        .unwrap()
        .batch_execute("UPDATE idempotency_keys SET response_body = '{\"id\":9}' WHERE key = 'k1'")
        .unwrap();
    let v = verify(&path, &url).unwrap();
    assert_eq!(v.idempotency_keys.differences, 2, "{v:#?}");
    assert_eq!(v.idempotency_keys.in_flight, Some(1), "{v:#?}");
    assert!(!v.is_equal_but_in_flight(), "{v:#?}");
}

/// Published checksums are XXH3-64 over a fixed layout (see `verify`): the
/// same rows give the same figures in any process, Rust release or machine,
/// so operators can compare the ones two runs print.
#[test]
fn checksums_are_pinned() {
    let src = common::legacy::Legacy::new(&common::legacy::clean_sql(2, 2));
    let db = common::PgDatabase::create();
    let url: DatabaseUrl = db.url.parse().unwrap();
    copy(&src.path, &url, &CopyOptions::default()).unwrap();
    let v = verify(&src.path, &url).unwrap();
    let sums = |t: &interview_store::migrate::TableVerify| {
        (t.sqlite_checksum.clone(), t.postgres_checksum.clone())
    };
    for (t, want) in [
        (&v.sessions, "48cdb4761a433413"),
        (&v.messages, "4a01e59f0b526ed2"),
        (&v.drafts, "25a2627e233b3688"),
    ] {
        assert_eq!(sums(t), (want.to_string(), want.to_string()), "{v:#?}");
    }
    // The drafts' figure from the documented layout, computed here apart:
    // id ‖ session ‖ XXH3-128 of the role ('' for drafts) ‖ of the body ‖ created_at µs.
    use xxhash_rust::xxh3::{xxh3_128, xxh3_64};
    let created = chrono::DateTime::parse_from_rfc3339("2025-01-03T00:00:00Z")
        .unwrap()
        .timestamp_micros();
    let mut sum = 0u64;
    for (id, s) in [(1i64, 0), (2, 1)] {
        let session = uuid::Uuid::parse_str(&format!("00000000-0000-4000-8000-{s:012}")).unwrap();
        let mut bytes = Vec::new();
        bytes.extend(id.to_le_bytes());
        bytes.extend(session.as_bytes());
        bytes.extend(xxh3_128(b"").to_le_bytes());
        bytes.extend(xxh3_128(format!("draft of {s}").as_bytes()).to_le_bytes());
        bytes.extend(created.to_le_bytes());
        sum = sum.wrapping_add(xxh3_64(&bytes));
    }
    assert_eq!(format!("{sum:016x}"), v.drafts.sqlite_checksum);
}
