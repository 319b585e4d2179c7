//! The write pause and retirement, held in the database itself.
//!
//! One row of `interview_maintenance` (created by each backend's migrations)
//! says whether writes are paused and, for a database whose data moved for
//! good, where it went. Triggers on `sessions`, `messages` and `drafts` refuse
//! every insert, update and delete while `paused` is set, so the pause holds
//! for every writer of the database: each process of this crate, the legacy
//! service, a `sqlite3` or `psql` shell. Their error is recognised by
//! [`Error`]'s `From<diesel::result::Error>`: [`Error::ReadOnly`], or
//! [`Error::Retired`] naming where the data went. Reads go on.
//!
//! ```
//! use interview_store::{maintenance, DatabaseUrl, Error, Store, StoreConfig};
//!
//! # fn main() -> interview_store::Result<()> {
//! let dir = tempfile::tempdir().unwrap();
//! let url = DatabaseUrl::sqlite(dir.path().join("interview.db").display().to_string());
//! let store = Store::open(url.clone(), StoreConfig::default())?;
//! store.migrate()?;
//!
//! // Another process (here: another connection) pauses the database.
//! let mut conn = maintenance::connect(&url)?;
//! maintenance::pause(&mut conn)?;
//! assert!(matches!(store.start_session(), Err(Error::ReadOnly)));
//! assert!(store.is_read_only()?);
//!
//! maintenance::resume(&mut conn)?;
//! store.start_session()?;
//! # Ok(()) }
//! ```

use chrono::{DateTime, Utc};
use diesel::connection::SimpleConnection;
use diesel::prelude::*;

use crate::connection::{mask_password, AnyConnection, ConnectionSetup, DatabaseUrl};
use crate::error::{Error, Result, PAUSED_MESSAGE, RETIRED_PREFIX};
use crate::schema::interview_maintenance as m;
use crate::timestamp;
use crate::types::DbTimestamp;

/// The maintenance state of a database.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Maintenance {
    /// Whether writes are refused.
    pub paused: bool,
    /// Where the data moved, for a retired database (paused for good); masked.
    pub retired_to: Option<String>,
    /// When the state last changed (`None`: never since the migration).
    pub changed_at: Option<DateTime<Utc>>,
}

impl std::fmt::Display for Maintenance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.retired_to, self.paused) {
            (Some(to), _) => write!(
                f,
                "retired: writes refused for good, the data moved to {to}"
            )?,
            (None, true) => f.write_str("paused: writes refused, reads go on")?,
            (None, false) => f.write_str("live: writes accepted")?,
        }
        if let Some(t) = self.changed_at {
            write!(f, " (since {})", timestamp::format(t))?;
        }
        Ok(())
    }
}

/// Opens one connection for the maintenance commands, with the schema in place.
///
/// Refuses a SQLite file that does not exist rather than creating an empty
/// one; applies the pending migrations (on a legacy file: adopting it) so
/// the maintenance row and triggers exist.
pub fn connect(url: &DatabaseUrl) -> Result<AnyConnection> {
    if url.backend() == crate::Backend::Sqlite
        && !std::path::Path::new(url.connection_string()).exists()
    {
        return Err(Error::NoSuchFile {
            path: url.connection_string().to_string(),
        });
    }
    let mut conn = url.establish()?;
    ConnectionSetup {
        busy_timeout: crate::PoolConfig::default().busy_timeout,
        // Pausing waits out writers in flight, however long they take.
        statement_timeout: None,
    }
    .apply(&mut conn)?;
    crate::migrations::run_pending(&mut conn)?;
    Ok(conn)
}

/// Reads the maintenance state.
pub fn read(conn: &mut AnyConnection) -> Result<Maintenance> {
    let (paused, retired_to, changed_at): (bool, Option<String>, Option<DbTimestamp>) = m::table
        .select((m::paused, m::retired_to, m::changed_at))
        .first(conn)?;
    Ok(Maintenance {
        paused,
        retired_to,
        changed_at: changed_at.map(|t| t.0),
    })
}

/// Pauses writes; returns once every write in flight has finished.
///
/// On SQLite setting the flag is itself a write, so it queues behind the
/// writer in progress (up to the busy timeout). On PostgreSQL, after the
/// flag is committed, `LOCK TABLE … IN SHARE MODE` waits until every
/// transaction that wrote to the tables has ended. Once this returns, no
/// write can commit until [`resume`]. Pausing a paused database changes nothing.
pub fn pause(conn: &mut AnyConnection) -> Result<()> {
    conn.write_transaction(|conn| {
        diesel::update(m::table.filter(m::paused.eq(false)))
            .set((
                m::paused.eq(true),
                m::changed_at.eq(DbTimestamp(timestamp::now())),
            ))
            .execute(conn)?;
        Ok(())
    })?;
    wait_out_writers(conn)
}

