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
//! "Caught up": a read is compared only once the session's last change on
//! the live side is older than `INTERVIEW_SHADOW_SETTLE_MS`, so the follower
//! had that long to copy it. This is weaker than asking the change log
//! whether every entry of the session has been applied (a follower lagging
//! more than the settle time shows up as mismatches, which is what the
//! counter is for), and needs no knowledge of the migration's bookkeeping.

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
        if let Some(changed) = live.changed_at {
            let age = (crate::timestamp::now() - changed)
                .to_std()
                .unwrap_or_default();
            if age < self.config.settle {
                skipped("settling");
                return;
            }
        }
        if self.inner.in_flight.fetch_add(1, Ordering::AcqRel) >= MAX_IN_FLIGHT {
            self.inner.in_flight.fetch_sub(1, Ordering::AcqRel);
            skipped("busy");
            return;
        }
        let counters = self.inner.clone();
        let store = store.clone();
        tokio::task::spawn_blocking(move || {
            check(&store, what, id, &live, read);
            counters.in_flight.fetch_sub(1, Ordering::AcqRel);
        });
    }
}

fn check<F>(store: &LiveStore, what: &'static str, id: Uuid, live: &Answer, read: F)
where
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
    let shadow = match read(&other) {
        Ok(answer) => answer,
        Err(e) => {
            log::debug!("shadow read of {what} {id}: {e}");
            return skipped("error");
        }
    };
    counter!("interview_shadow_reads_compared_total").increment(1);
    if shadow.body != live.body {
        counter!("interview_shadow_read_mismatches_total").increment(1);
        log::warn!(
            "shadow read mismatch: {what} of session {id} differs between {} and {}",
            store.current().backend(),
            other.backend()
        );
    }
}

fn skipped(reason: &'static str) {
    counter!("interview_shadow_reads_skipped_total", "reason" => reason).increment(1);
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
