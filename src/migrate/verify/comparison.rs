//! Verify's row comparison: both sides' rows meet in key order, each pair
//! compared column by column and summed into a checksum per side. Apart from
//! [`super`] (snapshots, counts, the entry points) because it is the part that
//! judges rows; the copy's pipeline never calls it.

use std::collections::HashSet;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::sql_types::Text;
use uuid::Uuid;

use crate::connection::DatabaseUrl;
use crate::error::{Error, Result};
use crate::migrate::check::SCAN_BATCH;
use crate::migrate::digest::{hash_of, Checksum, Digest, PgDigestRow, SessionDigest, TextHash};
use crate::migrate::id_merge::{self, Pair};
use crate::migrate::normalize::Reject;
use crate::migrate::normalize::{self, SessionIndex};
use crate::migrate::pipeline::{Batch, Rows};
use crate::migrate::source::{Source, Table};
use crate::migrate::state;
use crate::schema::{drafts, messages, sessions};
use crate::types::{DbTimestamp, DbUuid};

use super::comparator;
use super::report::VerifyReport;
use super::Counts;

/// One verification in progress: both sides' sessions stream past each other
/// in UUID order, then SQLite's batches of messages and drafts come in and
/// PostgreSQL's rows, read ahead in id order, meet them.
pub(super) struct Comparison<'a> {
    report: VerifyReport,
    recorded: &'a HashSet<(String, String)>,
    /// Per table: SQLite's checksum, PostgreSQL's.
    sums: [(Checksum, Checksum); 3],
    /// Sessions whose messages or drafts differ.
    uneven: HashSet<Uuid>,
    pg_messages: Prefetch,
    pg_drafts: Prefetch,
    /// Time spent waiting for PostgreSQL's read-ahead (for the debug log).
    pub(super) waited: Duration,
    /// Invalid SQLite rows per table (recorded as rejected or not).
    invalid: [u64; 3],
}

