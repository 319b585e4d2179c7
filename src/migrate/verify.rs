//! Verification: both sides hold the same normalised rows, checked row by row and by checksum.

use std::collections::HashSet;
use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::sql_types::Text;
use diesel::sqlite::Sqlite;
use uuid::Uuid;

use super::changelog::Changes;
use super::check::SCAN_BATCH;
use super::digest::{hash_of, Checksum, Digest, PgDigestRow, SessionDigest, TextHash};
use super::id_merge::{self, Pair};
use super::keys::{KeysVerify, LISTED, TRACKED};
use super::lock::MigrationLock;
use super::normalize::Reject;
use super::normalize::{self, SessionIndex};
use super::phase::Phase;
use super::pipeline::{Batch, Rows};
use super::source::{RawDraft, RawMessage, RawSession, Source, Table};
use super::state;
use crate::connection::DatabaseUrl;
use crate::error::{Error, Result};
use crate::schema::{drafts, messages, sessions};
use crate::types::read_legacy_uuid;
use crate::types::{DbTimestamp, DbUuid};

/// One row that differs.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RowDifference {
    /// The table.
    pub table: Table,
    /// The row's key: the session UUID or the message/draft id.
    pub id: String,
    /// The column that differs, or `*` for a row on one side only.
    pub column: String,
    /// What differs.
    pub detail: String,
}

impl std::fmt::Display for RowDifference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {} {}: {}",
            self.table, self.id, self.column, self.detail
        )
    }
}

/// One table's side-by-side figures.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct TableVerify {
    /// Every row in SQLite, by `count(*)` with no condition (invalid ones included).
    pub sqlite_count: u64,
    /// Every row in PostgreSQL, by `count(*)` with no condition.
    pub postgres_count: u64,
    /// Valid rows in SQLite, as the row comparison read them.
    pub sqlite_rows: u64,
    /// Rows in PostgreSQL, as the row comparison read them.
    pub postgres_rows: u64,
    /// SQLite rows recorded as rejected by copy or sync (not differences).
    pub rejected: u64,
    /// Rows that differ, are missing on one side, or are invalid without a recorded
    /// reject; plus one for each `count(*)` that disagrees (verify counts apart from the rows).
    pub differences: u64,
    /// Checksum over the normalised SQLite rows (order-independent).
    pub sqlite_checksum: String,
    /// Checksum over the PostgreSQL rows.
    pub postgres_checksum: String,
}

/// What [`verify`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct VerifyReport {
    /// Sessions, messages, drafts.
    pub sessions: TableVerify,
    /// Messages.
    pub messages: TableVerify,
    /// Drafts.
    pub drafts: TableVerify,
    /// Sessions whose messages differ (other ids, or in another order).
    pub sessions_with_message_differences: u64,
    /// The first `LISTED` differences.
    pub differences: Vec<RowDifference>,
    /// The finished idempotency keys, compared apart (see `migrate::keys`).
    pub idempotency_keys: KeysVerify,
    /// Of the differences, those in rows SQLite's change log names past the
    /// mark PostgreSQL has applied: written while the verify ran (or not yet
    /// synced), so not a fault of the copy. `None` when too many rows differ
    /// to tell.
    pub in_flight: Option<u64>,
    /// The change-log position up to which both sides were found equal, the
    /// rows in flight aside; recorded for a switch under traffic, which
    /// compares only the rows named after it. `None` when they differ.
    pub verified_upto: Option<i64>,
    /// After the switch: the transaction horizon up to which both sides were
    /// found equal, the rows in flight aside; a switch back under traffic
    /// compares only the rows PostgreSQL's log names from it on.
    pub verified_horizon: Option<i64>,
    /// Time taken, in milliseconds.
    pub elapsed_ms: u64,
    /// The rows that differ, up to `TRACKED`, to tell the ones in flight.
    #[serde(skip)]
    differing: Vec<Differing>,
}

/// What kind of difference a [`VerifyReport`] remembers, to tell the ones in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A column of a row on both sides.
    Column,
    /// A row on one side only.
    OneSided,
    /// The tables' `count(*)` differ: in flight only when every row on one
    /// side only is (the comparison read every row, so they make up the gap).
    Count,
    /// The row comparison read other rows than `count(*)` counts: a fault of
    /// the reader, never in flight.
    Scan,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Differing {
    table: Table,
    id: String,
    kind: Kind,
}

