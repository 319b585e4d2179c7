//! Shadow reads: the plan's dual-read window, online.
//!
//! A sampled share (`INTERVIEW_SHADOW_READS`) of `GET /interview/session/{id}`
//! and `/interview/draft/latest/{id}` is read again from the other backend in
//! the background, after the client got the live backend's answer, and the
//! two answers are compared as the client would see them. Mismatches are
//! counted (`interview_shadow_read_mismatches_total`) and logged with the
//! session id; compared reads are counted in
//! `interview_shadow_reads_compared_total`, skipped ones in
//! `interview_shadow_reads_skipped_total{reason}`.
//!
//! "Caught up": while a migration follows the live side's change log
//! (`interview_change_log`, applied up to `interview_migration_state`'s mark
//! in PostgreSQL: `mark_change_seq` from SQLite, `rollback_xid_horizon` back
//! from PostgreSQL), a read is compared only when no entry of that session
//! (its row, its messages, its drafts) lies past the mark; otherwise it is
//! skipped as `behind`. Where there is no change log or no migration state,
//! the weaker rule applies: compare only once the session's last change is
//! older than `INTERVIEW_SHADOW_SETTLE_MS` (a follower lagging by more than
//! that shows as mismatches).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use metrics::counter;
use serde_json::Value;
use uuid::Uuid;

use super::live_store::LiveStore;
use crate::error::Result;
use crate::store::Store;

/// At most this many shadow reads run at once; more are skipped, never queued.
pub const MAX_IN_FLIGHT: usize = 4;

/// How much to shadow-read.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ShadowConfig {
    /// Share of reads compared, 0 (off) to 1 (every read).
    pub fraction: f64,
    /// Only sessions unchanged for this long are compared (see the module doc).
    pub settle: Duration,
}

impl Default for ShadowConfig {
    fn default() -> Self {
        ShadowConfig {
            fraction: 0.0,
            settle: Duration::from_secs(5),
        }
    }
}

/// The sampler and the bound on shadow reads in flight, shared by every request.
#[derive(Clone)]
pub struct Shadow {
    config: ShadowConfig,
    inner: Arc<Counters>,
}

#[derive(Default)]
struct Counters {
    reads: AtomicU64,
    in_flight: AtomicUsize,
}

/// One read as the client saw it: the answer's JSON, and when its session last changed.
pub(super) struct Answer {
    /// The JSON sent (`Null` for 404).
    pub body: Value,
    /// The session's (or draft's) last change, to wait out the follower.
    pub changed_at: Option<DateTime<Utc>>,
}

impl Shadow {
    /// A sampler for `config`.
    pub fn new(config: ShadowConfig) -> Self {
        Shadow {
            config,
            inner: Arc::default(),
        }
    }

    /// Whether this read is sampled: exactly `fraction` of reads, evenly spread.
    fn sampled(&self) -> bool {
        let f = self.config.fraction;
        if f <= 0.0 {
            return false;
        }
        let n = self.inner.reads.fetch_add(1, Ordering::Relaxed) as f64;
        ((n + 1.0) * f).floor() > (n * f).floor()
    }

    /// If sampled, reads `what` of session `id` again from the other backend
    /// in the background with `read`, and compares it with `live`.
    ///
    /// Returns at once; the client's answer never waits for this.
    pub(super) fn compare<F>(
        &self,
        store: &LiveStore,
        what: &'static str,
        id: Uuid,
        live: Answer,
        read: F,
    ) where
        F: FnOnce(&Store) -> Result<Answer> + Send + 'static,
    {
        if !self.sampled() {
            return;
        }
        if self.inner.in_flight.fetch_add(1, Ordering::AcqRel) >= MAX_IN_FLIGHT {
            self.inner.in_flight.fetch_sub(1, Ordering::AcqRel);
            skipped("busy");
            return;
        }
        let counters = self.inner.clone();
        let store = store.clone();
        let settle = self.config.settle;
        tokio::task::spawn_blocking(move || {
            check(&store, what, id, &live, settle, read);
            counters.in_flight.fetch_sub(1, Ordering::AcqRel);
        });
    }
}

