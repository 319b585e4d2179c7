//! Shared by the benches: bench-owned databases on both backends, the bulk
//! prefill, and plain diesel connections for the baselines.
#![allow(dead_code)]

use std::sync::{Arc, Mutex};

use chrono::{DateTime, Duration, TimeZone, Utc};
use diesel::connection::{
    AnsiTransactionManager, Instrumentation, InstrumentationEvent, SimpleConnection,
    TransactionManager,
};
use diesel::prelude::*;
use diesel::{PgConnection, SqliteConnection};
use interview_store::schema::{drafts, messages, sessions};
use interview_store::types::{DbTimestamp, DbUuid};
use interview_store::{Backend, Store, StoreConfig};
use uuid::Uuid;

pub const DEFAULT_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";
pub const DEFAULT_SESSIONS: usize = 10_000;
pub const MESSAGES_PER_SESSION: usize = 40;

/// Both backends, in the order every table reports them.
pub const BACKENDS: [Backend; 2] = [Backend::Sqlite, Backend::Postgres];

/// Sessions to prefill: `INTERVIEW_BENCH_SESSIONS`, 10,000 by default.
pub fn sessions_from_env() -> usize {
    match std::env::var("INTERVIEW_BENCH_SESSIONS") {
        Ok(v) => v
            .trim()
            .parse()
            .ok()
            .filter(|n| *n >= 2)
            .unwrap_or_else(|| {
                panic!("INTERVIEW_BENCH_SESSIONS={v:?}: want a count of at least 2")
            }),
        Err(_) => DEFAULT_SESSIONS,
    }
}

/// The PostgreSQL server the bench creates its database on.
pub fn admin_url() -> String {
    std::env::var("INTERVIEW_BENCH_POSTGRES_URL")
        .or_else(|_| std::env::var("INTERVIEW_TEST_POSTGRES_URL"))
        .unwrap_or_else(|_| DEFAULT_ADMIN_URL.to_string())
}

// The tests' scratch databases, so both clean up the same way.
#[path = "../../tests/common/scratch.rs"]
mod scratch;
use scratch::PgDatabase;

fn bench_database() -> PgDatabase {
    PgDatabase::create_on(
        &admin_url(),
        "interview_store_bench",
        "Set INTERVIEW_BENCH_POSTGRES_URL to a server where the bench may create a database.",
    )
}

/// A migrated, prefilled database of one backend with a store open on it.
pub struct BenchDb {
    pub backend: Backend,
    /// Prefilled sessions that no bench writes to, so reads always see 40 messages.
    pub read_ids: Vec<Uuid>,
    /// Prefilled sessions the write benches append to, retitle and draft for.
    pub write_ids: Vec<Uuid>,
    // Declared before the database so the pool closes before the database is dropped.
    pub store: Store,
    url: String,
    _dir: Option<tempfile::TempDir>,
    _pg: Option<PgDatabase>,
}

impl BenchDb {
    pub fn new(backend: Backend, sessions: usize) -> Self {
        Self::with_config(backend, sessions, StoreConfig::default())
    }

    pub fn with_config(backend: Backend, sessions: usize, config: StoreConfig) -> Self {
        let (url, dir, pg) = match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().expect("temp dir");
                let url = format!("sqlite://{}", dir.path().join("bench.db").display());
                (url, Some(dir), None)
            }
            Backend::Postgres => {
                let pg = bench_database();
                (pg.url.clone(), None, Some(pg))
            }
        };
        let store = Store::connect(&url, config).expect("connect store");
        store.migrate().expect("migrate");
        let started = std::time::Instant::now();
        let ids = prefill(&mut Concrete::open(backend, &url), sessions);
        eprintln!(
            "prefilled {backend}: {sessions} sessions x {MESSAGES_PER_SESSION} messages in {:.1?}",
            started.elapsed()
        );
        // The SQLite file during a cutover: every write also logged for `migrate sync`.
        if backend == Backend::Sqlite
            && std::env::var("INTERVIEW_BENCH_CHANGE_LOG").as_deref() == Ok("1")
        {
            let path = url.trim_start_matches("sqlite://");
            interview_store::migrate::install_change_log(path.as_ref())
                .expect("install change log");
            eprintln!("change log installed on the SQLite file");
        }
        let (read, write) = ids.split_at(ids.len() / 2);
        BenchDb {
            backend,
            read_ids: read.to_vec(),
            write_ids: write.to_vec(),
            store,
            url,
            _dir: dir,
            _pg: pg,
        }
    }

    /// A plain diesel connection to the same database, set up like the store's.
    pub fn concrete(&self) -> Concrete {
        Concrete::open(self.backend, &self.url)
    }

    /// Another store on the same database.
    pub fn open_store(&self, config: StoreConfig) -> Store {
        Store::connect(&self.url, config).expect("connect store")
    }
}

