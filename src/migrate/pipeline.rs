//! The shared pipeline of copy, sync and verify: normalised rows in batches
//! read from a SQLite snapshot, loaded into PostgreSQL, and the reject file.

use std::io::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use diesel::pg::CopyFormat;
use diesel::prelude::*;

use super::normalize::{self, Reject, SessionIndex};
use super::source::{RawDraft, RawMessage, RawSession, Source, Table};
use crate::error::{Error, Result};
use crate::schema::{drafts, messages, sessions};
use crate::store::drafts::DraftRow;
use crate::store::messages::MessageRow;
use crate::store::sessions::SessionRow;
use crate::types::{DbTimestamp, DbUuid};

/// Moves each id sequence past the largest id, so that the service's own
/// inserts never collide with copied rows. Never moves a sequence back.
///
/// SQLite allows any `i64` id. Negative and zero ids need nothing (the
/// sequence starts at 1). A table holding `i64::MAX` (9223372036854775807)
/// leaves no id past it, and a sequence set there could never hand out
/// another: the service's next insert would fail. The sequence goes instead
/// just past the largest id whose successor is free, below the top one, so
/// new rows fill the gap below `i64::MAX` (SQLite itself picks unused rowids
/// once the largest is taken); a warning names the table.
pub(crate) fn bump_sequences(pg: &mut PgConnection) -> Result<()> {
    #[derive(QueryableByName)]
    struct Next {
        #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::BigInt>)]
        next: Option<i64>,
    }
    for table in ["messages", "drafts"] {
        let top: Option<i64> = match table {
            "messages" => messages::table
                .select(diesel::dsl::max(messages::id))
                .get_result(pg)?,
            _ => drafts::table
                .select(diesel::dsl::max(drafts::id))
                .get_result(pg)?,
        };
        let next = match top {
            None => continue,
            Some(top) if top < i64::MAX => top + 1,
            Some(_) => {
                // The rare case: one scan for the largest id with a free successor.
                let gap = diesel::sql_query(format!(
                    "SELECT max(id) + 1 AS next FROM {table} a WHERE id < 9223372036854775807                      AND NOT EXISTS (SELECT FROM {table} b WHERE b.id = a.id + 1)"
                ))
                .get_result::<Next>(pg)?
                .next
                .unwrap_or(1);
                log::warn!(
                    "{table} holds the id 9223372036854775807, the largest PostgreSQL can store:                      its id sequence cannot go past it, so new {table} get ids from {gap} on"
                );
                gap
            }
        };
        // setval with is_called false: the next nextval returns `next` itself.
        // The sequence's own position wins when it is ahead (sync runs again
        // after the service wrote on PostgreSQL); a sequence starts at 1.
        diesel::sql_query(format!(
            "SELECT setval(pg_get_serial_sequence('{table}', 'id'),              GREATEST($1, 1, (SELECT CASE WHEN is_called AND last_value < 9223372036854775807 THEN last_value + 1 ELSE last_value END                  FROM {table}_id_seq)), false)"
        ))
        .bind::<diesel::sql_types::BigInt, _>(next)
        .execute(pg)?;
    }
    Ok(())
}

/// Writes rejects as JSON lines `{"table","id","column","value","reason"}`,
/// replacing the file or appending to it.
pub(crate) fn write_rejects(path: &Path, rejects: &[Reject], append: bool) -> Result<()> {
    let io = |e: std::io::Error| Error::Io {
        path: path.display().to_string(),
        source: e,
    };
    let file = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .append(append)
        .truncate(!append)
        .open(path)
        .map_err(io)?;
    let mut out = std::io::BufWriter::new(file);
    for r in rejects {
        serde_json::to_writer(&mut out, r).map_err(|e| io(e.into()))?;
        out.write_all(b"\n").map_err(io)?;
    }
    out.flush().map_err(io)
}

/// Normalised rows of one batch.
pub(crate) enum Rows {
    Sessions(Vec<SessionRow>),
    Messages(Vec<MessageRow>),
    Drafts(Vec<DraftRow>),
}

/// One batch on its way from the SQLite reader to the PostgreSQL writer.
pub(crate) struct Batch {
    pub last_rowid: i64,
    pub rows: Rows,
    pub rejects: Vec<Reject>,
    pub null_summaries: i64,
}

impl Batch {
    pub(crate) fn len(&self) -> usize {
        match &self.rows {
            Rows::Sessions(r) => r.len(),
            Rows::Messages(r) => r.len(),
            Rows::Drafts(r) => r.len(),
        }
    }
}

/// About how many bytes of source text a batch holds.
const BATCH_BYTES: usize = 4 << 20;

