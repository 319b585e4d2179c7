//! `status`: where the cutover stands and the one command that moves it on.
//!
//! Read-only on both databases: it opens them without running the schema
//! migrations, reads PostgreSQL in a `READ ONLY` transaction and SQLite with
//! `mode=ro`, and reports a table that does not exist yet as not set up, so
//! that the command an operator reaches for after a crash changes nothing.

use std::fmt;
use std::path::Path;

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::sql_types::{Bool, Text};

use super::normalize::Reject;
use super::phase::{Phase, Step};
use super::state::{self, State, TableProgress};
use crate::connection::{AnyConnection, DatabaseUrl};
use crate::error::{Error, Result};
use crate::maintenance::{self, Maintenance};
use crate::timestamp;

/// What `status` shows.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Status {
    /// `None` when nothing was ever copied into this database.
    pub state: Option<State>,
    /// The recorded phase, typed.
    pub phase: Option<Phase>,
    /// The step a switch was interrupted at, if one stands interrupted.
    pub interrupted: Option<Step>,
    /// Per table, in load order.
    pub tables: Vec<TableProgress>,
    /// Every recorded reject.
    pub rejects: Vec<Reject>,
    /// Finished idempotency keys in PostgreSQL (copied, synced or answered there).
    pub idempotency_keys: i64,
    /// Whether PostgreSQL's writes are paused, or it is retired (see [`crate::maintenance`]).
    pub maintenance: Maintenance,
    /// The same for the SQLite file, when it was named.
    pub sqlite_maintenance: Option<Maintenance>,
    /// The one command that moves the cutover on (or finishes or undoes an
    /// interrupted step), and why.
    pub next: String,
    /// The PostgreSQL database, masked.
    pub postgres: String,
}

/// Reads where the cutover stands from PostgreSQL's bookkeeping, changing nothing.
pub fn status(postgres: &DatabaseUrl) -> Result<Status> {
    status_of(postgres, None)
}

/// [`status`] with the SQLite file's maintenance row too (opened read-only).
pub fn status_of(postgres: &DatabaseUrl, sqlite: Option<&Path>) -> Result<Status> {
    if postgres.backend() != crate::Backend::Postgres {
        return Err(Error::invalid(
            "postgres",
            format!("{} is not a PostgreSQL URL", postgres.masked()),
        ));
    }
    let sqlite_maintenance = sqlite.map(read_sqlite).transpose()?;
    let mut conn = postgres.establish()?;
    let mut st = conn.transaction(|conn| {
        conn.batch_execute("SET TRANSACTION READ ONLY")?;
        read_postgres(conn)
    })?;
    st.next = next_command(st.phase, &st.maintenance, sqlite_maintenance.as_ref());
    st.sqlite_maintenance = sqlite_maintenance;
    st.postgres = postgres.masked();
    Ok(st)
}

fn read_postgres(conn: &mut AnyConnection) -> Result<Status> {
    let maintenance = if has_table(conn, "interview_maintenance")? {
        maintenance::read(conn)?
    } else {
        never_set_up()
    };
    let AnyConnection::Postgres(pg) = conn else {
        return Err(Error::invalid("postgres", "not a PostgreSQL connection"));
    };
    let bookkept = has_pg_table(pg, "interview_migration_state")?;
    let state = if bookkept { state::load(pg)? } else { None };
    let phase = state.as_ref().map(State::phase).transpose()?;
    Ok(Status {
        interrupted: phase.and_then(Phase::step),
        phase,
        state,
        tables: if bookkept {
            state::progress(pg)?
        } else {
            Vec::new()
        },
        rejects: if bookkept {
            state::rejects(pg)?
        } else {
            Vec::new()
        },
        idempotency_keys: if has_pg_table(pg, "idempotency_keys")? {
            super::keys::pg_count(pg)?
        } else {
            0
        },
        maintenance,
        sqlite_maintenance: None,
        next: String::new(),
        postgres: String::new(),
    })
}

fn read_sqlite(path: &Path) -> Result<Maintenance> {
    let mut conn = AnyConnection::Sqlite(crate::connection::open_sqlite_read_only(path)?);
    if has_table(&mut conn, "interview_maintenance")? {
        maintenance::read(&mut conn)
    } else {
        Ok(never_set_up())
    }
}

/// A database the migrations never ran on: nothing refuses its writes.
fn never_set_up() -> Maintenance {
    Maintenance {
        paused: false,
        retired_to: None,
        changed_at: None,
    }
}

#[derive(QueryableByName)]
struct Present {
    #[diesel(sql_type = Bool)]
    present: bool,
}

fn has_pg_table(pg: &mut PgConnection, table: &str) -> Result<bool> {
    Ok(
        diesel::sql_query("SELECT to_regclass($1) IS NOT NULL AS present")
            .bind::<Text, _>(table)
            .get_result::<Present>(pg)?
            .present,
    )
}

