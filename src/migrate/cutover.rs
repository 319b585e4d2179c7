//! The context of a command that moves the service: opened once, handed to each step.
//!
//! One lock, one PostgreSQL connection (schema migrated once), one SQLite
//! maintenance connection, one reader of the legacy file and the bookkeeping
//! row as loaded. Steps take `&mut Cutover` instead of reopening connections
//! by URL, so a switch opens each database once and every step sees the same
//! recorded phase.

use std::path::Path;

use diesel::prelude::*;

use super::lock::{MigrationLock, FOLLOWER_TURN};
use super::phase::Phase;
use super::source::{source_name, Source};
use super::state::{self, State};
use crate::connection::{AnyConnection, DatabaseUrl};
use crate::error::{Error, Refusal, Result};

pub(crate) struct Cutover<'a> {
    pub sqlite: &'a Path,
    pub postgres: &'a DatabaseUrl,
    /// Held until the command ends; a killed process lets go with its connection.
    _lock: MigrationLock,
    /// PostgreSQL: bookkeeping, maintenance row and change log, one connection.
    pub pg: AnyConnection,
    /// SQLite's maintenance connection (pause, retire, the way back's writes).
    pub lite: AnyConnection,
    /// The reader of the legacy file.
    pub src: Source,
    /// The bookkeeping row as last loaded.
    pub state: State,
}

impl<'a> Cutover<'a> {
    /// Opens both sides for a switch: the file must exist (a missing one must
    /// not leave PostgreSQL set up for nothing), the lock is taken in turns
    /// with a running follower, and PostgreSQL must hold a copy of this file.
    pub fn open(sqlite: &'a Path, postgres: &'a DatabaseUrl) -> Result<Cutover<'a>> {
        crate::connection::require_sqlite_file(sqlite)?;
        let lock = MigrationLock::acquire_waiting(postgres, FOLLOWER_TURN)?;
        let mut pg = AnyConnection::Postgres(state::connect(postgres)?);
        let st = state::load(as_pg(&mut pg)?)?.ok_or_else(|| {
            Error::refused(
                Refusal::OutOfOrder,
                format!(
                    "nothing was copied into {} yet: run `migrate copy` and `migrate sync` first",
                    postgres.masked()
                ),
            )
        })?;
        if st.source != source_name(sqlite) {
            return Err(Error::refused(
                Refusal::Foreign,
                format!(
                    "{} holds a copy of {}, not of {}",
                    postgres.masked(),
                    st.source,
                    source_name(sqlite)
                ),
            ));
        }
        Ok(Cutover {
            sqlite,
            postgres,
            _lock: lock,
            pg,
            lite: super::pause::open_sqlite(sqlite)?,
            src: Source::open(sqlite)?,
            state: st,
        })
    }

    /// PostgreSQL's connection, typed.
    pub fn pg(&mut self) -> Result<&mut PgConnection> {
        as_pg(&mut self.pg)
    }

    /// The recorded phase.
    pub fn phase(&self) -> Result<Phase> {
        self.state.phase()
    }

    /// Reads the bookkeeping row again (after a step moved it).
    pub fn reload(&mut self) -> Result<Phase> {
        let st = state::load(self.pg()?)?.ok_or_else(|| {
            Error::refused(
                Refusal::Moved,
                "the migration bookkeeping vanished (copy --truncate?)",
            )
        })?;
        self.state = st;
        self.phase()
    }

    /// Records the move from the loaded phase to `to` in a transaction of its own.
    pub fn record(&mut self, to: Phase) -> Result<()> {
        let from = self.phase()?;
        self.pg()?.transaction(|pg| from.record(pg, to))?;
        self.reload()?;
        Ok(())
    }

    /// Runs `f` in one PostgreSQL transaction that also moves the phase to
    /// `to`: the step's first write and its record commit together.
    pub fn record_with<T>(
        &mut self,
        to: Phase,
        f: impl FnOnce(&mut AnyConnection) -> Result<T>,
    ) -> Result<T> {
        let from = self.phase()?;
        let out = self.pg.transaction(|any| {
            let out = f(any)?;
            from.record(as_pg(any)?, to)?;
            Ok::<_, Error>(out)
        })?;
        self.reload()?;
        Ok(out)
    }

    /// The masked PostgreSQL URL, as shown and as stored in SQLite's retirement.
    pub fn pg_shown(&self) -> String {
        self.postgres.masked()
    }

    /// The SQLite file as shown and as stored in PostgreSQL's retirement.
    pub fn sqlite_shown(&self) -> String {
        self.sqlite.display().to_string()
    }
}

/// The PostgreSQL connection inside an [`AnyConnection`].
pub(crate) fn as_pg(conn: &mut AnyConnection) -> Result<&mut PgConnection> {
    match conn {
        AnyConnection::Postgres(pg) => Ok(pg),
        AnyConnection::Sqlite(_) => Err(Error::invalid("postgres", "not a PostgreSQL connection")),
    }
}
