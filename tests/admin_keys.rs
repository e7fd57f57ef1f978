//! The upstream key pool through the HTTP API: the admin routes for quota groups and keys,
//! and dispatch that waits for a key instead of failing.
//!
//! Run with `cargo test -p imagegen-tests --test admin_keys`.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use imagegen::domain::{ErrorCode, JobError};
use imagegen::limiter::LimiterSettings;
use imagegen::ports::{
    Generation, GenerationRequest, KeyOutcome, Provider, ProviderError, QueueConsumer, QueueName,
};
use imagegen::provider::OfflineProvider;
use imagegen_local::{LocalConfig, Runner};
use reqwest::{Client, Method, StatusCode};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{json, Value};

const ADMIN: &str = "admin-token-for-tests";
const GOOD: &str = "good-upstream-secret";
const REVOKED: &str = "revoked-upstream-secret";

/// A provider that needs an upstream key and answers by the secret it is given.
struct KeyedProvider;

#[async_trait]
impl Provider for KeyedProvider {
    fn name(&self) -> &str {
        "keyed-test"
    }

    fn needs_key(&self) -> bool {
        true
    }

    async fn generate(
        &self,
        request: &GenerationRequest,
        key: Option<&SecretString>,
    ) -> Result<Generation, ProviderError> {
        match key.map(|k| k.expose_secret().to_owned()).as_deref() {
            Some(GOOD) => OfflineProvider::default().generate(request, None).await,
            other => Err(ProviderError {
                error: JobError::new(ErrorCode::UpstreamError, "key refused"),
                key_outcome: if other == Some(REVOKED) {
                    KeyOutcome::Invalid
                } else {
                    KeyOutcome::Failure
                },
                retry_after: None,
            }),
        }
    }
}

struct Api {
    runner: Runner,
    http: Client,
    _dir: tempfile::TempDir,
}