impl VerifyReport {
    /// Whether both sides hold the same data, rejected rows aside.
    pub fn is_equal(&self) -> bool {
        self.sessions.differences == 0
            && self.messages.differences == 0
            && self.drafts.differences == 0
            && self.idempotency_keys.differences == 0
    }

    fn table(&mut self, t: Table) -> &mut TableVerify {
        match t {
            Table::Sessions => &mut self.sessions,
            Table::Messages => &mut self.messages,
            Table::Drafts => &mut self.drafts,
        }
    }

    /// Whether every difference is in a row written since the mark
    /// PostgreSQL applied (a follower is behind by those rows, nothing else).
    pub fn is_equal_but_in_flight(&self) -> bool {
        let all = self.sessions.differences + self.messages.differences + self.drafts.differences;
        self.idempotency_keys.is_equal_but_in_flight() && self.in_flight == Some(all)
    }

    /// Counts the differences in rows named by `named` (log entries past the applied mark).
    pub(crate) fn settle_in_flight(&mut self, named: &Changes) {
        // Keys in flight are excused as rows are: an answered retry is a write.
        self.idempotency_keys
            .settle_in_flight(&named.keys, named.all_keys);
        let all = self.sessions.differences + self.messages.differences + self.drafts.differences;
        if all as usize > self.differing.len() {
            self.in_flight = None;
            return;
        }
        let sessions: HashSet<Uuid> = named
            .sessions
            .iter()
            .filter_map(|k| read_legacy_uuid(k.as_bytes()).ok())
            .collect();
        let is_named = |d: &Differing| match d.table {
            Table::Sessions => {
                read_legacy_uuid(d.id.as_bytes()).is_ok_and(|u| sessions.contains(&u))
            }
            Table::Messages | Table::Drafts => {
                d.id.parse::<i64>()
                    .is_ok_and(|i| named.children(d.table).contains(&i))
            }
        };
        // A row differing in two columns is one difference per column.
        let mut in_flight = 0u64;
        let mut settled_one_sided = [true; 3];
        for d in &self.differing {
            match d.kind {
                Kind::Column | Kind::OneSided if is_named(d) => in_flight += 1,
                Kind::OneSided => settled_one_sided[d.table as usize] = false,
                _ => {}
            }
        }
        in_flight += self
            .differing
            .iter()
            .filter(|d| d.kind == Kind::Count && settled_one_sided[d.table as usize])
            .count() as u64;
        self.in_flight = Some(in_flight);
    }

    pub(crate) fn differ(
        &mut self,
        table: Table,
        id: String,
        column: &str,
        detail: impl Into<String>,
    ) {
        let kind = if column == "*" {
            Kind::OneSided
        } else {
            Kind::Column
        };
        self.remember(table, id, kind, column, detail.into());
    }

    fn remember(&mut self, table: Table, id: String, kind: Kind, column: &str, detail: String) {
        self.table(table).differences += 1;
        if self.differing.len() < TRACKED {
            self.differing.push(Differing {
                table,
                id: id.clone(),
                kind,
            });
        }
        if self.differences.len() < LISTED {
            self.differences.push(RowDifference {
                table,
                id,
                column: column.into(),
                detail,
            });
        }
    }

    /// Compares the row comparison's figures of one table with `count(*)` on
    /// each side; `invalid` SQLite rows are not expected on PostgreSQL.
    fn check_counts(&mut self, table: Table, invalid: u64) {
        let t = self.table(table).clone();
        if t.sqlite_rows + invalid != t.sqlite_count {
            self.remember(
                table,
                "count(*)".into(),
                Kind::Scan,
                "*",
                format!(
                    "the row comparison read {} of sqlite's {} rows",
                    t.sqlite_rows + invalid,
                    t.sqlite_count
                ),
            );
        }
        if t.postgres_rows != t.postgres_count {
            self.remember(
                table,
                "count(*)".into(),
                Kind::Scan,
                "*",
                format!(
                    "the row comparison read {} of postgres's {} rows",
                    t.postgres_rows, t.postgres_count
                ),
            );
        }
        if t.sqlite_count.saturating_sub(invalid) != t.postgres_count {
            self.remember(
                table,
                "count(*)".into(),
                Kind::Count,
                "*",
                format!(
                    "count(*): sqlite {} ({invalid} invalid), postgres {}",
                    t.sqlite_count, t.postgres_count
                ),
            );
        }
    }
}