fn has_table(conn: &mut AnyConnection, table: &str) -> Result<bool> {
    match conn {
        AnyConnection::Postgres(pg) => has_pg_table(pg, table),
        AnyConnection::Sqlite(c) => Ok(diesel::sql_query(
            "SELECT count(*) > 0 AS present FROM sqlite_master WHERE type = 'table' AND name = ?",
        )
        .bind::<Text, _>(table)
        .get_result::<Present>(c)?
        .present),
    }
}

/// The one command for where the cutover stands (`docs/cutover.md`, "When a
/// command was killed", says the same).
fn next_command(phase: Option<Phase>, pg: &Maintenance, sqlite: Option<&Maintenance>) -> String {
    let sqlite_retired = sqlite.is_some_and(|m| m.retired_to.is_some());
    match phase {
        None => "`migrate copy`: nothing was copied yet".into(),
        Some(Phase::Copying) => "`migrate copy`: the bulk copy resumes where it stopped".into(),
        Some(Phase::Copied) if sqlite_retired => {
            "none that is safe without a look: SQLite is retired but no switch is recorded (a \
             switch by a version before the recorded intents was killed); see docs/cutover.md, \
             \"When a command was killed\""
                .into()
        }
        Some(Phase::Copied) => {
            "`migrate follow` (or `sync`), `migrate verify --live --record`, then `migrate switch --to postgres`"
                .into()
        }
        Some(Phase::SwitchingToPostgres(step)) => format!(
            "`migrate switch --to postgres` finishes the switch interrupted at {step}; \
             `migrate switch --to sqlite` undoes it (PostgreSQL never took a write)"
        ),
        Some(Phase::Switched) if pg.paused => {
            "`migrate switch --to sqlite` (PostgreSQL is paused: the switch back runs its full \
             verify), or `migrate resume --postgres` to take writes again"
                .into()
        }
        Some(Phase::Switched) => {
            "nothing interrupted: PostgreSQL is live; `migrate follow --reverse` keeps SQLite \
             close behind for `migrate switch --to sqlite`"
                .into()
        }
        Some(Phase::SwitchingToSqlite(step @ (Step::BackPause | Step::BackLastEntries))) => {
            format!(
                "`migrate switch --to sqlite` finishes the switch back interrupted at {step}; \
                 `migrate switch --to postgres` undoes it"
            )
        }
        Some(Phase::SwitchingToSqlite(step)) => format!(
            "`migrate switch --to sqlite` finishes the switch back interrupted at {step} (past \
             its point of no return: PostgreSQL is retired)"
        ),
        Some(Phase::RolledBack) => {
            "nothing interrupted: SQLite is live again; `migrate copy --truncate --yes` starts a \
             new cutover"
                .into()
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown = &self.postgres;
        writeln!(f, "{shown}: {}", self.maintenance)?;
        if let Some(m) = &self.sqlite_maintenance {
            writeln!(f, "sqlite: {m}")?;
        }
        let time = |t: Option<chrono::DateTime<chrono::Utc>>| {
            t.map_or_else(|| "-".to_string(), timestamp::format)
        };
        match (&self.state, self.phase) {
            (Some(s), Some(phase)) => {
                writeln!(
                    f,
                    "source {} — {phase} (started {}, copied {}, last sync {}, switched {}, rolled back {})",
                    s.source,
                    timestamp::format(s.started_at),
                    time(s.copied_at),
                    time(s.synced_at),
                    time(s.switched_at),
                    time(s.rolled_back_at),
                )?;
                writeln!(
                    f,
                    "copy snapshot: session rowid {}, message id {}, draft id {}",
                    s.mark_session_rowid, s.mark_message_id, s.mark_draft_id
                )?;
                writeln!(
                    f,
                    "change log applied: SQLite's up to {}, PostgreSQL's (way back) up to {} \
                     (transaction horizon {})",
                    s.mark_change_seq.map_or("-".into(), |n| n.to_string()),
                    s.rollback_change_seq,
                    s.rollback_xid_horizon
                )?;
                writeln!(
                    f,
                    "last full verify equal up to {} ({})",
                    s.verified_change_seq.map_or("-".into(), |n| n.to_string()),
                    s.verified_at.map_or("never".into(), timestamp::format)
                )?;
            }
            _ => writeln!(f, "{shown}: nothing copied yet")?,
        }
        for p in &self.tables {
            writeln!(
                f,
                "{}: {}/{} handled, {} copied, {} rejected (last rowid {}, {})",
                p.table_name,
                p.rows_copied + p.rows_rejected,
                p.rows_total,
                p.rows_copied,
                p.rows_rejected,
                p.last_source_rowid.map_or("-".into(), |n| n.to_string()),
                timestamp::format(p.updated_at)
            )?;
        }
        writeln!(
            f,
            "idempotency keys (finished) in postgres: {}",
            self.idempotency_keys
        )?;
        for r in &self.rejects {
            writeln!(f, "  rejected: {r}")?;
        }
        if let Some(step) = self.interrupted {
            writeln!(f, "interrupted at: {step}")?;
        }
        write!(f, "next: {}", self.next)
    }
}
