//! The handlers, and the OpenAPI document made from them (see [`super::openapi`]).
//!
//! Each handler's `#[utoipa::path]` names its route, so the router and the
//! document are built from the same list (`utoipa_axum::routes!`): a route
//! cannot be served undocumented. Bodies are the structs below, serialised as
//! they are documented.

use std::time::Instant;

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use utoipa::openapi::schema::{Object, ObjectBuilder, Type};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::error::{ApiError, ApiJson, ErrorBody};
use super::hold::{self, Written};
use super::shadow::Answer;
use super::{auth, blocking, metrics, AppState};
use crate::store::{Draft, Message, Role};
use crate::Backend;

/// The one spelling of a session id the API accepts: a lower-case,
/// hyphenated UUID, as it answers them. Also written out in the `pattern`
/// attributes below, which must be literals; a test checks they agree.
pub const ID_PATTERN: &str = "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$";

/// The routes and their document, from one list.
pub(super) fn routes() -> (Router<AppState>, utoipa::openapi::OpenApi) {
    OpenApiRouter::new()
        .routes(routes!(health))
        .routes(routes!(metrics_text))
        .routes(routes!(openapi_json))
        .routes(routes!(start))
        .routes(routes!(chat))
        .routes(routes!(session))
        .routes(routes!(draft))
        .routes(routes!(latest_draft))
        .routes(routes!(maintenance))
        .split_for_parts()
}

/// A string schema of the given values. (A field's doc comment does not
/// reach a `schema_with` schema, so the description is given here.)
fn one_of(values: &[&str], description: &str) -> Object {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some(values.iter().copied()))
        .description(Some(description))
        .build()
}

fn role_schema() -> Object {
    one_of(
        &[Role::User.as_str(), Role::Assistant.as_str()],
        "Who wrote it: `user` (the person interviewed) or `assistant` (the interviewer).",
    )
}

fn backend_schema() -> Object {
    one_of(
        &[Backend::Sqlite.as_str(), Backend::Postgres.as_str()],
        "The backend in use now (after a switch, the new one).",
    )
}

/// One message of a conversation.
#[derive(Serialize, ToSchema)]
#[schema(as = Message)]
pub struct MessageBody {
    /// Increases in append order.
    id: i64,
    /// `user` (the person interviewed) or `assistant` (the interviewer).
    #[schema(schema_with = role_schema)]
    role: Role,
    /// What was said.
    text: String,
    /// When it was stored (UTC, microseconds).
    created_at: DateTime<Utc>,
}

impl From<&Message> for MessageBody {
    fn from(m: &Message) -> Self {
        MessageBody {
            id: m.id,
            role: m.role,
            text: m.text.clone(),
            created_at: m.created_at,
        }
    }
}

/// A saved draft.
#[derive(Serialize, ToSchema)]
#[schema(as = Draft)]
pub struct DraftBody {
    /// Increases in save order.
    id: i64,
    /// The session it was composed from.
    session_id: Uuid,
    /// The text of the draft.
    content: String,
    /// When it was saved.
    created_at: DateTime<Utc>,
}

impl From<&Draft> for DraftBody {
    fn from(d: &Draft) -> Self {
        DraftBody {
            id: d.id,
            session_id: d.session_id,
            content: d.content.clone(),
            created_at: d.created_at,
        }
    }
}

/// Whether the server and its database are up.
#[derive(Serialize, ToSchema)]
pub struct Health {
    /// `ok`, or `unavailable` when the database did not answer.
    #[schema(schema_with = health_status_schema)]
    status: &'static str,
    /// `up` or `down`.
    #[schema(schema_with = db_state_schema)]
    db: &'static str,
    /// The backend in use now (after a switch, the new one).
    #[schema(schema_with = backend_schema)]
    backend: Backend,
    /// Whether writes are paused.
    read_only: bool,
    /// Whether the database is retired (its data moved to another one).
    retired: bool,
    /// Each read replica, in the order configured (`INTERVIEW_POSTGRES_REPLICA_URLS`);
    /// absent without replicas. A replica out of rotation does not make the server unhealthy:
    /// its reads go to the primary.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    #[schema(required = false)]
    replicas: Vec<ReplicaHealth>,
}

