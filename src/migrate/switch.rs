//! The switch: which database is live, moved only when the other side is paused, caught up and equal.

use std::path::Path;
use std::time::{Duration, Instant};

use diesel::prelude::*;

use super::changelog;
use super::lock::MigrationLock;
use super::pause;
use super::rollback::{self, Reading};
use super::source::{source_name, Source};
use super::state::{self, State};
use super::verify::{verify, VerifyReport};
use crate::connection::{AnyConnection, Backend, DatabaseUrl};
use crate::error::{Error, Result};

/// How long a switch waits for a follower's pass to let go of the migration lock.
const FOLLOWER_TURN: Duration = Duration::from_secs(10);

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

/// Moves the service to `to`: PostgreSQL (after copy and sync) or back to SQLite.
///
/// To PostgreSQL it requires SQLite paused, SQLite's change log applied up to
/// its last entry, and verify equal; it then installs PostgreSQL's change log
/// (for a way back), records the phase `switched`, retires the SQLite file
/// (paused for good, naming the masked PostgreSQL URL) and makes PostgreSQL
/// live.
///
/// Back to SQLite it applies the last of PostgreSQL's change log with every
/// writer locked out, requires SQLite equal, records `rolled_back`, retires
/// PostgreSQL, makes SQLite live and removes SQLite's change log. With
/// PostgreSQL paused by the operator it runs the full verify, and a failure
/// leaves PostgreSQL paused. With PostgreSQL live (under traffic, a reverse
/// follower keeping SQLite close behind) it pauses PostgreSQL itself, waiting
/// up to 10 s for the follower's pass to end, and verifies only the rows
/// PostgreSQL's log named since SQLite was last found equal;
/// [`SwitchReport::held_ms`] says how long writes were held, and a failure
/// leaves PostgreSQL live and accepting writes.
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
    // The way back takes turns with a reverse follower, whose passes hold the
    // lock for moments.
    let wait = match to {
        Backend::Sqlite => FOLLOWER_TURN,
        Backend::Postgres => Duration::ZERO,
    };
    let _lock = MigrationLock::acquire_waiting(postgres, wait)?;
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
    require_is_equal(&report)?;
    Ok(report)
}

fn require_is_equal(report: &VerifyReport) -> Result<()> {
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
    Ok(())
}

fn to_sqlite(
    sqlite: &Path,
    postgres: &DatabaseUrl,
    pg: &mut PgConnection,
    st: &State,
) -> Result<SwitchReport> {
    match st.phase.as_str() {
        "switched" => {}
        "rolled_back" => {
            // Interrupted after the phase was recorded: redo the idempotent steps.
            let report = require_equal(sqlite, postgres)?;
            let mut lite = pause::open_sqlite(sqlite)?;
            pause::retire(
                &mut pause::open_pg(postgres)?,
                &sqlite.display().to_string(),
            )?;
            pause::make_live(&mut lite)?;
            uninstall_sqlite_log(&mut lite)?;
            return Ok(switched_back(sqlite, postgres, report, true, None, None));
        }
        _ => {
            return Err(Error::Refused(format!(
                "the service never moved to {} (phase {}): SQLite is live already",
                postgres.masked(),
                st.phase
            )))
        }
    }
    let mut maint = pause::open_pg(postgres)?;
    if crate::maintenance::read(&mut maint)?.paused {
        // Paused by the operator: the final pass and the full verify; on a
        // failure PostgreSQL stays paused, as the operator left it.
        let back = switch_back(sqlite, postgres, pg, &mut maint, Verify::Full)
            .inspect_err(|_| stay_on_postgres(postgres, pg, &mut maint, Writes::Paused))?;
        return Ok(switched_back(
            sqlite,
            postgres,
            back.verify,
            false,
            None,
            None,
        ));
    }
    // Under traffic (a reverse follower usually keeps SQLite a moment
    // behind): writes are held from here until SQLite is live.
    let held = Instant::now();
    let back = pause::pause(&mut maint)
        .and_then(|()| switch_back(sqlite, postgres, pg, &mut maint, Verify::SinceVerified));
    match back {
        Ok(back) => Ok(switched_back(
            sqlite,
            postgres,
            back.verify,
            false,
            Some(held.elapsed().as_millis() as u64),
            back.verified_rows,
        )),
        Err(e) => {
            stay_on_postgres(postgres, pg, &mut maint, Writes::Accepted);
            Err(e)
        }
    }
}

/// Which verify the switch back runs before retiring PostgreSQL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verify {
    /// Every row (`migrate verify`).
    Full,
    /// The rows PostgreSQL's log named since SQLite was last found equal; the
    /// full verify when that horizon is unknown.
    SinceVerified,
}

/// What the switch back checked.
struct Back {
    verify: VerifyReport,
    verified_rows: Option<u64>,
}

