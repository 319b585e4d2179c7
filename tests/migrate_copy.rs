//! The bulk copy, preflight, verify and sync from a legacy SQLite file into PostgreSQL.

mod common;

use common::legacy::{clean_sql, Legacy};

use std::path::Path;

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use interview_store::connection::DatabaseUrl;
use interview_store::error::Refusal;
use interview_store::migrate::{
    self, check, copy, status, sync, verify, CopyOptions, Reject, SyncOptions, Table,
};
use interview_store::{Error, Page, Role, Store, StoreConfig};

fn pg() -> (common::PgDatabase, DatabaseUrl) {
    let db = common::PgDatabase::create();
    let url: DatabaseUrl = db.url.parse().unwrap();
    (db, url)
}

fn pg_store(url: &DatabaseUrl) -> Store {
    Store::open(url.clone(), StoreConfig::default()).unwrap()
}

fn lenient(dir: &Path) -> CopyOptions {
    CopyOptions {
        reject_file: Some(dir.join("rejects.jsonl")),
        ..Default::default()
    }
}

const S1: &str = "0190a5f0-0000-7000-8000-000000000001";
const S2_UPPER: &str = "A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A12";
const S3_BRACED: &str = "{b0eebc99-9c0b-4ef8-bb6d-6bb9bd380a13}";
const DUP_LOWER: &str = "c0eebc99-9c0b-4ef8-bb6d-6bb9bd380a14";
const DUP_UPPER: &str = "C0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A14";
const BAD_TS: &str = "d0eebc99-9c0b-4ef8-bb6d-6bb9bd380a15";

/// One case per normalisation rule.
fn messy() -> Legacy {
    Legacy::new(&format!(
        "
        INSERT INTO sessions VALUES ('{S1}', '2025-03-01T12:34:56.123456Z', '2025-03-01T12:34:56.123456Z', 'fine');
        INSERT INTO sessions VALUES ('{S2_UPPER}', '2025-03-01 14:34:56.1234567+02:00', '2025-03-01t12:00:00z', NULL);
        INSERT INTO sessions VALUES ('{S3_BRACED}', '2025-03-01T12:00:00+0530', '2025-03-01T12:00:00', '');
        INSERT INTO sessions VALUES ('{DUP_LOWER}', '2025-03-01T00:00:00Z', '2025-03-01T00:00:00Z', 'a');
        INSERT INTO sessions VALUES ('{DUP_UPPER}', '2025-03-01T00:00:00Z', '2025-03-01T00:00:00Z', 'b');
        INSERT INTO sessions VALUES ('{BAD_TS}', 1740832496, '2025-03-01T00:00:00Z', '');
        INSERT INTO sessions VALUES ('e0eebc99-9c0b-4ef8-bb6d-6bb9bd380a16', '2025-02-30T00:00:00Z', '2025-03-01T00:00:00Z', '');
        INSERT INTO sessions VALUES ('f0eebc99-9c0b-4ef8-bb6d-6bb9bd380a17', '2025-03-01T00:00:00 UTC', '2025-03-01T00:00:00Z', '');
        INSERT INTO sessions VALUES ('f1eebc99-9c0b-4ef8-bb6d-6bb9bd380a18', '', '2025-03-01T00:00:00Z', '');
        INSERT INTO sessions VALUES ('f2eebc99-9c0b-4ef8-bb6d-6bb9bd380a19', '2025-03-01T00:00:00Z', NULL, '');
        INSERT INTO sessions VALUES ('not-a-uuid', '2025-03-01T00:00:00Z', '2025-03-01T00:00:00Z', '');
        INSERT INTO sessions VALUES ('f3eebc99-9c0b-4ef8-bb6d-6bb9bd380a1a', '2025-03-01T00:00:00Z', '2025-03-01T00:00:00Z', CAST(X'610062' AS TEXT));
        INSERT INTO messages VALUES (1, '{S1}', 'assistant', 'hello', '2025-03-01T12:00:00Z');
        INSERT INTO messages VALUES (2, lower('{S2_UPPER}'), 'user', 'matched by value', '2025-03-01T12:00:00Z');
        INSERT INTO messages VALUES (3, '{S1}', 'User', 'x', '2025-03-01T12:00:00Z');
        INSERT INTO messages VALUES (4, '{S1}', 'system', 'x', '2025-03-01T12:00:00Z');
        INSERT INTO messages VALUES (5, '{S1}', 'user', NULL, '2025-03-01T12:00:00Z');
        INSERT INTO messages VALUES (6, '{S1}', 'user', '', '2025-03-01T12:00:00Z');
        INSERT INTO messages VALUES (7, '{S1}', 'user', CAST(X'C328' AS TEXT), '2025-03-01T12:00:00Z');
        INSERT INTO messages VALUES (8, '99999999-9c0b-4ef8-bb6d-6bb9bd380a12', 'user', 'orphan', '2025-03-01T12:00:00Z');
        INSERT INTO messages VALUES (9, '{DUP_LOWER}', 'user', 'x', '2025-03-01T12:00:00Z');
        INSERT INTO messages VALUES (10, '{BAD_TS}', 'user', 'x', '2025-03-01T12:00:00Z');
        INSERT INTO messages VALUES (11, '{S1}', 'user', 'offset', '2025-03-01T12:00:00.5-01:00');
        INSERT INTO drafts VALUES (1, 'b0eebc99-9c0b-4ef8-bb6d-6bb9bd380a13', 'draft', '2025-03-01T12:00:00Z');
        INSERT INTO drafts VALUES (2, '{S1}', NULL, '2025-03-01T12:00:00Z');
        INSERT INTO drafts VALUES (3, '99999999-9c0b-4ef8-bb6d-6bb9bd380a12', 'orphan', '2025-03-01T12:00:00Z');
        INSERT INTO drafts VALUES (4, '{S1}', '', '2025-03-01T12:00:00Z');
        "
    ))
}

