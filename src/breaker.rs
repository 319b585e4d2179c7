//! The circuit breaker of the connection pool: fail fast while the database is unreachable.
//!
//! It lives with the pool, not the HTTP server, because the pool is what sees
//! connections fail, and every user of the store (server, tools) should stop
//! piling up behind a database that refuses connections. When opening a
//! connection fails the breaker opens: checkouts fail at once with
//! [`Error::Connect`] instead of each waiting the pool's full timeout. One
//! background thread then tries to connect every [`PROBE_INTERVAL`] and closes
//! the breaker on the first success, and ends.

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::connection::DatabaseUrl;
use crate::error::Error;

/// How often the prober tries to reach the database while the breaker is open.
pub(crate) const PROBE_INTERVAL: Duration = Duration::from_millis(200);

#[derive(Debug)]
pub(crate) struct Breaker {
    // Opens connections the way the pool does (same URL, same connect timeout).
    url: DatabaseUrl,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    open_since: Option<Instant>,
    reason: String,
    probing: bool,
}

impl Breaker {
    pub(crate) fn new(url: DatabaseUrl) -> Arc<Breaker> {
        Arc::new(Breaker {
            url,
            state: Mutex::new(State::default()),
        })
    }

    /// The error to answer at once while the breaker is open; `None` when closed.
    pub(crate) fn refusal(&self) -> Option<Error> {
        let state = self.state.lock();
        let since = state.open_since?;
        Some(Error::Connect {
            url: self.url.masked(),
            reason: format!(
                "unreachable for {:.1?} ({}); retrying in the background",
                since.elapsed(),
                state.reason
            ),
        })
    }

    /// Whether checkouts fail fast now (for monitoring).
    pub(crate) fn is_open(&self) -> bool {
        self.state.lock().open_since.is_some()
    }

    /// Records a failed connection attempt: opens the breaker and starts the prober.
    pub(crate) fn trip(self: &Arc<Self>, reason: String) {
        let mut state = self.state.lock();
        if state.open_since.is_none() {
            log::warn!(
                "database {} unreachable: failing fast until it answers again",
                self.url.masked()
            );
            state.open_since = Some(Instant::now());
        }
        state.reason = reason;
        if state.probing {
            return;
        }
        let weak = Arc::downgrade(self);
        let spawned = std::thread::Builder::new()
            .name("store-probe".into())
            .spawn(move || probe(weak));
        match spawned {
            Ok(_) => state.probing = true,
            // Without a prober the breaker would stay open for good.
            Err(e) => {
                log::error!("cannot start the database prober: {e}");
                state.open_since = None;
            }
        }
    }
}

/// The driver's reason of a failed connection attempt, without the URL.
pub(crate) fn reason_of(e: Error) -> String {
    match e {
        Error::Connect { reason, .. } => reason,
        other => other.to_string(),
    }
}

/// Tries to connect until it succeeds, then closes the breaker; ends with the pool.
fn probe(breaker: Weak<Breaker>) {
    loop {
        std::thread::sleep(PROBE_INTERVAL);
        let Some(breaker) = breaker.upgrade() else {
            return;
        };
        let result = breaker.url.establish();
        let mut state = breaker.state.lock();
        match result {
            Ok(_) => {
                if let Some(since) = state.open_since.take() {
                    log::info!(
                        "database {} reachable again after {:.1?}",
                        breaker.url.masked(),
                        since.elapsed()
                    );
                }
                state.probing = false;
                return;
            }
            Err(e) => state.reason = reason_of(e),
        }
    }
}
