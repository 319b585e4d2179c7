//! The switch back's verify under traffic: only the rows PostgreSQL's change
//! log named since SQLite was last found equal, compared on both sides.
//!
//! Sound because nothing else changes: SQLite is retired while PostgreSQL is
//! live (only the way back writes into it, and only rows the log names), and
//! every change on PostgreSQL leaves an entry, kept until the switch back
//! (see [`super::pass`]'s trim). A row named but gone must be gone on both
//! sides. SQLite's rows are read raw and go through the copy's normalisation
//! ([`crate::migrate::normalize`]), and each pair is judged by verify's own
//! rule ([`crate::migrate::verify::comparator`]): timestamps to the
//! microsecond, text byte for byte through its digest.

use std::collections::{BTreeMap, HashSet};

use diesel::prelude::*;
use uuid::Uuid;

// The same rows as a pass reads, by the same queries.
use super::read::{named_sessions, pg_drafts, pg_messages, pg_sessions, CHUNK};
use crate::error::Result;
use crate::migrate::changelog;
use crate::migrate::digest::{Digest, SessionDigest};
use crate::migrate::id_merge::Pair;
use crate::migrate::keys::{self, KeyRow, KeysVerify};
use crate::migrate::normalize::{self, Reject, SessionIndex};
use crate::migrate::source::{RawDraft, RawMessage, Source, Table};
use crate::migrate::verify::comparator;
use crate::migrate::verify::{BoundedCheck, VerifyReport};
use crate::store::drafts::DraftRow;
use crate::store::messages::MessageRow;
use crate::store::sessions::SessionRow;
use crate::types::read_legacy_uuid;
use crate::types::DbUuid;

/// Compares the rows named by PostgreSQL's log entries of transactions from
/// `from` on (inside the caller's PostgreSQL snapshot, with writers locked
/// out) with SQLite's (in one SQLite snapshot).
pub(crate) fn verify_named(
    pg: &mut PgConnection,
    src: &mut Source,
    from: i64,
) -> Result<BoundedCheck> {
    let started = std::time::Instant::now();
    let changes = changelog::pg_changes(pg, from, None)?;
    let mut out = Named::default();
    src.snapshot(|src| {
        out.sessions(pg, src, &named_sessions(&changes))?;
        let ids: Vec<i64> = changes.messages.iter().copied().collect();
        out.messages(pg, src, &ids)?;
        let ids: Vec<i64> = changes.drafts.iter().copied().collect();
        out.drafts(pg, src, &ids)?;
        out.keys(pg, src, &changes.keys)
    })?;
    out.report.sessions_with_message_differences = out.uneven.len() as u64;
    out.report.elapsed_ms = started.elapsed().as_millis() as u64;
    Ok(BoundedCheck {
        report: out.report,
        rows: out.rows,
    })
}

#[derive(Default)]
struct Named {
    report: VerifyReport,
    /// Sessions whose messages differ.
    uneven: HashSet<Uuid>,
    rows: u64,
}

impl Named {
    fn differ(&mut self, table: Table, id: String, column: &str, detail: impl Into<String>) {
        self.report.differ(table, id, column, detail);
    }

    fn invalid(&mut self, table: Table, r: &Reject) {
        self.differ(
            table,
            r.id.clone(),
            &r.column,
            format!("invalid in sqlite ({})", r.reason),
        );
    }

    fn sessions(&mut self, pg: &mut PgConnection, src: &mut Source, ids: &[DbUuid]) -> Result<()> {
        for chunk in ids.chunks(CHUNK) {
            let theirs: BTreeMap<Uuid, SessionRow> = pg_sessions(pg, chunk)?
                .into_iter()
                .map(|r| (r.id.0, r))
                .collect();
            // Rows the way back wrote are spelled canonically, as PostgreSQL's log names them.
            let keys: Vec<String> = chunk
                .iter()
                .map(|id| id.0.hyphenated().to_string())
                .collect();
            let raw = src.sessions_by_key(&keys.iter().collect::<Vec<_>>())?;
            let mut index = SessionIndex::default();
            raw.iter().for_each(|r| {
                index.add(r);
            });
            let mut ours = BTreeMap::new();
            for r in &raw {
                match normalize::session(r, &index) {
                    Ok(s) => {
                        ours.insert(s.row.id.0, s.row);
                    }
                    Err(reject) => self.invalid(Table::Sessions, &reject),
                }
            }
            for id in chunk {
                self.rows += 1;
                let a = ours.get(&id.0).map(SessionDigest::of);
                let b = theirs.get(&id.0).map(SessionDigest::of);
                if let Some(pair) = Pair::of(a.as_ref(), b.as_ref()) {
                    comparator::session(&mut self.report, pair);
                }
            }
        }
        Ok(())
    }

