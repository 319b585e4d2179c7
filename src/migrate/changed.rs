//! The rows SQLite's change log names, read in the caller's snapshot and
//! normalised: what a sync pass applies and what the switch's bounded check
//! compares (both read them here, so neither imports the other).

use std::collections::{BTreeSet, HashSet};

use diesel::prelude::*;
use uuid::Uuid;

use super::changelog::Changes;
use super::normalize::{self, Reject, SessionIndex};
use super::source::{RawDraft, RawMessage, RawSession, Source, Table};
use crate::error::Result;
use crate::schema::sessions;
use crate::store::drafts::DraftRow;
use crate::store::messages::MessageRow;
use crate::store::sessions::SessionRow;
use crate::types::read_legacy_uuid;
use crate::types::DbUuid;

/// The rows named by the change log, as they are in the snapshot, normalised.
#[derive(Default)]
pub(super) struct Changed {
    pub sessions: Vec<SessionRow>,
    pub messages: Vec<MessageRow>,
    pub drafts: Vec<DraftRow>,
    /// Sessions gone from SQLite (their UUIDs), children first on deletion.
    pub deleted_sessions: Vec<DbUuid>,
    pub deleted_messages: Vec<i64>,
    pub deleted_drafts: Vec<i64>,
    /// Invalid rows, per table, with their source key.
    pub rejected: [Vec<Reject>; 3],
    /// Source keys of the rows applied, whose earlier reject records are stale.
    pub applied_keys: [Vec<String>; 3],
    pub null_summaries: i64,
}

impl Changed {
    pub(super) fn rejects(&self) -> Vec<Reject> {
        self.rejected.iter().flatten().cloned().collect()
    }
}

/// Reads and normalises every row the log names (in the caller's snapshot).
pub(super) fn read_changed(
    src: &mut Source,
    pg: &mut PgConnection,
    changes: &Changes,
) -> Result<Changed> {
    let mut out = Changed::default();
    let keys: Vec<&String> = changes.sessions.iter().collect();
    let present: Vec<RawSession> = src.sessions_by_key(&keys)?;
    let present_keys: HashSet<String> = present
        .iter()
        .filter_map(|r| r.id.as_ref())
        .map(|b| String::from_utf8_lossy(b).into_owned())
        .collect();
    let gone: Vec<&String> = keys
        .iter()
        .copied()
        .filter(|k| !present_keys.contains(*k))
        .collect();

    let mut index = SessionIndex::default();
    for r in &present {
        index.add(r);
    }
    let mut kept: HashSet<Uuid> = HashSet::new();
    for r in &present {
        match normalize::session(r, &index) {
            Ok(s) => {
                kept.insert(s.row.id.0);
                out.null_summaries += i64::from(s.null_summary);
                out.applied_keys[0].push(
                    String::from_utf8_lossy(r.id.as_deref().unwrap_or_default()).into_owned(),
                );
                out.sessions.push(s.row);
            }
            Err(e) => out.rejected[0].push(e),
        }
    }
    // A key respelled by an UPDATE of the id (upper to lower case) is gone as
    // text but present as a UUID: it must not be deleted.
    let deleted: BTreeSet<Uuid> = gone
        .iter()
        .filter_map(|k| read_legacy_uuid(k.as_bytes()).ok())
        .filter(|id| !kept.contains(id))
        .collect();
    out.deleted_sessions = deleted.iter().copied().map(DbUuid).collect();

    // Children of a session deleted in SQLite but left there are judged again
    // (they are invalid now), as are the children the log names.
    let mut child_ids: [BTreeSet<i64>; 2] = [
        changes.children(Table::Messages).clone(),
        changes.children(Table::Drafts).clone(),
    ];
    for (i, table) in [Table::Messages, Table::Drafts].into_iter().enumerate() {
        child_ids[i].extend(src.children_of(table, &gone)?);
    }
    let messages: Vec<RawMessage> = src.rows_by_id(Table::Messages, &to_vec(&child_ids[0]))?;
    let drafts: Vec<RawDraft> = src.rows_by_id(Table::Drafts, &to_vec(&child_ids[1]))?;
    know_sessions_in_postgres(pg, &mut index, &deleted, &messages, &drafts)?;

    let found: HashSet<i64> = messages.iter().map(|r| r.id).collect();
    out.deleted_messages = child_ids[0]
        .iter()
        .copied()
        .filter(|id| !found.contains(id))
        .collect();
    for r in messages {
        let id = r.id;
        match normalize::message(r, &index) {
            Ok(m) => {
                out.applied_keys[1].push(id.to_string());
                out.messages.push(m);
            }
            Err(e) => {
                out.deleted_messages.push(id);
                out.rejected[1].push(e);
            }
        }
    }
    let found: HashSet<i64> = drafts.iter().map(|r| r.id).collect();
    out.deleted_drafts = child_ids[1]
        .iter()
        .copied()
        .filter(|id| !found.contains(id))
        .collect();
    for r in drafts {
        let id = r.id;
        match normalize::draft(r, &index) {
            Ok(d) => {
                out.applied_keys[2].push(id.to_string());
                out.drafts.push(d);
            }
            Err(e) => {
                out.deleted_drafts.push(id);
                out.rejected[2].push(e);
            }
        }
    }
    Ok(out)
}

fn to_vec(ids: &BTreeSet<i64>) -> Vec<i64> {
    ids.iter().copied().collect()
}

/// Children may belong to sessions copied earlier and unchanged since: those
/// in PostgreSQL count as valid, unless this sync deletes them.
fn know_sessions_in_postgres(
    pg: &mut PgConnection,
    index: &mut SessionIndex,
    deleted: &BTreeSet<Uuid>,
    messages: &[RawMessage],
    drafts: &[RawDraft],
) -> Result<()> {
    let unknown: BTreeSet<Uuid> = messages
        .iter()
        .map(|r| &r.session_id)
        .chain(drafts.iter().map(|r| &r.session_id))
        .filter_map(|raw| raw.as_deref())
        .filter_map(|b| read_legacy_uuid(b).ok())
        .filter(|id| !index.knows(id) && !deleted.contains(id))
        .collect();
    let unknown: Vec<DbUuid> = unknown.into_iter().map(DbUuid).collect();
    for chunk in unknown.chunks(10_000) {
        let found: Vec<DbUuid> = sessions::table
            .filter(sessions::id.eq_any(chunk))
            .select(sessions::id)
            .load(pg)?;
        for id in found {
            index.insert_valid(id.0);
        }
    }
    Ok(())
}
