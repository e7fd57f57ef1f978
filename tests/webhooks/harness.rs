//! One imagegen on the embedded adapters, with the webhook sender's resolver, policy and retry
//! schedule under the test's control, plus scripted webhook receivers.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use imagegen::blob::FsBlobStore;
use imagegen::ports::{QueueConsumer, QueueName};
use imagegen::queue::SqliteQueue;
use imagegen::store::SqliteDb;
use imagegen::webhook::{OutboundPolicy, Resolver, RetrySchedule, WebhookSender};
use imagegen::{handlers, App, AppSettings};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::watch;

pub const ADMIN: &str = "test-admin-token";

/// How the service under test is set up.
pub struct Setup {
    /// Local-runner rules (loopback and plain http allowed) or production rules.
    pub allow_loopback: bool,
    pub resolver: Option<Arc<dyn Resolver>>,
    pub schedule: RetrySchedule,
    /// Run the queue pumps; off to keep jobs QUEUED.
    pub workers: bool,
}

impl Default for Setup {
    fn default() -> Self {
        Self {
            allow_loopback: true,
            resolver: None,
            // The production shape (8 attempts, growing waits, jitter) in milliseconds.
            schedule: RetrySchedule {
                attempts: 8,
                first: Duration::from_millis(20),
                factor: 2,
                cap: Duration::from_millis(160),
                jitter: 0.2,
            },
            workers: true,
        }
    }
}

pub struct Harness {
    pub base: String,
    pub http: reqwest::Client,
    pub queue: SqliteQueue,
    stop: watch::Sender<bool>,
    _dir: tempfile::TempDir,
}

