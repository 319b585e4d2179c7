//! The bulk copy: one SQLite snapshot into PostgreSQL with `COPY`, resumable, strict by default.

mod load;
mod options;

use std::path::Path;
use std::time::{Duration, Instant};

use diesel::connection::SimpleConnection;
use diesel::prelude::*;

use super::changelog;
use super::check::{self, CheckReport};
use super::keys;
use super::lock::MigrationLock;
use super::phase::Phase;
use super::pipeline::{bump_sequences, write_rejects};
use super::rebuild::{self, RebuildOptions};
use super::source::{Marks, Source, Table};
use super::state;
use crate::connection::DatabaseUrl;
use crate::error::{Error, Refusal, Result};
use crate::schema::{drafts, messages, sessions};
use load::load;

pub use options::{CopyOptions, Progress, ProgressFn};

/// One table's result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct TableCopy {
    /// Rows loaded into PostgreSQL (all runs).
    pub copied: u64,
    /// Rows rejected (all runs).
    pub rejected: u64,
}

/// What a copy did.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct CopyReport {
    /// Sessions, messages, drafts.
    pub tables: [TableCopy; 3],
    /// Sessions whose NULL summary loaded as `''`.
    pub null_summaries: u64,
    /// Finished idempotency keys copied (PostgreSQL's count when already copied).
    pub idempotency_keys: u64,
    /// The snapshot's marks (of the first run, when resumed).
    pub marks: Marks,
    /// This run finished a copy an earlier run started.
    pub resumed: bool,
    /// The copy had already finished; nothing was done.
    pub already_copied: bool,
    /// Time this run took.
    pub elapsed: Duration,
}

