//! The worker: advance one job by one step for one queue message.
//!
//! Every change is a conditional write on the version read, so duplicate and concurrent
//! deliveries of a message cannot run a job twice to two results or charge twice.

use std::time::Duration;

use chrono::{DateTime, Utc};
use tracing::{info, warn};

use crate::app::App;
use crate::domain::{ErrorCode, Job, JobError, JobStatus, ProviderInfo, WebhookEvent};
use crate::ports::{
    Admission, GenerationRequest, KeyOutcome, PermitRequest, PortError, QueueName, WriteOutcome,
};
use crate::service::messages::GenerateMessage;

/// A message the worker could not finish. `retryable` says whether the queue should deliver
/// it again; a final failure is acknowledged and dropped.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct WorkError {
    pub retryable: bool,
    pub message: String,
}

impl From<PortError> for WorkError {
    fn from(e: PortError) -> Self {
        Self {
            retryable: true,
            message: e.to_string(),
        }
    }
}

fn lost(job: &Job) -> WorkError {
    WorkError {
        retryable: true,
        message: format!("job {} vanished mid-step", job.id),
    }
}

fn until(at: DateTime<Utc>, now: DateTime<Utc>) -> Duration {
    (at - now).to_std().unwrap_or(Duration::ZERO)
}

/// `delay`, shortened so the job wakes up in time to expire at its deadline.
fn capped(job: &Job, delay: Duration) -> Duration {
    match job.deadline {
        Some(deadline) => delay.min(until(deadline, Utc::now()) + Duration::from_millis(10)),
        None => delay,
    }
}

/// Put a fresh message for the job on the queue to arrive after `delay`. A fresh message
/// (rather than leaving the current one invisible) keeps waiting from counting receives.
async fn redelay(app: &App, job: &Job, delay: Duration) -> Result<(), WorkError> {
    let delay = capped(job, delay);
    let message = GenerateMessage {
        job_id: job.id.clone(),
        tenant_id: job.tenant_id.clone(),
    };
    let body = serde_json::to_string(&message).map_err(|e| PortError::Internal(e.to_string()))?;
    app.queue.send(QueueName::Generate, &body, delay).await?;
    Ok(())
}

/// Make a job that may not start yet wait `delay`: write when its message is due, then queue
/// that message. The write is what keeps the reconciler from queuing another copy while the
/// job waits. Returns false when another writer changed the job first.
async fn wait_for_capacity(app: &App, job: &Job, delay: Duration) -> Result<bool, WorkError> {
    let delay = capped(job, delay);
    let now = Utc::now();
    let due = now + chrono::Duration::from_std(delay).unwrap_or(chrono::Duration::MAX);
    let waiting = job.wait_until(due, now).map_err(transition)?;
    match write(app, job, &waiting).await? {
        Some(waiting) => {
            redelay(app, &waiting, delay).await?;
            Ok(true)
        }
        None => Ok(false),
    }
}