/// (table, id, column, a word of the reason) of every invalid row of [`messy`].
fn expected_rejects() -> Vec<(&'static str, String, &'static str, &'static str)> {
    vec![
        ("sessions", DUP_LOWER.into(), "id", "2 sessions"),
        ("sessions", DUP_UPPER.into(), "id", "2 sessions"),
        ("sessions", BAD_TS.into(), "created_at", "timestamp"),
        (
            "sessions",
            "e0eebc99-9c0b-4ef8-bb6d-6bb9bd380a16".into(),
            "created_at",
            "timestamp",
        ),
        (
            "sessions",
            "f0eebc99-9c0b-4ef8-bb6d-6bb9bd380a17".into(),
            "created_at",
            "timestamp",
        ),
        (
            "sessions",
            "f1eebc99-9c0b-4ef8-bb6d-6bb9bd380a18".into(),
            "created_at",
            "timestamp",
        ),
        (
            "sessions",
            "f2eebc99-9c0b-4ef8-bb6d-6bb9bd380a19".into(),
            "updated_at",
            "NULL",
        ),
        ("sessions", "not-a-uuid".into(), "id", "not a UUID"),
        (
            "sessions",
            "f3eebc99-9c0b-4ef8-bb6d-6bb9bd380a1a".into(),
            "summary",
            "NUL",
        ),
        ("messages", "3".into(), "role", "neither"),
        ("messages", "4".into(), "role", "neither"),
        ("messages", "5".into(), "text", "NULL"),
        ("messages", "7".into(), "text", "UTF-8"),
        ("messages", "8".into(), "session_id", "does not exist"),
        ("messages", "9".into(), "session_id", "invalid"),
        ("messages", "10".into(), "session_id", "invalid"),
        ("drafts", "2".into(), "content", "NULL"),
        ("drafts", "3".into(), "session_id", "does not exist"),
    ]
}

fn assert_rejects(found: &[Reject]) {
    let mut want = expected_rejects();
    let mut got: Vec<&Reject> = found.iter().collect();
    want.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
    got.sort_by(|a, b| (&a.table, &a.id).cmp(&(&b.table, &b.id)));
    assert_eq!(got.len(), want.len(), "{got:#?}");
    for (g, w) in got.iter().zip(&want) {
        assert_eq!(
            (g.table.as_str(), g.id.as_str(), g.column.as_str()),
            (w.0, w.1.as_str(), w.2),
            "{g:?}"
        );
        assert!(g.reason.contains(w.3), "{g:?} should say {:?}", w.3);
    }
}

#[test]
fn the_preflight_names_every_invalid_row() {
    let src = messy();
    let report = check(&src.path).unwrap();
    assert_eq!(report.rows, [12, 11, 4]);
    assert_eq!(report.null_summaries, 1);
    assert!(report.wal);
    assert_rejects(&report.rejects);
    let sample = report.rejects.iter().find(|r| r.id == BAD_TS).unwrap();
    assert_eq!(sample.value.as_deref(), Some("1740832496"));
}

