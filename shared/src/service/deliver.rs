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

/// The body recorded for `event_id`, if the event is in the log.
fn recorded_body(history: &[EventDeliveries], event_id: &str) -> Option<String> {
    history
        .iter()
        .find(|e| e.event.event_id == event_id)
        .map(|e| e.event.body.clone())
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
    // A job's notice can be queued more than once (a repeated generate step), each copy with
    // a body made at its own time. The first body recorded is the event's; every send of this
    // id carries exactly those bytes.
    let body = match recorded_body(&history, &message.event_id) {
        Some(body) => body,
        // Another copy may have recorded its body since the read: the write says which won.
        None => {
            app.deliveries
                .record_event(&WebhookEventRecord {
                    event_id: message.event_id.clone(),
                    job_id: message.job_id.clone(),
                    tenant_id: message.tenant_id.clone(),
                    event_type: kind,
                    body: message.body.clone(),
                    created_at: now,
                })
                .await?
        }
    };
    let message = &WebhookMessage {
        body,
        ..message.clone()
    };

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

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use async_trait::async_trait;
    use axum::http::StatusCode;
    use axum::routing::post;
    use axum::Router;
    use tokio::net::TcpListener;

    use super::*;
    use crate::app::AppSettings;
    use crate::blob::FsBlobStore;
    use crate::domain::{JobId, Plan, Tenant, TenantId};
    use crate::ports::{Queue, QueueConsumer};
    use crate::queue::SqliteQueue;
    use crate::store::SqliteDb;
    use crate::webhook::{generate_secret, OutboundPolicy, RetrySchedule, WebhookSender};

    /// The SQLite queue, noting the delay of every message sent through it.
    struct Recording {
        inner: SqliteQueue,
        sent: Mutex<Vec<(WebhookMessage, Duration)>>,
    }

    #[async_trait]
    impl Queue for Recording {
        async fn send(&self, queue: QueueName, body: &str, delay: Duration) -> PortResult<()> {
            if let Ok(message) = serde_json::from_str(body) {
                self.sent.lock().expect("lock").push((message, delay));
            }
            self.inner.send(queue, body, delay).await
        }

        async fn send_to_dead_letter(&self, queue: QueueName, body: &str) -> PortResult<()> {
            self.inner.send_to_dead_letter(queue, body).await
        }
    }

    struct Fixture {
        app: App,
        queue: Arc<Recording>,
        raw_queue: SqliteQueue,
        tenant: TenantId,
        _dir: tempfile::TempDir,
    }

    /// A receiver on loopback that always answers `status`.
    async fn receiver(status: StatusCode) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let app = Router::new().route("/in", post(move || async move { status }));
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        format!("http://{addr}/in")
    }

    async fn fixture(url: &str, schedule: RetrySchedule) -> Fixture {
        let dir = tempfile::tempdir().expect("dir");
        let db = SqliteDb::in_memory().expect("db");
        let raw_queue = SqliteQueue::new(db.clone(), 5);
        let queue = Arc::new(Recording {
            inner: raw_queue.clone(),
            sent: Mutex::new(Vec::new()),
        });
        let policy = OutboundPolicy {
            allow_loopback: true,
            loopback_only: false,
        };
        let blobs = Arc::new(FsBlobStore::new(dir.path().into(), "http://x", vec![1; 32]));
        let webhooks = WebhookSender::new(policy, Duration::from_secs(5)).with_schedule(schedule);
        let mut app = crate::embedded::app(
            db.clone(),
            blobs,
            webhooks,
            AppSettings::default(),
            crate::limiter::LimiterSettings::default(),
        )
        .await
        .expect("app");
        app.queue = queue.clone();
        app.worker_id = "test".into();
        let tenant = TenantId::generate();
        app.secrets
            .put("webhook/t/a", &generate_secret())
            .await
            .expect("secret");
        app.store
            .put_tenant(&Tenant {
                id: tenant.clone(),
                name: "t".into(),
                key_hash: "h".into(),
                plan: Plan::default(),
                webhook: Some(WebhookConfig::new(url, "webhook/t/a")),
            })
            .await
            .expect("tenant");
        Fixture {
            app,
            queue,
            raw_queue,
            tenant,
            _dir: dir,
        }
    }

    fn message(f: &Fixture, attempt: u32) -> WebhookMessage {
        WebhookMessage {
            event_id: "evt_1".into(),
            job_id: JobId::generate(),
            tenant_id: f.tenant.clone(),
            attempt,
            not_before: None,
            body: r#"{"type":"job.succeeded"}"#.into(),
            event_type: Some(WebhookEvent::JobSucceeded),
            round: 0,
        }
    }

    fn steady(first: Duration, attempts: u32) -> RetrySchedule {
        RetrySchedule {
            attempts,
            first,
            factor: 1,
            cap: first,
            jitter: 0.0,
        }
    }

    fn sent(f: &Fixture) -> Vec<(WebhookMessage, Duration)> {
        f.queue.sent.lock().expect("lock").clone()
    }

    #[tokio::test]
    async fn a_wait_longer_than_the_queue_maximum_is_chained_in_fifteen_minute_hops() {
        let f = fixture(&receiver(StatusCode::OK).await, RetrySchedule::default()).await;
        let due = Utc::now() + chrono::Duration::hours(2);
        let waiting = WebhookMessage {
            not_before: Some(due),
            ..message(&f, 6)
        };

        process(&f.app, &waiting).await.expect("processed");

        let sent = sent(&f);
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].0, waiting, "the hop carries the message unchanged");
        assert_eq!(sent[0].1, MAX_QUEUE_DELAY);
        let history = f
            .app
            .deliveries
            .for_job(&waiting.job_id)
            .await
            .expect("log");
        assert!(history.is_empty(), "no attempt is made before it is due");
    }

    #[tokio::test]
    async fn the_last_hop_waits_only_for_what_is_left() {
        let f = fixture(&receiver(StatusCode::OK).await, RetrySchedule::default()).await;
        let waiting = WebhookMessage {
            not_before: Some(Utc::now() + chrono::Duration::minutes(5)),
            ..message(&f, 2)
        };

        process(&f.app, &waiting).await.expect("processed");

        let wait = sent(&f)[0].1;
        assert!(wait <= Duration::from_secs(300) && wait > Duration::from_secs(290));
    }

    #[tokio::test]
    async fn a_failed_attempt_queues_the_next_with_its_due_time_and_logs_the_failure() {
        let url = receiver(StatusCode::SERVICE_UNAVAILABLE).await;
        let f = fixture(&url, steady(Duration::from_secs(2 * 3600), 8)).await;
        let first = message(&f, 1);

        process(&f.app, &first).await.expect("processed");

        let sent = sent(&f);
        assert_eq!(sent.len(), 1);
        let (next, delay) = &sent[0];
        assert_eq!(next.attempt, 2);
        assert_eq!((&next.event_id, &next.body), (&first.event_id, &first.body));
        assert_eq!(*delay, MAX_QUEUE_DELAY);
        let due = next.not_before.expect("due time");
        let minutes = (due - Utc::now()).num_minutes();
        assert!((118..=120).contains(&minutes), "{minutes} minutes");
        let history = f.app.deliveries.for_job(&first.job_id).await.expect("log");
        let attempt = &history[0].attempts[0];
        assert_eq!(attempt.outcome, AttemptOutcome::Retrying);
        assert_eq!(attempt.status_code, Some(503));
        assert_eq!(attempt.error.as_deref(), Some("receiver answered 503"));
        let logged_due = attempt.next_attempt_at.expect("logged due time");
        assert!((logged_due - due).num_milliseconds().abs() <= 1);
    }

    #[tokio::test]
    async fn the_last_failed_attempt_dead_letters_the_event_and_marks_it_failed() {
        let url = receiver(StatusCode::INTERNAL_SERVER_ERROR).await;
        let f = fixture(&url, steady(Duration::from_secs(1), 8)).await;
        let last = message(&f, 8);

        process(&f.app, &last).await.expect("processed");

        assert!(sent(&f).is_empty(), "no further attempt is queued");
        let dead = f
            .raw_queue
            .dead_letters(QueueName::Webhook)
            .await
            .expect("dlq");
        assert_eq!(dead.len(), 1);
        let dead: WebhookMessage = serde_json::from_str(&dead[0]).expect("message");
        assert_eq!(dead, last);
        let history = f.app.deliveries.for_job(&last.job_id).await.expect("log");
        assert_eq!(history[0].attempts[0].outcome, AttemptOutcome::Failed);
    }

    #[tokio::test]
    async fn a_redelivered_message_does_not_make_its_attempt_twice() {
        let url = receiver(StatusCode::SERVICE_UNAVAILABLE).await;
        let f = fixture(&url, steady(Duration::from_secs(60), 8)).await;
        let first = message(&f, 1);

        process(&f.app, &first).await.expect("processed");
        process(&f.app, &first).await.expect("processed again");

        assert_eq!(sent(&f).len(), 1, "one next attempt, not two");
        let history = f.app.deliveries.for_job(&first.job_id).await.expect("log");
        assert_eq!(history[0].attempts.len(), 1);
    }

    #[tokio::test]
    async fn a_410_answer_disables_the_endpoint_and_stops_retrying() {
        let f = fixture(&receiver(StatusCode::GONE).await, RetrySchedule::default()).await;
        let first = message(&f, 1);

        process(&f.app, &first).await.expect("processed");

        assert!(sent(&f).is_empty());
        let tenant = f.app.store.get_tenant(&f.tenant).await.expect("read");
        let hook = tenant.and_then(|t| t.webhook).expect("hook");
        assert!(!hook.enabled);
        assert_eq!(hook.disabled_reason.as_deref(), Some(GONE_REASON));
        let history = f.app.deliveries.for_job(&first.job_id).await.expect("log");
        assert_eq!(
            history[0].attempts[0].outcome,
            AttemptOutcome::EndpointDisabled
        );
    }

    #[tokio::test]
    async fn an_event_for_a_disabled_endpoint_is_dropped_and_logged() {
        let f = fixture(&receiver(StatusCode::OK).await, RetrySchedule::default()).await;
        let mut tenant = f
            .app
            .store
            .get_tenant(&f.tenant)
            .await
            .expect("read")
            .expect("tenant");
        if let Some(hook) = tenant.webhook.as_mut() {
            hook.enabled = false;
        }
        f.app.store.put_tenant(&tenant).await.expect("write");
        let first = message(&f, 1);

        process(&f.app, &first).await.expect("processed");

        let history = f.app.deliveries.for_job(&first.job_id).await.expect("log");
        assert_eq!(history[0].attempts[0].outcome, AttemptOutcome::Dropped);
        assert!(sent(&f).is_empty());
    }

    #[tokio::test]
    async fn a_message_queued_before_event_types_were_carried_takes_its_type_from_the_body() {
        let f = fixture(&receiver(StatusCode::OK).await, RetrySchedule::default()).await;
        let old = WebhookMessage {
            event_type: None,
            body: r#"{"type":"job.canceled"}"#.into(),
            ..message(&f, 1)
        };

        process(&f.app, &old).await.expect("processed");

        let history = f.app.deliveries.for_job(&old.job_id).await.expect("log");
        assert_eq!(history[0].event.event_type, WebhookEvent::JobCanceled);
        assert_eq!(history[0].attempts[0].outcome, AttemptOutcome::Delivered);
    }

    #[test]
    fn a_message_body_from_before_round_and_type_existed_still_parses() {
        let stored = r#"{"eventId":"evt_1","jobId":"job_01JF3W5Q9Y2M8Z7K4C6T1V0B3N",
            "tenantId":"ten_1","attempt":2,"notBefore":null,"body":"{}"}"#;

        let message: WebhookMessage = serde_json::from_str(stored).expect("parses");

        assert_eq!((message.round, message.event_type), (0, None));
    }
}
