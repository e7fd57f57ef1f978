//! The webhook worker: one attempt per message.
//!
//! The retry schedule is the service's own, not the queue's: a failed attempt queues a new
//! message for the next one (chained through `not_before` past the queue's 15-minute delay
//! limit) and acknowledges the current one, so waiting never counts toward the queue's
//! receive limit. After the last attempt the event goes to the dead-letter queue.

use std::time::Duration;

use chrono::{DateTime, Utc};
use tracing::{info, warn};
use url::Url;

use crate::app::App;
use crate::domain::{Job, WebhookConfig, WebhookEvent};
use crate::ports::{
    AttemptOutcome, DeliveryAttempt, EventDeliveries, PortError, PortResult, QueueName,
    WebhookEventRecord, MAX_QUEUE_DELAY,
};
use crate::service::generate::{event_id, WorkError};
use crate::service::messages::WebhookMessage;
use crate::service::webhooks::signing_secrets;
use crate::webhook::AttemptReport;

/// Shown in the API when a 410 answer turned the endpoint off.
pub const GONE_REASON: &str = "the receiver answered 410 Gone";

fn encode(message: &WebhookMessage) -> Result<String, PortError> {
    serde_json::to_string(message).map_err(|e| PortError::Internal(e.to_string()))
}

fn until(at: DateTime<Utc>, now: DateTime<Utc>) -> Duration {
    (at - now).to_std().unwrap_or(Duration::ZERO)
}

/// Build the event for a terminal job. Its body is serialised here, once; every attempt and
/// every replay signs and sends exactly these bytes under the same id.
///
/// # Errors
/// [`PortError`] when result URLs cannot be signed.
pub async fn event_message(
    app: &App,
    job: &Job,
    event: WebhookEvent,
) -> PortResult<WebhookMessage> {
    let view = crate::service::jobs::view(app, job, app.settings.webhook_url_ttl).await?;
    let event_id = event_id(job);
    let payload = serde_json::json!({
        "eventId": event_id,
        "type": event.as_str(),
        "jobId": job.id,
        "status": job.status,
        "resultUrls": view.result_urls,
        "resultUrlsExpireAt": view.result_urls_expire_at,
        "error": job.error,
        "timestamp": Utc::now(),
    });
    Ok(WebhookMessage {
        event_id,
        job_id: job.id.clone(),
        tenant_id: job.tenant_id.clone(),
        attempt: 1,
        not_before: None,
        body: payload.to_string(),
        event_type: Some(event),
        round: 0,
    })
}

/// The event type of a message, from the message or, for older messages, from its body.
fn event_type(message: &WebhookMessage) -> Option<WebhookEvent> {
    message.event_type.or_else(|| {
        let body: serde_json::Value = serde_json::from_str(&message.body).ok()?;
        serde_json::from_value(body.get("type")?.clone()).ok()
    })
}

/// Whether this very attempt was already made and logged (the queue delivered the message
/// twice). The log is written after the next message is queued, so nothing is lost.
fn already_made(history: &[EventDeliveries], message: &WebhookMessage) -> bool {
    history
        .iter()
        .filter(|e| e.event.event_id == message.event_id)
        .flat_map(|e| &e.attempts)
        .any(|a| a.round == message.round && a.attempt == message.attempt)
}

/// Deliver one webhook attempt.
///
/// # Errors
/// A retryable [`WorkError`] only when a backing service failed (store, queue, secrets): the
/// queue then delivers the message again. A receiver's failure is never an error here: it is
/// logged and scheduled.
pub async fn process(app: &App, message: &WebhookMessage) -> Result<(), WorkError> {
    let now = Utc::now();
    if let Some(at) = message.not_before.filter(|at| *at > now) {
        let wait = until(at, now).min(MAX_QUEUE_DELAY);
        app.queue
            .send(QueueName::Webhook, &encode(message)?, wait)
            .await?;
        return Ok(());
    }

    let Some(kind) = event_type(message) else {
        return Err(WorkError {
            retryable: false,
            message: format!("webhook event {} has no type", message.event_id),
        });
    };
    let history = app.deliveries.for_job(&message.job_id).await?;
    if already_made(&history, message) {
        info!(event_id = %message.event_id, attempt = message.attempt, "attempt already made");
        return Ok(());
    }
    app.deliveries
        .record_event(&WebhookEventRecord {
            event_id: message.event_id.clone(),
            job_id: message.job_id.clone(),
            tenant_id: message.tenant_id.clone(),
            event_type: kind,
            body: message.body.clone(),
            created_at: now,
        })
        .await?;

    let tenant = app.store.get_tenant(&message.tenant_id).await?;
    let Some(hook) = tenant.and_then(|t| t.webhook).filter(|h| h.enabled) else {
        info!(event_id = %message.event_id, "webhook removed or disabled; event dropped");
        return log(app, message, now, "webhook removed or disabled").await;
    };
    let Ok(url) = Url::parse(&hook.url) else {
        return log(app, message, now, "webhook URL is not valid").await;
    };
    let secrets = signing_secrets(app, &hook, now).await?;

    let report = app
        .webhooks
        .send(
            &url,
            &secrets,
            &message.event_id,
            message.attempt,
            &message.body,
        )
        .await;
    settle(app, message, &hook, report, now).await
}

