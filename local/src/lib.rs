//! The local runner: every imagegen handler in one process on the embedded adapters.
//!
//! It serves the HTTP API (the same router the `submit` and `poll` Lambdas serve), serves
//! stored images through expiring signed URLs, and polls the embedded queues to feed the
//! `generate` and `webhook` handlers the same `SqsEvent` batches Lambda would.
//!
//! Run it with `make run`, or `cargo run -p imagegen-local -- serve`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use aws_lambda_events::event::sqs::{SqsEvent, SqsMessage};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use imagegen::blob::FsBlobStore;
use imagegen::http::ApiError;
use imagegen::limiter::LimiterSettings;
use imagegen::ports::{BlobStore, Provider, QueueConsumer, QueueName};
use imagegen::provider::{GeminiProvider, GeminiSettings};
use imagegen::queue::SqliteQueue;
use imagegen::store::SqliteDb;
use imagegen::webhook::{OutboundPolicy, WebhookSender, DELIVERY_TIMEOUT};
use imagegen::{handlers, service, App, AppSettings};
use rand::RngCore;
use secrecy::SecretString;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, warn};

pub mod demo;

/// How the local runner is set up.
#[derive(Clone)]
pub struct LocalConfig {
    /// Holds `imagegen.sqlite`, `images/` and `signing.key`; survives restarts.
    pub data_dir: PathBuf,
    pub bind: SocketAddr,
    pub admin_token: SecretString,
    /// Allow webhooks and image URLs on loopback and plain http (local demos and tests). Off
    /// unless asked for: `serve` turns it on with `IMAGEGEN_ALLOW_LOOPBACK=1` (`make run` sets
    /// it), the demo turns it on for its own receiver.
    pub allow_loopback: bool,
    /// Refuse every outbound address but loopback (fuzzing and tests: no traffic leaves).
    pub loopback_only: bool,
    /// Run the queue pollers; off only in tests that need jobs to stay queued.
    pub workers: bool,
    /// How long the embedded queue hides a received message.
    pub visibility: Duration,
    /// Receives before a message moves to the dead-letter queue.
    pub max_receives: u32,
    pub settings: AppSettings,
    /// The provider; the offline renderer when `None`.
    pub provider: Option<Arc<dyn Provider>>,
    /// Limits and key health rules of the embedded limiter.
    pub limiter: LimiterSettings,
}

impl LocalConfig {
    pub fn new(data_dir: PathBuf, admin_token: SecretString) -> Self {
        Self {
            data_dir,
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            admin_token,
            allow_loopback: false,
            loopback_only: false,
            workers: true,
            visibility: Duration::from_secs(180),
            max_receives: 5,
            settings: AppSettings::default(),
            provider: None,
            limiter: LimiterSettings::default(),
        }
    }
}

