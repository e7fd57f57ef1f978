//! A local runner on a temporary folder, a tenant on it, and small HTTP helpers.

#![allow(dead_code)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use imagegen::ports::Provider;
use imagegen_local::{LocalConfig, Runner};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{json, Value};

pub struct Env {
    pub runner: Runner,
    pub base: String,
    pub key: String,
    pub http: reqwest::Client,
    _dir: tempfile::TempDir,
}

/// Start a runner with `provider` (offline when `None`) and make one tenant.
pub async fn start(
    provider: Option<Arc<dyn Provider>>,
    allow_loopback: bool,
    workers: bool,
) -> Env {
    let dir = tempfile::tempdir().expect("temp dir");
    let admin = SecretString::from("test-admin-token");
    let mut config = LocalConfig::new(dir.path().to_path_buf(), admin.clone());
    config.provider = provider;
    config.allow_loopback = allow_loopback;
    config.workers = workers;
    let runner = Runner::start(config).await.expect("runner starts");
    let base = runner.base_url.clone();
    let http = reqwest::Client::new();

    let tenant: Value = http
        .post(format!("{base}/v1/admin/tenants"))
        .bearer_auth(admin.expose_secret())
        .json(&json!({ "name": "t" }))
        .send()
        .await
        .expect("create tenant")
        .json()
        .await
        .expect("tenant json");
    let key = tenant["apiKey"].as_str().expect("api key").to_owned();
    Env {
        runner,
        base,
        key,
        http,
        _dir: dir,
    }
}

impl Env {
    /// Upload `bytes` as a reference image through `POST /v1/uploads` and its presigned PUT;
    /// returns the `upload://` reference a job can name.
    pub async fn upload(&self, bytes: Vec<u8>) -> String {
        let (status, ticket) = self.post("/v1/uploads", json!({})).await;
        assert_eq!(status, 201, "{ticket}");
        assert_eq!(ticket["method"], "PUT");
        let put = self
            .http
            .put(ticket["uploadUrl"].as_str().expect("upload url"))
            .body(bytes)
            .send()
            .await
            .expect("put");
        assert_eq!(put.status().as_u16(), 200);
        ticket["inputImageUrl"]
            .as_str()
            .expect("reference")
            .to_owned()
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let response = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.key)
            .json(&body)
            .send()
            .await
            .expect("request");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// A POST with no body (actions such as `:finalize`).
    pub async fn action(&self, path: &str) -> (u16, Value) {
        let response = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.key)
            .send()
            .await
            .expect("request");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    pub async fn job(&self, id: &str) -> Value {
        self.http
            .get(format!("{}/v1/jobs/{id}", self.base))
            .bearer_auth(&self.key)
            .send()
            .await
            .expect("poll")
            .json()
            .await
            .expect("job json")
    }

    /// Submit and return the job id, asserting a 202.
    pub async fn submit(&self, body: Value) -> String {
        let (status, answer) = self.post("/v1/images:generate", body).await;
        assert_eq!(status, 202, "{answer}");
        answer["jobId"].as_str().expect("job id").to_owned()
    }

    /// Poll until the job is terminal.
    pub async fn settle(&self, id: &str, within: Duration) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let job = self.job(id).await;
            let status = job["status"].as_str().unwrap_or_default();
            if matches!(status, "SUCCEEDED" | "FAILED" | "CANCELED") {
                return job;
            }
            assert!(Instant::now() < deadline, "job still {status}: {job}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
