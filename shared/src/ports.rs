//! The ports: narrow traits the services depend on. Each has an embedded adapter (SQLite,
//! folder, in-process) and an AWS one; one behavioural suite per port runs against both.

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use secrecy::SecretString;
use serde::{Deserialize, Serialize};

use crate::domain::{
    IdempotencyKey, Job, JobError, JobId, JobStatus, Mode, QuotaGroup, QuotaGroupId, Tenant,
    TenantId, UpstreamKey, UpstreamKeyId, UsageDay, WebhookEvent,
};

/// A failure of a backing service. `Conflict`-style outcomes are not errors: they are values of
/// the method's own result type.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PortError {
    /// The service could not be reached or answered with a transient error.
    #[error("backing service unavailable: {0}")]
    Unavailable(String),
    /// Stored data that cannot be read back, or a bug.
    #[error("backing service error: {0}")]
    Internal(String),
}

pub type PortResult<T> = Result<T, PortError>;

/// The idempotency record written with a new job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyClaim {
    pub key: IdempotencyKey,
    /// Hash of the canonical request body: a second request must match it.
    pub request_hash: String,
    pub expires_at: DateTime<Utc>,
}

/// What `create_job` did.
#[derive(Debug, Clone, PartialEq)]
pub enum CreateOutcome {
    Created,
    /// The idempotency key was already used: by this job id, for this request hash. The job's
    /// status when it was created and its creation time come from the idempotency record, so
    /// a repeat is answered without reading the job.
    Duplicate {
        job_id: JobId,
        request_hash: String,
        status: JobStatus,
        created_at: DateTime<Utc>,
    },
    /// The tenant's daily cap is reached; nothing was written.
    DailyCapReached,
    /// Another request with the same idempotency key is being written right now and kept
    /// winning the race for the record; nothing was written. Retry shortly.
    IdempotencyInProgress,
}

/// What a conditional write did.
#[derive(Debug, Clone, PartialEq)]
pub enum WriteOutcome {
    Written,
    /// The job was not at the expected version; here is what is stored now.
    Conflict(Box<Job>),
    Missing,
}

/// A page of jobs, newest first.
#[derive(Debug, Clone, PartialEq)]
pub struct JobPage {
    pub jobs: Vec<Job>,
    /// The last job id this page examined, when more may follow. A page may be empty and still
    /// carry one (filters are applied after the index is read).
    pub last_evaluated: Option<JobId>,
}

/// One entry of a job's audit trail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobEvent {
    pub job_id: JobId,
    pub version: u64,
    pub from: Option<JobStatus>,
    pub to: JobStatus,
    pub at: DateTime<Utc>,
}

/// Jobs, idempotency records, tenants, usage and job events.
#[async_trait]
pub trait JobStore: Send + Sync {
    /// Write a new QUEUED job, its idempotency record and one reserved unit of the tenant's
    /// usage for the job's day, all or nothing.
    ///
    /// # Errors
    /// [`PortError`] when the store fails; a reused key or a full cap is a [`CreateOutcome`].
    async fn create_job(
        &self,
        job: &Job,
        idempotency: Option<&IdempotencyClaim>,
        daily_cap: u32,
    ) -> PortResult<CreateOutcome>;

    /// Read one job. `None` when it does not exist.
    ///
    /// # Errors
    /// [`PortError`] when the store fails.
    async fn get_job(&self, id: &JobId) -> PortResult<Option<Job>>;

    /// Replace `previous` with `next` if the stored job is still at `previous.version` and
    /// `previous.status`. Writes the job event, and returns the unit when
    /// `next.refunds_from(previous)`, in the same write.
    ///
    /// # Errors
    /// [`PortError`] when the store fails; a lost race is [`WriteOutcome::Conflict`].
    async fn update_job(&self, previous: &Job, next: &Job) -> PortResult<WriteOutcome>;

    /// A tenant's jobs, newest first, optionally of one status, after `after` (exclusive).
    ///
    /// # Errors
    /// [`PortError`] when the store fails.
    async fn list_jobs(
        &self,
        tenant: &TenantId,
        status: Option<JobStatus>,
        limit: u32,
        after: Option<&JobId>,
    ) -> PortResult<JobPage>;

    /// Jobs in `status` last written before `before`, oldest first (for the reconciler).
    ///
    /// # Errors
    /// [`PortError`] when the store fails.
    async fn stale_jobs(
        &self,
        status: JobStatus,
        before: DateTime<Utc>,
        limit: u32,
    ) -> PortResult<Vec<Job>>;