/// Handle one generate message. `message_id` names the delivery; `receive_count` is how many
/// times the queue has delivered it.
///
/// # Errors
/// [`WorkError`]; a retryable one should return the message to the queue.
pub async fn process(
    app: &App,
    message: &GenerateMessage,
    message_id: &str,
) -> Result<(), WorkError> {
    let owner = format!("{}/{}", app.worker_id, message_id);
    let Some(mut job) = app.store.get_job(&message.job_id).await? else {
        warn!(job_id = %message.job_id, "message for unknown job dropped");
        return Ok(());
    };

    // Each pass either finishes or re-reads after losing a race.
    for _ in 0..8 {
        let now = Utc::now();
        if job.status.is_terminal() {
            if !job.notified {
                notify(app, &job).await?;
            }
            return Ok(());
        }
        if job.cancel_requested && !job.lease_blocks(&owner, now) {
            match write(app, &job, &job.cancel(now).map_err(transition)?).await? {
                Some(done) => return notify(app, &done).await.map_err(WorkError::from),
                None => {
                    job = reread(app, &job).await?;
                    continue;
                }
            }
        }
        if job.expired(now) {
            let error = JobError::new(
                ErrorCode::Expired,
                "the job's deadline passed before it ran",
            );
            match write(app, &job, &job.fail(None, error, now).map_err(transition)?).await? {
                Some(done) => return notify(app, &done).await.map_err(WorkError::from),
                None => {
                    job = reread(app, &job).await?;
                    continue;
                }
            }
        }
        if let Some(at) = job.not_before.filter(|at| *at > now) {
            return redelay(app, &job, until(at, now)).await;
        }
        if job.lease_blocks(&owner, now) {
            let lease_end = job.lease_until.unwrap_or(now);
            return redelay(app, &job, until(lease_end, now) + Duration::from_secs(1)).await;
        }
        if job.attempts_exhausted() {
            // Normally only a takeover gets here (an attempt that ends on its own fails the job
            // once attempts run out): its workers keep dying mid-attempt, so no more are made.
            let error = JobError::new(
                ErrorCode::Poison,
                format!(
                    "the job's {} attempts all stopped before they finished",
                    job.max_attempts
                ),
            );
            match write(app, &job, &job.fail(None, error, now).map_err(transition)?).await? {
                Some(done) => {
                    warn!(job_id = %done.id, attempts = done.attempts, "attempts exhausted by takeovers");
                    return notify(app, &done).await.map_err(WorkError::from);
                }
                None => {
                    job = reread(app, &job).await?;
                    continue;
                }
            }
        }

        let Some(tenant) = app.store.get_tenant(&job.tenant_id).await? else {
            let failed = job
                .fail(
                    None,
                    JobError::new(ErrorCode::Poison, "tenant no longer exists"),
                    now,
                )
                .map_err(transition)?;
            write(app, &job, &failed).await?;
            return Ok(());
        };
        let request = PermitRequest {
            tenant_id: job.tenant_id.clone(),
            tenant_concurrency: tenant.plan.max_concurrency,
            tenant_rpm: None,
            needs_key: app.provider.needs_key(),
            lease: app.settings.lease,
        };
        let permit = match app.limiter.acquire(&request).await {
            Ok(Admission::Granted(permit)) => permit,
            Ok(Admission::Denied { retry_after }) => {
                info!(job_id = %job.id, wait_ms = retry_after.as_millis() as u64, "job waits for capacity");
                if wait_for_capacity(app, &job, retry_after).await? {
                    return Ok(());
                }
                job = reread(app, &job).await?;
                continue;
            }
            Err(e) => {
                warn!(job_id = %job.id, error = %e, "limiter unreachable; job waits");
                if wait_for_capacity(app, &job, app.settings.limiter_down_wait).await? {
                    return Ok(());
                }
                job = reread(app, &job).await?;
                continue;
            }
        };

        let lease_until = now + app.settings.lease;
        let running = match job.start(&owner, lease_until, now) {
            Ok(running) => running,
            Err(e) => {
                release(app, &permit, KeyOutcome::Unused).await;
                return Err(transition(e));
            }
        };
        match write(app, &job, &running).await? {
            Some(_) => {}
            None => {
                release(app, &permit, KeyOutcome::Unused).await;
                job = reread(app, &job).await?;
                continue;
            }
        }
        info!(job_id = %running.id, attempt = running.attempts, "job dispatched");

        let outcome = attempt(app, &running, permit.key_id.as_deref()).await;
        let key_outcome = match &outcome {
            Ok(_) => KeyOutcome::Success,
            Err(e) => e.key_outcome.clone(),
        };
        release(app, &permit, key_outcome).await;
        return finish(app, running, &owner, outcome).await;
    }
    Err(WorkError {
        retryable: true,
        message: format!("job {} kept changing under the worker", job.id),
    })
}

fn transition(e: crate::domain::TransitionError) -> WorkError {
    WorkError {
        retryable: true,
        message: e.to_string(),
    }
}

async fn reread(app: &App, job: &Job) -> Result<Job, WorkError> {
    app.store.get_job(&job.id).await?.ok_or_else(|| lost(job))
}

/// Conditionally write `next` over `previous`; `None` when another writer got there first.
async fn write(app: &App, previous: &Job, next: &Job) -> Result<Option<Job>, WorkError> {
    match app.store.update_job(previous, next).await? {
        WriteOutcome::Written => Ok(Some(next.clone())),
        WriteOutcome::Conflict(_) => Ok(None),
        WriteOutcome::Missing => Err(lost(previous)),
    }
}

async fn release(app: &App, permit: &crate::ports::Permit, outcome: KeyOutcome) {
    if let Err(e) = app.limiter.release(permit, outcome).await {
        warn!(lease_id = %permit.lease_id, error = %e, "permit not released; it will expire");
    }
}

/// What one attempt produced: stored result keys and who made them, or a classified failure.
struct Produced {
    keys: Vec<String>,
    info: ProviderInfo,
}