/// A started runner. Dropping it does not stop it; call [`Runner::shutdown`].
pub struct Runner {
    pub addr: SocketAddr,
    pub base_url: String,
    pub app: App,
    pub queue: SqliteQueue,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

/// A failure to start.
#[derive(Debug)]
pub struct StartError(pub String);

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StartError {}

fn fail<E: std::fmt::Display>(what: &'static str) -> impl Fn(E) -> StartError {
    move |e| StartError(format!("{what}: {e}"))
}

/// Read the data folder's URL-signing key, making one on first start.
fn signing_key(data_dir: &std::path::Path) -> Result<Vec<u8>, StartError> {
    let path = data_dir.join("signing.key");
    match std::fs::read(&path) {
        Ok(key) if key.len() == 32 => Ok(key),
        _ => {
            let mut key = vec![0u8; 32];
            rand::thread_rng().fill_bytes(&mut key);
            std::fs::write(&path, &key).map_err(fail("cannot write signing key"))?;
            Ok(key)
        }
    }
}

impl Runner {
    /// Open the data folder, bind the port and start serving and polling.
    ///
    /// # Errors
    /// [`StartError`] when the folder, database or port cannot be used.
    pub async fn start(config: LocalConfig) -> Result<Runner, StartError> {
        std::fs::create_dir_all(&config.data_dir).map_err(fail("cannot create data folder"))?;
        let db = SqliteDb::open(&config.data_dir.join("imagegen.sqlite"))
            .map_err(fail("cannot open database"))?;
        let listener = TcpListener::bind(config.bind)
            .await
            .map_err(fail("cannot bind"))?;
        let addr = listener.local_addr().map_err(fail("no local address"))?;
        let base_url = format!("http://{addr}");

        let key = signing_key(&config.data_dir)?;
        let blobs = FsBlobStore::new(config.data_dir.join("images"), base_url.clone(), key);
        let queue = SqliteQueue::new(db.clone(), config.max_receives);
        let mut settings = config.settings.clone();
        settings.allow_http_urls = config.allow_loopback;
        let policy = OutboundPolicy {
            allow_loopback: config.allow_loopback,
            loopback_only: config.loopback_only,
        };
        let mut app = imagegen::embedded::app(
            db,
            Arc::new(blobs.clone()),
            WebhookSender::new(policy, DELIVERY_TIMEOUT),
            settings,
            config.limiter.clone(),
        )
        .await
        .map_err(fail("cannot open the embedded adapters"))?;
        app.queue = Arc::new(queue.clone());
        if let Some(provider) = config.provider.clone() {
            app.provider = provider;
        }
        app.worker_id = format!("local-{}", std::process::id());

        let (stop, stopped) = watch::channel(false);
        let router = imagegen::http::router(app.clone(), Some(&config.admin_token))
            .merge(files_router(blobs, app.settings.input_images.max_bytes));
        let mut server_stop = stopped.clone();
        let mut tasks = vec![tokio::spawn(async move {
            let shutdown = async move {
                let _ = server_stop.wait_for(|s| *s).await;
            };
            if let Err(e) = axum::serve(listener, router)
                .with_graceful_shutdown(shutdown)
                .await
            {
                warn!(error = %e, "http server stopped");
            }
        })];

        if config.workers {
            for name in [QueueName::Generate, QueueName::Webhook] {
                tasks.push(tokio::spawn(poll(
                    app.clone(),
                    queue.clone(),
                    name,
                    config.visibility,
                    stopped.clone(),
                )));
            }
            tasks.push(tokio::spawn(reconcile_loop(app.clone(), stopped.clone())));
        }
        info!(%addr, data_dir = %config.data_dir.display(), "local runner started");
        Ok(Runner {
            addr,
            base_url,
            app,
            queue,
            stop,
            tasks,
        })
    }

    /// Stop serving and polling, and wait for in-flight work to end.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

/// Turn received rows into the event Lambda's SQS integration would deliver.
pub fn sqs_event(queue: QueueName, messages: &[imagegen::ports::ReceivedMessage]) -> SqsEvent {
    let mut event = SqsEvent::default();
    event.records = messages
        .iter()
        .map(|m| {
            let mut record = SqsMessage::default();
            record.message_id = Some(m.message_id.clone());
            record.receipt_handle = Some(m.receipt_handle.clone());
            record.body = Some(m.body.clone());
            record.event_source = Some("aws:sqs".into());
            record.event_source_arn =
                Some(format!("arn:aws:sqs:local:000000000000:{}", queue.as_str()));
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
            record
        })
        .collect();
    event
}

/// One queue's poller: receive a batch, hand it to the handler, delete what succeeded.
/// Failed messages reappear after the visibility timeout, as on SQS.
async fn poll(
    app: App,
    queue: SqliteQueue,
    name: QueueName,
    visibility: Duration,
    mut stopped: watch::Receiver<bool>,
) {
    let idle = Duration::from_millis(100);
    while !*stopped.borrow() {
        let batch = match queue.receive(name, 10, visibility).await {
            Ok(batch) => batch,
            Err(e) => {
                warn!(queue = name.as_str(), error = %e, "receive failed");
                Vec::new()
            }
        };
        if batch.is_empty() {
            tokio::select! {
                _ = tokio::time::sleep(idle) => {}
                _ = stopped.changed() => {}
            }
            continue;
        }

        let event = sqs_event(name, &batch);
        let response = match name {
            QueueName::Generate => handlers::generate_batch(&app, event).await,
            QueueName::Webhook => handlers::webhook_batch(&app, event).await,
        };
        for message in &batch {
            let failed = response
                .batch_item_failures
                .iter()
                .any(|f| f.item_identifier == message.message_id);
            if !failed {
                if let Err(e) = queue.delete(name, &message.receipt_handle).await {
                    warn!(queue = name.as_str(), error = %e, "delete failed");
                }
            }
        }
    }
}

/// Re-queue stranded jobs now and then (the AWS deployment runs the same on a schedule).
async fn reconcile_loop(app: App, mut stopped: watch::Receiver<bool>) {
    let every = Duration::from_secs(30);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stopped.changed() => return,
        }
        if let Err(e) = service::reconcile::reconcile(&app, Duration::from_secs(60), 100).await {
            warn!(error = %e, "reconcile failed");
        }
    }
}