/// One read replica in `/health`.
#[derive(Serialize, ToSchema)]
pub struct ReplicaHealth {
    /// Whether it serves reads now (reachable, and lagging no more than the bound).
    in_rotation: bool,
    /// How far its replay is behind the primary, in seconds, as last measured; null when unknown.
    lag_seconds: Option<f64>,
}

fn health_status_schema() -> Object {
    one_of(
        &["ok", "unavailable"],
        "`ok`, or `unavailable` when the database did not answer.",
    )
}

fn db_state_schema() -> Object {
    one_of(&["up", "down"], "Whether the database answered.")
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

/// Reads a session id in its one accepted spelling (see [`ID_PATTERN`]).
///
/// Nothing is trimmed and no other UUID form (braces, `urn:uuid:`, upper
/// case, no hyphens) is taken, so one session has one URL.
fn parse_id(raw: &str) -> Result<Uuid, ApiError> {
    match Uuid::try_parse(raw) {
        Ok(id) if id.hyphenated().to_string() == raw => Ok(id),
        _ => {
            let shown: String = raw.chars().take(60).collect();
            Err(ApiError::input(format!(
                "invalid session id {shown:?}: expected a lower-case hyphenated UUID \
                 ({ID_PATTERN}), nothing around it"
            )))
        }
    }
}

/// The header carrying a [`crate::Position`]: on a write's answer, the
/// primary's position after it; on a session read, the position the read must
/// have seen (a replica that has not replayed it does not serve the read).
pub const POSITION_HEADER: &str = "interview-position";

/// The position a read asks for, from [`POSITION_HEADER`]; absent is `None`.
///
/// An empty header is absent too: a client that echoes a write's answer
/// headers sends an empty one after a write on SQLite or without replicas
/// (no position was given), and that is no position rather than a bad one.
fn read_position(headers: &HeaderMap) -> Result<Option<crate::Position>, ApiError> {
    let Some(v) = headers.get(POSITION_HEADER) else {
        return Ok(None);
    };
    if v.is_empty() {
        return Ok(None);
    }
    v.to_str()
        .ok()
        .and_then(|v| v.parse().ok())
        .map(Some)
        .ok_or_else(|| {
            ApiError::input(format!(
                "invalid {POSITION_HEADER} header: expected a WAL position like 16/B374D848, \
                 as a write's answer carried it"
            ))
        })
}

/// `response` with [`POSITION_HEADER`] set to this process's last write to `session`, if known.
fn with_position(state: &AppState, session: Uuid, mut response: Response) -> Response {
    if let Some(p) = state.store.current().position_of(session) {
        if let Ok(v) = header::HeaderValue::from_str(&p.to_string()) {
            response.headers_mut().insert(POSITION_HEADER, v);
        }
    }
    response
}

/// The body for a shadow comparison, as it is sent.
fn to_value(body: &impl Serialize) -> crate::Result<Value> {
    serde_json::to_value(body).map_err(|e| crate::Error::Corrupt {
        what: "a response body".into(),
        reason: e.to_string(),
    })
}

/// The server's health and its database's.
#[utoipa::path(
    get,
    path = "/health",
    operation_id = "health",
    tag = "service",
    responses(
        (status = 200, description = "Up, and so is the database.", body = Health),
        (status = 503, description = "The database is down (a `Health` body), or the server is \
            at its limit of concurrent requests (an error body).",
            body = inline(HealthOrError)),
    )
)]
async fn health(State(state): State<AppState>) -> Response {
    // The store in use now: after a switch, /health names the new backend.
    let store = state.store.current();
    let replicas = store.replicas();
    // Store::health bounds its own wait; this task only keeps it off the async workers.
    let h = match tokio::task::spawn_blocking(move || store.health()).await {
        Ok(h) => h,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    };
    let body = Health {
        status: if h.db_up { "ok" } else { "unavailable" },
        db: if h.db_up { "up" } else { "down" },
        backend: h.backend,
        read_only: h.read_only,
        // Whether, not where: the destination would tell how the databases are wired.
        retired: h.retired_to.is_some(),
        replicas: replicas
            .iter()
            .map(|r| ReplicaHealth {
                in_rotation: r.in_rotation,
                lag_seconds: r.lag.map(|l| l.as_secs_f64()),
            })
            .collect(),
    };
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

/// A `/health` 503: the database is down, or the server is at its limit.
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
#[allow(dead_code)] // Only documents the two shapes; the handler and `finish_errors` build them.
enum HealthOrError {
    Health(Health),
    Error(ErrorBody),
}

/// Prometheus metrics, in the text exposition format.
#[utoipa::path(
    get,
    path = "/metrics",
    operation_id = "metrics",
    tag = "service",
    responses(
        (status = 200, description = "Requests, store operations, pool, breaker, cutover.",
            body = String, content_type = "text/plain"),
    )
)]
async fn metrics_text(State(state): State<AppState>) -> impl IntoResponse {
    let store = state.store.current();
    metrics::replicas(&store);
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        metrics::render(store.pool_state()),
    )
}

