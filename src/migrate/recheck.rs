//! The bounded verify of a switch under traffic: only the rows the change log names since the last full verify.
//!
//! A full verify reads every row and takes as long as the copy's order of
//! magnitude; a switch that holds writes cannot wait for it. The full verify
//! records the change-log position up to which it found both sides equal,
//! the log keeps every entry past it, and the switch compares only the rows
//! those entries name: its cost follows the writes since that verify, not
//! the size of the database.

use std::collections::HashMap;

use diesel::prelude::*;
use uuid::Uuid;

use super::changed::{read_changed, Changed};
use super::changelog;
use super::digest::{hash_of, Digest, SessionDigest};
use super::source::{Source, Table};
use super::verify::BoundedCheck;
use crate::error::Result;
use crate::schema::{drafts, messages, sessions};
use crate::store::drafts::DraftRow;
use crate::store::messages::MessageRow;
use crate::store::sessions::SessionRow;
use crate::types::DbUuid;

/// Counts one compared row in `out`, and its difference if it has one:
/// `*` for a row on one side only, `row` for one whose digests differ (which
/// column is not known from a digest; `migrate verify` names it).
fn compared(out: &mut BoundedCheck, table: Table, id: String, difference: Option<(&str, &str)>) {
    out.rows += 1;
    if let Some((column, detail)) = difference {
        out.report.differ(table, id, column, detail);
    }
}

/// Compares with PostgreSQL every row and finished idempotency key the SQLite
/// log names past `from` (inside the caller's SQLite snapshot, which
/// PostgreSQL must have caught up with). Rows SQLite holds invalid are left
/// out, as verify leaves recorded rejects out.
pub(crate) fn sqlite_since(
    src: &mut Source,
    pg: &mut PgConnection,
    from: i64,
) -> Result<BoundedCheck> {
    let changes = changelog::sqlite_changes(src.conn(), from)?;
    let changed = read_changed(src, pg, &changes)?;
    let mut out = compare(pg, &changed)?;
    out.report.idempotency_keys =
        super::keys::verify_named(src.conn(), pg, &changes.keys, changes.all_keys)?;
    Ok(out)
}

/// Compares the rows of `changed` (SQLite's side, normalised) with PostgreSQL's rows of the same ids.
pub(crate) fn compare(pg: &mut PgConnection, changed: &Changed) -> Result<BoundedCheck> {
    let mut out = BoundedCheck::default();
    let ids: Vec<DbUuid> = changed
        .sessions
        .iter()
        .map(|r| r.id)
        .chain(changed.deleted_sessions.iter().copied())
        .collect();
    let mut theirs: HashMap<Uuid, u64> = HashMap::new();
    for chunk in ids.chunks(10_000) {
        let rows: Vec<SessionRow> = sessions::table
            .filter(sessions::id.eq_any(chunk))
            .select(SessionRow::as_select())
            .load(pg)?;
        theirs.extend(
            rows.iter()
                .map(|r| (r.id.0, hash_of(&SessionDigest::of(r)))),
        );
    }
    for r in &changed.sessions {
        let difference = match theirs.get(&r.id.0) {
            None => Some(MISSING),
            Some(h) if *h != hash_of(&SessionDigest::of(r)) => Some(DIFFERS),
            Some(_) => None,
        };
        compared(&mut out, Table::Sessions, r.id.0.to_string(), difference);
    }
    for id in &changed.deleted_sessions {
        let difference = theirs.contains_key(&id.0).then_some(DELETED);
        compared(&mut out, Table::Sessions, id.0.to_string(), difference);
    }
    let ours: Vec<(i64, u64)> = changed
        .messages
        .iter()
        .map(|r| (r.id, hash_of(&Digest::of_message(r))))
        .collect();
    let theirs = digests_of(pg, &ours, &changed.deleted_messages, message_digests)?;
    children(
        &mut out,
        Table::Messages,
        &ours,
        &changed.deleted_messages,
        &theirs,
    );
    let ours: Vec<(i64, u64)> = changed
        .drafts
        .iter()
        .map(|r| (r.id, hash_of(&Digest::of_draft(r))))
        .collect();
    let theirs = digests_of(pg, &ours, &changed.deleted_drafts, draft_digests)?;
    children(
        &mut out,
        Table::Drafts,
        &ours,
        &changed.deleted_drafts,
        &theirs,
    );
    Ok(out)
}

fn ids_of(ours: &[(i64, u64)], deleted: &[i64]) -> Vec<i64> {
    ours.iter()
        .map(|(id, _)| *id)
        .chain(deleted.iter().copied())
        .collect()
}

/// PostgreSQL's digests of the rows of `ours` and `deleted`, loaded by `load` a chunk of ids at a time.
fn digests_of(
    pg: &mut PgConnection,
    ours: &[(i64, u64)],
    deleted: &[i64],
    load: impl Fn(&mut PgConnection, &[i64]) -> QueryResult<Vec<(i64, u64)>>,
) -> Result<HashMap<i64, u64>> {
    let mut theirs = HashMap::new();
    for chunk in ids_of(ours, deleted).chunks(10_000) {
        theirs.extend(load(pg, chunk)?);
    }
    Ok(theirs)
}

fn message_digests(pg: &mut PgConnection, ids: &[i64]) -> QueryResult<Vec<(i64, u64)>> {
    let rows: Vec<MessageRow> = messages::table
        .filter(messages::id.eq_any(ids))
        .select(MessageRow::as_select())
        .load(pg)?;
    Ok(rows
        .iter()
        .map(|r| (r.id, hash_of(&Digest::of_message(r))))
        .collect())
}

fn draft_digests(pg: &mut PgConnection, ids: &[i64]) -> QueryResult<Vec<(i64, u64)>> {
    let rows: Vec<DraftRow> = drafts::table
        .filter(drafts::id.eq_any(ids))
        .select(DraftRow::as_select())
        .load(pg)?;
    Ok(rows
        .iter()
        .map(|r| (r.id, hash_of(&Digest::of_draft(r))))
        .collect())
}

fn children(
    out: &mut BoundedCheck,
    table: Table,
    ours: &[(i64, u64)],
    deleted: &[i64],
    theirs: &HashMap<i64, u64>,
) {
    for (id, h) in ours {
        let difference = match theirs.get(id) {
            None => Some(MISSING),
            Some(t) if t != h => Some(DIFFERS),
            Some(_) => None,
        };
        compared(out, table, id.to_string(), difference);
    }
    for id in deleted {
        let difference = theirs.contains_key(id).then_some(DELETED);
        compared(out, table, id.to_string(), difference);
    }
}

/// The differences a bounded check tells apart, as (column, detail).
const MISSING: (&str, &str) = ("*", "missing on postgres");
const DIFFERS: (&str, &str) = ("row", "differs (compared by digest)");
const DELETED: (&str, &str) = ("*", "deleted in sqlite, on postgres");
