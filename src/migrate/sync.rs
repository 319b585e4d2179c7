//! The incremental sync: the SQLite change log past its mark, applied to PostgreSQL in one transaction.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use diesel::pg::upsert::excluded;
use diesel::prelude::*;

use super::changed::{read_changed, Changed};
use super::changelog;
use super::keys::{self, KeysApplied};
use super::lock::MigrationLock;
use super::normalize::Reject;
use super::phase::Phase;
use super::pipeline::{bump_sequences, write_rejects};
use super::source::{Source, Table};
use super::state::{self, State};
use super::verify::BoundedCheck;
use crate::connection::DatabaseUrl;
use crate::error::{Error, Refusal, Result};
use crate::schema::{drafts, messages, sessions};
use crate::store::sessions::SessionRow;
use crate::types::DbUuid;

/// How a sync runs.
#[derive(Debug, Clone, Default)]
pub struct SyncOptions {
    /// Load valid rows and append invalid ones here as JSON lines; without it
    /// the sync is strict and writes nothing when any changed row is invalid.
    pub reject_file: Option<PathBuf>,
}

/// What a sync applied.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct SyncReport {
    /// Sessions new to PostgreSQL.
    pub sessions_inserted: u64,
    /// Sessions PostgreSQL held, written again with SQLite's current values.
    pub sessions_updated: u64,
    /// Sessions deleted in SQLite, deleted (with their messages and drafts) in PostgreSQL.
    pub sessions_deleted: u64,
    /// Messages inserted or updated.
    pub messages: u64,
    /// Drafts inserted or updated.
    pub drafts: u64,
    /// Messages deleted.
    pub messages_deleted: u64,
    /// Drafts deleted.
    pub drafts_deleted: u64,
    /// Rows rejected: sessions, messages, drafts.
    pub rejected: [u64; 3],
    /// Finished idempotency keys written and deleted.
    pub keys: KeysApplied,
    /// Change log entries read.
    pub entries: u64,
    /// The change log position applied, recorded in PostgreSQL.
    pub change_seq: i64,
    /// Applied entries deleted from the SQLite log afterwards.
    pub trimmed: u64,
    /// Time taken.
    pub elapsed: Duration,
}

/// Applies to PostgreSQL what changed in SQLite since the copy's snapshot or the last sync.
///
/// Reads the SQLite change log past the mark recorded in PostgreSQL, inside
/// one read snapshot, collapses it per row and reads each named row as it is
/// now: present rows are normalised and upserted (ids kept), absent ones
/// deleted (a session's messages and drafts with it). Everything and the new
/// mark commit in one PostgreSQL transaction, so a crash leaves the old mark
/// and the next run applies the same entries again. The cost follows the
/// number of changes. Afterwards the applied entries are trimmed from the log.
///
/// Refuses (nothing written) when another migration command runs, when the
/// copy has not finished, and after `switch`: PostgreSQL's rows are then the
/// newer ones.
///
/// ```no_run
/// use interview_store::migrate::{sync, SyncOptions};
/// let report = sync("interview.db".as_ref(), &"postgres://app@db/interview".parse()?, &SyncOptions::default())?;
/// println!("{} messages applied", report.messages);
/// # Ok::<(), interview_store::Error>(())
/// ```
pub fn sync(sqlite: &Path, postgres: &DatabaseUrl, opts: &SyncOptions) -> Result<SyncReport> {
    // The source first: a missing file must not leave PostgreSQL set up for nothing.
    crate::connection::require_sqlite_file(sqlite)?;
    let started = Instant::now();
    // A running follower holds the lock for one batch at a time: take turns with it.
    let _lock = MigrationLock::acquire_waiting(postgres, super::lock::FOLLOWER_TURN)?;
    let mut pg = state::connect(postgres)?;
    let mut src = Source::open(sqlite)?;
    let strict = opts.reject_file.is_none();
    let pass = pg.transaction(|pg| pass(pg, &mut src, sqlite, postgres, strict, None))?;
    let mut report = pass.report;
    report.trimmed = trim(&mut src, pass.trim_upto);
    if let Some(path) = &opts.reject_file {
        if !pass.rejects.is_empty() {
            write_rejects(path, &pass.rejects, true)?;
        }
    }
    report.elapsed = started.elapsed();
    log::info!("sync: {report:?}");
    Ok(report)
}

/// One applied batch of the log.
pub(crate) struct Pass {
    pub report: SyncReport,
    /// Invalid rows met (none when strict: the pass fails instead).
    pub rejects: Vec<Reject>,
    /// How far the SQLite log may be trimmed: the applied mark, but never past
    /// the last full verify, whose later entries a switch under traffic checks.
    pub trim_upto: i64,
    /// The rows named since the position asked for, compared after the
    /// writes in the same snapshot (see [`pass`]).
    pub recheck: Option<BoundedCheck>,
}