fn check<F>(
    store: &LiveStore,
    what: &'static str,
    id: Uuid,
    live: &Answer,
    settle: Duration,
    read: F,
) where
    F: FnOnce(&Store) -> Result<Answer>,
{
    let other = match store.other() {
        Ok(Some(other)) => other,
        Ok(None) => return skipped("no_other_backend"),
        Err(e) => {
            log::debug!("shadow read of {what} {id}: other backend unreachable: {e}");
            return skipped("unreachable");
        }
    };
    let pending = caught_up::pending(&store.current(), &other, id).unwrap_or_else(|e| {
        // No change log or migration state there (no migration under way): the settle time decides.
        log::debug!("shadow read of {what} {id}: no change log to ask: {e}");
        None
    });
    match pending {
        Some(0) => {}
        Some(_) => return skipped("behind"),
        None => {
            if let Some(changed) = live.changed_at {
                let age = (crate::timestamp::now() - changed)
                    .to_std()
                    .unwrap_or_default();
                if age < settle {
                    return skipped("settling");
                }
            }
        }
    }
    let shadow = match read(&other) {
        Ok(answer) => answer,
        Err(e) => {
            log::debug!("shadow read of {what} {id}: {e}");
            return skipped("error");
        }
    };
    // The mismatch is counted before the comparison, so that a scrape taken
    // between the two never sees a compared read without its mismatch.
    if shadow.body != live.body {
        counter!("interview_shadow_read_mismatches_total").increment(1);
        log::warn!(
            "shadow read mismatch: {what} of session {id} differs between {} and {}",
            store.current().backend(),
            other.backend()
        );
    }
    counter!("interview_shadow_reads_compared_total").increment(1);
}

/// Whether the follower has applied every change of a session, from the change log.
mod caught_up {
    use diesel::prelude::*;
    use uuid::Uuid;

    use crate::connection::Backend;
    use crate::error::Result;
    use crate::schema::{drafts, messages};
    use crate::store::Store;
    use crate::types::{uuid_key, DbUuidKey};

    // The migration's tables, as far as this check reads them (the migration tool owns them).
    diesel::table! {
        interview_change_log (seq) {
            seq -> BigInt,
            table_name -> Text,
            row_key -> Text,
            xid -> BigInt,
        }
    }
    diesel::table! {
        interview_migration_state (source) {
            source -> Text,
            mark_change_seq -> Nullable<BigInt>,
            rollback_xid_horizon -> BigInt,
        }
    }

    /// Entries of session `id` in `live`'s change log not yet applied to the
    /// other side; `None` when there is no migration state to ask (an error:
    /// no change log or state table at all).
    pub(super) fn pending(live: &Store, other: &Store, id: Uuid) -> Result<Option<i64>> {
        let (pg, mark_column_is_rollback) = match (live.backend(), other.backend()) {
            (Backend::Sqlite, Backend::Postgres) => (other, false),
            (Backend::Postgres, Backend::Sqlite) => (live, true),
            _ => return Ok(None),
        };
        // SQLite's log is in commit order: applied means at or below the
        // mark. PostgreSQL's is not: applied means written by a transaction
        // below the horizon (see migrate's rollback).
        let mark = pg
            .with_connection(|c| {
                let s = interview_migration_state::table;
                Ok(if mark_column_is_rollback {
                    s.select(interview_migration_state::rollback_xid_horizon.nullable())
                        .first::<Option<i64>>(c)
                        .optional()?
                } else {
                    s.select(interview_migration_state::mark_change_seq)
                        .first::<Option<i64>>(c)
                        .optional()?
                })
            })?
            .flatten();
        let Some(mark) = mark else {
            return Ok(None);
        };
        live.with_connection(|c| {
            let ids = |v: Vec<i64>| v.into_iter().map(|n| n.to_string()).collect::<Vec<_>>();
            let message_ids = ids(messages::table
                .filter(uuid_key(messages::session_id).eq(DbUuidKey(id)))
                .select(messages::id)
                .load(c)?);
            let draft_ids = ids(drafts::table
                .filter(uuid_key(drafts::session_id).eq(DbUuidKey(id)))
                .select(drafts::id)
                .load(c)?);
            use interview_change_log as log;
            let past_mark = if mark_column_is_rollback {
                log::table.filter(log::xid.ge(mark)).into_boxed()
            } else {
                log::table.filter(log::seq.gt(mark)).into_boxed()
            };
            Ok(past_mark
                .filter(
                    log::table_name
                        .eq("sessions")
                        .and(log::row_key.eq(id.hyphenated().to_string()))
                        .or(log::table_name
                            .eq("messages")
                            .and(log::row_key.eq_any(message_ids)))
                        .or(log::table_name
                            .eq("drafts")
                            .and(log::row_key.eq_any(draft_ids))),
                )
                .count()
                .get_result::<i64>(c)?)
        })
        .map(Some)
    }
}

fn skipped(reason: &'static str) {
    super::metrics::shadow_read_skipped(reason);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_exactly_the_share_asked() {
        for (fraction, expected) in [(0.0, 0), (0.1, 100), (0.25, 250), (1.0, 1000)] {
            let s = Shadow::new(ShadowConfig {
                fraction,
                ..ShadowConfig::default()
            });
            let n = (0..1000).filter(|_| s.sampled()).count();
            assert_eq!(n, expected, "fraction {fraction}");
        }
    }
}
