//! Latency of each repository operation on both backends, against the same
//! SQL on diesel's concrete connections (`<op>/<backend>/store` vs
//! `<op>/<backend>/concrete`), so the MultiConnection + pool overhead reads as a ratio.
//!
//! `cargo bench --all-features --bench repository`; `INTERVIEW_BENCH_SESSIONS`
//! shrinks the 10,000-session prefill for a quick run.

#[macro_use]
mod common;

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use interview_store::schema::{drafts, messages, sessions};
use interview_store::types::{uuid_key, DbTimestamp, DbUuid, DbUuidKey};
use interview_store::{
    timestamp, Draft, Message, Page, PoolConfig, Role, Session, SessionWithMessages, Store,
    StoreConfig,
};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use uuid::Uuid;

use common::{in_transaction, BenchDb, Concrete, StatementLog};

const SUMMARY: &str = "Strong on data pipelines; led a billing migration; clear on trade-offs \
                       between batch and streaming; could say more about testing.";
const DRAFT: &str = "I led the migration of our billing pipeline from a nightly batch to \
                     idempotent steps, which cut the run from four hours to forty minutes.";

type SessionTuple = (DbUuid, DbTimestamp, DbTimestamp, String);
type MessageTuple = (i64, DbUuid, String, String, DbTimestamp);
type DraftTuple = (i64, DbUuid, String, DbTimestamp);

fn session(r: SessionTuple) -> Session {
    Session {
        id: r.0 .0,
        created_at: r.1 .0,
        updated_at: r.2 .0,
        summary: r.3,
    }
}

fn message(r: MessageTuple) -> Message {
    Message {
        id: r.0,
        session_id: r.1 .0,
        role: r.2.parse().expect("stored role"),
        text: r.3,
        created_at: r.4 .0,
    }
}

/// The store's queries, written against a concrete connection: same SQL, no pool, no MultiConnection.
mod baseline {
    use super::*;

    pub fn start_session(conn: &mut Concrete) -> QueryResult<Session> {
        on_concrete!(conn, |c, begin| in_transaction(c, begin, |c| {
            let now = timestamp::now();
            let id = Uuid::now_v7();
            diesel::insert_into(sessions::table)
                .values((
                    sessions::id.eq(DbUuid(id)),
                    sessions::created_at.eq(DbTimestamp(now)),
                    sessions::updated_at.eq(DbTimestamp(now)),
                    sessions::summary.eq(""),
                ))
                .execute(c)?;
            Ok(Session {
                id,
                created_at: now,
                updated_at: now,
                summary: String::new(),
            })
        }))
    }

    pub fn append_message(
        conn: &mut Concrete,
        session_id: Uuid,
        role: Role,
        text: &str,
    ) -> QueryResult<Message> {
        on_concrete!(conn, |c, begin| in_transaction(c, begin, |c| {
            let touched = diesel::update(sessions::table.find(DbUuid(session_id)))
                .set(sessions::updated_at.eq(sessions::updated_at))
                .execute(c)?;
            if touched == 0 {
                return Err(diesel::result::Error::NotFound);
            }
            let now = timestamp::now();
            let id = diesel::insert_into(messages::table)
                .values((
                    messages::session_id.eq(DbUuid(session_id)),
                    messages::role.eq(role.as_str()),
                    messages::text.eq(text),
                    messages::created_at.eq(DbTimestamp(now)),
                ))
                .returning(messages::id)
                .get_result::<i64>(c)?;
            diesel::update(sessions::table.find(DbUuid(session_id)))
                .set(sessions::updated_at.eq(DbTimestamp(now)))
                .execute(c)?;
            Ok(Message {
                id,
                session_id,
                role,
                text: text.to_string(),
                created_at: now,
            })
        }))
    }

