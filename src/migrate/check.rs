//! The preflight: every invalid row of a source, found in one read.

use std::path::Path;

use super::normalize::{self, Reject, SessionIndex};
use super::source::{Marks, RawDraft, RawMessage, RawSession, Source, Table};
use crate::error::Result;

/// Rows per read while scanning.
pub(crate) const SCAN_BATCH: i64 = 5_000;

/// What the preflight found.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct CheckReport {
    /// Rows per table: sessions, messages, drafts.
    pub rows: [u64; 3],
    /// Sessions whose NULL summary will load as `''`.
    pub null_summaries: u64,
    /// Every invalid row, in table then rowid order.
    pub rejects: Vec<Reject>,
    /// Whether the source is in WAL mode.
    pub wal: bool,
}

impl CheckReport {
    /// Whether every row is valid.
    pub fn is_clean(&self) -> bool {
        self.rejects.is_empty()
    }
}

/// Reads a SQLite source once and lists every row the copy would reject.
///
/// ```no_run
/// let report = interview_store::migrate::check("interview.db".as_ref())?;
/// for r in &report.rejects {
///     eprintln!("{r}");
/// }
/// # Ok::<(), interview_store::Error>(())
/// ```
pub fn check(sqlite: &Path) -> Result<CheckReport> {
    let mut src = Source::open(sqlite)?;
    let wal = src.is_wal();
    src.snapshot(|src| {
        let marks = src.marks()?;
        let index = index_sessions(src, marks.session_rowid)?.0;
        let mut report = CheckReport {
            wal,
            ..Default::default()
        };
        scan(src, &index, marks, &mut report)?;
        Ok(report)
    })
}

/// The first pass over sessions: the index children are judged against, and
/// the latest valid `updated_at`.
pub(crate) fn index_sessions(
    src: &mut Source,
    upto: i64,
) -> Result<(SessionIndex, Option<chrono::DateTime<chrono::Utc>>)> {
    let mut index = SessionIndex::default();
    let mut latest = None;
    src.each_session(upto, SCAN_BATCH, |raw| {
        latest = latest.max(index.add(raw));
        Ok(())
    })?;
    Ok((index, latest))
}

/// Validates every row up to `upto` of each table into `report`, from the
/// first row on, whatever its rowid (zero and negative ones included).
pub(crate) fn scan(
    src: &mut Source,
    index: &SessionIndex,
    upto: Marks,
    report: &mut CheckReport,
) -> Result<()> {
    for table in Table::ALL {
        let mut from = None;
        let n = &mut report.rows[table as usize];
        loop {
            let last = match table {
                Table::Sessions => {
                    let rows: Vec<RawSession> =
                        src.rows(table, from, upto.of(table), SCAN_BATCH)?;
                    for r in &rows {
                        match normalize::session(r, index) {
                            Ok(s) => report.null_summaries += u64::from(s.null_summary),
                            Err(e) => report.rejects.push(e),
                        }
                    }
                    *n += rows.len() as u64;
                    rows.last().map(|r| r.rowid)
                }
                Table::Messages => {
                    let rows: Vec<RawMessage> =
                        src.rows(table, from, upto.of(table), SCAN_BATCH)?;
                    *n += rows.len() as u64;
                    let last = rows.last().map(|r| r.id);
                    report.rejects.extend(
                        rows.into_iter()
                            .filter_map(|r| normalize::message(r, index).err()),
                    );
                    last
                }
                Table::Drafts => {
                    let rows: Vec<RawDraft> = src.rows(table, from, upto.of(table), SCAN_BATCH)?;
                    *n += rows.len() as u64;
                    let last = rows.last().map(|r| r.id);
                    report.rejects.extend(
                        rows.into_iter()
                            .filter_map(|r| normalize::draft(r, index).err()),
                    );
                    last
                }
            };
            match last {
                Some(l) => from = Some(l),
                None => break,
            }
        }
    }
    Ok(())
}
