//! The DynamoDB job store. Every state change is a conditional write on the version and status
//! read; a failed condition hands back the stored item (`ReturnValuesOnConditionCheckFailure`)
//! so a lost race costs no second read. Items are (de)serialised with `serde_dynamo`.
//!
//! Tables (keys in brackets; the SAM template creates them):
//! - jobs `[id]`, with the indexes `by_tenant [tenant_id, id]` and
//!   `by_status [status, updated_ms]`;
//! - idempotency `[pk = tenant#key]`, TTL on `ttl`;
//! - tenants `[id]`, with the index `by_key_hash [keyHash]`;
//! - usage `[pk = tenant#day]`, TTL on `ttl`;
//! - events `[jobId, version]`, TTL on `ttl`.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_dynamodb::error::{DisplayErrorContext, SdkError};
use aws_sdk_dynamodb::operation::put_item::PutItemError;
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::types::{
    AttributeValue, CancellationReason, Put, ReturnValuesOnConditionCheckFailure,
    TransactWriteItem, Update,
};
use aws_sdk_dynamodb::Client;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tracing::debug;

use crate::aws::{epoch_seconds, sdk_error};
use crate::domain::{Job, JobId, JobStatus, Tenant, TenantId, UsageDay};
use crate::ports::{
    CreateOutcome, IdempotencyClaim, JobEvent, JobPage, JobStore, PortError, PortResult,
    WriteOutcome,
};

type Item = HashMap<String, AttributeValue>;

/// The table names, one per kind of record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DynamoTables {
    pub jobs: String,
    pub idempotency: String,
    pub tenants: String,
    pub usage: String,
    pub events: String,
    /// Upstream key and quota group records.
    pub keys: String,
    /// Webhook events and delivery attempts, per job.
    pub deliveries: String,
}

/// Index of a tenant's jobs, newest id first.
pub const JOBS_BY_TENANT: &str = "by_tenant";
/// Index of jobs by status and last write, for the reconciler.
pub const JOBS_BY_STATUS: &str = "by_status";
/// Index of tenants by API key hash.
pub const TENANTS_BY_KEY_HASH: &str = "by_key_hash";

/// Usage counters outlive their day by this much, then expire.
const USAGE_KEPT: Duration = Duration::from_secs(40 * 24 * 3600);

/// Concurrent transactions on one item are cancelled with `TransactionConflict`; they are
/// tried again this many times before the caller sees the store as unavailable.
const CONFLICT_RETRIES: u32 = 8;

/// The DynamoDB [`JobStore`].
#[derive(Clone, Debug)]
pub struct DynamoStore {
    client: Client,
    tables: DynamoTables,
    events_ttl: Duration,
}

impl DynamoStore {
    pub fn new(client: Client, tables: DynamoTables) -> Self {
        Self {
            client,
            tables,
            events_ttl: Duration::from_secs(90 * 24 * 3600),
        }
    }

    /// Keep job events for `ttl` before DynamoDB's TTL removes them.
    pub fn with_events_ttl(mut self, ttl: Duration) -> Self {
        self.events_ttl = ttl;
        self
    }

    fn job_item(job: &Job) -> PortResult<Item> {
        let mut item: Item = serde_dynamo::to_item(job).map_err(internal)?;
        item.insert(
            "updated_ms".into(),
            AttributeValue::N(job.updated_at.timestamp_millis().to_string()),
        );
        Ok(item)
    }

    fn event_put(&self, job: &Job, from: Option<JobStatus>) -> PortResult<TransactWriteItem> {
        let event = JobEvent {
            job_id: job.id.clone(),
            version: job.version,
            from,
            to: job.status,
            at: job.updated_at,
        };
        let mut item: Item = serde_dynamo::to_item(&event).map_err(internal)?;
        item.insert(
            "ttl".into(),
            number(epoch_seconds(job.updated_at + self.events_ttl)),
        );
        let put = Put::builder()
            .table_name(&self.tables.events)
            .set_item(Some(item))
            .build()
            .map_err(internal)?;
        Ok(TransactWriteItem::builder().put(put).build())
    }

