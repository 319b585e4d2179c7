//! The handlers.

use std::time::Instant;

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use uuid::Uuid;

use super::error::{ApiError, ApiJson};
use super::hold::{self, Written};
use super::shadow::Answer;
use super::{auth, blocking, metrics, AppState};
use crate::store::{Draft, Message, Role};

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics_text))
        .route("/interview/start", post(start))
        .route("/interview/chat", post(chat))
        .route("/interview/session/{id}", get(session))
        .route("/interview/draft", post(draft))
        .route("/interview/draft/latest/{id}", get(latest_draft))
        .route("/admin/maintenance", post(maintenance))
}

/// Runs a store call off the async workers and times it as `op`.
async fn call<T: Send + 'static>(
    state: &AppState,
    op: &'static str,
    f: impl FnOnce(crate::Store) -> crate::Result<T> + Send + 'static,
) -> Result<T, ApiError> {
    let store = state.store.current();
    super::timing::backend(store.backend());
    let started = Instant::now();
    let result = blocking::run(state.request_timeout, move || f(store)).await;
    metrics::operation(op, started);
    result.map_err(ApiError::from)
}

fn parse_id(raw: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(raw.trim()).map_err(|e| {
        let shown: String = raw.chars().take(60).collect();
        ApiError::input(format!("invalid session id {shown:?}: {e}"))
    })
}

fn message_json(m: &Message) -> Value {
    json!({"id": m.id, "role": m.role, "text": m.text, "created_at": m.created_at})
}

fn draft_json(d: &Draft) -> Value {
    json!({"id": d.id, "session_id": d.session_id, "content": d.content, "created_at": d.created_at})
}

async fn health(State(state): State<AppState>) -> Response {
    // The store in use now: after a switch, /health names the new backend.
    let store = state.store.current();
    // Store::health bounds its own wait; this task only keeps it off the async workers.
    let h = match tokio::task::spawn_blocking(move || store.health()).await {
        Ok(h) => h,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    };
    let body = json!({
        "status": if h.db_up { "ok" } else { "unavailable" },
        "db": if h.db_up { "up" } else { "down" },
        "backend": h.backend,
        "read_only": h.read_only,
        // Whether, not where: the destination would tell how the databases are wired.
        "retired": h.retired_to.is_some(),
    });
    if h.db_up {
        (StatusCode::OK, Json(body)).into_response()
    } else {
        log::warn!(
            "health: database down: {}",
            h.error.as_deref().unwrap_or("unknown")
        );
        (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "5")],
            Json(body),
        )
            .into_response()
    }
}

async fn metrics_text(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        metrics::render(state.store.current().pool_state()),
    )
}

async fn start(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    // The body is `{}`; an empty one is accepted too, anything else that is not an object is refused.
    let request = if body.iter().all(u8::is_ascii_whitespace) {
        json!({})
    } else {
        let v: Value = serde_json::from_slice(&body)
            .map_err(|e| ApiError::input(format!("malformed JSON: {e}")))?;
        if !v.is_object() {
            return Err(ApiError::input("the body must be a JSON object"));
        }
        v
    };
    let opening = state.interviewer.opening();
    let request = request.to_string();
    let written = hold::write(
        &state,
        &headers,
        "POST /interview/start",
        request.as_bytes(),
        "start_session",
        move |store, ticket| {
            let respond = |(session, reply): &(crate::Session, Message)| {
                super::idempotency::recorded(StatusCode::CREATED, &start_json(session, reply))
            };
            match ticket {
                Some(t) => store.start_session_once(t, Role::Assistant, &opening, respond),
                None => store.start_session_with(Role::Assistant, &opening),
            }
        },
    )
    .await?;
    let (session, reply) = match written {
        Written::Answer(response) => return Ok(response),
        Written::Done(done) => done,
    };
    Ok((StatusCode::CREATED, Json(start_json(&session, &reply))).into_response())
}

fn start_json(session: &crate::Session, reply: &Message) -> Value {
    json!({"session_id": session.id, "created_at": session.created_at, "reply": message_json(reply)})
}

#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct ChatRequest {
    session_id: String,
    text: String,
}

async fn chat(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<ChatRequest>,
) -> Result<Response, ApiError> {
    let id = parse_id(&req.session_id)?;
    if req.text.trim().is_empty() {
        return Err(ApiError::input("text must not be empty"));
    }
    let request = serde_json::to_vec(&req).unwrap_or_default();
    let interviewer = state.interviewer.clone();
    let written = hold::write(
        &state,
        &headers,
        "POST /interview/chat",
        &request,
        "chat",
        move |store, ticket| chat_turn(&store, ticket, &*interviewer, id, &req.text),
    )
    .await?;
    match written {
        Written::Answer(response) => Ok(response),
        Written::Done(turn) => Ok(Json(chat_json(id, &turn)).into_response()),
    }
}

