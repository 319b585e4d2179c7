//! Test fixtures: a fresh database per test on each backend, dropped afterwards.
//!
//! PostgreSQL is the real server at `INTERVIEW_TEST_POSTGRES_URL` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`), used as the admin
//! connection that creates and drops one database per test.
#![allow(dead_code)]

pub mod bin;
pub mod cluster;
pub mod legacy;
pub mod proxy;
pub mod scratch;
#[cfg(feature = "server")]
pub mod traffic;

pub use scratch::PgDatabase;

use chrono::{TimeZone, Utc};
use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use interview_store::schema::{drafts, messages, sessions};
use interview_store::types::{DbTimestamp, DbUuid};
use interview_store::{Backend, Store, StoreConfig};

pub const DEFAULT_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

pub fn admin_url() -> String {
    std::env::var("INTERVIEW_TEST_POSTGRES_URL").unwrap_or_else(|_| DEFAULT_ADMIN_URL.to_string())
}

const HOW_TO_START: &str = "Start the local cluster with `pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start`,\n\
     or `docker compose up -d` with the repository's compose.yaml, or point INTERVIEW_TEST_POSTGRES_URL at one.";

impl PgDatabase {
    /// A scratch database for one test.
    pub fn create() -> Self {
        PgDatabase::create_on(&admin_url(), "interview_store_test", HOW_TO_START)
    }
}

/// The URL of a helper server that `scripts/test.sh` starts (PgBouncer, the TLS
/// cluster), from the environment variable `var`.
///
/// Without it: under `CI=true` the test fails, saying so; otherwise it prints
/// why and the caller skips (a developer running `cargo test` by hand).
pub fn helper_env(var: &str, what: &str) -> Option<String> {
    if let Some(v) = std::env::var(var).ok().filter(|v| !v.is_empty()) {
        return Some(v);
    }
    let why = format!(
        "{var} is not set: {what} is started by `bash scripts/test.sh` (see scripts/test-helpers.sh)"
    );
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{why}; CI must run this test");
    }
    eprintln!("SKIPPED: {why}");
    None
}

/// PgBouncer in transaction mode in front of the test server, when `scripts/test.sh` started it.
pub fn pgbouncer_url() -> Option<String> {
    helper_env(
        "INTERVIEW_TEST_PGBOUNCER_URL",
        "PgBouncer (pool_mode=transaction)",
    )
}

/// A fresh, migrated database of one backend; removed when dropped.
pub struct TestDb {
    pub backend: Backend,
    /// Where the store connects (through PgBouncer for [`TestDb::through_pooler`]).
    pub url: String,
    /// The same database on a direct connection to the server.
    pub direct_url: String,
    /// Whether stores opened by [`TestDb::store_with`] cache prepared statements.
    pub pg_statement_cache: bool,
    _dir: Option<tempfile::TempDir>,
    _pg: Option<PgDatabase>,
}

impl TestDb {
    pub fn new(backend: Backend) -> Self {
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().expect("temp dir");
                let url = format!("sqlite://{}", dir.path().join("interview.db").display());
                TestDb {
                    backend,
                    direct_url: url.clone(),
                    url,
                    pg_statement_cache: true,
                    _dir: Some(dir),
                    _pg: None,
                }
            }
            Backend::Postgres => {
                let pg = PgDatabase::create();
                TestDb {
                    backend,
                    url: pg.url.clone(),
                    direct_url: pg.url.clone(),
                    pg_statement_cache: true,
                    _dir: None,
                    _pg: Some(pg),
                }
            }
        }
    }

    /// A PostgreSQL database reached through PgBouncer in transaction mode, the
    /// statement cache off; `None` (skip) when the pooler is not running.
    pub fn through_pooler() -> Option<Self> {
        let pooler = pgbouncer_url()?;
        let mut db = TestDb::new(Backend::Postgres);
        let name = db
            ._pg
            .as_ref()
            .map(|pg| pg.name.clone())
            .expect("a PostgreSQL database");
        db.url = scratch::with_database(&pooler, &name);
        db.pg_statement_cache = false;
        Some(db)
    }

    /// Opens a store on this database with `config` and applies the migrations.
    pub fn store_with(&self, mut config: StoreConfig) -> Store {
        config.pg_statement_cache &= self.pg_statement_cache;
        let store = Store::connect(&self.url, config).expect("connect");
        store.migrate().expect("migrate");
        store
    }

    pub fn store(&self) -> Store {
        self.store_with(StoreConfig::default())
    }
}

