//! A tenant's webhook endpoint: configuration, secret rotation, the delivery log and replay.

use std::time::Duration;

use chrono::{DateTime, Utc};
use secrecy::SecretString;
use serde::Serialize;

use crate::app::App;
use crate::domain::{Job, JobId, TenantId, WebhookConfig, WebhookEvent, WebhookUrl};
use crate::ports::{
    AttemptOutcome, DeliveryAttempt, PortError, PortResult, QueueName, WebhookEventRecord,
};
use crate::service::deliver::event_message;
use crate::service::generate::event_for;
use crate::service::messages::WebhookMessage;
use crate::webhook::generate_secret;

/// How long the old secret keeps signing after a rotation, unless the caller says otherwise:
/// long enough for an event that was already retrying to finish its schedule.
pub const DEFAULT_ROTATION_OVERLAP: Duration = Duration::from_secs(24 * 3600);

/// The longest overlap a rotation may ask for.
pub const MAX_ROTATION_OVERLAP: Duration = Duration::from_secs(7 * 24 * 3600);

/// The endpoint as the API shows it. The secrets are never part of it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WebhookView {
    pub url: String,
    pub enabled: bool,
    pub events: Vec<WebhookEvent>,
    /// Why the service turned the endpoint off, when it did.
    pub disabled_reason: Option<String>,
    pub disabled_at: Option<DateTime<Utc>>,
    /// Until when deliveries also carry a signature made with the previous secret.
    pub previous_secret_expires_at: Option<DateTime<Utc>>,
}

impl WebhookView {
    fn of(hook: &WebhookConfig, now: DateTime<Utc>) -> Self {
        Self {
            url: hook.url.clone(),
            enabled: hook.enabled,
            events: hook.events.clone(),
            disabled_reason: hook.disabled_reason.clone(),
            disabled_at: hook.disabled_at,
            previous_secret_expires_at: hook.previous_secret_expires_at.filter(|at| *at > now),
        }
    }
}

/// What a tenant asks its endpoint to be.
#[derive(Debug, Clone)]
pub struct EndpointSettings {
    pub url: WebhookUrl,
    pub events: Vec<WebhookEvent>,
    pub enabled: bool,
}

/// Why a configuration change was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{0}")]
    Url(String),
    #[error("events must name at least one of job.succeeded, job.failed, job.canceled")]
    NoEvents,
    #[error("overlap must be at most {} seconds", MAX_ROTATION_OVERLAP.as_secs())]
    Overlap,
    #[error("no webhook is configured")]
    NotConfigured,
    #[error("no such tenant")]
    UnknownTenant,
    #[error(transparent)]
    Port(#[from] PortError),
}

/// The result of a configuration: the endpoint, and its secret when one was just made.
pub struct Configured {
    pub view: WebhookView,
    /// Shown once, when the endpoint is first created.
    pub secret: Option<SecretString>,
}

/// The secret slot a new secret goes to: two per tenant, used in turn, so a rotation overwrites
/// the secret retired by the rotation before it instead of piling up secrets.
fn next_slot(tenant: &TenantId, current: Option<&str>) -> String {
    let a = format!("webhook/{tenant}/a");
    if current == Some(a.as_str()) {
        format!("webhook/{tenant}/b")
    } else {
        a
    }
}

/// The tenant's endpoint, if it has one.
///
/// # Errors
/// [`ConfigError::UnknownTenant`], or a store failure.
pub async fn get(app: &App, tenant: &TenantId) -> Result<Option<WebhookView>, ConfigError> {
    let tenant = app
        .store
        .get_tenant(tenant)
        .await?
        .ok_or(ConfigError::UnknownTenant)?;
    Ok(tenant.webhook.map(|h| WebhookView::of(&h, Utc::now())))
}

