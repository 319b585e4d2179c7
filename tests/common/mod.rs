//! Test fixtures: a fresh database per test on each backend, dropped afterwards.
//!
//! PostgreSQL is the real server at `INTERVIEW_TEST_POSTGRES_URL` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`), used as the admin
//! connection that creates and drops one database per test.
#![allow(dead_code)]

pub mod legacy;
pub mod scratch;

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

/// A fresh, migrated database of one backend; removed when dropped.
pub struct TestDb {
    pub backend: Backend,
    pub url: String,
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
                    url,
                    _dir: Some(dir),
                    _pg: None,
                }
            }
            Backend::Postgres => {
                let pg = PgDatabase::create();
                TestDb {
                    backend,
                    url: pg.url.clone(),
                    _dir: None,
                    _pg: Some(pg),
                }
            }
        }
    }

    /// Opens a store on this database with `config` and applies the migrations.
    pub fn store_with(&self, config: StoreConfig) -> Store {
        let store = Store::connect(&self.url, config).expect("connect");
        store.migrate().expect("migrate");
        store
    }

    pub fn store(&self) -> Store {
        self.store_with(StoreConfig::default())
    }
}

/// Runs one test body on both backends: `backend_test!(name, |db: &TestDb| { … });`
/// expands to `name::sqlite` and `name::postgres`.
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
