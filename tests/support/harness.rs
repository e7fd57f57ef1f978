//! A service-level harness: the real handlers on real embedded adapters, with fault injection
//! at the ports (a scripted provider, a queue whose sends can fail, a blob store that can hang,
//! a limiter that can be unreachable), and a pump that plays Lambda's SQS integration.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use imagegen::blob::FsBlobStore;
use imagegen::domain::{ErrorCode, Job, JobError, JobId, Mode, Plan, Prompt, Tenant};
use imagegen::limiter::LimiterSettings;
use imagegen::ports::{
    Admission, BlobStore, GeneratedImage, Generation, GenerationRequest, KeyOutcome, Limiter,
    Permit, PermitRequest, PortError, PortResult, Provider, ProviderError, Queue, QueueConsumer,
    QueueName, SignedUrl,
};
use imagegen::provider::offline;
use imagegen::queue::SqliteQueue;
use imagegen::service::retry::RetryPolicy;
use imagegen::store::SqliteDb;
use imagegen::webhook::{OutboundPolicy, WebhookSender};
use imagegen::{handlers, App, AppSettings};
use secrecy::SecretString;
use tokio::sync::Notify;

/// What the scripted provider does on one call.
#[derive(Debug, Clone)]
pub enum Step {
    Succeed,
    Fail(ProviderError),
    Hang,
}

/// A retryable upstream throttle with an optional hint.
pub fn throttled(hint: Option<Duration>) -> Step {
    Step::Fail(ProviderError {
        error: JobError::new(ErrorCode::UpstreamRateLimited, "429 from upstream"),
        key_outcome: KeyOutcome::Throttled { retry_after: hint },
        retry_after: hint,
    })
}

/// A retryable upstream outage.
pub fn server_error() -> Step {
    Step::Fail(ProviderError {
        error: JobError::new(ErrorCode::UpstreamUnavailable, "503 from upstream"),
        key_outcome: KeyOutcome::Failure,
        retry_after: None,
    })
}

/// A final refusal.
pub fn refused() -> Step {
    Step::Fail(ProviderError {
        error: JobError::new(ErrorCode::ContentRefused, "blocked by safety rules"),
        key_outcome: KeyOutcome::Neutral,
        retry_after: None,
    })
}

/// A provider that follows a script, then succeeds; it counts its calls.
#[derive(Default)]
pub struct ScriptedProvider {
    pub script: Mutex<VecDeque<Step>>,
    pub calls: AtomicU32,
}

impl ScriptedProvider {
    pub fn push(&self, steps: impl IntoIterator<Item = Step>) {
        self.script.lock().expect("script").extend(steps);
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
        let step = self.script.lock().expect("script").pop_front();
        match step.unwrap_or(Step::Succeed) {
            Step::Succeed => {
                let png = offline::render(&request.prompt, request.mode).expect("png");
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
            Step::Fail(e) => Err(e),
            Step::Hang => {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                Err(server_error_inner())
            }
        }
    }
}

fn server_error_inner() -> ProviderError {
    match server_error() {
        Step::Fail(e) => e,
        _ => unreachable!(),
    }
}

/// A queue whose sends fail while `failing` is set.
pub struct FlakyQueue {
    pub inner: SqliteQueue,
    pub failing: AtomicBool,
    pub sends: AtomicU32,
}

#[async_trait]
impl Queue for FlakyQueue {
    async fn send(&self, queue: QueueName, body: &str, delay: Duration) -> PortResult<()> {
        if self.failing.load(Ordering::SeqCst) {
            return Err(PortError::Unavailable(
                "queue send refused by the test".into(),
            ));
        }
        self.sends.fetch_add(1, Ordering::SeqCst);
        self.inner.send(queue, body, delay).await
    }

    async fn send_to_dead_letter(&self, queue: QueueName, body: &str) -> PortResult<()> {
        if self.failing.load(Ordering::SeqCst) {
            return Err(PortError::Unavailable(
                "queue send refused by the test".into(),
            ));
        }
        self.inner.send_to_dead_letter(queue, body).await
    }
}

/// A blob store that can be made to hang on `put` (a worker dying mid-save) and counts puts.
pub struct HangingBlobs {
    pub inner: FsBlobStore,
    pub hang: AtomicBool,
    pub puts: AtomicU32,
    pub reached: Notify,
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

/// A limiter that can be unreachable, or always deny.
pub struct SwitchLimiter {
    pub inner: Arc<dyn Limiter>,
    pub down: AtomicBool,
    pub deny_for: Mutex<Option<Duration>>,
}

#[async_trait]
impl Limiter for SwitchLimiter {
    async fn admit_submission(
        &self,
        tenant: &imagegen::domain::TenantId,
        limit: u32,
    ) -> PortResult<Option<Duration>> {
        if self.down.load(Ordering::SeqCst) {
            return Err(PortError::Unavailable("limiter unreachable".into()));
        }
        self.inner.admit_submission(tenant, limit).await
    }

    async fn acquire(&self, request: &PermitRequest) -> PortResult<Admission> {
        if self.down.load(Ordering::SeqCst) {
            return Err(PortError::Unavailable("limiter unreachable".into()));
        }
        if let Some(wait) = *self.deny_for.lock().expect("deny") {
            return Ok(Admission::Denied { retry_after: wait });
        }
        self.inner.acquire(request).await
    }

