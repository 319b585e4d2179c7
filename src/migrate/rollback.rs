//! The way back: what was written to PostgreSQL after the switch, applied to SQLite from PostgreSQL's change log.

use std::collections::BTreeSet;
use std::path::Path;

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use uuid::Uuid;

use super::changelog::{self, Changes};
use super::keys::{self, KeyChanges, KeysApplied};
use super::lock::MigrationLock;
use super::state;
use crate::connection::DatabaseUrl;
use crate::error::{Error, Result};
use crate::schema::{drafts, messages, sessions};
use crate::store::drafts::DraftRow;
use crate::store::messages::MessageRow;
use crate::store::sessions::SessionRow;
use crate::types::DbUuid;

/// What [`rollback_sync`] applied to SQLite.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct RollbackReport {
    /// Sessions created on PostgreSQL after the switch.
    pub sessions_inserted: u64,
    /// Sessions changed on PostgreSQL, written again into SQLite.
    pub sessions_updated: u64,
    /// Sessions deleted on PostgreSQL, deleted (with their children) in SQLite.
    pub sessions_deleted: u64,
    /// Messages inserted or updated.
    pub messages: u64,
    /// Drafts inserted or updated.
    pub drafts: u64,
    /// Messages deleted.
    pub messages_deleted: u64,
    /// Drafts deleted.
    pub drafts_deleted: u64,
    /// Finished idempotency keys written and deleted.
    pub keys: KeysApplied,
    /// PostgreSQL change log entries read.
    pub entries: u64,
    /// PostgreSQL's change log position now applied to SQLite.
    pub change_seq: i64,
}

/// Applies to SQLite everything written to PostgreSQL since the switch (or the last rollback-sync).
///
/// Reads PostgreSQL's change log (installed by `migrate switch`) past the
/// mark in the bookkeeping, collapses it per row, and writes each named row
/// as it is now into SQLite (ids kept, canonical formats), or deletes it, in
/// one SQLite transaction that passes SQLite's retirement. Then records the
/// new mark in PostgreSQL and trims the applied entries. Running it again
/// applies nothing twice.
///
/// PostgreSQL must be paused (`migrate pause --postgres`): its sequence
/// values are not in commit order, so "every entry past the mark" is only
/// complete when no writer is in flight. The log is read holding SHARE locks
/// on the three tables, which waits out any writer the pause let finish.
///
/// ```no_run
/// use interview_store::migrate::rollback_sync;
/// let report = rollback_sync("interview.db".as_ref(), &"postgres://app@db/interview".parse()?)?;
/// println!("{} messages back in SQLite", report.messages);
/// # Ok::<(), interview_store::Error>(())
/// ```
pub fn rollback_sync(sqlite: &Path, postgres: &DatabaseUrl) -> Result<RollbackReport> {
    // The source first: a missing file must not leave PostgreSQL set up for nothing.
    crate::connection::require_sqlite_file(sqlite)?;
    let _lock = MigrationLock::acquire(postgres)?;
    let mut pg = state::connect(postgres)?;
    let mark = rollback_allowed(&mut pg, postgres)?;
    let mut lite = super::pause::open_sqlite(sqlite)?;
    let rows = pg.transaction(|pg| {
        // Waits for any writer still in flight; the pause refuses new ones.
        // The keys too: a prune touches no other table, and its entry must not come late.
        pg.batch_execute("LOCK TABLE sessions, messages, drafts, idempotency_keys IN SHARE MODE")?;
        let changes = changelog::pg_changes(pg, mark)?;
        read_rows(pg, changes)
    })?;
    let mut report = RollbackReport {
        entries: rows.changes.entries,
        change_seq: rows.changes.last_seq,
        ..Default::default()
    };
    super::pause::write_into_sqlite(&mut lite, |c| {
        apply(c, &rows, &mut report)?;
        report.keys = keys::apply_to_sqlite(c, &rows.keys)?;
        Ok(())
    })?;
    pg.transaction(|pg| {
        state::advance_rollback(pg, report.change_seq)?;
        changelog::trim_pg(pg, report.change_seq)
    })?;
    log::info!("rollback-sync: {report:?}");
    Ok(report)
}

/// The phase and pause checks: PostgreSQL's log mark to apply from, or why not.
fn rollback_allowed(pg: &mut PgConnection, postgres: &DatabaseUrl) -> Result<i64> {
    let st = state::load(pg)?;
    match st.as_ref().map(|s| s.phase.as_str()) {
        Some("switched") => {}
        phase => {
            return Err(Error::Refused(format!(
                "rollback-sync applies what was written to {} after `migrate switch`, but the \
                 cutover is {}: nothing to roll back",
                postgres.masked(),
                phase.map_or("not started".to_string(), |p| format!("in phase {p}"))
            )))
        }
    }
    if !super::pause::pg_paused(postgres)? {
        return Err(Error::Refused(format!(
            "{} is not paused: writes in flight could be missed. Run `migrate pause --postgres …` first",
            postgres.masked()
        )));
    }
    if !changelog::pg_installed(pg)? {
        return Err(Error::Refused(format!(
            "{} has no change log: was `migrate switch` interrupted? Run it again",
            postgres.masked()
        )));
    }
    Ok(st.map_or(0, |s| s.rollback_change_seq))
}

