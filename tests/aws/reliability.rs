//! Fault injection on the AWS adapters (DynamoDB, SQS, S3 and Secrets Manager on moto's
//! server): the upstream throttling and failing, one message delivered twice at once, the
//! queue refusing a send after the job write, the limiter unreachable, and a worker dying after
//! the upstream answered. The scenarios mirror `tests/reliability.rs` on the embedded adapters.
//!
//! SQS counts delays and visibility timeouts in whole seconds, so every retry here waits at
//! least a second however short the retry bands are.
//!
//! Run with `cargo test -p imagegen-aws-tests --test reliability`.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent, SqsMessage};
use bytes::Bytes;
use chrono::Utc;
use imagegen::domain::{ErrorCode, Job, JobError, JobId, JobStatus, Mode, Plan, Prompt, Tenant};
use imagegen::ports::{
    Admission, BlobStore, GeneratedImage, Generation, GenerationRequest, KeyOutcome, Limiter,
    Permit, PermitRequest, PortError, PortResult, Provider, ProviderError, Queue, QueueConsumer,
    QueueName, ReceivedMessage, SignedUrl,
};
use imagegen::provider::offline;
use imagegen::queue::sqs::SqsQueue;
use imagegen::service::messages::GenerateMessage;
use imagegen::service::reconcile::reconcile;
use imagegen::service::retry::RetryPolicy;
use imagegen::service::submit::{submit, Submission};
use imagegen::{handlers, App};
use imagegen_aws_tests::Stack;
use secrecy::SecretString;
use tokio::sync::Notify;

/// What the scripted provider does on one call.
#[derive(Debug, Clone)]
enum Step {
    Fail(ProviderError),
    Hang,
}

fn throttled() -> Step {
    Step::Fail(ProviderError {
        error: JobError::new(ErrorCode::UpstreamRateLimited, "429 from upstream"),
        key_outcome: KeyOutcome::Throttled { retry_after: None },
        retry_after: None,
    })
}

fn server_error() -> Step {
    Step::Fail(ProviderError {
        error: JobError::new(ErrorCode::UpstreamUnavailable, "503 from upstream"),
        key_outcome: KeyOutcome::Failure,
        retry_after: None,
    })
}

/// A provider that follows its script, then draws a real PNG; it counts its calls.
#[derive(Default)]
struct ScriptedProvider {
    script: Mutex<VecDeque<Step>>,
    calls: AtomicU32,
}

impl ScriptedProvider {
    fn push(&self, steps: impl IntoIterator<Item = Step>) {
        self.script
            .lock()
            .unwrap_or_else(|e| panic!("{e}"))
            .extend(steps);
    }

    fn calls(&self) -> u32 {
        self.calls.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl Provider for ScriptedProvider {
    fn name(&self) -> &str {
        "scripted"
    }

    fn needs_key(&self) -> bool {
        false
    }

    async fn generate(
        &self,
        request: &GenerationRequest,
        _key: Option<&SecretString>,
    ) -> Result<Generation, ProviderError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let step = self
            .script
            .lock()
            .unwrap_or_else(|e| panic!("{e}"))
            .pop_front();
        match step {
            Some(Step::Fail(e)) => return Err(e),
            Some(Step::Hang) => {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                return Err(ProviderError {
                    error: JobError::new(ErrorCode::UpstreamUnavailable, "hung"),
                    key_outcome: KeyOutcome::Failure,
                    retry_after: None,
                });
            }
            None => {}
        }
        let png = offline::render(&request.prompt, request.mode).unwrap_or_else(|e| panic!("{e}"));
        Ok(Generation {
            images: vec![GeneratedImage {
                bytes: Bytes::from(png),
                mime_type: "image/png".into(),
            }],
            provider: "scripted".into(),
            model: "scripted-1".into(),
            latency: Duration::ZERO,
            usage: None,
        })
    }
}

/// The SQS queue, refusing every send while `failing` is set.
struct FlakyQueue {
    inner: Arc<dyn Queue>,
    failing: AtomicBool,
}

impl FlakyQueue {
    fn check(&self) -> PortResult<()> {
        if self.failing.load(Ordering::SeqCst) {
            return Err(PortError::Unavailable(
                "queue send refused by the test".into(),
            ));
        }
        Ok(())
    }
}

#[async_trait]
impl Queue for FlakyQueue {
    async fn send(&self, queue: QueueName, body: &str, delay: Duration) -> PortResult<()> {
        self.check()?;
        self.inner.send(queue, body, delay).await
    }