/// Where a reader's time went, for the debug log.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct ReadTimes {
    /// Reading rows from SQLite.
    pub sqlite: Duration,
    /// Normalising them.
    pub normalise: Duration,
    /// In the caller's hands (e.g. waiting for the writer to take the batch).
    pub handed_on: Duration,
}

/// Reads `(after, upto]` of `table` in batches of at most `size` rows (fewer
/// for long rows), normalises each batch, and adds where the time went to
/// `times`; `after` None starts before the first row, whatever its rowid (see
/// `Source::rows`).
#[allow(clippy::too_many_arguments)]
pub(crate) fn read_batches_timed(
    src: &mut Source,
    table: Table,
    after: Option<i64>,
    upto: i64,
    size: i64,
    index: &SessionIndex,
    times: &mut ReadTimes,
    mut each: impl FnMut(Batch) -> Result<()>,
) -> Result<()> {
    fn split<R, T>(
        rows: Vec<R>,
        mut f: impl FnMut(R) -> std::result::Result<T, Reject>,
    ) -> (Vec<T>, Vec<Reject>) {
        let mut ok = Vec::with_capacity(rows.len());
        let mut bad = Vec::new();
        for r in rows {
            match f(r) {
                Ok(v) => ok.push(v),
                Err(e) => bad.push(e),
            }
        }
        (ok, bad)
    }
    let mut after = after;
    let mut limit = size;
    loop {
        let mut bytes = 0usize;
        let mut t = Instant::now();
        let batch = match table {
            Table::Sessions => {
                let raw: Vec<RawSession> = src.rows(table, after, upto, limit)?;
                t = times.lap(t, |t| &mut t.sqlite);
                bytes += raw.iter().map(RawSession::bytes).sum::<usize>();
                let Some(last) = raw.last().map(|r| r.rowid) else {
                    return Ok(());
                };
                let mut nulls = 0;
                let (rows, rejects) = split(raw, |r| {
                    normalize::session(&r, index).map(|s| {
                        nulls += i64::from(s.null_summary);
                        s.row
                    })
                });
                Batch {
                    last_rowid: last,
                    rows: Rows::Sessions(rows),
                    rejects,
                    null_summaries: nulls,
                }
            }
            Table::Messages => {
                let raw: Vec<RawMessage> = src.rows(table, after, upto, limit)?;
                t = times.lap(t, |t| &mut t.sqlite);
                bytes += raw.iter().map(RawMessage::bytes).sum::<usize>();
                let Some(last) = raw.last().map(|r| r.id) else {
                    return Ok(());
                };
                let (rows, rejects) = split(raw, |r| normalize::message(r, index));
                Batch {
                    last_rowid: last,
                    rows: Rows::Messages(rows),
                    rejects,
                    null_summaries: 0,
                }
            }
            Table::Drafts => {
                let raw: Vec<RawDraft> = src.rows(table, after, upto, limit)?;
                t = times.lap(t, |t| &mut t.sqlite);
                bytes += raw.iter().map(RawDraft::bytes).sum::<usize>();
                let Some(last) = raw.last().map(|r| r.id) else {
                    return Ok(());
                };
                let (rows, rejects) = split(raw, |r| normalize::draft(r, index));
                Batch {
                    last_rowid: last,
                    rows: Rows::Drafts(rows),
                    rejects,
                    null_summaries: 0,
                }
            }
        };
        // Size the next batch by bytes, not rows: a few batches in flight of
        // long drafts must fit the same memory as of short messages.
        let rows = (batch.len() + batch.rejects.len()).max(1);
        limit = (BATCH_BYTES * rows / bytes.max(1)).clamp(1, size as usize) as i64;
        after = Some(batch.last_rowid);
        let t = times.lap(t, |t| &mut t.normalise);
        each(batch)?;
        times.lap(t, |t| &mut t.handed_on);
    }
}

impl ReadTimes {
    /// Adds the time since `since` to one counter; returns now.
    fn lap(&mut self, since: Instant, counter: impl FnOnce(&mut Self) -> &mut Duration) -> Instant {
        let now = Instant::now();
        *counter(self) += now - since;
        now
    }
}

/// The signature, flags and header extension length of PostgreSQL's binary `COPY` format.
const COPY_HEADER: &[u8] = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0";

/// Microseconds from the Unix epoch to PostgreSQL's (2000-01-01 00:00:00 UTC).
const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;

/// One `COPY` payload in PostgreSQL's binary format, encoded on the reading thread so that
/// the writing thread, the copy's critical path, only ships bytes (one `CopyData` message per
/// batch instead of one per row).
pub(crate) struct Encoded {
    pub table: Table,
    pub data: Vec<u8>,
}