/// A diesel connection of the concrete type, without the MultiConnection or the pool.
pub enum Concrete {
    Sqlite(SqliteConnection),
    Postgres(PgConnection),
}

impl Concrete {
    fn open(backend: Backend, url: &str) -> Self {
        // The store's per-connection setup (see `ConnectionSetup`), so both sides run with the same settings.
        match backend {
            Backend::Sqlite => {
                let path = url.strip_prefix("sqlite://").unwrap_or(url);
                let mut c = SqliteConnection::establish(path).expect("connect sqlite");
                c.batch_execute(
                    "PRAGMA busy_timeout = 5000; PRAGMA journal_mode = WAL; \
                     PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON; \
                     PRAGMA mmap_size = 268435456;",
                )
                .expect("sqlite setup");
                Concrete::Sqlite(c)
            }
            Backend::Postgres => {
                let mut c = PgConnection::establish(url).expect("connect postgres");
                c.batch_execute("SET TIME ZONE 'UTC'")
                    .expect("postgres setup");
                Concrete::Postgres(c)
            }
        }
    }
}

/// Runs one body on whichever concrete connection it is: `$c` is the typed
/// connection and `$begin` the statement the store opens a write transaction with.
#[macro_export]
macro_rules! on_concrete {
    ($conn:expr, |$c:ident, $begin:ident| $body:expr) => {
        match $conn {
            $crate::common::Concrete::Sqlite($c) => {
                let $begin = "BEGIN IMMEDIATE";
                $body
            }
            $crate::common::Concrete::Postgres($c) => {
                let $begin = "BEGIN";
                $body
            }
        }
    };
}

/// One transaction begun with `begin`, the way `Store::write` runs one.
pub fn in_transaction<C, T>(
    c: &mut C,
    begin: &str,
    f: impl FnOnce(&mut C) -> QueryResult<T>,
) -> QueryResult<T>
where
    C: Connection<TransactionManager = AnsiTransactionManager>,
{
    AnsiTransactionManager::begin_transaction_sql(c, begin)?;
    match f(c) {
        Ok(v) => AnsiTransactionManager::commit_transaction(c).map(|()| v),
        Err(e) => {
            let _ = AnsiTransactionManager::rollback_transaction(c);
            Err(e)
        }
    }
}

/// Interview turns are a sentence or a short paragraph.
pub fn message_text(session: usize, turn: usize) -> String {
    format!(
        "Turn {turn} of session {session}: I led the migration of our billing pipeline, \
         split the batch job into idempotent steps and cut the nightly run from four hours to forty minutes."
    )
}

fn base_time() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2025, 1, 1, 0, 0, 0).unwrap()
}

/// Sessions whose messages are written in the same period, interleaved.
const INTERLEAVE: usize = 100;
/// Rows per multi-row INSERT: far below both backends' bind-parameter limits.
const CHUNK: usize = 1000;

