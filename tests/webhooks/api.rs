//! The webhook endpoint API, and the outbound guard as tenants meet it.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

use serde_json::{json, Value};

use crate::harness::{Harness, Setup, TestDns, ADMIN};

fn ip(raw: &str) -> IpAddr {
    raw.parse().expect("ip")
}

/// Production rules (https only, no loopback) with an attacker's DNS.
async fn production() -> (Harness, Arc<TestDns>) {
    let dns = Arc::new(TestDns {
        names: HashMap::from([
            ("hooks.example.test", vec![ip("93.184.216.34")]),
            ("localhost", vec![ip("127.0.0.1")]),
            ("metadata.attacker.test", vec![ip("169.254.169.254")]),
            ("intranet.attacker.test", vec![ip("10.0.0.5")]),
            (
                "split.attacker.test",
                vec![ip("93.184.216.34"), ip("fd00::5")],
            ),
        ]),
        later: ip("127.0.0.1"),
        rebind_calls: AtomicUsize::new(0),
    });
    let setup = Setup {
        allow_loopback: false,
        resolver: Some(dns.clone()),
        ..Setup::default()
    };
    (Harness::start(setup).await, dns)
}

#[tokio::test]
async fn hostile_webhook_urls_are_refused_at_registration() {
    let (service, _) = production().await;
    let tenant = service.tenant().await;
    let hostile = [
        "http://hooks.example.test/in",
        "https://user:pass@hooks.example.test/in",
        "https://hooks.example.test:8443/in",
        "https://127.0.0.1/in",
        "https://2130706433/in",
        "https://0x7f000001/in",
        "https://0177.0.0.1/in",
        "https://169.254.169.254/latest/meta-data/",
        "https://100.100.100.200/in",
        "https://10.1.2.3/in",
        "https://[::1]/in",
        "https://[::ffff:10.0.0.1]/in",
        "https://[fd00::1]/in",
        "https://[fe80::1]/in",
        "https://localhost/in",
        "https://metadata.attacker.test/in",
        "https://intranet.attacker.test/in",
        "https://split.attacker.test/in",
        "https://does-not-resolve.test/in",
        "not a url",
        "ftp://hooks.example.test/in",
    ];

    for url in hostile {
        let (status, body) = service
            .put_webhook(&tenant.key, json!({ "url": url }))
            .await;

        assert_eq!(status, 400, "{url}: {body}");
        assert_eq!(body["error"]["code"], "INVALID_WEBHOOK_URL", "{url}");
    }
    let (status, _) = service.get(&tenant.key, "/v1/webhook").await;
    assert_eq!(status, 404, "nothing was stored");
}

#[tokio::test]
async fn a_public_https_url_is_accepted_with_a_whsec_secret_shown_once() {
    let (service, _) = production().await;
    let tenant = service.tenant().await;

    let (status, created) = service
        .put_webhook(
            &tenant.key,
            json!({ "url": "https://hooks.example.test/in" }),
        )
        .await;
    let (_, shown) = service.get(&tenant.key, "/v1/webhook").await;

    assert_eq!(status, 200, "{created}");
    assert!(created["secret"]
        .as_str()
        .is_some_and(|s| s.starts_with("whsec_")));
    assert_eq!(shown["url"], "https://hooks.example.test/in");
    assert_eq!(shown["enabled"], true);
    assert_eq!(
        shown["events"],
        json!(["job.succeeded", "job.failed", "job.canceled"])
    );
    assert!(shown.get("secret").is_none());
}