impl Encoded {
    /// Encodes the rows of a batch (columns in the order of [`copy_encoded`]).
    pub(crate) fn of(rows: &Rows) -> Result<Encoded> {
        let (table, body) = match rows {
            Rows::Sessions(r) => (
                Table::Sessions,
                r.iter().map(|s| 50 + s.summary.len()).sum::<usize>(),
            ),
            Rows::Messages(r) => (
                Table::Messages,
                r.iter().map(|m| 72 + m.text.len()).sum::<usize>(),
            ),
            Rows::Drafts(r) => (
                Table::Drafts,
                r.iter().map(|d| 60 + d.content.len()).sum::<usize>(),
            ),
        };
        let mut out = Encoder(Vec::with_capacity(COPY_HEADER.len() + body + 2));
        out.0.extend_from_slice(COPY_HEADER);
        match rows {
            Rows::Sessions(r) => {
                for s in r {
                    out.row(4);
                    out.uuid(&s.id);
                    out.time(&s.created_at)?;
                    out.time(&s.updated_at)?;
                    out.text(&s.summary)?;
                }
            }
            Rows::Messages(r) => {
                for m in r {
                    out.row(5);
                    out.bigint(m.id);
                    out.uuid(&m.session_id);
                    out.text(&m.role)?;
                    out.text(&m.text)?;
                    out.time(&m.created_at)?;
                }
            }
            Rows::Drafts(r) => {
                for d in r {
                    out.row(4);
                    out.bigint(d.id);
                    out.uuid(&d.session_id);
                    out.text(&d.content)?;
                    out.time(&d.created_at)?;
                }
            }
        }
        out.0.extend_from_slice(&(-1i16).to_be_bytes());
        Ok(Encoded { table, data: out.0 })
    }
}

/// Appends binary `COPY` fields: a 4-byte length, then the value in network byte order.
struct Encoder(Vec<u8>);

impl Encoder {
    fn row(&mut self, fields: i16) {
        self.0.extend_from_slice(&fields.to_be_bytes());
    }

    fn field(&mut self, bytes: &[u8]) -> Result<()> {
        let len = i32::try_from(bytes.len())
            .map_err(|_| Error::invalid("value", "longer than PostgreSQL can hold"))?;
        self.0.extend_from_slice(&len.to_be_bytes());
        self.0.extend_from_slice(bytes);
        Ok(())
    }

    fn bigint(&mut self, v: i64) {
        self.0.extend_from_slice(&8i32.to_be_bytes());
        self.0.extend_from_slice(&v.to_be_bytes());
    }

    fn uuid(&mut self, v: &DbUuid) {
        self.0.extend_from_slice(&16i32.to_be_bytes());
        self.0.extend_from_slice(v.0.as_bytes());
    }

    fn text(&mut self, v: &str) -> Result<()> {
        self.field(v.as_bytes())
    }

    fn time(&mut self, v: &DbTimestamp) -> Result<()> {
        let micros =
            v.0.timestamp_micros()
                .checked_sub(PG_EPOCH_MICROS)
                .ok_or_else(|| Error::invalid("timestamp", format!("{:?} is out of range", v.0)))?;
        self.bigint(micros);
        Ok(())
    }
}

/// Bytes per `CopyData` message.
const COPY_MESSAGE: usize = 64 << 10;

/// Loads one encoded batch with `COPY … FROM STDIN (FORMAT binary)`.
pub(crate) fn copy_encoded(pg: &mut PgConnection, batch: &Encoded) -> Result<()> {
    // In 64 KiB messages: libpq copies each into its output buffer, which
    // would otherwise grow to the whole batch and stay that large.
    let write = |w: &mut dyn std::io::Write| {
        batch
            .data
            .chunks(COPY_MESSAGE)
            .try_for_each(|c| w.write_all(c))
            .map_err(|e| diesel::result::Error::SerializationError(Box::new(e)))
    };
    match batch.table {
        Table::Sessions => {
            diesel::copy_from(sessions::table)
                .from_raw_data(
                    (
                        sessions::id,
                        sessions::created_at,
                        sessions::updated_at,
                        sessions::summary,
                    ),
                    write,
                )
                .with_format(CopyFormat::Binary)
                .execute(pg)?;
        }
        Table::Messages => {
            diesel::copy_from(messages::table)
                .from_raw_data(
                    (
                        messages::id,
                        messages::session_id,
                        messages::role,
                        messages::text,
                        messages::created_at,
                    ),
                    write,
                )
                .with_format(CopyFormat::Binary)
                .execute(pg)?;
        }
        Table::Drafts => {
            diesel::copy_from(drafts::table)
                .from_raw_data(
                    (
                        drafts::id,
                        drafts::session_id,
                        drafts::content,
                        drafts::created_at,
                    ),
                    write,
                )
                .with_format(CopyFormat::Binary)
                .execute(pg)?;
        }
    }
    Ok(())
}