/// Create or replace the tenant's endpoint. A new endpoint gets a new secret, returned once;
/// changing an existing one keeps its secret. Enabling clears a previous automatic disable.
///
/// # Errors
/// [`ConfigError`] when the URL may not be called, no event is chosen, or the store fails.
pub async fn configure(
    app: &App,
    tenant: &TenantId,
    settings: EndpointSettings,
) -> Result<Configured, ConfigError> {
    app.webhooks
        .check(settings.url.as_url())
        .await
        .map_err(|e| ConfigError::Url(e.to_string()))?;
    let mut events = Vec::new();
    for event in WebhookEvent::ALL {
        if settings.events.contains(&event) {
            events.push(event);
        }
    }
    if events.is_empty() {
        return Err(ConfigError::NoEvents);
    }
    let mut tenant = app
        .store
        .get_tenant(tenant)
        .await?
        .ok_or(ConfigError::UnknownTenant)?;

    let mut secret = None;
    let mut hook = match tenant.webhook.take() {
        Some(hook) => hook,
        None => {
            let slot = next_slot(&tenant.id, None);
            let fresh = generate_secret();
            app.secrets.put(&slot, &fresh).await?;
            secret = Some(fresh);
            WebhookConfig::new(settings.url.as_str(), slot)
        }
    };
    hook.url = settings.url.as_str().to_owned();
    hook.events = events;
    hook.enabled = settings.enabled;
    if settings.enabled {
        hook.disabled_reason = None;
        hook.disabled_at = None;
    }
    let view = WebhookView::of(&hook, Utc::now());
    tenant.webhook = Some(hook);
    app.store.put_tenant(&tenant).await?;
    Ok(Configured { view, secret })
}

/// Remove the tenant's endpoint. Events still queued for it are dropped when their turn comes.
///
/// # Errors
/// [`ConfigError::NotConfigured`] when there is none, or a store failure.
pub async fn remove(app: &App, tenant: &TenantId) -> Result<(), ConfigError> {
    let mut tenant = app
        .store
        .get_tenant(tenant)
        .await?
        .ok_or(ConfigError::UnknownTenant)?;
    if tenant.webhook.take().is_none() {
        return Err(ConfigError::NotConfigured);
    }
    app.store.put_tenant(&tenant).await?;
    Ok(())
}

/// A rotation's result: the new secret (shown once) and when the old one stops signing.
pub struct Rotated {
    pub secret: SecretString,
    pub previous_secret_expires_at: DateTime<Utc>,
}

/// Make a new signing secret. For `overlap`, deliveries carry signatures made with both the
/// new and the old secret, so the receiver can switch over at its own pace.
///
/// # Errors
/// [`ConfigError`] when there is no endpoint, the overlap is too long, or a store fails.
pub async fn rotate_secret(
    app: &App,
    tenant: &TenantId,
    overlap: Duration,
) -> Result<Rotated, ConfigError> {
    if overlap > MAX_ROTATION_OVERLAP {
        return Err(ConfigError::Overlap);
    }
    let mut tenant = app
        .store
        .get_tenant(tenant)
        .await?
        .ok_or(ConfigError::UnknownTenant)?;
    let tenant_id = tenant.id.clone();
    let hook = tenant.webhook.as_mut().ok_or(ConfigError::NotConfigured)?;

    let slot = next_slot(&tenant_id, Some(&hook.secret_ref));
    let secret = generate_secret();
    app.secrets.put(&slot, &secret).await?;
    let now = Utc::now();
    let expires = now + overlap;
    hook.previous_secret_ref = Some(std::mem::replace(&mut hook.secret_ref, slot));
    hook.previous_secret_expires_at = Some(expires);
    app.store.put_tenant(&tenant).await?;
    Ok(Rotated {
        secret,
        previous_secret_expires_at: expires,
    })
}

/// The secrets a delivery is signed with now: the current one, then the previous one while its
/// overlap lasts.
///
/// # Errors
/// [`PortError`] when the secret store fails or the current secret is missing.
pub async fn signing_secrets(
    app: &App,
    hook: &WebhookConfig,
    now: DateTime<Utc>,
) -> PortResult<Vec<SecretString>> {
    let current = app
        .secrets
        .get(&hook.secret_ref)
        .await?
        .ok_or_else(|| PortError::Internal("webhook signing secret is missing".into()))?;
    let mut secrets = vec![current];
    let overlapping = hook.previous_secret_expires_at.is_some_and(|at| at > now);
    if let (Some(previous), true) = (&hook.previous_secret_ref, overlapping) {
        if let Some(old) = app.secrets.get(previous).await? {
            secrets.push(old);
        }
    }
    Ok(secrets)
}

/// One attempt, as the API shows it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AttemptView {
    pub round: u32,
    pub attempt: u32,
    pub at: DateTime<Utc>,
    pub status_code: Option<u16>,
    pub latency_ms: u64,
    pub error: Option<String>,
    pub outcome: AttemptOutcome,
    pub next_attempt_at: Option<DateTime<Utc>>,
}

