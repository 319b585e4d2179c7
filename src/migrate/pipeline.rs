//! The shared pipeline of copy, sync and verify: normalised rows in batches
//! read from a SQLite snapshot, loaded into PostgreSQL, and the reject file.

use std::io::Write as _;
use std::path::Path;

use diesel::connection::SimpleConnection;
use diesel::prelude::*;

use super::normalize::{self, Reject, SessionIndex};
use super::source::{RawDraft, RawMessage, RawSession, Source, Table};
use crate::error::{Error, Result};
use crate::schema::{drafts, messages, sessions};
use crate::store::drafts::DraftRow;
use crate::store::messages::MessageRow;
use crate::store::sessions::SessionRow;

/// Moves each id sequence past the largest id, so that the service's own
/// inserts never collide with copied rows.
pub(crate) fn bump_sequences(pg: &mut PgConnection) -> Result<()> {
    pg.batch_execute(
        "SELECT setval(pg_get_serial_sequence('messages', 'id'), GREATEST(COALESCE(max(id), 0) + 1, nextval(pg_get_serial_sequence('messages', 'id'))), false) FROM messages; \
         SELECT setval(pg_get_serial_sequence('drafts', 'id'), GREATEST(COALESCE(max(id), 0) + 1, nextval(pg_get_serial_sequence('drafts', 'id'))), false) FROM drafts",
    )?;
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
    pub table: Table,
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

/// Reads `(after, upto]` of `table` in batches of at most `size` rows (fewer
/// for long rows) and normalises each batch.
pub(crate) fn read_batches(
    src: &mut Source,
    table: Table,
    after: i64,
    upto: i64,
    size: i64,
    index: &SessionIndex,
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
        let batch = match table {
            Table::Sessions => {
                let raw: Vec<RawSession> = src.rows(table, after, upto, limit)?;
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
                    table,
                    last_rowid: last,
                    rows: Rows::Sessions(rows),
                    rejects,
                    null_summaries: nulls,
                }
            }
            Table::Messages => {
                let raw: Vec<RawMessage> = src.rows(table, after, upto, limit)?;
                bytes += raw.iter().map(RawMessage::bytes).sum::<usize>();
                let Some(last) = raw.last().map(|r| r.id) else {
                    return Ok(());
                };
                let (rows, rejects) = split(raw, |r| normalize::message(r, index));
                Batch {
                    table,
                    last_rowid: last,
                    rows: Rows::Messages(rows),
                    rejects,
                    null_summaries: 0,
                }
            }
            Table::Drafts => {
                let raw: Vec<RawDraft> = src.rows(table, after, upto, limit)?;
                bytes += raw.iter().map(RawDraft::bytes).sum::<usize>();
                let Some(last) = raw.last().map(|r| r.id) else {
                    return Ok(());
                };
                let (rows, rejects) = split(raw, |r| normalize::draft(r, index));
                Batch {
                    table,
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
        after = batch.last_rowid;
        each(batch)?;
    }
}

/// Loads one batch with `COPY … FROM STDIN (FORMAT binary)`.
pub(crate) fn copy_rows(pg: &mut PgConnection, rows: &Rows) -> Result<()> {
    match rows {
        Rows::Sessions(r) if !r.is_empty() => {
            diesel::copy_from(sessions::table)
                .from_insertable(r)
                .execute(pg)?;
        }
        Rows::Messages(r) if !r.is_empty() => {
            diesel::copy_from(messages::table)
                .from_insertable(r)
                .execute(pg)?;
        }
        Rows::Drafts(r) if !r.is_empty() => {
            diesel::copy_from(drafts::table)
                .from_insertable(r)
                .execute(pg)?;
        }
        _ => {}
    }
    Ok(())
}