#[test]
fn a_strict_copy_loads_nothing_from_a_messy_source() {
    let src = messy();
    let (_db, url) = pg();
    let err = copy(&src.path, &url, &CopyOptions::default()).unwrap_err();
    match &err {
        Error::InvalidSource { count, rejects } => {
            assert_eq!(*count, expected_rejects().len());
            assert_rejects(rejects);
        }
        other => panic!("expected InvalidSource, got {other:?}"),
    }
    let counts = pg_store(&url).counts().unwrap();
    assert_eq!((counts.sessions, counts.messages, counts.drafts), (0, 0, 0));
    assert!(status(&url).unwrap().state.is_none());
}

#[test]
fn a_lenient_copy_loads_every_valid_row_normalised_and_records_the_rest() {
    let src = messy();
    let (_db, url) = pg();
    let dir = tempfile::tempdir().unwrap();
    let opts = lenient(dir.path());
    let report = copy(&src.path, &url, &opts).unwrap();
    assert_eq!(
        report.tables.map(|t| (t.copied, t.rejected)),
        [(3, 9), (4, 7), (2, 2)]
    );
    assert_eq!(report.null_summaries, 1);

    // The reject file: one JSON line per invalid row.
    let lines: Vec<Reject> = std::fs::read_to_string(opts.reject_file.as_ref().unwrap())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_rejects(&lines);
    assert_rejects(&status(&url).unwrap().rejects);

    // Normalised values, read back through the repository.
    let store = pg_store(&url);
    let s2: uuid::Uuid = S2_UPPER.parse().unwrap();
    let s = store.get_session(s2).unwrap();
    assert_eq!(
        s.session.created_at.to_rfc3339(),
        "2025-03-01T12:34:56.123457+00:00"
    );
    assert_eq!(
        s.session.updated_at.to_rfc3339(),
        "2025-03-01T12:00:00+00:00"
    );
    assert_eq!(s.session.summary, "");
    assert_eq!(
        s.messages.len(),
        1,
        "child matched by UUID value, not by case"
    );
    let s3: uuid::Uuid = S3_BRACED.parse().unwrap();
    assert_eq!(
        store
            .get_session(s3)
            .unwrap()
            .session
            .created_at
            .to_rfc3339(),
        "2025-03-01T06:30:00+00:00"
    );
    assert_eq!(store.latest_draft(s3).unwrap().unwrap().content, "draft");
    let s1 = store.get_session(S1.parse().unwrap()).unwrap();
    let texts: Vec<(i64, &str)> = s1
        .messages
        .iter()
        .map(|m| (m.id, m.text.as_str()))
        .collect();
    assert_eq!(texts, [(1, "hello"), (6, ""), (11, "offset")]);
    assert_eq!(
        s1.messages[2].created_at.to_rfc3339(),
        "2025-03-01T13:00:00.500+00:00"
    );
    assert_eq!(
        store
            .latest_draft(S1.parse().unwrap())
            .unwrap()
            .unwrap()
            .content,
        ""
    );

    // Rejected rows are accounted for, not differences.
    let v = verify(&src.path, &url).unwrap();
    assert!(v.is_equal(), "{v:#?}");
    assert_eq!(
        (v.sessions.rejected, v.messages.rejected, v.drafts.rejected),
        (9, 7, 2)
    );
    assert_eq!(v.sessions.sqlite_checksum, v.sessions.postgres_checksum);
}