/// Compares every row of the SQLite source with PostgreSQL.
///
/// Counts, per-row column comparison, per-session message order and a
/// checksum per table over the normalised rows; rows that copy or sync
/// recorded as rejected are reported apart and are not differences.
///
/// A report: it writes nothing on either side (it does not apply the schema
/// migrations either, and refuses a PostgreSQL database whose schema is behind
/// this tool's). [`verify_and_record`] is the cutover step that records the
/// position it found.
///
/// ```no_run
/// use interview_store::migrate::verify;
/// let report = verify("interview.db".as_ref(), &"postgres://app@db/interview".parse()?)?;
/// assert!(report.is_equal(), "{:#?}", report.differences);
/// # Ok::<(), interview_store::Error>(())
/// ```
pub fn verify(sqlite: &Path, postgres: &DatabaseUrl) -> Result<VerifyReport> {
    // The source first: a missing file must not be reported as a PostgreSQL problem.
    crate::connection::require_sqlite_file(sqlite)?;
    // The lock keeps a running follower out only while both sides' snapshots
    // are taken, so the follower's mark read in PostgreSQL's snapshot is the
    // position its rows stand at; the scan then reads the snapshots while the
    // follower goes on (a full verify of a large file takes minutes, and a
    // follower stalled that long leaves the switch far behind).
    let lock = MigrationLock::acquire_waiting(postgres, super::lock::FOLLOWER_TURN)?;
    verify_in_snapshot(sqlite, postgres, Some(lock))
}

/// [`verify`], then the position it found equal recorded in PostgreSQL's
/// bookkeeping (`migrate verify --record`): the switch under traffic rechecks
/// only the rows changed since that position, and the follower keeps the
/// change-log entries past it until then. Recording is a cutover step, so it
/// is asked for by name: a plain verify changes nothing on either side.
///
/// Nothing is recorded unless the only differences are rows in flight.
pub fn verify_and_record(sqlite: &Path, postgres: &DatabaseUrl) -> Result<VerifyReport> {
    let report = verify(sqlite, postgres)?;
    if report.verified_upto.is_some() || report.verified_horizon.is_some() {
        state::mark_verified(
            &mut state::connect(postgres)?,
            report.verified_upto,
            report.verified_horizon,
        )?;
    }
    Ok(report)
}

/// Where PostgreSQL's rows stand, to tell the rows written since (in flight).
#[derive(Clone, Copy)]
enum Position {
    /// SQLite's change log applied up to this sequence number.
    Sqlite(i64),
    /// PostgreSQL's change log applied to SQLite below this transaction id.
    Postgres(i64),
}

/// Counts the differences in rows written since `stands_at` (read after the
/// scan, so every write that landed during it is named) and, when they are
/// the only ones, records the position as verified.
fn settle(
    report: &mut VerifyReport,
    stands_at: Option<Position>,
    src: &mut Source,
    pg: &mut PgConnection,
) -> Result<()> {
    match stands_at {
        Some(Position::Sqlite(mark)) if super::changelog::sqlite_installed(src.conn())? => {
            report.settle_in_flight(&super::changelog::sqlite_changes(src.conn(), mark)?);
            if report.is_equal_but_in_flight() {
                report.verified_upto = Some(mark);
            }
        }
        Some(Position::Postgres(horizon)) if super::changelog::pg_ready(pg)? => {
            report.settle_in_flight(&super::changelog::pg_changes(pg, horizon, None)?);
            if report.is_equal_but_in_flight() {
                report.verified_horizon = Some(horizon);
            }
        }
        _ => {}
    }
    Ok(())
}

/// [`verify`] for a caller that holds the migration lock for the whole run
/// (the switch, whose writers are paused).
pub(crate) fn verify_locked(sqlite: &Path, postgres: &DatabaseUrl) -> Result<VerifyReport> {
    verify_in_snapshot(sqlite, postgres, None)
}

