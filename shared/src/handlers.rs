//! The queue handlers Lambda calls (and the local runner calls the same way): each takes an
//! `SqsEvent` and answers with a partial batch response naming only the messages to retry.
//!
//! A batch's records are worked at once, not one after another: each record's lease and
//! upstream call are sized to fit the function timeout on their own, so a record must not wait
//! for the ones before it.

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent, SqsMessage};
use chrono::Utc;
use futures_util::future::join_all;
use tracing::{error, warn, Instrument};

use crate::app::App;
use crate::domain::{ErrorCode, JobError};
use crate::ports::WriteOutcome;
use crate::service::generate::WorkError;
use crate::service::messages::{GenerateMessage, WebhookMessage};
use crate::service::{deliver, generate};

fn receive_count(record: &SqsMessage) -> u32 {
    record
        .attributes
        .get("ApproximateReceiveCount")
        .and_then(|c| c.parse().ok())
        .unwrap_or(1)
}

/// Handle a batch from the generate queue, every record at once.
pub async fn generate_batch(app: &App, event: SqsEvent) -> SqsBatchResponse {
    let work = event.records.into_iter().map(|record| async move {
        let message_id = record.message_id.clone().unwrap_or_default();
        let span = tracing::info_span!("generate_message", message_id = %message_id);
        let done = generate_one(app, &record, &message_id)
            .instrument(span)
            .await;
        (message_id, done)
    });
    batch_response(join_all(work).await)
}

/// The partial batch response naming every message that was not done with.
fn batch_response(outcomes: Vec<(String, bool)>) -> SqsBatchResponse {
    let mut response = SqsBatchResponse::default();
    for (message_id, done) in outcomes {
        if !done {
            response.add_failure(message_id);
        }
    }
    response
}

/// Returns whether the message is done with (true) or must come back (false).
async fn generate_one(app: &App, record: &SqsMessage, message_id: &str) -> bool {
    let body = record.body.as_deref().unwrap_or_default();
    let message: GenerateMessage = match serde_json::from_str(body) {
        Ok(message) => message,
        Err(e) => {
            // A body we cannot read will never be readable: let the queue dead-letter it.
            error!(error = %e, "unreadable generate message");
            return false;
        }
    };

    match generate::process(app, &message, message_id).await {
        Ok(()) => true,
        Err(WorkError {
            retryable: false,
            message: reason,
        }) => {
            warn!(job_id = %message.job_id, reason, "message dropped");
            true
        }
        Err(e) => {
            let receives = receive_count(record);
            warn!(job_id = %message.job_id, receives, error = %e, "generate step failed");
            if receives >= app.settings.poison_receives {
                fail_poisoned(app, &message, message_id).await;
            }
            false
        }
    }
}

/// End a job whose message keeps failing for reasons of our own, so it does not sit QUEUED
/// for ever while its message goes to the dead-letter queue. A job another worker is running
/// under a live lease is left to that worker: this copy of the message is not its only one.
async fn fail_poisoned(app: &App, message: &GenerateMessage, message_id: &str) {
    let Ok(Some(job)) = app.store.get_job(&message.job_id).await else {
        return;
    };
    let now = Utc::now();
    let owner = format!("{}/{}", app.worker_id, message_id);
    if job.lease_blocks(&owner, now) {
        warn!(job_id = %job.id, "poisoned message dropped; another worker holds the job");
        return;
    }
    let error = JobError::new(ErrorCode::Poison, "the job could not be processed");
    let Ok(failed) = job.fail(None, error, now) else {
        return;
    };
    if let Ok(WriteOutcome::Written) = app.store.update_job(&job, &failed).await {
        error!(job_id = %job.id, "job failed as poison");
        if let Err(e) = generate::notify(app, &failed).await {
            warn!(job_id = %job.id, error = %e, "poisoned job not notified");
        }
    }
}

/// Handle a batch from the webhook queue, every record at once.
pub async fn webhook_batch(app: &App, event: SqsEvent) -> SqsBatchResponse {
    let work = event.records.into_iter().map(|record| async move {
        let message_id = record.message_id.clone().unwrap_or_default();
        let span = tracing::info_span!("webhook_message", message_id = %message_id);
        let done = webhook_one(app, &record).instrument(span).await;
        (message_id, done)
    });
    batch_response(join_all(work).await)
}

/// Returns whether the message is done with (true) or must come back (false).
async fn webhook_one(app: &App, record: &SqsMessage) -> bool {
    let body = record.body.as_deref().unwrap_or_default();
    match serde_json::from_str::<WebhookMessage>(body) {
        Ok(message) => match deliver::process(app, &message).await {
            Ok(()) => true,
            Err(e) => !e.retryable,
        },
        Err(e) => {
            error!(error = %e, "unreadable webhook message");
            false
        }
    }
}
