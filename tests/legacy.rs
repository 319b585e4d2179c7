//! Opening a database written by the legacy service (SQLite only by nature).

mod common;

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::sql_types::Text;
use diesel::SqliteConnection;
use interview_store::migrate::{compare, Selection};
use interview_store::{timestamp, Error, Role, Store, StoreConfig};

const LEGACY_SCHEMA: &str = include_str!("fixtures/legacy-schema.sql");

#[derive(QueryableByName, Debug, PartialEq)]
struct Dump {
    #[diesel(sql_type = Text)]
    row: String,
}

/// Every row of the three tables as text, exactly as stored.
fn dump(path: &str) -> Vec<String> {
    let mut conn = SqliteConnection::establish(path).unwrap();
    diesel::sql_query(
        "SELECT 's|' || id || '|' || quote(created_at) || '|' || quote(updated_at) || '|' || quote(summary) AS row FROM sessions
         UNION ALL SELECT 'm|' || id || '|' || session_id || '|' || role || '|' || quote(text) || '|' || created_at FROM messages
         UNION ALL SELECT 'd|' || id || '|' || session_id || '|' || quote(content) || '|' || created_at FROM drafts
         ORDER BY 1",
    )
    .load::<Dump>(&mut conn)
    .unwrap()
    .into_iter()
    .map(|d| d.row)
    .collect()
}

#[test]
fn legacy_file_opens_migrates_and_reads_back_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("legacy.db");
    let path = path.to_str().unwrap();
    let s1 = "0f5a7d8e-3b1c-4a2e-9f00-1234567890ab";
    let s2 = "7c9e6679-7425-40de-944b-e07fc1f90ae7";
    {
        // Written the way the legacy service wrote it: plain SQL, its own timestamp styles, no foreign keys.
        let mut conn = SqliteConnection::establish(path).unwrap();
        conn.batch_execute(LEGACY_SCHEMA).unwrap();
        conn.batch_execute(&format!(
            "INSERT INTO sessions VALUES ('{s1}', '2024-05-01 10:00:00', '2024-05-01T10:05:30.250Z', 'Backend engineer, 6 years');
             INSERT INTO sessions (id, created_at, updated_at) VALUES ('{s2}', '2024-05-02T09:00:00+02:00', '2024-05-02T07:01:00.123456789Z');
             INSERT INTO messages (session_id, role, text, created_at) VALUES
               ('{s1}', 'assistant', 'Tell me about yourself.', '2024-05-01 10:00:00'),
               ('{s1}', 'user', 'I build \"reliable\" systems;\nmostly in Rust.', '2024-05-01T10:05:30.250Z');
             INSERT INTO drafts (session_id, content, created_at) VALUES ('{s1}', 'Draft one', '2024-05-01T10:06:00Z');"
        ))
        .unwrap();
    }
    let before = dump(path);

    let store = Store::connect(path, StoreConfig::default()).unwrap();
    assert_eq!(
        store.migrate().unwrap().len(),
        4,
        "the adopting migration, the idempotency-key table, the write pause and the UUID-key indexes, once each"
    );
    assert_eq!(dump(path), before, "adopting the file changed no row");

    let one = store.get_session(s1.parse().unwrap()).unwrap();
    assert_eq!(one.session.summary, "Backend engineer, 6 years");
    assert_eq!(
        one.session.created_at,
        timestamp::parse("2024-05-01T10:00:00Z").unwrap()
    );
    assert_eq!(
        one.session.updated_at,
        timestamp::parse("2024-05-01T10:05:30.25Z").unwrap()
    );
    assert_eq!(one.messages.len(), 2);
    assert_eq!(
        one.messages[1].text,
        "I build \"reliable\" systems;\nmostly in Rust."
    );
    assert_eq!(one.messages[1].role, Role::User);
    let two = store.get_session(s2.parse().unwrap()).unwrap();
    assert_eq!(
        two.session.created_at,
        timestamp::parse("2024-05-02T07:00:00Z").unwrap()
    );
    assert_eq!(two.session.summary, "", "the legacy default summary");
    assert_eq!(
        store
            .latest_draft(s1.parse().unwrap())
            .unwrap()
            .unwrap()
            .content,
        "Draft one"
    );
    assert_eq!(store.counts().unwrap().messages, 2);
    drop(store);
    assert_eq!(dump(path), before, "reading changed no row");

    // New writes go in canonical form beside the legacy rows.
    let store = Store::connect(path, StoreConfig::default()).unwrap();
    assert!(store.migrate().unwrap().is_empty());
    let m = store
        .append_message(s2.parse().unwrap(), Role::User, "new")
        .unwrap();
    let rows = dump(path);
    let new_row = rows
        .iter()
        .find(|r| r.starts_with(&format!("m|{}|", m.id)))
        .unwrap();
    assert!(
        new_row.ends_with(&timestamp::format(m.created_at)),
        "{new_row}"
    );
    assert_eq!(
        timestamp::format(m.created_at).len(),
        timestamp::CANONICAL_LEN
    );
}