/// This document.
#[utoipa::path(
    get,
    path = "/openapi.json",
    operation_id = "openapi",
    tag = "service",
    responses((status = 200, description = "The OpenAPI 3.1 document of this API.", body = Object)),
)]
async fn openapi_json() -> Json<&'static Value> {
    Json(super::openapi())
}

/// The start of a session: its id and the interviewer's opening message.
#[derive(Serialize, ToSchema)]
#[schema(as = Started)]
pub struct StartResponse {
    /// The new session's id.
    session_id: Uuid,
    /// When the session started.
    created_at: DateTime<Utc>,
    /// The interviewer's opening message.
    reply: MessageBody,
}

/// Starts a session; the interviewer speaks first.
#[utoipa::path(
    post,
    path = "/interview/start",
    operation_id = "start_session",
    tag = "interview",
    request_body(content = Option<Object>, content_type = "application/json",
        description = "`{}`, or no body at all; any other JSON object is accepted and ignored."),
    params(
        ("Idempotency-Key" = Option<String>, Header, nullable = false, pattern = "^[!-~]{1,255}$",
            description = "1 to 255 visible ASCII characters. A repeat with the same key and \
                request gets the first answer and stores nothing."),
    ),
    responses(
        (status = 201, description = "Started.", body = StartResponse,
            headers(("idempotent-replayed" = String, description = "`true` on the recorded answer to a repeat."),
                ("interview-position" = String, description = "The primary's WAL position after this write, when replicas are configured: send it back as `Interview-Position` on reads.")),
            links(
                ("GetSession" = (operation_id = "get_session",
                    parameters(("id" = "$response.body#/session_id")))),
                ("Chat" = (operation_id = "chat",
                    request_body = json!({"session_id": "$response.body#/session_id"}))),
                ("SaveDraft" = (operation_id = "save_draft",
                    request_body = json!({"session_id": "$response.body#/session_id"}))),
                ("GetLatestDraft" = (operation_id = "get_latest_draft",
                    parameters(("id" = "$response.body#/session_id")))),
            )),
        (status = 400, description = "The body is not a JSON object, or a bad `Idempotency-Key`.", body = ErrorBody),
        (status = 409, description = "A request with this `Idempotency-Key` is still running.", body = ErrorBody),
        (status = 413, description = "The body is over 64 KiB.", body = ErrorBody),
        (status = 422, description = "This `Idempotency-Key` was used with a different request.", body = ErrorBody),
        (status = 503, description = "Writes are paused or the database is unavailable.", body = ErrorBody),
    )
)]
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
    let response = (StatusCode::CREATED, Json(start_json(&session, &reply))).into_response();
    Ok(with_position(&state, session.id, response))
}

fn start_json(session: &crate::Session, reply: &Message) -> StartResponse {
    StartResponse {
        session_id: session.id,
        created_at: session.created_at,
        reply: reply.into(),
    }
}