    /// A job's transitions, oldest first.
    ///
    /// # Errors
    /// [`PortError`] when the store fails.
    async fn job_events(&self, id: &JobId) -> PortResult<Vec<JobEvent>>;

    /// Insert or replace a tenant.
    ///
    /// # Errors
    /// [`PortError`] when the store fails.
    async fn put_tenant(&self, tenant: &Tenant) -> PortResult<()>;

    /// # Errors
    /// [`PortError`] when the store fails.
    async fn get_tenant(&self, id: &TenantId) -> PortResult<Option<Tenant>>;

    /// The tenant whose API key hashes to `key_hash`.
    ///
    /// # Errors
    /// [`PortError`] when the store fails.
    async fn tenant_by_key_hash(&self, key_hash: &str) -> PortResult<Option<Tenant>>;

    /// Units held by a tenant on a day (reserved minus refunded).
    ///
    /// # Errors
    /// [`PortError`] when the store fails.
    async fn usage(&self, tenant: &TenantId, day: UsageDay) -> PortResult<u64>;
}

/// The two work queues. Each has a dead-letter queue behind it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QueueName {
    Generate,
    Webhook,
}

impl QueueName {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Generate => "generate",
            Self::Webhook => "webhook",
        }
    }
}

/// The longest delay a queue accepts (SQS: 15 minutes). Longer waits are chained.
pub const MAX_QUEUE_DELAY: Duration = Duration::from_secs(900);

/// Sending work. Receiving is done by the runtime (Lambda's event source mapping, or the local
/// runner's poller through [`QueueConsumer`]), which hands batches to the handlers.
#[async_trait]
pub trait Queue: Send + Sync {
    /// Enqueue `body`, invisible for `delay` (capped at [`MAX_QUEUE_DELAY`]).
    ///
    /// # Errors
    /// [`PortError`] when the queue cannot take the message; it was then not sent.
    async fn send(&self, queue: QueueName, body: &str, delay: Duration) -> PortResult<()>;

    /// Put `body` straight onto the queue's dead-letter queue, for a message the service has
    /// given up on itself (a webhook event after its last attempt). On SQS this is a send to
    /// the DLQ named by the queue's redrive policy.
    ///
    /// # Errors
    /// [`PortError`] when the dead-letter queue cannot take the message.
    async fn send_to_dead_letter(&self, queue: QueueName, body: &str) -> PortResult<()>;
}

/// A received message, as the runtime sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedMessage {
    pub message_id: String,
    pub receipt_handle: String,
    pub body: String,
    pub receive_count: u32,
    pub sent_at: DateTime<Utc>,
}

/// The runtime's side of a queue: receive with a visibility timeout, delete, redrive.
#[async_trait]
pub trait QueueConsumer: Send + Sync {
    /// Receive up to `max` visible messages and hide them for `visibility`. A message received
    /// more than the queue's maximum is moved to the dead-letter queue instead.
    ///
    /// # Errors
    /// [`PortError`] when the queue fails.
    async fn receive(
        &self,
        queue: QueueName,
        max: u32,
        visibility: Duration,
    ) -> PortResult<Vec<ReceivedMessage>>;

    /// Delete a received message.
    ///
    /// # Errors
    /// [`PortError`] when the queue fails.
    async fn delete(&self, queue: QueueName, receipt_handle: &str) -> PortResult<()>;

    /// Bodies currently in the queue's dead-letter queue.
    ///
    /// # Errors
    /// [`PortError`] when the queue fails.
    async fn dead_letters(&self, queue: QueueName) -> PortResult<Vec<String>>;
}

/// A URL that grants access until `expires_at`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SignedUrl {
    pub url: String,
    pub expires_at: DateTime<Utc>,
}

/// An object read with a size limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BoundedRead {
    Found(Bytes),
    /// The object is larger than the limit; it was not read.
    TooLarge {
        size: u64,
    },
}

impl BoundedRead {
    /// What a read of `bytes` under a limit of `max_bytes` found.
    pub fn of(bytes: Bytes, max_bytes: usize) -> Self {
        if bytes.len() > max_bytes {
            Self::TooLarge {
                size: bytes.len() as u64,
            }
        } else {
            Self::Found(bytes)
        }
    }
}