    fn usage_key(tenant: &TenantId, day: UsageDay) -> Item {
        HashMap::from([(
            "pk".to_owned(),
            AttributeValue::S(format!("{tenant}#{day}")),
        )])
    }

    /// Run a transaction, trying again while it only lost to a concurrent one. The cancellation
    /// reasons of a transaction whose conditions failed are returned, one per item.
    async fn transact(
        &self,
        items: Vec<TransactWriteItem>,
    ) -> PortResult<Option<Vec<CancellationReason>>> {
        match self.try_transact(items).await? {
            Ok(()) => Ok(None),
            Err(Cancelled::Conditions(reasons)) => Ok(Some(reasons)),
            Err(Cancelled::Contended(_, error)) => Err(error),
        }
    }

    /// [`Self::transact`], but a transaction that still lost to concurrent ones after every
    /// retry comes back with its reasons, so the caller can tell which item was contended.
    async fn try_transact(
        &self,
        items: Vec<TransactWriteItem>,
    ) -> PortResult<Result<(), Cancelled>> {
        let mut attempt = 0;
        loop {
            let result = self
                .client
                .transact_write_items()
                .set_transact_items(Some(items.clone()))
                .send()
                .await;
            let error = match result {
                Ok(_) => return Ok(Ok(())),
                Err(e) => e,
            };
            let reasons = match &error {
                SdkError::ServiceError(service) => match service.err() {
                    TransactWriteItemsError::TransactionCanceledException(cancel) => {
                        Some(cancel.cancellation_reasons().to_vec())
                    }
                    _ => None,
                },
                _ => None,
            };
            let Some(reasons) = reasons else {
                return Err(sdk_error(error));
            };
            let conflicted = reasons
                .iter()
                .any(|r| r.code() == Some("TransactionConflict"));
            let failed_condition = reasons
                .iter()
                .any(|r| r.code() == Some("ConditionalCheckFailed"));
            if failed_condition {
                return Ok(Err(Cancelled::Conditions(reasons)));
            }
            if !conflicted {
                return Err(sdk_error(error));
            }
            if attempt >= CONFLICT_RETRIES {
                return Ok(Err(Cancelled::Contended(reasons, sdk_error(error))));
            }
            attempt += 1;
            debug!(attempt, "transaction conflict; trying again");
            tokio::time::sleep(conflict_backoff(attempt)).await;
        }
    }
}

/// Why a transaction did not go through.
enum Cancelled {
    /// Conditions failed; one reason per item.
    Conditions(Vec<CancellationReason>),
    /// It kept losing to concurrent transactions; one reason per item, and the last error.
    Contended(Vec<CancellationReason>, PortError),
}

fn conflict_backoff(attempt: u32) -> Duration {
    use rand::Rng;
    let cap = 10u64 << attempt.min(5);
    Duration::from_millis(rand::thread_rng().gen_range(1..=cap))
}

fn internal(e: impl std::fmt::Display) -> PortError {
    PortError::Internal(e.to_string())
}

fn number(n: impl ToString) -> AttributeValue {
    AttributeValue::N(n.to_string())
}

fn string(s: impl Into<String>) -> AttributeValue {
    AttributeValue::S(s.into())
}

fn failed_condition(reason: Option<&CancellationReason>) -> bool {
    reason.and_then(CancellationReason::code) == Some("ConditionalCheckFailed")
}

/// An idempotency record as stored. It carries what the answer to a repeat needs (the job's
/// id, its status at creation and its creation time), so a duplicate costs one call.
#[derive(Debug, Serialize, Deserialize)]
struct IdempotencyItem {
    pk: String,
    job_id: String,
    request_hash: String,
    /// Absent on records written before the answer was kept in them; those are answered by
    /// reading the job.
    #[serde(default)]
    status: Option<JobStatus>,
    #[serde(default)]
    created_at: Option<DateTime<Utc>>,
    /// Expiry in epoch seconds; DynamoDB's TTL deletes the item some time after it.
    ttl: i64,
}

