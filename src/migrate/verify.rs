//! Verification: both sides hold the same normalised rows, checked row by row and by checksum.

use std::collections::HashSet;
use std::path::Path;
use std::time::{Duration, Instant};

use diesel::prelude::*;
use diesel::sql_types::Text;
use diesel::sqlite::Sqlite;

use super::check::SCAN_BATCH;
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

pub(crate) mod comparator;
mod comparison;
mod report;

use comparison::Comparison;
pub(crate) use report::BoundedCheck;
use report::Kind;
pub use report::{RowDifference, TableVerify, VerifyReport};

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
