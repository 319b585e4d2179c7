//! The secondary indexes and foreign keys: dropped for the bulk load, rebuilt after it on
//! parallel connections.
//!
//! Bulk-building an index beats maintaining it row by row, and a foreign key validated once
//! beats a trigger per row. After the load, the work is one chain per table, each on a
//! connection of its own: its index, then its foreign key's `VALIDATE`, then `ANALYZE`. The
//! steps of one table stay in one chain because they conflict: `CREATE INDEX` takes a `SHARE`
//! lock, `VALIDATE` and `ANALYZE` a `SHARE UPDATE EXCLUSIVE` one, so two connections working on
//! one table would only wait for each other. Different tables never conflict (`VALIDATE` takes
//! only `ROW SHARE` on `sessions`), so the chains run side by side.
//!
//! Every step is idempotent and commits on its own: a copy stopped in the middle of the
//! rebuild finds the finished steps done on its next run and redoes the others.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::sql_types::BigInt;

use super::state;
use crate::connection::DatabaseUrl;
use crate::error::{Error, Result};

/// How the rebuild after the load runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RebuildOptions {
    /// Connections working at once (at most one per table).
    pub connections: usize,
    /// `maintenance_work_mem` and `work_mem` of each connection, in MiB, when the server's
    /// own setting is lower (set per transaction, so a pooler does not carry it over).
    pub memory_mb: u64,
    /// Test hook: fail instead of running the step of this name, as a crash there would.
    pub fail_at: Option<String>,
}

/// A secondary index: its name, its table, its definition (as in `migrations_postgres`).
const INDEXES: [(&str, &str, &str); 3] = [
    (
        "messages_session_id_id_idx",
        "messages",
        "CREATE INDEX IF NOT EXISTS messages_session_id_id_idx ON messages (session_id, id)",
    ),
    (
        "drafts_session_id_id_idx",
        "drafts",
        "CREATE INDEX IF NOT EXISTS drafts_session_id_id_idx ON drafts (session_id, id)",
    ),
    (
        "sessions_updated_at_id_idx",
        "sessions",
        "CREATE INDEX IF NOT EXISTS sessions_updated_at_id_idx ON sessions (updated_at, id)",
    ),
];

/// A foreign key: its name and its table (all reference `sessions (id)` by `session_id`).
const FOREIGN_KEYS: [(&str, &str); 2] = [
    ("messages_session_id_fkey", "messages"),
    ("drafts_session_id_fkey", "drafts"),
];

/// The tables in the order their chains start: the longest first.
const TABLES: [&str; 3] = ["messages", "drafts", "sessions"];

/// One step of a table's chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Step {
    /// The index or constraint built, or `analyze <table>`.
    pub name: String,
    /// The statement.
    pub sql: String,
}

/// Drops the secondary indexes and foreign keys before a load into empty tables.
pub(crate) fn drop_all(pg: &mut PgConnection) -> Result<()> {
    for (name, _, _) in INDEXES {
        pg.batch_execute(&format!("DROP INDEX IF EXISTS {name}"))?;
    }
    for (name, table) in FOREIGN_KEYS {
        pg.batch_execute(&format!(
            "ALTER TABLE {table} DROP CONSTRAINT IF EXISTS {name}"
        ))?;
    }
    Ok(())
}

/// Adds the foreign keys `NOT VALID` (a catalog change: enforced for new rows, the existing
/// ones still to validate), replacing any left by an earlier run.
fn add_foreign_keys(pg: &mut PgConnection) -> Result<()> {
    pg.transaction(|pg| {
        for (name, table) in FOREIGN_KEYS {
            pg.batch_execute(&format!(
                "ALTER TABLE {table} DROP CONSTRAINT IF EXISTS {name}; \
                 ALTER TABLE {table} ADD CONSTRAINT {name} FOREIGN KEY (session_id) \
                 REFERENCES sessions (id) NOT VALID"
            ))?;
        }
        Ok(())
    })
}

/// Each table's chain of steps, longest chain first.
pub(crate) fn chains() -> Vec<Vec<Step>> {
    TABLES
        .iter()
        .map(|&table| {
            let mut steps: Vec<Step> = INDEXES
                .iter()
                .filter(|(_, t, _)| *t == table)
                .map(|(name, _, sql)| Step {
                    name: name.to_string(),
                    sql: sql.to_string(),
                })
                .collect();
            steps.extend(
                FOREIGN_KEYS
                    .iter()
                    .filter(|(_, t)| *t == table)
                    .map(|(name, _)| Step {
                        name: name.to_string(),
                        sql: format!("ALTER TABLE {table} VALIDATE CONSTRAINT {name}"),
                    }),
            );
            steps.push(Step {
                name: format!("analyze {table}"),
                sql: format!("ANALYZE {table}"),
            });
            steps
        })
        .collect()
}

