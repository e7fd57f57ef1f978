//! Webhook routes: the endpoint (tenant and admin), secret rotation, a job's delivery log, and
//! replay.

use std::time::Duration;

use axum::extract::{FromRequestParts, Path, State};
use axum::http::{request::Parts, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use secrecy::ExposeSecret;
use serde::Deserialize;
use serde_json::json;

use super::auth::{Caller, Operator};
use super::error::ApiError;
use super::extract::{ApiJson, ApiQuery, OptionalApiJson};
use super::routes::HttpState;
use crate::domain::{ErrorCode, Job, JobId, TenantId, WebhookEvent, WebhookUrl};
use crate::service::jobs;
use crate::service::webhooks::{
    self, ConfigError, EndpointSettings, ReplayError, DEFAULT_ROTATION_OVERLAP,
};

/// The webhook routes, merged into the API router.
pub(super) fn routes() -> Router<HttpState> {
    Router::new()
        .route("/v1/webhook", get(get_own).put(put_own).delete(delete_own))
        .route("/v1/webhook/secret:rotate", post(rotate_own))
        .route(
            "/v1/admin/tenants/{tenant}/webhook",
            get(get_any).put(put_any).delete(delete_any),
        )
        .route(
            "/v1/admin/tenants/{tenant}/webhook/secret:rotate",
            post(rotate_any),
        )
        .route("/v1/jobs/{job}/deliveries", get(deliveries))
        .route("/v1/webhooks/replay", post(replay))
}

/// A tenant (for its own resources) or an operator (for any).
enum Actor {
    Tenant(TenantId),
    Operator,
}

impl FromRequestParts<HttpState> for Actor {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &HttpState,
    ) -> Result<Self, Self::Rejection> {
        if Operator::from_request_parts(parts, state).await.is_ok() {
            return Ok(Actor::Operator);
        }
        let Caller(tenant) = Caller::from_request_parts(parts, state).await?;
        Ok(Actor::Tenant(tenant.id))
    }
}

impl Actor {
    /// The job, if this actor may see it. Another tenant's job is simply not found.
    async fn job(&self, state: &HttpState, raw: &str) -> Result<Job, ApiError> {
        let job = match self {
            Actor::Tenant(tenant) => jobs::find(&state.app, tenant, raw).await?,
            Actor::Operator => match JobId::parse(raw) {
                Some(id) => state.app.store.get_job(&id).await?,
                None => None,
            },
        };
        job.ok_or(ApiError::NotFound)
    }
}