    pub fn get_session(conn: &mut Concrete, id: Uuid) -> QueryResult<SessionWithMessages> {
        on_concrete!(conn, |c, _begin| {
            let rows = sessions::table
                .left_join(messages::table)
                .filter(sessions::id.eq(DbUuid(id)))
                .order(messages::id.asc())
                .select((sessions::all_columns, messages::all_columns.nullable()))
                .load::<(SessionTuple, Option<MessageTuple>)>(c)?;
            let mut rows = rows.into_iter();
            let (s, first) = rows.next().ok_or(diesel::result::Error::NotFound)?;
            let messages = first
                .into_iter()
                .chain(rows.filter_map(|(_, m)| m))
                .map(message)
                .collect();
            Ok(SessionWithMessages {
                session: session(s),
                messages,
            })
        })
    }

    pub fn update_summary(conn: &mut Concrete, id: Uuid, summary: &str) -> QueryResult<Session> {
        on_concrete!(conn, |c, begin| in_transaction(c, begin, |c| {
            let now = timestamp::now();
            diesel::update(sessions::table.find(DbUuid(id)))
                .set((
                    sessions::summary.eq(summary),
                    sessions::updated_at.eq(DbTimestamp(now)),
                ))
                .returning(sessions::all_columns)
                .get_result::<SessionTuple>(c)
                .map(session)
        }))
    }

    pub fn save_draft(conn: &mut Concrete, session_id: Uuid, content: &str) -> QueryResult<Draft> {
        on_concrete!(conn, |c, begin| in_transaction(c, begin, |c| {
            let now = timestamp::now();
            let id = diesel::insert_into(drafts::table)
                .values((
                    drafts::session_id.eq(DbUuid(session_id)),
                    drafts::content.eq(content),
                    drafts::created_at.eq(DbTimestamp(now)),
                ))
                .returning(drafts::id)
                .get_result::<i64>(c)?;
            Ok(Draft {
                id,
                session_id,
                content: content.to_string(),
                created_at: now,
            })
        }))
    }

    pub fn latest_draft(conn: &mut Concrete, session_id: Uuid) -> QueryResult<Option<Draft>> {
        on_concrete!(conn, |c, _begin| {
            drafts::table
                .filter(drafts::session_id.eq(DbUuid(session_id)))
                .order(drafts::id.desc())
                .select(drafts::all_columns)
                .first::<DraftTuple>(c)
                .optional()
                .map(|r| {
                    r.map(|r| Draft {
                        id: r.0,
                        session_id: r.1 .0,
                        content: r.2,
                        created_at: r.3 .0,
                    })
                })
        })
    }

    pub fn list_sessions(conn: &mut Concrete, page: Page) -> QueryResult<Vec<Session>> {
        on_concrete!(conn, |c, _begin| {
            Ok(sessions::table
                .order((sessions::updated_at.desc(), sessions::id.desc()))
                .limit(page.limit)
                .offset(page.offset)
                .select(sessions::all_columns)
                .load::<SessionTuple>(c)?
                .into_iter()
                .map(session)
                .collect())
        })
    }

    pub fn health(conn: &mut Concrete) -> QueryResult<()> {
        on_concrete!(conn, |c, _begin| c.batch_execute("SELECT 1"))
    }
}

/// Which prefilled sessions an operation works on.
#[derive(Clone, Copy)]
enum Target {
    None,
    /// Sessions no bench writes to: reads see exactly the prefilled rows.
    Read,
    /// Sessions the write benches change.
    Write,
}

/// One repository operation, once through the store and once through the baseline.
struct Op {
    name: &'static str,
    target: Target,
    store: fn(&Store, Uuid),
    concrete: fn(&mut Concrete, Uuid),
}

