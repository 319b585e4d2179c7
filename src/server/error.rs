//! Errors as HTTP responses: `{"error":{"category","message","request_id"}}`.
//!
//! A client learns what happened, never how the database is wired: for
//! `db`, `unavailable` and `internal` errors the body carries a plain message,
//! and the full detail (URL masked, driver text, SQL) goes to the log line
//! under the same request id as the `x-request-id` response header.

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde::Serialize;
use utoipa::openapi::schema::{Object, ObjectBuilder, Type};
use utoipa::ToSchema;

use crate::error::{Category, Error};

/// An error answer: status, category and a message for the client.
#[derive(Debug)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// `input`, `not_found`, `db`, `unavailable`, `read_only` (or `auth`, `internal`).
    pub category: &'static str,
    /// What went wrong, for the client.
    pub message: String,
    /// What went wrong in full, for the log only.
    pub detail: Option<String>,
}

/// Every error answer's body: `{"error": {...}}`.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Error)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: ErrorDetail,
}

/// What went wrong, for the client.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// The kind of error: `input` (the request's fault, 400, 413, 422), `not_found`,
    /// `auth` (401), `conflict` (409), `read_only` (writes paused, 503),
    /// `unavailable` (database down, overload or timeout: 408, 503), `db`
    /// and `internal` (500).
    #[schema(schema_with = category_schema)]
    pub category: &'static str,
    /// A message for a human; for `db`, `unavailable` and `internal` it tells
    /// nothing of how the database is wired (the server log has the detail).
    pub message: String,
    /// The request's id, as in the `x-request-id` response header (`-` if none).
    pub request_id: String,
}

/// Every category an error body may carry.
pub const CATEGORIES: [&str; 8] = [
    "input",
    "not_found",
    "auth",
    "conflict",
    "read_only",
    "unavailable",
    "db",
    "internal",
];

fn category_schema() -> Object {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some(CATEGORIES))
        .description(Some(
            "The kind of error: `input` (the request's fault: 400, 413, 422), `not_found`, \
             `auth` (401), `conflict` (409), `read_only` (writes paused: 503), `unavailable` \
             (database down, overload or timeout: 408, 503), `db` and `internal` (500).",
        ))
        .build()
}

/// What a handler's error response carries to [`finish_errors`], which writes the body.
#[derive(Debug, Clone)]
struct ErrorReport {
    category: &'static str,
    message: String,
    detail: Option<String>,
}

impl ApiError {
    /// A 400 `input` error.
    pub fn input(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            category: Category::Input.as_str(),
            message: message.into(),
            detail: None,
        }
    }

    /// An error of the given status and category whose message is fit for the client as it is.
    pub fn new(status: StatusCode, category: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            category,
            message: message.into(),
            detail: None,
        }
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        let category = e.category();
        let status = match category {
            Category::Input => StatusCode::BAD_REQUEST,
            Category::NotFound => StatusCode::NOT_FOUND,
            Category::ReadOnly | Category::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Category::Db => StatusCode::INTERNAL_SERVER_ERROR,
        };
        super::metrics::store_error(category);
        // Only the caller's own mistakes are told as they are; the rest could
        // name the host, user, database or SQL, so they stay in the log.
        let (message, detail) = match category {
            // Where a retired database's data went would tell how the databases are wired.
            Category::ReadOnly if matches!(e, Error::Retired { .. }) => (
                "writes are refused: this database is retired".to_string(),
                Some(e.to_string()),
            ),
            Category::Input | Category::NotFound | Category::ReadOnly => (e.to_string(), None),
            Category::Unavailable => (
                "the database is unavailable; retry later".to_string(),
                Some(e.to_string()),
            ),
            Category::Db => (
                "the database failed; the server log has the detail under this request id"
                    .to_string(),
                Some(e.to_string()),
            ),
        };
        ApiError {
            status,
            category: category.as_str(),
            message,
            detail,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = self.status.into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        }
        response.extensions_mut().insert(ErrorReport {
            category: self.category,
            message: self.message,
            detail: self.detail,
        });
        response
    }
}

