//! How the migration commands see and use the write pause held in each database.
//!
//! The pause itself (table `interview_maintenance`, triggers refusing writes
//! while paused, retirement) belongs to [`crate::maintenance`]; these are the
//! connections the migration engine opens for it. The switch (`switch.rs`,
//! `switch_back.rs`) calls `maintenance` itself, inside its recorded steps.
//! The change-log tables and the bookkeeping are not covered by the pause
//! triggers: sync trims SQLite's log, and rollback-sync records its mark in
//! PostgreSQL, while those sides are paused.

use std::path::Path;

use diesel::prelude::*;

use crate::connection::{AnyConnection, DatabaseUrl};
use crate::error::{Error, Result};
use crate::maintenance;

/// The maintenance connection of the SQLite file (adopts a legacy file, so
/// the pause table exists; never creates a file).
pub(crate) fn open_sqlite(path: &Path) -> Result<AnyConnection> {
    maintenance::connect(&DatabaseUrl::sqlite(path.display().to_string()))
}

/// The maintenance connection of PostgreSQL.
pub(crate) fn open_pg(url: &DatabaseUrl) -> Result<AnyConnection> {
    maintenance::connect(url)
}

/// Whether PostgreSQL's writes are paused (or it is retired).
pub(crate) fn pg_paused(url: &DatabaseUrl) -> Result<bool> {
    Ok(maintenance::read(&mut open_pg(url)?)?.paused)
}

/// Makes a database live: pause off, no longer retired.
pub(crate) fn make_live(conn: &mut AnyConnection) -> Result<()> {
    maintenance::make_live(conn)
}

/// Runs `f` in one SQLite write transaction that passes the pause (SQLite
/// is retired while PostgreSQL is live), every other writer still refused.
pub(crate) fn write_into_sqlite(
    conn: &mut AnyConnection,
    f: impl FnOnce(&mut SqliteConnection) -> Result<()>,
) -> Result<()> {
    maintenance::write_while_paused(conn, |conn| match conn {
        AnyConnection::Sqlite(c) => f(c),
        AnyConnection::Postgres(_) => Err(Error::invalid("sqlite", "not a SQLite connection")),
    })
}
