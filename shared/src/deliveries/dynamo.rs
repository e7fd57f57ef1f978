//! The DynamoDB delivery log: one partition per job (`jobId`), with sort keys
//! `EVT#<event>` for each event and `ATT#<event>#<round>#<attempt>` for each attempt. Every
//! write is conditioned on the item not existing, so repeating one changes nothing. Every item
//! carries a `ttl` (epoch seconds) so DynamoDB removes old logs on its own.

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_dynamodb::operation::put_item::PutItemError;
use aws_sdk_dynamodb::types::{AttributeValue, ReturnValuesOnConditionCheckFailure};
use aws_sdk_dynamodb::Client;

use crate::aws::{epoch_seconds, sdk_error};
use crate::domain::JobId;
use crate::ports::{
    DeliveryAttempt, DeliveryLog, EventDeliveries, PortError, PortResult, WebhookEventRecord,
};

/// How long log items are kept unless [`DynamoDeliveryLog::with_ttl`] says otherwise.
pub const DEFAULT_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

/// The DynamoDB [`DeliveryLog`].
#[derive(Clone)]
pub struct DynamoDeliveryLog {
    client: Client,
    table: String,
    ttl: Duration,
}

impl DynamoDeliveryLog {
    pub fn new(client: Client, table: String) -> Self {
        Self {
            client,
            table,
            ttl: DEFAULT_TTL,
        }
    }

    /// Keep items for `ttl` after they are written.
    #[must_use]
    pub fn with_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    fn expires_at(&self) -> i64 {
        let ttl = i64::try_from(self.ttl.as_secs()).unwrap_or(i64::MAX);
        epoch_seconds(chrono::Utc::now()).saturating_add(ttl)
    }

    /// Write an item unless its key exists. Returns the body already stored under the key
    /// when there was one (`ReturnValuesOnConditionCheckFailure`, so no second read).
    async fn put_once(
        &self,
        job: &JobId,
        sort: String,
        body: String,
    ) -> PortResult<Option<String>> {
        let result = self
            .client
            .put_item()
            .table_name(&self.table)
            .item("jobId", AttributeValue::S(job.to_string()))
            .item("sk", AttributeValue::S(sort))
            .item("body", AttributeValue::S(body))
            .item("ttl", AttributeValue::N(self.expires_at().to_string()))
            .condition_expression("attribute_not_exists(sk)")
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        match result {
            Ok(_) => Ok(None),
            Err(e) => match e.as_service_error() {
                Some(PutItemError::ConditionalCheckFailedException(failed)) => Ok(failed
                    .item()
                    .and_then(|item| item.get("body"))
                    .and_then(|b| b.as_s().ok())
                    .cloned()),
                _ => Err(sdk_error(e)),
            },
        }
    }
}

fn internal(e: impl std::fmt::Display) -> PortError {
    PortError::Internal(format!("delivery log item: {e}"))
}

#[async_trait]
impl DeliveryLog for DynamoDeliveryLog {
    async fn record_event(&self, event: &WebhookEventRecord) -> PortResult<String> {
        let body = serde_json::to_string(event).map_err(internal)?;
        let earlier = self
            .put_once(&event.job_id, format!("EVT#{}", event.event_id), body)
            .await?;
        match earlier {
            None => Ok(event.body.clone()),
            Some(stored) => {
                let record: WebhookEventRecord = serde_json::from_str(&stored).map_err(internal)?;
                Ok(record.body)
            }
        }
    }

    async fn append(&self, attempt: &DeliveryAttempt) -> PortResult<()> {
        let body = serde_json::to_string(attempt).map_err(internal)?;
        let sort = format!(
            "ATT#{}#{:010}#{:010}",
            attempt.event_id, attempt.round, attempt.attempt
        );
        self.put_once(&attempt.job_id, sort, body).await?;
        Ok(())
    }

    async fn for_job(&self, job: &JobId) -> PortResult<Vec<EventDeliveries>> {
        let mut events: Vec<WebhookEventRecord> = Vec::new();
        let mut attempts: BTreeMap<String, Vec<DeliveryAttempt>> = BTreeMap::new();
        let mut start = None;
        loop {
            let page = self
                .client
                .query()
                .table_name(&self.table)
                .key_condition_expression("jobId = :job")
                .expression_attribute_values(":job", AttributeValue::S(job.to_string()))
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(sdk_error)?;
            for item in page.items() {
                let sort = item.get("sk").and_then(|v| v.as_s().ok());
                let body = item.get("body").and_then(|v| v.as_s().ok());
                let (Some(sort), Some(body)) = (sort, body) else {
                    return Err(internal("missing sk or body"));
                };
                if sort.starts_with("EVT#") {
                    events.push(serde_json::from_str(body).map_err(internal)?);
                } else {
                    let attempt: DeliveryAttempt = serde_json::from_str(body).map_err(internal)?;
                    attempts
                        .entry(attempt.event_id.clone())
                        .or_default()
                        .push(attempt);
                }
            }
            match page.last_evaluated_key() {
                Some(key) => start = Some(key.clone()),
                None => break,
            }
        }

        events.sort_by(|a, b| (a.created_at, &a.event_id).cmp(&(b.created_at, &b.event_id)));
        Ok(events
            .into_iter()
            .map(|event| {
                let mut tried = attempts.remove(&event.event_id).unwrap_or_default();
                tried.sort_by_key(|a| (a.round, a.attempt, a.at));
                EventDeliveries {
                    event,
                    attempts: tried,
                }
            })
            .collect())
    }
}
