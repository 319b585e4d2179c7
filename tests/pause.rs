//! The write pause held by the database: every writer refused, in-flight writes waited
//! out, retired databases, and the migration tool's writes through the pause.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use common::TestDb;
use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Text};
use interview_store::{maintenance, Backend, Category, Error, Role};

const SESSION: &str = "0f5a7d8e-3b1c-4a2e-9f00-1234567890ab";

/// A plain connection of the backend's own driver, outside this crate: another writer.
enum Raw {
    Sqlite(SqliteConnection),
    Postgres(PgConnection),
}

impl Raw {
    fn open(db: &TestDb) -> Raw {
        match db.backend {
            Backend::Sqlite => {
                let path = db.url.strip_prefix("sqlite://").unwrap();
                let mut c = SqliteConnection::establish(path).unwrap();
                c.batch_execute("PRAGMA busy_timeout = 5000").unwrap();
                Raw::Sqlite(c)
            }
            Backend::Postgres => Raw::Postgres(PgConnection::establish(&db.url).unwrap()),
        }
    }

    fn exec(&mut self, sql: &str) -> QueryResult<()> {
        match self {
            Raw::Sqlite(c) => c.batch_execute(sql),
            Raw::Postgres(c) => c.batch_execute(sql),
        }
    }

    fn count(&mut self, table: &str) -> i64 {
        #[derive(QueryableByName)]
        struct N {
            #[diesel(sql_type = BigInt)]
            n: i64,
        }
        let q = diesel::sql_query(format!("SELECT count(*) AS n FROM {table}"));
        match self {
            Raw::Sqlite(c) => q.get_result::<N>(c),
            Raw::Postgres(c) => q.get_result::<N>(c),
        }
        .unwrap()
        .n
    }

    fn summary(&mut self) -> String {
        #[derive(QueryableByName)]
        struct S {
            #[diesel(sql_type = Text)]
            summary: String,
        }
        let q = diesel::sql_query(format!(
            "SELECT summary FROM sessions WHERE id = '{SESSION}'"
        ));
        match self {
            Raw::Sqlite(c) => q.get_result::<S>(c),
            Raw::Postgres(c) => q.get_result::<S>(c),
        }
        .unwrap()
        .summary
    }
}

/// An insert, an update and a delete on each table, as another program would send them.
fn raw_writes() -> Vec<String> {
    let t = "'2025-03-01T12:00:00.000000Z'";
    let other = "7c9e6679-7425-40de-944b-e07fc1f90ae7";
    vec![
        format!("INSERT INTO sessions (id, created_at, updated_at, summary) VALUES ('{other}', {t}, {t}, '')"),
        format!("INSERT INTO messages (session_id, role, text, created_at) VALUES ('{SESSION}', 'user', 'x', {t})"),
        format!("INSERT INTO drafts (session_id, content, created_at) VALUES ('{SESSION}', 'x', {t})"),
        format!("UPDATE sessions SET summary = 'changed' WHERE id = '{SESSION}'"),
        "UPDATE messages SET text = 'changed'".into(),
        "UPDATE drafts SET content = 'changed'".into(),
        "DELETE FROM drafts".into(),
        "DELETE FROM messages".into(),
        format!("DELETE FROM sessions WHERE id = '{SESSION}'"),
    ]
}

fn seed(db: &TestDb) -> uuid::Uuid {
    let id: uuid::Uuid = SESSION.parse().unwrap();
    common::seed_identical(&db.store(), &[id]);
    id
}

/// Every write of the store and of a raw connection is refused with `expected`'s error.
fn assert_all_writes_refused(
    db: &TestDb,
    store: &interview_store::Store,
    expected: fn(&Error) -> bool,
) {
    let id: uuid::Uuid = SESSION.parse().unwrap();
    for err in [
        store.start_session().unwrap_err(),
        store.append_message(id, Role::User, "during").unwrap_err(),
        store.update_summary(id, "during").unwrap_err(),
        store.save_draft(id, "during").unwrap_err(),
    ] {
        assert!(expected(&err), "{err}");
        assert_eq!(err.category(), Category::ReadOnly);
    }
    let mut raw = Raw::open(db);
    for sql in raw_writes() {
        let err = raw.exec(&sql).expect_err(&sql);
        // Recognised whoever wrote: the raw driver's error becomes the crate's.
        let err = Error::from(err);
        assert!(expected(&err), "{sql}: {err}");
    }
    assert_eq!(raw.count("sessions"), 1);
    assert_eq!(raw.count("messages"), 3);
    assert_eq!(raw.count("drafts"), 1);
    assert_eq!(raw.summary(), "summary");
}