/// Act on an attempt's report: done, endpoint gone, retry later, or dead-letter.
async fn settle(
    app: &App,
    message: &WebhookMessage,
    hook: &WebhookConfig,
    report: AttemptReport,
    at: DateTime<Utc>,
) -> Result<(), WorkError> {
    let mut entry = DeliveryAttempt {
        event_id: message.event_id.clone(),
        job_id: message.job_id.clone(),
        round: message.round,
        attempt: message.attempt,
        at,
        status_code: report.status,
        latency_ms: report.latency.as_millis() as u64,
        error: report.error.as_ref().map(ToString::to_string),
        outcome: AttemptOutcome::Delivered,
        next_attempt_at: None,
    };

    if report.delivered() {
        info!(event_id = %message.event_id, attempt = message.attempt, status = report.status,
            latency_ms = entry.latency_ms, "webhook delivered");
    } else if report.gone() {
        warn!(event_id = %message.event_id, tenant_id = %message.tenant_id,
            "receiver answered 410; endpoint disabled");
        disable_gone(app, message, hook, at).await?;
        entry.outcome = AttemptOutcome::EndpointDisabled;
    } else if let Some(delay) = app.webhooks.schedule().delay_after(message.attempt) {
        let due = at + delay;
        let next = WebhookMessage {
            attempt: message.attempt + 1,
            not_before: Some(due),
            ..message.clone()
        };
        app.queue
            .send(
                QueueName::Webhook,
                &encode(&next)?,
                delay.min(MAX_QUEUE_DELAY),
            )
            .await?;
        warn!(event_id = %message.event_id, attempt = message.attempt, status = report.status,
            error = entry.error.as_deref(), retry_in_s = delay.as_secs(), "webhook attempt failed");
        entry.outcome = AttemptOutcome::Retrying;
        entry.next_attempt_at = Some(due);
    } else {
        app.queue
            .send_to_dead_letter(QueueName::Webhook, &encode(message)?)
            .await?;
        warn!(event_id = %message.event_id, attempts = message.attempt, status = report.status,
            error = entry.error.as_deref(), "webhook failed for good; event dead-lettered");
        entry.outcome = AttemptOutcome::Failed;
    }

    app.deliveries.append(&entry).await?;
    Ok(())
}

/// Log an attempt that was not made, and acknowledge the message.
async fn log(
    app: &App,
    message: &WebhookMessage,
    at: DateTime<Utc>,
    why: &str,
) -> Result<(), WorkError> {
    app.deliveries
        .append(&DeliveryAttempt {
            event_id: message.event_id.clone(),
            job_id: message.job_id.clone(),
            round: message.round,
            attempt: message.attempt,
            at,
            status_code: None,
            latency_ms: 0,
            error: Some(why.to_owned()),
            outcome: AttemptOutcome::Dropped,
            next_attempt_at: None,
        })
        .await?;
    Ok(())
}

/// Turn the endpoint off after a 410, unless the tenant has pointed it elsewhere meanwhile.
async fn disable_gone(
    app: &App,
    message: &WebhookMessage,
    sent_to: &WebhookConfig,
    at: DateTime<Utc>,
) -> PortResult<()> {
    let Some(mut tenant) = app.store.get_tenant(&message.tenant_id).await? else {
        return Ok(());
    };
    let Some(hook) = tenant.webhook.as_mut() else {
        return Ok(());
    };
    if hook.url != sent_to.url || !hook.enabled {
        return Ok(());
    }
    hook.enabled = false;
    hook.disabled_reason = Some(GONE_REASON.to_owned());
    hook.disabled_at = Some(at);
    app.store.put_tenant(&tenant).await
}