/// Verifies one snapshot of each side. The caller holds the migration lock;
/// `release`, when given, is that lock, let go once both snapshots are taken.
///
/// PostgreSQL is read in one repeatable-read transaction, exported to the
/// read-ahead connections, and SQLite in one read transaction, both begun
/// under the lock: the follower's mark (or the way back's horizon) read in
/// PostgreSQL's snapshot is what the rows in both snapshots stand at, and
/// SQLite's log in its snapshot names every row written since.
fn verify_in_snapshot(
    sqlite: &Path,
    postgres: &DatabaseUrl,
    release: Option<MigrationLock>,
) -> Result<VerifyReport> {
    crate::connection::require_sqlite_file(sqlite)?;
    let started = Instant::now();
    let mut pg = state::connect_read_only(postgres)?;
    let mut src = Source::open(sqlite)?;
    let mut report = pg
        .build_transaction()
        .repeatable_read()
        .read_only()
        .run(|pg| verify_snapshots(&mut src, pg, postgres, release))?;
    report.elapsed_ms = started.elapsed().as_millis() as u64;
    log::info!(
        "verify: {} difference(s) in {:?}",
        report.sessions.differences + report.messages.differences + report.drafts.differences,
        Duration::from_millis(report.elapsed_ms)
    );
    Ok(report)
}

/// The scan of [`verify_in_snapshot`], inside PostgreSQL's transaction.
fn verify_snapshots(
    src: &mut Source,
    pg: &mut PgConnection,
    postgres: &DatabaseUrl,
    release: Option<MigrationLock>,
) -> Result<VerifyReport> {
    // First statement: it fixes the transaction's snapshot, and hands it on.
    let snapshot = diesel::select(diesel::dsl::sql::<Text>("pg_export_snapshot()"))
        .get_result::<String>(pg)?;
    // It goes into a utility statement, which takes no parameters: the id is
    // PostgreSQL's own (hex digits and dashes), checked once here anyway.
    if !snapshot.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
        return Err(Error::Corrupt {
            what: "the snapshot PostgreSQL exported".into(),
            reason: format!("an unexpected snapshot id {snapshot:?}"),
        });
    }
    let recorded: HashSet<(String, String)> = state::rejects(pg)?
        .into_iter()
        .map(|r| (r.table, r.id))
        .collect();
    // Only a finished copy has a mark that PostgreSQL's rows match.
    // What PostgreSQL's rows stand at: before the switch SQLite's log
    // position applied, after it the transaction horizon applied to SQLite.
    let stands_at = match state::load(pg)? {
        Some(st) => match st.phase()? {
            Phase::Copied | Phase::SwitchingToPostgres(_) => {
                st.mark_change_seq.map(Position::Sqlite)
            }
            Phase::Switched | Phase::SwitchingToSqlite(_) => {
                Some(Position::Postgres(st.rollback_xid_horizon))
            }
            Phase::Copying | Phase::RolledBack => None,
        },
        _ => None,
    };
    std::thread::scope(|scope| {
        src.snapshot(|src| {
            // SQLite's first read fixes its snapshot; the lock can go after it.
            // The counts come first, by `count(*)` with no condition on each
            // side: whatever the row comparison reads must add up to them.
            let counts = Counts::read(src, pg)?;
            drop(release);
            let index = index_sessions(src)?;
            let mut cmp = Comparison::start(scope, postgres, &snapshot, &recorded);
            let t = Instant::now();
            cmp.sessions(src, &index, pg)?;
            log::debug!("verify: sessions in {:.1?}", t.elapsed());
            for table in [Table::Messages, Table::Drafts] {
                let t = Instant::now();
                cmp.waited = Duration::ZERO;
                each_batch(src, table, &index, |batch| cmp.batch(table, &batch))?;
                log::debug!(
                    "verify: {table} in {:.1?}, {:.1?} of it waiting for postgres",
                    t.elapsed(),
                    cmp.waited
                );
            }
            let mut report = cmp.finish(&counts)?;
            // PostgreSQL is about to go live: its inserts must not collide with the rows copied.
            if matches!(stands_at, Some(Position::Sqlite(_))) {
                check_sequences(&mut report, pg)?;
            }
            report.idempotency_keys = super::keys::verify(src.conn(), pg)?;
            settle(&mut report, stands_at, src, pg)?;
            Ok(report)
        })
    })
}