impl Drop for Harness {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// A tenant made through the admin API.
pub struct TestTenant {
    pub id: String,
    pub key: String,
}

impl Harness {
    pub async fn start(setup: Setup) -> Harness {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = SqliteDb::open(&dir.path().join("db.sqlite")).expect("db");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let queue = SqliteQueue::new(db.clone(), 5);
        let policy = OutboundPolicy {
            allow_loopback: setup.allow_loopback,
            // Local mode sends only to loopback receivers; production mode runs behind a fake
            // resolver whose public answers are never connected to by these tests.
            loopback_only: setup.allow_loopback,
        };
        let mut sender =
            WebhookSender::new(policy, Duration::from_secs(2)).with_schedule(setup.schedule);
        if let Some(resolver) = setup.resolver {
            sender = sender.with_resolver(resolver);
        }
        let settings = AppSettings {
            allow_http_urls: setup.allow_loopback,
            ..AppSettings::default()
        };
        let blobs = Arc::new(FsBlobStore::new(
            dir.path().join("images"),
            base.clone(),
            vec![7; 32],
        ));
        let mut app = imagegen::embedded::app(
            db,
            blobs,
            sender,
            settings,
            imagegen::limiter::LimiterSettings::default(),
        )
        .await
        .expect("embedded app");
        app.queue = Arc::new(queue.clone());
        app.worker_id = "webhook-tests".into();

        let (stop, stopped) = watch::channel(false);
        let admin = secrecy::SecretString::from(ADMIN.to_owned());
        let router = imagegen::http::router(app.clone(), Some(&admin));
        tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        if setup.workers {
            tokio::spawn(pump(app.clone(), queue.clone(), stopped));
        }
        Harness {
            base,
            http: reqwest::Client::new(),
            queue,
            stop,
            _dir: dir,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn tenant(&self) -> TestTenant {
        let created: Value = self
            .http
            .post(self.url("/v1/admin/tenants"))
            .bearer_auth(ADMIN)
            .json(&json!({ "name": "hooks" }))
            .send()
            .await
            .expect("create tenant")
            .json()
            .await
            .expect("tenant json");
        TestTenant {
            id: created["tenantId"].as_str().expect("tenant id").to_owned(),
            key: created["apiKey"].as_str().expect("api key").to_owned(),
        }
    }

    /// PUT the tenant's webhook; returns status and body.
    pub async fn put_webhook(&self, key: &str, body: Value) -> (u16, Value) {
        let response = self
            .http
            .put(self.url("/v1/webhook"))
            .bearer_auth(key)
            .json(&body)
            .send()
            .await
            .expect("put webhook");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// Register `url` for every event and return the signing secret.
    pub async fn hook_secret(&self, key: &str, url: &str) -> String {
        let (status, body) = self.put_webhook(key, json!({ "url": url })).await;
        assert_eq!(status, 200, "{body}");
        body["secret"].as_str().expect("secret").to_owned()
    }

    pub async fn get(&self, key: &str, path: &str) -> (u16, Value) {
        let response = self
            .http
            .get(self.url(path))
            .bearer_auth(key)
            .send()
            .await
            .expect("get");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    pub async fn post(&self, key: &str, path: &str) -> (u16, Value) {
        let response = self
            .http
            .post(self.url(path))
            .bearer_auth(key)
            .send()
            .await
            .expect("post");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    pub async fn submit(&self, key: &str) -> String {
        let accepted: Value = self
            .http
            .post(self.url("/v1/images:generate"))
            .bearer_auth(key)
            .json(&json!({ "prompt": "a harbour at dawn" }))
            .send()
            .await
            .expect("submit")
            .json()
            .await
            .expect("submit json");
        accepted["jobId"].as_str().expect("job id").to_owned()
    }

    /// Submit a job and wait for it to succeed.
    pub async fn finished_job(&self, key: &str) -> String {
        let job = self.submit(key).await;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (_, view) = self.get(key, &format!("/v1/jobs/{job}")).await;
            if view["status"] == "SUCCEEDED" {
                return job;
            }
            assert!(Instant::now() < deadline, "job still {}", view["status"]);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Wait until the job's delivery log shows its latest event in `state`.
    pub async fn wait_for_state(&self, key: &str, job: &str, state: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (status, log) = self.get(key, &format!("/v1/jobs/{job}/deliveries")).await;
            assert_eq!(status, 200, "{log}");
            if log["events"][0]["state"] == state {
                return log;
            }
            assert!(
                Instant::now() < deadline,
                "delivery log never {state}: {log}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn dead_letters(&self) -> Vec<Value> {
        self.queue
            .dead_letters(QueueName::Webhook)
            .await
            .expect("dead letters")
            .iter()
            .map(|b| serde_json::from_str(b).expect("dead letter json"))
            .collect()
    }
}

/// Feed both queues to the handlers, as the local runner does, but without idling long.
async fn pump(app: App, queue: SqliteQueue, stopped: watch::Receiver<bool>) {
    while !*stopped.borrow() {
        let mut idle = true;
        for name in [QueueName::Generate, QueueName::Webhook] {
            let batch = queue
                .receive(name, 10, Duration::from_secs(30))
                .await
                .unwrap_or_default();
            if batch.is_empty() {
                continue;
            }
            idle = false;
            let event = imagegen_local::sqs_event(name, &batch);
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
                    let _ = queue.delete(name, &message.receipt_handle).await;
                }
            }
        }
        if idle {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// A webhook request as the receiver saw it.
#[derive(Clone)]
pub struct Hook {
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Hook {
    pub fn header(&self, name: &str) -> String {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("hook body is JSON")
    }

    /// Verify with the independent Standard Webhooks implementation.
    pub fn verifies_with(&self, secret: &str) -> bool {
        standardwebhooks::Webhook::new(secret)
            .expect("secret accepted by standardwebhooks")
            .verify(&self.body, &self.headers)
            .is_ok()
    }
}

/// A loopback receiver that answers its script in order, then `then` (which a test may change
/// to make a failing receiver recover).
pub struct Receiver {
    pub url: String,
    hooks: Arc<Mutex<Vec<Hook>>>,
    then: Arc<AtomicU16>,
}

impl Receiver {
    pub async fn start(script: Vec<u16>, then: u16) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}/hooks", listener.local_addr().expect("addr"));
        let hooks = Arc::new(Mutex::new(Vec::new()));
        let then = Arc::new(AtomicU16::new(then));
        let seen = Arc::new(AtomicUsize::new(0));
        let (h, t) = (hooks.clone(), then.clone());
        let app = Router::new().route(
            "/hooks",
            post(move |headers: HeaderMap, body: Bytes| {
                let (hooks, then, seen) = (h.clone(), t.clone(), seen.clone());
                async move {
                    hooks.lock().expect("lock").push(Hook { headers, body });
                    let n = seen.fetch_add(1, Ordering::SeqCst);
                    let code = script
                        .get(n)
                        .copied()
                        .unwrap_or_else(|| then.load(Ordering::SeqCst));
                    let status = StatusCode::from_u16(code).expect("status");
                    (status, "receiver-private-detail")
                }
            }),
        );
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Receiver { url, hooks, then }
    }

    pub fn answer_from_now_on(&self, status: u16) {
        self.then.store(status, Ordering::SeqCst);
    }

    pub fn hooks(&self) -> Vec<Hook> {
        self.hooks.lock().expect("lock").clone()
    }

    /// Wait until at least `n` requests arrived.
    pub async fn wait_for(&self, n: usize) -> Vec<Hook> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let hooks = self.hooks();
            if hooks.len() >= n {
                return hooks;
            }
            assert!(
                Instant::now() < deadline,
                "only {} of {n} webhooks arrived",
                hooks.len()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// A DNS server under an attacker's control: fixed answers per name, and for `rebind.test` a
/// public answer the first time and `later` ever after.
pub struct TestDns {
    pub names: HashMap<&'static str, Vec<IpAddr>>,
    pub later: IpAddr,
    pub rebind_calls: AtomicUsize,
}

#[async_trait]
impl Resolver for TestDns {
    async fn lookup(&self, host: &str, port: u16) -> std::io::Result<Vec<SocketAddr>> {
        if host == "rebind.test" {
            let call = self.rebind_calls.fetch_add(1, Ordering::SeqCst);
            let ip = if call == 0 {
                IpAddr::from([93, 184, 216, 34])
            } else {
                self.later
            };
            return Ok(vec![SocketAddr::new(ip, port)]);
        }
        let ips = self.names.get(host).ok_or(std::io::ErrorKind::NotFound)?;
        Ok(ips.iter().map(|ip| SocketAddr::new(*ip, port)).collect())
    }
}