/// One chat turn: the reply is worked out first, then the whole turn is
/// stored in one transaction, so a pause or a failure never leaves half a
/// turn behind.
fn chat_turn(
    store: &crate::Store,
    ticket: Option<&crate::store::Ticket>,
    interviewer: &dyn super::Interviewer,
    id: Uuid,
    text: &str,
) -> crate::Result<[Message; 2]> {
    let mut history = store.get_session(id)?.messages;
    history.push(Message {
        id: 0,
        session_id: id,
        role: Role::User,
        text: text.to_string(),
        created_at: crate::timestamp::now(),
    });
    let answer = interviewer.reply(&history);
    history.push(Message {
        id: 0,
        session_id: id,
        role: Role::Assistant,
        text: answer.clone(),
        created_at: crate::timestamp::now(),
    });
    let summary = interviewer.summarize(&history);
    let turns = [(Role::User, text), (Role::Assistant, answer.as_str())];
    let stored = match ticket {
        Some(t) => store.append_messages_once(t, id, &turns, Some(&summary), |stored| {
            super::idempotency::recorded(StatusCode::OK, &chat_json(id, stored))
        })?,
        None => store.append_messages(id, &turns, Some(&summary))?,
    };
    stored
        .try_into()
        .map_err(|v: Vec<Message>| crate::Error::Corrupt {
            what: format!("chat turn of session {id}"),
            reason: format!("{} messages stored instead of 2", v.len()),
        })
}

fn chat_json(id: Uuid, turn: &[Message]) -> Value {
    json!({"session_id": id, "message": turn.first().map(message_json), "reply": turn.get(1).map(message_json)})
}

async fn session(
    State(state): State<AppState>,
    Path(raw): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = parse_id(&raw)?;
    let answer = call(&state, "get_session", move |store| {
        session_answer(&store, id)
    })
    .await?;
    let body = answer.body.clone();
    state
        .shadow
        .compare(&state.store, "session", id, answer, move |other| {
            session_answer(other, id)
        });
    if body.is_null() {
        return Err(ApiError::from(crate::Error::not_found(format!(
            "session {id}"
        ))));
    }
    Ok(Json(body))
}

/// `GET /interview/session/{id}`'s body (`Null` when there is no such
/// session), and when the session last changed.
fn session_answer(store: &crate::Store, id: Uuid) -> crate::Result<Answer> {
    let s = match store.get_session(id) {
        Ok(s) => s,
        Err(crate::Error::NotFound { .. }) => {
            return Ok(Answer {
                body: Value::Null,
                changed_at: None,
            })
        }
        Err(e) => return Err(e),
    };
    Ok(Answer {
        body: json!({
            "id": s.session.id,
            "created_at": s.session.created_at,
            "updated_at": s.session.updated_at,
            "summary": s.session.summary,
            "messages": s.messages.iter().map(message_json).collect::<Vec<_>>(),
        }),
        changed_at: Some(s.session.updated_at),
    })
}

#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct DraftRequest {
    session_id: String,
    content: Option<String>,
}

async fn draft(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<DraftRequest>,
) -> Result<Response, ApiError> {
    let id = parse_id(&req.session_id)?;
    let request = serde_json::to_vec(&req).unwrap_or_default();
    let interviewer = state.interviewer.clone();
    let written = hold::write(
        &state,
        &headers,
        "POST /interview/draft",
        &request,
        "save_draft",
        move |store, ticket| {
            let content = match &req.content {
                Some(c) => c.clone(),
                None => interviewer.compose_draft(&store.get_session(id)?.messages),
            };
            match ticket {
                Some(t) => store.save_draft_once(t, id, &content, |d| {
                    super::idempotency::recorded(StatusCode::CREATED, &draft_json(d))
                }),
                None => store.save_draft(id, &content),
            }
        },
    )
    .await?;
    match written {
        Written::Answer(response) => Ok(response),
        Written::Done(draft) => Ok((StatusCode::CREATED, Json(draft_json(&draft))).into_response()),
    }
}

async fn latest_draft(
    State(state): State<AppState>,
    Path(raw): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = parse_id(&raw)?;
    let answer = call(&state, "latest_draft", move |store| {
        draft_answer(&store, id)
    })
    .await?;
    let body = answer.body.clone();
    state
        .shadow
        .compare(&state.store, "latest draft", id, answer, move |other| {
            draft_answer(other, id)
        });
    if body.is_null() {
        return Err(ApiError::from(crate::Error::not_found(format!(
            "draft of session {id}"
        ))));
    }
    Ok(Json(body))
}

/// `GET /interview/draft/latest/{id}`'s body (`Null` for none), and when it was written.
fn draft_answer(store: &crate::Store, id: Uuid) -> crate::Result<Answer> {
    Ok(match store.latest_draft(id)? {
        Some(d) => Answer {
            body: draft_json(&d),
            changed_at: Some(d.created_at),
        },
        None => Answer {
            body: Value::Null,
            changed_at: None,
        },
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MaintenanceRequest {
    read_only: bool,
}

async fn maintenance(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Json<Value>, ApiError> {
    let Some(expected) = state.admin_token.as_deref() else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "admin endpoints are disabled: INTERVIEW_ADMIN_TOKEN is not set",
        ));
    };
    if !auth::bearer_matches(&headers, expected) {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "auth",
            "missing or wrong bearer token",
        ));
    }
    let req: MaintenanceRequest = serde_json::from_slice(&body)
        .map_err(|e| ApiError::input(format!("expected {{\"read_only\": true|false}}: {e}")))?;
    // The pause is set in the database, so it holds for every server on it. Turning it on
    // waits for writes in flight: once this answers, no write can commit.
    let now = call(&state, "set_read_only", move |store| {
        store.set_read_only(req.read_only)?;
        store.maintenance()
    })
    .await?;
    log::warn!("maintenance: read_only = {}", now.paused);
    Ok(Json(json!({"read_only": now.paused})))
}
