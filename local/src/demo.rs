//! The end-to-end demo behind `make demo`: start the runner on a fresh data folder, create a
//! tenant, start a webhook receiver, submit a prompt, poll to SUCCEEDED, download the image,
//! and verify the webhook's signature with an independent Standard Webhooks implementation.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::post;
use axum::Router;
use imagegen::ports::Provider;
use secrecy::SecretString;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use crate::{LocalConfig, Runner};

/// A webhook request as the receiver saw it.
#[derive(Debug, Clone)]
pub struct ReceivedHook {
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// A tiny HTTP receiver that records every POST and answers 204.
pub struct HookReceiver {
    pub url: String,
    pub hooks: mpsc::UnboundedReceiver<ReceivedHook>,
}

impl HookReceiver {
    /// Start the receiver on a free loopback port.
    ///
    /// # Errors
    /// When no port can be bound.
    pub async fn start() -> std::io::Result<Self> {
        let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
        let url = format!("http://{}/hooks", listener.local_addr()?);
        let (tx, hooks) = mpsc::unbounded_channel();
        let app = Router::new()
            .route(
                "/hooks",
                post(
                    |State(tx): State<mpsc::UnboundedSender<ReceivedHook>>,
                     headers: HeaderMap,
                     body: Bytes| async move {
                        let _ = tx.send(ReceivedHook { headers, body });
                        axum::http::StatusCode::NO_CONTENT
                    },
                ),
            )
            .with_state(tx);
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self { url, hooks })
    }
}

/// A step that failed, with what went wrong.
#[derive(Debug)]
pub struct DemoError(pub String);

impl std::fmt::Display for DemoError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for DemoError {}

fn err(context: &str) -> impl Fn(String) -> DemoError + '_ {
    move |e| DemoError(format!("{context}: {e}"))
}

/// Where the demo's results are.
pub struct DemoOutcome {
    pub job_id: String,
    /// The downloaded image, named after its sniffed type (`.png`, `.jpg` or `.webp`).
    pub image_path: PathBuf,
    pub provider: Value,
    /// The webhook event whose signature verified, as its body was received.
    pub webhook_event: Value,
}

struct Steps {
    started: Instant,
}

impl Steps {
    fn done(&mut self, what: &str) {
        println!("  {:>7.3}s  {what}", self.started.elapsed().as_secs_f64());
    }
}

async fn json_of(response: reqwest::Response, expect: u16) -> Result<Value, DemoError> {
    let status = response.status().as_u16();
    let body: Value = response
        .json()
        .await
        .map_err(|e| DemoError(format!("response was not JSON: {e}")))?;
    if status != expect {
        return Err(DemoError(format!(
            "expected HTTP {expect}, got {status}: {body}"
        )));
    }
    Ok(body)
}

/// Run the whole demo in `data_dir` with the provider the environment names (the offline one
/// unless Gemini is configured). Prints each step with its time.
///
/// # Errors
/// [`DemoError`] naming the step that failed.
pub async fn run(data_dir: PathBuf, prompt: &str) -> Result<DemoOutcome, DemoError> {
    let provider = crate::provider_from_env().map_err(err("provider settings"))?;
    run_with(data_dir, prompt, provider).await
}