impl<'a> Comparison<'a> {
    /// Starts reading PostgreSQL's messages and drafts ahead, in id order, on
    /// connections of their own.
    pub(super) fn start<'scope>(
        scope: &'scope std::thread::Scope<'scope, '_>,
        postgres: &'scope DatabaseUrl,
        snapshot: &'scope str,
        recorded: &'a HashSet<(String, String)>,
    ) -> Self {
        let pg_messages = Prefetch::spawn(scope, postgres, snapshot, 4, |pg, after| {
            let mut q = messages::table.into_boxed();
            if let Some(after) = after {
                q = q.filter(messages::id.gt(after));
            }
            q.order(messages::id)
                .limit(SCAN_BATCH)
                .select((
                    messages::id,
                    messages::session_id,
                    messages::role,
                    messages::text,
                    messages::created_at,
                ))
                .load_iter::<PgDigestRow, diesel::pg::PgRowByRowLoadingMode>(pg)?
                .map(|r| r.map(Digest::of_pg))
                .collect::<QueryResult<_>>()
        });
        // Drafts are read while SQLite's messages are compared: their digests are small
        // (64 bytes a row), so up to 64,000 of them wait, and the slow part on PostgreSQL's
        // side (TOAST, decompression) is done by the time SQLite reaches the drafts.
        let pg_drafts = Prefetch::spawn(scope, postgres, snapshot, 64, |pg, after| {
            let mut q = drafts::table.into_boxed();
            if let Some(after) = after {
                q = q.filter(drafts::id.gt(after));
            }
            q.order(drafts::id)
                .limit(SCAN_BATCH / 5) // drafts run to kilobytes: keep memory flat
                .select((
                    drafts::id,
                    drafts::session_id,
                    diesel::dsl::sql::<Text>("''"),
                    drafts::content,
                    drafts::created_at,
                ))
                .load_iter::<PgDigestRow, diesel::pg::PgRowByRowLoadingMode>(pg)?
                .map(|r| r.map(Digest::of_pg))
                .collect::<QueryResult<_>>()
        });
        Comparison {
            report: VerifyReport::default(),
            recorded,
            sums: [(); 3].map(|_| (Checksum::default(), Checksum::default())),
            uneven: HashSet::new(),
            pg_messages,
            pg_drafts,
            waited: Duration::ZERO,
            invalid: [0; 3],
        }
    }

    /// Sessions: SQLite's through its index on `id`, PostgreSQL's through its
    /// primary key, both in UUID order and merged as they stream, so memory
    /// does not grow with the table (see [`id_merge`]).
    pub(super) fn sessions(
        &mut self,
        src: &mut Source,
        index: &SessionIndex,
        pg: &mut PgConnection,
    ) -> Result<()> {
        let mut rejects = Vec::new();
        let ours = src.sessions_by_id()?.filter_map(|raw| match raw {
            Err(e) => Some(Err(e)),
            Ok(raw) => match normalize::session(&raw, index) {
                Ok(s) => Some(Ok(SessionDigest::of(&s.row))),
                Err(r) => {
                    rejects.push(r);
                    None
                }
            },
        });
        let theirs = sessions::table
            .order(sessions::id)
            .select((
                sessions::id,
                sessions::created_at,
                sessions::updated_at,
                sessions::summary,
            ))
            .load_iter::<(DbUuid, DbTimestamp, DbTimestamp, TextHash), diesel::pg::PgRowByRowLoadingMode>(pg)?
            .map(|r| {
                r.map(|(id, created_at, updated_at, summary)| SessionDigest {
                    id: id.0,
                    created_at: created_at.0.timestamp_micros(),
                    updated_at: updated_at.0.timestamp_micros(),
                    summary_hash: summary.0,
                })
                .map_err(Error::from)
            });
        id_merge::merge(
            ours,
            theirs,
            |d| d.id,
            |pair| {
                self.session(pair);
                Ok(())
            },
        )?;
        for r in &rejects {
            self.reject(Table::Sessions, r);
        }
        Ok(())
    }

    fn reject(&mut self, table: Table, r: &Reject) {
        self.invalid[table as usize] += 1;
        if self.recorded.contains(&(r.table.clone(), r.id.clone())) {
            self.report.table(table).rejected += 1;
        } else {
            unrecorded(&mut self.report, table, r);
        }
    }

    /// Compares one SQLite batch with PostgreSQL's rows of the same ids.
    pub(super) fn batch(&mut self, table: Table, batch: &Batch) -> Result<()> {
        for r in &batch.rejects {
            self.reject(table, r);
        }
        match &batch.rows {
            // Sessions go through `sessions`, never in batches.
            Rows::Sessions(_) => Ok(()),
            Rows::Messages(rows) => {
                let ours: Vec<Digest> = rows.iter().map(Digest::of_message).collect();
                self.children(table, &ours, batch.last_rowid)
            }
            Rows::Drafts(rows) => {
                let ours: Vec<Digest> = rows.iter().map(Digest::of_draft).collect();
                self.children(table, &ours, batch.last_rowid)
            }
        }
    }

    fn session(&mut self, pair: Pair<SessionDigest>) {
        match &pair {
            Pair::Both(s, p) => {
                self.sums[0].0.add(hash_of(s));
                self.sums[0].1.add(hash_of(p));
            }
            Pair::SqliteOnly(s) => self.sums[0].0.add(hash_of(s)),
            Pair::PostgresOnly(p) => self.sums[0].1.add(hash_of(p)),
        }
        comparator::session(&mut self.report, pair.as_ref());
    }

    /// Merges a batch of messages or drafts with PostgreSQL's rows up to its last id.
    fn children(&mut self, table: Table, ours: &[Digest], last: i64) -> Result<()> {
        let w = Instant::now();
        let (theirs, i) = match table {
            Table::Drafts => (self.pg_drafts.take_upto(last)?, 2),
            _ => (self.pg_messages.take_upto(last)?, 1),
        };
        self.waited += w.elapsed();
        merge(
            &mut self.report,
            &mut self.sums[i],
            &mut self.uneven,
            table,
            ours,
            &theirs,
        );
        Ok(())
    }

    /// What is left on PostgreSQL has ids the source never had; then the
    /// checksums, and the figures against `count(*)`.
    pub(super) fn finish(mut self, counts: &Counts) -> Result<VerifyReport> {
        self.children(Table::Messages, &[], i64::MAX)?;
        self.children(Table::Drafts, &[], i64::MAX)?;
        self.report.sessions_with_message_differences = self.uneven.len() as u64;
        for (i, t) in Table::ALL.into_iter().enumerate() {
            let v = self.report.table(t);
            v.sqlite_checksum = self.sums[i].0.hex();
            v.postgres_checksum = self.sums[i].1.hex();
            v.sqlite_count = counts.sqlite[i];
            v.postgres_count = counts.postgres[i];
            self.report.check_counts(t, self.invalid[i]);
        }
        Ok(self.report)
    }
}