/// Restores every index and foreign key on one connection (on emptied tables: nothing to build).
pub(crate) fn restore_serially(pg: &mut PgConnection) -> Result<()> {
    add_foreign_keys(pg)?;
    for step in chains().into_iter().flatten() {
        pg.batch_execute(&step.sql)?;
    }
    Ok(())
}

/// Builds the indexes and validates the foreign keys after the load, one table per
/// connection, up to `opts.connections` at once.
pub(crate) fn rebuild(
    pg: &mut PgConnection,
    url: &DatabaseUrl,
    opts: &RebuildOptions,
) -> Result<()> {
    let started = Instant::now();
    add_foreign_keys(pg)?;
    let queue = Mutex::new(chains().into_iter().collect::<VecDeque<_>>());
    let failed = AtomicBool::new(false);
    let workers = opts.connections.clamp(1, TABLES.len());
    let results: Vec<Result<()>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..workers)
            .map(|worker| {
                let (queue, failed) = (&queue, &failed);
                scope.spawn(move || {
                    let out = work(worker, url, queue, failed, opts);
                    if out.is_err() {
                        failed.store(true, Ordering::Relaxed);
                    }
                    out
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    });
    results.into_iter().collect::<Result<Vec<()>>>()?;
    log::info!(
        "rebuild: indexes built, foreign keys validated, tables analyzed in {:.1?} on {workers} connection(s)",
        started.elapsed()
    );
    Ok(())
}

/// One connection's share: whole chains from the queue until it is empty or another failed.
fn work(
    worker: usize,
    url: &DatabaseUrl,
    queue: &Mutex<VecDeque<Vec<Step>>>,
    failed: &AtomicBool,
    opts: &RebuildOptions,
) -> Result<()> {
    let mut pg = state::connect(url)?;
    loop {
        if failed.load(Ordering::Relaxed) {
            return Ok(());
        }
        let Some(chain) = queue.lock().unwrap_or_else(|p| p.into_inner()).pop_front() else {
            return Ok(());
        };
        for step in chain {
            if opts.fail_at.as_deref() == Some(step.name.as_str()) {
                return Err(Error::Refused(format!(
                    "stopped before {} (fault injected)",
                    step.name
                )));
            }
            let t = Instant::now();
            run_step(&mut pg, &step, opts.memory_mb)?;
            log::debug!(
                "rebuild: {} in {:.1?} (connection {worker})",
                step.name,
                t.elapsed()
            );
        }
    }
}

/// One step in a transaction of its own, with the memory its sort or hash may use.
fn run_step(pg: &mut PgConnection, step: &Step, memory_mb: u64) -> Result<()> {
    pg.transaction(|pg| {
        // set_config(…, true) is SET LOCAL: it ends with the transaction, so a
        // transaction pooler hands the server connection on unchanged.
        diesel::sql_query(
            "SELECT set_config(name, greatest(setting::bigint, $1)::text || 'kB', true) \
             FROM pg_settings WHERE name IN ('maintenance_work_mem', 'work_mem')",
        )
        .bind::<BigInt, _>(i64::try_from(memory_mb.saturating_mul(1024)).unwrap_or(i64::MAX))
        .execute(pg)?;
        pg.batch_execute(&step.sql)?;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_table_is_one_chain_and_no_two_chains_touch_one_table() {
        let chains = chains();
        assert_eq!(chains.len(), 3);
        for (chain, table) in chains.iter().zip(TABLES) {
            for step in chain {
                for other in TABLES.iter().filter(|t| **t != table) {
                    assert!(
                        !step.sql.contains(&format!(" {other} ")) && !step.sql.ends_with(other),
                        "{step:?} of {table} touches {other}"
                    );
                }
            }
        }
        let names: Vec<Vec<&str>> = chains
            .iter()
            .map(|c| c.iter().map(|s| s.name.as_str()).collect())
            .collect();
        assert_eq!(
            names,
            [
                vec![
                    "messages_session_id_id_idx",
                    "messages_session_id_fkey",
                    "analyze messages"
                ],
                vec![
                    "drafts_session_id_id_idx",
                    "drafts_session_id_fkey",
                    "analyze drafts"
                ],
                vec!["sessions_updated_at_id_idx", "analyze sessions"],
            ]
        );
    }
}