#[test]
fn copy_refuses_tables_holding_rows_it_did_not_copy_unless_truncate() {
    let src = Legacy::new(&clean_sql(3, 2));
    let (_db, url) = pg();
    let store = pg_store(&url);
    store.migrate().unwrap();
    let foreign = store.start_session().unwrap();
    let err = copy(&src.path, &url, &CopyOptions::default()).unwrap_err();
    assert_eq!(err.refusal(), Some(Refusal::Foreign), "{err:?}");
    assert!(
        err.to_string().contains("sessions already holds 1 rows"),
        "{err}"
    );
    assert!(store.get_session(foreign.id).is_ok(), "nothing touched");

    // --truncate without --yes only says what it would delete.
    let unconfirmed = CopyOptions {
        truncate: true,
        ..Default::default()
    };
    let err = copy(&src.path, &url, &unconfirmed).unwrap_err();
    assert_eq!(err.refusal(), Some(Refusal::Unconfirmed), "{err:?}");
    assert!(
        err.to_string()
            .contains("sessions 1 rows, messages 0 rows, drafts 0 rows"),
        "{err}"
    );
    assert!(store.get_session(foreign.id).is_ok(), "nothing deleted");

    let report = copy(
        &src.path,
        &url,
        &CopyOptions {
            truncate: true,
            confirmed: true,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(report.tables[0].copied, 3);
    assert!(store.get_session(foreign.id).is_err());
    assert!(verify(&src.path, &url).unwrap().is_equal());
}

#[test]
fn a_copy_killed_at_any_batch_finishes_on_the_next_run_with_no_gaps_or_duplicates() {
    let src = Legacy::new(&clean_sql(12, 5));
    // 12 sessions, 60 messages, 12 drafts in batches of 7: 2 + 9 + 2 = 13 batches.
    for stop_after in [1usize, 2, 5, 11, 13] {
        let (_db, url) = pg();
        let opts = CopyOptions {
            batch_size: 7,
            fail_after_batches: Some(stop_after as u64),
            ..Default::default()
        };
        let err = copy(&src.path, &url, &opts).unwrap_err();
        assert!(err.to_string().contains("fault injected"), "{err}");
        let before = status(&url).unwrap();
        assert_eq!(before.state.as_ref().unwrap().phase, "copying");
        let done: i64 = before.tables.iter().map(|t| t.rows_copied).sum();
        assert_eq!(
            done as u64,
            committed_rows(stop_after),
            "stop at {stop_after}"
        );

        let report = copy(
            &src.path,
            &url,
            &CopyOptions {
                batch_size: 7,
                ..Default::default()
            },
        )
        .unwrap();
        assert!(report.resumed);
        assert_eq!(
            report.tables.map(|t| t.copied),
            [12, 60, 12],
            "after stop at {stop_after}"
        );
        let v = verify(&src.path, &url).unwrap();
        assert!(v.is_equal(), "after stop at {stop_after}: {v:#?}");
        // The sequences moved past the copied ids.
        let store = pg_store(&url);
        let sid = "00000000-0000-4000-8000-000000000000".parse().unwrap();
        assert_eq!(
            store.append_message(sid, Role::User, "next").unwrap().id,
            61
        );
        assert_eq!(store.save_draft(sid, "next").unwrap().id, 13);
    }
}

/// Rows in the first `n` batches: sessions 7+5, messages 8×7+4, drafts 7+5.
fn committed_rows(n: usize) -> u64 {
    [7, 5, 7, 7, 7, 7, 7, 7, 7, 7, 4, 7, 5].iter().take(n).sum()
}

#[test]
fn a_copy_under_writes_takes_one_snapshot_and_verify_shows_exactly_the_later_rows() {
    let src = Legacy::new(&clean_sql(20, 10));
    let (_db, url) = pg();
    let writer_store = src.store();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        let store = writer_store.clone();
        std::thread::spawn(move || {
            let sessions = store
                .list_sessions(Page {
                    offset: 0,
                    limit: 20,
                })
                .unwrap();
            let mut written = Vec::new();
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) || written.len() < 20 {
                let s = &sessions[i % sessions.len()];
                written.push((
                    s.id,
                    store
                        .append_message(s.id, Role::User, &format!("live {i}"))
                        .unwrap()
                        .id,
                ));
                i += 1;
            }
            written
        })
    };
    std::thread::sleep(std::time::Duration::from_millis(30));
    let report = copy(
        &src.path,
        &url,
        &CopyOptions {
            batch_size: 13,
            ..Default::default()
        },
    )
    .unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let written = writer.join().unwrap();

    let mark = report.marks.message_id;
    let later: Vec<&(uuid::Uuid, i64)> = written.iter().filter(|(_, id)| *id > mark).collect();
    assert!(!later.is_empty());
    let changed: std::collections::HashSet<uuid::Uuid> = later.iter().map(|(s, _)| *s).collect();
    let v = verify(&src.path, &url).unwrap();
    // Each later row is missing on PostgreSQL, and `count(*)` differs too:
    // verify counts both sides on its own, apart from the row comparison.
    assert_eq!(v.messages.differences, later.len() as u64 + 1, "{v:#?}");
    assert_eq!(v.sessions.differences, changed.len() as u64, "{v:#?}");
    assert_eq!(v.sessions_with_message_differences, changed.len() as u64);
    assert_eq!(v.drafts.differences, 0);
    assert_eq!(
        (v.messages.sqlite_count, v.messages.postgres_count),
        (
            v.messages.postgres_count + later.len() as u64,
            v.messages.postgres_rows
        )
    );
    for d in v
        .differences
        .iter()
        .filter(|d| d.table == Table::Messages && d.id != "count(*)")
    {
        assert!(d.id.parse::<i64>().unwrap() > mark, "{d}");
        assert_eq!(d.detail, "missing on postgres");
    }

    // The sync brings exactly those rows over.
    let s = sync(&src.path, &url, &SyncOptions::default()).unwrap();
    assert_eq!(s.messages, later.len() as u64);
    assert_eq!(s.sessions_updated, changed.len() as u64);
    assert_eq!(s.sessions_inserted, 0);
    assert!(verify(&src.path, &url).unwrap().is_equal());
    let again = sync(&src.path, &url, &SyncOptions::default()).unwrap();
    assert_eq!(
        (
            again.messages,
            again.sessions_inserted,
            again.sessions_updated
        ),
        (0, 0, 0)
    );
}