/// Applies the log past PostgreSQL's mark, inside the caller's PostgreSQL
/// transaction (which must hold the migration lock): the phase check, the
/// read in one SQLite snapshot, and the writes with the new mark.
///
/// With `recheck_from`, the rows named by entries past that position are then
/// compared with PostgreSQL in the same snapshot: both sides stand at the
/// same position there, so any difference is a fault, not a write in flight.
pub(crate) fn pass(
    pg: &mut PgConnection,
    src: &mut Source,
    sqlite: &Path,
    postgres: &DatabaseUrl,
    strict: bool,
    recheck_from: Option<i64>,
) -> Result<Pass> {
    let started = Instant::now();
    let source_name = super::source::source_name(sqlite);
    let st = state::load(pg)?;
    let mark = sync_allowed(st.as_ref(), &source_name, postgres)?;
    if !changelog::sqlite_installed(src.conn())? {
        return Err(Error::refused(
            Refusal::NotReady,
            format!(
                "{source_name} has no change log, so its changes since the copy cannot be known; \
             run `migrate copy --truncate --yes` to copy it again (it installs the log)"
            ),
        ));
    }
    // A file the store adopted after the copy has grown the keys table since.
    changelog::install_sqlite_keys(src.conn())?;
    let mut report = SyncReport::default();
    let (rejects, recheck) = src.snapshot(|src| {
        let rejects = read_and_apply(src, pg, mark, strict, &mut report)?;
        let recheck = match recheck_from {
            Some(from) => Some(super::recheck::sqlite_since(src, pg, from)?),
            None => None,
        };
        Ok((rejects, recheck))
    })?;
    let verified = st.and_then(|s| s.verified_change_seq).unwrap_or(i64::MAX);
    report.elapsed = started.elapsed();
    Ok(Pass {
        trim_upto: report.change_seq.min(verified),
        report,
        rejects,
        recheck,
    })
}

/// Reads the entries past `mark` and the rows they name (in the caller's
/// SQLite snapshot) and writes them with the new mark (in the caller's
/// PostgreSQL transaction). Returns the invalid rows met.
fn read_and_apply(
    src: &mut Source,
    pg: &mut PgConnection,
    mark: i64,
    strict: bool,
    report: &mut SyncReport,
) -> Result<Vec<Reject>> {
    let position = changelog::sqlite_position(src.conn())?;
    if position < mark {
        return Err(Error::refused(
            Refusal::NotReady,
            format!(
                "the change log stands at {position}, behind the mark {mark} recorded in \
             PostgreSQL: the log was recreated; run `migrate copy --truncate --yes`"
            ),
        ));
    }
    let changes = changelog::sqlite_changes(src.conn(), mark)?;
    let read = read_changed(src, pg, &changes)?;
    let rejects = read.rejects();
    if strict && !rejects.is_empty() {
        return Err(Error::InvalidSource {
            count: rejects.len(),
            rejects,
        });
    }
    let keys = keys::read_sqlite(src.conn(), &changes.keys, changes.all_keys)?;
    report.entries = changes.entries;
    report.change_seq = changes.last_seq;
    apply(pg, &read, changes.last_seq, report)?;
    report.keys = keys::apply_to_pg(pg, src.conn(), &keys)?;
    Ok(rejects)
}

/// The phase check: the change-log mark to sync from, or why not.
fn sync_allowed(st: Option<&State>, source_name: &str, postgres: &DatabaseUrl) -> Result<i64> {
    let Some(st) = st else {
        return Err(Error::refused(
            Refusal::OutOfOrder,
            format!(
                "nothing was copied into {} yet: run `migrate copy` first",
                postgres.masked()
            ),
        ));
    };
    if st.source != source_name {
        return Err(Error::refused(
            Refusal::Foreign,
            format!(
                "{} holds a copy of {}, not of {source_name}",
                postgres.masked(),
                st.source
            ),
        ));
    }
    match st.phase()? {
        Phase::Copying => Err(Error::refused(
            Refusal::OutOfOrder,
            "the bulk copy has not finished: run `migrate copy` again to finish it",
        )),
        Phase::Switched | Phase::SwitchingToSqlite(_) => Err(Error::refused(
            Refusal::OutOfOrder,
            format!(
                "refusing to sync: the service moved to {} ({}), so its rows there are newer than \
             SQLite's and a sync would overwrite them; nothing was changed. To go back to SQLite: \
             `migrate pause --postgres …`, `migrate rollback-sync`, `migrate switch --to sqlite`",
                postgres.masked(),
                st.switched_at.map_or("-".into(), |t| t.to_string())
            ),
        )),
        Phase::RolledBack => Err(Error::refused(
            Refusal::OutOfOrder,
            format!(
                "refusing to sync: the service moved back to SQLite ({}) and {} is retired; \
             to start a new cutover run `migrate copy --truncate --yes`",
                st.rolled_back_at.map_or("-".into(), |t| t.to_string()),
                postgres.masked()
            ),
        )),
        // While a switch there is under way PostgreSQL is not live yet: its
        // own last pass is one of these.
        Phase::Copied | Phase::SwitchingToPostgres(_) => st.mark_change_seq.ok_or_else(|| {
            Error::refused(
                Refusal::NotReady,
                "this copy was made before the change log existed, so later changes cannot be \
                 known: run `migrate copy --truncate --yes`",
            )
        }),
    }
}

