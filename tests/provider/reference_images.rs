//! Reference images: fetched through the outbound guard, sniffed from their bytes, or uploaded
//! through a presigned PUT; checked at submit where they can be.
//!
//! Run with `cargo test -p imagegen-tests --test reference_images`.

mod fake_gemini;
mod harness;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use fake_gemini::*;
use imagegen::domain::ErrorCode;
use imagegen::fetch::{fetch_url, FetchError, FetchLimits};
use imagegen::provider::{GeminiProvider, GeminiSettings};
use imagegen::webhook::OutboundPolicy;
use serde_json::json;
use tokio::net::TcpListener;

/// An origin serving images and misbehaviours on a free loopback port.
async fn origin() -> String {
    let big = vec![0u8; 64 * 1024];
    let app = Router::new()
        .route(
            "/ok.png",
            get(|| async { ([(header::CONTENT_TYPE, "image/png")], png()) }),
        )
        .route(
            "/lying.gif",
            // Declared as PNG, but the bytes are a GIF.
            get(|| async {
                (
                    [(header::CONTENT_TYPE, "image/png")],
                    b"GIF89a\x01\x00".to_vec(),
                )
            }),
        )
        .route(
            "/redirect",
            get(|| async { (StatusCode::FOUND, [(header::LOCATION, "/ok.png")]) }),
        )
        .route("/missing", get(|| async { StatusCode::NOT_FOUND }))
        .route("/busy", get(|| async { StatusCode::SERVICE_UNAVAILABLE }))
        .route(
            "/big",
            get(move || {
                let big = big.clone();
                async move { ([(header::CONTENT_TYPE, "image/png")], big) }
            }),
        )
        .route(
            "/big-unsized",
            get(|| async {
                let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
                    (0..16).map(|_| Ok(vec![0u8; 8 * 1024])).collect();
                Response::new(Body::from_stream(futures_util::stream::iter(chunks))).into_response()
            }),
        );
    let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .expect("bind origin");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    base
}

fn loopback() -> OutboundPolicy {
    OutboundPolicy {
        allow_loopback: true,
        loopback_only: true,
    }
}

fn limits(max_bytes: usize) -> FetchLimits {
    FetchLimits {
        max_bytes,
        timeout: Duration::from_secs(5),
    }
}

async fn fetch(policy: OutboundPolicy, url: &str, max: usize) -> Result<String, FetchError> {
    let url = url::Url::parse(url).expect("url");
    fetch_url(&policy, &url, limits(max))
        .await
        .map(|image| image.mime_type)
}

