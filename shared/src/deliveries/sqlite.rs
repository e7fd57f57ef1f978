//! The embedded delivery log: two tables in the shared SQLite file, made here so the store's
//! schema stays the store's.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use chrono::DateTime;
use rusqlite::{params, Connection};

use crate::domain::{JobId, TenantId, WebhookEvent};
use crate::ports::{
    AttemptOutcome, DeliveryAttempt, DeliveryLog, EventDeliveries, PortResult, WebhookEventRecord,
};
use crate::store::sqlite::{internal, millis, SqliteDb};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS webhook_events (
    event_id TEXT PRIMARY KEY,
    job_id TEXT NOT NULL,
    tenant_id TEXT NOT NULL,
    event_type TEXT NOT NULL,
    body TEXT NOT NULL,
    created_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS webhook_events_by_job ON webhook_events (job_id, created_ms);
CREATE TABLE IF NOT EXISTS webhook_attempts (
    event_id TEXT NOT NULL,
    round INTEGER NOT NULL,
    attempt INTEGER NOT NULL,
    job_id TEXT NOT NULL,
    at_ms INTEGER NOT NULL,
    status_code INTEGER,
    latency_ms INTEGER NOT NULL,
    error TEXT,
    outcome TEXT NOT NULL,
    next_ms INTEGER,
    PRIMARY KEY (event_id, round, attempt)
);
CREATE INDEX IF NOT EXISTS webhook_attempts_by_job ON webhook_attempts (job_id);
";

/// The SQLite [`DeliveryLog`].
#[derive(Clone)]
pub struct SqliteDeliveryLog {
    db: SqliteDb,
    schema_ready: Arc<AtomicBool>,
}

impl SqliteDeliveryLog {
    /// Use `db`. The log's tables are made on first use, if missing.
    pub fn new(db: SqliteDb) -> Self {
        Self {
            db,
            schema_ready: Arc::new(AtomicBool::new(false)),
        }
    }
}

/// Make the tables the first time the log is used.
fn ensure_schema(ready: &AtomicBool, conn: &Connection) -> PortResult<()> {
    if !ready.load(Ordering::Acquire) {
        conn.execute_batch(SCHEMA).map_err(internal)?;
        ready.store(true, Ordering::Release);
    }
    Ok(())
}

fn event_type(raw: &str) -> PortResult<WebhookEvent> {
    serde_json::from_value(serde_json::Value::String(raw.to_owned()))
        .map_err(|_| internal(format!("bad event type {raw} in delivery log")))
}

fn at(ms: i64) -> chrono::DateTime<chrono::Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

#[async_trait]
impl DeliveryLog for SqliteDeliveryLog {
    async fn record_event(&self, event: &WebhookEventRecord) -> PortResult<String> {
        let event = event.clone();
        let ready = Arc::clone(&self.schema_ready);
        self.db
            .call(move |conn| {
                ensure_schema(&ready, conn)?;
                conn.execute(
                    "INSERT OR IGNORE INTO webhook_events
                     (event_id, job_id, tenant_id, event_type, body, created_ms)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    params![
                        event.event_id,
                        event.job_id.as_str(),
                        event.tenant_id.as_str(),
                        event.event_type.as_str(),
                        event.body,
                        millis(event.created_at)
                    ],
                )
                .map_err(internal)?;
                conn.query_row(
                    "SELECT body FROM webhook_events WHERE event_id = ?1",
                    params![event.event_id],
                    |row| row.get::<_, String>(0),
                )
                .map_err(internal)
            })
            .await
    }

    async fn append(&self, attempt: &DeliveryAttempt) -> PortResult<()> {
        let a = attempt.clone();
        let ready = Arc::clone(&self.schema_ready);
        self.db
            .call(move |conn| {
                ensure_schema(&ready, conn)?;
                conn.execute(
                    "INSERT OR IGNORE INTO webhook_attempts
                     (event_id, round, attempt, job_id, at_ms, status_code, latency_ms, error,
                      outcome, next_ms)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                    params![
                        a.event_id,
                        a.round,
                        a.attempt,
                        a.job_id.as_str(),
                        millis(a.at),
                        a.status_code,
                        a.latency_ms as i64,
                        a.error,
                        a.outcome.as_str(),
                        a.next_attempt_at.map(millis)
                    ],
                )
                .map_err(internal)?;
                Ok(())
            })
            .await
    }

    async fn for_job(&self, job: &JobId) -> PortResult<Vec<EventDeliveries>> {
        let job = job.clone();
        let ready = Arc::clone(&self.schema_ready);
        self.db
            .call(move |conn| {
                ensure_schema(&ready, conn)?;
                let mut stmt = conn
                    .prepare(
                        "SELECT event_id, tenant_id, event_type, body, created_ms
                         FROM webhook_events WHERE job_id = ?1 ORDER BY created_ms, event_id",
                    )
                    .map_err(internal)?;
                let events = stmt
                    .query_map(params![job.as_str()], |row| {
                        Ok((
                            row.get::<_, String>(0)?,
                            row.get::<_, String>(1)?,
                            row.get::<_, String>(2)?,
                            row.get::<_, String>(3)?,
                            row.get::<_, i64>(4)?,
                        ))
                    })
                    .map_err(internal)?
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(internal)?;

                let mut stmt = conn
                    .prepare(
                        "SELECT event_id, round, attempt, at_ms, status_code, latency_ms, error,
                                outcome, next_ms
                         FROM webhook_attempts WHERE job_id = ?1
                         ORDER BY round, attempt, at_ms",
                    )
                    .map_err(internal)?;
                let attempts = stmt
                    .query_map(params![job.as_str()], |row| {
                        Ok((
                            row.get::<_, String>(0)?,
                            row.get::<_, u32>(1)?,
                            row.get::<_, u32>(2)?,
                            row.get::<_, i64>(3)?,
                            row.get::<_, Option<u16>>(4)?,
                            row.get::<_, i64>(5)?,
                            row.get::<_, Option<String>>(6)?,
                            row.get::<_, String>(7)?,
                            row.get::<_, Option<i64>>(8)?,
                        ))
                    })
                    .map_err(internal)?
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(internal)?;

                let mut out = Vec::with_capacity(events.len());
                for (event_id, tenant, kind, body, created_ms) in events {
                    let mut mine = Vec::new();
                    for (id, round, attempt, at_ms, status, latency, error, outcome, next) in
                        attempts.iter().filter(|a| a.0 == event_id)
                    {
                        mine.push(DeliveryAttempt {
                            event_id: id.clone(),
                            job_id: job.clone(),
                            round: *round,
                            attempt: *attempt,
                            at: at(*at_ms),
                            status_code: *status,
                            latency_ms: (*latency).max(0) as u64,
                            error: error.clone(),
                            outcome: AttemptOutcome::parse(outcome)
                                .ok_or_else(|| internal("bad outcome in delivery log"))?,
                            next_attempt_at: next.map(at),
                        });
                    }
                    out.push(EventDeliveries {
                        event: WebhookEventRecord {
                            event_id,
                            job_id: job.clone(),
                            tenant_id: TenantId::new(tenant),
                            event_type: event_type(&kind)?,
                            body,
                            created_at: at(created_ms),
                        },
                        attempts: mine,
                    });
                }
                Ok(out)
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use chrono::Utc;

    use super::*;

    fn event(job: &JobId, id: &str) -> WebhookEventRecord {
        WebhookEventRecord {
            event_id: id.into(),
            job_id: job.clone(),
            tenant_id: TenantId::new("ten_1"),
            event_type: WebhookEvent::JobSucceeded,
            body: r#"{"a":1}"#.into(),
            created_at: Utc::now(),
        }
    }

    fn attempt(job: &JobId, event: &str, round: u32, n: u32) -> DeliveryAttempt {
        DeliveryAttempt {
            event_id: event.into(),
            job_id: job.clone(),
            round,
            attempt: n,
            at: Utc::now(),
            status_code: Some(503),
            latency_ms: 12,
            error: Some("receiver answered 503".into()),
            outcome: AttemptOutcome::Retrying,
            next_attempt_at: Some(Utc::now()),
        }
    }

    async fn log() -> SqliteDeliveryLog {
        let db = SqliteDb::in_memory().expect("db");
        SqliteDeliveryLog::new(db)
    }

    #[tokio::test]
    async fn events_and_attempts_read_back_per_job_in_order() {
        let log = log().await;
        let job = JobId::generate();
        let other = JobId::generate();
        log.record_event(&event(&job, "evt_a"))
            .await
            .expect("event");
        log.record_event(&event(&other, "evt_b"))
            .await
            .expect("event");
        log.append(&attempt(&job, "evt_a", 0, 2))
            .await
            .expect("append");
        log.append(&attempt(&job, "evt_a", 0, 1))
            .await
            .expect("append");
        log.append(&attempt(&job, "evt_a", 1, 1))
            .await
            .expect("append");
        log.append(&attempt(&other, "evt_b", 0, 1))
            .await
            .expect("append");

        let history = log.for_job(&job).await.expect("read");

        assert_eq!(history.len(), 1);
        let stored = &history[0].event;
        assert_eq!(stored.event_id, "evt_a");
        assert_eq!(stored.body, r#"{"a":1}"#);
        assert_eq!(stored.event_type, WebhookEvent::JobSucceeded);
        let order: Vec<(u32, u32)> = history[0]
            .attempts
            .iter()
            .map(|a| (a.round, a.attempt))
            .collect();
        assert_eq!(order, [(0, 1), (0, 2), (1, 1)]);
        assert_eq!(history[0].attempts[0].status_code, Some(503));
        assert_eq!(history[0].attempts[0].outcome, AttemptOutcome::Retrying);
    }

    #[tokio::test]
    async fn writing_an_event_or_attempt_twice_keeps_the_first() {
        let log = log().await;
        let job = JobId::generate();
        let first = event(&job, "evt_a");
        let mut second = first.clone();
        second.body = "changed".into();
        let mut again = attempt(&job, "evt_a", 0, 1);

        let kept_first = log.record_event(&first).await.expect("event");
        let kept_second = log.record_event(&second).await.expect("event");
        log.append(&attempt(&job, "evt_a", 0, 1))
            .await
            .expect("append");
        again.outcome = AttemptOutcome::Delivered;
        log.append(&again).await.expect("append");

        let history = log.for_job(&job).await.expect("read");
        assert_eq!(kept_first, first.body);
        assert_eq!(
            kept_second, first.body,
            "the second write answers with the first body"
        );
        assert_eq!(history[0].event.body, first.body);
        assert_eq!(history[0].attempts.len(), 1);
        assert_eq!(history[0].attempts[0].outcome, AttemptOutcome::Retrying);
    }
}