/// Lifts the pause.
///
/// Refuses a retired database with [`Error::Retired`]: only the switch back
/// to it ([`make_live`]) makes it live again.
pub fn resume(conn: &mut AnyConnection) -> Result<()> {
    conn.write_transaction(|conn| {
        if let Some(moved_to) = read(conn)?.retired_to {
            return Err(Error::Retired { moved_to });
        }
        diesel::update(m::table.filter(m::paused.eq(true)))
            .set((
                m::paused.eq(false),
                m::changed_at.eq(DbTimestamp(timestamp::now())),
            ))
            .execute(conn)?;
        Ok(())
    })
}

/// Retires the database: paused for good, naming where the data moved.
///
/// `moved_to` is stored with any password masked, and every refused write
/// names it, to this crate ([`Error::Retired`]) and to any other writer.
/// Returns once every write in flight has finished, like [`pause`].
pub fn retire(conn: &mut AnyConnection, moved_to: &str) -> Result<()> {
    let moved_to = mask_password(moved_to);
    conn.write_transaction(|conn| {
        diesel::update(m::table)
            .set((
                m::paused.eq(true),
                m::retired_to.eq(Some(&moved_to)),
                m::changed_at.eq(DbTimestamp(timestamp::now())),
            ))
            .execute(conn)?;
        rewrite_sqlite_triggers(conn, &format!("{RETIRED_PREFIX}{moved_to}"))
    })?;
    wait_out_writers(conn)
}

/// Makes a paused or retired database live again: the switch's last step.
pub fn make_live(conn: &mut AnyConnection) -> Result<()> {
    conn.write_transaction(|conn| {
        diesel::update(m::table)
            .set((
                m::paused.eq(false),
                m::retired_to.eq(None::<String>),
                m::changed_at.eq(DbTimestamp(timestamp::now())),
            ))
            .execute(conn)?;
        rewrite_sqlite_triggers(conn, PAUSED_MESSAGE)
    })
}

/// Runs `f` in one transaction whose own writes pass the pause, while every
/// other writer stays refused.
///
/// For the migration tool's catch-up writes into a paused or retired
/// database (e.g. rollback-sync into a retired SQLite file). Inside the
/// transaction (SQLite: `BEGIN IMMEDIATE`) the flag is lifted, `f` runs, and
/// the flag is put back before the commit. No other transaction ever sees it
/// lifted: SQLite admits one writer at a time and readers see only committed
/// data; on PostgreSQL the lifted row is this transaction's uncommitted
/// version, invisible to every other transaction's triggers (and a second
/// such call waits on the row lock). If `f` fails, everything rolls back.
pub fn write_while_paused<T>(
    conn: &mut AnyConnection,
    f: impl FnOnce(&mut AnyConnection) -> Result<T>,
) -> Result<T> {
    conn.write_transaction(|conn| {
        let was_paused = read(conn)?.paused;
        if was_paused {
            set_paused_flag(conn, false)?;
        }
        let value = f(conn)?;
        if was_paused {
            set_paused_flag(conn, true)?;
        }
        Ok(value)
    })
}

/// Only the flag: `changed_at` stays, since the state seen from outside does not change.
fn set_paused_flag(conn: &mut AnyConnection, paused: bool) -> Result<()> {
    diesel::update(m::table)
        .set(m::paused.eq(paused))
        .execute(conn)?;
    Ok(())
}

/// PostgreSQL: waits until every transaction holding a write lock on the
/// tables has ended. Writers that start later see the committed flag.
fn wait_out_writers(conn: &mut AnyConnection) -> Result<()> {
    if let AnyConnection::Postgres(_) = conn {
        conn.write_transaction(|conn| {
            conn.batch_execute("LOCK TABLE sessions, messages, drafts IN SHARE MODE")?;
            Ok(())
        })?;
    }
    Ok(())
}

/// SQLite: the message of `RAISE` must be a literal for the SQLite versions
/// other writers use (an expression needs 3.48), so retiring rewrites the
/// pause triggers with the destination in their text, and [`make_live`]
/// puts the migration's own text back.
fn rewrite_sqlite_triggers(conn: &mut AnyConnection, message: &str) -> Result<()> {
    if let AnyConnection::Sqlite(c) = conn {
        c.batch_execute(&sqlite_triggers(message))?;
    }
    Ok(())
}

/// The pause triggers of migrations_sqlite/…_write_pause, raising `message`.
fn sqlite_triggers(message: &str) -> String {
    let literal = message.replace('\'', "''");
    let mut sql = String::new();
    for table in ["sessions", "messages", "drafts"] {
        for op in ["INSERT", "UPDATE", "DELETE"] {
            let name = format!("interview_pause_{table}_{}", op.to_ascii_lowercase());
            sql.push_str(&format!(
                "DROP TRIGGER IF EXISTS {name};\n\
                 CREATE TRIGGER {name} BEFORE {op} ON {table} WHEN (SELECT paused FROM interview_maintenance) \
                 BEGIN SELECT RAISE(ABORT, '{literal}'); END;\n"
            ));
        }
    }
    sql
}