/// Checks that each id sequence hands out an id no row holds: past the largest
/// id, or, when a row holds `i64::MAX` (see [`super::pipeline::bump_sequences`]),
/// a free one. A sequence behind its rows is a difference of its table (id
/// `sequence`): the service's next insert on PostgreSQL would fail.
fn check_sequences(report: &mut VerifyReport, pg: &mut PgConnection) -> Result<()> {
    #[derive(QueryableByName)]
    struct Seq {
        #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::BigInt>)]
        top: Option<i64>,
        /// None: the sequence handed out its last value.
        #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::BigInt>)]
        next: Option<i64>,
        #[diesel(sql_type = diesel::sql_types::Bool)]
        taken: bool,
    }
    for table in [Table::Messages, Table::Drafts] {
        let q = diesel::sql_query(format!(
            "SELECT top, next, EXISTS (SELECT FROM {table} WHERE id = next) AS taken FROM              (SELECT (SELECT max(id) FROM {table}) AS top,                      (SELECT CASE WHEN NOT is_called THEN last_value                                   WHEN last_value < 9223372036854775807 THEN last_value + 1 END                       FROM {table}_id_seq) AS next) s"
        ));
        let seq: Seq = q.get_result(pg)?;
        let Some(top) = seq.top else { continue };
        let behind = match seq.next {
            None => Some("has no id left".to_string()),
            Some(next) if top < i64::MAX && next <= top => Some(format!(
                "hands out {next} next, not past the largest id {top}"
            )),
            Some(next) if seq.taken => Some(format!("hands out {next} next, an id a row holds")),
            Some(_) => None,
        };
        if let Some(why) = behind {
            report.remember(
                table,
                "sequence".into(),
                Kind::Scan,
                "id",
                format!("postgres's id sequence {why}: the service's next insert would fail"),
            );
        }
    }
    Ok(())
}

/// Every row of each table by `count(*)` with no condition, on each side, in
/// the snapshots compared.
struct Counts {
    sqlite: [u64; 3],
    postgres: [u64; 3],
}

impl Counts {
    fn read(src: &mut Source, pg: &mut PgConnection) -> Result<Counts> {
        let mut out = Counts {
            sqlite: [0; 3],
            postgres: [0; 3],
        };
        for t in Table::ALL {
            out.sqlite[t as usize] = src.count_all(t)?;
            let n: i64 = match t {
                Table::Sessions => sessions::table.count().get_result(pg)?,
                Table::Messages => messages::table.count().get_result(pg)?,
                Table::Drafts => drafts::table.count().get_result(pg)?,
            };
            out.postgres[t as usize] = n as u64;
        }
        Ok(out)
    }
}

/// The index children are judged against, from verify's own read of every session.
fn index_sessions(src: &mut Source) -> Result<SessionIndex> {
    let mut index = SessionIndex::default();
    for raw in src.stream::<RawSession>(Table::Sessions)? {
        index.add(&raw?);
    }
    Ok(index)
}

/// SQLite's rows of a child table, normalised, in batches of [`SCAN_BATCH`]:
/// verify's own keyset pages over the whole table (from before the first
/// row, no upper bound, no mark), apart from the copy's reader.
fn each_batch(
    src: &mut Source,
    table: Table,
    index: &SessionIndex,
    mut each: impl FnMut(Batch) -> Result<()>,
) -> Result<()> {
    fn batches<R: QueryableByName<Sqlite> + 'static, T>(
        src: &mut Source,
        table: Table,
        id: fn(&R) -> i64,
        mut normalise: impl FnMut(R) -> std::result::Result<T, Reject>,
        wrap: fn(Vec<T>) -> Rows,
        each: &mut dyn FnMut(Batch) -> Result<()>,
    ) -> Result<()> {
        // Keyset pages (one statement each, cached): measured faster than one
        // statement streamed a row at a time through diesel's row iterator.
        let mut after = None;
        loop {
            let page: Vec<R> = src.page(table, after, SCAN_BATCH)?;
            let Some(last_rowid) = page.last().map(id) else {
                return Ok(());
            };
            after = Some(last_rowid);
            let mut ok = Vec::with_capacity(page.len());
            let mut rejects = Vec::new();
            for raw in page {
                match normalise(raw) {
                    Ok(v) => ok.push(v),
                    Err(e) => rejects.push(e),
                }
            }
            each(Batch {
                last_rowid,
                rows: wrap(ok),
                rejects,
                null_summaries: 0,
            })?;
        }
    }
    match table {
        Table::Messages => batches(
            src,
            table,
            |r: &RawMessage| r.id,
            |r| normalize::message(r, index),
            Rows::Messages,
            &mut each,
        ),
        Table::Drafts => batches(
            src,
            table,
            |r: &RawDraft| r.id,
            |r| normalize::draft(r, index),
            Rows::Drafts,
            &mut each,
        ),
        Table::Sessions => Ok(()),
    }
}

