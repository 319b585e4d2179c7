//! The load of a copy: a reader that normalises and encodes SQLite batches,
//! and a writer thread that commits them to PostgreSQL with `COPY`, each with
//! its progress record.
//!
//! Apart from the copy itself ([`super`]) because it is the copy's one
//! concurrent part, a pipeline of two threads and a channel; the copy around
//! it does the checks, the snapshot and the bookkeeping before and after.

use std::sync::mpsc;
use std::time::{Duration, Instant};

use diesel::connection::SimpleConnection;
use diesel::prelude::*;

use super::options::{CopyOptions, Progress};
use crate::error::{Error, Refusal, Result};
use crate::migrate::normalize::{Reject, SessionIndex};
use crate::migrate::pipeline::{copy_encoded, read_batches_timed, Batch, Encoded, ReadTimes};
use crate::migrate::source::{Marks, Source, Table};
use crate::migrate::state;

/// One batch ready for the writer: encoded for `COPY`, with its bookkeeping.
struct Ready {
    last_rowid: i64,
    rows: usize,
    rejects: Vec<Reject>,
    null_summaries: i64,
    encoded: Encoded,
}

impl Ready {
    fn of(batch: Batch) -> Result<Ready> {
        Ok(Ready {
            last_rowid: batch.last_rowid,
            rows: batch.len(),
            encoded: Encoded::of(&batch.rows)?,
            rejects: batch.rejects,
            null_summaries: batch.null_summaries,
        })
    }

    fn table(&self) -> Table {
        self.encoded.table
    }
}

/// The writer's time per table, for the debug log.
#[derive(Default)]
struct WriteTimes {
    /// In `COPY` transactions.
    busy: Duration,
    /// Waiting for the reader's next batch.
    idle: Duration,
    batches: u64,
    bytes: u64,
}

/// The load: this thread reads, normalises and encodes SQLite batches while a
/// second thread writes the previous ones to PostgreSQL, so both databases stay busy.
pub(super) fn load(
    src: &mut Source,
    pg: &mut PgConnection,
    index: &SessionIndex,
    marks: Marks,
    opts: &CopyOptions,
) -> Result<()> {
    let progress = state::progress(pg)?;
    let strict = opts.reject_file.is_none();
    let progress = &progress;
    let (tx, rx) = mpsc::sync_channel::<Ready>(1);
    std::thread::scope(|scope| {
        let writer = scope.spawn(move || write(pg, rx, progress, strict, opts));
        let read = (|| {
            for table in Table::ALL {
                // None until a batch of the table committed: the first
                // batch starts before the first row, whatever its rowid.
                let after = progress
                    .iter()
                    .find(|p| p.table_name == table.as_str())
                    .and_then(|p| p.last_source_rowid);
                let mut times = ReadTimes::default();
                let mut encoding = Duration::ZERO;
                read_batches_timed(
                    src,
                    table,
                    after,
                    marks.of(table),
                    opts.batch_size,
                    index,
                    &mut times,
                    |b| {
                        let t = Instant::now();
                        let ready = Ready::of(b)?;
                        encoding += t.elapsed();
                        // A closed channel means the writer failed; its error is the one to report.
                        tx.send(ready)
                            .map_err(|_| Error::refused(Refusal::Moved, "writer stopped"))
                    },
                )?;
                log::info!(
                    "copy: {table} read: sqlite {:.1?}, normalising {:.1?}, encoding {:.1?}, \
                     waiting for the writer {:.1?}",
                    times.sqlite,
                    times.normalise,
                    encoding,
                    times.handed_on.saturating_sub(encoding)
                );
            }
            Ok(())
        })();
        drop(tx);
        let wrote = writer
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p));
        wrote.and(read)
    })
}

/// The writing thread: each batch in a transaction with its progress record.
fn write(
    pg: &mut PgConnection,
    rx: mpsc::Receiver<Ready>,
    progress: &[state::TableProgress],
    strict: bool,
    opts: &CopyOptions,
) -> Result<()> {
    let of = |t: Table, f: fn(&state::TableProgress) -> i64| {
        progress
            .iter()
            .find(|p| p.table_name == t.as_str())
            .map_or(0, |p| f(p) as u64)
    };
    let mut done = Table::ALL.map(|t| of(t, |p| p.rows_copied + p.rows_rejected));
    let totals = Table::ALL.map(|t| of(t, |p| p.rows_total));
    let mut times: [WriteTimes; 3] = Default::default();
    let mut committed = 0u64;
    // Strict: after the first invalid row, write nothing more but keep
    // reading, so that the error lists every invalid row.
    let mut invalid: Vec<Reject> = Vec::new();
    let mut waited = Instant::now();
    for batch in rx {
        let i = batch.table() as usize;
        times[i].idle += waited.elapsed();
        if strict && (!batch.rejects.is_empty() || !invalid.is_empty()) {
            invalid.extend(batch.rejects);
            waited = Instant::now();
            continue;
        }
        let t = Instant::now();
        pg.transaction(|pg| {
            // The copy's own commits need not wait for the disk flush: a
            // lost tail after a server crash loses batch and progress
            // together, and the next run redoes both. LOCAL: a session
            // setting would not stick behind a transaction-mode pooler.
            pg.batch_execute("SET LOCAL synchronous_commit = off")?;
            copy_encoded(pg, &batch.encoded)?;
            state::record_batch(
                pg,
                batch.table(),
                Some(batch.last_rowid),
                batch.rows as i64,
                &batch.rejects,
                batch.null_summaries,
                "copy",
            )
        })?;
        let took = t.elapsed();
        times[i].busy += took;
        times[i].batches += 1;
        times[i].bytes += batch.encoded.data.len() as u64;
        done[i] += (batch.rows + batch.rejects.len()) as u64;
        committed += 1;
        log::debug!(
            "{}: {} rows up to rowid {} in {took:.1?} ({}/{})",
            batch.table(),
            batch.rows,
            batch.last_rowid,
            done[i],
            totals[i]
        );
        if let Some(f) = &opts.progress {
            f(&Progress {
                table: batch.table(),
                done: done[i],
                total: totals[i],
            });
        }
        if opts.fail_after_batches == Some(committed) {
            return Err(Error::refused(
                Refusal::Injected,
                format!("stopped after {committed} batches (fault injected)"),
            ));
        }
        waited = Instant::now();
    }
    for (t, w) in Table::ALL.iter().zip(&times) {
        log::info!(
            "copy: {t} written: {} batches, {:.0} MB, in COPY {:.1?}, waiting for the reader {:.1?}",
            w.batches,
            w.bytes as f64 / 1e6,
            w.busy,
            w.idle
        );
    }
    if invalid.is_empty() {
        Ok(())
    } else {
        Err(Error::InvalidSource {
            count: invalid.len(),
            rejects: invalid,
        })
    }
}
