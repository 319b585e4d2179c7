//! Legacy ids however the writer spelled them: canonical, upper case, 32 hex digits, braced.
//!
//! The store on the legacy file finds every such row by its canonical UUID, writes to it
//! without rewriting its id, and `compare` reads it the same way (see src/types.rs).

mod common;

use common::legacy::Legacy;
use diesel::prelude::*;
use diesel::sql_types::Text;
use interview_store::migrate::{self, Selection};
use interview_store::schema::sessions;
use interview_store::types::{read_legacy_uuid, uuid_key, DbUuidKey, SQLITE_UUID_KEY};
use interview_store::{DatabaseUrl, Error, Page, Role, Store, StoreConfig};
use uuid::Uuid;

/// One session per spelling; its messages and draft spelled like it, except the last
/// session, whose children are spelled in lower case under an upper-case id.
const SPELLINGS: [(&str, &str); 6] = [
    ("canonical", "10000000-0000-4000-8000-0000000000aa"),
    ("upper", "20000000-0000-4000-8000-0000000000BB"),
    ("hex", "300000000000400080000000000000cc"),
    ("hex upper", "400000000000400080000000000000DD"),
    ("braced", "{50000000-0000-4000-8000-0000000000ee}"),
    ("mixed", "60000000-0000-4000-8000-0000000000FF"),
];

fn canonical(spelled: &str) -> Uuid {
    read_legacy_uuid(spelled.as_bytes()).unwrap()
}

fn legacy_sql() -> String {
    let mut sql = String::from("BEGIN;");
    for (i, (_, id)) in SPELLINGS.iter().enumerate() {
        let child = if i == SPELLINGS.len() - 1 {
            id.to_lowercase()
        } else {
            id.to_string()
        };
        sql += &format!(
            "INSERT INTO sessions VALUES ('{id}', '2025-01-0{d} 10:00:00', '2025-01-0{d} 11:00:00', 'summary {i}');
             INSERT INTO messages (session_id, role, text, created_at) VALUES
               ('{child}', 'assistant', 'question {i}', '2025-01-0{d} 10:00:00'),
               ('{child}', 'user', 'answer {i}', '2025-01-0{d} 10:01:00');
             INSERT INTO drafts (session_id, content, created_at) VALUES ('{child}', 'draft {i}', '2025-01-0{d} 10:02:00');",
            d = i + 1
        );
    }
    sql + "COMMIT;"
}

#[derive(QueryableByName, Debug, PartialEq)]
struct Row {
    #[diesel(sql_type = Text)]
    row: String,
}

fn query(path: &std::path::Path, sql: &str) -> Vec<String> {
    let mut conn = SqliteConnection::establish(path.to_str().unwrap()).unwrap();
    diesel::sql_query(sql)
        .load::<Row>(&mut conn)
        .unwrap()
        .into_iter()
        .map(|r| r.row)
        .collect()
}

/// Every row as stored, ids exactly as spelled.
fn dump(path: &std::path::Path) -> Vec<String> {
    query(
        path,
        "SELECT 's|' || id || '|' || created_at || '|' || updated_at || '|' || summary AS row FROM sessions
         UNION ALL SELECT 'm|' || id || '|' || session_id || '|' || text FROM messages
         UNION ALL SELECT 'd|' || id || '|' || session_id || '|' || content FROM drafts ORDER BY 1",
    )
}

#[test]
fn the_sql_key_of_every_accepted_spelling_is_the_bound_key() {
    let id: Uuid = "67e55044-10b1-426f-9247-bb680e5fe0c8".parse().unwrap();
    let spellings = [
        id.hyphenated().to_string(),
        id.hyphenated().to_string().to_uppercase(),
        id.simple().to_string(),
        id.simple().to_string().to_uppercase(),
        id.braced().to_string(),
        id.braced().to_string().to_uppercase(),
        id.urn().to_string(),
        id.urn().to_string().to_uppercase(),
    ];
    let mut conn = SqliteConnection::establish(":memory:").unwrap();
    for s in &spellings {
        assert_eq!(read_legacy_uuid(s.as_bytes()), Ok(id), "{s}");
        let key = diesel::sql_query(format!(
            "SELECT {}?{} AS row",
            SQLITE_UUID_KEY.0, SQLITE_UUID_KEY.1
        ))
        .bind::<Text, _>(s)
        .get_result::<Row>(&mut conn)
        .unwrap()
        .row;
        assert_eq!(key, id.simple().to_string(), "the SQL key of {s}");
    }
}

