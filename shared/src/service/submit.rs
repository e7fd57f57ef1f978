//! Accepting a job: validate, reserve a unit, write the job with its idempotency record, and
//! queue it.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::json;
use sha2::{Digest, Sha256};
use tracing::{error, info, warn};

use crate::app::App;
use crate::domain::{IdempotencyKey, Job, JobId, JobStatus, Mode, Prompt, Tenant};
use crate::fetch::ImageSource;
use crate::ports::{CreateOutcome, IdempotencyClaim, PortError, QueueName};
use crate::service::messages::GenerateMessage;

/// A validated submission.
#[derive(Debug, Clone)]
pub struct Submission {
    pub prompt: Prompt,
    pub mode: Mode,
    /// An http(s) URL or an upload reference (`upload://upl_...`).
    pub input_image_url: Option<ImageSource>,
    /// No attempt starts after this.
    pub deadline: Option<Deadline>,
}

/// A submission's deadline, both as the client sent it (a wait from submission) and as the job
/// keeps it (an instant).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadline {
    /// The wait the client asked for; the request hash uses this, so a retry sent later
    /// still matches.
    pub after: Duration,
    pub at: chrono::DateTime<Utc>,
}

impl Deadline {
    /// The deadline `after` from `now`.
    pub fn after(after: Duration, now: chrono::DateTime<Utc>) -> Self {
        let at = chrono::Duration::from_std(after)
            .ok()
            .and_then(|d| now.checked_add_signed(d))
            .unwrap_or(chrono::DateTime::<Utc>::MAX_UTC);
        Self { after, at }
    }
}

impl Submission {
    /// Hash of the canonical request, to tell a retried request from a different one. The
    /// deadline enters as the client sent it (relative), never as the instant it became.
    pub fn request_hash(&self) -> String {
        // The key stays "deadline" so requests without one hash as they always did.
        let canonical = json!({
            "prompt": self.prompt.as_str(),
            "mode": self.mode.as_str(),
            "inputImageUrl": self.input_image_url.as_ref().map(ImageSource::as_str),
            "deadline": self.deadline.map(|d| d.after.as_millis() as u64),
        });
        hex::encode(Sha256::digest(canonical.to_string().as_bytes()))
    }
}

/// Why a submission was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error("requests per minute exceeded")]
    RateLimited(Duration),
    #[error("daily cap reached")]
    DailyCapReached,
    #[error("idempotency key was used with a different request")]
    KeyReused,
    /// A concurrent request with the same key is still being written; retry after the wait.
    #[error("a request with this idempotency key is in progress")]
    InProgress(Duration),
    #[error(transparent)]
    Port(#[from] PortError),
}

/// How long a client is told to wait when a request with its key is still being written.
pub const IN_PROGRESS_RETRY: Duration = Duration::from_secs(1);

/// What the answer to a submission says about its job. A repeat is answered from the
/// idempotency record: the status is the one the job was created with, as in the first answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcceptedJob {
    pub id: JobId,
    pub status: JobStatus,
    pub created_at: DateTime<Utc>,
}

impl AcceptedJob {
    /// What a first answer says about `job`.
    pub fn of(job: &Job) -> Self {
        Self {
            id: job.id.clone(),
            status: job.status,
            created_at: job.created_at,
        }
    }
}

/// The accepted job, and whether this call created it (false for an idempotent repeat).
#[derive(Debug, Clone)]
pub struct Accepted {
    pub job: AcceptedJob,
    pub created: bool,
    /// The whole job when this call created it; a repeat does not read it.
    pub new_job: Option<Box<Job>>,
}

/// Accept a submission for `tenant`.
///
/// # Errors
/// [`SubmitError`] for a full daily cap, a reused idempotency key, or a failing store.
pub async fn submit(
    app: &App,
    tenant: &Tenant,
    submission: Submission,
    idempotency_key: Option<IdempotencyKey>,
) -> Result<Accepted, SubmitError> {
    // An unreachable limiter does not stop submissions: the daily cap is still enforced by
    // the store, and dispatch waits for the limiter, so nothing runs unthrottled.
    match app
        .limiter
        .admit_submission(&tenant.id, tenant.plan.requests_per_minute)
        .await
    {
        Ok(None) => {}
        Ok(Some(wait)) => return Err(SubmitError::RateLimited(wait)),
        Err(e) => {
            warn!(tenant_id = %tenant.id, error = %e, "limiter unreachable; submission admitted")
        }
    }

    let now = Utc::now();
    let request_hash = submission.request_hash();
    let mut job = Job::new(
        tenant.id.clone(),
        submission.mode,
        submission.prompt.into_inner(),
        submission.input_image_url.map(|u| u.as_str()),
        app.settings.max_attempts,
        now,
    );
    job.deadline = submission.deadline.map(|d| d.at);
    let claim = idempotency_key.map(|key| IdempotencyClaim {
        key,
        request_hash: request_hash.clone(),
        expires_at: now + app.settings.idempotency_ttl,
    });

    let outcome = app
        .store
        .create_job(&job, claim.as_ref(), tenant.plan.daily_cap)
        .await?;
    match outcome {
        CreateOutcome::Created => {}
        CreateOutcome::DailyCapReached => return Err(SubmitError::DailyCapReached),
        CreateOutcome::IdempotencyInProgress => {
            warn!(tenant_id = %tenant.id, "idempotency record contended; client told to retry");
            return Err(SubmitError::InProgress(IN_PROGRESS_RETRY));
        }
        CreateOutcome::Duplicate {
            job_id,
            request_hash: stored,
            status,
            created_at,
        } => {
            if stored != request_hash {
                return Err(SubmitError::KeyReused);
            }
            return Ok(Accepted {
                job: AcceptedJob {
                    id: job_id,
                    status,
                    created_at,
                },
                created: false,
                new_job: None,
            });
        }
    }

    let message = GenerateMessage {
        job_id: job.id.clone(),
        tenant_id: job.tenant_id.clone(),
    };
    let body = serde_json::to_string(&message).map_err(|e| PortError::Internal(e.to_string()))?;
    if let Err(e) = app
        .queue
        .send(QueueName::Generate, &body, Duration::ZERO)
        .await
    {
        // The job is stored; the reconciler re-queues QUEUED jobs that no worker picked up.
        error!(job_id = %job.id, error = %e, "job stored but not queued");
    }
    info!(job_id = %job.id, tenant_id = %tenant.id, mode = job.mode.as_str(), "job accepted");
    Ok(Accepted {
        job: AcceptedJob {
            id: job.id.clone(),
            status: job.status,
            created_at: job.created_at,
        },
        created: true,
        new_job: Some(Box::new(job)),
    })
}