    async fn send_to_dead_letter(&self, queue: QueueName, body: &str) -> PortResult<()> {
        self.check()?;
        self.inner.send_to_dead_letter(queue, body).await
    }
}

/// The S3 blob store, hanging on the next `put` once `hang` is set (a worker dying mid-save);
/// it counts the puts that reached S3.
struct HangingBlobs {
    inner: Arc<dyn BlobStore>,
    hang: AtomicBool,
    puts: AtomicU32,
    reached: Notify,
}

#[async_trait]
impl BlobStore for HangingBlobs {
    async fn put(&self, key: &str, bytes: Bytes, content_type: &str) -> PortResult<()> {
        if self.hang.swap(false, Ordering::SeqCst) {
            self.reached.notify_one();
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
        self.puts.fetch_add(1, Ordering::SeqCst);
        self.inner.put(key, bytes, content_type).await
    }

    async fn get(&self, key: &str) -> PortResult<Option<Bytes>> {
        self.inner.get(key).await
    }

    async fn signed_url(&self, key: &str, ttl: Duration) -> PortResult<SignedUrl> {
        self.inner.signed_url(key, ttl).await
    }
}

/// The limiter, unreachable while `down` is set.
struct SwitchLimiter {
    inner: Arc<dyn Limiter>,
    down: AtomicBool,
}

impl SwitchLimiter {
    fn check(&self) -> PortResult<()> {
        if self.down.load(Ordering::SeqCst) {
            return Err(PortError::Unavailable("limiter unreachable".into()));
        }
        Ok(())
    }
}

#[async_trait]
impl Limiter for SwitchLimiter {
    async fn admit_submission(
        &self,
        tenant: &imagegen::domain::TenantId,
        limit: u32,
    ) -> PortResult<Option<Duration>> {
        self.check()?;
        self.inner.admit_submission(tenant, limit).await
    }

    async fn acquire(&self, request: &PermitRequest) -> PortResult<Admission> {
        self.check()?;
        self.inner.acquire(request).await
    }

    async fn release(&self, permit: &Permit, outcome: KeyOutcome) -> PortResult<()> {
        self.inner.release(permit, outcome).await
    }

    async fn key_secret(&self, key_id: &str) -> PortResult<Option<SecretString>> {
        self.inner.key_secret(key_id).await
    }
}

/// The AWS-wired `App` with its provider scripted and its queue, blobs and limiter switchable,
/// and the SQS queue read directly, as Lambda's event source mapping reads it.
struct Harness {
    app: App,
    sqs: SqsQueue,
    provider: Arc<ScriptedProvider>,
    queue: Arc<FlakyQueue>,
    blobs: Arc<HangingBlobs>,
    limiter: Arc<SwitchLimiter>,
    _stack: Stack,
}

/// SQS rounds visibility up to whole seconds; one second keeps redeliveries quick.
const VISIBILITY: Duration = Duration::from_secs(1);

impl Harness {
    async fn new() -> Self {
        Self::with_max_receives(10).await
    }

    /// A harness whose queues dead-letter a message after `max_receives` receives.
    async fn with_max_receives(max_receives: u32) -> Self {
        let stack = Stack::new(max_receives).await;
        let built = imagegen::aws::app_from_parts(stack.settings.clone(), stack.clients.clone())
            .await
            .unwrap_or_else(|e| panic!("cold start failed: {e}"));
        let mut app = built.app;

        let ms = Duration::from_millis;
        let mut settings = (*app.settings).clone();
        settings.retry = RetryPolicy {
            bands: vec![
                (ms(5), ms(10)),
                (ms(10), ms(20)),
                (ms(20), ms(30)),
                (ms(30), ms(40)),
            ],
        };
        settings.max_attempts = 4;
        settings.lease = ms(800);
        settings.provider_timeout = ms(300);
        settings.limiter_down_wait = ms(50);
        settings.poison_receives = 8;
        app.settings = Arc::new(settings);

        let provider = Arc::new(ScriptedProvider::default());
        let queue = Arc::new(FlakyQueue {
            inner: app.queue.clone(),
            failing: AtomicBool::new(false),
        });
        let blobs = Arc::new(HangingBlobs {
            inner: app.blobs.clone(),
            hang: AtomicBool::new(false),
            puts: AtomicU32::new(0),
            reached: Notify::new(),
        });
        let limiter = Arc::new(SwitchLimiter {
            inner: app.limiter.clone(),
            down: AtomicBool::new(false),
        });
        app.provider = provider.clone();
        app.queue = queue.clone();
        app.blobs = blobs.clone();
        app.limiter = limiter.clone();
        app.worker_id = "aws-test-worker".into();

        Self {
            app,
            sqs: SqsQueue::new(stack.clients.sqs.clone(), stack.queues()),
            provider,
            queue,
            blobs,
            limiter,
            _stack: stack,
        }
    }