#[test]
fn sync_copies_new_and_changed_rows_and_is_strict_about_invalid_ones() {
    let src = Legacy::new(&clean_sql(5, 4));
    let (_db, url) = pg();
    copy(&src.path, &url, &CopyOptions::default()).unwrap();
    let lite = src.store();
    let new = lite.start_session().unwrap();
    lite.append_message(new.id, Role::Assistant, "new session's first question")
        .unwrap();
    let old = lite
        .list_sessions(Page {
            offset: 0,
            limit: 10,
        })
        .unwrap()
        .last()
        .unwrap()
        .id;
    lite.update_summary(old, "changed").unwrap();
    lite.save_draft(old, "a new draft").unwrap();
    // One invalid row the service could not have written, planted by hand.
    src.exec("INSERT INTO messages (session_id, role, text, created_at) VALUES ('00000000-0000-4000-8000-000000000001', 'robot', 'x', '2025-01-01T00:00:00Z')");

    let pg_before = pg_store(&url).counts().unwrap();
    let err = sync(&src.path, &url, &SyncOptions::default()).unwrap_err();
    assert!(
        matches!(err, Error::InvalidSource { count: 1, .. }),
        "{err:?}"
    );
    assert_eq!(
        pg_store(&url).counts().unwrap(),
        pg_before,
        "a strict sync writes nothing"
    );

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("sync-rejects.jsonl");
    let report = sync(
        &src.path,
        &url,
        &SyncOptions {
            reject_file: Some(file.clone()),
        },
    )
    .unwrap();
    assert_eq!((report.sessions_inserted, report.sessions_updated), (1, 1));
    assert_eq!(
        (report.messages, report.drafts, report.rejected),
        (1, 1, [0, 1, 0])
    );
    assert!(std::fs::read_to_string(&file)
        .unwrap()
        .contains("\"column\":\"role\""));
    let v = verify(&src.path, &url).unwrap();
    assert!(v.is_equal(), "{v:#?}");
    assert_eq!(v.messages.rejected, 1);
    // The dual read agrees everywhere but on the session holding the planted row,
    // which the repository on SQLite cannot read and says so.
    let c = migrate::compare(&lite, &pg_store(&url), &migrate::Selection::Sample(100)).unwrap();
    assert_eq!(c.sessions, 5, "{c:#?}");
    assert_eq!(c.differences.len(), 1, "{c:#?}");
    assert_eq!(
        c.differences[0].session.to_string(),
        "00000000-0000-4000-8000-000000000001"
    );
    assert!(c.differences[0].what.contains("robot"), "{c:#?}");
}

