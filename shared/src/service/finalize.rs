//! Turning a succeeded draft into a final job with the same prompt and reference image.
//!
//! The final job is created through the ordinary submission path (daily cap, idempotency
//! record, queue) under an idempotency key derived from the draft's id, so finalizing the
//! same draft again returns the same final job.

use crate::app::App;
use crate::domain::{IdempotencyKey, Job, JobStatus, Mode, Prompt, Tenant};
use crate::fetch::ImageSource;
use crate::ports::PortError;
use crate::service::submit::{self, Accepted, Submission, SubmitError};

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
    Ok(submit::submit(app, tenant, submission, Some(key)).await?)
}