fn ops() -> Vec<Op> {
    vec![
        Op {
            name: "start_session",
            target: Target::None,
            store: |s, _| drop(black_box(s.start_session().unwrap())),
            concrete: |c, _| drop(black_box(baseline::start_session(c).unwrap())),
        },
        Op {
            name: "append_message",
            target: Target::Write,
            store: |s, id| drop(black_box(s.append_message(id, Role::User, DRAFT).unwrap())),
            concrete: |c, id| {
                drop(black_box(
                    baseline::append_message(c, id, Role::User, DRAFT).unwrap(),
                ))
            },
        },
        Op {
            name: "get_session",
            target: Target::Read,
            store: |s, id| drop(black_box(s.get_session(id).unwrap())),
            concrete: |c, id| drop(black_box(baseline::get_session(c, id).unwrap())),
        },
        Op {
            name: "update_summary",
            target: Target::Write,
            store: |s, id| drop(black_box(s.update_summary(id, SUMMARY).unwrap())),
            concrete: |c, id| drop(black_box(baseline::update_summary(c, id, SUMMARY).unwrap())),
        },
        Op {
            name: "save_draft",
            target: Target::Write,
            store: |s, id| drop(black_box(s.save_draft(id, DRAFT).unwrap())),
            concrete: |c, id| drop(black_box(baseline::save_draft(c, id, DRAFT).unwrap())),
        },
        Op {
            name: "latest_draft",
            target: Target::Read,
            store: |s, id| drop(black_box(s.latest_draft(id).unwrap())),
            concrete: |c, id| drop(black_box(baseline::latest_draft(c, id).unwrap())),
        },
        Op {
            name: "list_sessions",
            target: Target::None,
            store: |s, _| drop(black_box(s.list_sessions(Page::default()).unwrap())),
            concrete: |c, _| {
                drop(black_box(
                    baseline::list_sessions(c, Page::default()).unwrap(),
                ))
            },
        },
        Op {
            name: "health",
            target: Target::None,
            store: |s, _| assert!(black_box(s.health()).db_up),
            concrete: |c, _| baseline::health(c).unwrap(),
        },
    ]
}

fn pick(db: &BenchDb, target: Target, rng: &mut SmallRng) -> Uuid {
    let ids = match target {
        Target::None => return Uuid::nil(),
        Target::Read => &db.read_ids,
        Target::Write => &db.write_ids,
    };
    ids[rng.random_range(0..ids.len())]
}

/// Checks, outside any timing, that both sides answer alike, and prints the
/// statements each store call sends and how many it prepared: a query diesel
/// cannot cache would be prepared on every call and never show up as prepared.
fn audit(db: &BenchDb, conn: &mut Concrete) {
    let id = db.read_ids[0];
    let got = db.store.get_session(id).unwrap();
    assert_eq!(got.messages.len(), common::MESSAGES_PER_SESSION);
    assert_eq!(got, baseline::get_session(conn, id).unwrap());
    assert_eq!(
        db.store.list_sessions(Page::default()).unwrap(),
        baseline::list_sessions(conn, Page::default()).unwrap()
    );

    // One connection, so the instrumented one is the one every call gets.
    let store = db.open_store(StoreConfig {
        pool: PoolConfig {
            max_size: 1,
            ..PoolConfig::default()
        },
        ..StoreConfig::default()
    });
    let log = StatementLog::default();
    store
        .with_connection(|c| {
            c.set_instrumentation(log.clone());
            Ok(())
        })
        .unwrap();
    let mut rng = SmallRng::seed_from_u64(7);
    println!(
        "\n{} statements per call (second call on one connection):",
        db.backend
    );
    for op in ops() {
        let id = pick(db, op.target, &mut rng);
        log.take();
        (op.store)(&store, id);
        let (_, prepared_first) = log.take();
        (op.store)(&store, id);
        let (statements, prepared) = log.take();
        let verbs: Vec<&str> = statements
            .iter()
            .map(|s| s.split_whitespace().next().unwrap_or(""))
            .collect();
        println!(
            "  {:<15} {} statements, prepared {prepared_first} on the first call and {prepared} on the second: {}",
            op.name,
            statements.len(),
            verbs.join(" ")
        );
    }
}

fn repository(c: &mut Criterion) {
    let sessions = common::sessions_from_env();
    let dbs: Vec<BenchDb> = common::BACKENDS
        .iter()
        .map(|&b| BenchDb::new(b, sessions))
        .collect();
    let mut conns: Vec<Concrete> = dbs.iter().map(BenchDb::concrete).collect();
    for (db, conn) in dbs.iter().zip(conns.iter_mut()) {
        audit(db, conn);
    }

    legacy_ids(c, &dbs, sessions);

    for op in ops() {
        let mut group = c.benchmark_group(op.name);
        for (db, conn) in dbs.iter().zip(conns.iter_mut()) {
            let backend = db.backend.as_str();
            // Both sides walk the same sequence of sessions.
            let mut rng = SmallRng::seed_from_u64(42);
            group.bench_function(BenchmarkId::new(backend, "store"), |b| {
                b.iter(|| (op.store)(&db.store, pick(db, op.target, &mut rng)))
            });
            let mut rng = SmallRng::seed_from_u64(42);
            group.bench_function(BenchmarkId::new(backend, "concrete"), |b| {
                b.iter(|| (op.concrete)(conn, pick(db, op.target, &mut rng)))
            });
        }
        group.finish();
    }
    // The stores close and the PostgreSQL database is dropped here.
    drop(conns);
    drop(dbs);
}

