//! Draft and final modes through the API: which model each uses, what the job records about
//! the call, how upstream refusals end jobs, and `POST /v1/jobs/{jobId}:finalize`.
//!
//! Run with `cargo test -p imagegen-tests --test drafts_and_finals`.

mod fake_gemini;
mod harness;

use std::sync::Arc;
use std::time::Duration;

use fake_gemini::*;
use imagegen::provider::{GeminiProvider, GeminiSettings};
use serde_json::json;

fn gemini(fake: &FakeGemini) -> Arc<GeminiProvider> {
    let base = url::Url::parse(&fake.base_url).expect("url");
    let settings = GeminiSettings::new(base, Some(secrecy::SecretString::from("k")));
    Arc::new(GeminiProvider::new(settings).expect("provider"))
}

#[tokio::test]
async fn a_gemini_job_records_provider_model_latency_and_usage() {
    let fake = FakeGemini::start().await;
    fake.always(Reply::ok(answer_with(vec![
        json!({ "text": "Here it is." }),
        image_part(&png()),
    ])));
    let env = harness::start(Some(gemini(&fake)), true, true).await;

    let id = env.submit(json!({ "prompt": "a red fox" })).await;
    let job = env.settle(&id, Duration::from_secs(20)).await;

    assert_eq!(job["status"], "SUCCEEDED", "{job}");
    assert_eq!(job["provider"]["provider"], "gemini");
    assert_eq!(job["provider"]["model"], "gemini-2.5-flash-image");
    assert!(job["provider"]["latencyMs"].is_u64());
    assert_eq!(job["provider"]["usage"]["totalTokenCount"], 1302);
    let image = env
        .http
        .get(job["resultUrls"][0].as_str().expect("url"))
        .send()
        .await
        .expect("download")
        .bytes()
        .await
        .expect("bytes");
    assert_eq!(image.as_ref(), png().as_slice());
    env.runner.shutdown().await;
}

#[tokio::test]
async fn a_safety_refusal_fails_the_job_on_its_first_attempt() {
    let fake = FakeGemini::start().await;
    fake.always(Reply::ok(finished_without_image("IMAGE_SAFETY")));
    let env = harness::start(Some(gemini(&fake)), true, true).await;

    let id = env.submit(json!({ "prompt": "something refused" })).await;
    let job = env.settle(&id, Duration::from_secs(20)).await;

    assert_eq!(job["status"], "FAILED");
    assert_eq!(job["error"]["code"], "CONTENT_REFUSED");
    assert_eq!(job["attempts"], 1);
    assert_eq!(fake.calls().len(), 1);
    env.runner.shutdown().await;
}

#[tokio::test]
async fn an_answer_without_an_image_is_retried_once_then_fails() {
    let fake = FakeGemini::start().await;
    fake.always(Reply::ok(finished_without_image("NO_IMAGE")));
    let env = harness::start(Some(gemini(&fake)), true, true).await;

    let id = env.submit(json!({ "prompt": "an empty canvas" })).await;
    let job = env.settle(&id, Duration::from_secs(30)).await;

    assert_eq!(job["status"], "FAILED");
    assert_eq!(job["error"]["code"], "NO_IMAGE");
    assert_eq!(job["attempts"], 2);
    assert_eq!(fake.calls().len(), 2);
    env.runner.shutdown().await;
}

#[tokio::test]
async fn an_overloaded_upstream_is_retried_and_the_job_succeeds() {
    let fake = FakeGemini::start().await;
    fake.then(Reply::status(
        503,
        error_body(503, "UNAVAILABLE", "The model is overloaded.", vec![]),
    ));
    fake.always(Reply::ok(answer_with(vec![image_part(&png())])));
    let env = harness::start(Some(gemini(&fake)), true, true).await;

    let id = env.submit(json!({ "prompt": "a red fox" })).await;
    let job = env.settle(&id, Duration::from_secs(30)).await;

    assert_eq!(job["status"], "SUCCEEDED", "{job}");
    assert_eq!(job["attempts"], 2);
    env.runner.shutdown().await;
}

