//! The incremental sync: what changed in SQLite since the last copy or sync, in one PostgreSQL transaction.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use diesel::pg::upsert::excluded;
use diesel::prelude::*;

use super::check::SCAN_BATCH;
use super::copy::{bump_sequences, copy_rows, read_batches, write_rejects, Rows};
use super::normalize::{self, Reject, SessionIndex};
use super::source::{Marks, RawSession, Source, Table};
use super::state;
use crate::connection::DatabaseUrl;
use crate::error::{Error, Result};
use crate::schema::sessions;
use crate::store::sessions::SessionRow;
use crate::timestamp;
use crate::types::DbUuid;

/// How a sync runs.
#[derive(Debug, Clone, Default)]
pub struct SyncOptions {
    /// Load valid rows and append invalid ones here as JSON lines; without it
    /// the sync is strict and writes nothing when any new row is invalid.
    pub reject_file: Option<PathBuf>,
}

/// What a sync copied.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct SyncReport {
    /// Sessions new since the last mark.
    pub sessions_inserted: u64,
    /// Sessions whose `updated_at` or summary changed.
    pub sessions_updated: u64,
    /// New messages.
    pub messages: u64,
    /// New drafts.
    pub drafts: u64,
    /// Rows rejected: sessions, messages, drafts.
    pub rejected: [u64; 3],
    /// The marks after the sync.
    pub marks: Marks,
    /// Time taken.
    pub elapsed: Duration,
}

