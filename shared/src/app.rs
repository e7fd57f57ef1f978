//! The set of adapters and settings every handler works with.

use std::sync::Arc;
use std::time::Duration;

use crate::ports::{
    BlobStore, DeliveryLog, JobStore, KeyRegistry, Limiter, Provider, Queue, SecretStore,
};
use crate::service::retry::RetryPolicy;
use crate::webhook::WebhookSender;

/// Behaviour settings shared by all handlers, read once at start-up.
#[derive(Debug, Clone)]
pub struct AppSettings {
    /// Attempts before a retryable failure becomes final.
    pub max_attempts: u32,
    /// Waits between attempts.
    pub retry: RetryPolicy,
    /// Longest deadline a submission may ask for.
    pub max_deadline: Duration,
    /// How long a RUNNING job's lease lasts: longer than the reference-image fetch and the
    /// upstream call together, shorter than the function timeout.
    pub lease: Duration,
    /// How long the upstream call may take; shorter than `lease`.
    pub provider_timeout: Duration,
    /// How long result URLs returned by the API stay valid.
    pub result_url_ttl: Duration,
    /// How long result URLs inside webhook payloads stay valid.
    pub webhook_url_ttl: Duration,
    /// How long idempotency records are kept.
    pub idempotency_ttl: Duration,
    /// Key that signs list cursors, so they cannot be forged or moved between tenants.
    pub cursor_key: Vec<u8>,
    /// Accept plain-http webhook and image URLs (local runs only).
    pub allow_http_urls: bool,
    /// How long a job waits when the limiter cannot be reached (dispatch pauses).
    pub limiter_down_wait: Duration,
    /// Receives after which a message that keeps failing its job ends the job as POISON.
    pub poison_receives: u32,
    /// Size and time limits for reading a job's reference image.
    pub input_images: crate::fetch::FetchLimits,
    /// How long an upload URL from `POST /v1/uploads` stays valid.
    pub upload_url_ttl: Duration,
}

impl Default for AppSettings {
    fn default() -> Self {
        Self {
            max_attempts: 4,
            retry: RetryPolicy::default(),
            max_deadline: Duration::from_secs(7 * 24 * 3600),
            lease: Duration::from_secs(130),
            provider_timeout: Duration::from_secs(100),
            result_url_ttl: Duration::from_secs(3600),
            webhook_url_ttl: Duration::from_secs(24 * 3600),
            idempotency_ttl: Duration::from_secs(24 * 3600),
            cursor_key: b"imagegen-cursor".to_vec(),
            allow_http_urls: false,
            limiter_down_wait: Duration::from_secs(10),
            poison_receives: 5,
            input_images: crate::fetch::FetchLimits::default(),
            upload_url_ttl: Duration::from_secs(15 * 60),
        }
    }
}

/// Adapters behind ports, and settings. Cheap to clone.
#[derive(Clone)]
pub struct App {
    pub store: Arc<dyn JobStore>,
    pub queue: Arc<dyn Queue>,
    pub blobs: Arc<dyn BlobStore>,
    pub secrets: Arc<dyn SecretStore>,
    pub limiter: Arc<dyn Limiter>,
    /// Upstream key and quota group records (the limiter reads them through its own cache).
    pub keys: Arc<dyn KeyRegistry>,
    pub provider: Arc<dyn Provider>,
    pub webhooks: WebhookSender,
    /// Webhook events and their delivery attempts.
    pub deliveries: Arc<dyn DeliveryLog>,
    pub settings: Arc<AppSettings>,
    /// Names this process in lease owners.
    pub worker_id: String,
}