/// The longest client-supplied `x-request-id` kept.
const MAX_REQUEST_ID: usize = 128;

/// Middleware, outside the request-id layers: a client's `x-request-id` is
/// kept only when it is short and plain (letters, digits, `.`, `_`, `:`,
/// `-`); any other is dropped, so the request gets a fresh UUID. The id goes
/// into logs and error bodies, where a client must not write what it likes.
pub async fn drop_unfit_request_id(mut req: Request, next: Next) -> Response {
    let fit = |v: &axum::http::HeaderValue| {
        let b = v.as_bytes();
        !b.is_empty()
            && b.len() <= MAX_REQUEST_ID
            && b.iter()
                .all(|c| c.is_ascii_alphanumeric() || b"._:-".contains(c))
    };
    if req.headers().get("x-request-id").is_some_and(|v| !fit(v)) {
        req.headers_mut().remove("x-request-id");
    }
    next.run(req).await
}

/// Middleware: writes every error body with the request id, and logs what the client is not told.
///
/// Runs inside the request-id layers; error answers that do not come from an
/// [`ApiError`] (unknown route, wrong method, timeout) get the same shape.
pub async fn finish_errors(req: Request, next: Next) -> Response {
    let request_id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
        .to_string();
    let what = format!("{} {}", req.method(), req.uri().path());
    let response = next.run(req).await;
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    let (mut parts, body) = response.into_parts();
    let report = match parts.extensions.remove::<ErrorReport>() {
        Some(report) => report,
        // A handler's own JSON answer (e.g. /health's 503) stands.
        None if is_json => return Response::from_parts(parts, body),
        None => {
            // Bodies of the framework's own refusals (plain text) are not ours to pass on.
            drop(body);
            let text = status.canonical_reason().unwrap_or("error").to_lowercase();
            ErrorReport {
                category: fallback_category(status),
                message: text,
                detail: None,
            }
        }
    };
    match &report.detail {
        Some(detail) if status.is_server_error() => {
            log::error!(
                "request {request_id} {what}: {status} {}: {detail}",
                report.category
            )
        }
        Some(detail) => log::warn!("request {request_id} {what}: {status}: {detail}"),
        None if status.is_server_error() => log::warn!(
            "request {request_id} {what}: {status} {}: {}",
            report.category,
            report.message
        ),
        None => log::debug!("request {request_id} {what}: {status}"),
    }
    if status == StatusCode::SERVICE_UNAVAILABLE && !parts.headers.contains_key(header::RETRY_AFTER)
    {
        parts
            .headers
            .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
    }
    let body = ErrorBody {
        error: ErrorDetail {
            category: report.category,
            message: report.message,
            request_id,
        },
    };
    parts.headers.remove(header::CONTENT_LENGTH);
    (parts, axum::Json(body)).into_response()
}

fn fallback_category(status: StatusCode) -> &'static str {
    match status {
        StatusCode::NOT_FOUND => Category::NotFound.as_str(),
        StatusCode::REQUEST_TIMEOUT | StatusCode::SERVICE_UNAVAILABLE => {
            Category::Unavailable.as_str()
        }
        s if s.is_server_error() => "internal",
        _ => Category::Input.as_str(),
    }
}

/// `axum::Json`, with its rejections answered in the API's error shape.
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(ApiJson(v)),
            Err(rejection) => Err(json_rejection(rejection)),
        }
    }
}

fn json_rejection(r: JsonRejection) -> ApiError {
    let status = r.status();
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        return ApiError::new(
            status,
            Category::Input.as_str(),
            format!(
                "request body is over the limit of {} bytes",
                super::MAX_BODY_BYTES
            ),
        );
    }
    // Missing fields, wrong types, malformed JSON or a wrong content type are all the caller's.
    ApiError::input(r.body_text())
}

/// The router's answer to a handler that panicked: a 500, and the server goes on.
pub fn panic_response(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    log::error!("a request handler panicked");
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal",
        "internal error",
    )
    .into_response()
}