/// `get_session` on a SQLite file whose ids are stored as 32 hex digits (as SQLAlchemy 2's
/// `Uuid` and Django's `UUIDField` write them) against the canonical file: both are found
/// through the index on the UUID key (see `interview_store::types::uuid_key`).
fn legacy_ids(c: &mut Criterion, dbs: &[BenchDb], sessions: usize) {
    let Some(canonical) = dbs
        .iter()
        .find(|d| d.backend == interview_store::Backend::Sqlite)
    else {
        return;
    };
    let hex = BenchDb::new(interview_store::Backend::Sqlite, sessions);
    match hex.concrete() {
        Concrete::Sqlite(mut conn) => conn
            .batch_execute(
                "PRAGMA foreign_keys = OFF; BEGIN;
                 UPDATE sessions SET id = replace(id, '-', '');
                 UPDATE messages SET session_id = replace(session_id, '-', '');
                 UPDATE drafts SET session_id = replace(session_id, '-', '');
                 COMMIT; ANALYZE; PRAGMA wal_checkpoint(TRUNCATE);",
            )
            .expect("respell the ids as 32 hex digits"),
        Concrete::Postgres(_) => unreachable!("a SQLite bench database"),
    }
    let probe = hex.read_ids[0];
    assert_eq!(
        hex.store.get_session(probe).unwrap().messages.len(),
        common::MESSAGES_PER_SESSION,
        "the hex-id file serves its sessions by canonical id"
    );
    let mut group = c.benchmark_group("get_session_legacy_ids");
    // Today's query on the canonical file (by the primary key, no UUID key), as a yardstick.
    let mut conn = canonical.concrete();
    let mut rng = SmallRng::seed_from_u64(42);
    group.bench_function(BenchmarkId::new("sqlite/canonical", "concrete"), |b| {
        b.iter(|| {
            let id = pick(canonical, Target::Read, &mut rng);
            drop(black_box(baseline::get_session(&mut conn, id).unwrap()))
        })
    });
    // The UUID-key query itself on a plain connection: the cost of the key, pool aside.
    let mut conn = canonical.concrete();
    let mut rng = SmallRng::seed_from_u64(42);
    group.bench_function(
        BenchmarkId::new("sqlite/canonical", "concrete_uuid_key"),
        |b| {
            b.iter(|| {
                let id = pick(canonical, Target::Read, &mut rng);
                let Concrete::Sqlite(c) = &mut conn else {
                    unreachable!("a SQLite bench database")
                };
                let rows = sessions::table
                    .left_join(
                        messages::table
                            .on(uuid_key(messages::session_id).eq(uuid_key(sessions::id))),
                    )
                    .filter(uuid_key(sessions::id).eq(DbUuidKey(id)))
                    .order(messages::id.asc())
                    .select((sessions::all_columns, messages::all_columns.nullable()))
                    .load::<(SessionTuple, Option<MessageTuple>)>(c)
                    .unwrap();
                drop(black_box(rows))
            })
        },
    );
    for (name, db) in [("sqlite/canonical", canonical), ("sqlite/hex", &hex)] {
        let mut rng = SmallRng::seed_from_u64(42);
        group.bench_function(BenchmarkId::new(name, "store"), |b| {
            b.iter(|| {
                drop(black_box(
                    db.store
                        .get_session(pick(db, Target::Read, &mut rng))
                        .unwrap(),
                ))
            })
        });
    }
    group.finish();
}

criterion_group!(benches, repository);
criterion_main!(benches);
