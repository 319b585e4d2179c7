//! The switch: which database is live, moved only when the other side is paused, caught up and equal.

use std::path::Path;

use diesel::prelude::*;

use super::changelog;
use super::lock::MigrationLock;
use super::pause;
use super::source::{source_name, Source};
use super::state::{self, State};
use super::verify::{verify, VerifyReport};
use crate::connection::{Backend, DatabaseUrl};
use crate::error::{Error, Result};

/// What [`switch`] did.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct SwitchReport {
    /// The backend now live.
    pub live: Backend,
    /// The verification the switch required.
    pub verify: VerifyReport,
    /// The switch had already happened; this run only redid its idempotent steps.
    pub already_switched: bool,
    /// How long the old side refused writes while the switch ran (from its
    /// pause by the switch to the new side going live); `None` when the
    /// operator had paused it before.
    pub held_ms: Option<u64>,
    /// Rows checked by the bounded verify of a switch under traffic (rows
    /// named by the change log since the last full verify); `None` when the
    /// full verify ran instead.
    pub verified_rows: Option<u64>,
}

/// Moves the service to `to`: PostgreSQL (after copy and sync) or back to SQLite (after rollback-sync).
///
/// To PostgreSQL it requires SQLite paused, SQLite's change log applied up to
/// its last entry, and verify equal; it then installs PostgreSQL's change log
/// (for a way back), records the phase `switched`, retires the SQLite file
/// (paused for good, naming the masked PostgreSQL URL) and makes PostgreSQL
/// live. Back to SQLite it requires PostgreSQL paused, its change log applied
/// by rollback-sync, and verify equal; it records `rolled_back`, retires
/// PostgreSQL, makes SQLite live and removes SQLite's change log.
///
/// Each step is idempotent and the phase is recorded first: a switch
/// interrupted half-way finishes when run again.
///
/// ```no_run
/// use interview_store::migrate::switch;
/// use interview_store::Backend;
/// let report = switch("interview.db".as_ref(), &"postgres://app@db/interview".parse()?, Backend::Postgres)?;
/// assert_eq!(report.live, Backend::Postgres);
/// # Ok::<(), interview_store::Error>(())
/// ```
pub fn switch(sqlite: &Path, postgres: &DatabaseUrl, to: Backend) -> Result<SwitchReport> {
    // The source first: a missing file must not leave PostgreSQL set up for nothing.
    crate::connection::require_sqlite_file(sqlite)?;
    let _lock = MigrationLock::acquire(postgres)?;
    let mut pg = state::connect(postgres)?;
    let st = state::load(&mut pg)?;
    let st = st.ok_or_else(|| {
        Error::Refused(format!(
            "nothing was copied into {} yet: run `migrate copy` and `migrate sync` first",
            postgres.masked()
        ))
    })?;
    if st.source != source_name(sqlite) {
        return Err(Error::Refused(format!(
            "{} holds a copy of {}, not of {}",
            postgres.masked(),
            st.source,
            source_name(sqlite)
        )));
    }
    match to {
        Backend::Postgres => to_postgres(sqlite, postgres, &mut pg, &st),
        Backend::Sqlite => to_sqlite(sqlite, postgres, &mut pg, &st),
    }
}

fn to_postgres(
    sqlite: &Path,
    postgres: &DatabaseUrl,
    pg: &mut PgConnection,
    st: &State,
) -> Result<SwitchReport> {
    let already_switched = match st.phase.as_str() {
        "copied" => false,
        "switched" => true,
        "copying" => {
            return Err(Error::Refused(
                "the bulk copy has not finished: run `migrate copy` again, then `migrate sync`"
                    .into(),
            ))
        }
        _ => {
            return Err(Error::Refused(format!(
                "{} is retired since the rollback to SQLite; start again with `migrate copy --truncate --yes`",
                postgres.masked()
            )))
        }
    };
    let mut lite = pause::open_sqlite(sqlite)?;
    if !already_switched {
        require_sqlite_caught_up(sqlite, st)?;
    }
    let report = require_equal(sqlite, postgres)?;
    // Retired first, then checked again: a write that slipped in after the
    // checks (someone resumed SQLite meanwhile) is caught before PostgreSQL
    // goes live, and SQLite is left paused, nothing lost.
    pause::retire(&mut lite, &postgres.masked())?;
    if !already_switched {
        if let Err(e) = require_sqlite_caught_up(sqlite, st) {
            pause::make_live(&mut lite)?;
            pause::pause(&mut lite)?;
            return Err(e);
        }
        pg.transaction(|pg| {
            changelog::install_pg(pg)?;
            let from = changelog::pg_position(pg)?;
            state::mark_switched(pg, from)
        })?;
    }
    pause::make_live(&mut pause::open_pg(postgres)?)?;
    log::info!(
        "switched: {} is live; {} is retired",
        postgres.masked(),
        sqlite.display()
    );
    Ok(SwitchReport {
        live: Backend::Postgres,
        verify: report,
        already_switched,
        held_ms: None,
        verified_rows: None,
    })
}