impl DynamoStore {
    /// The answer to a repeated key, from the record it returned.
    async fn duplicate(&self, record: IdempotencyItem) -> PortResult<CreateOutcome> {
        let job_id = JobId::parse(&record.job_id)
            .ok_or_else(|| internal("bad job id in idempotency record"))?;
        let (status, created_at) = match (record.status, record.created_at) {
            (Some(status), Some(created_at)) => (status, created_at),
            _ => {
                let job = self
                    .get_job(&job_id)
                    .await?
                    .ok_or_else(|| internal("idempotency record names a missing job"))?;
                (JobStatus::Queued, job.created_at)
            }
        };
        Ok(CreateOutcome::Duplicate {
            job_id,
            request_hash: record.request_hash,
            status,
            created_at,
        })
    }
}

fn read_job(item: Item) -> PortResult<Job> {
    serde_dynamo::from_item(item).map_err(|e| PortError::Internal(format!("bad job item: {e}")))
}

#[async_trait]
impl JobStore for DynamoStore {
    async fn create_job(
        &self,
        job: &Job,
        idempotency: Option<&IdempotencyClaim>,
        daily_cap: u32,
    ) -> PortResult<CreateOutcome> {
        if daily_cap == 0 {
            return Ok(CreateOutcome::DailyCapReached);
        }
        let now = epoch_seconds(job.created_at);
        let put_job = Put::builder()
            .table_name(&self.tables.jobs)
            .set_item(Some(Self::job_item(job)?))
            .condition_expression("attribute_not_exists(id)")
            .build()
            .map_err(internal)?;
        let day_end = job
            .usage_day
            .and_hms_opt(0, 0, 0)
            .map(|t| t.and_utc())
            .unwrap_or(job.created_at);
        let reserve = Update::builder()
            .table_name(&self.tables.usage)
            .set_key(Some(Self::usage_key(&job.tenant_id, job.usage_day)))
            .update_expression("ADD units :one SET #ttl = :ttl")
            .condition_expression("attribute_not_exists(units) OR units < :cap")
            .expression_attribute_names("#ttl", "ttl")
            .expression_attribute_values(":one", number(1))
            .expression_attribute_values(":cap", number(daily_cap))
            .expression_attribute_values(":ttl", number(epoch_seconds(day_end + USAGE_KEPT)))
            .build()
            .map_err(internal)?;

        // Order matters: the reasons come back in this order.
        let mut items = vec![
            TransactWriteItem::builder().update(reserve).build(),
            TransactWriteItem::builder().put(put_job).build(),
            self.event_put(job, None)?,
        ];
        if let Some(claim) = idempotency {
            let record = IdempotencyItem {
                pk: format!("{}#{}", job.tenant_id, claim.key.as_str()),
                job_id: job.id.as_str().to_owned(),
                request_hash: claim.request_hash.clone(),
                status: Some(job.status),
                created_at: Some(job.created_at),
                ttl: epoch_seconds(claim.expires_at),
            };
            let put = Put::builder()
                .table_name(&self.tables.idempotency)
                .set_item(Some(serde_dynamo::to_item(&record).map_err(internal)?))
                // An expired record may linger until TTL removes it: it no longer counts.
                .condition_expression("attribute_not_exists(pk) OR #ttl <= :now")
                .expression_attribute_names("#ttl", "ttl")
                .expression_attribute_values(":now", number(now))
                .return_values_on_condition_check_failure(
                    ReturnValuesOnConditionCheckFailure::AllOld,
                )
                .build()
                .map_err(internal)?;
            items.push(TransactWriteItem::builder().put(put).build());
        }

        let reasons = match self.try_transact(items).await? {
            Ok(()) => return Ok(CreateOutcome::Created),
            Err(Cancelled::Conditions(reasons)) => reasons,
            Err(Cancelled::Contended(reasons, error)) => {
                let on_record = reasons
                    .get(3)
                    .and_then(CancellationReason::code)
                    .is_some_and(|code| code == "TransactionConflict");
                return if on_record {
                    Ok(CreateOutcome::IdempotencyInProgress)
                } else {
                    Err(error)
                };
            }
        };
        if let Some(existing) = reasons.get(3).filter(|r| failed_condition(Some(r))) {
            let item = existing.item().cloned().ok_or_else(|| {
                internal("idempotency condition failed without returning the record")
            })?;
            let record: IdempotencyItem = serde_dynamo::from_item(item).map_err(internal)?;
            return self.duplicate(record).await;
        }
        if failed_condition(reasons.first()) {
            return Ok(CreateOutcome::DailyCapReached);
        }
        Err(internal(format!("job {} already exists", job.id)))
    }

