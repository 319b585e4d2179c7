//! Legacy SQLite files as the old service wrote them, built with raw SQL.

use std::path::PathBuf;

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use interview_store::{Store, StoreConfig};

/// A legacy SQLite file built with raw SQL, so that any value the old service may have written can be planted.
pub struct Legacy {
    _dir: tempfile::TempDir,
    pub path: PathBuf,
}

impl Legacy {
    pub fn new(sql: &str) -> Legacy {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("legacy.db");
        let mut conn = SqliteConnection::establish(path.to_str().unwrap()).unwrap();
        // The legacy service never enabled foreign keys; diesel does by default.
        conn.batch_execute("PRAGMA journal_mode = WAL; PRAGMA foreign_keys = OFF")
            .unwrap();
        conn.batch_execute(include_str!("../fixtures/legacy-schema.sql"))
            .unwrap();
        conn.batch_execute(sql).unwrap();
        Legacy { _dir: dir, path }
    }

    pub fn exec(&self, sql: &str) {
        SqliteConnection::establish(self.path.to_str().unwrap())
            .unwrap()
            .batch_execute(&format!("PRAGMA foreign_keys = OFF; {sql}"))
            .unwrap();
    }

    pub fn store(&self) -> Store {
        let s = Store::connect(self.path.to_str().unwrap(), StoreConfig::default()).unwrap();
        s.migrate().unwrap();
        s
    }
}

/// `n` clean sessions of `per` messages and one draft each, ids in the legacy forms.
pub fn clean_sql(n: usize, per: usize) -> String {
    let mut sql = String::from("BEGIN;");
    let mut mid = 0;
    for s in 0..n {
        let id = format!("00000000-0000-4000-8000-{s:012}");
        sql += &format!(
            "INSERT INTO sessions VALUES ('{id}', '2025-01-01 10:00:00', '2025-01-02T10:00:00.5+01:00', 'summary {s} ''quoted''');"
        );
        for m in 0..per {
            mid += 1;
            let role = if m % 2 == 0 { "assistant" } else { "user" };
            sql += &format!(
                "INSERT INTO messages VALUES ({mid}, '{id}', '{role}', 'text {mid} é\n\\ tab\t', '2025-01-01T10:{:02}:00Z');",
                m % 60
            );
        }
        sql += &format!("INSERT INTO drafts (session_id, content, created_at) VALUES ('{id}', 'draft of {s}', '2025-01-03T00:00:00Z');");
    }
    sql + "COMMIT;"
}
