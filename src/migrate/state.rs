//! The migration's bookkeeping in PostgreSQL: snapshot marks, per-table progress and rejects.
//!
//! Kept in the target database itself so that a batch and the record of it
//! commit together: after a crash the progress never runs ahead of, or lags
//! behind, the rows.

use chrono::{DateTime, Utc};
use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Nullable, Text, Timestamptz};

use super::normalize::Reject;
use super::phase::{self, Phase, Step};
use super::source::{Marks, Table};
use crate::connection::{AnyConnection, DatabaseUrl};
use crate::error::{Error, Refusal, Result};

/// The copy's phase and the source's high-water marks.
#[derive(Debug, Clone, PartialEq, Eq, QueryableByName, serde::Serialize)]
pub struct State {
    /// The SQLite file copied.
    #[diesel(sql_type = Text)]
    pub source: String,
    /// The stored phase (see [`State::phase`] for the typed one).
    #[diesel(sql_type = Text)]
    pub phase: String,
    /// The step a switch under way recorded (only in the `switching_*` phases).
    #[diesel(sql_type = Nullable<Text>)]
    pub step: Option<String>,
    /// When the first copy started.
    #[diesel(sql_type = Timestamptz)]
    pub started_at: DateTime<Utc>,
    /// When the bulk copy finished.
    #[diesel(sql_type = Nullable<Timestamptz>)]
    pub copied_at: Option<DateTime<Utc>>,
    /// When the last sync finished.
    #[diesel(sql_type = Nullable<Timestamptz>)]
    pub synced_at: Option<DateTime<Utc>>,
    /// Largest source `sessions` rowid copied or synced.
    #[diesel(sql_type = BigInt)]
    pub mark_session_rowid: i64,
    /// Largest source message id copied or synced.
    #[diesel(sql_type = BigInt)]
    pub mark_message_id: i64,
    /// Largest source draft id copied or synced.
    #[diesel(sql_type = BigInt)]
    pub mark_draft_id: i64,
    /// The SQLite change log's sequence number applied so far (the copy's
    /// snapshot, then each sync); `None` for a copy made before the log existed.
    #[diesel(sql_type = Nullable<BigInt>)]
    pub mark_change_seq: Option<i64>,
    /// PostgreSQL's change log applied to SQLite so far by rollback-sync.
    #[diesel(sql_type = BigInt)]
    pub rollback_change_seq: i64,
    /// When PostgreSQL became live.
    #[diesel(sql_type = Nullable<Timestamptz>)]
    pub switched_at: Option<DateTime<Utc>>,
    /// When SQLite became live again.
    #[diesel(sql_type = Nullable<Timestamptz>)]
    pub rolled_back_at: Option<DateTime<Utc>>,
    /// The SQLite change log position up to which a full verify found
    /// PostgreSQL equal; a switch under traffic verifies only rows named later.
    #[diesel(sql_type = Nullable<BigInt>)]
    pub verified_change_seq: Option<i64>,
    /// When that verify ran.
    #[diesel(sql_type = Nullable<Timestamptz>)]
    pub verified_at: Option<DateTime<Utc>>,
    /// PostgreSQL's change log applied to SQLite: every entry written by a
    /// transaction older than this horizon (a transaction id).
    #[diesel(sql_type = BigInt)]
    pub rollback_xid_horizon: i64,
    /// The horizon up to which SQLite was last found equal to PostgreSQL.
    #[diesel(sql_type = Nullable<BigInt>)]
    pub rollback_verified_horizon: Option<i64>,
}

impl State {
    /// The phase, typed; an error names a stored value this version does not know.
    pub fn phase(&self) -> Result<Phase> {
        Phase::parse(&self.phase, self.step.as_deref())
    }

    /// The rowid marks.
    pub fn marks(&self) -> Marks {
        Marks {
            session_rowid: self.mark_session_rowid,
            message_id: self.mark_message_id,
            draft_id: self.mark_draft_id,
        }
    }
}

