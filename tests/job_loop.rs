//! The whole job loop on the embedded default: submit, work, poll, download, webhook, and the
//! `make demo` walk through it.

use std::time::Duration;

use imagegen_tests::{HookReceiver, TestApp};
use serde_json::{json, Value};

fn decode_png(bytes: &[u8]) -> (u32, u32) {
    let decoder = png::Decoder::new(std::io::Cursor::new(bytes));
    let mut reader = decoder.read_info().expect("a PNG header");
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).expect("a whole PNG frame");
    (info.width, info.height)
}

#[tokio::test]
async fn submitted_prompt_becomes_a_downloadable_valid_png() {
    let app = TestApp::spawn().await;
    let tenant = app.tenant().await;

    let (status, submitted) = app
        .submit(&tenant, json!({ "prompt": "a red fox", "mode": "final" }))
        .await;
    assert_eq!(status, 202);
    assert_eq!(submitted["status"], "QUEUED");
    let job_id = submitted["jobId"].as_str().expect("id");
    let job = app
        .wait_terminal(&tenant, job_id, Duration::from_secs(30))
        .await;

    assert_eq!(job["status"], "SUCCEEDED", "{job}");
    assert_eq!(job["attempts"], 1);
    assert_eq!(job["mode"], "final");
    assert_eq!(job["provider"]["provider"], "offline");
    assert!(job["resultUrlsExpireAt"].is_string());
    let url = job["resultUrls"][0].as_str().expect("url");
    let image = app.http.get(url).send().await.expect("download");
    assert_eq!(image.headers()["content-type"], "image/png");
    let bytes = image.bytes().await.expect("bytes");
    assert_eq!(decode_png(&bytes), (512, 512));
}

#[tokio::test]
async fn result_url_stops_working_when_tampered_with() {
    let app = TestApp::spawn().await;
    let tenant = app.tenant().await;
    let (_, submitted) = app.submit(&tenant, json!({ "prompt": "a kite" })).await;
    let job = app
        .wait_terminal(
            &tenant,
            submitted["jobId"].as_str().expect("id"),
            Duration::from_secs(30),
        )
        .await;
    let url = job["resultUrls"][0].as_str().expect("url");

    let forged_expiry = url.replace("expires=", "expires=9");
    let other_file = url.replace("/0.png", "/1.png");

    for bad in [forged_expiry, other_file] {
        let response = app.http.get(&bad).send().await.expect("get");
        assert_eq!(response.status(), 403, "{bad}");
    }
}

#[tokio::test]
async fn a_job_queued_before_a_restart_finishes_after_it() {
    let dir = tempfile::tempdir().expect("dir");
    let mut stopped = imagegen_tests::config(dir.path().to_path_buf());
    stopped.workers = false;
    let app = TestApp::spawn_with(stopped).await;
    let tenant = app.tenant().await;
    let (_, submitted) = app
        .submit(&tenant, json!({ "prompt": "survives restarts" }))
        .await;
    let job_id = submitted["jobId"].as_str().expect("id").to_owned();
    let (_, queued) = app.get(&tenant, &format!("/v1/jobs/{job_id}")).await;
    assert_eq!(queued["status"], "QUEUED");
    app.shutdown().await;

    let restarted = TestApp::spawn_with(imagegen_tests::config(dir.path().to_path_buf())).await;
    let job = restarted
        .wait_terminal(&tenant, &job_id, Duration::from_secs(30))
        .await;

    assert_eq!(job["status"], "SUCCEEDED", "{job}");
}

#[tokio::test]
async fn terminal_state_is_announced_by_a_webhook_that_an_independent_verifier_accepts() {
    let app = TestApp::spawn().await;
    let tenant = app.tenant().await;
    let mut receiver = HookReceiver::start().await.expect("receiver");
    let hook: Value = app
        .http
        .put(app.url("/v1/webhook"))
        .bearer_auth(&tenant.key)
        .json(&json!({ "url": receiver.url }))
        .send()
        .await
        .expect("set webhook")
        .json()
        .await
        .expect("json");
    let secret = hook["secret"].as_str().expect("secret");
    assert!(secret.starts_with("whsec_"));

    let (_, submitted) = app
        .submit(&tenant, json!({ "prompt": "announce me" }))
        .await;
    let received = tokio::time::timeout(Duration::from_secs(30), receiver.hooks.recv())
        .await
        .expect("a webhook in time")
        .expect("receiver open");

    let verifier = standardwebhooks::Webhook::new(secret).expect("secret accepted");
    verifier
        .verify(&received.body, &received.headers)
        .expect("signature verifies");
    let mut tampered = received.body.to_vec();
    tampered.push(b' ');
    assert!(verifier.verify(&tampered, &received.headers).is_err());
    let event: Value = serde_json::from_slice(&received.body).expect("json body");
    assert_eq!(event["jobId"], submitted["jobId"]);
    assert_eq!(event["type"], "job.succeeded");
    assert_eq!(event["status"], "SUCCEEDED");
    assert!(event["resultUrls"][0].is_string());
    assert!(event["error"].is_null());
    assert_eq!(
        received.headers["webhook-id"],
        event["eventId"].as_str().expect("id")
    );
}

#[tokio::test]
async fn webhook_to_a_private_address_is_refused_at_registration_without_the_local_setting() {
    let dir = tempfile::tempdir().expect("dir");
    let mut config = imagegen_tests::config(dir.path().to_path_buf());
    config.allow_loopback = false;
    let app = TestApp::spawn_with(config).await;
    let tenant = app.tenant().await;

    for url in [
        "https://127.0.0.1/hook",
        "https://169.254.169.254/",
        "http://example.com/",
    ] {
        let response = app
            .http
            .put(app.url("/v1/webhook"))
            .bearer_auth(&tenant.key)
            .json(&json!({ "url": url }))
            .send()
            .await
            .expect("set webhook");
        let status = response.status().as_u16();
        let body: Value = response.json().await.expect("json");
        imagegen_tests::assert_error(status, &body, 400, "INVALID_WEBHOOK_URL");
    }
}

#[tokio::test]
async fn the_demo_succeeds_with_a_valid_png_and_a_verified_webhook() {
    let dir = tempfile::tempdir().expect("dir");

    let outcome = tokio::time::timeout(
        Duration::from_secs(30),
        imagegen_local::demo::run_with(dir.path().to_path_buf(), "a demo in a test", None),
    )
    .await
    .expect("the demo finishes within 30 s")
    .unwrap_or_else(|e| panic!("the demo failed: {e}"));

    assert!(outcome.job_id.starts_with("job_"), "{}", outcome.job_id);
    assert_eq!(outcome.provider["provider"], "offline");
    assert!(outcome.image_path.starts_with(dir.path()));
    assert_eq!(
        outcome.image_path.extension().and_then(|e| e.to_str()),
        Some("png")
    );
    let bytes = std::fs::read(&outcome.image_path).expect("the saved image");
    let (width, height) = decode_png(&bytes);
    assert!(width > 0 && height > 0, "{width}x{height}");
    let event = &outcome.webhook_event;
    assert_eq!(event["type"], "job.succeeded");
    assert_eq!(event["jobId"], outcome.job_id.as_str());
    assert!(event["eventId"].as_str().is_some_and(|id| !id.is_empty()));
}
