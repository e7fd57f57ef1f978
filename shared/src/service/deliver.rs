//! The webhook worker: sign and send one event, once per message.

use std::time::Duration;

use chrono::Utc;
use tracing::{info, warn};

use crate::app::App;
use crate::domain::WebhookUrl;
use crate::ports::QueueName;
use crate::service::generate::WorkError;
use crate::service::messages::WebhookMessage;

/// Deliver one webhook event.
///
/// # Errors
/// A retryable [`WorkError`] when the receiver or a backing service failed; the queue
/// delivers the message again and dead-letters it after its maximum.
pub async fn process(app: &App, message: &WebhookMessage) -> Result<(), WorkError> {
    if let Some(at) = message.not_before.filter(|at| *at > Utc::now()) {
        let wait = (at - Utc::now()).to_std().unwrap_or(Duration::ZERO);
        let body = serde_json::to_string(message).map_err(|e| WorkError {
            retryable: false,
            message: e.to_string(),
        })?;
        app.queue.send(QueueName::Webhook, &body, wait).await?;
        return Ok(());
    }

    let tenant = app.store.get_tenant(&message.tenant_id).await?;
    let Some(hook) = tenant.and_then(|t| t.webhook).filter(|h| h.enabled) else {
        info!(event_id = %message.event_id, "webhook no longer configured; event dropped");
        return Ok(());
    };
    let url =
        WebhookUrl::parse(&hook.url, app.settings.allow_http_urls).map_err(|e| WorkError {
            retryable: false,
            message: e.to_string(),
        })?;
    let secret = app
        .secrets
        .get(&hook.secret_ref)
        .await?
        .ok_or_else(|| WorkError {
            retryable: true,
            message: "webhook secret missing".into(),
        })?;

    match app
        .webhooks
        .send(
            url.as_url(),
            &secret,
            &message.event_id,
            message.attempt,
            &message.body,
        )
        .await
    {
        Ok(delivered) => {
            info!(event_id = %message.event_id, status = delivered.status,
                latency_ms = delivered.latency.as_millis() as u64, "webhook delivered");
            Ok(())
        }
        Err(e) => {
            warn!(event_id = %message.event_id, error = %e, "webhook attempt failed");
            Err(WorkError {
                retryable: true,
                message: e.to_string(),
            })
        }
    }
}
