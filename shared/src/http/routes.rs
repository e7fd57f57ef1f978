//! Routes and their handlers. Handlers parse input into domain values at the edge, call a
//! service, and map its errors in one place.

use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use chrono::Utc;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::json;

use super::auth::{Caller, Operator};
use super::error::ApiError;
use super::extract::{ApiJson, ApiQuery};
use crate::app::App;
use crate::domain::{
    hash_api_key, ErrorCode, IdempotencyKey, JobStatus, Mode, Plan, Prompt, ValueError, WebhookUrl,
};
use crate::service::admin;
use crate::service::jobs::{self, CancelError, ListError, UsageView};
use crate::service::submit::{self, Submission, SubmitError};

/// Largest request body accepted; larger ones get 413.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

const DEFAULT_PAGE: u32 = 20;
const MAX_PAGE: u32 = 100;

/// What every route can reach.
#[derive(Clone)]
pub struct HttpState {
    pub app: App,
    /// Hash of the operator token; `None` disables the admin routes.
    pub admin_token_hash: Option<String>,
}

/// The whole API. `admin_token` enables `/v1/admin/*`.
pub fn router(app: App, admin_token: Option<&SecretString>) -> Router {
    let state = HttpState {
        app,
        admin_token_hash: admin_token.map(|t| hash_api_key(t.expose_secret())),
    };
    Router::new()
        .route("/v1/images:generate", post(generate))
        .route("/v1/jobs", get(list_jobs))
        .route("/v1/jobs/{job}", get(get_job).post(job_action))
        .route("/v1/usage", get(usage))
        .route("/v1/webhook", put(set_webhook))
        .route("/v1/admin/tenants", post(create_tenant))
        .merge(super::admin_keys::routes())
        .route("/healthz", get(|| async { Json(json!({ "ok": true })) }))
        .fallback(|| async { ApiError::NotFound })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

fn value_error(code: ErrorCode) -> impl Fn(ValueError) -> ApiError {
    move |e| ApiError::bad(code, e.to_string())
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct GenerateBody {
    prompt: String,
    input_image_url: Option<String>,
    mode: Option<String>,
}

async fn generate(
    State(state): State<HttpState>,
    Caller(tenant): Caller,
    headers: HeaderMap,
    ApiJson(body): ApiJson<GenerateBody>,
) -> Result<Response, ApiError> {
    let idempotency_key = headers
        .get("idempotency-key")
        .map(|v| {
            v.to_str()
                .map_err(|_| ValueError::IdempotencyKey)
                .and_then(IdempotencyKey::parse)
        })
        .transpose()
        .map_err(value_error(ErrorCode::InvalidIdempotencyKey))?;
    let prompt = Prompt::parse(&body.prompt).map_err(value_error(ErrorCode::InvalidPrompt))?;
    let mode = match body.mode.as_deref() {
        None => Mode::default(),
        Some(raw) => Mode::parse(raw).ok_or_else(|| {
            ApiError::bad(
                ErrorCode::InvalidMode,
                "mode must be \"draft\" or \"final\"",
            )
        })?,
    };
    let input_image_url = body
        .input_image_url
        .as_deref()
        .map(|raw| WebhookUrl::parse(raw, state.app.settings.allow_http_urls))
        .transpose()
        .map_err(value_error(ErrorCode::InvalidImageUrl))?;

    let submission = Submission {
        prompt,
        mode,
        input_image_url,
    };
    let accepted = submit::submit(&state.app, &tenant, submission, idempotency_key)
        .await
        .map_err(|e| match e {
            SubmitError::DailyCapReached => {
                let tomorrow = (Utc::now().date_naive() + chrono::Days::new(1))
                    .and_hms_opt(0, 0, 0)
                    .map(|t| t.and_utc());
                let wait = tomorrow.and_then(|t| (t - Utc::now()).to_std().ok());
                ApiError::TooManyRequests(
                    ErrorCode::DailyCapReached,
                    format!("daily cap of {} jobs reached", tenant.plan.daily_cap),
                    wait,
                )
            }
            SubmitError::KeyReused => ApiError::Unprocessable(
                ErrorCode::IdempotencyKeyReused,
                "this Idempotency-Key was used with a different request body".into(),
            ),
            SubmitError::Port(e) => e.into(),
        })?;

    let job = accepted.job;
    let location = format!("/v1/jobs/{}", job.id);
    let body = json!({ "jobId": job.id, "status": job.status });
    Ok((
        StatusCode::ACCEPTED,
        [(header::LOCATION, location)],
        Json(body),
    )
        .into_response())
}

async fn get_job(
    State(state): State<HttpState>,
    Caller(tenant): Caller,
    Path(job): Path<String>,
) -> Result<Response, ApiError> {
    let job = jobs::find(&state.app, &tenant.id, &job)
        .await?
        .ok_or(ApiError::NotFound)?;
    let view = jobs::view(&state.app, &job, state.app.settings.result_url_ttl).await?;
    Ok(Json(view).into_response())
}

/// `POST /v1/jobs/{jobId}:cancel`. The action rides on the last path segment.
async fn job_action(
    State(state): State<HttpState>,
    Caller(tenant): Caller,
    Path(segment): Path<String>,
) -> Result<Response, ApiError> {
    let Some(id) = segment.strip_suffix(":cancel") else {
        return Err(ApiError::MethodNotAllowed);
    };
    let job = jobs::find(&state.app, &tenant.id, id)
        .await?
        .ok_or(ApiError::NotFound)?;
    let job = jobs::cancel(&state.app, job).await.map_err(|e| match e {
        CancelError::Finished(status) => ApiError::Conflict(
            ErrorCode::JobNotCancelable,
            format!("job already ended {}", status.as_str()),
        ),
        CancelError::Port(e) => e.into(),
    })?;
    let view = jobs::view(&state.app, &job, state.app.settings.result_url_ttl).await?;
    Ok((StatusCode::ACCEPTED, Json(view)).into_response())
}

#[derive(Deserialize)]
struct ListParams {
    status: Option<String>,
    limit: Option<String>,
    cursor: Option<String>,
}

async fn list_jobs(
    State(state): State<HttpState>,
    Caller(tenant): Caller,
    ApiQuery(params): ApiQuery<ListParams>,
) -> Result<Response, ApiError> {
    let status = params
        .status
        .as_deref()
        .map(|raw| {
            JobStatus::parse(raw).ok_or_else(|| {
                ApiError::bad(
                    ErrorCode::InvalidRequest,
                    "status must be one of QUEUED, RUNNING, RETRYING, SUCCEEDED, FAILED, CANCELED",
                )
            })
        })
        .transpose()?;
    let limit = match params.limit.as_deref() {
        None => DEFAULT_PAGE,
        Some(raw) => raw
            .parse::<u32>()
            .ok()
            .filter(|n| (1..=MAX_PAGE).contains(n))
            .ok_or_else(|| {
                ApiError::bad(
                    ErrorCode::InvalidRequest,
                    "limit must be a whole number from 1 to 100",
                )
            })?,
    };

    let page = jobs::list(
        &state.app,
        &tenant.id,
        status,
        limit,
        params.cursor.as_deref(),
    )
    .await
    .map_err(|e| match e {
        ListError::Cursor(e) => ApiError::bad(ErrorCode::InvalidCursor, e.to_string()),
        ListError::Port(e) => e.into(),
    })?;
    Ok(Json(page).into_response())
}

async fn usage(
    State(state): State<HttpState>,
    Caller(tenant): Caller,
) -> Result<Response, ApiError> {
    let day = Utc::now().date_naive();
    let units = state.app.store.usage(&tenant.id, day).await?;
    Ok(Json(UsageView {
        day,
        units,
        daily_cap: tenant.plan.daily_cap,
    })
    .into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WebhookBody {
    url: String,
}

/// Set the caller's webhook URL. A new signing secret is made and returned once.
async fn set_webhook(
    State(state): State<HttpState>,
    Caller(tenant): Caller,
    ApiJson(body): ApiJson<WebhookBody>,
) -> Result<Response, ApiError> {
    let url = WebhookUrl::parse(&body.url, state.app.settings.allow_http_urls)
        .map_err(value_error(ErrorCode::InvalidWebhookUrl))?;
    let ip_literal = url
        .as_url()
        .host()
        .is_some_and(|h| !matches!(h, url::Host::Domain(_)));
    if ip_literal {
        let policy = state.app.webhooks.policy();
        policy
            .resolve(url.as_url())
            .await
            .map_err(|e| ApiError::bad(ErrorCode::InvalidWebhookUrl, e.to_string()))?;
    }
    let secret = admin::set_webhook(&state.app, &tenant, &url).await?;
    Ok(Json(json!({
        "url": url.as_str(),
        "enabled": true,
        "secret": secret.expose_secret(),
    }))
    .into_response())
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct TenantBody {
    name: String,
    plan: Option<Plan>,
}

async fn create_tenant(
    State(state): State<HttpState>,
    _operator: Operator,
    ApiJson(body): ApiJson<TenantBody>,
) -> Result<Response, ApiError> {
    let name = body.name.trim();
    if name.is_empty() || name.len() > 200 {
        return Err(ApiError::bad(
            ErrorCode::InvalidRequest,
            "name must be 1 to 200 characters",
        ));
    }
    let created = admin::create_tenant(&state.app, name, body.plan.unwrap_or_default()).await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "tenantId": created.tenant.id,
            "name": created.tenant.name,
            "plan": created.tenant.plan,
            "apiKey": created.key.expose(),
        })),
    )
        .into_response())
}
