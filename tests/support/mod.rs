//! Test support: start a local runner on a fresh data folder and talk to it over HTTP, the
//! way a client would.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use imagegen_local::{LocalConfig, Runner};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{json, Value};

pub use imagegen_local::demo::{HookReceiver, ReceivedHook};

/// A running local runner with its data folder and an HTTP client.
pub struct TestApp {
    pub runner: Runner,
    pub base: String,
    pub http: reqwest::Client,
    pub admin: SecretString,
    pub data_dir: PathBuf,
    _dir: Option<tempfile::TempDir>,
}

/// A tenant created through the admin API.
pub struct TestTenant {
    pub id: String,
    pub key: String,
}

/// How a test wants the runner set up.
pub fn config(data_dir: PathBuf) -> LocalConfig {
    let mut config = LocalConfig::new(data_dir, SecretString::from("test-admin-token".to_owned()));
    config.visibility = Duration::from_secs(2);
    // Tests send webhooks to receivers on loopback, and nowhere else.
    config.allow_loopback = true;
    config.loopback_only = true;
    config
}

impl TestApp {
    /// A runner on a new temporary folder, with workers.
    pub async fn spawn() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().to_path_buf();
        let mut app = Self::spawn_with(config(path)).await;
        app._dir = Some(dir);
        app
    }

    /// A runner with the given configuration (the caller keeps the folder alive).
    pub async fn spawn_with(config: LocalConfig) -> Self {
        let admin = config.admin_token.clone();
        let data_dir = config.data_dir.clone();
        let runner = Runner::start(config).await.expect("runner starts");
        let base = runner.base_url.clone();
        Self {
            runner,
            base,
            http: reqwest::Client::new(),
            admin,
            data_dir,
            _dir: None,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Create a tenant with the default plan, or `plan` when given.
    pub async fn tenant_with(&self, plan: Option<Value>) -> TestTenant {
        let mut body = json!({ "name": "test tenant" });
        if let Some(plan) = plan {
            body["plan"] = plan;
        }
        let response = self
            .http
            .post(self.url("/v1/admin/tenants"))
            .bearer_auth(self.admin.expose_secret())
            .json(&body)
            .send()
            .await
            .expect("create tenant");
        assert_eq!(response.status(), 201);
        let created: Value = response.json().await.expect("tenant json");
        TestTenant {
            id: created["tenantId"].as_str().expect("id").to_owned(),
            key: created["apiKey"].as_str().expect("key").to_owned(),
        }
    }

    pub async fn tenant(&self) -> TestTenant {
        self.tenant_with(None).await
    }

    /// Submit a prompt; returns (status code, body).
    pub async fn submit(&self, tenant: &TestTenant, body: Value) -> (u16, Value) {
        let response = self
            .http
            .post(self.url("/v1/images:generate"))
            .bearer_auth(&tenant.key)
            .json(&body)
            .send()
            .await
            .expect("submit");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// GET a path as `tenant`; returns (status code, body).
    pub async fn get(&self, tenant: &TestTenant, path: &str) -> (u16, Value) {
        let response = self
            .http
            .get(self.url(path))
            .bearer_auth(&tenant.key)
            .send()
            .await
            .expect("get");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// Poll a job until it reaches a terminal state (or panic after `limit`).
    pub async fn wait_terminal(&self, tenant: &TestTenant, job_id: &str, limit: Duration) -> Value {
        let deadline = Instant::now() + limit;
        loop {
            let (status, job) = self.get(tenant, &format!("/v1/jobs/{job_id}")).await;
            assert_eq!(status, 200, "poll answered {status}: {job}");
            let state = job["status"].as_str().unwrap_or_default().to_owned();
            if ["SUCCEEDED", "FAILED", "CANCELED"].contains(&state.as_str()) {
                return job;
            }
            assert!(Instant::now() < deadline, "job {job_id} still {state}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn shutdown(self) -> Option<tempfile::TempDir> {
        self.runner.shutdown().await;
        self._dir
    }
}

/// Assert the one error shape: `{error: {code, message}}` with the given status and code.
pub fn assert_error(status: u16, body: &Value, want_status: u16, want_code: &str) {
    assert_eq!(status, want_status, "unexpected status; body {body}");
    assert_eq!(
        body["error"]["code"], want_code,
        "unexpected code; body {body}"
    );
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(!message.is_empty(), "error without a message: {body}");
}

pub mod harness;
