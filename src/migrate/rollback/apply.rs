//! Writing the rows a pass read from PostgreSQL into SQLite, and the report
//! of what was written: the SQLite half of a pass.
//!
//! Apart from the pass itself ([`super`]) because it is the one part that
//! writes into SQLite, row by row and with SQLite's own rules (rows found by
//! UUID key, a legacy spelling of an id kept); the pass around it decides
//! what to read and when to record the new horizon. The report is defined
//! here, below the pass, because most of its counts are tallied here; the
//! pass fills in the rest.

use diesel::prelude::*;
use diesel::sql_types::{BigInt, Text};
use diesel::upsert::excluded;

use super::read::PgRows;
use crate::error::{Error, Result};
use crate::migrate::keys::KeysApplied;
use crate::schema::{drafts, messages, sessions};
use crate::types::sql::MultiTimestamp;
use crate::types::{uuid_key, DbUuid, DbUuidKey};

/// What [`rollback_sync`](super::rollback_sync) (or one pass of a reverse follower) applied to SQLite.
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
    /// PostgreSQL change log entries read. An entry of a transaction at or
    /// past the horizon may be read again by the next pass (and written again, unchanged).
    pub entries: u64,
    /// The largest sequence number of the entries read (for display; the
    /// log is read by transaction id, see `xid_horizon`).
    pub change_seq: i64,
    /// PostgreSQL's change log is applied for every transaction below this id.
    pub xid_horizon: i64,
}

/// Writes the rows into SQLite: sessions first (children need them), then
/// children, then deletions children first.
///
/// SQLite's rows are found by UUID key ([`uuid_key`]), never by canonical text:
/// a legacy file may spell its ids otherwise (see `docs/legacy-ids.md`), and no
/// stored id is rewritten. A child names its session as the session's row
/// spells it (INSERT ... SELECT from that row, as the store does): SQLite's
/// foreign key, and the legacy service, compare the text.
pub(super) fn apply(
    c: &mut SqliteConnection,
    rows: &PgRows,
    report: &mut RollbackReport,
) -> Result<()> {
    apply_sessions(c, rows, report)?;
    for row in &rows.messages {
        // A row already under the same session is updated without touching its
        // session_id: its spelling stays, and SQLite checks no foreign key for
        // it (a legacy child may be spelled unlike its session).
        let kept = diesel::update(
            messages::table
                .find(row.id)
                .filter(uuid_key(messages::session_id).eq(DbUuidKey(row.session_id.0))),
        )
        .set((
            messages::role.eq(&row.role),
            messages::text.eq(&row.text),
            messages::created_at.eq(row.created_at),
        ))
        .execute(c)?;
        if kept == 1 {
            continue;
        }
        // No session with that key (cannot happen: its parent was written above)
        // inserts nothing, and a count short of the rows says so.
        let written = diesel::insert_into(messages::table)
            .values(
                sessions::table
                    .filter(uuid_key(sessions::id).eq(DbUuidKey(row.session_id.0)))
                    .select((
                        row.id.into_sql::<BigInt>(),
                        sessions::id,
                        row.role.as_str().into_sql::<Text>(),
                        row.text.as_str().into_sql::<Text>(),
                        row.created_at.into_sql::<MultiTimestamp>(),
                    )),
            )
            .into_columns((
                messages::id,
                messages::session_id,
                messages::role,
                messages::text,
                messages::created_at,
            ))
            .on_conflict(messages::id)
            .do_update()
            .set((
                messages::session_id.eq(excluded(messages::session_id)),
                messages::role.eq(excluded(messages::role)),
                messages::text.eq(excluded(messages::text)),
                messages::created_at.eq(excluded(messages::created_at)),
            ))
            .execute(c)?;
        require_parent(written, "message", row.id, row.session_id)?;
    }
    report.messages = rows.messages.len() as u64;
    for row in &rows.drafts {
        let kept = diesel::update(
            drafts::table
                .find(row.id)
                .filter(uuid_key(drafts::session_id).eq(DbUuidKey(row.session_id.0))),
        )
        .set((
            drafts::content.eq(&row.content),
            drafts::created_at.eq(row.created_at),
        ))
        .execute(c)?;
        if kept == 1 {
            continue;
        }
        let written = diesel::insert_into(drafts::table)
            .values(
                sessions::table
                    .filter(uuid_key(sessions::id).eq(DbUuidKey(row.session_id.0)))
                    .select((
                        row.id.into_sql::<BigInt>(),
                        sessions::id,
                        row.content.as_str().into_sql::<Text>(),
                        row.created_at.into_sql::<MultiTimestamp>(),
                    )),
            )
            .into_columns((
                drafts::id,
                drafts::session_id,
                drafts::content,
                drafts::created_at,
            ))
            .on_conflict(drafts::id)
            .do_update()
            .set((
                drafts::session_id.eq(excluded(drafts::session_id)),
                drafts::content.eq(excluded(drafts::content)),
                drafts::created_at.eq(excluded(drafts::created_at)),
            ))
            .execute(c)?;
        require_parent(written, "draft", row.id, row.session_id)?;
    }
    report.drafts = rows.drafts.len() as u64;
    apply_deletions(c, rows, report)
}

/// A child's upsert wrote one row, or its session is missing from SQLite
/// (none) or held twice in different spellings (several).
fn require_parent(written: usize, what: &str, id: i64, session: DbUuid) -> Result<()> {
    match written {
        1 => Ok(()),
        0 => Err(Error::Corrupt {
            what: format!("{what} {id} of session {}", session.0),
            reason: "its session is not in SQLite after the sessions were applied".into(),
        }),
        _ => Err(Error::Corrupt {
            what: format!("session {}", session.0),
            reason: "several sessions rows hold this UUID, spelled differently".into(),
        }),
    }
}

/// Updates each named session in place by key (its stored id kept), inserting
/// a canonical row only when SQLite has none with that key.
fn apply_sessions(
    c: &mut SqliteConnection,
    rows: &PgRows,
    report: &mut RollbackReport,
) -> Result<()> {
    for row in &rows.sessions {
        let updated =
            diesel::update(sessions::table.filter(uuid_key(sessions::id).eq(DbUuidKey(row.id.0))))
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
    for row in &rows.parents {
        let held = diesel::select(diesel::dsl::exists(
            sessions::table.filter(uuid_key(sessions::id).eq(DbUuidKey(row.id.0))),
        ))
        .get_result::<bool>(c)?;
        if !held {
            diesel::insert_into(sessions::table)
                .values(row)
                .execute(c)?;
            report.sessions_inserted += 1;
        }
    }
    Ok(())
}

fn apply_deletions(
    c: &mut SqliteConnection,
    rows: &PgRows,
    report: &mut RollbackReport,
) -> Result<()> {
    for id in &rows.deleted_messages {
        report.messages_deleted += diesel::delete(messages::table.find(id)).execute(c)? as u64;
    }
    for id in &rows.deleted_drafts {
        report.drafts_deleted += diesel::delete(drafts::table.find(id)).execute(c)? as u64;
    }
    for id in &rows.deleted_sessions {
        let key = DbUuidKey(id.0);
        report.messages_deleted +=
            diesel::delete(messages::table.filter(uuid_key(messages::session_id).eq(key)))
                .execute(c)? as u64;
        report.drafts_deleted +=
            diesel::delete(drafts::table.filter(uuid_key(drafts::session_id).eq(key))).execute(c)?
                as u64;
        report.sessions_deleted +=
            diesel::delete(sessions::table.filter(uuid_key(sessions::id).eq(key))).execute(c)?
                as u64;
    }
    Ok(())
}
