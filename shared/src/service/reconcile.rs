//! The reconciler: finds jobs that no message will move any more and queues them again.
//!
//! A job can be stranded when its message could not be sent after the job was written, or
//! when a message was lost with a worker. A repeated message is harmless: every step is a
//! conditional write.

use std::time::Duration;

use chrono::Utc;
use tracing::{info, warn};

use crate::app::App;
use crate::domain::JobStatus;
use crate::ports::{PortError, PortResult, QueueName};
use crate::service::messages::GenerateMessage;

/// Re-queue jobs idle for longer than `idle`: QUEUED or RETRYING ones whose wait ended more
/// than `idle` ago, and RUNNING ones whose lease has ended. A job waiting for capacity records
/// when its message is due (`not_before`), so a job that is merely waiting is never re-queued
/// and its one message is never joined by copies. Returns how many were re-queued.
///
/// # Errors
/// [`PortError`] when the store fails.
pub async fn reconcile(app: &App, idle: Duration, limit: u32) -> PortResult<usize> {
    let now = Utc::now();
    let before = now - idle;
    let mut requeued = 0;
    for status in [JobStatus::Queued, JobStatus::Retrying, JobStatus::Running] {
        for job in app.store.stale_jobs(status, before, limit).await? {
            // A message due at `not_before` gets `idle` to be picked up, like any other step.
            let waiting = job.not_before.is_some_and(|at| at > before);
            let leased = job.lease_until.is_some_and(|until| until > now);
            if waiting || leased {
                continue;
            }
            let body = serde_json::to_string(&GenerateMessage {
                job_id: job.id.clone(),
                tenant_id: job.tenant_id.clone(),
            })
            .map_err(|e| PortError::Internal(e.to_string()))?;
            match app
                .queue
                .send(QueueName::Generate, &body, Duration::ZERO)
                .await
            {
                Ok(()) => {
                    info!(job_id = %job.id, status = status.as_str(), "stranded job re-queued");
                    requeued += 1;
                }
                Err(e) => warn!(job_id = %job.id, error = %e, "re-queue failed"),
            }
        }
    }
    Ok(requeued)
}
