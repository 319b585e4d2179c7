//! Where a request's time went: held by a pause or a switch, and in the
//! database, for the slow-request log line (`INTERVIEW_SLOW_REQUEST_MS`).
//!
//! The figures live in a task-local scoped around the request by
//! [`track_requests`](super::metrics::track_requests): the handler, the hold
//! and the blocking calls all run in the request's own task, so each adds
//! what it spent without it being passed down. Outside a request (the switch
//! watcher, the pruner) there is no scope and nothing is recorded.

use std::cell::Cell;
use std::future::Future;
use std::time::Duration;

use crate::connection::Backend;

tokio::task_local! {
    static SPENT: Spent;
}

#[derive(Default)]
struct Spent {
    held: Cell<Duration>,
    db: Cell<Duration>,
    backend: Cell<Option<Backend>>,
}

/// One request's breakdown.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Breakdown {
    /// Waiting for a paused or retired database to take writes again (the
    /// hold's sleeps, and following a switch).
    pub held: Duration,
    /// Work on tokio's blocking pool for this request: waiting for a pool
    /// connection and the queries (see [`blocking::run`](super::blocking::run)).
    pub db: Duration,
    /// The backend of the store the request last used; `None` when it used none.
    pub backend: Option<Backend>,
}

/// Runs `request`, returning its output and where its time went.
pub(super) async fn scope<F: Future>(request: F) -> (F::Output, Breakdown) {
    SPENT
        .scope(Spent::default(), async move {
            let out = request.await;
            let breakdown = SPENT
                .try_with(|s| Breakdown {
                    held: s.held.get(),
                    db: s.db.get(),
                    backend: s.backend.get(),
                })
                .unwrap_or_default();
            (out, breakdown)
        })
        .await
}

/// Adds time spent held by a pause.
pub(super) fn held(d: Duration) {
    let _ = SPENT.try_with(|s| s.held.set(s.held.get() + d));
}

/// Adds time spent on the blocking pool.
pub(super) fn db(d: Duration) {
    let _ = SPENT.try_with(|s| s.db.set(s.db.get() + d));
}

/// Records the backend the request's store call goes to.
pub(super) fn backend(b: Backend) {
    let _ = SPENT.try_with(|s| s.backend.set(Some(b)));
}