#[test]
fn the_indexes_are_on_the_expression_the_queries_render_and_lookups_use_them() {
    let legacy = Legacy::new(&legacy_sql());
    let store = legacy.store();
    drop(store);
    let key = |col: &str| format!("{}{col}{}", SQLITE_UUID_KEY.0, SQLITE_UUID_KEY.1);
    let defs = query(
        &legacy.path,
        "SELECT name || ': ' || sql AS row FROM sqlite_master WHERE type = 'index' AND name LIKE '%uuid_key%' ORDER BY name",
    );
    assert_eq!(
        defs,
        [
            format!(
                "drafts_session_uuid_key_id_idx: CREATE INDEX drafts_session_uuid_key_id_idx ON drafts ({}, id)",
                key("session_id")
            ),
            format!(
                "messages_session_uuid_key_id_idx: CREATE INDEX messages_session_uuid_key_id_idx ON messages ({}, id)",
                key("session_id")
            ),
            format!(
                "sessions_id_uuid_key_idx: CREATE INDEX sessions_id_uuid_key_idx ON sessions ({})",
                key("id")
            ),
        ]
    );
    // What diesel renders is that expression around the (qualified) column.
    let rendered = diesel::debug_query::<diesel::sqlite::Sqlite, _>(
        &sessions::table
            .filter(uuid_key(sessions::id).eq(DbUuidKey(Uuid::nil())))
            .select(sessions::summary),
    )
    .to_string();
    assert!(rendered.contains(&key("`sessions`.`id`")), "{rendered}");
    // SQLite's planner takes the indexes for a lookup and for the join to the children.
    let plan: Vec<String> = {
        let mut conn = SqliteConnection::establish(legacy.path.to_str().unwrap()).unwrap();
        #[derive(QueryableByName)]
        struct Plan {
            #[diesel(sql_type = Text)]
            detail: String,
        }
        diesel::sql_query(format!(
            "EXPLAIN QUERY PLAN SELECT * FROM sessions LEFT JOIN messages ON {} = {} WHERE {} = 'x' ORDER BY messages.id",
            key("messages.session_id"),
            key("sessions.id"),
            key("sessions.id")
        ))
        .load::<Plan>(&mut conn)
        .unwrap()
        .into_iter()
        .map(|p| p.detail)
        .collect()
    };
    let plan = plan.join("\n");
    assert!(plan.contains("sessions_id_uuid_key_idx"), "{plan}");
    assert!(plan.contains("messages_session_uuid_key_id_idx"), "{plan}");
}