/// Copies into PostgreSQL what changed in SQLite since the last copy or sync.
///
/// New sessions (rowid past the mark), sessions whose `updated_at` is at or
/// past the latest one seen (the store bumps it on every change, summary
/// included), and messages and drafts past the id marks: index range scans
/// on both sides, so the cost follows the change, not the database. All of it
/// and the new marks commit in one transaction; run it with writes paused
/// for the final catch-up of a cutover.
///
/// ```no_run
/// use interview_store::migrate::{sync, SyncOptions};
/// let report = sync("interview.db".as_ref(), &"postgres://app@db/interview".parse()?, &SyncOptions::default())?;
/// println!("{} new messages", report.messages);
/// # Ok::<(), interview_store::Error>(())
/// ```
pub fn sync(sqlite: &Path, postgres: &DatabaseUrl, opts: &SyncOptions) -> Result<SyncReport> {
    // The source first: a missing file must not leave PostgreSQL set up for nothing.
    crate::connection::require_sqlite_file(sqlite)?;
    let started = Instant::now();
    let mut pg = state::connect(postgres)?;
    let source_name = super::source::source_name(sqlite);
    let st = match state::load(&mut pg)? {
        None => {
            return Err(Error::Refused(format!(
                "nothing was copied into {} yet: run copy first",
                postgres.masked()
            )))
        }
        Some(s) if s.phase != "copied" => {
            return Err(Error::Refused(
                "the bulk copy has not finished: run copy again to finish it".into(),
            ))
        }
        Some(s) if s.source != source_name => {
            return Err(Error::Refused(format!(
                "{} holds a copy of {}, not of {source_name}",
                postgres.masked(),
                s.source
            )))
        }
        Some(s) => s,
    };
    let old = st.marks();
    let strict = opts.reject_file.is_none();
    let mut src = Source::open(sqlite)?;
    let mut report = SyncReport::default();
    let mut rejects: Vec<Reject> = Vec::new();
    src.snapshot(|src| {
        let marks = src.marks()?;
        // Changed sessions (by updated_at) and new ones (by rowid), once each.
        let mut candidates: Vec<RawSession> = match &st.mark_sessions_updated_at {
            Some(m) => src.sessions_updated_since(m)?,
            None => Vec::new(),
        };
        let mut after = old.session_rowid;
        loop {
            let more: Vec<RawSession> =
                src.rows(Table::Sessions, after, marks.session_rowid, SCAN_BATCH)?;
            let Some(last) = more.last() else { break };
            after = last.rowid;
            candidates.extend(more);
        }
        candidates.sort_by_key(|r| r.rowid);
        candidates.dedup_by_key(|r| r.rowid);

        let mut index = SessionIndex::default();
        let mut latest = None;
        for r in &candidates {
            latest = latest.max(index.add(r));
        }
        let mut rows: Vec<SessionRow> = Vec::with_capacity(candidates.len());
        let mut nulls = 0i64;
        let mut session_rejects = Vec::new();
        for r in &candidates {
            match normalize::session(r, &index) {
                Ok(s) => {
                    nulls += i64::from(s.null_summary);
                    rows.push(s.row);
                }
                Err(e) => session_rejects.push(e),
            }
        }

        pg.transaction(|pg| {
            if strict && !session_rejects.is_empty() {
                return Err(invalid(session_rejects.clone()));
            }
            // Candidates found by the `>=` scan may be unchanged: write only real changes.
            let ids: Vec<DbUuid> = rows.iter().map(|r| r.id).collect();
            let existing: HashMap<DbUuid, SessionRow> = sessions::table
                .filter(sessions::id.eq_any(&ids))
                .select(SessionRow::as_select())
                .load(pg)?
                .into_iter()
                .map(|r| (r.id, r))
                .collect();
            let rows: Vec<&SessionRow> = rows
                .iter()
                .filter(|r| {
                    existing
                        .get(&r.id)
                        .is_none_or(|e| e.updated_at != r.updated_at || e.summary != r.summary)
                })
                .collect();
            report.sessions_inserted = rows
                .iter()
                .filter(|r| !existing.contains_key(&r.id))
                .count() as u64;
            report.sessions_updated = rows.len() as u64 - report.sessions_inserted;
            for chunk in rows.chunks(1_000) {
                diesel::insert_into(sessions::table)
                    .values(chunk.to_vec())
                    .on_conflict(sessions::id)
                    .do_update()
                    .set((
                        sessions::updated_at.eq(excluded(sessions::updated_at)),
                        sessions::summary.eq(excluded(sessions::summary)),
                    ))
                    .execute(pg)?;
            }
            state::record_batch(
                pg,
                Table::Sessions,
                marks.session_rowid,
                report.sessions_inserted as i64,
                &session_rejects,
                nulls,
                "sync",
            )?;
            report.rejected[0] = session_rejects.len() as u64;
            rejects.extend(session_rejects.iter().cloned());

            // A new child may belong to a session copied earlier: those count as valid.
            let mut index = index;
            let mut unknown: Vec<DbUuid> = Vec::new();
            for table in [Table::Messages, Table::Drafts] {
                for raw in src.child_session_ids(table, old.of(table), marks.of(table))? {
                    if let Some(id) = raw.and_then(|b| uuid::Uuid::try_parse_ascii(&b).ok()) {
                        if !index.knows(&id) {
                            unknown.push(DbUuid(id));
                        }
                    }
                }
            }
            for chunk in unknown.chunks(10_000) {
                let found: Vec<DbUuid> = sessions::table
                    .filter(sessions::id.eq_any(chunk))
                    .select(sessions::id)
                    .load(pg)?;
                for id in found {
                    index.insert_valid(id.0);
                }
            }
            for table in [Table::Messages, Table::Drafts] {
                read_batches(
                    src,
                    table,
                    old.of(table),
                    marks.of(table),
                    SCAN_BATCH,
                    &index,
                    |batch| {
                        if strict && !batch.rejects.is_empty() {
                            return Err(invalid(batch.rejects));
                        }
                        copy_rows(pg, &batch.rows)?;
                        let n = match &batch.rows {
                            Rows::Messages(r) => r.len(),
                            Rows::Drafts(r) => r.len(),
                            Rows::Sessions(r) => r.len(),
                        } as u64;
                        match table {
                            Table::Messages => report.messages += n,
                            _ => report.drafts += n,
                        }
                        report.rejected[table as usize] += batch.rejects.len() as u64;
                        state::record_batch(
                            pg,
                            table,
                            batch.last_rowid,
                            n as i64,
                            &batch.rejects,
                            0,
                            "sync",
                        )?;
                        rejects.extend(batch.rejects);
                        Ok(())
                    },
                )?;
            }
            bump_sequences(pg)?;
            let latest = latest.map(timestamp::format);
            state::advance(pg, marks, latest.as_deref())
        })?;
        report.marks = marks;
        Ok(())
    })?;
    if let Some(path) = &opts.reject_file {
        if !rejects.is_empty() {
            write_rejects(path, &rejects, true)?;
        }
    }
    report.elapsed = started.elapsed();
    log::info!("sync: {report:?}");
    Ok(report)
}

fn invalid(rejects: Vec<Reject>) -> Error {
    Error::InvalidSource {
        count: rejects.len(),
        rejects,
    }
}