#[tokio::test]
async fn finalizing_a_succeeded_draft_makes_one_final_job_with_the_same_prompt() {
    let fake = FakeGemini::start().await;
    fake.always(Reply::ok(answer_with(vec![image_part(&png())])));
    let env = harness::start(Some(gemini(&fake)), true, true).await;
    let reference = env.upload(png()).await;
    let draft = env
        .submit(json!({ "prompt": "a lighthouse", "mode": "draft", "inputImageUrl": reference }))
        .await;
    env.settle(&draft, Duration::from_secs(20)).await;

    let (first_status, first) = env.action(&format!("/v1/jobs/{draft}:finalize")).await;
    let (second_status, second) = env.action(&format!("/v1/jobs/{draft}:finalize")).await;

    assert_eq!(first_status, 202, "{first}");
    assert_eq!(second_status, 200, "{second}");
    assert_eq!(first["jobId"], second["jobId"]);
    assert_eq!(first["mode"], "final");
    let final_id = first["jobId"].as_str().expect("final id").to_owned();
    assert_ne!(final_id, draft);
    let done = env.settle(&final_id, Duration::from_secs(20)).await;
    assert_eq!(done["status"], "SUCCEEDED", "{done}");
    assert_eq!(done["mode"], "final");
    let calls = fake.calls();
    assert_eq!(calls.len(), 2);
    assert_eq!(
        calls[1].model_action,
        "gemini-3-pro-image-preview:generateContent"
    );
    assert_eq!(
        calls[1].body["contents"][0]["parts"][0]["text"],
        "a lighthouse"
    );
    let image = &calls[1].body["contents"][0]["parts"][1]["inline_data"];
    assert_eq!(
        image["mime_type"], "image/png",
        "the final job has the draft's image"
    );
    assert_eq!(image["data"], b64(&png()));
    assert_eq!(
        calls[0].body["contents"][0]["parts"][1],
        calls[1].body["contents"][0]["parts"][1]
    );
    env.runner.shutdown().await;
}

#[tokio::test]
async fn only_a_succeeded_draft_can_be_finalized() {
    let env = harness::start(None, true, false).await;
    let queued = env.submit(json!({ "prompt": "a lighthouse" })).await;
    let final_job = env
        .submit(json!({ "prompt": "a lighthouse", "mode": "final" }))
        .await;

    let (queued_status, queued_body) = env.action(&format!("/v1/jobs/{queued}:finalize")).await;
    let (final_status, final_body) = env.action(&format!("/v1/jobs/{final_job}:finalize")).await;
    let (missing_status, _) = env
        .action("/v1/jobs/job_01ARZ3NDEKTSV4RRFFQ69G5FAV:finalize")
        .await;

    assert_eq!(queued_status, 409);
    assert_eq!(queued_body["error"]["code"], "JOB_NOT_FINALIZABLE");
    assert_eq!(final_status, 409);
    assert_eq!(final_body["error"]["code"], "JOB_NOT_FINALIZABLE");
    assert_eq!(missing_status, 404);
}

#[tokio::test]
async fn a_draft_from_another_tenant_cannot_be_finalized() {
    let env = harness::start(None, true, true).await;
    let draft = env.submit(json!({ "prompt": "a lighthouse" })).await;
    env.settle(&draft, Duration::from_secs(20)).await;
    let other: serde_json::Value = env
        .http
        .post(format!("{}/v1/admin/tenants", env.base))
        .bearer_auth("test-admin-token")
        .json(&json!({ "name": "other" }))
        .send()
        .await
        .expect("tenant")
        .json()
        .await
        .expect("json");

    let response = env
        .http
        .post(format!("{}/v1/jobs/{draft}:finalize", env.base))
        .bearer_auth(other["apiKey"].as_str().expect("key"))
        .send()
        .await
        .expect("finalize");

    assert_eq!(response.status().as_u16(), 404);
    env.runner.shutdown().await;
}