/// One answer of the person interviewed.
#[derive(Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct ChatRequest {
    /// The session, as `start` named it.
    #[schema(
        pattern = "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$",
        format = Uuid
    )]
    session_id: String,
    /// The answer: some text besides white space, at most 32 KiB of UTF-8, no NUL.
    #[schema(
        pattern = "^[^\\u0000]*[^\\u0000\\u0009-\\u000d\\u0020\\u0085\\u00a0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000][^\\u0000]*$",
        max_length = 32768
    )]
    text: String,
}

/// The answer as stored, and the interviewer's reply.
#[derive(Serialize, ToSchema)]
#[schema(as = ChatTurn)]
pub struct ChatResponse {
    /// The session.
    session_id: Uuid,
    /// The answer, as stored.
    message: MessageBody,
    /// The interviewer's reply.
    reply: MessageBody,
}

/// Answers in a session; the interviewer replies, in the same transaction.
#[utoipa::path(
    post,
    path = "/interview/chat",
    operation_id = "chat",
    tag = "interview",
    request_body = ChatRequest,
    params(
        ("Idempotency-Key" = Option<String>, Header, nullable = false, pattern = "^[!-~]{1,255}$",
            description = "1 to 255 visible ASCII characters. A repeat with the same key and \
                request gets the first answer and stores nothing."),
    ),
    responses(
        (status = 200, description = "Stored, with the reply.", body = ChatResponse,
            headers(("idempotent-replayed" = String, description = "`true` on the recorded answer to a repeat."),
                ("interview-position" = String, description = "The primary's WAL position after this write, when replicas are configured: send it back as `Interview-Position` on reads."))),
        (status = 400, description = "Malformed body, a bad session id, empty or too long text, \
            or a bad `Idempotency-Key`.", body = ErrorBody),
        (status = 404, description = "No such session.", body = ErrorBody),
        (status = 409, description = "A request with this `Idempotency-Key` is still running.", body = ErrorBody),
        (status = 413, description = "The body is over 64 KiB.", body = ErrorBody),
        (status = 422, description = "This `Idempotency-Key` was used with a different request.", body = ErrorBody),
        (status = 503, description = "Writes are paused or the database is unavailable.", body = ErrorBody),
    )
)]
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
    let response = match written {
        Written::Answer(response) => response,
        Written::Done(turn) => Json(chat_json(id, &turn)).into_response(),
    };
    Ok(with_position(&state, id, response))
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
    // From the primary: a reply computed from a replica's stale history would be stored.
    let mut history = store.primary().get_session(id)?.messages;
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
            match <&[Message; 2]>::try_from(stored) {
                Ok(turn) => super::idempotency::recorded(StatusCode::OK, &chat_json(id, turn)),
                // Two turns in, two messages out; otherwise the caller answers 500 below.
                Err(_) => {
                    super::idempotency::recorded(StatusCode::INTERNAL_SERVER_ERROR, &Value::Null)
                }
            }
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

fn chat_json(id: Uuid, turn: &[Message; 2]) -> ChatResponse {
    ChatResponse {
        session_id: id,
        message: (&turn[0]).into(),
        reply: (&turn[1]).into(),
    }
}

/// A session with every message, in order.
#[derive(Serialize, ToSchema)]
#[schema(as = Session)]
pub struct SessionBody {
    /// The session's id.
    id: Uuid,
    /// When it started.
    created_at: DateTime<Utc>,
    /// When a message was last stored or the summary last changed.
    updated_at: DateTime<Utc>,
    /// The interviewer's running summary; empty at first.
    summary: String,
    /// Every message, in the order stored.
    messages: Vec<MessageBody>,
}

