//! The health check shared by concurrent callers of [`Store::health`].

use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use super::Store;
use crate::error::Error;
use crate::maintenance::Maintenance;

/// At most one check (a read of the maintenance row) in flight; callers wait for its answer, each up to its own deadline.
#[derive(Debug, Default)]
pub(crate) struct Probe {
    state: Mutex<State>,
    finished: Condvar,
}

#[derive(Debug, Default)]
struct State {
    running: bool,
    // Counts finished checks, so a waiter knows a new answer arrived.
    finished: u64,
    last: Option<Result<Maintenance, String>>,
}

impl Probe {
    /// Waits up to `timeout` for a check that started no earlier than this call, or the one in flight.
    pub(crate) fn check(&self, store: &Store, timeout: Duration) -> Result<Maintenance, String> {
        let deadline = Instant::now() + timeout;
        let mut state = self.state.lock();
        let seen = state.finished;
        if !state.running {
            let store = store.clone();
            // A thread of its own so a hung server cannot hold the caller past
            // its deadline; only one such thread exists at a time.
            let spawned = std::thread::Builder::new()
                .name("interview-store-health".into())
                .spawn(move || {
                    let result = read_state(&store, timeout);
                    let probe = &store.inner.health;
                    let mut state = probe.state.lock();
                    state.running = false;
                    state.finished += 1;
                    state.last = Some(result);
                    probe.finished.notify_all();
                });
            if let Err(e) = spawned {
                return Err(format!("cannot start health check: {e}"));
            }
            state.running = true;
        }
        while state.finished == seen {
            if self.finished.wait_until(&mut state, deadline).timed_out() {
                return Err(format!("no answer within {timeout:?}"));
            }
        }
        state
            .last
            .clone()
            .unwrap_or_else(|| Err("no health check finished".into()))
    }
}

/// One query: the database answers, and says whether it is paused.
fn read_state(store: &Store, timeout: Duration) -> Result<Maintenance, String> {
    let mut pooled = store
        .inner
        .pool
        .get_within(timeout)
        .map_err(|e| e.to_string())?;
    let result = crate::maintenance::read(&mut pooled.conn);
    if result.as_ref().is_err_and(Error::is_connection_lost) {
        pooled.lost = true;
    }
    result.map_err(|e| e.to_string())
}