backend_test!(
    a_pause_set_through_one_store_refuses_every_writer_and_survives_reopening,
    |db: &TestDb| {
        let id = seed(db);
        let pausing = db.store();
        // A second pool on the same database: stands for a second process.
        let other = db.store();
        assert!(!other.is_read_only().unwrap());
        pausing.set_read_only(true).unwrap();
        assert!(
            other.is_read_only().unwrap(),
            "the other process sees the database's flag"
        );
        assert_all_writes_refused(db, &other, |e| matches!(e, Error::ReadOnly));
        assert_all_writes_refused(db, &pausing, |e| matches!(e, Error::ReadOnly));

        // Reads go on.
        assert_eq!(other.get_session(id).unwrap().messages.len(), 3);
        assert!(other.latest_draft(id).unwrap().is_some());
        let h = other.health();
        assert!(h.db_up && h.read_only && h.retired_to.is_none(), "{h:?}");
        let m = other.maintenance().unwrap();
        assert!(m.paused && m.changed_at.is_some(), "{m:?}");

        // Survives reopening: a new store (a restarted process) is still paused.
        drop((pausing, other));
        let reopened = db.store();
        assert!(reopened.is_read_only().unwrap());
        assert!(matches!(reopened.start_session(), Err(Error::ReadOnly)));

        // Resuming lets every writer through again.
        reopened.set_read_only(false).unwrap();
        reopened.append_message(id, Role::User, "after").unwrap();
        let mut raw = Raw::open(db);
        for sql in raw_writes() {
            raw.exec(&sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
        }
        assert!(!db.store().health().read_only);
    }
);

backend_test!(
    pausing_waits_for_a_write_in_flight_and_keeps_it,
    |db: &TestDb| {
        seed(db);
        let store = db.store();
        let committing = Arc::new(AtomicBool::new(false));
        let (inserted_tx, inserted_rx) = mpsc::channel();
        let mut raw = Raw::open(db);
        let flag = committing.clone();
        let writer = std::thread::spawn(move || {
            let begin = match raw {
                Raw::Sqlite(_) => "BEGIN IMMEDIATE",
                Raw::Postgres(_) => "BEGIN",
            };
            raw.exec(begin).unwrap();
            raw.exec(&format!(
                "INSERT INTO messages (session_id, role, text, created_at) \
             VALUES ('{SESSION}', 'user', 'in flight', '2025-03-01T12:00:00.000000Z')"
            ))
            .unwrap();
            inserted_tx.send(()).unwrap();
            // Long enough that a pause which does not wait returns well before the commit.
            std::thread::sleep(Duration::from_millis(500));
            flag.store(true, Ordering::SeqCst);
            raw.exec("COMMIT")
        });
        inserted_rx.recv().unwrap();
        store.set_read_only(true).unwrap();
        assert!(
            committing.load(Ordering::SeqCst),
            "the pause returned while a write was still open"
        );
        writer.join().unwrap().expect("the write in flight commits");
        assert_eq!(
            store.counts().unwrap().messages,
            4,
            "the write in flight is kept"
        );
        assert!(matches!(store.start_session(), Err(Error::ReadOnly)));
    }
);

const MOVED_TO: &str = "postgres://app:secret@db.internal:5432/interview";

fn is_retired(e: &Error) -> bool {
    matches!(e, Error::Retired { moved_to } if moved_to == "postgres://app:***@db.internal:5432/interview")
        && e.to_string().contains("db.internal")
        && !e.to_string().contains("secret")
}

/// The SQLite triggers' text (empty on PostgreSQL, whose triggers read the row).
fn sqlite_triggers(store: &interview_store::Store) -> Vec<String> {
    #[derive(QueryableByName)]
    struct Sql {
        #[diesel(sql_type = Text)]
        sql: String,
    }
    if store.backend() != Backend::Sqlite {
        return Vec::new();
    }
    store
        .with_connection(|c| {
            Ok(diesel::sql_query(
                "SELECT sql FROM sqlite_master WHERE type = 'trigger' AND name LIKE 'interview_pause_%' ORDER BY name",
            )
            .load::<Sql>(c)?)
        })
        .unwrap()
        .into_iter()
        .map(|s| s.sql)
        .collect()
}

backend_test!(
    a_retired_database_reads_refuses_writes_and_resume_naming_where_the_data_went,
    |db: &TestDb| {
        let id = seed(db);
        let store = db.store();
        let migrated_triggers = sqlite_triggers(&store);
        assert_eq!(
            migrated_triggers.len(),
            if db.backend == Backend::Sqlite { 9 } else { 0 }
        );
        store
            .with_connection(|c| maintenance::retire(c, MOVED_TO))
            .unwrap();

        // Opened afresh, as a server would be: it opens and reads, and refuses every write.
        let reopened = db.store();
        assert_eq!(reopened.get_session(id).unwrap().messages.len(), 3);
        let m = reopened.maintenance().unwrap();
        assert!(m.paused);
        assert_eq!(
            m.retired_to.as_deref(),
            Some("postgres://app:***@db.internal:5432/interview")
        );
        assert!(reopened.health().retired_to.is_some());
        assert_all_writes_refused(db, &reopened, is_retired);

        // Resuming is refused, and says where the data is and what to run instead.
        for err in [
            reopened.set_read_only(false).unwrap_err(),
            reopened.with_connection(maintenance::resume).unwrap_err(),
        ] {
            assert!(is_retired(&err), "{err}");
            assert!(err.to_string().contains("migrate switch"), "{err}");
        }
        assert!(reopened.is_read_only().unwrap());

        // The migration tool's own writes pass; everyone else stays refused meanwhile.
        let other = db.store();
        let written = reopened
            .with_connection(|c| {
                maintenance::write_while_paused(c, |c| {
                    diesel::sql_query(format!(
                        "UPDATE sessions SET summary = 'caught up' WHERE id = '{SESSION}'"
                    ))
                    .execute(c)?;
                    let seen_outside = other.maintenance()?;
                    assert!(seen_outside.paused && seen_outside.retired_to.is_some());
                    if db.backend == Backend::Postgres {
                        // SQLite's other writers queue behind this transaction instead.
                        assert!(is_retired(&other.start_session().unwrap_err()));
                    }
                    Ok(7)
                })
            })
            .unwrap();
        assert_eq!(written, 7);
        assert_eq!(other.get_session(id).unwrap().session.summary, "caught up");
        assert!(is_retired(&other.update_summary(id, "x").unwrap_err()));
        assert!(other.maintenance().unwrap().paused, "the flag is back");

        // A failing catch-up leaves nothing behind, the flag included.
        let err = reopened
            .with_connection(|c| {
                maintenance::write_while_paused(c, |c| {
                    diesel::sql_query(format!(
                        "UPDATE sessions SET summary = 'lost' WHERE id = '{SESSION}'"
                    ))
                    .execute(c)?;
                    Err::<(), _>(Error::invalid("test", "fails on purpose"))
                })
            })
            .unwrap_err();
        assert_eq!(err.category(), Category::Input);
        assert_eq!(other.get_session(id).unwrap().session.summary, "caught up");
        assert!(is_retired(&other.start_session().unwrap_err()));

        // Only making it live again (the switch's last step) lets writes through.
        store.with_connection(maintenance::make_live).unwrap();
        assert_eq!(
            sqlite_triggers(&store),
            migrated_triggers,
            "the triggers are the migration's again"
        );
        let m = other.maintenance().unwrap();
        assert!(!m.paused && m.retired_to.is_none(), "{m:?}");
        other.append_message(id, Role::User, "live again").unwrap();
        Raw::open(db)
            .exec(&format!(
                "UPDATE sessions SET summary = 'raw' WHERE id = '{SESSION}'"
            ))
            .unwrap();
        // And a pause after that says "paused", not "retired".
        other.set_read_only(true).unwrap();
        let err = Error::from(Raw::open(db).exec("DELETE FROM drafts").unwrap_err());
        assert!(matches!(err, Error::ReadOnly), "{err}");
    }
);

backend_test!(
    write_while_paused_on_a_live_database_is_a_plain_transaction,
    |db: &TestDb| {
        let id = seed(db);
        let store = db.store();
        store
            .with_connection(|c| {
                maintenance::write_while_paused(c, |c| {
                    // A transaction inside is a savepoint of the same transaction.
                    c.transaction::<_, Error, _>(|c| {
                        diesel::sql_query("DELETE FROM drafts").execute(c)?;
                        Ok(())
                    })
                })
            })
            .unwrap();
        assert!(!store.is_read_only().unwrap());
        assert!(store.latest_draft(id).unwrap().is_none());
    }
);

#[test]
fn maintenance_connect_refuses_a_missing_sqlite_file_and_creates_none() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("missing.db");
    let url = interview_store::DatabaseUrl::sqlite(path.display().to_string());
    let Err(err) = maintenance::connect(&url) else {
        panic!("connected to a missing file")
    };
    assert!(err.to_string().contains("no such SQLite file"), "{err}");
    assert!(!path.exists());
}