fn config_error(e: ConfigError) -> ApiError {
    match e {
        ConfigError::Url(message) => ApiError::bad(ErrorCode::InvalidWebhookUrl, message),
        ConfigError::NoEvents | ConfigError::Overlap => {
            ApiError::bad(ErrorCode::InvalidRequest, e.to_string())
        }
        ConfigError::NotConfigured => {
            ApiError::Missing(ErrorCode::WebhookNotConfigured, e.to_string())
        }
        ConfigError::UnknownTenant => ApiError::NotFound,
        ConfigError::Port(e) => e.into(),
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct EndpointBody {
    url: String,
    events: Option<Vec<WebhookEvent>>,
    enabled: Option<bool>,
}

/// The longest webhook URL accepted.
const MAX_URL_LEN: usize = 2048;

async fn put_endpoint(
    state: &HttpState,
    tenant: &TenantId,
    body: EndpointBody,
) -> Result<Response, ApiError> {
    if body.url.len() > MAX_URL_LEN {
        return Err(ApiError::bad(
            ErrorCode::InvalidWebhookUrl,
            format!("URL must be at most {MAX_URL_LEN} characters"),
        ));
    }
    let url = WebhookUrl::parse(&body.url, state.app.settings.allow_http_urls)
        .map_err(|e| ApiError::bad(ErrorCode::InvalidWebhookUrl, e.to_string()))?;
    let settings = EndpointSettings {
        url,
        events: body.events.unwrap_or_else(|| WebhookEvent::ALL.to_vec()),
        enabled: body.enabled.unwrap_or(true),
    };
    let configured = webhooks::configure(&state.app, tenant, settings)
        .await
        .map_err(config_error)?;

    let mut view = serde_json::to_value(&configured.view).map_err(|_| ApiError::Internal)?;
    if let Some(secret) = &configured.secret {
        view["secret"] = json!(secret.expose_secret());
    }
    Ok(Json(view).into_response())
}

async fn get_endpoint(state: &HttpState, tenant: &TenantId) -> Result<Response, ApiError> {
    let view = webhooks::get(&state.app, tenant)
        .await
        .map_err(config_error)?
        .ok_or_else(|| config_error(ConfigError::NotConfigured))?;
    Ok(Json(view).into_response())
}

async fn delete_endpoint(state: &HttpState, tenant: &TenantId) -> Result<Response, ApiError> {
    webhooks::remove(&state.app, tenant)
        .await
        .map_err(config_error)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RotateBody {
    /// Seconds the previous secret keeps signing.
    overlap_seconds: Option<u64>,
}

async fn rotate(
    state: &HttpState,
    tenant: &TenantId,
    body: RotateBody,
) -> Result<Response, ApiError> {
    let overlap = body
        .overlap_seconds
        .map_or(DEFAULT_ROTATION_OVERLAP, Duration::from_secs);
    let rotated = webhooks::rotate_secret(&state.app, tenant, overlap)
        .await
        .map_err(config_error)?;
    Ok(Json(json!({
        "secret": rotated.secret.expose_secret(),
        "previousSecretExpiresAt": rotated.previous_secret_expires_at,
    }))
    .into_response())
}

async fn get_own(State(state): State<HttpState>, Caller(t): Caller) -> Result<Response, ApiError> {
    get_endpoint(&state, &t.id).await
}

async fn put_own(
    State(state): State<HttpState>,
    Caller(t): Caller,
    ApiJson(body): ApiJson<EndpointBody>,
) -> Result<Response, ApiError> {
    put_endpoint(&state, &t.id, body).await
}

async fn delete_own(
    State(state): State<HttpState>,
    Caller(t): Caller,
) -> Result<Response, ApiError> {
    delete_endpoint(&state, &t.id).await
}

async fn rotate_own(
    State(state): State<HttpState>,
    Caller(t): Caller,
    OptionalApiJson(body): OptionalApiJson<RotateBody>,
) -> Result<Response, ApiError> {
    rotate(&state, &t.id, body).await
}

async fn get_any(
    State(state): State<HttpState>,
    _operator: Operator,
    Path(tenant): Path<String>,
) -> Result<Response, ApiError> {
    get_endpoint(&state, &TenantId::new(tenant)).await
}

async fn put_any(
    State(state): State<HttpState>,
    _operator: Operator,
    Path(tenant): Path<String>,
    ApiJson(body): ApiJson<EndpointBody>,
) -> Result<Response, ApiError> {
    put_endpoint(&state, &TenantId::new(tenant), body).await
}

async fn delete_any(
    State(state): State<HttpState>,
    _operator: Operator,
    Path(tenant): Path<String>,
) -> Result<Response, ApiError> {
    delete_endpoint(&state, &TenantId::new(tenant)).await
}

async fn rotate_any(
    State(state): State<HttpState>,
    _operator: Operator,
    Path(tenant): Path<String>,
    OptionalApiJson(body): OptionalApiJson<RotateBody>,
) -> Result<Response, ApiError> {
    rotate(&state, &TenantId::new(tenant), body).await
}

async fn deliveries(
    State(state): State<HttpState>,
    actor: Actor,
    Path(job): Path<String>,
) -> Result<Response, ApiError> {
    let job = actor.job(&state, &job).await?;
    let view = webhooks::deliveries(&state.app, &job).await?;
    Ok(Json(view).into_response())
}

#[derive(Deserialize)]
struct ReplayParams {
    job_id: Option<String>,
}

async fn replay(
    State(state): State<HttpState>,
    actor: Actor,
    ApiQuery(params): ApiQuery<ReplayParams>,
) -> Result<Response, ApiError> {
    let raw = params
        .job_id
        .filter(|id| !id.is_empty())
        .ok_or_else(|| ApiError::bad(ErrorCode::InvalidRequest, "job_id is required"))?;
    let job = actor.job(&state, &raw).await?;
    let queued = webhooks::replay(&state.app, &job)
        .await
        .map_err(|e| match e {
            ReplayError::NotFinished => {
                ApiError::Conflict(ErrorCode::JobNotFinished, e.to_string())
            }
            ReplayError::NotConfigured => {
                ApiError::Conflict(ErrorCode::WebhookNotConfigured, e.to_string())
            }
            ReplayError::Disabled => ApiError::Conflict(ErrorCode::WebhookDisabled, e.to_string()),
            ReplayError::Port(e) => e.into(),
        })?;
    Ok((StatusCode::ACCEPTED, Json(queued)).into_response())
}