/// One table's progress.
#[derive(Debug, Clone, PartialEq, Eq, QueryableByName, serde::Serialize)]
pub struct TableProgress {
    /// The table.
    #[diesel(sql_type = Text)]
    pub table_name: String,
    /// The last source rowid handled (copied or rejected); `None` before the
    /// first batch (rowids may be zero or negative, so no number can mean "none").
    #[diesel(sql_type = Nullable<BigInt>)]
    pub last_source_rowid: Option<i64>,
    /// Source rows up to the snapshot mark.
    #[diesel(sql_type = BigInt)]
    pub rows_total: i64,
    /// Rows loaded by copy and sync.
    #[diesel(sql_type = BigInt)]
    pub rows_copied: i64,
    /// Rows rejected by copy and sync.
    #[diesel(sql_type = BigInt)]
    pub rows_rejected: i64,
    /// Sessions whose NULL summary loaded as `''`.
    #[diesel(sql_type = BigInt)]
    pub null_summaries: i64,
    /// When the last batch committed.
    #[diesel(sql_type = Timestamptz)]
    pub updated_at: DateTime<Utc>,
}

/// Opens a PostgreSQL connection with the schema and bookkeeping tables in place.
pub(crate) fn connect(url: &DatabaseUrl) -> Result<PgConnection> {
    let mut conn = establish(url)?;
    crate::migrations::run_pending(&mut conn)?;
    into_pg(conn, url)
}

/// Opens a PostgreSQL connection for a reporting command: nothing is created
/// or migrated, so a schema behind this tool's is a refusal, not an upgrade.
pub(crate) fn connect_read_only(url: &DatabaseUrl) -> Result<PgConnection> {
    let mut pg = into_pg(establish(url)?, url)?;
    let pending = crate::migrations::pending_postgres(&mut pg)?;
    if !pending.is_empty() {
        return Err(Error::refused(
            Refusal::NotReady,
            format!(
                "{} does not hold this tool's schema ({} migration(s) not applied): run `migrate \
             setup` or `migrate copy` first; a report changes nothing, so it does not apply them",
                url.masked(),
                pending.len()
            ),
        ));
    }
    Ok(pg)
}

fn establish(url: &DatabaseUrl) -> Result<AnyConnection> {
    // Checked before connecting: opening a SQLite URL could create a file.
    if url.backend() != crate::Backend::Postgres {
        return Err(Error::invalid(
            "postgres",
            format!("{} is not a PostgreSQL URL", url.masked()),
        ));
    }
    url.establish()
}

fn into_pg(conn: AnyConnection, url: &DatabaseUrl) -> Result<PgConnection> {
    // No session settings: behind a transaction-mode pooler they would not
    // stick, and timestamps travel as binary TIMESTAMPTZ whatever the time zone.
    match conn {
        AnyConnection::Postgres(pg) => Ok(pg),
        AnyConnection::Sqlite(_) => Err(Error::invalid(
            "postgres",
            format!("{} is not a PostgreSQL URL", url.masked()),
        )),
    }
}

const STATE_COLUMNS: &str = "source, phase, step, started_at, copied_at, synced_at, mark_session_rowid, \
     mark_message_id, mark_draft_id, mark_change_seq, rollback_change_seq, switched_at, rolled_back_at, \
     verified_change_seq, verified_at, rollback_xid_horizon, rollback_verified_horizon";

pub(crate) fn load(pg: &mut PgConnection) -> Result<Option<State>> {
    Ok(diesel::sql_query(format!(
        "SELECT {STATE_COLUMNS} FROM interview_migration_state"
    ))
    .get_result(pg)
    .optional()?)
}

/// The state, row-locked for a pass of the way back (inside its REPEATABLE
/// READ transaction). Fails with a serialization failure when another pass
/// committed after this transaction's snapshot was taken: applying this older
/// snapshot's rows after that pass would put older values back into SQLite.
pub(crate) fn load_for_rollback_pass(pg: &mut PgConnection) -> Result<Option<State>> {
    Ok(diesel::sql_query(format!(
        "SELECT {STATE_COLUMNS} FROM interview_migration_state FOR UPDATE"
    ))
    .get_result(pg)
    .optional()?)
}

pub(crate) fn progress(pg: &mut PgConnection) -> Result<Vec<TableProgress>> {
    Ok(diesel::sql_query(
        "SELECT table_name, last_source_rowid, rows_total, rows_copied, rows_rejected, null_summaries, updated_at \
         FROM interview_migration_progress \
         ORDER BY array_position(ARRAY['sessions','messages','drafts'], table_name)",
    )
    .load(pg)?)
}