    async fn get_job(&self, id: &JobId) -> PortResult<Option<Job>> {
        let output = self
            .client
            .get_item()
            .table_name(&self.tables.jobs)
            .key("id", string(id.as_str()))
            .consistent_read(true)
            .send()
            .await
            .map_err(sdk_error)?;
        output.item.map(read_job).transpose()
    }

    async fn update_job(&self, previous: &Job, next: &Job) -> PortResult<WriteOutcome> {
        let item = Self::job_item(next)?;
        let condition = "version = :version AND #status = :status";
        let names = HashMap::from([("#status".to_owned(), "status".to_owned())]);
        let values = HashMap::from([
            (":version".to_owned(), number(previous.version)),
            (":status".to_owned(), string(previous.status.as_str())),
        ]);

        let refund = next.refunds_from(previous);
        let moved = next.status != previous.status;
        if !refund && !moved {
            // A lone conditional put costs half a transaction.
            let result = self
                .client
                .put_item()
                .table_name(&self.tables.jobs)
                .set_item(Some(item))
                .condition_expression(condition)
                .set_expression_attribute_names(Some(names))
                .set_expression_attribute_values(Some(values))
                .return_values_on_condition_check_failure(
                    ReturnValuesOnConditionCheckFailure::AllOld,
                )
                .send()
                .await;
            return match result {
                Ok(_) => Ok(WriteOutcome::Written),
                Err(SdkError::ServiceError(service)) => match service.into_err() {
                    PutItemError::ConditionalCheckFailedException(failed) => conflict(failed.item),
                    other => Err(internal(DisplayErrorContext(&other))),
                },
                Err(e) => Err(sdk_error(e)),
            };
        }

        let put = Put::builder()
            .table_name(&self.tables.jobs)
            .set_item(Some(item))
            .condition_expression(condition)
            .set_expression_attribute_names(Some(names))
            .set_expression_attribute_values(Some(values))
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .build()
            .map_err(internal)?;
        let mut items = vec![TransactWriteItem::builder().put(put).build()];
        if refund {
            // Exactly once: the job's own condition guards the refund.
            let give_back = Update::builder()
                .table_name(&self.tables.usage)
                .set_key(Some(Self::usage_key(&next.tenant_id, next.usage_day)))
                .update_expression("ADD units :minus_one")
                .expression_attribute_values(":minus_one", number(-1))
                .build()
                .map_err(internal)?;
            items.push(TransactWriteItem::builder().update(give_back).build());
        }
        if moved {
            items.push(self.event_put(next, Some(previous.status))?);
        }

        match self.transact(items).await? {
            None => Ok(WriteOutcome::Written),
            Some(reasons) => conflict(reasons.first().and_then(|r| r.item().cloned())),
        }
    }

    async fn list_jobs(
        &self,
        tenant: &TenantId,
        status: Option<JobStatus>,
        limit: u32,
        after: Option<&JobId>,
    ) -> PortResult<JobPage> {
        let mut query = self
            .client
            .query()
            .table_name(&self.tables.jobs)
            .index_name(JOBS_BY_TENANT)
            .key_condition_expression("tenant_id = :tenant")
            .expression_attribute_values(":tenant", string(tenant.as_str()))
            .scan_index_forward(false)
            .limit(limit.clamp(1, 1000) as i32);
        if let Some(status) = status {
            // Filters apply after `limit` items are read, so a page may come back short or
            // empty and still have a successor; the cursor carries the listing on.
            query = query
                .filter_expression("#status = :status")
                .expression_attribute_names("#status", "status")
                .expression_attribute_values(":status", string(status.as_str()));
        }
        if let Some(after) = after {
            query = query.set_exclusive_start_key(Some(HashMap::from([
                ("id".to_owned(), string(after.as_str())),
                ("tenant_id".to_owned(), string(tenant.as_str())),
            ])));
        }
        let output = query.send().await.map_err(sdk_error)?;

        let jobs = output
            .items
            .unwrap_or_default()
            .into_iter()
            .map(read_job)
            .collect::<PortResult<Vec<_>>>()?;
        let last_evaluated = output
            .last_evaluated_key
            .and_then(|key| key.get("id").and_then(|v| v.as_s().ok()).cloned())
            .and_then(|id| JobId::parse(&id));
        Ok(JobPage {
            jobs,
            last_evaluated,
        })
    }