/// Runs one test body on both backends: `backend_test!(name, |db: &TestDb| { … });`
/// expands to `name::sqlite`, `name::postgres` and `name::pgbouncer` (PostgreSQL
/// through PgBouncer in transaction mode, statement cache off: what managed
/// providers put in front). `backend_test!(direct: name, …)` leaves out the
/// pooler, for bodies that need a session of their own (say why where used).
#[macro_export]
macro_rules! backend_test {
    ($name:ident, $body:expr) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            #[test]
            fn sqlite() {
                let db = $crate::common::TestDb::new(interview_store::Backend::Sqlite);
                let body: fn(&$crate::common::TestDb) = $body;
                body(&db);
            }

            #[test]
            fn postgres() {
                let db = $crate::common::TestDb::new(interview_store::Backend::Postgres);
                let body: fn(&$crate::common::TestDb) = $body;
                body(&db);
            }

            #[test]
            fn pgbouncer() {
                let Some(db) = $crate::common::TestDb::through_pooler() else {
                    return;
                };
                let body: fn(&$crate::common::TestDb) = $body;
                body(&db);
            }
        }
    };
    (direct: $name:ident, $body:expr) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            #[test]
            fn sqlite() {
                let db = $crate::common::TestDb::new(interview_store::Backend::Sqlite);
                let body: fn(&$crate::common::TestDb) = $body;
                body(&db);
            }

            #[test]
            fn postgres() {
                let db = $crate::common::TestDb::new(interview_store::Backend::Postgres);
                let body: fn(&$crate::common::TestDb) = $body;
                body(&db);
            }
        }
    };
}

/// Writes the same rows, ids and timestamps included, into any store.
pub fn seed_identical(store: &Store, ids: &[uuid::Uuid]) {
    let t = |s: u32| DbTimestamp(Utc.with_ymd_and_hms(2025, 3, 1, 12, 0, s).unwrap());
    store
        .with_connection(|conn| {
            for (n, id) in ids.iter().enumerate() {
                let n = n as i64;
                diesel::insert_into(sessions::table)
                    .values((
                        sessions::id.eq(DbUuid(*id)),
                        sessions::created_at.eq(t(0)),
                        sessions::updated_at.eq(t(9)),
                        sessions::summary.eq("summary"),
                    ))
                    .execute(conn)?;
                for m in 0..3 {
                    diesel::insert_into(messages::table)
                        .values((
                            messages::id.eq(n * 10 + m + 1),
                            messages::session_id.eq(DbUuid(*id)),
                            messages::role.eq(if m % 2 == 0 { "assistant" } else { "user" }),
                            messages::text.eq(format!("message {m} — «ok»")),
                            messages::created_at.eq(t(m as u32)),
                        ))
                        .execute(conn)?;
                }
                diesel::insert_into(drafts::table)
                    .values((
                        drafts::id.eq(n + 1),
                        drafts::session_id.eq(DbUuid(*id)),
                        drafts::content.eq("draft"),
                        drafts::created_at.eq(t(5)),
                    ))
                    .execute(conn)?;
            }
            if store.backend() == Backend::Postgres {
                // Explicit ids do not advance BIGSERIAL sequences; later appends must not collide.
                conn.batch_execute(
                    "SELECT setval('messages_id_seq', (SELECT max(id) FROM messages));
                     SELECT setval('drafts_id_seq', (SELECT max(id) FROM drafts));",
                )?;
            }
            Ok(())
        })
        .unwrap();
}