/// A session and its messages.
#[utoipa::path(
    get,
    path = "/interview/session/{id}",
    operation_id = "get_session",
    tag = "interview",
    params(
        ("id" = String, Path, format = Uuid,
            pattern = "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$",
            description = "The session id, lower-case and hyphenated, as `start` named it."),
        ("Interview-Position" = Option<String>, Header, nullable = false,
            pattern = "^([0-9A-Fa-f]{1,8}/[0-9A-Fa-f]{1,8})?$",
            description = "The `interview-position` header of an earlier write's answer: the read \
                then sees that write (a replica serves it only once it has replayed it). \
                Empty is the same as absent."),
    ),
    responses(
        (status = 200, description = "The session.", body = SessionBody),
        (status = 400, description = "Not a session id in its one spelling, or a bad `Interview-Position`.", body = ErrorBody),
        (status = 404, description = "No such session.", body = ErrorBody),
        (status = 503, description = "The database is unavailable.", body = ErrorBody),
    )
)]
async fn session(
    State(state): State<AppState>,
    Path(raw): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let id = parse_id(&raw)?;
    let after = read_position(&headers)?;
    let answer = call(&state, "get_session", move |store| {
        session_answer(&store.after(after), id)
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
        body: to_value(&SessionBody {
            id: s.session.id,
            created_at: s.session.created_at,
            updated_at: s.session.updated_at,
            summary: s.session.summary.clone(),
            messages: s.messages.iter().map(MessageBody::from).collect(),
        })?,
        changed_at: Some(s.session.updated_at),
    })
}

/// A draft to save: the given text, or one composed from the conversation.
#[derive(Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct DraftRequest {
    /// The session, as `start` named it.
    #[schema(
        pattern = "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$",
        format = Uuid
    )]
    session_id: String,
    /// The draft, at most 32 KiB of UTF-8, no NUL; left out or `null`, the
    /// interviewer composes one from the conversation.
    #[schema(pattern = "^[^\\u0000]*$", max_length = 32768)]
    content: Option<String>,
}

/// Saves a draft of a session.
#[utoipa::path(
    post,
    path = "/interview/draft",
    operation_id = "save_draft",
    tag = "interview",
    request_body = DraftRequest,
    params(
        ("Idempotency-Key" = Option<String>, Header, nullable = false, pattern = "^[!-~]{1,255}$",
            description = "1 to 255 visible ASCII characters. A repeat with the same key and \
                request gets the first answer and stores nothing."),
    ),
    responses(
        (status = 201, description = "Saved.", body = DraftBody,
            headers(("idempotent-replayed" = String, description = "`true` on the recorded answer to a repeat."),
                ("interview-position" = String, description = "The primary's WAL position after this write, when replicas are configured: send it back as `Interview-Position` on reads.")),
            links(
                ("GetLatestDraft" = (operation_id = "get_latest_draft",
                    parameters(("id" = "$response.body#/session_id")))),
            )),
        (status = 400, description = "Malformed body, a bad session id, too long content, \
            or a bad `Idempotency-Key`.", body = ErrorBody),
        (status = 404, description = "No such session.", body = ErrorBody),
        (status = 409, description = "A request with this `Idempotency-Key` is still running.", body = ErrorBody),
        (status = 413, description = "The body is over 64 KiB.", body = ErrorBody),
        (status = 422, description = "This `Idempotency-Key` was used with a different request.", body = ErrorBody),
        (status = 503, description = "Writes are paused or the database is unavailable.", body = ErrorBody),
    )
)]
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
                None => interviewer.compose_draft(&store.primary().get_session(id)?.messages),
            };
            match ticket {
                Some(t) => store.save_draft_once(t, id, &content, |d| {
                    super::idempotency::recorded(StatusCode::CREATED, &DraftBody::from(d))
                }),
                None => store.save_draft(id, &content),
            }
        },
    )
    .await?;
    let response = match written {
        Written::Answer(response) => response,
        Written::Done(draft) => {
            (StatusCode::CREATED, Json(DraftBody::from(&draft))).into_response()
        }
    };
    Ok(with_position(&state, id, response))
}