#[test]
fn every_spelling_is_served_by_its_canonical_id_and_writes_keep_the_legacy_text() {
    let legacy = Legacy::new(&legacy_sql());
    let before = dump(&legacy.path);
    let store = legacy.store();
    assert_eq!(
        dump(&legacy.path),
        before,
        "adopting the file rewrote no id"
    );

    for (i, (how, spelled)) in SPELLINGS.iter().enumerate() {
        let id = canonical(spelled);
        let read = store
            .get_session(id)
            .unwrap_or_else(|e| panic!("{how} session {spelled}: {e}"));
        assert_eq!(read.session.id, id, "{how}");
        assert_eq!(read.session.summary, format!("summary {i}"), "{how}");
        let texts: Vec<&str> = read.messages.iter().map(|m| m.text.as_str()).collect();
        assert_eq!(
            texts,
            [format!("question {i}"), format!("answer {i}")],
            "{how}"
        );
        assert!(read.messages.iter().all(|m| m.session_id == id), "{how}");
        let draft = store.latest_draft(id).unwrap().expect(how);
        assert_eq!(draft.content, format!("draft {i}"), "{how}");
    }
    let listed: Vec<Uuid> = store
        .list_sessions(Page::default())
        .unwrap()
        .into_iter()
        .map(|s| s.id)
        .collect();
    let mut expected: Vec<Uuid> = SPELLINGS.iter().rev().map(|(_, s)| canonical(s)).collect();
    assert_eq!(listed, expected, "newest updated first, by canonical id");
    let mut sampled = store.sample_session_ids(100).unwrap();
    sampled.sort();
    expected.sort();
    assert_eq!(sampled, expected);

    // Writes to every legacy session: found by UUID, children named as the session's row
    // spells it (SQLite's foreign key, and the legacy service, compare the text).
    for (i, (how, spelled)) in SPELLINGS.iter().enumerate() {
        let id = canonical(spelled);
        let m = store
            .append_message(id, Role::User, &format!("appended {i}"))
            .unwrap_or_else(|e| panic!("append to {how} session {spelled}: {e}"));
        assert_eq!(m.session_id, id);
        store
            .append_messages(id, &[(Role::Assistant, "turn")], Some("turned"))
            .unwrap();
        let s = store
            .update_summary(id, &format!("new summary {i}"))
            .unwrap();
        assert_eq!(s.id, id);
        let d = store.save_draft(id, &format!("new draft {i}")).unwrap();
        assert_eq!(d.session_id, id);
        let read = store.get_session(id).unwrap();
        assert_eq!(read.messages.len(), 4, "{how}");
        assert_eq!(read.session.summary, format!("new summary {i}"));
        assert_eq!(
            store.latest_draft(id).unwrap().unwrap().content,
            format!("new draft {i}")
        );
        // The legacy service's own reads by its spelling see the new rows.
        let theirs = query(
            &legacy.path,
            &format!("SELECT text AS row FROM messages WHERE session_id = '{spelled}' ORDER BY id"),
        );
        assert!(
            theirs.contains(&format!("appended {i}")),
            "{how}: {theirs:?}"
        );
        let drafts = query(
            &legacy.path,
            &format!("SELECT content AS row FROM drafts WHERE session_id = '{spelled}'"),
        );
        assert!(
            drafts.contains(&format!("new draft {i}")),
            "{how}: {drafts:?}"
        );
    }
    let ids_now = query(
        &legacy.path,
        "SELECT id AS row FROM sessions ORDER BY rowid",
    );
    let ids_before: Vec<&str> = SPELLINGS.iter().map(|(_, s)| *s).collect();
    assert_eq!(ids_now, ids_before, "no legacy id was rewritten");

    // New sessions keep the canonical form.
    let new = store.start_session().unwrap();
    let stored = query(
        &legacy.path,
        &format!(
            "SELECT id AS row FROM sessions WHERE id = '{}'",
            new.id.hyphenated()
        ),
    );
    assert_eq!(stored.len(), 1);
    assert!(matches!(
        store.get_session(Uuid::now_v7()),
        Err(Error::NotFound { .. })
    ));
    assert!(matches!(
        store.save_draft(Uuid::now_v7(), "x"),
        Err(Error::NotFound { .. })
    ));
    assert!(matches!(
        store.append_message(Uuid::now_v7(), Role::User, "x"),
        Err(Error::NotFound { .. })
    ));
}

#[test]
fn one_uuid_stored_twice_in_different_spellings_is_corrupt_not_merged() {
    let id = "70000000-0000-4000-8000-000000000001";
    let hex = "70000000000040008000000000000001";
    let legacy = Legacy::new(&format!(
        "INSERT INTO sessions VALUES ('{id}', '2025-01-01 10:00:00', '2025-01-01 10:00:00', 'a');
         INSERT INTO sessions VALUES ('{hex}', '2025-01-01 10:00:00', '2025-01-01 10:00:00', 'b');
         INSERT INTO messages (session_id, role, text, created_at) VALUES ('{id}', 'user', 'hi', '2025-01-01 10:00:00');"
    ));
    let store = legacy.store();
    let before = dump(&legacy.path);
    let id: Uuid = id.parse().unwrap();
    for result in [
        store.get_session(id).map(|_| ()),
        store.append_message(id, Role::User, "x").map(|_| ()),
        store.save_draft(id, "x").map(|_| ()),
    ] {
        match result {
            Err(Error::Corrupt { what, reason }) => {
                assert!(what.contains(&id.to_string()), "{what}");
                assert!(reason.contains("spelled differently"), "{reason}");
            }
            other => panic!("expected Corrupt, got {other:?}"),
        }
    }
    assert_eq!(dump(&legacy.path), before, "a refused write left nothing");
    let check = migrate::check(&legacy.path).unwrap();
    assert_eq!(check.rejects.len(), 3, "{:?}", check.rejects);
}

