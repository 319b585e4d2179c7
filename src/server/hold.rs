//! Writes held through a pause or a switch instead of refused.
//!
//! A write the database refuses because it is paused ([`Error::ReadOnly`]) or
//! retired ([`Error::Retired`]) is retried every [`HOLD_STEP`] until it lands
//! or `INTERVIEW_PAUSE_WAIT_MS` has passed; only then it answers 503
//! `read_only`. A retired database also makes the process follow the switch
//! ([`LiveStore::follow`](super::live_store::LiveStore::follow)), and the
//! retry goes to the new store. The sleeps are async: a held write holds no
//! thread.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::HeaderMap;
use axum::response::Response;

use super::error::ApiError;
use super::idempotency::{self, Begin, Key};
use super::live_store::is_refusal;
use super::{blocking, metrics, timing, AppState};
use crate::error::{Error, Result};
use crate::store::{Store, Ticket};

/// How long a held write sleeps before trying again.
pub const HOLD_STEP: Duration = Duration::from_millis(25);

/// What a held write came to.
pub(super) enum Written<T> {
    /// The write ran; its result.
    Done(T),
    /// The key's recorded response, 409 or 422: answer it as it is.
    Answer(Response),
}

/// The key claimed for the write, in the store (of that generation) it was claimed in.
struct Claimed {
    generation: u64,
    store: Store,
    ticket: Option<Ticket>,
}

/// Runs the write `f` (timed as `op`) with its `Idempotency-Key`, if any,
/// holding it through a pause or a switch for up to the pause wait.
///
/// The key is claimed in the store the write goes to: after a switch it is
/// given back in the old database and claimed again in the new one, where a
/// recorded response (carried over, or written by another process) is
/// replayed. A write that fails for good gives its key back.
pub(super) async fn write<T, F>(
    state: &AppState,
    headers: &HeaderMap,
    scope: &'static str,
    request: &[u8],
    op: &'static str,
    f: F,
) -> Result<Written<T>, ApiError>
where
    T: Send + 'static,
    F: Fn(Store, Option<&Ticket>) -> Result<T> + Send + Sync + 'static,
{
    let key = idempotency::read(headers, scope, request)?;
    let f = Arc::new(f);
    let deadline = Instant::now() + state.pause_wait;
    let mut claimed: Option<Claimed> = None;
    loop {
        let (generation, store) = state.store.current_with_generation();
        let result = attempt(state, &key, &mut claimed, generation, store, op, &f).await;
        let refused = match result {
            Ok(written) => return Ok(written),
            Err(e) if is_refusal(&e) && Instant::now() < deadline => e,
            Err(e) => {
                if let Some(c) = claimed.take() {
                    idempotency::release(state, c.store, c.ticket).await;
                }
                return Err(ApiError::from(e));
            }
        };
        if matches!(refused, Error::Retired { .. }) {
            let following = Instant::now();
            let follow = state.store.follow(generation, state.request_timeout).await;
            timing::held(following.elapsed());
            if follow == super::live_store::Follow::Switched {
                continue;
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let napped = Instant::now();
        tokio::time::sleep(HOLD_STEP.min(left)).await;
        timing::held(napped.elapsed());
    }
}

/// One try on the store of `generation`: claim the key there if not yet, then write.
async fn attempt<T, F>(
    state: &AppState,
    key: &Option<Key>,
    claimed: &mut Option<Claimed>,
    generation: u64,
    store: Store,
    op: &'static str,
    f: &Arc<F>,
) -> Result<Written<T>>
where
    T: Send + 'static,
    F: Fn(Store, Option<&Ticket>) -> Result<T> + Send + Sync + 'static,
{
    if claimed.as_ref().map(|c| c.generation) != Some(generation) {
        if let Some(old) = claimed.take() {
            // Claimed in the database it left: the key belongs to the new one now.
            idempotency::release(state, old.store, old.ticket).await;
        }
        match idempotency::claim(state, store.clone(), key.as_ref()).await? {
            Begin::Answer(response) => return Ok(Written::Answer(response)),
            Begin::Run(ticket) => {
                *claimed = Some(Claimed {
                    generation,
                    store: store.clone(),
                    ticket,
                })
            }
        }
    }
    let ticket = claimed.as_ref().and_then(|c| c.ticket.clone());
    let f = f.clone();
    timing::backend(store.backend());
    let started = Instant::now();
    let result = blocking::run(state.request_timeout, move || f(store, ticket.as_ref())).await;
    metrics::operation(op, started);
    result.map(Written::Done)
}