pub(crate) fn rejects(pg: &mut PgConnection) -> Result<Vec<Reject>> {
    #[derive(QueryableByName)]
    struct Row {
        #[diesel(sql_type = Text)]
        table_name: String,
        #[diesel(sql_type = Text)]
        source_id: String,
        #[diesel(sql_type = Text)]
        column_name: String,
        #[diesel(sql_type = Nullable<Text>)]
        value: Option<String>,
        #[diesel(sql_type = Text)]
        reason: String,
    }
    let rows: Vec<Row> = diesel::sql_query(
        "SELECT table_name, source_id, column_name, value, reason FROM interview_migration_rejects \
         ORDER BY array_position(ARRAY['sessions','messages','drafts'], table_name), \
         length(source_id), source_id",
    )
    .load(pg)?;
    Ok(rows
        .into_iter()
        .map(|r| Reject {
            table: r.table_name,
            id: r.source_id,
            column: r.column_name,
            value: r.value,
            reason: r.reason,
        })
        .collect())
}

/// Records the start of a fresh copy.
pub(crate) fn start(
    pg: &mut PgConnection,
    source: &str,
    marks: Marks,
    change_seq: i64,
    totals: [i64; 3],
) -> Result<()> {
    phase::reached(Step::CopyStart);
    diesel::sql_query(
        "INSERT INTO interview_migration_state (source, phase, started_at, mark_session_rowid, \
         mark_message_id, mark_draft_id, mark_change_seq) VALUES ($1, 'copying', now(), $2, $3, $4, $5)",
    )
    .bind::<Text, _>(source)
    .bind::<BigInt, _>(marks.session_rowid)
    .bind::<BigInt, _>(marks.message_id)
    .bind::<BigInt, _>(marks.draft_id)
    .bind::<BigInt, _>(change_seq)
    .execute(pg)?;
    for (t, total) in Table::ALL.iter().zip(totals) {
        diesel::sql_query(
            "INSERT INTO interview_migration_progress (table_name, rows_total) VALUES ($1, $2)",
        )
        .bind::<Text, _>(t.as_str())
        .bind::<BigInt, _>(total)
        .execute(pg)?;
    }
    Ok(())
}

/// Records one committed batch of `table` (call inside the batch's transaction).
pub(crate) fn record_batch(
    pg: &mut PgConnection,
    table: Table,
    last_rowid: Option<i64>,
    copied: i64,
    rejected: &[Reject],
    null_summaries: i64,
    found_by: &str,
) -> Result<()> {
    if found_by != "sync" {
        phase::reached(Step::CopyBatch);
    }
    for r in rejected {
        diesel::sql_query(
            "INSERT INTO interview_migration_rejects (table_name, source_id, column_name, value, reason, found_by) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (table_name, source_id) DO UPDATE \
             SET column_name = excluded.column_name, value = excluded.value, reason = excluded.reason, \
             found_by = excluded.found_by, recorded_at = now()",
        )
        .bind::<Text, _>(&r.table)
        .bind::<Text, _>(&r.id)
        .bind::<Text, _>(&r.column)
        .bind::<Nullable<Text>, _>(&r.value)
        .bind::<Text, _>(&r.reason)
        .bind::<Text, _>(found_by)
        .execute(pg)?;
    }
    diesel::sql_query(
        "UPDATE interview_migration_progress SET last_source_rowid = GREATEST(last_source_rowid, $2), \
         rows_copied = rows_copied + $3, rows_rejected = rows_rejected + $4, \
         null_summaries = null_summaries + $5, updated_at = now() WHERE table_name = $1",
    )
    .bind::<Text, _>(table.as_str())
    .bind::<Nullable<BigInt>, _>(last_rowid)
    .bind::<BigInt, _>(copied)
    .bind::<BigInt, _>(rejected.len() as i64)
    .bind::<BigInt, _>(null_summaries)
    .execute(pg)?;
    Ok(())
}