    async fn release(&self, permit: &Permit, outcome: KeyOutcome) -> PortResult<()> {
        self.inner.release(permit, outcome).await
    }

    async fn key_secret(&self, key_id: &str) -> PortResult<Option<SecretString>> {
        self.inner.key_secret(key_id).await
    }
}

/// The harness: an `App` on embedded adapters wrapped with fault switches.
pub struct Harness {
    pub app: App,
    pub queue: SqliteQueue,
    pub flaky_queue: Arc<FlakyQueue>,
    pub provider: Arc<ScriptedProvider>,
    pub blobs: Arc<HangingBlobs>,
    pub limiter: Arc<SwitchLimiter>,
    pub visibility: Duration,
    _dir: tempfile::TempDir,
}

/// Settings with waits scaled down to milliseconds, so retries run in test time.
pub fn fast_settings() -> AppSettings {
    let ms = Duration::from_millis;
    AppSettings {
        retry: RetryPolicy {
            bands: vec![
                (ms(5), ms(10)),
                (ms(10), ms(20)),
                (ms(20), ms(30)),
                (ms(30), ms(40)),
            ],
        },
        lease: Duration::from_millis(400),
        provider_timeout: Duration::from_millis(200),
        allow_http_urls: true,
        poison_receives: 4,
        limiter_down_wait: Duration::from_millis(50),
        ..AppSettings::default()
    }
}

impl Harness {
    pub async fn new(settings: AppSettings) -> Self {
        let dir = tempfile::tempdir().expect("dir");
        let db = SqliteDb::open(&dir.path().join("db.sqlite")).expect("db");
        let queue = SqliteQueue::new(db.clone(), 4);
        let flaky_queue = Arc::new(FlakyQueue {
            inner: queue.clone(),
            failing: AtomicBool::new(false),
            sends: AtomicU32::new(0),
        });
        let provider = Arc::new(ScriptedProvider::default());
        let blobs = Arc::new(HangingBlobs {
            inner: FsBlobStore::new(dir.path().join("images"), "http://127.0.0.1:9", vec![7; 32]),
            hang: AtomicBool::new(false),
            puts: AtomicU32::new(0),
            reached: Notify::new(),
        });
        let webhooks = WebhookSender::new(
            OutboundPolicy {
                allow_loopback: true,
                loopback_only: true,
            },
            Duration::from_secs(5),
        );
        let mut app = imagegen::embedded::app(
            db,
            blobs.clone(),
            webhooks,
            settings,
            LimiterSettings::default(),
        )
        .await
        .expect("embedded app");
        let limiter = Arc::new(SwitchLimiter {
            inner: app.limiter.clone(),
            down: AtomicBool::new(false),
            deny_for: Mutex::new(None),
        });
        app.queue = flaky_queue.clone();
        app.provider = provider.clone();
        app.limiter = limiter.clone();
        app.worker_id = "test-worker".into();
        Self {
            app,
            queue,
            flaky_queue,
            provider,
            blobs,
            limiter,
            visibility: Duration::from_millis(300),
            _dir: dir,
        }
    }

    /// A tenant with the given plan.
    pub async fn tenant(&self, plan: Plan) -> Tenant {
        imagegen::service::admin::create_tenant(&self.app, "t", plan)
            .await
            .expect("tenant")
            .tenant
    }

    /// Submit a draft of `prompt` for `tenant` through the service, as the API would.
    pub async fn submit_draft(&self, tenant: &Tenant, prompt: &str) -> JobId {
        let submission = imagegen::service::submit::Submission {
            prompt: Prompt::parse(prompt).expect("prompt"),
            mode: Mode::Draft,
            input_image_url: None,
            deadline: None,
        };
        imagegen::service::submit::submit(&self.app, tenant, submission, None)
            .await
            .expect("submit")
            .job
            .id
    }

    /// The job as stored.
    pub async fn job(&self, id: &JobId) -> Job {
        self.app
            .store
            .get_job(id)
            .await
            .expect("read")
            .expect("job exists")
    }

    /// Receive what is visible on `queue` and run it through the handler like Lambda would:
    /// delete what succeeded, leave the failures to reappear. Returns how many were received.
    pub async fn pump(&self, queue: QueueName) -> usize {
        let batch = self
            .queue
            .receive(queue, 10, self.visibility)
            .await
            .expect("receive");
        if batch.is_empty() {
            return 0;
        }
        let event = imagegen_local::sqs_event(queue, &batch);
        let response = match queue {
            QueueName::Generate => handlers::generate_batch(&self.app, event).await,
            QueueName::Webhook => handlers::webhook_batch(&self.app, event).await,
        };
        for message in &batch {
            let failed = response
                .batch_item_failures
                .iter()
                .any(|f| f.item_identifier == message.message_id);
            if !failed {
                self.queue
                    .delete(queue, &message.receipt_handle)
                    .await
                    .expect("delete");
            }
        }
        batch.len()
    }

    /// Pump both queues until `done` holds or `limit` passes.
    pub async fn run_until<F, Fut>(&self, limit: Duration, mut done: F) -> bool
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let deadline = tokio::time::Instant::now() + limit;
        while tokio::time::Instant::now() < deadline {
            if done().await {
                return true;
            }
            let moved = self.pump(QueueName::Generate).await + self.pump(QueueName::Webhook).await;
            if moved == 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        done().await
    }
}