impl Api {
    async fn start() -> Api {
        let dir = tempfile::tempdir().unwrap();
        let mut config = LocalConfig::new(dir.path().to_path_buf(), ADMIN.to_owned().into());
        config.provider = Some(Arc::new(KeyedProvider));
        config.max_receives = 2;
        config.limiter = LimiterSettings {
            no_key_retry: Duration::from_millis(150),
            ..LimiterSettings::default()
        };
        let runner = Runner::start(config).await.unwrap();
        Api {
            runner,
            http: Client::new(),
            _dir: dir,
        }
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.runner.base_url))
            .bearer_auth(token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let text = response.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    async fn admin(&self, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        self.call(method, path, ADMIN, body).await
    }

    async fn tenant(&self) -> String {
        let (status, body) = self
            .admin(
                Method::POST,
                "/v1/admin/tenants",
                Some(json!({"name": "acme"})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED);
        body["apiKey"].as_str().unwrap().to_owned()
    }

    async fn group(&self, id: &str) {
        let body = json!({"requestsPerMinute": 60, "concurrency": 2});
        let (status, _) = self
            .admin(
                Method::PUT,
                &format!("/v1/admin/quota-groups/{id}"),
                Some(body),
            )
            .await;
        assert_eq!(status, StatusCode::OK);
    }

    async fn add_key(&self, id: &str, group: &str, secret: &str) -> (StatusCode, Value) {
        let body = json!({"id": id, "group": group, "secret": secret, "label": "test"});
        self.admin(Method::POST, "/v1/admin/keys", Some(body)).await
    }

    async fn submit(&self, tenant: &str) -> String {
        let body = json!({"prompt": "a lighthouse at dusk"});
        let (status, body) = self
            .call(Method::POST, "/v1/images:generate", tenant, Some(body))
            .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        body["jobId"].as_str().unwrap().to_owned()
    }

    async fn job(&self, tenant: &str, id: &str) -> Value {
        self.call(Method::GET, &format!("/v1/jobs/{id}"), tenant, None)
            .await
            .1
    }

    async fn wait_for(&self, tenant: &str, id: &str, status: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let job = self.job(tenant, id).await;
            if job["status"] == status {
                return job;
            }
            assert!(
                Instant::now() < deadline,
                "job never reached {status}: {job}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[tokio::test]
async fn key_routes_refuse_callers_without_the_admin_token() {
    let api = Api::start().await;
    let tenant = api.tenant().await;

    let (anonymous, _) = api.call(Method::GET, "/v1/admin/keys", "", None).await;
    let (as_tenant, body) = api.call(Method::GET, "/v1/admin/keys", &tenant, None).await;

    assert_eq!(anonymous, StatusCode::UNAUTHORIZED);
    assert_eq!(as_tenant, StatusCode::UNAUTHORIZED);
    assert_eq!(body["error"]["code"], "UNAUTHORIZED");
    api.runner.shutdown().await;
}

#[tokio::test]
async fn an_added_key_is_listed_with_its_health_and_never_with_its_secret() {
    let api = Api::start().await;
    api.group("project-a").await;

    let (created, key) = api.add_key("gem-1", "project-a", GOOD).await;
    let (_, listed) = api.admin(Method::GET, "/v1/admin/keys", None).await;
    let (_, one) = api.admin(Method::GET, "/v1/admin/keys/gem-1", None).await;

    assert_eq!(created, StatusCode::CREATED);
    for body in [&key, &listed, &one] {
        assert!(!body.to_string().contains(GOOD), "secret leaked: {body}");
    }
    assert_eq!(listed["keys"][0]["id"], "gem-1");
    assert_eq!(one["group"], "project-a");
    assert_eq!(one["state"], "enabled");
    let health = &one["health"];
    for field in [
        "inFlight",
        "requestsLastMinute",
        "cooldownUntil",
        "consecutiveFailures",
        "errorRate",
        "p95LatencyMs",
    ] {
        assert!(health.get(field).is_some(), "{field} missing: {health}");
    }
    api.runner.shutdown().await;
}

#[tokio::test]
async fn bad_key_requests_get_clear_errors_with_stable_codes() {
    let api = Api::start().await;
    api.group("project-a").await;
    api.add_key("gem-1", "project-a", GOOD).await;

    let (duplicate, duplicate_body) = api.add_key("gem-1", "project-a", GOOD).await;
    let (no_group, no_group_body) = api.add_key("gem-2", "nowhere", GOOD).await;
    let (bad_id, _) = api.add_key("has space", "project-a", GOOD).await;
    let (empty_secret, _) = api.add_key("gem-3", "project-a", "").await;
    let zero = json!({"requestsPerMinute": 0});
    let (zero_limit, _) = api
        .admin(Method::PUT, "/v1/admin/quota-groups/p0", Some(zero))
        .await;
    let negative = json!({"id": "gem-4", "group": "project-a", "secret": "x", "concurrency": -1});
    let (negative_limit, _) = api
        .admin(Method::POST, "/v1/admin/keys", Some(negative))
        .await;
    let moving = json!({"group": "elsewhere"});
    let (move_group, _) = api
        .admin(Method::PATCH, "/v1/admin/keys/gem-1", Some(moving))
        .await;
    let (in_use, in_use_body) = api
        .admin(Method::DELETE, "/v1/admin/quota-groups/project-a", None)
        .await;
    let (missing, _) = api.admin(Method::GET, "/v1/admin/keys/nope", None).await;

    assert_eq!(duplicate, StatusCode::CONFLICT);
    assert_eq!(duplicate_body["error"]["code"], "RESOURCE_EXISTS");
    assert_eq!(no_group, StatusCode::BAD_REQUEST);
    assert!(no_group_body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("nowhere"));
    assert_eq!(bad_id, StatusCode::BAD_REQUEST);
    assert_eq!(empty_secret, StatusCode::BAD_REQUEST);
    assert_eq!(zero_limit, StatusCode::BAD_REQUEST);
    assert_eq!(negative_limit, StatusCode::BAD_REQUEST);
    assert_eq!(move_group, StatusCode::BAD_REQUEST);
    assert_eq!(in_use, StatusCode::CONFLICT);
    assert_eq!(in_use_body["error"]["code"], "RESOURCE_IN_USE");
    assert_eq!(missing, StatusCode::NOT_FOUND);
    api.runner.shutdown().await;
}

#[tokio::test]
async fn a_key_can_be_updated_disabled_enabled_and_deleted() {
    let api = Api::start().await;
    api.group("project-a").await;
    api.add_key("gem-1", "project-a", GOOD).await;

    let change = json!({"label": null, "concurrency": 3, "requestsPerMinute": null});
    let (_, updated) = api
        .admin(Method::PATCH, "/v1/admin/keys/gem-1", Some(change))
        .await;
    let (_, disabled) = api
        .admin(Method::POST, "/v1/admin/keys/gem-1:disable", None)
        .await;
    let (_, enabled) = api
        .admin(Method::POST, "/v1/admin/keys/gem-1:enable", None)
        .await;
    let (deleted, _) = api
        .admin(Method::DELETE, "/v1/admin/keys/gem-1", None)
        .await;
    let (after, _) = api.admin(Method::GET, "/v1/admin/keys/gem-1", None).await;
    let (group_deleted, _) = api
        .admin(Method::DELETE, "/v1/admin/quota-groups/project-a", None)
        .await;

    assert_eq!(updated["label"], Value::Null);
    assert_eq!(updated["limits"]["concurrency"], 3);
    assert_eq!(updated["limits"]["requestsPerMinute"], Value::Null);
    assert_eq!(disabled["state"], "disabled");
    assert_eq!(enabled["state"], "enabled");
    assert_eq!(enabled["disabledReason"], Value::Null);
    assert_eq!(deleted, StatusCode::NO_CONTENT);
    assert_eq!(after, StatusCode::NOT_FOUND);
    assert_eq!(group_deleted, StatusCode::NO_CONTENT);
    api.runner.shutdown().await;
}

#[tokio::test]
async fn a_job_waits_for_a_key_without_spending_attempts_then_runs_with_its_secret() {
    let api = Api::start().await;
    let tenant = api.tenant().await;
    let job_id = api.submit(&tenant).await;

    // Long enough for many denials, more than the queue's two receives before dead-lettering.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let waiting = api.job(&tenant, &job_id).await;
    let dead = api
        .runner
        .queue
        .dead_letters(QueueName::Generate)
        .await
        .unwrap();
    api.group("project-a").await;
    api.add_key("gem-1", "project-a", GOOD).await;
    let done = api.wait_for(&tenant, &job_id, "SUCCEEDED").await;

    assert_eq!(waiting["status"], "QUEUED", "{waiting}");
    assert_eq!(waiting["attempts"], 0);
    assert!(
        dead.is_empty(),
        "waiting drifted to the dead-letter queue: {dead:?}"
    );
    assert_eq!(done["attempts"], 1);
    let (_, key) = api.admin(Method::GET, "/v1/admin/keys/gem-1", None).await;
    assert_eq!(key["health"]["requestsLastMinute"], 1);
    assert_eq!(key["health"]["inFlight"], 0);
    api.runner.shutdown().await;
}

#[tokio::test]
async fn a_key_the_upstream_calls_invalid_is_disabled_and_reported() {
    let api = Api::start().await;
    let tenant = api.tenant().await;
    api.group("project-a").await;
    api.add_key("gem-bad", "project-a", REVOKED).await;

    let job_id = api.submit(&tenant).await;
    api.wait_for(&tenant, &job_id, "FAILED").await;
    let (_, key) = api.admin(Method::GET, "/v1/admin/keys/gem-bad", None).await;

    assert_eq!(key["state"], "disabled", "{key}");
    assert!(key["disabledReason"].as_str().unwrap().contains("invalid"));
    assert_eq!(key["health"]["disabled"], true);
    api.runner.shutdown().await;
}

#[tokio::test]
async fn every_listed_key_route_is_really_served() {
    let api = Api::start().await;

    let key_routes = imagegen::http::ROUTES.iter().filter(|(_, path)| {
        path.starts_with("/v1/admin/keys") || path.starts_with("/v1/admin/quota-groups")
    });
    for (method, path) in key_routes {
        api.group("g1").await;
        let _ = api.add_key("k1", "g1", GOOD).await;
        let path = path.replace("{groupId}", "g1").replace("{keyId}", "k1");
        let method = Method::from_bytes(method.as_bytes()).unwrap();

        let (status, body) = api.admin(method.clone(), &path, Some(json!({}))).await;

        let code = body["error"]["code"].as_str().unwrap_or_default();
        assert!(
            code != "NOT_FOUND" && code != "METHOD_NOT_ALLOWED",
            "{method} {path} is listed but not served: {status} {body}"
        );
    }
}