    async fn stale_jobs(
        &self,
        status: JobStatus,
        before: DateTime<Utc>,
        limit: u32,
    ) -> PortResult<Vec<Job>> {
        let output = self
            .client
            .query()
            .table_name(&self.tables.jobs)
            .index_name(JOBS_BY_STATUS)
            .key_condition_expression("#status = :status AND updated_ms < :before")
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":status", string(status.as_str()))
            .expression_attribute_values(":before", number(before.timestamp_millis()))
            .scan_index_forward(true)
            .limit(limit.clamp(1, 1000) as i32)
            .send()
            .await
            .map_err(sdk_error)?;
        output
            .items
            .unwrap_or_default()
            .into_iter()
            .map(read_job)
            .collect()
    }

    async fn job_events(&self, id: &JobId) -> PortResult<Vec<JobEvent>> {
        let mut events = Vec::new();
        let mut start = None;
        loop {
            let output = self
                .client
                .query()
                .table_name(&self.tables.events)
                .key_condition_expression("jobId = :job")
                .expression_attribute_values(":job", string(id.as_str()))
                .consistent_read(true)
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(sdk_error)?;
            for item in output.items.unwrap_or_default() {
                events.push(serde_dynamo::from_item(item).map_err(internal)?);
            }
            start = output.last_evaluated_key;
            if start.is_none() {
                return Ok(events);
            }
        }
    }

    async fn put_tenant(&self, tenant: &Tenant) -> PortResult<()> {
        self.client
            .put_item()
            .table_name(&self.tables.tenants)
            .set_item(Some(serde_dynamo::to_item(tenant).map_err(internal)?))
            .send()
            .await
            .map_err(sdk_error)?;
        Ok(())
    }

    async fn get_tenant(&self, id: &TenantId) -> PortResult<Option<Tenant>> {
        let output = self
            .client
            .get_item()
            .table_name(&self.tables.tenants)
            .key("id", string(id.as_str()))
            .consistent_read(true)
            .send()
            .await
            .map_err(sdk_error)?;
        output
            .item
            .map(|item| serde_dynamo::from_item(item).map_err(internal))
            .transpose()
    }

    async fn tenant_by_key_hash(&self, key_hash: &str) -> PortResult<Option<Tenant>> {
        // A global index is eventually consistent: a key is usable a moment after it is made.
        let output = self
            .client
            .query()
            .table_name(&self.tables.tenants)
            .index_name(TENANTS_BY_KEY_HASH)
            .key_condition_expression("keyHash = :hash")
            .expression_attribute_values(":hash", string(key_hash))
            .limit(1)
            .send()
            .await
            .map_err(sdk_error)?;
        output
            .items
            .unwrap_or_default()
            .into_iter()
            .next()
            .map(|item| serde_dynamo::from_item(item).map_err(internal))
            .transpose()
    }

    async fn usage(&self, tenant: &TenantId, day: UsageDay) -> PortResult<u64> {
        let output = self
            .client
            .get_item()
            .table_name(&self.tables.usage)
            .set_key(Some(Self::usage_key(tenant, day)))
            .consistent_read(true)
            .send()
            .await
            .map_err(sdk_error)?;
        let units = output
            .item
            .and_then(|item| item.get("units").and_then(|v| v.as_n().ok()).cloned())
            .and_then(|n| n.parse::<i64>().ok())
            .unwrap_or(0);
        Ok(units.max(0) as u64)
    }
}

fn conflict(stored: Option<Item>) -> PortResult<WriteOutcome> {
    match stored {
        Some(item) if !item.is_empty() => Ok(WriteOutcome::Conflict(Box::new(read_job(item)?))),
        _ => Ok(WriteOutcome::Missing),
    }
}
