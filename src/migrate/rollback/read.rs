//! Reading the rows PostgreSQL's change log names, as they are in a pass's
//! snapshot: the PostgreSQL half of a pass.
//!
//! Apart from the pass itself ([`super`]) and from writing into SQLite
//! ([`super::apply`]) because it only reads, and because the switch back's
//! bounded verify ([`super::bounded`]) reads the same rows by the same queries.

use std::collections::{BTreeSet, HashSet};
use std::hash::Hash;

use diesel::prelude::*;
use uuid::Uuid;

use crate::error::Result;
use crate::migrate::changelog::Changes;
use crate::migrate::keys::{self, KeyChanges};
use crate::schema::{drafts, messages, sessions};
use crate::store::drafts::DraftRow;
use crate::store::messages::MessageRow;
use crate::store::sessions::SessionRow;
use crate::types::DbUuid;

/// The rows PostgreSQL's log names, as they are in the pass's snapshot.
pub(super) struct PgRows {
    pub(super) keys: KeyChanges,
    pub(super) sessions: Vec<SessionRow>,
    /// Sessions of the messages and drafts below that the log did not name
    /// (yet): their entry belongs to a transaction past the horizon. Inserted
    /// when SQLite lacks them, so the children's foreign key holds.
    pub(super) parents: Vec<SessionRow>,
    pub(super) messages: Vec<MessageRow>,
    pub(super) drafts: Vec<DraftRow>,
    pub(super) deleted_sessions: Vec<DbUuid>,
    pub(super) deleted_messages: Vec<i64>,
    pub(super) deleted_drafts: Vec<i64>,
}

/// Rows read per query.
pub(super) const CHUNK: usize = 10_000;

/// PostgreSQL's sessions with these ids, in id order.
pub(crate) fn pg_sessions(pg: &mut PgConnection, ids: &[DbUuid]) -> Result<Vec<SessionRow>> {
    let mut out = Vec::new();
    for chunk in ids.chunks(CHUNK) {
        out.extend(
            sessions::table
                .filter(sessions::id.eq_any(chunk))
                .order(sessions::id)
                .select(SessionRow::as_select())
                .load(pg)?,
        );
    }
    Ok(out)
}

/// PostgreSQL's messages with these ids, in id order.
pub(crate) fn pg_messages(pg: &mut PgConnection, ids: &[i64]) -> Result<Vec<MessageRow>> {
    let mut out = Vec::new();
    for chunk in ids.chunks(CHUNK) {
        out.extend(
            messages::table
                .filter(messages::id.eq_any(chunk))
                .order(messages::id)
                .select(MessageRow::as_select())
                .load(pg)?,
        );
    }
    Ok(out)
}

/// PostgreSQL's drafts with these ids, in id order.
pub(crate) fn pg_drafts(pg: &mut PgConnection, ids: &[i64]) -> Result<Vec<DraftRow>> {
    let mut out = Vec::new();
    for chunk in ids.chunks(CHUNK) {
        out.extend(
            drafts::table
                .filter(drafts::id.eq_any(chunk))
                .order(drafts::id)
                .select(DraftRow::as_select())
                .load(pg)?,
        );
    }
    Ok(out)
}

/// The session ids a log names (PostgreSQL writes them as UUID text).
pub(crate) fn named_sessions(changes: &Changes) -> Vec<DbUuid> {
    changes
        .sessions
        .iter()
        .filter_map(|k| Uuid::parse_str(k).ok())
        .map(DbUuid)
        .collect()
}

/// The ids asked for that were not found.
fn missing<T: Hash + Eq + Copy>(asked: &[T], found: impl Iterator<Item = T>) -> Vec<T> {
    let found: HashSet<T> = found.collect();
    asked
        .iter()
        .filter(|id| !found.contains(id))
        .copied()
        .collect()
}

pub(super) fn read_rows(pg: &mut PgConnection, changes: Changes) -> Result<PgRows> {
    let keys = keys::read_pg(pg, &changes.keys)?;
    let ids = named_sessions(&changes);
    let sessions_now = pg_sessions(pg, &ids)?;
    let deleted_sessions = missing(&ids, sessions_now.iter().map(|r| r.id));

    let ids: Vec<i64> = changes.messages.iter().copied().collect();
    let messages_now = pg_messages(pg, &ids)?;
    let deleted_messages = missing(&ids, messages_now.iter().map(|r| r.id));

    let ids: Vec<i64> = changes.drafts.iter().copied().collect();
    let drafts_now = pg_drafts(pg, &ids)?;
    let deleted_drafts = missing(&ids, drafts_now.iter().map(|r| r.id));

    let named: HashSet<DbUuid> = sessions_now.iter().map(|r| r.id).collect();
    let unnamed: BTreeSet<Uuid> = messages_now
        .iter()
        .map(|r| r.session_id)
        .chain(drafts_now.iter().map(|r| r.session_id))
        .filter(|id| !named.contains(id))
        .map(|id| id.0)
        .collect();
    let parents = pg_sessions(pg, &unnamed.into_iter().map(DbUuid).collect::<Vec<_>>())?;
    Ok(PgRows {
        keys,
        sessions: sessions_now,
        parents,
        messages: messages_now,
        drafts: drafts_now,
        deleted_sessions,
        deleted_messages,
        deleted_drafts,
    })
}