/// Marks the bulk copy finished.
pub(crate) fn finish_copy(pg: &mut PgConnection) -> Result<()> {
    phase::reached(Step::CopyFinish);
    Phase::Copying.record(pg, Phase::Copied)
}

/// Moves the change-log mark forward after a sync (inside the sync's transaction).
pub(crate) fn advance(pg: &mut PgConnection, change_seq: i64) -> Result<()> {
    phase::reached(Step::SyncPass);
    diesel::sql_query(
        "UPDATE interview_migration_state SET synced_at = now(), \
         mark_change_seq = GREATEST(mark_change_seq, $1)",
    )
    .bind::<BigInt, _>(change_seq)
    .execute(pg)?;
    Ok(())
}

/// Records that a full verify found both sides equal (rows named by later
/// entries aside): before the switch up to SQLite's log position `upto`,
/// after it up to PostgreSQL's transaction `horizon`. Each only in its phase.
pub(crate) fn mark_verified(
    pg: &mut PgConnection,
    upto: Option<i64>,
    horizon: Option<i64>,
) -> Result<()> {
    diesel::sql_query(
        "UPDATE interview_migration_state SET verified_at = now(), \
         verified_change_seq = CASE WHEN phase = 'copied' AND $1::bigint IS NOT NULL \
             THEN GREATEST(coalesce(verified_change_seq, 0), $1) ELSE verified_change_seq END, \
         rollback_verified_horizon = CASE WHEN phase = 'switched' AND $2::bigint IS NOT NULL \
             THEN GREATEST(coalesce(rollback_verified_horizon, 0), $2) ELSE rollback_verified_horizon END",
    )
    .bind::<Nullable<BigInt>, _>(upto)
    .bind::<Nullable<BigInt>, _>(horizon)
    .execute(pg)?;
    Ok(())
}

/// Moves the way back's horizon forward after a pass applied PostgreSQL's
/// log up to it (inside the pass's transaction); `change_seq` is the largest
/// sequence number read, kept for display.
pub(crate) fn advance_rollback(pg: &mut PgConnection, horizon: i64, change_seq: i64) -> Result<()> {
    phase::reached(Step::ReversePass);
    diesel::sql_query(
        "UPDATE interview_migration_state SET rollback_xid_horizon = GREATEST(rollback_xid_horizon, $1), \
         rollback_change_seq = GREATEST(rollback_change_seq, $2)",
    )
    .bind::<BigInt, _>(horizon)
    .bind::<BigInt, _>(change_seq)
    .execute(pg)?;
    Ok(())
}

/// Resets the way back's positions as PostgreSQL goes live (inside the
/// go-live transaction, beside the phase's move). Both sides are equal at this
/// point, so the way back starts at horizon 0 and counts every later entry as
/// unverified.
pub(crate) fn start_way_back(pg: &mut PgConnection, rollback_from: i64) -> Result<()> {
    diesel::sql_query(
        "UPDATE interview_migration_state SET rollback_change_seq = $1, rollback_xid_horizon = 0, \
         rollback_verified_horizon = 0",
    )
    .bind::<BigInt, _>(rollback_from)
    .execute(pg)?;
    Ok(())
}

/// Records a rejected row found by sync, or clears an earlier record of a row
/// that is valid now (`reject` None).
pub(crate) fn record_reject(
    pg: &mut PgConnection,
    table: Table,
    source_id: &str,
    reject: Option<&Reject>,
) -> Result<()> {
    match reject {
        Some(r) => record_batch(pg, table, None, 0, std::slice::from_ref(r), 0, "sync"),
        None => {
            diesel::sql_query(
                "DELETE FROM interview_migration_rejects WHERE table_name = $1 AND source_id = $2",
            )
            .bind::<Text, _>(table.as_str())
            .bind::<Text, _>(source_id)
            .execute(pg)?;
            Ok(())
        }
    }
}

/// Empties the data and bookkeeping tables (`--truncate`).
pub(crate) fn truncate(pg: &mut PgConnection) -> Result<()> {
    pg.batch_execute(
        "TRUNCATE drafts, messages, sessions, idempotency_keys, interview_migration_state, interview_migration_progress, \
         interview_migration_rejects RESTART IDENTITY",
    )?;
    Ok(())
}
