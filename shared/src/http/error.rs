//! One error type for every route, mapped to a status and a stable code in one place.

use std::time::Duration;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;
use tracing::error;

use crate::domain::ErrorCode;
use crate::ports::PortError;

/// What a request can fail with. The message is for the client; causes are logged once.
#[derive(Debug)]
pub enum ApiError {
    /// Bad input: the code says which part.
    BadRequest(ErrorCode, String),
    PayloadTooLarge,
    UnsupportedMediaType,
    Unauthorized,
    NotFound,
    /// Something the request needs does not exist yet; the code says what.
    Missing(ErrorCode, String),
    /// The route exists; `Some` lists the methods it takes, for the `Allow` header.
    MethodNotAllowed(Option<&'static str>),
    /// A state conflict the client can act on (for example canceling a finished job).
    Conflict(ErrorCode, String),
    /// A request with the same idempotency key is still being written; retry after the wait.
    InProgress(Duration),
    /// The idempotency key was used with a different request.
    Unprocessable(ErrorCode, String),
    /// Over a limit; try again after the given wait.
    TooManyRequests(ErrorCode, String, Option<Duration>),
    /// A backing service is unavailable; the request can be retried.
    Unavailable,
    /// A bug or corrupt data. Logged; the client sees no detail.
    Internal,
}

impl ApiError {
    pub fn bad(code: ErrorCode, message: impl Into<String>) -> Self {
        Self::BadRequest(code, message.into())
    }

    fn parts(&self) -> (StatusCode, ErrorCode, String) {
        match self {
            Self::BadRequest(code, message) => (StatusCode::BAD_REQUEST, *code, message.clone()),
            Self::PayloadTooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                ErrorCode::PayloadTooLarge,
                "request body is larger than 1 MiB".into(),
            ),
            Self::UnsupportedMediaType => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                ErrorCode::UnsupportedMediaType,
                "send the body as application/json".into(),
            ),
            Self::Unauthorized => (
                StatusCode::UNAUTHORIZED,
                ErrorCode::Unauthorized,
                "missing or invalid API key".into(),
            ),
            Self::NotFound => (
                StatusCode::NOT_FOUND,
                ErrorCode::NotFound,
                "no such resource".into(),
            ),
            Self::Missing(code, message) => (StatusCode::NOT_FOUND, *code, message.clone()),
            Self::MethodNotAllowed(_) => (
                StatusCode::METHOD_NOT_ALLOWED,
                ErrorCode::MethodNotAllowed,
                "method not allowed on this resource".into(),
            ),
            Self::Conflict(code, message) => (StatusCode::CONFLICT, *code, message.clone()),
            Self::InProgress(_) => (
                StatusCode::CONFLICT,
                ErrorCode::IdempotencyInProgress,
                "a request with this Idempotency-Key is still being processed; retry after the \
                 Retry-After delay"
                    .into(),
            ),
            Self::Unprocessable(code, message) => {
                (StatusCode::UNPROCESSABLE_ENTITY, *code, message.clone())
            }
            Self::TooManyRequests(code, message, _) => {
                (StatusCode::TOO_MANY_REQUESTS, *code, message.clone())
            }
            Self::Unavailable => (
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorCode::Unavailable,
                "the service is briefly unavailable; retry shortly".into(),
            ),
            Self::Internal => (
                StatusCode::INTERNAL_SERVER_ERROR,
                ErrorCode::Internal,
                "internal error".into(),
            ),
        }
    }
}

impl From<PortError> for ApiError {
    fn from(e: PortError) -> Self {
        match e {
            PortError::Unavailable(cause) => {
                error!(cause, "backing service unavailable");
                Self::Unavailable
            }
            PortError::Internal(cause) => {
                error!(cause, "internal error");
                Self::Internal
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code, message) = self.parts();
        let body = json!({ "error": { "code": code.as_str(), "message": message } });
        let mut response = (status, Json(body)).into_response();
        let wait = match &self {
            Self::TooManyRequests(_, _, wait) => *wait,
            Self::InProgress(wait) => Some(*wait),
            Self::Unavailable => Some(Duration::from_secs(1)),
            _ => None,
        };
        if let Self::MethodNotAllowed(Some(allow)) = &self {
            response
                .headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static(allow));
        }
        if let Some(wait) = wait {
            let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            if let Ok(value) = HeaderValue::from_str(&seconds.max(1).to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, value);
            }
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_contended_idempotency_key_answers_409_with_retry_after() {
        let response = ApiError::InProgress(Duration::from_millis(1500)).into_response();

        assert_eq!(response.status(), StatusCode::CONFLICT);
        let retry = response.headers().get(header::RETRY_AFTER);
        assert_eq!(retry.and_then(|v| v.to_str().ok()), Some("2"));
    }
}
