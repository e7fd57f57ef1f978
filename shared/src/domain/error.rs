use serde::{Deserialize, Serialize};

/// Stable error codes, shared by API responses and failed jobs.
///
/// The serialized names are part of the public contract (`docs/contract.md`); never rename one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ErrorCode {
    // Request errors.
    InvalidJson,
    InvalidRequest,
    InvalidPrompt,
    InvalidMode,
    InvalidImageUrl,
    InvalidWebhookUrl,
    InvalidIdempotencyKey,
    InvalidCursor,
    InvalidDeadline,
    PayloadTooLarge,
    UnsupportedMediaType,
    Unauthorized,
    NotFound,
    MethodNotAllowed,
    RateLimited,
    DailyCapReached,
    IdempotencyKeyReused,
    IdempotencyInProgress,
    JobNotCancelable,
    JobNotFinished,
    WebhookNotConfigured,
    WebhookDisabled,
    JobNotFinalizable,
    UnsupportedImageType,
    ResourceExists,
    ResourceInUse,
    Unavailable,
    Internal,
    // Job failure codes.
    UpstreamRateLimited,
    UpstreamUnavailable,
    UpstreamTimeout,
    UpstreamError,
    ContentRefused,
    NoImage,
    InvalidInput,
    /// The reference image could not be fetched for now (DNS, connection, 5xx); retried.
    InputImageUnavailable,
    Expired,
    Poison,
    /// The upstream refused the key used; the key is disabled and another one tried.
    UpstreamKeyRejected,
}

impl ErrorCode {
    /// The code as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidJson => "INVALID_JSON",
            Self::InvalidRequest => "INVALID_REQUEST",
            Self::InvalidPrompt => "INVALID_PROMPT",
            Self::InvalidMode => "INVALID_MODE",
            Self::InvalidImageUrl => "INVALID_IMAGE_URL",
            Self::InvalidWebhookUrl => "INVALID_WEBHOOK_URL",
            Self::InvalidIdempotencyKey => "INVALID_IDEMPOTENCY_KEY",
            Self::InvalidCursor => "INVALID_CURSOR",
            Self::InvalidDeadline => "INVALID_DEADLINE",
            Self::PayloadTooLarge => "PAYLOAD_TOO_LARGE",
            Self::UnsupportedMediaType => "UNSUPPORTED_MEDIA_TYPE",
            Self::Unauthorized => "UNAUTHORIZED",
            Self::NotFound => "NOT_FOUND",
            Self::MethodNotAllowed => "METHOD_NOT_ALLOWED",
            Self::RateLimited => "RATE_LIMITED",
            Self::DailyCapReached => "DAILY_CAP_REACHED",
            Self::IdempotencyKeyReused => "IDEMPOTENCY_KEY_REUSED",
            Self::IdempotencyInProgress => "IDEMPOTENCY_IN_PROGRESS",
            Self::JobNotCancelable => "JOB_NOT_CANCELABLE",
            Self::JobNotFinished => "JOB_NOT_FINISHED",
            Self::WebhookNotConfigured => "WEBHOOK_NOT_CONFIGURED",
            Self::WebhookDisabled => "WEBHOOK_DISABLED",
            Self::JobNotFinalizable => "JOB_NOT_FINALIZABLE",
            Self::UnsupportedImageType => "UNSUPPORTED_IMAGE_TYPE",
            Self::ResourceExists => "RESOURCE_EXISTS",
            Self::ResourceInUse => "RESOURCE_IN_USE",
            Self::Unavailable => "UNAVAILABLE",
            Self::Internal => "INTERNAL",
            Self::UpstreamRateLimited => "UPSTREAM_RATE_LIMITED",
            Self::UpstreamUnavailable => "UPSTREAM_UNAVAILABLE",
            Self::UpstreamTimeout => "UPSTREAM_TIMEOUT",
            Self::UpstreamError => "UPSTREAM_ERROR",
            Self::ContentRefused => "CONTENT_REFUSED",
            Self::NoImage => "NO_IMAGE",
            Self::InvalidInput => "INVALID_INPUT",
            Self::InputImageUnavailable => "INPUT_IMAGE_UNAVAILABLE",
            Self::Expired => "EXPIRED",
            Self::Poison => "POISON",
            Self::UpstreamKeyRejected => "UPSTREAM_KEY_REJECTED",
        }
    }
}

/// Whether a failure is worth another attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureClass {
    /// Transient: throttling, 5xx, timeouts, broken connections, truncated answers.
    Retryable,
    /// Another attempt would fail the same way: bad input, refused content, forbidden.
    Final,
}

impl FailureClass {
    /// The class every job failure code belongs to, decided in this one place.
    pub fn of(code: ErrorCode) -> Self {
        match code {
            ErrorCode::UpstreamRateLimited
            | ErrorCode::UpstreamUnavailable
            | ErrorCode::UpstreamTimeout
            | ErrorCode::NoImage
            | ErrorCode::UpstreamKeyRejected
            | ErrorCode::Unavailable
            | ErrorCode::InputImageUnavailable
            | ErrorCode::Internal => Self::Retryable,
            _ => Self::Final,
        }
    }
}

/// Why a job failed, as shown to the tenant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobError {
    pub code: ErrorCode,
    pub message: String,
}

impl JobError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    pub fn class(&self) -> FailureClass {
        FailureClass::of(self.code)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_name_matches_serde_name_for_every_code() {
        let codes = [
            ErrorCode::InvalidJson,
            ErrorCode::DailyCapReached,
            ErrorCode::JobNotFinished,
            ErrorCode::WebhookNotConfigured,
            ErrorCode::WebhookDisabled,
            ErrorCode::UpstreamRateLimited,
            ErrorCode::Expired,
            ErrorCode::Poison,
        ];

        for code in codes {
            let json = serde_json::to_value(code).unwrap_or_default();
            assert_eq!(json.as_str(), Some(code.as_str()));
        }
    }

    #[test]
    fn throttling_and_outages_are_retryable_but_refusals_are_final() {
        assert_eq!(
            FailureClass::of(ErrorCode::UpstreamRateLimited),
            FailureClass::Retryable
        );
        assert_eq!(
            FailureClass::of(ErrorCode::UpstreamTimeout),
            FailureClass::Retryable
        );
        assert_eq!(
            FailureClass::of(ErrorCode::ContentRefused),
            FailureClass::Final
        );
        assert_eq!(
            FailureClass::of(ErrorCode::InvalidInput),
            FailureClass::Final
        );
    }
}