#[test]
fn unreadable_legacy_value_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.db");
    let path = path.to_str().unwrap();
    let id = "7c9e6679-7425-40de-944b-e07fc1f90ae7";
    let mut conn = SqliteConnection::establish(path).unwrap();
    conn.batch_execute(LEGACY_SCHEMA).unwrap();
    conn.batch_execute(&format!(
        "INSERT INTO sessions VALUES ('{id}', '1714557600', '2024-05-01T10:00:00Z', '')"
    ))
    .unwrap();
    let store = Store::connect(path, StoreConfig::default()).unwrap();
    store.migrate().unwrap();
    let err = store.get_session(id.parse().unwrap()).unwrap_err();
    assert_eq!(err.category(), interview_store::Category::Db);
    let err = err.to_string();
    assert!(
        err.contains(&format!("session {id}"))
            && err.contains("created_at")
            && err.contains("\"1714557600\""),
        "{err}"
    );
    conn.batch_execute(&format!(
        "UPDATE sessions SET created_at = '2024-05-01T10:00:00Z'; \
         INSERT INTO messages (session_id, role, text, created_at) VALUES ('{id}', 'bot', 'hi', '2024-05-01T10:00:00Z')"
    ))
    .unwrap();
    let err = store
        .get_session(id.parse().unwrap())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("messages row 1") && err.contains("\"bot\""),
        "{err}"
    );
}

/// `text` with the byte 0xFF (never valid in UTF-8) spliced in before its last character, as SQL.
fn with_invalid_byte(text: &str) -> String {
    let (head, last) = text.split_at(text.len() - 1);
    format!("'{head}' || CAST(x'ff' AS TEXT) || '{last}'")
}

#[test]
fn invalid_utf8_in_ids_and_timestamps_is_corrupt_on_every_read_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad-utf8.db");
    let path = path.to_str().unwrap();
    let ts = "2024-05-01T10:00:00Z";
    let bad_ts = with_invalid_byte(ts);
    let a = "7c9e6679-7425-40de-944b-e07fc1f90ae7"; // created_at holds 0xFF
    let b = "0f5a7d8e-3b1c-4a2e-9f00-1234567890ab"; // its id holds 0xFF
    let c = "3f2504e0-4f89-41d3-9a0c-0305e82c3301"; // a message's created_at holds 0xFF
    let d = "9a1b2c3d-4e5f-4071-8293-a4b5c6d7e8f9"; // a draft's created_at holds 0xFF
    let mut conn = SqliteConnection::establish(path).unwrap();
    conn.batch_execute(LEGACY_SCHEMA).unwrap();
    conn.batch_execute(&format!(
        "INSERT INTO sessions VALUES ('{a}', {bad_ts}, '{ts}', '');
         INSERT INTO sessions VALUES ({bad_b}, '{ts}', '{ts}', '');
         INSERT INTO sessions VALUES ('{c}', '{ts}', '{ts}', '');
         INSERT INTO sessions VALUES ('{d}', '{ts}', '{ts}', '');
         INSERT INTO messages (session_id, role, text, created_at) VALUES ('{c}', 'user', 'hi', {bad_ts});
         INSERT INTO drafts (session_id, content, created_at) VALUES ('{d}', 'draft', {bad_ts});",
        bad_b = with_invalid_byte(b),
    ))
    .unwrap();
    let store = Store::connect(path, StoreConfig::default()).unwrap();
    store.migrate().unwrap();

    // Never a lossy decoding that might parse: the stored bytes are shown as they are.
    let corrupt = |r: Result<String, Error>, names: &str| {
        let e = r.expect_err("an unreadable row must not read as a value");
        assert!(matches!(e, Error::Corrupt { .. }), "{e}");
        assert_eq!(e.category(), interview_store::Category::Db);
        let text = e.to_string();
        assert!(
            text.contains(names) && text.contains("invalid UTF-8") && text.contains("\\xff"),
            "{text}"
        );
        text
    };
    let text = corrupt(
        store
            .get_session(a.parse().unwrap())
            .map(|s| format!("{s:?}")),
        &format!("session {a}"),
    );
    assert!(text.contains("created_at"), "{text}");
    let text = corrupt(
        store
            .get_session(c.parse().unwrap())
            .map(|s| format!("{s:?}")),
        &format!("session {c}"),
    );
    assert!(text.contains("created_at"), "{text}");
    corrupt(
        store
            .latest_draft(d.parse().unwrap())
            .map(|s| format!("{s:?}")),
        &format!("drafts of session {d}"),
    );
    // A page names itself, the column and the stored bytes.
    corrupt(
        store
            .list_sessions(interview_store::Page::default())
            .map(|s| format!("{s:?}")),
        "sessions page",
    );

    // The dual-read compare: a sample meets the unreadable id, named sessions each their row.
    let pg_db = common::TestDb::new(interview_store::Backend::Postgres);
    let pg = pg_db.store();
    let text = corrupt(
        compare(&store, &pg, &Selection::Sample(10)).map(|r| format!("{r:?}")),
        "session ids",
    );
    let (head, last) = b.split_at(b.len() - 1);
    assert!(text.contains(&format!("\"{head}\\xff{last}\"")), "{text}");
    let ids: Vec<uuid::Uuid> = [a, c, d].iter().map(|s| s.parse().unwrap()).collect();
    common::seed_identical(&pg, &ids);
    let report = compare(&store, &pg, &Selection::Sessions(ids.clone())).unwrap();
    assert_eq!(report.differences.len(), 3, "{report:?}");
    for (diff, id) in report.differences.iter().zip(&ids) {
        assert_eq!(diff.session, *id);
        assert!(
            diff.what.starts_with("unreadable on sqlite")
                && diff.what.contains("invalid UTF-8")
                && diff.what.contains(&format!("session {id}")),
            "{diff:?}"
        );
    }

    // Once every id reads, a page names the row that does not.
    conn.batch_execute(&format!(
        "DELETE FROM sessions WHERE id NOT IN ('{a}', '{c}', '{d}')"
    ))
    .unwrap();
    let text = corrupt(
        store
            .list_sessions(interview_store::Page::default())
            .map(|s| format!("{s:?}")),
        &format!("session {a} (sessions page"),
    );
    assert!(text.contains("created_at"), "{text}");
}