#[test]
fn a_uuid_stored_as_a_16_byte_blob_is_refused_with_the_reason() {
    let id = Uuid::now_v7();
    let blob: String = id.as_bytes().iter().map(|b| format!("{b:02x}")).collect();
    let legacy = Legacy::new(&format!(
        "INSERT INTO sessions VALUES (x'{blob}', '2025-01-01 10:00:00', '2025-01-01 10:00:00', 'a');"
    ));
    let check = migrate::check(&legacy.path).unwrap();
    assert_eq!(check.rejects.len(), 1, "{:?}", check.rejects);
    assert!(
        check.rejects[0].reason.contains("BLOB"),
        "{}",
        check.rejects[0]
    );
    let store = legacy.store();
    assert!(matches!(store.get_session(id), Err(Error::NotFound { .. })));
    match store.list_sessions(Page::default()) {
        Err(Error::Corrupt { reason, .. }) => assert!(reason.contains("BLOB"), "{reason}"),
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

#[test]
fn compare_reads_every_spelling_after_a_copy() {
    let legacy = Legacy::new(&legacy_sql());
    let pg = common::PgDatabase::create();
    let url: DatabaseUrl = pg.url.parse().unwrap();
    let copied = migrate::copy(&legacy.path, &url, &Default::default()).unwrap();
    assert!(copied.tables.iter().all(|t| t.rejected == 0), "{copied:?}");
    let pg_store = Store::open(url.clone(), StoreConfig::default()).unwrap();
    // The legacy file as the old service left it (no indexes), then adopted by the store.
    for adopted in [false, true] {
        if adopted {
            drop(legacy.store());
        }
        let report =
            migrate::compare_file(&legacy.path, &pg_store, &Selection::Sample(100)).unwrap();
        assert!(
            report.is_equal(),
            "adopted {adopted}: {:?}",
            report.differences
        );
        assert_eq!(report.sessions, SPELLINGS.len());
        assert_eq!(report.messages, 2 * SPELLINGS.len());
        let named: Vec<Uuid> = SPELLINGS.iter().map(|(_, s)| canonical(s)).collect();
        let report =
            migrate::compare_file(&legacy.path, &pg_store, &Selection::Sessions(named)).unwrap();
        assert!(report.is_equal(), "{:?}", report.differences);
        assert_eq!(report.sessions, SPELLINGS.len());
    }
    // Store against store, both through get_session.
    let lite = legacy.store();
    let report = migrate::compare(&lite, &pg_store, &Selection::Sample(100)).unwrap();
    assert!(report.is_equal(), "{:?}", report.differences);
    assert_eq!(report.sessions, SPELLINGS.len());
}

/// The way back (PostgreSQL -> SQLite) finds and writes SQLite's sessions by key: a legacy
/// session changed on PostgreSQL after the switch is updated in place under its own
/// spelling, its new children name it that way, and a deleted one goes with its children.
#[test]
fn the_way_back_writes_legacy_sessions_under_their_own_spelling() {
    use interview_store::{maintenance, Backend};
    let legacy = Legacy::new(&legacy_sql());
    drop(legacy.store());
    let ids_before = query(
        &legacy.path,
        "SELECT id AS row FROM sessions ORDER BY rowid",
    );
    let db = common::PgDatabase::create();
    let url: DatabaseUrl = db.url.parse().unwrap();
    migrate::copy(&legacy.path, &url, &Default::default()).unwrap();
    let sqlite_url = DatabaseUrl::existing_sqlite(&legacy.path).unwrap();
    maintenance::pause(&mut maintenance::connect(&sqlite_url).unwrap()).unwrap();
    migrate::sync(&legacy.path, &url, &Default::default()).unwrap();
    migrate::switch(&legacy.path, &url, Backend::Postgres).unwrap();

    // On PostgreSQL: changes to the hex, hex upper and braced sessions, a new session,
    // and the upper-case session deleted (the store has no delete: SQL).
    let pg = Store::open(url.clone(), StoreConfig::default()).unwrap();
    let (hex, hex_upper, braced, upper, mixed) = (
        SPELLINGS[2].1,
        SPELLINGS[3].1,
        SPELLINGS[4].1,
        SPELLINGS[1].1,
        SPELLINGS[5].1,
    );
    pg.update_summary(canonical(hex), "changed on postgres")
        .unwrap();
    pg.append_message(canonical(hex_upper), Role::User, "answered on postgres")
        .unwrap();
    pg.save_draft(canonical(braced), "drafted on postgres")
        .unwrap();
    let new = pg.start_session().unwrap();
    pg.append_message(new.id, Role::Assistant, "welcome")
        .unwrap();
    let mut c = PgConnection::establish(&db.url).unwrap();
    diesel::connection::SimpleConnection::batch_execute(
        &mut c,
        &format!(
            "BEGIN; DELETE FROM messages WHERE session_id = '{0}'; DELETE FROM drafts WHERE session_id = '{0}';
             DELETE FROM sessions WHERE id = '{0}'; COMMIT;
             UPDATE messages SET text = 'edited on postgres' WHERE session_id = '{1}' AND text = 'question 5';",
            canonical(upper),
            canonical(mixed)
        ),
    )
    .unwrap();

    maintenance::pause(&mut maintenance::connect(&url).unwrap()).unwrap();
    migrate::rollback_sync(&legacy.path, &url).unwrap();

    let by_key = |table: &str, col: &str, id: &str| {
        query(
            &legacy.path,
            &format!(
                "SELECT {col} AS row FROM {table} WHERE {}{col}{} = '{}' ORDER BY id",
                SQLITE_UUID_KEY.0,
                SQLITE_UUID_KEY.1,
                canonical(id).simple()
            ),
        )
    };
    assert_eq!(
        by_key("sessions", "id", hex),
        [hex],
        "one row, in its own spelling"
    );
    assert_eq!(
        query(
            &legacy.path,
            &format!("SELECT summary AS row FROM sessions WHERE id = '{hex}'")
        ),
        ["changed on postgres"]
    );
    let theirs = query(
        &legacy.path,
        &format!("SELECT text AS row FROM messages WHERE session_id = '{hex_upper}' ORDER BY id"),
    );
    assert_eq!(theirs, ["question 3", "answer 3", "answered on postgres"]);
    let drafts = query(
        &legacy.path,
        &format!("SELECT content AS row FROM drafts WHERE session_id = '{braced}' ORDER BY id"),
    );
    assert_eq!(drafts, ["draft 4", "drafted on postgres"]);
    for id in [hex_upper, braced] {
        assert_eq!(by_key("sessions", "id", id), [id]);
        assert!(by_key("messages", "session_id", id).iter().all(|s| s == id));
        assert!(by_key("drafts", "session_id", id).iter().all(|s| s == id));
    }
    // A child already there, spelled unlike its session, keeps its spelling when written again.
    assert_eq!(
        query(
            &legacy.path,
            "SELECT session_id AS row FROM messages WHERE text = 'edited on postgres'"
        ),
        [mixed.to_lowercase()]
    );
    assert!(by_key("sessions", "id", upper).is_empty(), "deleted");
    assert!(by_key("messages", "session_id", upper).is_empty());
    assert!(by_key("drafts", "session_id", upper).is_empty());
    let mut expected: Vec<String> = ids_before.into_iter().filter(|s| s != upper).collect();
    expected.push(new.id.hyphenated().to_string());
    assert_eq!(
        query(
            &legacy.path,
            "SELECT id AS row FROM sessions ORDER BY rowid"
        ),
        expected,
        "no legacy id rewritten, the new session canonical"
    );
    let v = migrate::verify(&legacy.path, &url).unwrap();
    assert!(v.is_equal(), "{v:#?}");
    let lite = Store::connect(legacy.path.to_str().unwrap(), StoreConfig::default()).unwrap();
    assert_eq!(
        lite.get_session(canonical(hex)).unwrap().session.summary,
        "changed on postgres"
    );
    drop(lite);

    // The switch back.
    let back = migrate::switch(&legacy.path, &url, Backend::Sqlite).unwrap();
    assert_eq!(back.live, Backend::Sqlite);
}
