//! Scratch PostgreSQL databases: created on an admin connection, dropped with
//! their connections afterwards. Shared by the tests and the benches.

use std::sync::atomic::{AtomicU32, Ordering};

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::PgConnection;

/// Replaces the database name of a PostgreSQL URL.
pub fn with_database(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let host_end = base[scheme_end..]
        .find('/')
        .map_or(base.len(), |i| scheme_end + i);
    let mut out = format!("{}/{}", &base[..host_end], db);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

/// A database of its own on the server at `admin_url`, dropped on drop.
pub struct PgDatabase {
    pub name: String,
    pub url: String,
    admin_url: String,
}

/// Connects as admin; `hint` says how to get a server when there is none.
pub fn admin(url: &str, hint: &str) -> PgConnection {
    PgConnection::establish(url).unwrap_or_else(|e| {
        panic!(
            "PostgreSQL is needed at {} ({e}).\n{hint}",
            interview_store::connection::mask_password(url)
        )
    })
}

impl PgDatabase {
    /// Creates `<prefix>_<pid>_<n>_<random>` on the server at `admin_url`.
    pub fn create_on(admin_url: &str, prefix: &str, hint: &str) -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "{prefix}_{}_{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed),
            rand::random::<u32>()
        );
        admin(admin_url, hint)
            .batch_execute(&format!("CREATE DATABASE \"{name}\""))
            .expect("create scratch database");
        PgDatabase {
            url: with_database(admin_url, &name),
            name,
            admin_url: admin_url.to_string(),
        }
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        let dropped = PgConnection::establish(&self.admin_url)
            .map_err(|e| e.to_string())
            .and_then(|mut c| {
                c.batch_execute(&format!(
                    "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
                    self.name
                ))
                .map_err(|e| e.to_string())
            });
        if let Err(e) = dropped {
            eprintln!("could not drop scratch database {}: {e}", self.name);
        }
    }
}