impl From<&DeliveryAttempt> for AttemptView {
    fn from(a: &DeliveryAttempt) -> Self {
        Self {
            round: a.round,
            attempt: a.attempt,
            at: a.at,
            status_code: a.status_code,
            latency_ms: a.latency_ms,
            error: a.error.clone(),
            outcome: a.outcome,
            next_attempt_at: a.next_attempt_at,
        }
    }
}

/// An event and its attempts. `state` is the last attempt's outcome, or `pending`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EventView {
    pub event_id: String,
    #[serde(rename = "type")]
    pub event_type: WebhookEvent,
    pub state: &'static str,
    pub created_at: DateTime<Utc>,
    pub attempts: Vec<AttemptView>,
}

/// A job's delivery log.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeliveriesView {
    pub job_id: JobId,
    pub events: Vec<EventView>,
}

/// A job's webhook events and every attempt made to deliver them.
///
/// # Errors
/// [`PortError`] when the log cannot be read.
pub async fn deliveries(app: &App, job: &Job) -> PortResult<DeliveriesView> {
    let history = app.deliveries.for_job(&job.id).await?;
    let events = history
        .iter()
        .map(|e| EventView {
            event_id: e.event.event_id.clone(),
            event_type: e.event.event_type,
            state: e.attempts.last().map_or("pending", |a| a.outcome.as_str()),
            created_at: e.event.created_at,
            attempts: e.attempts.iter().map(AttemptView::from).collect(),
        })
        .collect();
    Ok(DeliveriesView {
        job_id: job.id.clone(),
        events,
    })
}

/// Why a replay was refused.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("job has not ended, so it has no event yet")]
    NotFinished,
    #[error("no webhook is configured")]
    NotConfigured,
    #[error("the webhook is disabled; enable it first")]
    Disabled,
    #[error(transparent)]
    Port(#[from] PortError),
}

/// A replay just queued.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReplayView {
    pub job_id: JobId,
    pub event_id: String,
    #[serde(rename = "type")]
    pub event_type: WebhookEvent,
    /// Which replay this is for the event (1 for the first).
    pub round: u32,
}

/// Send the job's latest event again, with its id and body unchanged, on a fresh retry
/// schedule. A job whose event was never made (no webhook when it ended) gets it made now.
///
/// # Errors
/// [`ReplayError`] when the job has not ended or the endpoint cannot receive.
pub async fn replay(app: &App, job: &Job) -> Result<ReplayView, ReplayError> {
    let kind = event_for(job.status).ok_or(ReplayError::NotFinished)?;
    let tenant = app.store.get_tenant(&job.tenant_id).await?;
    let hook = tenant
        .and_then(|t| t.webhook)
        .ok_or(ReplayError::NotConfigured)?;
    if !hook.enabled {
        return Err(ReplayError::Disabled);
    }

    let history = app.deliveries.for_job(&job.id).await?;
    let (event, round) = match history.last() {
        Some(latest) => {
            let last_round = latest.attempts.iter().map(|a| a.round).max().unwrap_or(0);
            (latest.event.clone(), last_round + 1)
        }
        None => {
            let message = event_message(app, job, kind).await?;
            let record = WebhookEventRecord {
                event_id: message.event_id,
                job_id: job.id.clone(),
                tenant_id: job.tenant_id.clone(),
                event_type: kind,
                body: message.body,
                created_at: Utc::now(),
            };
            app.deliveries.record_event(&record).await?;
            (record, 0)
        }
    };

    let message = WebhookMessage {
        event_id: event.event_id.clone(),
        job_id: job.id.clone(),
        tenant_id: job.tenant_id.clone(),
        attempt: 1,
        not_before: None,
        body: event.body,
        event_type: Some(event.event_type),
        round,
    };
    let body = serde_json::to_string(&message).map_err(|e| PortError::Internal(e.to_string()))?;
    app.queue
        .send(QueueName::Webhook, &body, Duration::ZERO)
        .await?;
    tracing::info!(job_id = %job.id, event_id = %event.event_id, round, "webhook replay queued");
    Ok(ReplayView {
        job_id: job.id.clone(),
        event_id: event.event_id,
        event_type: event.event_type,
        round,
    })
}