/// [`run`] with the provider given, `None` for the offline default; tests use it so that no
/// environment can send the demo to a real upstream.
///
/// # Errors
/// [`DemoError`] naming the step that failed.
pub async fn run_with(
    data_dir: PathBuf,
    prompt: &str,
    provider: Option<Arc<dyn Provider>>,
) -> Result<DemoOutcome, DemoError> {
    let mut steps = Steps {
        started: Instant::now(),
    };
    let admin = SecretString::from(format!("demo-admin-{}", std::process::id()));
    let mut config = LocalConfig::new(data_dir.clone(), admin.clone());
    // The demo's webhook receiver is on loopback, and nothing else may be called.
    config.allow_loopback = true;
    config.loopback_only = true;
    config.provider = provider;
    let runner = Runner::start(config)
        .await
        .map_err(|e| DemoError(format!("runner did not start: {e}")))?;
    let base = runner.base_url.clone();
    steps.done(&format!(
        "local runner listening on {base} (provider: {})",
        runner.app.provider.name()
    ));

    let mut receiver = HookReceiver::start()
        .await
        .map_err(|e| DemoError(format!("webhook receiver did not start: {e}")))?;
    steps.done(&format!("webhook receiver listening on {}", receiver.url));

    let http = reqwest::Client::new();
    let tenant = json_of(
        http.post(format!("{base}/v1/admin/tenants"))
            .bearer_auth(secrecy::ExposeSecret::expose_secret(&admin))
            .json(&json!({ "name": "demo" }))
            .send()
            .await
            .map_err(|e| err("create tenant")(e.to_string()))?,
        201,
    )
    .await?;
    let key = tenant["apiKey"].as_str().unwrap_or_default().to_owned();
    steps.done(&format!("tenant {} created", tenant["tenantId"]));

    let hook = json_of(
        http.put(format!("{base}/v1/webhook"))
            .bearer_auth(&key)
            .json(&json!({ "url": receiver.url }))
            .send()
            .await
            .map_err(|e| err("set webhook")(e.to_string()))?,
        200,
    )
    .await?;
    let secret = hook["secret"].as_str().unwrap_or_default().to_owned();
    steps.done("webhook registered with a whsec_ secret");

    let submitted = json_of(
        http.post(format!("{base}/v1/images:generate"))
            .bearer_auth(&key)
            .header("idempotency-key", "demo-1")
            .json(&json!({ "prompt": prompt, "mode": "draft" }))
            .send()
            .await
            .map_err(|e| err("submit")(e.to_string()))?,
        202,
    )
    .await?;
    let job_id = submitted["jobId"].as_str().unwrap_or_default().to_owned();
    steps.done(&format!(
        "submitted {prompt:?} as a draft: {job_id} {}",
        submitted["status"]
    ));

    let deadline = Instant::now() + Duration::from_secs(120);
    let job = loop {
        let job = json_of(
            http.get(format!("{base}/v1/jobs/{job_id}"))
                .bearer_auth(&key)
                .send()
                .await
                .map_err(|e| err("poll")(e.to_string()))?,
            200,
        )
        .await?;
        match job["status"].as_str() {
            Some("SUCCEEDED") => break job,
            Some("FAILED") | Some("CANCELED") => {
                return Err(DemoError(format!(
                    "job ended {}: {}",
                    job["status"], job["error"]
                )))
            }
            _ if Instant::now() > deadline => {
                return Err(DemoError(format!(
                    "job still {} after 120 s",
                    job["status"]
                )))
            }
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    };
    steps.done(&format!(
        "job SUCCEEDED after {} attempt(s) with {}",
        job["attempts"], job["provider"]
    ));

    let url = job["resultUrls"][0]
        .as_str()
        .ok_or_else(|| DemoError("succeeded job has no result URL".into()))?;
    let image = http
        .get(url)
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .map_err(|e| err("download")(e.to_string()))?
        .bytes()
        .await
        .map_err(|e| err("download")(e.to_string()))?;
    let extension = match imagegen::fetch::sniff(&image) {
        Some("image/png") => "png",
        Some("image/jpeg") => "jpg",
        Some("image/webp") => "webp",
        _ => {
            return Err(DemoError(
                "downloaded file is not a PNG, JPEG or WebP image".into(),
            ))
        }
    };
    let image_path = data_dir.join(format!("{job_id}.{extension}"));
    std::fs::write(&image_path, &image).map_err(|e| err("save image")(e.to_string()))?;
    steps.done(&format!(
        "downloaded {} bytes (URL expires {}) to {}",
        image.len(),
        job["resultUrlsExpireAt"],
        image_path.display()
    ));

    let received = tokio::time::timeout(Duration::from_secs(30), receiver.hooks.recv())
        .await
        .map_err(|_| DemoError("no webhook arrived within 30 s".into()))?
        .ok_or_else(|| DemoError("webhook receiver stopped".into()))?;
    let verifier = standardwebhooks::Webhook::new(&secret)
        .map_err(|e| DemoError(format!("verifier rejected the secret: {e}")))?;
    verifier
        .verify(&received.body, &received.headers)
        .map_err(|e| DemoError(format!("webhook signature did not verify: {e}")))?;
    let event: Value = serde_json::from_slice(&received.body)
        .map_err(|e| DemoError(format!("webhook body is not JSON: {e}")))?;
    if event["jobId"] != job["jobId"] || event["type"] != "job.succeeded" {
        return Err(DemoError(format!("unexpected webhook event: {event}")));
    }
    steps.done(&format!(
        "webhook {} for {} verified (standardwebhooks crate)",
        event["eventId"], event["type"]
    ));

    runner.shutdown().await;
    Ok(DemoOutcome {
        job_id,
        image_path,
        provider: job["provider"].clone(),
        webhook_event: event,
    })
}