/// Image storage.
#[async_trait]
pub trait BlobStore: Send + Sync {
    /// Store `bytes` under `key`, replacing any earlier object.
    ///
    /// # Errors
    /// [`PortError`] when the store fails.
    async fn put(&self, key: &str, bytes: Bytes, content_type: &str) -> PortResult<()>;

    /// Read an object back; `None` when it does not exist.
    ///
    /// # Errors
    /// [`PortError`] when the store fails.
    async fn get(&self, key: &str) -> PortResult<Option<Bytes>>;

    /// Read an object back only if it is at most `max_bytes` long, checking its size before
    /// reading it (client uploads can be any size); `None` when it does not exist.
    ///
    /// # Errors
    /// [`PortError`] when the store fails.
    async fn get_at_most(&self, key: &str, max_bytes: usize) -> PortResult<Option<BoundedRead>> {
        Ok(self
            .get(key)
            .await?
            .map(|bytes| BoundedRead::of(bytes, max_bytes)))
    }

    /// A fresh URL that lets anyone GET the object for `ttl`.
    ///
    /// # Errors
    /// [`PortError`] when signing fails.
    async fn signed_url(&self, key: &str, ttl: Duration) -> PortResult<SignedUrl>;

    /// A fresh URL that lets anyone PUT one object under `key` for `ttl` (client uploads). The
    /// URL does not bind a content type or a size: the reader sniffs the type from the bytes and
    /// caps the size with [`BlobStore::get_at_most`].
    ///
    /// # Errors
    /// [`PortError`] when signing fails or the store cannot take uploads.
    async fn signed_put_url(&self, key: &str, ttl: Duration) -> PortResult<SignedUrl> {
        let _ = (key, ttl);
        Err(PortError::Internal(
            "this blob store does not hand out upload URLs".into(),
        ))
    }
}

/// Upstream keys and webhook signing secrets.
#[async_trait]
pub trait SecretStore: Send + Sync {
    /// # Errors
    /// [`PortError`] when the store fails.
    async fn get(&self, name: &str) -> PortResult<Option<SecretString>>;

    /// Create or replace a secret.
    ///
    /// # Errors
    /// [`PortError`] when the store fails.
    async fn put(&self, name: &str, value: &SecretString) -> PortResult<()>;
}

/// What a dispatch asks the limiter for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PermitRequest {
    pub tenant_id: TenantId,
    pub tenant_concurrency: u32,
    /// Dispatches of this tenant in any sliding window; `None` is unlimited.
    pub tenant_rpm: Option<u32>,
    /// Whether the provider needs an upstream key (the offline provider does not).
    pub needs_key: bool,
    /// How long the permit may be held before it is reclaimed.
    pub lease: Duration,
}

/// Permits taken at every level for one job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Permit {
    pub lease_id: String,
    pub tenant_id: TenantId,
    /// The upstream key chosen, when one was needed.
    pub key_id: Option<String>,
}

/// The limiter's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    Granted(Permit),
    /// Nothing was taken; come back after this long.
    Denied {
        retry_after: Duration,
    },
}

/// How an attempt went, for key health.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyOutcome {
    Success,
    /// A failure that says nothing about the key (bad input, refused content).
    Neutral,
    Failure,
    /// The upstream asked us to slow down for at least this long.
    Throttled {
        retry_after: Option<Duration>,
    },
    /// The key is invalid or revoked.
    Invalid,
    /// The upstream was never called: the admission is handed back as if it had not been made.
    Unused,
    /// The upstream's per-day quota is spent; it comes back at `resets_at` (the limiter's
    /// configured daily reset when the upstream did not say).
    QuotaExhausted {
        resets_at: Option<DateTime<Utc>>,
    },
}

/// What the limiter knows of one upstream key right now, for operators.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KeyHealth {
    pub key_id: UpstreamKeyId,
    pub in_flight: u32,
    /// Admissions in the last window (60 s unless configured otherwise).
    pub requests_last_minute: u32,
    /// The key (or its group) takes no work before this.
    pub cooldown_until: Option<DateTime<Utc>>,
    pub consecutive_failures: u32,
    /// Share of the recent attempts (up to the last 100) that failed.
    pub error_rate: f64,
    pub p95_latency_ms: Option<u64>,
    /// The limiter stopped using the key because the upstream called it invalid.
    pub disabled: bool,
}

