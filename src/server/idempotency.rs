//! The `Idempotency-Key` request header of the write endpoints.
//!
//! A repeat with the same key and the same request gets the first response
//! (same status and body) and stores nothing; the same key with another
//! request gets 422; a repeat while the first is still running gets 409. The
//! keys live in the database (see `Store::claim_idempotency_key`), so this
//! holds across retries that land on another server process.

use std::time::Duration;

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

use super::error::ApiError;
use super::{blocking, AppState};
use crate::error::{Category, Error};
use crate::store::{Claim, Recorded, Store, Ticket};

/// The request header.
pub const HEADER: &str = "idempotency-key";

/// Longest key accepted.
const MAX_KEY_LEN: usize = 255;

/// What the handler does next.
pub(super) enum Begin {
    /// Run the request; record its response under the ticket, if a key came.
    Run(Option<Ticket>),
    /// Answer this at once (the recorded response, 409 or 422).
    Answer(Response),
}

/// A request's key, scope and content hash: what a claim is made of.
#[derive(Debug, Clone)]
pub(super) struct Key {
    scope: &'static str,
    key: String,
    hash: String,
}

/// Reads the key, if any, of a request in `scope` whose content is `request`.
///
/// `request` is the request as parsed (re-serialised), so a retry that only
/// formats its JSON differently still counts as the same request.
pub(super) fn read(
    headers: &HeaderMap,
    scope: &'static str,
    request: &[u8],
) -> Result<Option<Key>, ApiError> {
    let Some(raw) = headers.get(HEADER) else {
        return Ok(None);
    };
    let key = raw
        .to_str()
        .ok()
        .filter(|k| (1..=MAX_KEY_LEN).contains(&k.len()))
        .filter(|k| k.bytes().all(|b| b.is_ascii_graphic()))
        .ok_or_else(|| {
            ApiError::input(format!(
                "Idempotency-Key must be 1 to {MAX_KEY_LEN} visible ASCII characters"
            ))
        })?
        .to_string();
    Ok(Some(Key {
        scope,
        key,
        hash: hex(&Sha256::digest(request)),
    }))
}

/// Claims `key` (if the request carried one) in `store`.
///
/// Claimed in the store the write then goes to: after a switch the writer
/// claims again in the new database (see `hold`).
pub(super) async fn claim(
    state: &AppState,
    store: Store,
    key: Option<&Key>,
) -> Result<Begin, Error> {
    let Some(key) = key.cloned() else {
        return Ok(Begin::Run(None));
    };
    let policy = state.limits.key_policy();
    let claim = blocking::run(state.request_timeout, move || {
        store.claim_idempotency_key(key.scope, &key.key, &key.hash, policy)
    })
    .await?;
    Ok(match claim {
        Claim::Run(ticket) => Begin::Run(Some(ticket)),
        Claim::Replay(recorded) => Begin::Answer(replay(recorded)),
        Claim::InProgress => Begin::Answer(
            ApiError::new(
                StatusCode::CONFLICT,
                "conflict",
                "a request with this Idempotency-Key is still running; retry later",
            )
            .into_response(),
        ),
        Claim::Mismatch => Begin::Answer(
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                Category::Input.as_str(),
                "this Idempotency-Key was used with a different request",
            )
            .into_response(),
        ),
    })
}

/// Gives the key back after the request failed with nothing stored, so a retry runs at once.
///
/// Best effort: if the database is down too, the claim lapses after its lease.
pub(super) async fn release(state: &AppState, store: Store, ticket: Option<Ticket>) {
    let Some(ticket) = ticket else { return };
    if let Err(e) = blocking::run(state.request_timeout, move || {
        store.release_idempotency_key(&ticket)
    })
    .await
    {
        log::warn!("cannot release an idempotency key (it lapses after its lease): {e}");
    }
}

/// The response to record: status and JSON body as sent.
pub(super) fn recorded(status: StatusCode, body: &impl serde::Serialize) -> Recorded {
    Recorded {
        status: status.as_u16(),
        // The bodies are plain structs of strings and numbers: serialising cannot fail.
        body: serde_json::to_string(body).unwrap_or_default(),
    }
}

fn replay(recorded: Recorded) -> Response {
    let status = StatusCode::from_u16(recorded.status).unwrap_or(StatusCode::OK);
    (
        status,
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            ),
            (
                header::HeaderName::from_static("idempotent-replayed"),
                HeaderValue::from_static("true"),
            ),
        ],
        recorded.body,
    )
        .into_response()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Deletes keys past their retention now and then, for as long as the server runs.
pub(super) async fn prune_forever(state: AppState) {
    let retention = state.limits.idempotency_retention;
    // Often enough that the table holds little more than the retention's worth.
    let every = (retention / 24).clamp(Duration::from_secs(60), Duration::from_secs(3600));
    loop {
        let store = state.store.current();
        match blocking::run(state.request_timeout, move || {
            store.prune_idempotency_keys(retention)
        })
        .await
        {
            Ok(0) => {}
            Ok(n) => log::info!("pruned {n} idempotency keys older than {retention:?}"),
            Err(e) => log::warn!("pruning idempotency keys: {e}"),
        }
        tokio::time::sleep(every).await;
    }
}

#[cfg(test)]
mod tests {
    /// The document's pattern for the header (a literal in each write's
    /// attribute) says what [`super::read`] takes.
    #[test]
    fn documented_key_pattern_is_what_read_takes() {
        let want = format!("^[!-~]{{1,{}}}$", super::MAX_KEY_LEN);
        let doc = super::super::openapi();
        let mut seen = 0;
        for path in ["/interview/start", "/interview/chat", "/interview/draft"] {
            for p in doc["paths"][path]["post"]["parameters"].as_array().unwrap() {
                if p["name"] == "Idempotency-Key" {
                    assert_eq!(p["schema"]["pattern"], want.as_str(), "{path}");
                    seen += 1;
                }
            }
        }
        assert_eq!(seen, 3);
    }
}