/// One verification in progress: both sides' sessions stream past each other
/// in UUID order, then SQLite's batches of messages and drafts come in and
/// PostgreSQL's rows, read ahead in id order, meet them.
struct Comparison<'a> {
    report: VerifyReport,
    recorded: &'a HashSet<(String, String)>,
    /// Per table: SQLite's checksum, PostgreSQL's.
    sums: [(Checksum, Checksum); 3],
    /// Sessions whose messages or drafts differ.
    uneven: HashSet<Uuid>,
    pg_messages: Prefetch,
    pg_drafts: Prefetch,
    /// Time spent waiting for PostgreSQL's read-ahead (for the debug log).
    waited: Duration,
    /// Invalid SQLite rows per table (recorded as rejected or not).
    invalid: [u64; 3],
}

impl<'a> Comparison<'a> {
    /// Starts reading PostgreSQL's messages and drafts ahead, in id order, on
    /// connections of their own.
    fn start<'scope>(
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
    fn sessions(
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
    fn batch(&mut self, table: Table, batch: &Batch) -> Result<()> {
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
        let table = Table::Sessions;
        let (s, p) = match pair {
            Pair::Both(s, p) => (s, p),
            Pair::SqliteOnly(s) => {
                self.report.sessions.sqlite_rows += 1;
                self.sums[0].0.add(hash_of(&s));
                self.report
                    .differ(table, s.id.to_string(), "*", "missing on postgres");
                return;
            }
            Pair::PostgresOnly(p) => {
                self.report.sessions.postgres_rows += 1;
                self.sums[0].1.add(hash_of(&p));
                self.report
                    .differ(table, p.id.to_string(), "*", "only on postgres");
                return;
            }
        };
        self.report.sessions.sqlite_rows += 1;
        self.report.sessions.postgres_rows += 1;
        self.sums[0].0.add(hash_of(&s));
        self.sums[0].1.add(hash_of(&p));
        let id = s.id;
        for (col, a, b) in [
            ("created_at", s.created_at, p.created_at),
            ("updated_at", s.updated_at, p.updated_at),
        ] {
            if a != b {
                let show = |t: i64| {
                    chrono::DateTime::from_timestamp_micros(t)
                        .map_or_else(|| t.to_string(), |t| format!("{t:?}"))
                };
                self.report.differ(
                    table,
                    id.to_string(),
                    col,
                    format!("sqlite {}, postgres {}", show(a), show(b)),
                );
            }
        }
        if s.summary_hash != p.summary_hash {
            self.report
                .differ(table, id.to_string(), "summary", "text differs");
        }
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
    fn finish(mut self, counts: &Counts) -> Result<VerifyReport> {
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

/// Merges one id-ordered batch of each side.
fn merge(
    report: &mut VerifyReport,
    sums: &mut (Checksum, Checksum),
    uneven: &mut HashSet<Uuid>,
    table: Table,
    ours: &[Digest],
    theirs: &[Digest],
) {
    let body = if table == Table::Drafts {
        "content"
    } else {
        "text"
    };
    report.table(table).sqlite_rows += ours.len() as u64;
    report.table(table).postgres_rows += theirs.len() as u64;
    for r in ours {
        sums.0.add(hash_of(r));
    }
    for r in theirs {
        sums.1.add(hash_of(r));
    }
    let (mut i, mut j) = (0, 0);
    while i < ours.len() || j < theirs.len() {
        match (ours.get(i), theirs.get(j)) {
            (Some(a), Some(b)) if a.id == b.id => {
                for (col, differs) in [
                    ("session_id", a.session_id != b.session_id),
                    ("role", a.role_hash != b.role_hash),
                    (body, a.body_hash != b.body_hash),
                    ("created_at", a.created_at != b.created_at),
                ] {
                    if differs {
                        report.differ(table, a.id.to_string(), col, "values differ");
                        if col == "session_id" {
                            uneven.insert(a.session_id);
                        }
                    }
                }
                i += 1;
                j += 1;
            }
            (Some(a), b) if b.is_none_or(|b| a.id < b.id) => {
                report.differ(table, a.id.to_string(), "*", "missing on postgres");
                uneven.insert(a.session_id);
                i += 1;
            }
            (_, Some(b)) => {
                report.differ(table, b.id.to_string(), "*", "only on postgres");
                uneven.insert(b.session_id);
                j += 1;
            }
            (_, None) => unreachable!("loop condition"),
        }
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
