//! Routes and their handlers. Handlers parse input into domain values at the edge, call a
//! service, and map its errors in one place.

use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::Method;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::{Json, Router};
use chrono::Utc;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::json;

use super::auth::{authenticate, Caller, Operator};
use super::error::ApiError;
use super::extract::{ApiJson, ApiQuery};
use crate::app::App;
use crate::domain::{
    hash_api_key, ErrorCode, IdempotencyKey, JobStatus, Mode, Plan, Prompt, Tenant, ValueError,
};
use crate::service::admin;
use crate::service::jobs::{self, CancelError, ListError, UsageView};
use crate::service::submit::{self, Submission, SubmitError};

/// Largest request body accepted; larger ones get 413.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

const DEFAULT_PAGE: u32 = 20;
const MAX_PAGE: u32 = 100;

/// Every (method, path) the API serves, in the path syntax of `docs/openapi.yaml`. Tests in
/// `tests/openapi.rs` keep this list, the routes registered in this module's files and the
/// OpenAPI document in step.
pub const ROUTES: &[(&str, &str)] = &[
    ("POST", "/v1/images:generate"),
    ("GET", "/v1/jobs"),
    ("GET", "/v1/jobs/{jobId}"),
    ("POST", "/v1/jobs/{jobId}:cancel"),
    ("POST", "/v1/jobs/{jobId}:finalize"),
    ("POST", "/v1/uploads"),
    ("GET", "/v1/usage"),
    ("GET", "/v1/webhook"),
    ("PUT", "/v1/webhook"),
    ("DELETE", "/v1/webhook"),
    ("POST", "/v1/webhook/secret:rotate"),
    ("GET", "/v1/jobs/{jobId}/deliveries"),
    ("POST", "/v1/webhooks/replay"),
    ("GET", "/v1/admin/tenants/{tenantId}/webhook"),
    ("PUT", "/v1/admin/tenants/{tenantId}/webhook"),
    ("DELETE", "/v1/admin/tenants/{tenantId}/webhook"),
    ("POST", "/v1/admin/tenants/{tenantId}/webhook/secret:rotate"),
    ("POST", "/v1/admin/tenants"),
    ("GET", "/v1/admin/quota-groups"),
    ("PUT", "/v1/admin/quota-groups/{groupId}"),
    ("DELETE", "/v1/admin/quota-groups/{groupId}"),
    ("GET", "/v1/admin/keys"),
    ("POST", "/v1/admin/keys"),
    ("GET", "/v1/admin/keys/{keyId}"),
    ("PATCH", "/v1/admin/keys/{keyId}"),
    ("DELETE", "/v1/admin/keys/{keyId}"),
    ("POST", "/v1/admin/keys/{keyId}:disable"),
    ("POST", "/v1/admin/keys/{keyId}:enable"),
    ("GET", "/healthz"),
];

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
        .route("/v1/jobs/{job}", any(job_route))
        .route("/v1/uploads", post(super::inputs::create_upload))
        .route("/v1/usage", get(usage))
        .route("/v1/admin/tenants", post(create_tenant))
        .merge(super::webhooks::routes())
        .merge(super::admin_keys::routes())
        .route("/healthz", get(|| async { Json(json!({ "ok": true })) }))
        .fallback(|| async { ApiError::NotFound })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed(None) })
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
    deadline_seconds: Option<i64>,
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
    let input_image_url = match body.input_image_url.as_deref() {
        Some(raw) => Some(super::inputs::input_source(&state, &tenant, raw).await?),
        None => None,
    };

    let deadline = body
        .deadline_seconds
        .map(|seconds| deadline_in(seconds, state.app.settings.max_deadline))
        .transpose()?;

    let submission = Submission {
        prompt,
        mode,
        input_image_url,
        deadline,
    };
    let accepted = submit::submit(&state.app, &tenant, submission, idempotency_key)
        .await
        .map_err(|e| match e {
            SubmitError::RateLimited(wait) => ApiError::TooManyRequests(
                ErrorCode::RateLimited,
                format!(
                    "more than {} requests in a minute; retry after the Retry-After delay",
                    tenant.plan.requests_per_minute
                ),
                Some(wait),
            ),
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
            SubmitError::InProgress(wait) => ApiError::InProgress(wait),
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

/// A deadline `seconds` from now: at least one second, at most `max`.
fn deadline_in(seconds: i64, max: std::time::Duration) -> Result<submit::Deadline, ApiError> {
    let seconds = u64::try_from(seconds)
        .ok()
        .filter(|s| (1..=max.as_secs()).contains(s))
        .ok_or_else(|| {
            ApiError::bad(
                ErrorCode::InvalidDeadline,
                format!("deadlineSeconds must be from 1 to {}", max.as_secs()),
            )
        })?;
    Ok(submit::Deadline::after(
        std::time::Duration::from_secs(seconds),
        Utc::now(),
    ))
}

/// `/v1/jobs/{jobId}` and its actions (`/v1/jobs/{jobId}:cancel`): the action rides on the
/// last path segment, so one route takes them all and answers 405 with the right `Allow`.
async fn job_route(
    method: Method,
    State(state): State<HttpState>,
    Path(segment): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    match segment.split_once(':') {
        None if method == Method::GET || method == Method::HEAD => {
            let tenant = authenticate(&state, &headers).await?;
            get_job(&state, &tenant, &segment).await
        }
        None => Err(ApiError::MethodNotAllowed(Some("GET, HEAD"))),
        Some((id, "cancel")) if method == Method::POST => {
            let tenant = authenticate(&state, &headers).await?;
            cancel_job(&state, &tenant, id).await
        }
        Some((_, "cancel")) => Err(ApiError::MethodNotAllowed(Some("POST"))),
        Some((id, "finalize")) if method == Method::POST => {
            let tenant = authenticate(&state, &headers).await?;
            super::inputs::finalize_job(&state, &tenant, id).await
        }
        Some((_, "finalize")) => Err(ApiError::MethodNotAllowed(Some("POST"))),
        Some(_) => Err(ApiError::NotFound),
    }
}

async fn get_job(state: &HttpState, tenant: &Tenant, id: &str) -> Result<Response, ApiError> {
    let job = jobs::find(&state.app, &tenant.id, id)
        .await?
        .ok_or(ApiError::NotFound)?;
    let view = jobs::view(&state.app, &job, state.app.settings.result_url_ttl).await?;
    Ok(Json(view).into_response())
}

async fn cancel_job(state: &HttpState, tenant: &Tenant, id: &str) -> Result<Response, ApiError> {
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
        // An empty cursor is the first page, as no cursor is.
        params.cursor.as_deref().filter(|c| !c.is_empty()),
    )
    .await
    .map_err(|e| match e {
        ListError::Cursor(e) => ApiError::bad(ErrorCode::InvalidCursor, e.to_string()),
        ListError::Port(e) => e.into(),
    })?;
    Ok(Json(page).into_response())
}

#[derive(Deserialize)]
struct UsageParams {
    day: Option<String>,
}

/// Units held on a UTC day (today unless `?day=YYYY-MM-DD`).
async fn usage(
    State(state): State<HttpState>,
    Caller(tenant): Caller,
    ApiQuery(params): ApiQuery<UsageParams>,
) -> Result<Response, ApiError> {
    let day = match params.day.as_deref() {
        None => Utc::now().date_naive(),
        Some(raw) => chrono::NaiveDate::parse_from_str(raw, "%Y-%m-%d").map_err(|_| {
            ApiError::bad(
                ErrorCode::InvalidRequest,
                "day must be a date such as 2026-01-31",
            )
        })?,
    };
    let units = state.app.store.usage(&tenant.id, day).await?;
    Ok(Json(UsageView {
        day,
        units,
        daily_cap: tenant.plan.daily_cap,
    })
    .into_response())
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct TenantBody {
    name: String,
    plan: Option<PlanBody>,
}

/// A plan as a request names it: every field, and nothing else.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct PlanBody {
    requests_per_minute: u32,
    daily_cap: u32,
    max_concurrency: u32,
}

async fn create_tenant(
    State(state): State<HttpState>,
    _operator: Operator,
    ApiJson(body): ApiJson<TenantBody>,
) -> Result<Response, ApiError> {
    let name = body.name.trim();
    let length = name.chars().count();
    if length == 0 || length > 200 || name.chars().any(char::is_control) {
        return Err(ApiError::bad(
            ErrorCode::InvalidRequest,
            "name must be 1 to 200 characters, none of them control characters",
        ));
    }
    let plan = body.plan.map_or_else(Plan::default, |p| Plan {
        requests_per_minute: p.requests_per_minute,
        daily_cap: p.daily_cap,
        max_concurrency: p.max_concurrency,
    });
    let created = admin::create_tenant(&state.app, name, plan).await?;
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use async_trait::async_trait;
    use axum::body::Body;
    use axum::http::Request;
    use chrono::{DateTime, Utc};
    use tower::ServiceExt;

    use super::*;
    use crate::domain::{Job, JobId, JobStatus, Plan, TenantId, UsageDay};
    use crate::ports::{
        CreateOutcome, IdempotencyClaim, JobEvent, JobPage, JobStore, PortResult, WriteOutcome,
    };

    /// The embedded store, except that every create finds its idempotency record contended,
    /// as DynamoDB's does when concurrent writers outlast the conflict retries.
    struct Contended(Arc<dyn JobStore>);

    #[async_trait]
    impl JobStore for Contended {
        async fn create_job(
            &self,
            _job: &Job,
            _idempotency: Option<&IdempotencyClaim>,
            _daily_cap: u32,
        ) -> PortResult<CreateOutcome> {
            Ok(CreateOutcome::IdempotencyInProgress)
        }
        async fn get_job(&self, id: &JobId) -> PortResult<Option<Job>> {
            self.0.get_job(id).await
        }
        async fn update_job(&self, previous: &Job, next: &Job) -> PortResult<WriteOutcome> {
            self.0.update_job(previous, next).await
        }
        async fn list_jobs(
            &self,
            tenant: &TenantId,
            status: Option<JobStatus>,
            limit: u32,
            after: Option<&JobId>,
        ) -> PortResult<JobPage> {
            self.0.list_jobs(tenant, status, limit, after).await
        }
        async fn stale_jobs(
            &self,
            status: JobStatus,
            before: DateTime<Utc>,
            limit: u32,
        ) -> PortResult<Vec<Job>> {
            self.0.stale_jobs(status, before, limit).await
        }
        async fn job_events(&self, id: &JobId) -> PortResult<Vec<JobEvent>> {
            self.0.job_events(id).await
        }
        async fn put_tenant(&self, tenant: &Tenant) -> PortResult<()> {
            self.0.put_tenant(tenant).await
        }
        async fn get_tenant(&self, id: &TenantId) -> PortResult<Option<Tenant>> {
            self.0.get_tenant(id).await
        }
        async fn tenant_by_key_hash(&self, key_hash: &str) -> PortResult<Option<Tenant>> {
            self.0.tenant_by_key_hash(key_hash).await
        }
        async fn usage(&self, tenant: &TenantId, day: UsageDay) -> PortResult<u64> {
            self.0.usage(tenant, day).await
        }
    }

    #[tokio::test]
    async fn a_submit_whose_key_stays_contended_answers_409_in_progress_with_retry_after() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let db = crate::store::SqliteDb::in_memory().unwrap_or_else(|e| panic!("{e}"));
        let blobs = Arc::new(crate::blob::FsBlobStore::new(
            dir.path().into(),
            "http://x",
            vec![1; 32],
        ));
        let webhooks = crate::webhook::WebhookSender::new(
            crate::webhook::OutboundPolicy {
                allow_loopback: true,
                loopback_only: true,
            },
            std::time::Duration::from_secs(5),
        );
        let mut app = crate::embedded::app(
            db,
            blobs,
            webhooks,
            crate::AppSettings::default(),
            crate::limiter::LimiterSettings::default(),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
        let created = crate::service::admin::create_tenant(&app, "t", Plan::default())
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        app.store = Arc::new(Contended(app.store.clone()));
        let request = Request::post("/v1/images:generate")
            .header("content-type", "application/json")
            .header("authorization", format!("Bearer {}", created.key.expose()))
            .header("idempotency-key", "raced")
            .body(Body::from(r#"{"prompt":"a fox"}"#))
            .unwrap_or_else(|e| panic!("{e}"));

        let response = router(app, None)
            .oneshot(request)
            .await
            .unwrap_or_else(|e| panic!("{e}"));

        assert_eq!(response.status(), StatusCode::CONFLICT);
        let retry = response.headers().get(header::RETRY_AFTER).cloned();
        assert_eq!(retry.as_ref().and_then(|v| v.to_str().ok()), Some("1"));
        let body = axum::body::to_bytes(response.into_body(), 4096)
            .await
            .unwrap_or_default();
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        assert_eq!(body["error"]["code"], "IDEMPOTENCY_IN_PROGRESS");
    }
}
