//! The secondary indexes, the children's primary keys and the foreign keys: dropped for the
//! bulk load, rebuilt after it on parallel connections.
//!
//! Bulk-building an index beats maintaining it row by row, and a foreign key validated once
//! beats a trigger per row. After the load every index build, `VALIDATE` and `ANALYZE` is a
//! step of its own, and up to `connections` steps run at once, each on its own connection.
//! Steps of one table are ordered by the lock they take: the builds (`SHARE`, which do not
//! conflict with each other, so two indexes of one table are built side by side), then the
//! foreign key's `VALIDATE`, then `ANALYZE` (both `SHARE UPDATE EXCLUSIVE`, which conflicts with
//! `SHARE` and with itself). A step starts only when the earlier kinds of its table are done,
//! so no connection ever waits for another's lock. Different tables never conflict
//! (`VALIDATE` takes only `ROW SHARE` on `sessions`).
//!
//! Every step is idempotent and commits on its own: a copy stopped in the middle of the
//! rebuild finds the finished steps done on its next run and redoes the others.

use std::sync::{Condvar, Mutex};
use std::time::Instant;

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::sql_types::BigInt;

use super::state;
use crate::connection::DatabaseUrl;
use crate::error::{Error, Refusal, Result};

/// How the rebuild after the load runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RebuildOptions {
    /// Connections working at once.
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

/// The primary keys dropped for the load, with their tables. Maintaining a B-tree entry per
/// copied row costs PostgreSQL's backend, the load's critical path, about half as much again as
/// the row itself (800,000 messages: 3.3 CPU-s against 2.2 without the key); one sorted build
/// afterwards costs a fraction of that. `sessions` keeps its key: the foreign keys need it, and
/// it is 2 % of the rows. Nothing can slip in twice meanwhile: each batch commits with its
/// progress record, and the key's build fails on a duplicate.
const PRIMARY_KEYS: [(&str, &str); 2] = [("messages_pkey", "messages"), ("drafts_pkey", "drafts")];

/// A foreign key: its name and its table (all reference `sessions (id)` by `session_id`).
const FOREIGN_KEYS: [(&str, &str); 2] = [
    ("messages_session_id_fkey", "messages"),
    ("drafts_session_id_fkey", "drafts"),
];

/// The tables in the order their chains start: the longest first.
const TABLES: [&str; 3] = ["messages", "drafts", "sessions"];

/// What a step does, in the order a table's steps run (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Kind {
    /// `CREATE INDEX` (`SHARE`): several may run on one table at once.
    Build,
    /// `VALIDATE CONSTRAINT` (`SHARE UPDATE EXCLUSIVE`).
    Validate,
    /// `ANALYZE` (`SHARE UPDATE EXCLUSIVE`).
    Analyze,
}

/// One step of the rebuild.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Step {
    /// The index or constraint built, or `analyze <table>`.
    pub name: String,
    /// The table it locks.
    pub table: &'static str,
    pub kind: Kind,
    /// The statement.
    pub sql: String,
}