#[test]
fn verify_catches_one_changed_character_and_rows_on_one_side() {
    let src = Legacy::new(&clean_sql(4, 3));
    let (_db, url) = pg();
    copy(&src.path, &url, &CopyOptions::default()).unwrap();
    let mut conn = PgConnection::establish(url.connection_string()).unwrap();
    conn.batch_execute(
        "UPDATE messages SET text = overlay(text placing 'X' from 3 for 1) WHERE id = 5; \
         UPDATE messages SET role = 'assistant' WHERE id = 8; \
         UPDATE messages SET created_at = created_at + interval '1 microsecond' WHERE id = 9; \
         UPDATE drafts SET content = content || ' ' WHERE id = 2; \
         UPDATE sessions SET summary = upper(summary) WHERE id = '00000000-0000-4000-8000-000000000003'",
    )
    .unwrap();
    conn.batch_execute("SELECT setval('drafts_id_seq', 100); INSERT INTO drafts (session_id, content, created_at) VALUES ('00000000-0000-4000-8000-000000000000', 'stray', now())").unwrap();
    let v = verify(&src.path, &url).unwrap();
    assert!(!v.is_equal());
    assert_eq!(
        (
            v.sessions.differences,
            v.messages.differences,
            v.drafts.differences
        ),
        // drafts: the stray row, the changed one, and `count(*)`.
        (1, 3, 3)
    );
    assert_ne!(v.messages.sqlite_checksum, v.messages.postgres_checksum);
    assert_ne!(v.sessions.sqlite_checksum, v.sessions.postgres_checksum);
    let listed: Vec<String> = v.differences.iter().map(ToString::to_string).collect();
    for expected in [
        "messages 8 role: values differ",
        "messages 9 created_at: values differ",
        "drafts 2 content: values differ",
        "sessions 00000000-0000-4000-8000-000000000003 summary: text differs",
    ] {
        assert!(
            listed.contains(&expected.to_string()),
            "{expected}: {listed:?}"
        );
    }
    assert!(
        listed.contains(&"messages 5 text: values differ".to_string()),
        "{listed:?}"
    );
    assert!(
        listed.contains(&"drafts 101 *: only on postgres".to_string()),
        "{listed:?}"
    );
}

/// The indexes and constraints of the public schema, with their definitions and validity.
fn schema_shape(url: &DatabaseUrl) -> Vec<(String, String)> {
    let mut conn = PgConnection::establish(url.connection_string()).unwrap();
    #[derive(QueryableByName, Debug)]
    struct Def {
        #[diesel(sql_type = diesel::sql_types::Text)]
        name: String,
        #[diesel(sql_type = diesel::sql_types::Text)]
        def: String,
    }
    diesel::sql_query(
        "SELECT indexname AS name, indexdef AS def FROM pg_indexes WHERE schemaname = 'public' \
         UNION ALL SELECT conname::text, pg_get_constraintdef(oid) || ' valid=' || convalidated FROM pg_constraint \
         WHERE connamespace = 'public'::regnamespace ORDER BY 1, 2",
    )
    .load::<Def>(&mut conn)
    .unwrap()
    .into_iter()
    .map(|d| (d.name, d.def))
    .collect()
}

#[test]
fn the_copy_leaves_the_schema_exactly_as_the_migrations_define_it() {
    let src = Legacy::new(&clean_sql(2, 2));
    let (_db, url) = pg();
    let (_fresh_db, fresh) = pg();
    pg_store(&fresh).migrate().unwrap();
    copy(&src.path, &url, &CopyOptions::default()).unwrap();
    assert_eq!(schema_shape(&url), schema_shape(&fresh));
}

#[test]
fn a_copy_stopped_during_the_rebuild_finishes_it_on_the_next_run() {
    let src = Legacy::new(&clean_sql(6, 4));
    let (_fresh_db, fresh) = pg();
    pg_store(&fresh).migrate().unwrap();
    let migrated = schema_shape(&fresh);
    // One connection stops at the step, the others finish their tables' chains: the next
    // run meets some indexes built, some keys valid, some not.
    for (step, connections) in [
        ("messages_pkey", 1),
        ("messages_session_id_id_idx", 3),
        ("drafts_pkey", 2),
        ("messages_session_id_fkey", 3),
        ("drafts_session_id_fkey", 1),
        ("sessions_updated_at_id_idx", 2),
    ] {
        let (_db, url) = pg();
        let stopped = CopyOptions {
            rebuild_connections: connections,
            fail_at_rebuild_step: Some(step.into()),
            ..Default::default()
        };
        let err = copy(&src.path, &url, &stopped).unwrap_err();
        assert!(err.to_string().contains("fault injected"), "{step}: {err}");
        assert_eq!(
            status(&url).unwrap().state.unwrap().phase,
            "copying",
            "{step}"
        );
        assert_ne!(schema_shape(&url), migrated, "{step}: nothing left to do");

        let report = copy(
            &src.path,
            &url,
            &CopyOptions {
                rebuild_connections: connections,
                ..Default::default()
            },
        )
        .unwrap();
        assert!(report.resumed, "{step}");
        assert_eq!(report.tables.map(|t| t.copied), [6, 24, 6], "{step}");
        assert_eq!(schema_shape(&url), migrated, "{step}");
        assert_eq!(status(&url).unwrap().state.unwrap().phase, "copied");
        let v = verify(&src.path, &url).unwrap();
        assert!(v.is_equal(), "{step}: {v:#?}");
    }
}