/// Rate limits and concurrency at every level, and the upstream key pool.
#[async_trait]
pub trait Limiter: Send + Sync {
    /// Take every permit the job needs, or none.
    ///
    /// # Errors
    /// [`PortError::Unavailable`] when the limiter cannot be reached: the caller waits.
    async fn acquire(&self, request: &PermitRequest) -> PortResult<Admission>;

    /// Count one submission by `tenant` against `limit` per window (requests per minute). `None`
    /// when it is admitted; otherwise how long until the oldest counted submission ages out.
    /// A refused submission is not counted.
    ///
    /// # Errors
    /// [`PortError::Unavailable`] when the limiter cannot be reached.
    async fn admit_submission(
        &self,
        tenant: &TenantId,
        limit: u32,
    ) -> PortResult<Option<std::time::Duration>>;

    /// Give the permits back and report how the attempt went.
    ///
    /// # Errors
    /// [`PortError`] when the limiter cannot be reached; leases expire on their own.
    async fn release(&self, permit: &Permit, outcome: KeyOutcome) -> PortResult<()>;

    /// The secret of an upstream key chosen by [`Limiter::acquire`].
    ///
    /// # Errors
    /// [`PortError`] when the key's secret cannot be read.
    async fn key_secret(&self, key_id: &str) -> PortResult<Option<SecretString>>;

    /// Load and health figures of the given keys, in the same order.
    ///
    /// # Errors
    /// [`PortError`] when the limiter cannot be reached.
    async fn key_health(&self, keys: &[UpstreamKeyId]) -> PortResult<Vec<KeyHealth>> {
        Ok(keys
            .iter()
            .map(|id| KeyHealth {
                key_id: id.clone(),
                in_flight: 0,
                requests_last_minute: 0,
                cooldown_until: None,
                consecutive_failures: 0,
                error_rate: 0.0,
                p95_latency_ms: None,
                disabled: false,
            })
            .collect())
    }

    /// A key or group record changed in the registry: stop using cached records, and when an
    /// operator re-enabled `key`, forget that the upstream called it invalid.
    ///
    /// # Errors
    /// [`PortError`] when the limiter cannot be reached.
    async fn key_changed(&self, _key: Option<&UpstreamKeyId>) -> PortResult<()> {
        Ok(())
    }
}

/// Durable records of upstream keys and quota groups (a SQLite table, or one DynamoDB item
/// per record keyed by kind and id). Secrets are not kept here.
#[async_trait]
pub trait KeyRegistry: Send + Sync {
    /// Create or replace a quota group.
    ///
    /// # Errors
    /// [`PortError`] when the registry fails.
    async fn put_group(&self, group: &QuotaGroup) -> PortResult<()>;

    /// # Errors
    /// [`PortError`] when the registry fails.
    async fn get_group(&self, id: &QuotaGroupId) -> PortResult<Option<QuotaGroup>>;

    /// Every quota group, by id.
    ///
    /// # Errors
    /// [`PortError`] when the registry fails.
    async fn list_groups(&self) -> PortResult<Vec<QuotaGroup>>;

    /// Remove a group; `false` when it did not exist.
    ///
    /// # Errors
    /// [`PortError`] when the registry fails.
    async fn delete_group(&self, id: &QuotaGroupId) -> PortResult<bool>;

    /// Create or replace a key record.
    ///
    /// # Errors
    /// [`PortError`] when the registry fails.
    async fn put_key(&self, key: &UpstreamKey) -> PortResult<()>;

    /// # Errors
    /// [`PortError`] when the registry fails.
    async fn get_key(&self, id: &UpstreamKeyId) -> PortResult<Option<UpstreamKey>>;

    /// Every key, by id.
    ///
    /// # Errors
    /// [`PortError`] when the registry fails.
    async fn list_keys(&self) -> PortResult<Vec<UpstreamKey>>;

    /// Remove a key record; `false` when it did not exist.
    ///
    /// # Errors
    /// [`PortError`] when the registry fails.
    async fn delete_key(&self, id: &UpstreamKeyId) -> PortResult<bool>;
}

/// A reference image, already fetched and sniffed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputImage {
    pub bytes: Bytes,
    pub mime_type: String,
}

/// One call to an image model.
#[derive(Debug, Clone)]
pub struct GenerationRequest {
    pub job_id: JobId,
    pub prompt: String,
    pub mode: Mode,
    pub input_image: Option<InputImage>,
}