#[tokio::test]
async fn a_name_that_rebinds_to_loopback_after_registration_is_never_called() {
    let (service, dns) = production().await;
    let tenant = service.tenant().await;
    let (status, _) = service
        .put_webhook(&tenant.key, json!({ "url": "https://rebind.test/in" }))
        .await;

    let job = service.finished_job(&tenant.key).await;
    let log = service.wait_for_state(&tenant.key, &job, "failed").await;

    assert_eq!(status, 200, "the first answer was public");
    let tried = log["events"][0]["attempts"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(tried.len(), 8);
    for attempt in &tried {
        assert!(attempt["statusCode"].is_null(), "no connection was made");
        assert_eq!(
            attempt["error"],
            "destination refused: address 127.0.0.1 is not allowed"
        );
    }
    assert!(dns.rebind_calls.load(std::sync::atomic::Ordering::SeqCst) >= 9);
}

#[tokio::test]
async fn the_endpoint_can_be_changed_without_a_new_secret_and_removed() {
    let service = Harness::start(Setup::default()).await;
    let tenant = service.tenant().await;
    service
        .hook_secret(&tenant.key, "http://127.0.0.1:9/a")
        .await;

    let (changed, view) = service
        .put_webhook(
            &tenant.key,
            json!({ "url": "http://127.0.0.1:9/b", "events": ["job.failed"], "enabled": false }),
        )
        .await;
    let deleted = service
        .http
        .delete(service.url("/v1/webhook"))
        .bearer_auth(&tenant.key)
        .send()
        .await
        .expect("delete")
        .status();
    let (after, _) = service.get(&tenant.key, "/v1/webhook").await;
    let (rotate, _) = service.post(&tenant.key, "/v1/webhook/secret:rotate").await;

    assert_eq!(changed, 200);
    assert!(view.get("secret").is_none());
    assert_eq!(view["url"], "http://127.0.0.1:9/b");
    assert_eq!(view["events"], json!(["job.failed"]));
    assert_eq!(view["enabled"], false);
    assert_eq!(deleted, 204);
    assert_eq!(after, 404);
    assert_eq!(rotate, 404);
}

#[tokio::test]
async fn bad_endpoint_settings_get_a_400_with_a_stable_code() {
    let service = Harness::start(Setup::default()).await;
    let tenant = service.tenant().await;
    let url = "http://127.0.0.1:9/a";
    let long = format!("http://127.0.0.1:9/{}", "a".repeat(3000));
    let cases: Vec<(Value, &str)> = vec![
        (json!({ "url": url, "events": [] }), "INVALID_REQUEST"),
        (
            json!({ "url": url, "events": ["job.exploded"] }),
            "INVALID_REQUEST",
        ),
        (json!({ "url": url, "colour": "red" }), "INVALID_REQUEST"),
        (json!({ "events": ["job.failed"] }), "INVALID_REQUEST"),
        (json!({ "url": 42 }), "INVALID_REQUEST"),
        (json!({ "url": long }), "INVALID_WEBHOOK_URL"),
    ];

    for (body, code) in cases {
        let (status, answer) = service.put_webhook(&tenant.key, body.clone()).await;

        assert_eq!(status, 400, "{body}: {answer}");
        assert_eq!(answer["error"]["code"], code, "{body}");
    }
    service.hook_secret(&tenant.key, url).await;
    let too_long = service
        .http
        .post(service.url("/v1/webhook/secret:rotate"))
        .bearer_auth(&tenant.key)
        .json(&json!({ "overlapSeconds": 30 * 24 * 3600 }))
        .send()
        .await
        .expect("rotate");
    assert_eq!(too_long.status().as_u16(), 400);
}

#[tokio::test]
async fn a_bad_rotation_body_gets_the_same_json_errors_as_every_other_route() {
    let service = Harness::start(Setup::default()).await;
    let tenant = service.tenant().await;
    service
        .hook_secret(&tenant.key, "http://127.0.0.1:9/hook")
        .await;
    let rotate = |body: Vec<u8>| {
        service
            .http
            .post(service.url("/v1/webhook/secret:rotate"))
            .bearer_auth(&tenant.key)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let cases: Vec<(Vec<u8>, u16, &str)> = vec![
        (b"{".to_vec(), 400, "INVALID_JSON"),
        (b"[]".to_vec(), 400, "INVALID_REQUEST"),
        (vec![b' '; 2 * 1024 * 1024], 413, "PAYLOAD_TOO_LARGE"),
    ];

    for (body, status, code) in cases {
        let answer = rotate(body).await.expect("rotate");
        let got = answer.status().as_u16();
        let json: Value = answer.json().await.expect("a JSON error body");

        assert_eq!(got, status, "{json}");
        assert_eq!(json["error"]["code"], code, "{json}");
        let message = json["error"]["message"].as_str().unwrap_or_default();
        assert!(
            !message.contains("RotateBody"),
            "internal names leak: {message}"
        );
    }
}

#[tokio::test]
async fn an_operator_manages_any_tenants_endpoint() {
    let service = Harness::start(Setup::default()).await;
    let tenant = service.tenant().await;
    let path = format!("/v1/admin/tenants/{}/webhook", tenant.id);

    let created = service
        .http
        .put(service.url(&path))
        .bearer_auth(ADMIN)
        .json(&json!({ "url": "http://127.0.0.1:9/ops" }))
        .send()
        .await
        .expect("put");
    let created_status = created.status().as_u16();
    let created: Value = created.json().await.expect("json");
    let (seen_by_tenant, view) = service.get(&tenant.key, "/v1/webhook").await;
    let (rotated, secret) = service.post(ADMIN, &format!("{path}/secret:rotate")).await;
    let (tenant_on_admin, _) = service.get(&tenant.key, &path).await;
    let (unknown, _) = service
        .get(ADMIN, "/v1/admin/tenants/ten_unknown/webhook")
        .await;

    assert_eq!(created_status, 200);
    assert!(created["secret"].is_string());
    assert_eq!(seen_by_tenant, 200);
    assert_eq!(view["url"], "http://127.0.0.1:9/ops");
    assert_eq!(rotated, 200);
    assert!(secret["secret"]
        .as_str()
        .is_some_and(|s| s.starts_with("whsec_")));
    assert_eq!(tenant_on_admin, 401);
    assert_eq!(unknown, 404);
}