/// Drops the secondary indexes and foreign keys before a load into empty tables.
pub(crate) fn drop_all(pg: &mut PgConnection) -> Result<()> {
    for (name, _, _) in INDEXES {
        pg.batch_execute(&format!("DROP INDEX IF EXISTS {name}"))?;
    }
    for (name, table) in FOREIGN_KEYS.iter().chain(&PRIMARY_KEYS) {
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

/// Every step, the longest table's first.
pub(crate) fn steps() -> Vec<Step> {
    let mut out = Vec::new();
    for table in TABLES {
        for (name, _) in PRIMARY_KEYS.iter().filter(|(_, t)| *t == table) {
            out.push(Step {
                name: name.to_string(),
                table,
                kind: Kind::Build,
                // The index, then the constraint on it (a catalog change), unless a run
                // stopped after this step already made both.
                sql: format!(
                    "CREATE UNIQUE INDEX IF NOT EXISTS {name} ON {table} (id); \
                     DO $$ BEGIN \
                     IF NOT EXISTS (SELECT FROM pg_constraint WHERE conrelid = '{table}'::regclass AND contype = 'p') THEN \
                     ALTER TABLE {table} ADD CONSTRAINT {name} PRIMARY KEY USING INDEX {name}; \
                     END IF; END $$"
                ),
            });
        }
        for (name, _, sql) in INDEXES.iter().filter(|(_, t, _)| *t == table) {
            out.push(Step {
                name: name.to_string(),
                table,
                kind: Kind::Build,
                sql: sql.to_string(),
            });
        }
        for (name, _) in FOREIGN_KEYS.iter().filter(|(_, t)| *t == table) {
            out.push(Step {
                name: name.to_string(),
                table,
                kind: Kind::Validate,
                sql: format!("ALTER TABLE {table} VALIDATE CONSTRAINT {name}"),
            });
        }
        out.push(Step {
            name: format!("analyze {table}"),
            table,
            kind: Kind::Analyze,
            sql: format!("ANALYZE {table}"),
        });
    }
    out
}

/// Restores every index and foreign key on one connection (on emptied tables: nothing to build).
pub(crate) fn restore_serially(pg: &mut PgConnection) -> Result<()> {
    add_foreign_keys(pg)?;
    for step in steps() {
        pg.batch_execute(&step.sql)?;
    }
    Ok(())
}

/// The steps not yet finished, shared by the connections.
#[derive(Debug)]
pub(crate) struct Plan {
    /// Not started, in order of preference.
    pending: Vec<Step>,
    /// Started and not finished.
    running: Vec<Step>,
    /// A step failed: start nothing more.
    failed: bool,
}

impl Plan {
    pub(crate) fn new(steps: Vec<Step>) -> Plan {
        Plan {
            pending: steps,
            running: Vec::new(),
            failed: false,
        }
    }

    /// The first pending step whose table has no earlier kind left (pending or running);
    /// `None` when every step has started or one failed.
    pub(crate) fn start(&mut self) -> Option<Step> {
        if self.failed {
            return None;
        }
        let ready = self.pending.iter().position(|s| {
            !self
                .pending
                .iter()
                .chain(&self.running)
                .any(|o| o.table == s.table && o.kind < s.kind)
        })?;
        let step = self.pending.remove(ready);
        self.running.push(step.clone());
        Some(step)
    }

    /// Whether there is nothing left for a connection to wait for.
    pub(crate) fn exhausted(&self) -> bool {
        self.failed || self.pending.is_empty()
    }

    pub(crate) fn finish(&mut self, step: &Step, ok: bool) {
        self.running.retain(|s| s.name != step.name);
        self.failed |= !ok;
    }
}

/// Builds the indexes and validates the foreign keys after the load, up to
/// `opts.connections` steps at once.
pub(crate) fn rebuild(
    pg: &mut PgConnection,
    url: &DatabaseUrl,
    opts: &RebuildOptions,
) -> Result<()> {
    let started = Instant::now();
    add_foreign_keys(pg)?;
    let all = steps();
    let workers = opts.connections.clamp(1, all.len());
    let plan = (Mutex::new(Plan::new(all)), Condvar::new());
    let results: Vec<Result<()>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..workers)
            .map(|worker| {
                let plan = &plan;
                scope.spawn(move || work(worker, url, plan, opts))
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

/// One connection's share: the next ready step until none is left or one failed.
fn work(
    worker: usize,
    url: &DatabaseUrl,
    (plan, changed): &(Mutex<Plan>, Condvar),
    opts: &RebuildOptions,
) -> Result<()> {
    let lock = || plan.lock().unwrap_or_else(|p| p.into_inner());
    let mut pg = match state::connect(url) {
        Ok(pg) => pg,
        Err(e) => {
            lock().failed = true;
            changed.notify_all();
            return Err(e);
        }
    };
    loop {
        let step = {
            let mut p = lock();
            loop {
                if let Some(step) = p.start() {
                    break step;
                }
                if p.exhausted() {
                    return Ok(());
                }
                // Another connection is on an earlier step of the only tables left.
                p = changed.wait(p).unwrap_or_else(|e| e.into_inner());
            }
        };
        let t = Instant::now();
        let out = if opts.fail_at.as_deref() == Some(step.name.as_str()) {
            Err(Error::refused(
                Refusal::Injected,
                format!("stopped before {} (fault injected)", step.name),
            ))
        } else {
            run_step(&mut pg, &step, opts.memory_mb)
        };
        lock().finish(&step, out.is_ok());
        changed.notify_all();
        out?;
        log::debug!(
            "rebuild: {} in {:.1?} (connection {worker})",
            step.name,
            t.elapsed()
        );
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

    /// Runs the plan on `workers` simulated connections, finishing the running step that
    /// `pick` chooses each time; returns the steps in start order.
    fn simulate(workers: usize, mut pick: impl FnMut(usize) -> usize) -> Vec<String> {
        let mut plan = Plan::new(steps());
        let mut running: Vec<Step> = Vec::new();
        let mut started = Vec::new();
        loop {
            while running.len() < workers {
                let Some(step) = plan.start() else { break };
                // Never two kinds of one table at once: they would wait for each other's lock.
                for other in &running {
                    assert!(
                        other.table != step.table
                            || (other.kind == Kind::Build && step.kind == Kind::Build),
                        "{} started while {} runs",
                        step.name,
                        other.name
                    );
                }
                started.push(step.name.clone());
                running.push(step);
            }
            if running.is_empty() {
                assert!(plan.exhausted());
                return started;
            }
            let done = running.remove(pick(running.len()) % running.len());
            plan.finish(&done, true);
        }
    }

    #[test]
    fn steps_of_one_table_never_run_with_a_conflicting_lock() {
        for workers in 1..=4 {
            for seed in 0..50usize {
                let mut x = seed;
                let order = simulate(workers, |n| {
                    x = x
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    (x >> 33) % n
                });
                let mut sorted = order.clone();
                sorted.sort();
                let mut all: Vec<String> = steps().into_iter().map(|s| s.name).collect();
                all.sort();
                assert_eq!(sorted, all, "every step once ({workers} connections)");
                // Per table: the builds, then the key's validation, then ANALYZE.
                for table in TABLES {
                    let mine: Vec<&String> = order.iter().filter(|n| n.contains(table)).collect();
                    assert_eq!(mine.last().unwrap().as_str(), format!("analyze {table}"));
                }
            }
        }
    }

    #[test]
    fn two_connections_build_both_indexes_of_messages_at_once() {
        let mut plan = Plan::new(steps());
        let first = plan.start().unwrap();
        let second = plan.start().unwrap();
        assert_eq!(
            (first.name.as_str(), second.name.as_str()),
            ("messages_pkey", "messages_session_id_id_idx")
        );
        // The validation waits for both; a third connection goes on with drafts.
        assert_eq!(plan.start().unwrap().name, "drafts_pkey");
        plan.finish(&first, true);
        assert_eq!(plan.start().unwrap().name, "drafts_session_id_id_idx");
        plan.finish(&second, true);
        assert_eq!(plan.start().unwrap().name, "messages_session_id_fkey");
    }

    #[test]
    fn a_failed_step_starts_nothing_more() {
        let mut plan = Plan::new(steps());
        let first = plan.start().unwrap();
        plan.finish(&first, false);
        assert!(plan.start().is_none());
        assert!(plan.exhausted());
    }
}
