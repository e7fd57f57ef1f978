//! Reading jobs (one, or a page with a cursor), canceling them, and reading usage.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::app::App;
use crate::domain::{Job, JobError, JobId, JobStatus, Mode, ProviderInfo, TenantId};
use crate::ports::{PortError, PortResult, WriteOutcome};

/// A job as the API shows it, with fresh result URLs.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct JobView {
    pub job_id: JobId,
    pub status: JobStatus,
    pub mode: Mode,
    pub result_urls: Vec<String>,
    /// When every URL in `result_urls` stops working; null when there are none.
    pub result_urls_expire_at: Option<DateTime<Utc>>,
    pub error: Option<JobError>,
    pub attempts: u32,
    pub max_attempts: u32,
    pub cancel_requested: bool,
    /// No attempt starts after this; null when the job has no deadline.
    pub deadline: Option<DateTime<Utc>>,
    pub provider: Option<ProviderInfo>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Build the API view of a job, signing a URL for each result.
///
/// # Errors
/// [`PortError`] when URLs cannot be signed.
pub async fn view(app: &App, job: &Job, ttl: std::time::Duration) -> PortResult<JobView> {
    let mut result_urls = Vec::with_capacity(job.result_keys.len());
    let mut expires: Option<DateTime<Utc>> = None;
    for key in &job.result_keys {
        let signed = app.blobs.signed_url(key, ttl).await?;
        expires = Some(expires.map_or(signed.expires_at, |e| e.min(signed.expires_at)));
        result_urls.push(signed.url);
    }
    Ok(JobView {
        job_id: job.id.clone(),
        status: job.status,
        mode: job.mode,
        result_urls,
        result_urls_expire_at: expires,
        error: job.error.clone(),
        attempts: job.attempts,
        max_attempts: job.max_attempts,
        cancel_requested: job.cancel_requested,
        deadline: job.deadline,
        provider: job.provider.clone(),
        created_at: job.created_at,
        updated_at: job.updated_at,
    })
}

/// A tenant's job, or `None` when it does not exist or belongs to someone else.
///
/// # Errors
/// [`PortError`] when the store fails.
pub async fn find(app: &App, tenant: &TenantId, id: &str) -> PortResult<Option<Job>> {
    let Some(id) = JobId::parse(id) else {
        return Ok(None);
    };
    let job = app.store.get_job(&id).await?;
    Ok(job.filter(|j| &j.tenant_id == tenant))
}

#[derive(Serialize, Deserialize)]
struct CursorBody {
    t: String,
    s: Option<String>,
    a: String,
}

/// A cursor that does not decode, was forged, or belongs to another tenant or filter.
#[derive(Debug, thiserror::Error)]
#[error("cursor is not valid for this listing")]
pub struct InvalidCursor;

fn cursor_mac(app: &App, payload: &[u8]) -> Option<Hmac<Sha256>> {
    let mut mac = Hmac::<Sha256>::new_from_slice(&app.settings.cursor_key).ok()?;
    mac.update(payload);
    Some(mac)
}

fn encode_cursor(
    app: &App,
    tenant: &TenantId,
    status: Option<JobStatus>,
    after: &JobId,
) -> PortResult<String> {
    let body = CursorBody {
        t: tenant.as_str().to_owned(),
        s: status.map(|s| s.as_str().to_owned()),
        a: after.as_str().to_owned(),
    };
    let payload = serde_json::to_vec(&body).map_err(|e| PortError::Internal(e.to_string()))?;
    let tag = cursor_mac(app, &payload)
        .ok_or_else(|| PortError::Internal("cursor key rejected".into()))?
        .finalize()
        .into_bytes();
    Ok(format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(&payload),
        URL_SAFE_NO_PAD.encode(tag)
    ))
}

fn decode_cursor(
    app: &App,
    tenant: &TenantId,
    status: Option<JobStatus>,
    raw: &str,
) -> Result<JobId, InvalidCursor> {
    let (payload, tag) = raw.split_once('.').ok_or(InvalidCursor)?;
    let payload = URL_SAFE_NO_PAD.decode(payload).map_err(|_| InvalidCursor)?;
    let tag = URL_SAFE_NO_PAD.decode(tag).map_err(|_| InvalidCursor)?;
    cursor_mac(app, &payload)
        .ok_or(InvalidCursor)?
        .verify_slice(&tag)
        .map_err(|_| InvalidCursor)?;
    let body: CursorBody = serde_json::from_slice(&payload).map_err(|_| InvalidCursor)?;
    let same_filter = body.s.as_deref() == status.map(JobStatus::as_str);
    if body.t != tenant.as_str() || !same_filter {
        return Err(InvalidCursor);
    }
    JobId::parse(&body.a).ok_or(InvalidCursor)
}

/// One page of a listing.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct JobListView {
    pub jobs: Vec<JobView>,
    /// Pass back as `cursor` for the next page; null on the last page.
    pub next_cursor: Option<String>,
}

/// Why a listing failed.
#[derive(Debug, thiserror::Error)]
pub enum ListError {
    #[error(transparent)]
    Cursor(#[from] InvalidCursor),
    #[error(transparent)]
    Port(#[from] PortError),
}

/// A page of the tenant's jobs, newest first.
///
/// # Errors
/// [`ListError`] for a bad cursor or a failing store.
pub async fn list(
    app: &App,
    tenant: &TenantId,
    status: Option<JobStatus>,
    limit: u32,
    cursor: Option<&str>,
) -> Result<JobListView, ListError> {
    let after = cursor
        .map(|c| decode_cursor(app, tenant, status, c))
        .transpose()?;
    let page = app
        .store
        .list_jobs(tenant, status, limit, after.as_ref())
        .await?;

    let mut jobs = Vec::with_capacity(page.jobs.len());
    for job in &page.jobs {
        jobs.push(view(app, job, app.settings.result_url_ttl).await?);
    }
    let next_cursor = page
        .last_evaluated
        .map(|last| encode_cursor(app, tenant, status, &last))
        .transpose()?;
    Ok(JobListView { jobs, next_cursor })
}

/// Why a cancel did not happen.
#[derive(Debug, thiserror::Error)]
pub enum CancelError {
    #[error("job is already {0:?}")]
    Finished(JobStatus),
    #[error(transparent)]
    Port(#[from] PortError),
}

/// Cancel a job: a waiting one ends CANCELED now; a running one is asked to stop and ends
/// CANCELED when its worker finishes. Canceling twice is not an error.
///
/// # Errors
/// [`CancelError::Finished`] for a job that already ended otherwise.
pub async fn cancel(app: &App, job: Job) -> Result<Job, CancelError> {
    let mut current = job;
    loop {
        let now = Utc::now();
        let next = match current.status {
            JobStatus::Canceled => return Ok(current),
            JobStatus::Running if current.cancel_requested => return Ok(current),
            JobStatus::Running => current.request_cancel(now),
            status if status.is_terminal() => return Err(CancelError::Finished(status)),
            _ => current.cancel(now),
        }
        .map_err(|_| CancelError::Finished(current.status))?;

        match app.store.update_job(&current, &next).await? {
            WriteOutcome::Written => {
                if next.status.is_terminal() {
                    crate::service::generate::notify(app, &next).await?;
                }
                return Ok(next);
            }
            WriteOutcome::Conflict(latest) => current = *latest,
            WriteOutcome::Missing => {
                return Err(CancelError::Port(PortError::Internal(
                    "job vanished during cancel".into(),
                )))
            }
        }
    }
}

/// A tenant's usage on one day.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UsageView {
    pub day: chrono::NaiveDate,
    pub units: u64,
    pub daily_cap: u32,
}
