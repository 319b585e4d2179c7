//! Errors as HTTP responses: `{"error":{"category","message"}}`.

use axum::extract::rejection::JsonRejection;
use axum::extract::FromRequest;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde_json::json;

use crate::error::{Category, Error};

/// An error answer: status, category and a message for the client.
#[derive(Debug)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// `input`, `not_found`, `db`, `unavailable`, `read_only` (or `auth`, `internal`).
    pub category: &'static str,
    /// What went wrong.
    pub message: String,
}

impl ApiError {
    /// A 400 `input` error.
    pub fn input(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            category: Category::Input.as_str(),
            message: message.into(),
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
        if category == Category::Db {
            log::error!("database error: {e}");
        }
        let message = match e {
            // Where the data went would tell clients how the databases are wired.
            Error::Retired { .. } => {
                log::warn!("{e}");
                "writes are refused: this database is retired".to_string()
            }
            e => e.to_string(),
        };
        ApiError {
            status,
            category: category.as_str(),
            message,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {"category": self.category, "message": self.message}});
        let mut response = (self.status, axum::Json(body)).into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        }
        response
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
        return ApiError {
            status,
            category: Category::Input.as_str(),
            message: format!(
                "request body is over the limit of {} bytes",
                super::MAX_BODY_BYTES
            ),
        };
    }
    // Missing fields, wrong types, malformed JSON or a wrong content type are all the caller's.
    ApiError::input(r.body_text())
}

/// The router's answer to a handler that panicked: a 500, and the server goes on.
pub fn panic_response(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    log::error!("a request handler panicked");
    ApiError {
        status: StatusCode::INTERNAL_SERVER_ERROR,
        category: "internal",
        message: "internal error".into(),
    }
    .into_response()
}