/// SQLite paused, and every entry of its log applied by sync.
fn require_sqlite_caught_up(sqlite: &Path, st: &State) -> Result<()> {
    if !pause::sqlite_paused(sqlite)? {
        return Err(Error::Refused(format!(
            "{} is not paused: run `migrate pause --sqlite …`, then `migrate sync`, then switch",
            sqlite.display()
        )));
    }
    let mut src = Source::open(sqlite)?;
    let position = changelog::sqlite_position(src.conn())?;
    let mark = st.mark_change_seq.unwrap_or(0);
    if position > mark {
        return Err(Error::Refused(format!(
            "{} has changes PostgreSQL does not (change log at {position}, applied up to {mark}): \
             run `migrate sync` first",
            sqlite.display()
        )));
    }
    Ok(())
}

fn require_equal(sqlite: &Path, postgres: &DatabaseUrl) -> Result<VerifyReport> {
    let report = verify(sqlite, postgres)?;
    if !report.is_equal() {
        return Err(Error::Refused(format!(
            "verify found {} difference(s) between the two sides, so the switch would lose or \
             change data; run `migrate verify` to see them",
            report.sessions.differences
                + report.messages.differences
                + report.drafts.differences
                + report.idempotency_keys.differences
        )));
    }
    Ok(report)
}

fn to_sqlite(
    sqlite: &Path,
    postgres: &DatabaseUrl,
    pg: &mut PgConnection,
    st: &State,
) -> Result<SwitchReport> {
    let already_switched = match st.phase.as_str() {
        "switched" => false,
        "rolled_back" => true,
        _ => {
            return Err(Error::Refused(format!(
                "the service never moved to {} (phase {}): SQLite is live already",
                postgres.masked(),
                st.phase
            )))
        }
    };
    if !already_switched {
        if !pause::pg_paused(postgres)? {
            return Err(Error::Refused(format!(
                "{} is not paused: run `migrate pause --postgres …`, then `migrate rollback-sync`, then switch",
                postgres.masked()
            )));
        }
        let position = changelog::pg_position(pg)?;
        if position > st.rollback_change_seq {
            return Err(Error::Refused(format!(
                "{} has changes SQLite does not (change log at {position}, applied up to {}): \
                 run `migrate rollback-sync` first",
                postgres.masked(),
                st.rollback_change_seq
            )));
        }
    }
    let report = require_equal(sqlite, postgres)?;
    let mut lite = pause::open_sqlite(sqlite)?;
    // Retired first, then checked again, as on the way there.
    let mut pg_maint = pause::open_pg(postgres)?;
    pause::retire(&mut pg_maint, &sqlite.display().to_string())?;
    if !already_switched {
        let position = changelog::pg_position(pg)?;
        if position > st.rollback_change_seq {
            pause::make_live(&mut pg_maint)?;
            pause::pause(&mut pg_maint)?;
            return Err(Error::Refused(format!(
                "{} was written to during the switch (change log at {position}): it is paused \
                 again; run `migrate rollback-sync`, then switch",
                postgres.masked()
            )));
        }
        state::mark_rolled_back(pg)?;
    }
    pause::make_live(&mut lite)?;
    // SQLite serves without a migration in view: its log would only grow.
    // A new cutover starts with `copy --truncate --yes`, which installs it again.
    if let crate::AnyConnection::Sqlite(c) = &mut lite {
        changelog::uninstall_sqlite(c)?;
    }
    log::info!(
        "switched back: {} is live; {} is retired",
        sqlite.display(),
        postgres.masked()
    );
    Ok(SwitchReport {
        live: Backend::Sqlite,
        verify: report,
        already_switched,
        held_ms: None,
        verified_rows: None,
    })
}