fn unrecorded(report: &mut VerifyReport, table: Table, r: &Reject) {
    report.differ(
        table,
        r.id.clone(),
        &r.column,
        format!(
            "invalid in sqlite ({}) and not recorded as rejected",
            r.reason
        ),
    );
}

/// Merges one id-ordered batch of each side, each key judged by the comparator.
fn merge(
    report: &mut VerifyReport,
    sums: &mut (Checksum, Checksum),
    uneven: &mut HashSet<Uuid>,
    table: Table,
    ours: &[Digest],
    theirs: &[Digest],
) {
    for r in ours {
        sums.0.add(hash_of(r));
    }
    for r in theirs {
        sums.1.add(hash_of(r));
    }
    let (mut i, mut j) = (0, 0);
    while i < ours.len() || j < theirs.len() {
        let pair = match (ours.get(i), theirs.get(j)) {
            (Some(a), Some(b)) if a.id == b.id => {
                i += 1;
                j += 1;
                Pair::Both(a, b)
            }
            (Some(a), b) if b.is_none_or(|b| a.id < b.id) => {
                i += 1;
                Pair::SqliteOnly(a)
            }
            (_, Some(b)) => {
                j += 1;
                Pair::PostgresOnly(b)
            }
            (_, None) => unreachable!("loop condition"),
        };
        comparator::child(report, uneven, table, pair);
    }
}

/// Rows of one PostgreSQL table read ahead, in id order, by a thread of its own.
struct Prefetch {
    rx: mpsc::Receiver<Result<Vec<Digest>>>,
    buf: std::collections::VecDeque<Digest>,
    done: bool,
}

impl Prefetch {
    /// Reads ahead on a thread of its own, at most `batches` loads, in the
    /// exported `snapshot` (its transaction ends with the connection). `load`
    /// reads the rows after its cursor (None: from the first row).
    fn spawn<'scope>(
        scope: &'scope std::thread::Scope<'scope, '_>,
        url: &'scope DatabaseUrl,
        snapshot: &'scope str,
        batches: usize,
        load: impl Fn(&mut PgConnection, Option<i64>) -> QueryResult<Vec<Digest>> + Send + 'scope,
    ) -> Prefetch {
        let (tx, rx) = mpsc::sync_channel(batches);
        scope.spawn(move || {
            let run = || -> Result<()> {
                let mut pg = state::connect_read_only(url)?;
                pg.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")?;
                pg.batch_execute(&format!("SET TRANSACTION SNAPSHOT '{snapshot}'"))?;
                // A keyset cursor from before the first row: ids may be zero or negative.
                let mut after = None;
                loop {
                    let rows = load(&mut pg, after)?;
                    let Some(last) = rows.last() else {
                        return Ok(());
                    };
                    after = Some(last.id);
                    if tx.send(Ok(rows)).is_err() {
                        return Ok(()); // the reader stopped early
                    }
                }
            };
            if let Err(e) = run() {
                let _ = tx.send(Err(e));
            }
        });
        Prefetch {
            rx,
            buf: Default::default(),
            done: false,
        }
    }

    /// Every remaining row with an id up to `last`.
    fn take_upto(&mut self, last: i64) -> Result<Vec<Digest>> {
        let mut out = Vec::new();
        loop {
            while let Some(r) = self.buf.front() {
                if r.id > last {
                    return Ok(out);
                }
                out.extend(self.buf.pop_front());
            }
            if self.done {
                return Ok(out);
            }
            match self.rx.recv() {
                Ok(batch) => self.buf.extend(batch?),
                Err(_) => self.done = true,
            }
        }
    }
}