#[test]
fn the_binary_copy_reads_back_exactly_on_either_side_of_postgres_epoch() {
    // The copy encodes PostgreSQL's binary COPY format itself: timestamps are microseconds
    // from 2000-01-01, so values before it are negative; text goes as its UTF-8 bytes.
    let times = [
        (
            "1900-06-01T12:00:00.000001Z",
            "1900-06-01 12:00:00.000001+00",
        ),
        ("1970-01-01T00:00:00Z", "1970-01-01 00:00:00+00"),
        (
            "1999-12-31T23:59:59.999999Z",
            "1999-12-31 23:59:59.999999+00",
        ),
        ("2000-01-01T00:00:00Z", "2000-01-01 00:00:00+00"),
        (
            "2000-01-01T00:00:00.000001+00:00",
            "2000-01-01 00:00:00.000001+00",
        ),
        (
            "2025-03-01 14:34:56.123456+02:00",
            "2025-03-01 12:34:56.123456+00",
        ),
        (
            "9999-12-31T23:59:59.999999Z",
            "9999-12-31 23:59:59.999999+00",
        ),
    ];
    let texts = [
        "",
        "a",
        "é 日本語 🎉 \"q\" \\ tab\there\nline",
        &"x".repeat(70_000),
    ];
    let mut sql = String::from("BEGIN;");
    for (i, (stored, _)) in times.iter().enumerate() {
        let id = format!("00000000-0000-4000-8000-{i:012}");
        sql += &format!(
            "INSERT INTO sessions VALUES ('{id}', '{stored}', '{stored}', '{}');",
            texts[i % texts.len()]
        );
        sql += &format!(
            "INSERT INTO messages VALUES ({}, '{id}', 'user', '{}', '{stored}');",
            i + 1,
            texts[(i + 1) % texts.len()]
        );
        sql += &format!(
            "INSERT INTO drafts VALUES ({}, '{id}', '{}', '{stored}');",
            i + 1,
            texts[(i + 2) % texts.len()]
        );
    }
    let src = Legacy::new(&(sql + "COMMIT;"));
    let (_db, url) = pg();
    copy(&src.path, &url, &CopyOptions::default()).unwrap();
    let mut conn = PgConnection::establish(url.connection_string()).unwrap();
    #[derive(QueryableByName, Debug, PartialEq)]
    struct Back {
        #[diesel(sql_type = diesel::sql_types::Text)]
        created: String,
        #[diesel(sql_type = diesel::sql_types::Text)]
        summary: String,
        #[diesel(sql_type = diesel::sql_types::Text)]
        message: String,
        #[diesel(sql_type = diesel::sql_types::Text)]
        message_at: String,
        #[diesel(sql_type = diesel::sql_types::Text)]
        draft: String,
        #[diesel(sql_type = diesel::sql_types::Text)]
        draft_at: String,
    }
    conn.batch_execute("SET TIME ZONE 'UTC'").unwrap();
    let back = diesel::sql_query(
        "SELECT s.created_at::text AS created, s.summary, m.text AS message, \
         m.created_at::text AS message_at, d.content AS draft, d.created_at::text AS draft_at \
         FROM sessions s JOIN messages m ON m.session_id = s.id JOIN drafts d ON d.session_id = s.id \
         WHERE s.updated_at = s.created_at ORDER BY m.id",
    )
    .load::<Back>(&mut conn)
    .unwrap();
    let expected: Vec<Back> = times
        .iter()
        .enumerate()
        .map(|(i, (_, shown))| Back {
            created: shown.to_string(),
            summary: texts[i % texts.len()].to_string(),
            message: texts[(i + 1) % texts.len()].to_string(),
            message_at: shown.to_string(),
            draft: texts[(i + 2) % texts.len()].to_string(),
            draft_at: shown.to_string(),
        })
        .collect();
    assert_eq!(back, expected);
    assert!(verify(&src.path, &url).unwrap().is_equal());
}

