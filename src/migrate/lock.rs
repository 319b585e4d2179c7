//! One migration command at a time per target database: a PostgreSQL advisory lock.
//!
//! The lock lives in the database, so every party sees it: two operators, two
//! terminals, a retried CI job. It is a transaction-scoped lock
//! (`pg_try_advisory_xact_lock`) in a transaction left open on a connection of
//! its own until the command ends: the transaction ends when the connection
//! closes, and the lock with it, even when the process is killed. Not a session
//! lock, because behind a transaction pooler (PgBouncer, Supavisor) a session
//! lock stays on a server connection the command no longer owns and blocks
//! every later command; an open transaction pins its server connection, and
//! the pooler ends it when the client goes away. The open transaction holds no
//! snapshot between statements (read committed), so it does not hold back vacuum;
//! a server-side `idle_in_transaction_session_timeout` shorter than the command
//! would end it early.

use diesel::prelude::*;
use diesel::sql_types::{BigInt, Bool};

use std::time::{Duration, Instant};

use crate::connection::{AnyConnection, DatabaseUrl};
use crate::error::{Error, Result};

/// The advisory lock key of the migration commands: "intrvmig" in ASCII.
pub const MIGRATION_LOCK_KEY: i64 = 0x696e_7472_766d_6967;

/// How long a command waits for a running follower's batch (or a short
/// command) to let go of the lock before it gives up with [`Error::Busy`].
pub(crate) const FOLLOWER_TURN: Duration = Duration::from_secs(10);

/// How often a waiting command tries the lock again.
const RETRY: Duration = Duration::from_millis(5);

/// Takes the migration lock for the caller's open transaction, without
/// waiting: `false` when another command holds it. A follower takes it this
/// way in each batch's own transaction, so that a command needing the
/// database to itself (switch, verify) runs between two batches.
pub(crate) fn try_lock(pg: &mut PgConnection) -> Result<bool> {
    let got: Got = diesel::sql_query("SELECT pg_try_advisory_xact_lock($1) AS locked")
        .bind::<BigInt, _>(MIGRATION_LOCK_KEY)
        .get_result(pg)?;
    Ok(got.locked)
}

/// Held while a migration command runs; dropping it releases the lock.
pub struct MigrationLock {
    conn: PgConnection,
}

#[derive(QueryableByName)]
struct Got {
    #[diesel(sql_type = Bool)]
    locked: bool,
}

impl MigrationLock {
    /// Takes the lock on `postgres`'s database at once, or fails with
    /// [`Error::Busy`] when another migration command holds it.
    ///
    /// ```no_run
    /// use interview_store::migrate::MigrationLock;
    /// let _lock = MigrationLock::acquire(&"postgres://app@db/interview".parse()?)?;
    /// // … no other migration command runs on this database until `_lock` drops.
    /// # Ok::<(), interview_store::Error>(())
    /// ```
    pub fn acquire(postgres: &DatabaseUrl) -> Result<MigrationLock> {
        Self::acquire_waiting(postgres, Duration::ZERO)
    }

    /// Takes the lock, waiting up to `wait` for the command holding it to let
    /// go: for steps that take turns with a running follower, whose batches
    /// hold the lock for milliseconds. [`Error::Busy`] past the wait.
    pub fn acquire_waiting(postgres: &DatabaseUrl, wait: Duration) -> Result<MigrationLock> {
        // A bare connection: the schema migrations run after the lock is held.
        let mut conn = match postgres.establish()? {
            AnyConnection::Postgres(pg) => pg,
            AnyConnection::Sqlite(_) => {
                return Err(Error::invalid(
                    "postgres",
                    format!("{} is not a PostgreSQL URL", postgres.masked()),
                ))
            }
        };
        use diesel::connection::{AnsiTransactionManager, TransactionManager};
        AnsiTransactionManager::begin_transaction(&mut conn)?;
        let deadline = Instant::now() + wait;
        while !try_lock(&mut conn)? {
            if Instant::now() >= deadline {
                return Err(Error::Busy(format!(
                    "another migration command is running on {}; wait for it to finish",
                    postgres.masked()
                )));
            }
            std::thread::sleep(RETRY);
        }
        Ok(MigrationLock { conn })
    }

    /// Whether the lock is still held (the connection is alive).
    pub fn is_held(&mut self) -> bool {
        diesel::sql_query("SELECT true AS locked")
            .get_result::<Got>(&mut self.conn)
            .is_ok_and(|g| g.locked)
    }
}

impl Drop for MigrationLock {
    // Ending the transaction releases the lock before the next command can start; left to
    // the connection's close, the server (or a pooler, which must discard a server
    // connection abandoned mid-transaction) releases it some moments later, and a command
    // run right after this one would be refused.
    fn drop(&mut self) {
        use diesel::connection::{AnsiTransactionManager, TransactionManager};
        if let Err(e) = AnsiTransactionManager::rollback_transaction(&mut self.conn) {
            log::warn!("releasing the migration lock: {e}; it ends with the connection");
        }
    }
}

impl std::fmt::Debug for MigrationLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MigrationLock").finish_non_exhaustive()
    }
}