/// The rows PostgreSQL's log names, as they are now.
struct PgRows {
    changes: Changes,
    keys: KeyChanges,
    sessions: Vec<SessionRow>,
    messages: Vec<MessageRow>,
    drafts: Vec<DraftRow>,
    deleted_sessions: Vec<DbUuid>,
    deleted_messages: Vec<i64>,
    deleted_drafts: Vec<i64>,
}

fn read_rows(pg: &mut PgConnection, changes: Changes) -> Result<PgRows> {
    let keys = keys::read_pg(pg, &changes.keys)?;
    let ids: Vec<DbUuid> = changes
        .sessions
        .iter()
        .filter_map(|k| Uuid::parse_str(k).ok())
        .map(DbUuid)
        .collect();
    let mut sessions_now = Vec::new();
    for chunk in ids.chunks(10_000) {
        sessions_now.extend(
            sessions::table
                .filter(sessions::id.eq_any(chunk))
                .order(sessions::id)
                .select(SessionRow::as_select())
                .load(pg)?,
        );
    }
    let found: BTreeSet<Uuid> = sessions_now.iter().map(|r| r.id.0).collect();
    let deleted_sessions = ids
        .into_iter()
        .filter(|id| !found.contains(&id.0))
        .collect();

    let ids: Vec<i64> = changes.messages.iter().copied().collect();
    let mut messages_now = Vec::new();
    for chunk in ids.chunks(10_000) {
        messages_now.extend(
            messages::table
                .filter(messages::id.eq_any(chunk))
                .order(messages::id)
                .select(MessageRow::as_select())
                .load(pg)?,
        );
    }
    let found: BTreeSet<i64> = messages_now.iter().map(|r| r.id).collect();
    let deleted_messages = ids.into_iter().filter(|id| !found.contains(id)).collect();

    let ids: Vec<i64> = changes.drafts.iter().copied().collect();
    let mut drafts_now = Vec::new();
    for chunk in ids.chunks(10_000) {
        drafts_now.extend(
            drafts::table
                .filter(drafts::id.eq_any(chunk))
                .order(drafts::id)
                .select(DraftRow::as_select())
                .load(pg)?,
        );
    }
    let found: BTreeSet<i64> = drafts_now.iter().map(|r| r.id).collect();
    let deleted_drafts = ids.into_iter().filter(|id| !found.contains(id)).collect();
    Ok(PgRows {
        changes,
        keys,
        sessions: sessions_now,
        messages: messages_now,
        drafts: drafts_now,
        deleted_sessions,
        deleted_messages,
        deleted_drafts,
    })
}

/// Writes the rows into SQLite: sessions first (children need them), then
/// children, then deletions children first.
fn apply(c: &mut SqliteConnection, rows: &PgRows, report: &mut RollbackReport) -> Result<()> {
    for row in &rows.sessions {
        let updated = diesel::update(sessions::table.find(row.id))
            .set((
                sessions::created_at.eq(row.created_at),
                sessions::updated_at.eq(row.updated_at),
                sessions::summary.eq(&row.summary),
            ))
            .execute(c)?;
        if updated == 0 {
            diesel::insert_into(sessions::table)
                .values(row)
                .execute(c)?;
            report.sessions_inserted += 1;
        } else {
            report.sessions_updated += 1;
        }
    }
    for row in &rows.messages {
        diesel::insert_into(messages::table)
            .values(row)
            .on_conflict(messages::id)
            .do_update()
            .set((
                messages::session_id.eq(row.session_id),
                messages::role.eq(&row.role),
                messages::text.eq(&row.text),
                messages::created_at.eq(row.created_at),
            ))
            .execute(c)?;
    }
    report.messages = rows.messages.len() as u64;
    for row in &rows.drafts {
        diesel::insert_into(drafts::table)
            .values(row)
            .on_conflict(drafts::id)
            .do_update()
            .set((
                drafts::session_id.eq(row.session_id),
                drafts::content.eq(&row.content),
                drafts::created_at.eq(row.created_at),
            ))
            .execute(c)?;
    }
    report.drafts = rows.drafts.len() as u64;
    for id in &rows.deleted_messages {
        report.messages_deleted += diesel::delete(messages::table.find(id)).execute(c)? as u64;
    }
    for id in &rows.deleted_drafts {
        report.drafts_deleted += diesel::delete(drafts::table.find(id)).execute(c)? as u64;
    }
    for id in &rows.deleted_sessions {
        report.messages_deleted +=
            diesel::delete(messages::table.filter(messages::session_id.eq(id))).execute(c)? as u64;
        report.drafts_deleted +=
            diesel::delete(drafts::table.filter(drafts::session_id.eq(id))).execute(c)? as u64;
        report.sessions_deleted += diesel::delete(sessions::table.find(id)).execute(c)? as u64;
    }
    Ok(())
}
