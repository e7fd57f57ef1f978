//! Turning a succeeded draft into a final job with the same prompt and reference image.
//!
//! The final job is created through the ordinary submission path (daily cap, idempotency
//! record, queue) under an idempotency key derived from the draft's id, so concurrent calls make
//! one final job. Its id is then written on the draft, so finalizing the same draft again
//! returns that job for good, long after the idempotency record has expired.

use chrono::Utc;
use tracing::warn;

use crate::app::App;
use crate::domain::{IdempotencyKey, Job, JobStatus, Mode, Prompt, Tenant};
use crate::fetch::ImageSource;
use crate::ports::{PortError, WriteOutcome};
use crate::service::submit::{self, Accepted, AcceptedJob, Submission, SubmitError};

/// Why a draft could not be finalized.
#[derive(Debug, thiserror::Error)]
pub enum FinalizeError {
    #[error("only a succeeded draft can be finalized; this job is a {mode} job in {status}")]
    NotFinalizable {
        mode: &'static str,
        status: &'static str,
    },
    #[error(transparent)]
    Submit(#[from] SubmitError),
}

/// The idempotency key a draft's final job is created under.
pub fn finalize_key(draft: &Job) -> Result<IdempotencyKey, PortError> {
    IdempotencyKey::parse(&format!("finalize:{}", draft.id))
        .map_err(|e| PortError::Internal(format!("finalize key: {e}")))
}

/// Create (or find again) the final job for `draft`, which must belong to `tenant`.
///
/// # Errors
/// [`FinalizeError::NotFinalizable`] unless the draft is a SUCCEEDED draft; otherwise what
/// submission can fail with.
pub async fn finalize(app: &App, tenant: &Tenant, draft: &Job) -> Result<Accepted, FinalizeError> {
    if draft.mode != Mode::Draft || draft.status != JobStatus::Succeeded {
        return Err(FinalizeError::NotFinalizable {
            mode: draft.mode.as_str(),
            status: draft.status.as_str(),
        });
    }
    if let Some(final_id) = &draft.final_job_id {
        if let Some(job) = app
            .store
            .get_job(final_id)
            .await
            .map_err(SubmitError::Port)?
        {
            return Ok(Accepted {
                job: AcceptedJob::of(&job),
                created: false,
                new_job: Some(Box::new(job)),
            });
        }
    }
    let stored = |what: &str| {
        SubmitError::Port(PortError::Internal(format!(
            "stored draft {} has an unreadable {what}",
            draft.id
        )))
    };
    let prompt = Prompt::parse(&draft.prompt).map_err(|_| stored("prompt"))?;
    let input_image_url = draft
        .input_image_url
        .as_deref()
        .map(|raw| ImageSource::parse(raw, true))
        .transpose()
        .map_err(|_| stored("input image"))?;

    let submission = Submission {
        prompt,
        mode: Mode::Final,
        input_image_url,
        // The draft's deadline was about the draft; a final job starts without one.
        deadline: None,
    };
    let key = finalize_key(draft).map_err(SubmitError::Port)?;
    let accepted = submit::submit(app, tenant, submission, Some(key)).await?;
    Ok(record_final(app, draft, accepted).await?)
}

/// Write the final job's id on the draft (a conditional write). Should another call have
/// recorded a different final job first, that one is the draft's, and this one is canceled,
/// which returns its unit.
async fn record_final(app: &App, draft: &Job, accepted: Accepted) -> Result<Accepted, SubmitError> {
    let mut current = draft.clone();
    for _ in 0..8 {
        match &current.final_job_id {
            Some(id) if *id == accepted.job.id => return Ok(accepted),
            Some(id) => {
                let recorded = app.store.get_job(id).await?.ok_or_else(|| {
                    PortError::Internal(format!("draft {} names a missing final job", draft.id))
                })?;
                if let (true, Some(second)) = (accepted.created, accepted.new_job) {
                    warn!(draft_id = %draft.id, job_id = %accepted.job.id, "second final job canceled");
                    if let Err(e) = crate::service::jobs::cancel(app, *second).await {
                        warn!(draft_id = %draft.id, error = %e, "second final job not canceled");
                    }
                }
                return Ok(Accepted {
                    job: AcceptedJob::of(&recorded),
                    created: false,
                    new_job: Some(Box::new(recorded)),
                });
            }
            None => {}
        }
        let next = current.with_final_job(accepted.job.id.clone(), Utc::now());
        match app.store.update_job(&current, &next).await? {
            WriteOutcome::Written => return Ok(accepted),
            WriteOutcome::Conflict(latest) => current = *latest,
            WriteOutcome::Missing => {
                return Err(PortError::Internal(format!("draft {} vanished", draft.id)).into())
            }
        }
    }
    Err(PortError::Internal(format!("draft {} kept changing", draft.id)).into())
}