async fn attempt(
    app: &App,
    job: &Job,
    key_id: Option<&str>,
) -> Result<Produced, crate::ports::ProviderError> {
    let key = match key_id {
        Some(id) => app.limiter.key_secret(id).await.ok().flatten(),
        None => None,
    };
    let input_image = crate::service::inputs::load_for(app, job).await?;
    let request = GenerationRequest {
        job_id: job.id.clone(),
        prompt: job.prompt.clone(),
        mode: job.mode,
        input_image,
    };

    let call = app.provider.generate(&request, key.as_ref());
    let generation = match tokio::time::timeout(app.settings.provider_timeout, call).await {
        Ok(result) => result?,
        Err(_) => {
            return Err(crate::ports::ProviderError {
                error: JobError::new(ErrorCode::UpstreamTimeout, "the image model took too long"),
                key_outcome: KeyOutcome::Failure,
                retry_after: None,
            })
        }
    };
    if generation.images.is_empty() {
        return Err(crate::ports::ProviderError {
            error: JobError::new(ErrorCode::NoImage, "the image model returned no image"),
            key_outcome: KeyOutcome::Neutral,
            retry_after: None,
        });
    }

    // Keys are fixed per job and image index, so a repeated attempt overwrites, never adds.
    let mut keys = Vec::with_capacity(generation.images.len());
    for (index, image) in generation.images.iter().enumerate() {
        let extension = extension_for(&image.mime_type);
        let key = format!("{}/{}/{index}.{extension}", job.tenant_id, job.id);
        app.blobs
            .put(&key, image.bytes.clone(), &image.mime_type)
            .await
            .map_err(|e| crate::ports::ProviderError {
                error: JobError::new(
                    ErrorCode::Unavailable,
                    format!("storing the image failed: {e}"),
                ),
                key_outcome: KeyOutcome::Neutral,
                retry_after: None,
            })?;
        keys.push(key);
    }
    info!(job_id = %job.id, provider = %generation.provider, model = %generation.model,
        latency_ms = generation.latency.as_millis() as u64, "images stored");
    Ok(Produced {
        keys,
        info: ProviderInfo {
            provider: generation.provider,
            model: generation.model,
            latency_ms: Some(generation.latency.as_millis() as u64),
            usage: generation.usage,
        },
    })
}

fn extension_for(mime: &str) -> &'static str {
    match mime {
        "image/jpeg" => "jpg",
        "image/webp" => "webp",
        _ => "png",
    }
}

/// Write the attempt's end state; if a cancel request slipped in, re-read and apply it.
async fn finish(
    app: &App,
    running: Job,
    owner: &str,
    outcome: Result<Produced, crate::ports::ProviderError>,
) -> Result<(), WorkError> {
    let mut current = running;
    loop {
        let now = Utc::now();
        let mut retry_in = None;
        let next = match &outcome {
            Ok(produced) => {
                current.succeed(owner, produced.keys.clone(), produced.info.clone(), now)
            }
            Err(failure) if crate::service::retry::worth_retrying(&current, &failure.error) => {
                let delay = app
                    .settings
                    .retry
                    .next_delay(current.attempts, failure.retry_after);
                retry_in = Some(delay);
                current.retry(owner, failure.error.clone(), now + delay, now)
            }
            Err(failure) => current.fail(Some(owner), failure.error.clone(), now),
        };
        let next = match next {
            Ok(next) => next,
            Err(_) => {
                // The lease was lost to another worker; its result is the one that counts.
                warn!(job_id = %current.id, "lease lost before the result was written");
                return Ok(());
            }
        };

        match app.store.update_job(&current, &next).await? {
            WriteOutcome::Written => {
                info!(job_id = %next.id, status = next.status.as_str(), attempts = next.attempts, "job step written");
                if let Some(delay) = retry_in {
                    if next.status == JobStatus::Retrying {
                        return redelay(app, &next, delay).await;
                    }
                }
                if next.status.is_terminal() {
                    notify(app, &next).await?;
                }
                return Ok(());
            }
            WriteOutcome::Conflict(latest) => current = *latest,
            WriteOutcome::Missing => return Err(lost(&current)),
        }
    }
}

/// The webhook event type for a terminal status.
pub fn event_for(status: JobStatus) -> Option<WebhookEvent> {
    match status {
        JobStatus::Succeeded => Some(WebhookEvent::JobSucceeded),
        JobStatus::Failed => Some(WebhookEvent::JobFailed),
        JobStatus::Canceled => Some(WebhookEvent::JobCanceled),
        _ => None,
    }
}

/// The one event id a job's terminal state ever gets.
pub fn event_id(job: &Job) -> String {
    format!(
        "evt_{}_{}",
        job.id,
        job.status.as_str().to_ascii_lowercase()
    )
}

/// Hand a terminal job's notice to the webhook queue (if the tenant wants it) and record that
/// it was handed over. Safe to repeat: the event id is fixed per job and state.
///
/// # Errors
/// [`PortError`] when the store or the queue fails; the caller retries.
pub async fn notify(app: &App, job: &Job) -> Result<(), PortError> {
    let Some(event) = event_for(job.status) else {
        return Ok(());
    };
    let tenant = app.store.get_tenant(&job.tenant_id).await?;
    let hook = tenant
        .and_then(|t| t.webhook)
        .filter(|h| h.enabled && h.events.contains(&event));

    if hook.is_some() {
        let message = crate::service::deliver::event_message(app, job, event).await?;
        let body =
            serde_json::to_string(&message).map_err(|e| PortError::Internal(e.to_string()))?;
        app.queue
            .send(QueueName::Webhook, &body, Duration::ZERO)
            .await?;
    }

    let marked = job.mark_notified(Utc::now());
    // A lost race means another copy already marked it; both sent the same event id.
    app.store.update_job(job, &marked).await?;
    Ok(())
}
