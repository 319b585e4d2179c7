//! The switch: which database is live, moved only when the other side is paused, caught up and equal.

use std::path::Path;

use diesel::prelude::*;

use super::changelog;
use super::lock::MigrationLock;
use super::pause;
use super::source::{source_name, Source};
use super::state::{self, State};
use super::verify::{verify_locked, VerifyReport};
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
    // A running follower holds the lock for one batch at a time: take turns with it.
    let _lock = MigrationLock::acquire_waiting(postgres, super::lock::FOLLOWER_TURN)?;
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
    if !already_switched && !pause::sqlite_paused(sqlite)? {
        return online_to_postgres(sqlite, postgres, pg, st, &mut lite);
    }
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

/// The switch under traffic: SQLite is paused here, for as short as it takes
/// to apply the last log entries, compare the rows they name, retire SQLite
/// and make PostgreSQL live. Writes arriving in that window are refused by the
/// database and held by the servers (see `INTERVIEW_PAUSE_WAIT_MS`), not
/// failed. Any failure resumes SQLite: the service never stays paused because
/// a switch did not go through.
///
/// Before the pause, with writes still flowing, the switch catches up itself
/// and compares the rows written since the last full verify; the pause then
/// covers only what was written during that catch-up. The hold therefore
/// follows the write rate over a few milliseconds, not the database's size.
fn online_to_postgres(
    sqlite: &Path,
    postgres: &DatabaseUrl,
    pg: &mut PgConnection,
    st: &State,
    lite: &mut crate::AnyConnection,
) -> Result<SwitchReport> {
    let Some(verified) = st.verified_change_seq else {
        return Err(Error::Refused(format!(
            "{} is not paused and no full verify was recorded: run `migrate verify` first (a \
             switch under traffic checks only the rows changed since it), or pause SQLite for a \
             switch with a full verify",
            sqlite.display()
        )));
    };
    let mut src = Source::open(sqlite)?;
    let mut live_pg = pause::open_pg(postgres)?;
    let mut from = verified;
    let mut rows = 0;
    for _ in 0..CATCH_UP_PASSES {
        let (upto, checked, entries) = checked_pass(sqlite, postgres, pg, &mut src, from)?;
        (from, rows) = (upto, rows + checked);
        if entries <= CAUGHT_UP {
            break;
        }
    }
    // Ready before the pause, so the pause does not wait for DDL; PostgreSQL is
    // not live yet, so what it logs until the switch is the tool's own writes.
    pg.transaction(changelog::install_pg)?;
    pause::pause(lite)?;
    let held = std::time::Instant::now();
    let mut steps = Vec::new();
    let mut step = |name: &'static str, since: &mut std::time::Instant| {
        steps.push((name, since.elapsed()));
        *since = std::time::Instant::now();
    };
    let mut t = held;
    let result = checked_pass(sqlite, postgres, pg, &mut src, from).and_then(|(_, checked, _)| {
        step("last entries", &mut t);
        pause::retire(lite, &postgres.masked())?;
        step("retire", &mut t);
        pg.transaction(|pg| {
            changelog::install_pg(pg)?;
            changelog::clear_pg(pg)?;
            let from = changelog::pg_position(pg)?;
            state::mark_switched(pg, from)
        })?;
        step("record", &mut t);
        pause::make_live(&mut live_pg)?;
        step("live", &mut t);
        Ok(checked)
    });
    log::info!("switch: writes held for {steps:?}");
    let held_ms = held.elapsed().as_millis() as u64;
    let rows = match result {
        Ok(checked) => rows + checked,
        Err(e) => {
            if let Err(resume) = pause::make_live(lite) {
                log::error!(
                    "the switch failed and SQLite could not be resumed ({resume}): run \
                     `migrate resume --sqlite {}`",
                    sqlite.display()
                );
            }
            return Err(e);
        }
    };
    log::info!(
        "switched under traffic: {} is live; {} is retired; writes held {held_ms} ms, {rows} rows rechecked",
        postgres.masked(),
        sqlite.display()
    );
    Ok(SwitchReport {
        live: Backend::Postgres,
        verify: VerifyReport::default(),
        already_switched: false,
        held_ms: Some(held_ms),
        verified_rows: Some(rows),
    })
}

/// Catch-up passes before the pause, at most: each covers what was written
/// during the one before.
const CATCH_UP_PASSES: usize = 3;

/// Entries a pass may leave for the paused one.
const CAUGHT_UP: u64 = 200;

/// One sync pass that also compares the rows named past `from`, in the same
/// snapshot: the position applied, the rows compared, the entries applied.
/// Refuses when any row differs.
fn checked_pass(
    sqlite: &Path,
    postgres: &DatabaseUrl,
    pg: &mut PgConnection,
    src: &mut Source,
    from: i64,
) -> Result<(i64, u64, u64)> {
    let started = std::time::Instant::now();
    let pass =
        pg.transaction(|pg| super::sync::pass(pg, src, sqlite, postgres, true, Some(from)))?;
    let recheck = pass.recheck.unwrap_or_default();
    log::debug!(
        "switch: {} entries applied, {} rows compared in {:?}",
        pass.report.entries,
        recheck.rows,
        started.elapsed()
    );
    if !recheck.is_equal() {
        return Err(Error::Refused(format!(
            "the rows changed since the last full verify differ between the two sides, so the \
             switch would lose or change data; SQLite is live as before. {}",
            recheck.describe()
        )));
    }
    Ok((pass.report.change_seq, recheck.rows, pass.report.entries))
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
    let report = verify_locked(sqlite, postgres)?;
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
