//! Routes for reference images and drafts: `POST /v1/uploads` and
//! `POST /v1/jobs/{jobId}:finalize`.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::auth::Caller;
use super::error::ApiError;
use super::routes::HttpState;
use crate::domain::{ErrorCode, Tenant};
use crate::fetch::{FetchError, ImageSource};
use crate::service::finalize::{self, FinalizeError};
use crate::service::submit::SubmitError;
use crate::service::{inputs, jobs};

/// `POST /v1/uploads`: a presigned PUT URL and the reference a job uses to name the upload.
pub(super) async fn create_upload(
    State(state): State<HttpState>,
    Caller(tenant): Caller,
) -> Result<Response, ApiError> {
    let ticket = inputs::create_upload(&state.app, &tenant.id).await?;
    Ok((StatusCode::CREATED, Json(ticket)).into_response())
}

/// Parse and check a submitted `inputImageUrl` as far as it can be before the job exists.
pub(super) async fn input_source(
    state: &HttpState,
    tenant: &Tenant,
    raw: &str,
) -> Result<ImageSource, ApiError> {
    let source = ImageSource::parse(raw, state.app.settings.allow_http_urls)
        .map_err(|e| ApiError::bad(ErrorCode::InvalidImageUrl, e.to_string()))?;
    match inputs::check_source(&state.app, &tenant.id, &source).await {
        Ok(()) => Ok(source),
        Err(FetchError::Refused(code, message)) => Err(ApiError::bad(code, message)),
        Err(FetchError::Transient(message)) => {
            tracing::warn!(tenant_id = %tenant.id, reason = %message, "input check unavailable");
            Err(ApiError::Unavailable)
        }
    }
}

/// `POST /v1/jobs/{jobId}:finalize`: 202 with the new final job, 200 with the same one when
/// the draft was finalized before.
pub(super) async fn finalize_job(
    state: &HttpState,
    tenant: &Tenant,
    id: &str,
) -> Result<Response, ApiError> {
    let draft = jobs::find(&state.app, &tenant.id, id)
        .await?
        .ok_or(ApiError::NotFound)?;
    let accepted = finalize::finalize(&state.app, tenant, &draft)
        .await
        .map_err(|e| match e {
            FinalizeError::NotFinalizable { .. } => {
                ApiError::Conflict(ErrorCode::JobNotFinalizable, e.to_string())
            }
            FinalizeError::Submit(SubmitError::RateLimited(wait)) => ApiError::TooManyRequests(
                ErrorCode::RateLimited,
                format!(
                    "more than {} requests in a minute",
                    tenant.plan.requests_per_minute
                ),
                Some(wait),
            ),
            FinalizeError::Submit(SubmitError::DailyCapReached) => ApiError::TooManyRequests(
                ErrorCode::DailyCapReached,
                format!("daily cap of {} jobs reached", tenant.plan.daily_cap),
                None,
            ),
            FinalizeError::Submit(SubmitError::KeyReused) => ApiError::Conflict(
                ErrorCode::IdempotencyKeyReused,
                "this draft's finalize key was used for another request".into(),
            ),
            FinalizeError::Submit(SubmitError::InProgress(wait)) => ApiError::InProgress(wait),
            FinalizeError::Submit(SubmitError::Port(e)) => e.into(),
        })?;

    let status = if accepted.created {
        StatusCode::ACCEPTED
    } else {
        StatusCode::OK
    };
    let location = format!("/v1/jobs/{}", accepted.job.id);
    // A repeat answers with the final job as it is now, as the first answer's view would.
    let job = match accepted.new_job {
        Some(job) => *job,
        None => state
            .app
            .store
            .get_job(&accepted.job.id)
            .await?
            .ok_or(ApiError::Internal)?,
    };
    let view = jobs::view(&state.app, &job, state.app.settings.result_url_ttl).await?;
    Ok((status, [(header::LOCATION, location)], Json(view)).into_response())
}
