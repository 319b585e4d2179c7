//! The bounded verify of a switch under traffic: only the rows the change log names since the last full verify.
//!
//! A full verify reads every row and takes as long as the copy's order of
//! magnitude; a switch that holds writes cannot wait for it. The full verify
//! records the change-log position up to which it found both sides equal,
//! the log keeps every entry past it, and the switch compares only the rows
//! those entries name: its cost follows the writes since that verify, not
//! the size of the database.

use std::collections::{HashMap, HashSet};

use diesel::prelude::*;
use uuid::Uuid;

use super::changed::{read_changed, Changed};
use super::changelog;
use super::digest::{Digest, SessionDigest};
use super::id_merge::Pair;
use super::source::{Source, Table};
use super::verify::comparator;
use super::verify::BoundedCheck;
use crate::error::Result;
use crate::schema::{drafts, messages, sessions};
use crate::store::drafts::DraftRow;
use crate::store::messages::MessageRow;
use crate::store::sessions::SessionRow;
use crate::types::DbUuid;

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

/// Compares the rows of `changed` (SQLite's side, normalised) with PostgreSQL's
/// rows of the same ids, each pair judged by [`comparator`]. A row SQLite
/// deleted must be gone from PostgreSQL too ("only on postgres" otherwise).
pub(crate) fn compare(pg: &mut PgConnection, changed: &Changed) -> Result<BoundedCheck> {
    let mut out = BoundedCheck::default();
    let ids: Vec<DbUuid> = changed
        .sessions
        .iter()
        .map(|r| r.id)
        .chain(changed.deleted_sessions.iter().copied())
        .collect();
    let mut theirs: HashMap<Uuid, SessionDigest> = HashMap::new();
    for chunk in ids.chunks(CHUNK) {
        let rows: Vec<SessionRow> = sessions::table
            .filter(sessions::id.eq_any(chunk))
            .select(SessionRow::as_select())
            .load(pg)?;
        theirs.extend(rows.iter().map(|r| (r.id.0, SessionDigest::of(r))));
    }
    let ours: Vec<SessionDigest> = changed.sessions.iter().map(SessionDigest::of).collect();
    let named = ours.iter().map(|d| (Some(d), theirs.get(&d.id))).chain(
        changed
            .deleted_sessions
            .iter()
            .map(|id| (None, theirs.get(&id.0))),
    );
    for (a, b) in named {
        out.rows += 1;
        if let Some(pair) = Pair::of(a, b) {
            comparator::session(&mut out.report, pair);
        }
    }
    let ours: Vec<Digest> = changed.messages.iter().map(Digest::of_message).collect();
    let theirs = digests_of(pg, &ours, &changed.deleted_messages, message_digests)?;
    children(
        &mut out,
        Table::Messages,
        &ours,
        &changed.deleted_messages,
        &theirs,
    );
    let ours: Vec<Digest> = changed.drafts.iter().map(Digest::of_draft).collect();
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

/// At most this many ids in one `IN (…)` list.
const CHUNK: usize = 10_000;

fn ids_of(ours: &[Digest], deleted: &[i64]) -> Vec<i64> {
    ours.iter()
        .map(|d| d.id)
        .chain(deleted.iter().copied())
        .collect()
}

/// PostgreSQL's digests of the rows of `ours` and `deleted`, loaded by `load` a chunk of ids at a time.
fn digests_of(
    pg: &mut PgConnection,
    ours: &[Digest],
    deleted: &[i64],
    load: impl Fn(&mut PgConnection, &[i64]) -> QueryResult<Vec<Digest>>,
) -> Result<HashMap<i64, Digest>> {
    let mut theirs = HashMap::new();
    for chunk in ids_of(ours, deleted).chunks(CHUNK) {
        theirs.extend(load(pg, chunk)?.into_iter().map(|d| (d.id, d)));
    }
    Ok(theirs)
}

fn message_digests(pg: &mut PgConnection, ids: &[i64]) -> QueryResult<Vec<Digest>> {
    let rows: Vec<MessageRow> = messages::table
        .filter(messages::id.eq_any(ids))
        .select(MessageRow::as_select())
        .load(pg)?;
    Ok(rows.iter().map(Digest::of_message).collect())
}

fn draft_digests(pg: &mut PgConnection, ids: &[i64]) -> QueryResult<Vec<Digest>> {
    let rows: Vec<DraftRow> = drafts::table
        .filter(drafts::id.eq_any(ids))
        .select(DraftRow::as_select())
        .load(pg)?;
    Ok(rows.iter().map(Digest::of_draft).collect())
}

/// Each named message or draft, on SQLite (`ours`), deleted there, or neither, judged against PostgreSQL's.
fn children(
    out: &mut BoundedCheck,
    table: Table,
    ours: &[Digest],
    deleted: &[i64],
    theirs: &HashMap<i64, Digest>,
) {
    // Which sessions' messages differ is verify's figure; a bounded check
    // refuses on any difference, so it keeps no such set.
    let mut uneven = HashSet::new();
    let named = ours
        .iter()
        .map(|d| (Some(d), theirs.get(&d.id)))
        .chain(deleted.iter().map(|id| (None, theirs.get(id))));
    for (a, b) in named {
        out.rows += 1;
        if let Some(pair) = Pair::of(a, b) {
            comparator::child(&mut out.report, &mut uneven, table, pair);
        }
    }
}