#[derive(serde::Deserialize)]
struct FileQuery {
    expires: Option<i64>,
    sig: Option<String>,
}

fn files_router(blobs: FsBlobStore, max_upload_bytes: usize) -> Router {
    Router::new()
        .route("/files/{*key}", get(serve_file).put(receive_file))
        .layer(DefaultBodyLimit::max(max_upload_bytes))
        .with_state(blobs)
}

fn link_refused() -> Response {
    (StatusCode::FORBIDDEN, axum::Json(serde_json::json!({
        "error": {"code": "URL_EXPIRED_OR_INVALID", "message": "this link has expired or is not valid; ask for a fresh one"}
    }))).into_response()
}

/// Take a client upload sent to a presigned PUT URL, as S3 would.
async fn receive_file(
    State(blobs): State<FsBlobStore>,
    Path(key): Path<String>,
    Query(query): Query<FileQuery>,
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> Response {
    let (Some(expires), Some(sig)) = (query.expires, query.sig.as_deref()) else {
        return link_refused();
    };
    if !blobs.verify_put(&key, expires, sig, chrono::Utc::now()) {
        return link_refused();
    }
    let bytes = match body {
        Ok(bytes) => bytes,
        Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return (StatusCode::PAYLOAD_TOO_LARGE, axum::Json(serde_json::json!({
                "error": {"code": "PAYLOAD_TOO_LARGE", "message": "the upload is larger than the limit given with its URL"}
            }))).into_response();
        }
        Err(_) => {
            return ApiError::bad(
                imagegen::domain::ErrorCode::InvalidRequest,
                "the upload could not be read",
            )
            .into_response()
        }
    };
    let content_type = imagegen::fetch::sniff(&bytes).unwrap_or("application/octet-stream");
    match blobs.put(&key, bytes, content_type).await {
        Ok(()) => StatusCode::OK.into_response(),
        Err(e) => ApiError::from(e).into_response(),
    }
}

/// Serve a stored image to whoever holds a valid, unexpired signed URL.
async fn serve_file(
    State(blobs): State<FsBlobStore>,
    Path(key): Path<String>,
    Query(query): Query<FileQuery>,
) -> Response {
    let (Some(expires), Some(sig)) = (query.expires, query.sig.as_deref()) else {
        return ApiError::NotFound.into_response();
    };
    if !blobs.verify(&key, expires, sig, chrono::Utc::now()) {
        return (StatusCode::FORBIDDEN, axum::Json(serde_json::json!({
            "error": {"code": "URL_EXPIRED_OR_INVALID", "message": "this link has expired or is not valid; poll the job for a fresh one"}
        }))).into_response();
    }
    match blobs.get(&key).await {
        Ok(Some(bytes)) => {
            let mime = match key.rsplit('.').next() {
                Some("jpg") => "image/jpeg",
                Some("webp") => "image/webp",
                _ => "image/png",
            };
            ([(header::CONTENT_TYPE, mime)], bytes).into_response()
        }
        Ok(None) => ApiError::NotFound.into_response(),
        Err(e) => ApiError::from(e).into_response(),
    }
}

/// The provider the environment asks for: `IMAGEGEN_PROVIDER` when set (`gemini` takes keys
/// from the pool), else the offline renderer unless `GEMINI_API_KEY` is set, then the Gemini
/// client with the `GEMINI_*` settings (`docs/provider.md`).
///
/// # Errors
/// A message naming the setting that is wrong.
pub fn provider_from_env() -> Result<Option<Arc<dyn Provider>>, String> {
    if std::env::var_os("IMAGEGEN_PROVIDER").is_some() {
        return imagegen::provider::provider_from_env().map(Some);
    }
    match GeminiSettings::from_env()? {
        None => Ok(None),
        Some(settings) => Ok(Some(Arc::new(GeminiProvider::new(settings)?))),
    }
}