    fn messages(&mut self, pg: &mut PgConnection, src: &mut Source, ids: &[i64]) -> Result<()> {
        for chunk in ids.chunks(CHUNK) {
            let theirs: BTreeMap<i64, MessageRow> = pg_messages(pg, chunk)?
                .into_iter()
                .map(|r| (r.id, r))
                .collect();
            let raw: Vec<RawMessage> = src.rows_by_id(Table::Messages, chunk)?;
            let index = parents(raw.iter().map(|r| &r.session_id));
            let mut ours = BTreeMap::new();
            for r in raw {
                match normalize::message(r, &index) {
                    Ok(m) => {
                        ours.insert(m.id, m);
                    }
                    Err(reject) => self.invalid(Table::Messages, &reject),
                }
            }
            for id in chunk {
                self.rows += 1;
                let a = ours.get(id).map(Digest::of_message);
                let b = theirs.get(id).map(Digest::of_message);
                if let Some(pair) = Pair::of(a.as_ref(), b.as_ref()) {
                    comparator::child(&mut self.report, &mut self.uneven, Table::Messages, pair);
                }
            }
        }
        Ok(())
    }

    fn drafts(&mut self, pg: &mut PgConnection, src: &mut Source, ids: &[i64]) -> Result<()> {
        for chunk in ids.chunks(CHUNK) {
            let theirs: BTreeMap<i64, DraftRow> = pg_drafts(pg, chunk)?
                .into_iter()
                .map(|r| (r.id, r))
                .collect();
            let raw: Vec<RawDraft> = src.rows_by_id(Table::Drafts, chunk)?;
            let index = parents(raw.iter().map(|r| &r.session_id));
            let mut ours = BTreeMap::new();
            for r in raw {
                match normalize::draft(r, &index) {
                    Ok(d) => {
                        ours.insert(d.id, d);
                    }
                    Err(reject) => self.invalid(Table::Drafts, &reject),
                }
            }
            for id in chunk {
                self.rows += 1;
                let a = ours.get(id).map(Digest::of_draft);
                let b = theirs.get(id).map(Digest::of_draft);
                if let Some(pair) = Pair::of(a.as_ref(), b.as_ref()) {
                    comparator::child(&mut self.report, &mut self.uneven, Table::Drafts, pair);
                }
            }
        }
        Ok(())
    }

    fn keys(
        &mut self,
        pg: &mut PgConnection,
        src: &mut Source,
        wanted: &std::collections::BTreeSet<(String, String)>,
    ) -> Result<()> {
        let by_id = |rows: Vec<KeyRow>| -> BTreeMap<(String, String), KeyRow> {
            rows.into_iter()
                .map(|r| ((r.scope.clone(), r.key.clone()), r))
                .collect()
        };
        let theirs = by_id(keys::read_pg(pg, wanted)?.present);
        let ours = by_id(keys::read_sqlite(src.conn(), wanted, false)?.present);
        let mut out = KeysVerify {
            sqlite_keys: ours.len() as u64,
            postgres_keys: theirs.len() as u64,
            ..Default::default()
        };
        for id in wanted {
            self.rows += 1;
            let detail = match (ours.get(id), theirs.get(id)) {
                (None, None) => continue,
                (Some(_), None) => ("*", "missing on postgres"),
                (None, Some(_)) => ("*", "only on postgres"),
                (Some(a), Some(b)) => match [
                    ("request_hash", a.request_hash != b.request_hash),
                    ("status_code", a.status_code != b.status_code),
                    ("response_body", a.response_body != b.response_body),
                ]
                .into_iter()
                .find(|(_, differs)| *differs)
                {
                    Some((col, _)) => (col, "values differ"),
                    None => continue,
                },
            };
            out.differ(&id.0, &id.1, detail.0, detail.1);
        }
        self.report.idempotency_keys = out;
        Ok(())
    }
}

/// The sessions children name, taken as valid: whether each exists and is
/// valid in SQLite is the sessions' own comparison (and SQLite's foreign key).
fn parents<'a>(ids: impl Iterator<Item = &'a Option<Vec<u8>>>) -> SessionIndex {
    let mut index = SessionIndex::default();
    for id in ids.flatten() {
        if let Ok(u) = read_legacy_uuid(id) {
            index.insert_valid(u);
        }
    }
    index
}