    async fn tenant(&self) -> Tenant {
        let plan = Plan {
            requests_per_minute: 1000,
            daily_cap: 1000,
            max_concurrency: 10,
        };
        imagegen::service::admin::create_tenant(&self.app, "t", plan)
            .await
            .unwrap_or_else(|e| panic!("tenant: {e}"))
            .tenant
    }

    async fn submit_one(&self, tenant: &Tenant) -> JobId {
        let submission = Submission {
            prompt: Prompt::parse("fault test").unwrap_or_else(|e| panic!("{e}")),
            mode: Mode::Draft,
            input_image_url: None,
            deadline: None,
        };
        submit(&self.app, tenant, submission, None)
            .await
            .unwrap_or_else(|e| panic!("submit: {e:?}"))
            .job
            .id
    }

    async fn job(&self, id: &JobId) -> Job {
        self.app
            .store
            .get_job(id)
            .await
            .unwrap_or_else(|e| panic!("read job: {e}"))
            .unwrap_or_else(|| panic!("job {id} is missing"))
    }

    async fn units(&self, tenant: &Tenant) -> u64 {
        self.app
            .store
            .usage(&tenant.id, Utc::now().date_naive())
            .await
            .unwrap_or_else(|e| panic!("usage: {e}"))
    }

    async fn receive(&self, max: u32) -> Vec<ReceivedMessage> {
        self.sqs
            .receive(QueueName::Generate, max, VISIBILITY)
            .await
            .unwrap_or_else(|e| panic!("receive: {e}"))
    }

    async fn delete(&self, messages: &[ReceivedMessage]) {
        for message in messages {
            self.sqs
                .delete(QueueName::Generate, &message.receipt_handle)
                .await
                .unwrap_or_else(|e| panic!("delete: {e}"));
        }
    }

    /// One generate batch as Lambda would run it: delete what succeeded, leave the failures
    /// to reappear. Returns how many messages came.
    async fn pump(&self) -> usize {
        let batch = self.receive(10).await;
        if batch.is_empty() {
            return 0;
        }
        let response = handlers::generate_batch(&self.app, sqs_event(&batch)).await;
        let succeeded: Vec<ReceivedMessage> = batch
            .iter()
            .filter(|m| !failed(&response, m))
            .cloned()
            .collect();
        self.delete(&succeeded).await;
        batch.len()
    }