/// Bulk-writes `n` sessions with 40 messages and one draft each, in one transaction.
///
/// Messages of [`INTERLEAVE`] sessions at a time are interleaved turn by
/// turn, as concurrent interviews would write them, so one session's
/// messages are spread over the table instead of packed together.
fn prefill(conn: &mut Concrete, n: usize) -> Vec<Uuid> {
    let t0 = base_time();
    let ids: Vec<Uuid> = (0..n).map(|_| Uuid::now_v7()).collect();
    let started = |i: usize| t0 + Duration::seconds(i as i64 * 30);
    let turn_at = |i: usize, turn: usize| started(i) + Duration::seconds(turn as i64 * 60);
    let ended = |i: usize| turn_at(i, MESSAGES_PER_SESSION - 1);

    let session_rows: Vec<_> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| {
            (
                sessions::id.eq(DbUuid(*id)),
                sessions::created_at.eq(DbTimestamp(started(i))),
                sessions::updated_at.eq(DbTimestamp(ended(i))),
                sessions::summary.eq(format!(
                    "Candidate {i}: backend engineer, strong on data pipelines."
                )),
            )
        })
        .collect();
    let mut message_rows = Vec::with_capacity(n * MESSAGES_PER_SESSION);
    for wave in (0..n).collect::<Vec<_>>().chunks(INTERLEAVE) {
        for turn in 0..MESSAGES_PER_SESSION {
            for &i in wave {
                message_rows.push((
                    messages::session_id.eq(DbUuid(ids[i])),
                    messages::role.eq(if turn % 2 == 0 { "assistant" } else { "user" }),
                    messages::text.eq(message_text(i, turn)),
                    messages::created_at.eq(DbTimestamp(turn_at(i, turn))),
                ));
            }
        }
    }
    let draft_rows: Vec<_> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| {
            (
                drafts::session_id.eq(DbUuid(*id)),
                drafts::content.eq(format!("Draft answer for session {i}.")),
                drafts::created_at.eq(DbTimestamp(ended(i))),
            )
        })
        .collect();

    on_concrete!(conn, |c, _begin| {
        c.transaction(|c| {
            for chunk in session_rows.chunks(CHUNK) {
                diesel::insert_into(sessions::table)
                    .values(chunk)
                    .execute(c)?;
            }
            for chunk in message_rows.chunks(CHUNK) {
                diesel::insert_into(messages::table)
                    .values(chunk)
                    .execute(c)?;
            }
            for chunk in draft_rows.chunks(CHUNK) {
                diesel::insert_into(drafts::table)
                    .values(chunk)
                    .execute(c)?;
            }
            QueryResult::Ok(())
        })
        .expect("prefill");
    });
    // A long-running database has planner statistics and a checkpointed WAL; match that.
    match conn {
        Concrete::Sqlite(c) => c.batch_execute("ANALYZE; PRAGMA wal_checkpoint(TRUNCATE);"),
        Concrete::Postgres(c) => c.batch_execute("VACUUM ANALYZE"),
    }
    .expect("analyze after prefill");
    ids
}

/// The SQL of every statement a connection runs, for counting round trips.
#[derive(Clone, Default)]
pub struct StatementLog {
    inner: Arc<Mutex<LogInner>>,
}

#[derive(Default)]
struct LogInner {
    statements: Vec<String>,
    prepared: usize,
}

impl StatementLog {
    /// Statements run and statements newly prepared since the last call.
    pub fn take(&self) -> (Vec<String>, usize) {
        let mut g = self.inner.lock().unwrap();
        (
            std::mem::take(&mut g.statements),
            std::mem::take(&mut g.prepared),
        )
    }
}

impl Instrumentation for StatementLog {
    fn on_connection_event(&mut self, event: InstrumentationEvent<'_>) {
        let mut g = self.inner.lock().unwrap();
        match event {
            InstrumentationEvent::StartQuery { query, .. } => g.statements.push(query.to_string()),
            InstrumentationEvent::CacheQuery { .. } => g.prepared += 1,
            _ => {}
        }
    }
}

/// Latency percentile of sorted samples.
pub fn percentile(sorted: &[std::time::Duration], p: f64) -> std::time::Duration {
    if sorted.is_empty() {
        return std::time::Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}