/// With PostgreSQL paused: the last pass of the way back, the verify, then
/// PostgreSQL retired, the phase recorded and SQLite live.
fn switch_back(
    sqlite: &Path,
    postgres: &DatabaseUrl,
    pg: &mut PgConnection,
    maint: &mut AnyConnection,
    check: Verify,
) -> Result<Back> {
    let mut lite = pause::open_sqlite(sqlite)?;
    let mut src = Source::open(sqlite)?;
    // One snapshot for the pass and the bounded verify, taken with every
    // writer locked out: every entry is complete, whatever the horizon.
    let (passed, position, bounded) = pg.build_transaction().repeatable_read().run(|pg| {
        rollback::lock_writers(pg)?;
        let passed = rollback::pass(pg, &mut lite, Reading::Locked)?;
        let position = changelog::pg_position(pg)?;
        let bounded = match (check, passed.state.rollback_verified_horizon) {
            (Verify::SinceVerified, Some(from)) => {
                Some(rollback::verify_named(pg, &mut src, from)?)
            }
            _ => None,
        };
        Ok::<_, Error>((passed, position, bounded))
    })?;
    log::info!("switch back: last pass {:?}", passed.report);
    let (report, verified_rows) = match bounded {
        Some((report, rows)) => (report, Some(rows)),
        None => {
            if check == Verify::SinceVerified {
                log::warn!(
                    "switch back: no verified horizon recorded (a log installed by an older \
                     version): the full verify runs while writes are held"
                );
            }
            (verify(sqlite, postgres)?, None)
        }
    };
    require_is_equal(&report)?;
    // Retired first, then checked again, as on the way there: a write let in
    // by a resume meanwhile is caught before SQLite goes live.
    pause::retire(maint, &sqlite.display().to_string())?;
    let now = changelog::pg_position(pg)?;
    if now > position {
        return Err(Error::Refused(format!(
            "{} was written to during the switch (change log at {now}, {position} applied): \
             switch again",
            postgres.masked()
        )));
    }
    state::mark_rolled_back(pg)?;
    if let Err(e) = pause::make_live(&mut lite) {
        state::unmark_rolled_back(pg)?;
        return Err(e);
    }
    // SQLite is live: from here on PostgreSQL must never be made live again.
    if let Err(e) = uninstall_sqlite_log(&mut lite) {
        log::warn!(
            "{} is live, but removing its change log failed ({e}); it only grows: run \
             `migrate switch --to sqlite` again to remove it",
            sqlite.display()
        );
    }
    Ok(Back {
        verify: report,
        verified_rows,
    })
}

/// How a failed switch back leaves PostgreSQL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Writes {
    /// Live: the switch paused it, so a failure must not leave the service refusing writes.
    Accepted,
    /// Paused, as the operator had it before the switch.
    Paused,
}

/// A switch back that failed: the service goes on on PostgreSQL, no longer
/// retired (unless the phase says SQLite went live, see [`switch_back`]).
fn stay_on_postgres(
    postgres: &DatabaseUrl,
    pg: &mut PgConnection,
    maint: &mut AnyConnection,
    writes: Writes,
) {
    let phase = state::load(pg)
        .or_else(|_| state::connect(postgres).and_then(|mut c| state::load(&mut c)))
        .map(|s| s.map(|s| s.phase));
    if !matches!(&phase, Ok(Some(p)) if p == "switched") {
        log::error!(
            "the switch back failed and the phase is {phase:?}, not switched; {} stays paused: \
             run `migrate switch --to sqlite` again",
            postgres.masked()
        );
        return;
    }
    let restore = |c: &mut AnyConnection| {
        pause::make_live(c)?;
        match writes {
            Writes::Accepted => Ok(()),
            Writes::Paused => pause::pause(c),
        }
    };
    let resumed =
        restore(maint).or_else(|_| pause::open_pg(postgres).and_then(|mut c| restore(&mut c)));
    match resumed {
        Ok(()) => log::warn!(
            "switch back failed: {} is {} again",
            postgres.masked(),
            match writes {
                Writes::Accepted => "live",
                Writes::Paused => "paused, not retired,",
            }
        ),
        Err(e) => log::error!(
            "switch back failed, and resuming {} failed too ({e}): run `migrate resume --postgres …`",
            postgres.masked()
        ),
    }
}

/// SQLite serves without a migration in view, where its log would only
/// grow. A new cutover starts with `copy --truncate --yes`, which installs it again.
fn uninstall_sqlite_log(lite: &mut AnyConnection) -> Result<()> {
    if let AnyConnection::Sqlite(c) = lite {
        changelog::uninstall_sqlite(c)?;
    }
    Ok(())
}

fn switched_back(
    sqlite: &Path,
    postgres: &DatabaseUrl,
    verify: VerifyReport,
    already_switched: bool,
    held_ms: Option<u64>,
    verified_rows: Option<u64>,
) -> SwitchReport {
    log::info!(
        "switched back: {} is live; {} is retired{}",
        sqlite.display(),
        postgres.masked(),
        held_ms.map_or(String::new(), |ms| format!("; writes held {ms} ms"))
    );
    SwitchReport {
        live: Backend::Sqlite,
        verify,
        already_switched,
        held_ms,
        verified_rows,
    }
}