    /// Pump the generate queue until the job is terminal, or panic after `limit`.
    async fn run_to_end(&self, id: &JobId, limit: Duration) -> Job {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let job = self.job(id).await;
            if job.status.is_terminal() {
                return job;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "job never ended: {job:?}"
            );
            if self.pump().await == 0 {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

fn failed(response: &SqsBatchResponse, message: &ReceivedMessage) -> bool {
    response
        .batch_item_failures
        .iter()
        .any(|f| f.item_identifier == message.message_id)
}

/// The event Lambda's SQS integration hands the generate function.
fn sqs_event(messages: &[ReceivedMessage]) -> SqsEvent {
    let mut event = SqsEvent::default();
    for m in messages {
        let mut record = SqsMessage::default();
        record.message_id = Some(m.message_id.clone());
        record.receipt_handle = Some(m.receipt_handle.clone());
        record.body = Some(m.body.clone());
        record.event_source = Some("aws:sqs".into());
        record.attributes = HashMap::from([
            (
                "ApproximateReceiveCount".to_owned(),
                m.receive_count.to_string(),
            ),
            (
                "SentTimestamp".to_owned(),
                m.sent_at.timestamp_millis().to_string(),
            ),
        ]);
        event.records.push(record);
    }
    event
}

/// Retries wait at least a second each on SQS; this leaves room for four and moto's latency.
const ENOUGH: Duration = Duration::from_secs(30);

#[tokio::test]
async fn a_throttle_storm_on_aws_is_retried_until_the_job_succeeds() {
    let h = Harness::new().await;
    let tenant = h.tenant().await;
    h.provider.push([throttled(), throttled()]);
    let id = h.submit_one(&tenant).await;

    let done = h.run_to_end(&id, ENOUGH).await;

    assert_eq!(done.status, JobStatus::Succeeded);
    assert_eq!(done.attempts, 3);
    assert_eq!(h.provider.calls(), 3);
    assert_eq!(done.result_keys.len(), 1);
    assert_eq!(h.blobs.puts.load(Ordering::SeqCst), 1);
    assert_eq!(h.units(&tenant).await, 1, "a success keeps its unit");
}

#[tokio::test]
async fn endless_server_errors_on_aws_fail_after_max_attempts_and_refund_the_unit() {
    let h = Harness::new().await;
    let tenant = h.tenant().await;
    h.provider.push(std::iter::repeat_n(server_error(), 10));
    let id = h.submit_one(&tenant).await;

    let done = h.run_to_end(&id, ENOUGH).await;

    assert_eq!(done.status, JobStatus::Failed);
    assert_eq!(done.attempts, 4);
    assert_eq!(h.provider.calls(), 4);
    assert_eq!(
        done.error.map(|e| e.code),
        Some(ErrorCode::UpstreamUnavailable)
    );
    assert!(done.result_keys.is_empty());
    assert_eq!(h.units(&tenant).await, 0, "a failed job is refunded");
}

#[tokio::test]
async fn a_provider_hang_past_the_timeout_on_aws_is_retried_as_a_timeout() {
    let h = Harness::new().await;
    let tenant = h.tenant().await;
    h.provider.push([Step::Hang]);
    let id = h.submit_one(&tenant).await;

    let done = h.run_to_end(&id, ENOUGH).await;
    let events = h
        .app
        .store
        .job_events(&id)
        .await
        .unwrap_or_else(|e| panic!("events: {e}"));

    assert_eq!(done.status, JobStatus::Succeeded);
    assert_eq!(done.attempts, 2);
    assert_eq!(h.provider.calls(), 2);
    assert!(events.iter().any(|e| e.to == JobStatus::Retrying));
}

#[tokio::test]
async fn two_concurrent_deliveries_of_one_message_on_aws_run_the_provider_once() {
    let h = Harness::new().await;
    let tenant = h.tenant().await;
    let id = h.submit_one(&tenant).await;
    let copy = serde_json::to_string(&GenerateMessage {
        job_id: id.clone(),
        tenant_id: tenant.id.clone(),
    })
    .unwrap_or_else(|e| panic!("{e}"));
    h.queue
        .send(QueueName::Generate, &copy, Duration::ZERO)
        .await
        .unwrap_or_else(|e| panic!("send: {e}"));
    let mut both = Vec::new();
    for _ in 0..20 {
        both.extend(h.receive(2 - both.len() as u32).await);
        if both.len() == 2 {
            break;
        }
    }
    assert_eq!(both.len(), 2, "the original and its copy");

    let (a, b) = tokio::join!(
        handlers::generate_batch(&h.app, sqs_event(&both[..1])),
        handlers::generate_batch(&h.app, sqs_event(&both[1..])),
    );
    h.delete(&both).await;
    let done = h.run_to_end(&id, ENOUGH).await;

    assert!(a.batch_item_failures.is_empty() && b.batch_item_failures.is_empty());
    assert_eq!(done.status, JobStatus::Succeeded);
    assert_eq!(done.attempts, 1);
    assert_eq!(h.provider.calls(), 1);
    assert_eq!(h.blobs.puts.load(Ordering::SeqCst), 1);
    assert_eq!(h.units(&tenant).await, 1, "charged once");
}

#[tokio::test]
async fn a_queue_send_failing_after_the_job_write_on_aws_is_recovered_by_the_reconciler() {
    let h = Harness::new().await;
    let tenant = h.tenant().await;
    h.queue.failing.store(true, Ordering::SeqCst);
    let id = h.submit_one(&tenant).await;
    h.queue.failing.store(false, Ordering::SeqCst);
    let orphan = h.job(&id).await;
    let nothing = h.pump().await;

    let requeued = reconcile(&h.app, Duration::ZERO, 100)
        .await
        .unwrap_or_else(|e| panic!("reconcile: {e}"));
    let done = h.run_to_end(&id, ENOUGH).await;

    assert_eq!(orphan.status, JobStatus::Queued);
    assert_eq!(nothing, 0, "nothing was queued");
    assert_eq!(requeued, 1);
    assert_eq!(done.status, JobStatus::Succeeded);
    assert_eq!(h.provider.calls(), 1);
}

#[tokio::test]
async fn an_unreachable_limiter_on_aws_leaves_the_job_queued_and_then_it_runs() {
    let h = Harness::new().await;
    let tenant = h.tenant().await;
    h.limiter.down.store(true, Ordering::SeqCst);
    let id = h.submit_one(&tenant).await;

    let mut handled = 0;
    let until = tokio::time::Instant::now() + Duration::from_millis(3500);
    while tokio::time::Instant::now() < until {
        handled += h.pump().await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let waiting = h.job(&id).await;
    let calls_while_down = h.provider.calls();
    h.limiter.down.store(false, Ordering::SeqCst);
    let done = h.run_to_end(&id, ENOUGH).await;

    assert!(handled >= 2, "the job came back while the limiter was down");
    assert_eq!(waiting.status, JobStatus::Queued);
    assert_eq!(waiting.attempts, 0);
    assert_eq!(calls_while_down, 0);
    assert_eq!(done.status, JobStatus::Succeeded);
    assert_eq!(done.attempts, 1);
    assert_eq!(h.provider.calls(), 1);
}

#[tokio::test]
async fn a_worker_killed_after_the_upstream_answered_on_aws_is_taken_over_after_its_lease() {
    let h = Harness::new().await;
    let tenant = h.tenant().await;
    let id = h.submit_one(&tenant).await;
    h.blobs.hang.store(true, Ordering::SeqCst);
    let mut batch = Vec::new();
    for _ in 0..20 {
        batch = h.receive(1).await;
        if !batch.is_empty() {
            break;
        }
    }
    assert_eq!(batch.len(), 1);

    let app = h.app.clone();
    let doomed =
        tokio::spawn(async move { handlers::generate_batch(&app, sqs_event(&batch)).await });
    h.blobs.reached.notified().await;
    doomed.abort();
    let orphan = h.job(&id).await;
    let done = h.run_to_end(&id, ENOUGH).await;

    assert_eq!(orphan.status, JobStatus::Running);
    assert_eq!(done.status, JobStatus::Succeeded);
    assert_eq!(done.attempts, 2, "the takeover counts a new attempt");
    assert_eq!(h.provider.calls(), 2);
    assert_eq!(h.blobs.puts.load(Ordering::SeqCst), 1, "one stored result");
    assert_eq!(done.result_keys.len(), 1);
    assert_eq!(h.units(&tenant).await, 1, "charged once");
}

#[tokio::test]
async fn an_unreadable_message_on_aws_ends_in_the_dead_letter_queue() {
    let h = Harness::with_max_receives(2).await;
    h.sqs
        .send(QueueName::Generate, "{not json", Duration::ZERO)
        .await
        .unwrap_or_else(|e| panic!("send: {e}"));

    let mut received = 0;
    let until = tokio::time::Instant::now() + Duration::from_secs(5);
    while tokio::time::Instant::now() < until {
        received += h.pump().await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let dead = h
        .sqs
        .dead_letters(QueueName::Generate)
        .await
        .unwrap_or_else(|e| panic!("dead letters: {e}"));

    assert_eq!(received, 2, "received up to the redrive limit, then moved");
    assert_eq!(dead, vec!["{not json"]);
    assert_eq!(h.provider.calls(), 0);
}
