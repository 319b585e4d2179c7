//! Opening a database written by the legacy service (SQLite only by nature).

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::sql_types::Text;
use diesel::SqliteConnection;
use interview_store::{timestamp, Role, Store, StoreConfig};

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
        2,
        "the adopting migration and the write pause's run once"
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