/// An image the model produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GeneratedImage {
    pub bytes: Bytes,
    pub mime_type: String,
}

/// A successful generation.
#[derive(Debug, Clone)]
pub struct Generation {
    pub images: Vec<GeneratedImage>,
    pub provider: String,
    pub model: String,
    pub latency: Duration,
    /// The upstream's usage figures, as it reported them.
    pub usage: Option<serde_json::Value>,
}

/// A failed generation, classified once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderError {
    pub error: JobError,
    /// What the failure says about the key used.
    pub key_outcome: KeyOutcome,
    /// The upstream's own hint of when to try again.
    pub retry_after: Option<Duration>,
}

/// An image model.
#[async_trait]
pub trait Provider: Send + Sync {
    /// The provider's name, recorded on each job.
    fn name(&self) -> &str;

    /// Whether calls need an upstream key from the pool.
    fn needs_key(&self) -> bool;

    /// Generate images for `request` with `key`.
    ///
    /// # Errors
    /// A classified [`ProviderError`].
    async fn generate(
        &self,
        request: &GenerationRequest,
        key: Option<&SecretString>,
    ) -> Result<Generation, ProviderError>;
}

/// A webhook event as first queued: its id and the exact bytes every attempt signs and sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WebhookEventRecord {
    pub event_id: String,
    pub job_id: JobId,
    pub tenant_id: TenantId,
    pub event_type: WebhookEvent,
    pub body: String,
    pub created_at: DateTime<Utc>,
}

/// What became of one delivery attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttemptOutcome {
    /// The receiver answered 2xx.
    Delivered,
    /// It failed; another attempt is scheduled.
    Retrying,
    /// It was the last attempt: the event went to the dead-letter queue.
    Failed,
    /// The receiver answered 410 Gone: the endpoint was disabled.
    EndpointDisabled,
    /// Not sent: the webhook was removed or disabled, or its URL is no longer allowed.
    Dropped,
}

impl AttemptOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Delivered => "delivered",
            Self::Retrying => "retrying",
            Self::Failed => "failed",
            Self::EndpointDisabled => "endpoint_disabled",
            Self::Dropped => "dropped",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        [
            Self::Delivered,
            Self::Retrying,
            Self::Failed,
            Self::EndpointDisabled,
            Self::Dropped,
        ]
        .into_iter()
        .find(|o| o.as_str() == raw)
    }
}

/// One delivery attempt, as the delivery log keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeliveryAttempt {
    pub event_id: String,
    pub job_id: JobId,
    /// 0 for the event's first delivery, then 1, 2... for each replay.
    pub round: u32,
    /// 1-based within its round.
    pub attempt: u32,
    pub at: DateTime<Utc>,
    /// The receiver's status code, when it answered.
    pub status_code: Option<u16>,
    pub latency_ms: u64,
    /// Why the attempt failed, in our words; never the receiver's body.
    pub error: Option<String>,
    pub outcome: AttemptOutcome,
    /// When the next attempt is due, for [`AttemptOutcome::Retrying`].
    pub next_attempt_at: Option<DateTime<Utc>>,
}

/// An event with its attempts, oldest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventDeliveries {
    pub event: WebhookEventRecord,
    pub attempts: Vec<DeliveryAttempt>,
}

/// Webhook events and their delivery attempts, read back per job. Keyed so it maps onto one
/// DynamoDB partition per job (sort keys `EVT#<event>` and `ATT#<event>#<round>#<attempt>`).
#[async_trait]
pub trait DeliveryLog: Send + Sync {
    /// Keep an event the first time it is seen; later calls with the same id change nothing.
    /// Returns the body kept for the event's id: this one when it was the first, else the one
    /// recorded before it (in the same call, with no second read).
    ///
    /// # Errors
    /// [`PortError`] when the log cannot be written.
    async fn record_event(&self, event: &WebhookEventRecord) -> PortResult<String>;

    /// Append one attempt. Writing the same (event, round, attempt) again changes nothing,
    /// so a redelivered queue message cannot log an attempt twice.
    ///
    /// # Errors
    /// [`PortError`] when the log cannot be written.
    async fn append(&self, attempt: &DeliveryAttempt) -> PortResult<()>;

    /// A job's events, oldest first, each with its attempts in order.
    ///
    /// # Errors
    /// [`PortError`] when the log cannot be read.
    async fn for_job(&self, job: &JobId) -> PortResult<Vec<EventDeliveries>>;
}