fn refused_with(result: Result<String, FetchError>) -> ErrorCode {
    match result {
        Err(FetchError::Refused(code, _)) => code,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn an_image_url_is_fetched_and_typed_from_its_bytes() {
    let origin = origin().await;

    let mime = fetch(loopback(), &format!("{origin}/ok.png"), 1024 * 1024).await;

    assert_eq!(mime.ok().as_deref(), Some("image/png"));
}

#[tokio::test]
async fn a_declared_type_does_not_make_other_bytes_an_image() {
    let origin = origin().await;

    let result = fetch(loopback(), &format!("{origin}/lying.gif"), 1024 * 1024).await;

    assert_eq!(refused_with(result), ErrorCode::UnsupportedImageType);
}

#[tokio::test]
async fn redirects_are_refused_rather_than_followed() {
    let origin = origin().await;

    let result = fetch(loopback(), &format!("{origin}/redirect"), 1024 * 1024).await;

    assert_eq!(refused_with(result), ErrorCode::InvalidImageUrl);
}

#[tokio::test]
async fn images_over_the_limit_are_refused_with_or_without_a_declared_length() {
    let origin = origin().await;

    let sized = fetch(loopback(), &format!("{origin}/big"), 16 * 1024).await;
    let unsized_ = fetch(loopback(), &format!("{origin}/big-unsized"), 16 * 1024).await;

    assert_eq!(refused_with(sized), ErrorCode::PayloadTooLarge);
    assert_eq!(refused_with(unsized_), ErrorCode::PayloadTooLarge);
}

#[tokio::test]
async fn a_404_is_refused_but_a_503_is_worth_another_try() {
    let origin = origin().await;

    let missing = fetch(loopback(), &format!("{origin}/missing"), 1024).await;
    let busy = fetch(loopback(), &format!("{origin}/busy"), 1024).await;

    assert_eq!(refused_with(missing), ErrorCode::InvalidImageUrl);
    assert!(matches!(busy, Err(FetchError::Transient(_))));
}

#[tokio::test]
async fn the_guard_refuses_loopback_and_private_addresses_outside_local_runs() {
    let origin = origin().await;

    let local = fetch(
        OutboundPolicy::default(),
        &format!("{origin}/ok.png"),
        1024 * 1024,
    )
    .await;
    let metadata = fetch(
        OutboundPolicy::default(),
        "http://169.254.169.254/latest/meta-data",
        1024,
    )
    .await;

    assert_eq!(refused_with(local), ErrorCode::InvalidImageUrl);
    assert_eq!(refused_with(metadata), ErrorCode::InvalidImageUrl);
}

#[tokio::test]
async fn a_private_image_url_is_refused_at_submit() {
    let env = harness::start(None, false, false).await;

    let (status, body) = env
        .post(
            "/v1/images:generate",
            json!({ "prompt": "a fox", "inputImageUrl": "https://10.1.2.3/fox.png" }),
        )
        .await;

    assert_eq!(status, 400);
    assert_eq!(body["error"]["code"], "INVALID_IMAGE_URL");
}

fn gemini(fake: &FakeGemini) -> Arc<GeminiProvider> {
    let base = url::Url::parse(&fake.base_url).expect("url");
    let settings = GeminiSettings::new(base, Some(secrecy::SecretString::from("k")));
    Arc::new(GeminiProvider::new(settings).expect("provider"))
}

#[tokio::test]
async fn an_uploaded_image_reaches_the_model_as_inline_data() {
    let fake = FakeGemini::start().await;
    fake.always(Reply::ok(answer_with(vec![image_part(&png())])));
    let env = harness::start(Some(gemini(&fake)), true, true).await;
    let reference = env.upload(png()).await;

    let id = env
        .submit(json!({ "prompt": "make it blue", "inputImageUrl": reference }))
        .await;
    let job = env.settle(&id, Duration::from_secs(20)).await;

    assert_eq!(job["status"], "SUCCEEDED", "{job}");
    let part = &fake.calls()[0].body["contents"][0]["parts"][1]["inline_data"];
    assert_eq!(part["mime_type"], "image/png");
    assert_eq!(part["data"], b64(&png()));
    env.runner.shutdown().await;
}

#[tokio::test]
async fn an_upload_that_is_not_an_accepted_image_is_refused_at_submit() {
    let env = harness::start(None, true, false).await;
    let reference = env.upload(b"GIF89a\x01\x00\x01\x00".to_vec()).await;

    let (status, body) = env
        .post(
            "/v1/images:generate",
            json!({ "prompt": "a fox", "inputImageUrl": reference }),
        )
        .await;

    assert_eq!(status, 400);
    assert_eq!(body["error"]["code"], "UNSUPPORTED_IMAGE_TYPE");
}

#[tokio::test]
async fn an_upload_reference_with_nothing_uploaded_is_refused_at_submit() {
    let env = harness::start(None, true, false).await;
    let (_, ticket) = env.post("/v1/uploads", json!({})).await;

    let (status, body) = env
        .post(
            "/v1/images:generate",
            json!({ "prompt": "a fox", "inputImageUrl": ticket["inputImageUrl"] }),
        )
        .await;

    assert_eq!(status, 400);
    assert_eq!(body["error"]["code"], "INVALID_IMAGE_URL");
}

#[tokio::test]
async fn an_upload_url_cannot_be_replayed_with_a_forged_signature() {
    let env = harness::start(None, true, false).await;
    let (_, ticket) = env.post("/v1/uploads", json!({})).await;
    let url = ticket["uploadUrl"].as_str().expect("url");
    let forged = format!("{}0", url.trim_end_matches(|c: char| c.is_ascii_hexdigit()));

    let put = env.http.put(forged).body(png()).send().await.expect("put");

    assert_eq!(put.status().as_u16(), 403);
}

#[tokio::test]
async fn an_image_url_that_redirects_fails_the_job_as_invalid_input_without_calling_the_model() {
    let fake = FakeGemini::start().await;
    fake.always(Reply::ok(answer_with(vec![image_part(&png())])));
    let origin = origin().await;
    let env = harness::start(Some(gemini(&fake)), true, true).await;

    let id = env
        .submit(json!({ "prompt": "a fox", "inputImageUrl": format!("{origin}/redirect") }))
        .await;
    let job = env.settle(&id, Duration::from_secs(20)).await;

    assert_eq!(job["status"], "FAILED");
    assert_eq!(job["error"]["code"], "INVALID_INPUT");
    assert_eq!(job["attempts"], 1);
    assert!(fake.calls().is_empty());
    env.runner.shutdown().await;
}

#[tokio::test]
async fn an_image_host_that_answers_503_is_retried_under_its_own_code_without_calling_the_model() {
    let fake = FakeGemini::start().await;
    fake.always(Reply::ok(answer_with(vec![image_part(&png())])));
    let origin = origin().await;
    let env = harness::start(Some(gemini(&fake)), true, true).await;

    let id = env
        .submit(json!({ "prompt": "a fox", "inputImageUrl": format!("{origin}/busy") }))
        .await;
    let mut job = env.job(&id).await;
    for _ in 0..200 {
        if job["status"] == "RETRYING" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        job = env.job(&id).await;
    }

    assert_eq!(job["status"], "RETRYING", "{job}");
    assert_eq!(job["error"]["code"], "INPUT_IMAGE_UNAVAILABLE", "{job}");
    assert!(fake.calls().is_empty());
    env.runner.shutdown().await;
}

#[tokio::test]
async fn an_image_url_is_fetched_by_the_worker_and_sent_to_the_model() {
    let fake = FakeGemini::start().await;
    fake.always(Reply::ok(answer_with(vec![image_part(&png())])));
    let origin = origin().await;
    let env = harness::start(Some(gemini(&fake)), true, true).await;

    let id = env
        .submit(json!({ "prompt": "a fox", "inputImageUrl": format!("{origin}/ok.png") }))
        .await;
    let job = env.settle(&id, Duration::from_secs(20)).await;

    assert_eq!(job["status"], "SUCCEEDED", "{job}");
    let part = &fake.calls()[0].body["contents"][0]["parts"][1]["inline_data"];
    assert_eq!(part["data"], b64(&png()));
    env.runner.shutdown().await;
}
