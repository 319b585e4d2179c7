//! How the migration commands see and use the write pause held in each database.
//!
//! PRE-MERGE STAND-IN: the pause itself (`crate::maintenance`, branch `pause`)
//! is not on this branch yet. These functions read its table where present
//! and do nothing for retire/make_live/pause; the version on branch
//! `changelog-pause-trial` (commit "With the pause: …") calls
//! `crate::maintenance` and replaces this file when `pause` lands on main.

use std::path::Path;

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::sql_types::Bool;

use crate::connection::{AnyConnection, DatabaseUrl};
use crate::error::{Error, Result};

#[derive(QueryableByName)]
struct Flag {
    #[diesel(sql_type = Bool)]
    flag: bool,
}

/// The SQLite file for the migration's own writes; never creates one.
pub(crate) fn open_sqlite(path: &Path) -> Result<AnyConnection> {
    let mut conn = crate::connection::open_existing_sqlite(path)?;
    conn.batch_execute("PRAGMA busy_timeout = 10000; PRAGMA foreign_keys = ON")?;
    Ok(AnyConnection::Sqlite(conn))
}

/// A connection to PostgreSQL for the pause's own calls.
pub(crate) fn open_pg(url: &DatabaseUrl) -> Result<AnyConnection> {
    url.establish()
}

/// Whether PostgreSQL's writes are paused.
pub(crate) fn pg_paused(url: &DatabaseUrl) -> Result<bool> {
    let AnyConnection::Postgres(mut pg) = open_pg(url)? else {
        return Err(Error::invalid("postgres", "not a PostgreSQL URL"));
    };
    let exists =
        diesel::sql_query("SELECT to_regclass('interview_maintenance') IS NOT NULL AS flag")
            .get_result::<Flag>(&mut pg)?
            .flag;
    if !exists {
        return Ok(false);
    }
    Ok(diesel::sql_query(
        "SELECT coalesce(bool_or(paused), false) AS flag FROM interview_maintenance",
    )
    .get_result::<Flag>(&mut pg)?
    .flag)
}

/// Whether the SQLite file's writes are paused.
pub(crate) fn sqlite_paused(path: &Path) -> Result<bool> {
    let mut conn = crate::connection::open_existing_sqlite(path)?;
    let exists = diesel::sql_query(
        "SELECT count(*) > 0 AS flag FROM sqlite_master WHERE type = 'table' AND name = 'interview_maintenance'",
    )
    .get_result::<Flag>(&mut conn)?
    .flag;
    if !exists {
        return Ok(false);
    }
    Ok(
        diesel::sql_query(
            "SELECT coalesce(max(paused), 0) != 0 AS flag FROM interview_maintenance",
        )
        .get_result::<Flag>(&mut conn)?
        .flag,
    )
}

/// Marks a database retired (stand-in: `crate::maintenance::retire`).
pub(crate) fn retire(conn: &mut AnyConnection, moved_to: &str) -> Result<()> {
    let _ = (conn, moved_to);
    Ok(())
}

/// Pauses a database (stand-in: `crate::maintenance::pause`).
pub(crate) fn pause(conn: &mut AnyConnection) -> Result<()> {
    let _ = conn;
    Ok(())
}

/// Makes a database live (stand-in: `crate::maintenance::make_live`).
pub(crate) fn make_live(conn: &mut AnyConnection) -> Result<()> {
    let _ = conn;
    Ok(())
}

/// Runs `f` in one SQLite write transaction (stand-in: `crate::maintenance::write_while_paused`).
pub(crate) fn write_into_sqlite(
    conn: &mut AnyConnection,
    f: impl FnOnce(&mut SqliteConnection) -> Result<()>,
) -> Result<()> {
    match conn {
        AnyConnection::Sqlite(c) => c.immediate_transaction(|c| f(c)),
        AnyConnection::Postgres(_) => Err(Error::invalid("sqlite", "not a SQLite connection")),
    }
}