/// The latest draft of a session.
#[utoipa::path(
    get,
    path = "/interview/draft/latest/{id}",
    operation_id = "get_latest_draft",
    tag = "interview",
    params(
        ("id" = String, Path, format = Uuid,
            pattern = "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$",
            description = "The session id, lower-case and hyphenated, as `start` named it."),
        ("Interview-Position" = Option<String>, Header, nullable = false,
            pattern = "^([0-9A-Fa-f]{1,8}/[0-9A-Fa-f]{1,8})?$",
            description = "The `interview-position` header of an earlier write's answer: the read \
                then sees that write (a replica serves it only once it has replayed it). \
                Empty is the same as absent."),
    ),
    responses(
        (status = 200, description = "The latest draft.", body = DraftBody),
        (status = 400, description = "Not a session id in its one spelling, or a bad `Interview-Position`.", body = ErrorBody),
        (status = 404, description = "No such session, or no draft of it yet.", body = ErrorBody),
        (status = 503, description = "The database is unavailable.", body = ErrorBody),
    )
)]
async fn latest_draft(
    State(state): State<AppState>,
    Path(raw): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let id = parse_id(&raw)?;
    let after = read_position(&headers)?;
    let answer = call(&state, "latest_draft", move |store| {
        draft_answer(&store.after(after), id)
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
            body: to_value(&DraftBody::from(&d))?,
            changed_at: Some(d.created_at),
        },
        None => Answer {
            body: Value::Null,
            changed_at: None,
        },
    })
}

/// Pauses or resumes writes.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct MaintenanceRequest {
    /// `true` pauses writes in the database (every server on it), `false` resumes them.
    read_only: bool,
}

/// Whether writes are paused now.
#[derive(Serialize, ToSchema)]
#[schema(as = Maintenance)]
pub struct MaintenanceResponse {
    /// Whether writes are paused, as the database says after the change.
    read_only: bool,
}

/// Pauses or resumes writes (admin; off unless `INTERVIEW_ADMIN_TOKEN` is set).
#[utoipa::path(
    post,
    path = "/admin/maintenance",
    operation_id = "set_maintenance",
    tag = "admin",
    request_body = MaintenanceRequest,
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "Done; once writes are paused, none can commit.", body = MaintenanceResponse),
        (status = 400, description = "Not `{\"read_only\": true|false}`.", body = ErrorBody),
        (status = 401, description = "Missing or wrong bearer token.", body = ErrorBody),
        (status = 404, description = "Admin endpoints are off: `INTERVIEW_ADMIN_TOKEN` is not set.", body = ErrorBody),
        (status = 413, description = "The body is over 64 KiB.", body = ErrorBody),
        (status = 503, description = "The database is unavailable or retired.", body = ErrorBody),
    )
)]
async fn maintenance(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Json<MaintenanceResponse>, ApiError> {
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
    Ok(Json(MaintenanceResponse {
        read_only: now.paused,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every `pattern` of a session id in the document (written out in the
    /// attributes, which take literals only) is [`ID_PATTERN`].
    #[test]
    fn id_patterns_in_the_document_are_the_one_spelling() {
        let doc = super::super::openapi();
        let mut seen = 0;
        let mut check = |schema: &Value| {
            assert_eq!(schema["pattern"], ID_PATTERN, "{schema}");
            seen += 1;
        };
        for path in ["/interview/session/{id}", "/interview/draft/latest/{id}"] {
            check(&doc["paths"][path]["get"]["parameters"][0]["schema"]);
        }
        for body in ["ChatRequest", "DraftRequest"] {
            check(&doc["components"]["schemas"][body]["properties"]["session_id"]);
        }
        assert_eq!(seen, 4);
    }

    #[test]
    fn only_the_canonical_spelling_is_an_id() {
        let id = Uuid::now_v7();
        let canonical = id.to_string();
        assert_eq!(parse_id(&canonical).unwrap(), id);
        for other in [
            format!(" {canonical} "),
            format!("{canonical}\n"),
            format!("\t{canonical}"),
            format!("{{{canonical}}}"),
            format!("urn:uuid:{canonical}"),
            canonical.to_uppercase(),
            id.simple().to_string(),
            String::new(),
        ] {
            let e = parse_id(&other).unwrap_err();
            assert_eq!(e.status, StatusCode::BAD_REQUEST, "{other:?}");
        }
    }
}