/// Copies every row of a SQLite source into PostgreSQL.
///
/// Reads one snapshot of the source (the service may keep writing; what it
/// writes later is the sync's job), normalises each row, and loads the valid
/// ones with `COPY` in batches, each committed with its progress record. Run
/// it again after a crash and it goes on where the last batch committed.
///
/// ```no_run
/// use interview_store::connection::DatabaseUrl;
/// use interview_store::migrate::{copy, CopyOptions};
/// let pg: DatabaseUrl = "postgres://app@db/interview".parse()?;
/// let report = copy("interview.db".as_ref(), &pg, &CopyOptions::default())?;
/// println!("{} messages copied", report.tables[1].copied);
/// # Ok::<(), interview_store::Error>(())
/// ```
pub fn copy(sqlite: &Path, postgres: &DatabaseUrl, opts: &CopyOptions) -> Result<CopyReport> {
    // The source first: a missing file must not leave PostgreSQL set up for nothing.
    crate::connection::require_sqlite_file(sqlite)?;
    let started = Instant::now();
    if opts.batch_size < 1 {
        return Err(Error::invalid("batch size", "must be at least 1"));
    }
    // Every check comes before the first write: source readable, target
    // reachable, no other migration command, the phase allows a copy.
    let mut src = Source::open(sqlite)?;
    let _lock = MigrationLock::acquire(postgres)?;
    let mut pg = state::connect(postgres)?;
    let source_name = super::source::source_name(sqlite);
    let mut existing = state::load(&mut pg)?;
    copy_allowed(existing.as_ref(), opts.truncate, postgres)?;
    if opts.truncate {
        let counts = row_counts(&mut pg)?;
        if !opts.confirmed {
            return Err(Error::refused(
                Refusal::Unconfirmed,
                format!(
                "--truncate would delete from {}: {}, and the migration bookkeeping; nothing was \
                 deleted. Check the URL, then run the same command with --yes",
                postgres.masked(),
                Table::ALL
                    .iter()
                    .zip(counts)
                    .map(|(t, n)| format!("{t} {n} rows"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            ));
        }
        log::info!("emptying the PostgreSQL tables (--truncate --yes)");
        if existing
            .as_ref()
            .is_some_and(|s| matches!(s.phase(), Ok(Phase::RolledBack)))
        {
            // Retired by the switch back: a new cutover starts from a writable,
            // empty target, as before the first copy. The service is on SQLite.
            super::pause::make_live(&mut super::pause::open_pg(postgres)?)?;
        }
        pg.transaction(|pg| {
            changelog::uninstall_pg(pg)?;
            state::truncate(pg)
        })?;
        existing = None;
    }
    if let Some(s) = &existing {
        if s.source != source_name {
            return Err(Error::refused(
                Refusal::Foreign,
                format!(
                    "{} holds a copy of {}, not of {source_name}; pass --truncate to replace it",
                    postgres.masked(),
                    s.source
                ),
            ));
        }
        if s.phase()? == Phase::Copied {
            log::info!(
                "the copy of {source_name} already finished; run sync to bring it up to date"
            );
            return Ok(CopyReport {
                tables: tallies(&mut pg)?.0,
                null_summaries: tallies(&mut pg)?.1,
                idempotency_keys: keys::pg_count(&mut pg)? as u64,
                marks: s.marks(),
                resumed: false,
                already_copied: true,
                elapsed: started.elapsed(),
            });
        }
    } else {
        refuse_foreign_rows(&mut pg, postgres)?;
    }

    // The change log goes in before the snapshot, so that every write after
    // the snapshot has an entry past the position recorded with it.
    changelog::install_sqlite(src.conn())?;
    let resumed = existing.is_some();
    let (marks, idempotency_keys) = src.snapshot(|src| {
        let marks = match &existing {
            Some(s) => s.marks(),
            None => src.marks()?,
        };
        let t = Instant::now();
        let (index, _) = check::index_sessions(src, marks.session_rowid)?;
        log::info!("copy: session index in {:.1?}", t.elapsed());
        // A fresh strict copy validates while it loads and empties the tables
        // again if anything was invalid; a resumed one cannot undo the earlier
        // runs, so it checks first.
        if opts.reject_file.is_none() && existing.is_some() {
            let mut report = CheckReport::default();
            check::scan(src, &index, marks, &mut report)?;
            if !report.is_clean() {
                return Err(Error::InvalidSource {
                    count: report.rejects.len(),
                    rejects: report.rejects,
                });
            }
        }
        if existing.is_none() {
            let totals = [
                src.count(Table::Sessions, None, marks.session_rowid)?,
                src.count(Table::Messages, None, marks.message_id)?,
                src.count(Table::Drafts, None, marks.draft_id)?,
            ];
            // Read in the same snapshot as the rows: sync starts exactly here.
            let change_seq = changelog::sqlite_position(src.conn())?;
            pg.transaction(|pg| {
                prepare_tables(pg)?;
                state::start(pg, &source_name, marks, change_seq, totals)
            })?;
        } else {
            log::info!("resuming the copy of {source_name}");
        }
        let t = Instant::now();
        let loaded = load(src, &mut pg, &index, marks, opts);
        log::info!("copy: load in {:.1?}", t.elapsed());
        if existing.is_none() && matches!(loaded, Err(Error::InvalidSource { .. })) {
            undo(&mut pg)?;
        }
        loaded?;
        // The finished keys of the same snapshot, in one transaction: a rerun replaces them.
        let t = Instant::now();
        let keys = pg.transaction(|pg| keys::copy_into_pg(src.conn(), pg))?;
        log::info!("copy: {keys} idempotency keys in {:.1?}", t.elapsed());
        Ok((marks, keys))
    })?;

    finish(&mut pg, postgres, opts)?;
    trim_before_snapshot(&mut src, &mut pg);
    let (tables, null_summaries) = tallies(&mut pg)?;
    if let Some(path) = &opts.reject_file {
        write_rejects(path, &state::rejects(&mut pg)?, false)?;
    }
    let report = CopyReport {
        tables,
        null_summaries,
        idempotency_keys,
        marks,
        resumed,
        already_copied: false,
        elapsed: started.elapsed(),
    };
    log::info!("copy finished: {report:?}");
    Ok(report)
}

/// Deletes the SQLite log entries the snapshot already holds (written
/// between `setup` and the copy, or the keys' "every key" entry): the log
/// then holds only what sync has still to apply. Best effort, as sync's trim.
fn trim_before_snapshot(src: &mut Source, pg: &mut PgConnection) {
    let trimmed = state::load(pg)
        .map(|s| s.and_then(|s| s.mark_change_seq))
        .and_then(|seq| match seq {
            Some(seq) => changelog::trim_sqlite(src.conn(), seq),
            None => Ok(0),
        });
    if let Err(e) = trimmed {
        log::warn!(
            "could not trim the change log entries the copy holds (the first sync will): {e}"
        );
    }
}

/// The phase check of a copy: never over a live PostgreSQL; over a retired
/// one only with `--truncate`.
fn copy_allowed(st: Option<&state::State>, truncate: bool, postgres: &DatabaseUrl) -> Result<()> {
    match st.map(|s| s.phase()).transpose()? {
        Some(Phase::Switched) => Err(Error::refused(Refusal::OutOfOrder, format!(
            "refusing to copy{}: the service moved to {} ({}), which now holds writes SQLite does \
             not have; nothing was changed. To go back to SQLite: `migrate pause --postgres …`, \
             `migrate rollback-sync`, `migrate switch --to sqlite`",
            if truncate { " --truncate" } else { "" },
            postgres.masked(),
            st.and_then(|s| s.switched_at)
                .map_or("-".into(), |t| t.to_string())
        ))),
        Some(phase @ (Phase::SwitchingToPostgres(_) | Phase::SwitchingToSqlite(_))) => {
            Err(Error::refused(Refusal::OutOfOrder, format!(
                "refusing to copy: {phase}, and a copy now would lose track of it; finish or undo the switch first (`migrate status` says how); nothing was changed"
            )))
        }
        Some(Phase::RolledBack) if !truncate => Err(Error::refused(Refusal::OutOfOrder, format!(
            "{} is retired since the rollback to SQLite; to start a new cutover run \
             `migrate copy --truncate --yes`",
            postgres.masked()
        ))),
        _ => Ok(()),
    }
}

/// Rows per data table, in load order.
fn row_counts(pg: &mut PgConnection) -> Result<[i64; 3]> {
    Ok([
        sessions::table.count().get_result(pg)?,
        messages::table.count().get_result(pg)?,
        drafts::table.count().get_result(pg)?,
    ])
}

fn refuse_foreign_rows(pg: &mut PgConnection, url: &DatabaseUrl) -> Result<()> {
    for t in Table::ALL {
        let n: i64 = match t {
            Table::Sessions => sessions::table.count().get_result(pg)?,
            Table::Messages => messages::table.count().get_result(pg)?,
            Table::Drafts => drafts::table.count().get_result(pg)?,
        };
        if n > 0 {
            return Err(Error::refused(Refusal::Foreign, format!(
                "{}: table {t} already holds {n} rows that no copy wrote; pass --truncate to replace them",
                url.masked()
            )));
        }
    }
    let n = keys::pg_count(pg)?;
    if n > 0 {
        return Err(Error::refused(Refusal::Foreign, format!(
            "{}: table {} already holds {n} finished keys that no copy wrote; pass --truncate to replace them",
            url.masked(),
            keys::TABLE
        )));
    }
    Ok(())
}

/// Tunes the empty tables for a bulk load.
fn prepare_tables(pg: &mut PgConnection) -> Result<()> {
    rebuild::drop_all(pg)?;
    // lz4 compresses long text about as well as pglz at a fraction of the CPU;
    // servers built without it keep their default.
    for (table, column) in [
        ("messages", "text"),
        ("drafts", "content"),
        ("sessions", "summary"),
    ] {
        let sql = format!("ALTER TABLE {table} ALTER COLUMN {column} SET COMPRESSION lz4");
        if let Err(e) = pg.transaction(|pg| pg.batch_execute(&sql)) {
            log::info!("keeping the default compression of {table}.{column}: {e}");
        }
    }
    Ok(())
}

/// Back to the empty, migrated schema after a strict copy met an invalid row.
fn undo(pg: &mut PgConnection) -> Result<()> {
    state::truncate(pg)?;
    rebuild::restore_serially(pg)
}

/// Rebuilds what [`prepare_tables`] dropped (in parallel, see [`rebuild`]), moves each
/// sequence past the largest copied id and marks the copy finished.
fn finish(pg: &mut PgConnection, postgres: &DatabaseUrl, opts: &CopyOptions) -> Result<()> {
    rebuild::rebuild(
        pg,
        postgres,
        &RebuildOptions {
            connections: opts.rebuild_connections,
            memory_mb: opts.rebuild_memory_mb,
            fail_at: opts.fail_at_rebuild_step.clone(),
        },
    )?;
    bump_sequences(pg)?;
    state::finish_copy(pg)?;
    Ok(())
}

fn tallies(pg: &mut PgConnection) -> Result<([TableCopy; 3], u64)> {
    let mut out = [TableCopy::default(); 3];
    let mut nulls = 0;
    for p in state::progress(pg)? {
        let Some(t) = Table::ALL.iter().position(|t| t.as_str() == p.table_name) else {
            continue;
        };
        out[t] = TableCopy {
            copied: p.rows_copied as u64,
            rejected: p.rows_rejected as u64,
        };
        nulls += p.null_summaries as u64;
    }
    Ok((out, nulls))
}