/// Rows per INSERT statement (PostgreSQL takes at most 65,535 parameters).
const UPSERT_ROWS: usize = 1_000;

/// Writes the changed rows into PostgreSQL, inside the caller's transaction.
fn apply(
    pg: &mut PgConnection,
    changed: &Changed,
    mark: i64,
    report: &mut SyncReport,
) -> Result<()> {
    upsert_sessions(pg, &changed.sessions, report)?;
    for chunk in changed.messages.chunks(UPSERT_ROWS) {
        diesel::insert_into(messages::table)
            .values(chunk)
            .on_conflict(messages::id)
            .do_update()
            .set((
                messages::session_id.eq(excluded(messages::session_id)),
                messages::role.eq(excluded(messages::role)),
                messages::text.eq(excluded(messages::text)),
                messages::created_at.eq(excluded(messages::created_at)),
            ))
            .execute(pg)?;
    }
    report.messages = changed.messages.len() as u64;
    for chunk in changed.drafts.chunks(UPSERT_ROWS) {
        diesel::insert_into(drafts::table)
            .values(chunk)
            .on_conflict(drafts::id)
            .do_update()
            .set((
                drafts::session_id.eq(excluded(drafts::session_id)),
                drafts::content.eq(excluded(drafts::content)),
                drafts::created_at.eq(excluded(drafts::created_at)),
            ))
            .execute(pg)?;
    }
    report.drafts = changed.drafts.len() as u64;
    delete_rows(pg, changed, report)?;
    for (i, table) in Table::ALL.into_iter().enumerate() {
        for key in &changed.applied_keys[i] {
            state::record_reject(pg, table, key, None)?;
        }
        for r in &changed.rejected[i] {
            state::record_reject(pg, table, &r.id, Some(r))?;
        }
        report.rejected[i] = changed.rejected[i].len() as u64;
    }
    bump_sequences(pg)?;
    state::advance(pg, mark)
}

fn upsert_sessions(
    pg: &mut PgConnection,
    rows: &[SessionRow],
    report: &mut SyncReport,
) -> Result<()> {
    for chunk in rows.chunks(UPSERT_ROWS) {
        let ids: Vec<DbUuid> = chunk.iter().map(|r| r.id).collect();
        let existing: i64 = sessions::table
            .filter(sessions::id.eq_any(&ids))
            .count()
            .get_result(pg)?;
        report.sessions_updated += existing as u64;
        report.sessions_inserted += (chunk.len() as i64 - existing) as u64;
        diesel::insert_into(sessions::table)
            .values(chunk)
            .on_conflict(sessions::id)
            .do_update()
            .set((
                sessions::created_at.eq(excluded(sessions::created_at)),
                sessions::updated_at.eq(excluded(sessions::updated_at)),
                sessions::summary.eq(excluded(sessions::summary)),
            ))
            .execute(pg)?;
    }
    Ok(())
}

/// Deletes what SQLite no longer holds: children first, then sessions with
/// whatever children PostgreSQL still has of them.
fn delete_rows(pg: &mut PgConnection, changed: &Changed, report: &mut SyncReport) -> Result<()> {
    for chunk in changed.deleted_messages.chunks(10_000) {
        report.messages_deleted +=
            diesel::delete(messages::table.filter(messages::id.eq_any(chunk))).execute(pg)? as u64;
    }
    for chunk in changed.deleted_drafts.chunks(10_000) {
        report.drafts_deleted +=
            diesel::delete(drafts::table.filter(drafts::id.eq_any(chunk))).execute(pg)? as u64;
    }
    for chunk in changed.deleted_sessions.chunks(10_000) {
        report.messages_deleted +=
            diesel::delete(messages::table.filter(messages::session_id.eq_any(chunk)))
                .execute(pg)? as u64;
        report.drafts_deleted +=
            diesel::delete(drafts::table.filter(drafts::session_id.eq_any(chunk))).execute(pg)?
                as u64;
        report.sessions_deleted +=
            diesel::delete(sessions::table.filter(sessions::id.eq_any(chunk))).execute(pg)? as u64;
    }
    Ok(())
}

/// Deletes the applied entries from the SQLite log; best effort (a busy file
/// or a failure only delays it to the next sync, which reads past the mark anyway).
pub(crate) fn trim(src: &mut Source, upto: i64) -> u64 {
    match changelog::trim_sqlite(src.conn(), upto) {
        Ok(n) => n as u64,
        Err(e) => {
            log::warn!("could not trim the applied change log entries (the next sync will): {e}");
            0
        }
    }
}