#[test]
fn an_unreachable_postgres_is_named_with_its_password_masked() {
    let src = Legacy::new(&clean_sql(1, 1));
    let url: DatabaseUrl = "postgres://app:hunter2@127.0.0.1:1/interview"
        .parse()
        .unwrap();
    let err = copy(&src.path, &url, &CopyOptions::default()).unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, Error::Connect { .. }), "{err:?}");
    assert!(
        text.contains("postgres://app:***@127.0.0.1:1/interview"),
        "{text}"
    );
    assert!(!text.contains("hunter2"));
    let missing = copy(
        Path::new("/nonexistent/legacy.db"),
        &url,
        &CopyOptions::default(),
    );
    assert!(missing.is_err());
}

#[test]
fn verify_pairs_sessions_by_id_and_names_those_on_one_side_at_the_start_middle_and_end() {
    // Ids ...000 to ...019, plus two whose upper- and lower-case spellings put
    // SQLite's text order against the UUID order ('B…' sorts before 'a…' as text).
    let src = Legacy::new(&format!(
        "{}
        INSERT INTO sessions VALUES ('BBBBBBBB-0000-4000-8000-000000000001', '2025-01-01T00:00:00Z', '2025-01-01T00:00:00Z', 'upper');
        INSERT INTO sessions VALUES ('aaaaaaaa-0000-4000-8000-000000000001', '2025-01-01T00:00:00Z', '2025-01-01T00:00:00Z', 'lower');",
        clean_sql(20, 1)
    ));
    let (_db, url) = pg();
    copy(&src.path, &url, &CopyOptions::default()).unwrap();
    assert!(verify(&src.path, &url).unwrap().is_equal());

    let s = |n: usize| format!("00000000-0000-4000-8000-{n:012}");
    let (lite_start, pg_start) = (
        "00000000-0000-0000-0000-000000000001",
        "00000000-0000-0000-0000-000000000000",
    );
    // Between ...009 and ...010, as text and as UUID.
    let lite_middle = "00000000-0000-4000-8000-00000000000a";
    let (lite_end, pg_end) = (
        "ffffffff-ffff-4fff-bfff-ffffffffffff",
        "ffffffff-ffff-4fff-bfff-fffffffffffe",
    );
    let row = |id: &str| {
        format!("INSERT INTO sessions VALUES ('{id}', '2025-01-01T00:00:00Z', '2025-01-01T00:00:00Z', '');")
    };
    let (s5, s19) = (s(5), s(19));
    src.exec(&format!(
        "{}{}{}
         DELETE FROM messages WHERE session_id = '{s5}'; DELETE FROM drafts WHERE session_id = '{s5}';
         DELETE FROM sessions WHERE id = '{s5}';
         UPDATE sessions SET summary = 'edited' WHERE id = '{s19}';",
        row(lite_start),
        row(lite_middle),
        row(lite_end),
    ));
    let mut conn = PgConnection::establish(url.connection_string()).unwrap();
    conn.batch_execute(&format!(
        "INSERT INTO sessions VALUES ('{pg_start}', now(), now(), ''), ('{pg_end}', now(), now(), '')"
    ))
    .unwrap();

    let v = verify(&src.path, &url).unwrap();
    let listed: Vec<String> = v.differences.iter().map(ToString::to_string).collect();
    let mut sessions: Vec<&String> = listed
        .iter()
        .filter(|d| d.starts_with("sessions "))
        .collect();
    sessions.sort();
    assert_eq!(
        sessions,
        vec![
            &format!("sessions {pg_start} *: only on postgres"),
            &format!("sessions {lite_start} *: missing on postgres"),
            &format!("sessions {} *: only on postgres", s(5)),
            &format!("sessions {lite_middle} *: missing on postgres"),
            &format!("sessions {} summary: text differs", s(19)),
            &format!("sessions {pg_end} *: only on postgres"),
            &format!("sessions {lite_end} *: missing on postgres"),
        ],
        "{listed:#?}"
    );
    // Session 5's message and draft are now on PostgreSQL only.
    assert_eq!(
        (
            v.sessions.differences,
            v.messages.differences,
            v.drafts.differences
        ),
        // messages and drafts: the moved row and `count(*)` of each.
        (7, 2, 2),
        "{listed:#?}"
    );
    assert_eq!((v.sessions.sqlite_rows, v.sessions.postgres_rows), (24, 24));
    assert_ne!(v.sessions.sqlite_checksum, v.sessions.postgres_checksum);
}
