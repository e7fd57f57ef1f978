//! The Gemini client against a fake upstream that answers in the documented wire format.
//!
//! Run with `cargo test -p imagegen-tests --test gemini_upstream`.

mod fake_gemini;

use std::time::Duration;

use bytes::Bytes;
use fake_gemini::*;
use imagegen::domain::{ErrorCode, FailureClass, JobId, Mode};
use imagegen::ports::{
    Generation, GenerationRequest, InputImage, KeyOutcome, Provider, ProviderError,
};
use imagegen::provider::{GeminiProvider, GeminiSettings};
use secrecy::SecretString;
use serde_json::json;

fn provider(fake: &FakeGemini, timeout: Duration) -> GeminiProvider {
    let base = url::Url::parse(&fake.base_url).expect("base url");
    let mut settings = GeminiSettings::new(base, Some(SecretString::from("fallback-key")));
    settings.timeout = timeout;
    GeminiProvider::new(settings).expect("provider")
}

fn request(mode: Mode) -> GenerationRequest {
    GenerationRequest {
        job_id: JobId::generate(),
        prompt: "a banana wearing a tuxedo".into(),
        mode,
        input_image: None,
    }
}

async fn call(reply: Reply) -> Result<Generation, ProviderError> {
    let fake = FakeGemini::start().await;
    fake.then(reply);
    provider(&fake, Duration::from_secs(5))
        .generate(&request(Mode::Draft), None)
        .await
}

async fn failure(reply: Reply) -> ProviderError {
    match call(reply).await {
        Ok(_) => panic!("expected a failure"),
        Err(e) => e,
    }
}

#[tokio::test]
async fn draft_call_sends_the_documented_request_with_the_key_header() {
    let fake = FakeGemini::start().await;
    fake.then(Reply::ok(answer_with(vec![image_part(&png())])));
    let key = SecretString::from("pool-key-1");

    let result = provider(&fake, Duration::from_secs(5))
        .generate(&request(Mode::Draft), Some(&key))
        .await;

    assert!(result.is_ok());
    let calls = fake.calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(
        calls[0].model_action,
        "gemini-2.5-flash-image:generateContent"
    );
    assert_eq!(calls[0].api_key.as_deref(), Some("pool-key-1"));
    let body = &calls[0].body;
    assert_eq!(
        body["contents"][0]["parts"][0]["text"],
        "a banana wearing a tuxedo"
    );
    assert_eq!(
        body["generationConfig"]["responseModalities"],
        json!(["TEXT", "IMAGE"])
    );
    assert_eq!(
        body["generationConfig"]["imageConfig"]["aspectRatio"],
        "1:1"
    );
    assert!(body["generationConfig"]["imageConfig"]
        .get("imageSize")
        .is_none());
}

#[tokio::test]
async fn final_mode_uses_the_final_model_and_image_size_and_the_configured_key() {
    let fake = FakeGemini::start().await;
    fake.then(Reply::ok(answer_with(vec![image_part(&png())])));

    let result = provider(&fake, Duration::from_secs(5))
        .generate(&request(Mode::Final), None)
        .await;

    assert!(result.is_ok());
    let calls = fake.calls();
    assert_eq!(
        calls[0].model_action,
        "gemini-3-pro-image-preview:generateContent"
    );
    assert_eq!(calls[0].api_key.as_deref(), Some("fallback-key"));
    assert_eq!(
        calls[0].body["generationConfig"]["imageConfig"]["imageSize"],
        "2K"
    );
}

#[tokio::test]
async fn a_reference_image_travels_as_inline_data_with_its_type() {
    let fake = FakeGemini::start().await;
    fake.then(Reply::ok(answer_with(vec![image_part(&png())])));
    let mut request = request(Mode::Draft);
    let reference = png();
    request.input_image = Some(InputImage {
        bytes: Bytes::from(reference.clone()),
        mime_type: "image/png".into(),
    });

    let result = provider(&fake, Duration::from_secs(5))
        .generate(&request, None)
        .await;

    assert!(result.is_ok());
    let part = &fake.calls()[0].body["contents"][0]["parts"][1]["inline_data"];
    assert_eq!(part["mime_type"], "image/png");
    assert_eq!(part["data"], b64(&reference));
}

#[tokio::test]
async fn an_image_alone_is_decoded_checked_and_reported_with_usage_and_model() {
    let image = png();

    let generation = call(Reply::ok(answer_with(vec![image_part(&image)])))
        .await
        .expect("success");

    assert_eq!(generation.images.len(), 1);
    assert_eq!(generation.images[0].bytes.as_ref(), image.as_slice());
    assert_eq!(generation.images[0].mime_type, "image/png");
    assert_eq!(generation.provider, "gemini");
    assert_eq!(generation.model, "gemini-2.5-flash-image");
    assert_eq!(
        generation
            .usage
            .as_ref()
            .map(|u| u["totalTokenCount"].clone()),
        Some(json!(1302))
    );
}

#[tokio::test]
async fn leading_text_and_thought_parts_do_not_hide_the_image() {
    let parts = vec![
        json!({ "text": "Thinking about the composition", "thought": true }),
        json!({ "text": "Here is your banana in a tuxedo." }),
        image_part(&png()),
    ];

    let generation = call(Reply::ok(answer_with(parts))).await.expect("success");

    assert_eq!(generation.images.len(), 1);
}

#[tokio::test]
async fn snake_case_inline_data_and_several_images_are_all_taken() {
    let parts = vec![
        json!({ "inline_data": { "mime_type": "image/png", "data": b64(&png()) } }),
        json!({ "text": "and another" }),
        image_part(&png()),
    ];

    let generation = call(Reply::ok(answer_with(parts))).await.expect("success");

    assert_eq!(generation.images.len(), 2);
}

#[tokio::test]
async fn image_data_that_is_not_an_image_is_not_a_success() {
    let parts = vec![json!({ "inlineData": { "mimeType": "image/png", "data": b64(b"<html>") } })];

    let error = failure(Reply::ok(answer_with(parts))).await;

    assert_eq!(error.error.code, ErrorCode::NoImage);
}

#[tokio::test]
async fn every_safety_finish_reason_ends_the_job_without_blaming_the_key() {
    let reasons = [
        "SAFETY",
        "PROHIBITED_CONTENT",
        "BLOCKLIST",
        "SPII",
        "RECITATION",
        "IMAGE_SAFETY",
        "IMAGE_PROHIBITED_CONTENT",
        "IMAGE_RECITATION",
        "IMAGE_OTHER",
    ];

    for reason in reasons {
        let error = failure(Reply::ok(finished_without_image(reason))).await;

        assert_eq!(error.error.code, ErrorCode::ContentRefused, "{reason}");
        assert_eq!(error.error.class(), FailureClass::Final, "{reason}");
        assert_eq!(error.key_outcome, KeyOutcome::Neutral, "{reason}");
        assert!(error.error.message.contains(reason), "{reason}");
    }
}

#[tokio::test]
async fn no_image_other_and_a_text_only_stop_are_retryable_no_image() {
    let text_only = answer_with(vec![json!({ "text": "I can only describe it." })]);
    let replies = [
        finished_without_image("NO_IMAGE"),
        finished_without_image("OTHER"),
        finished_without_image("MAX_TOKENS"),
        text_only,
    ];

    for body in replies {
        let error = failure(Reply::ok(body.clone())).await;

        assert_eq!(error.error.code, ErrorCode::NoImage, "{body}");
        assert_eq!(error.error.class(), FailureClass::Retryable);
        assert_eq!(error.key_outcome, KeyOutcome::Neutral);
    }
}

#[tokio::test]
async fn a_blocked_prompt_is_refused_content_whatever_the_reason() {
    for reason in [
        "SAFETY",
        "OTHER",
        "BLOCKLIST",
        "PROHIBITED_CONTENT",
        "IMAGE_SAFETY",
    ] {
        let error = failure(Reply::ok(prompt_blocked(reason))).await;

        assert_eq!(error.error.code, ErrorCode::ContentRefused, "{reason}");
        assert_eq!(error.key_outcome, KeyOutcome::Neutral);
    }
}

#[tokio::test]
async fn per_minute_429_throttles_the_key_and_carries_the_retry_hint() {
    let body = error_body(
        429,
        "RESOURCE_EXHAUSTED",
        "You exceeded your current quota, please check your plan and billing details.",
        vec![
            quota_failure(
                "GenerateRequestsPerMinutePerProjectPerModel-FreeTier",
                "generativelanguage.googleapis.com/generate_content_free_tier_requests",
            ),
            help_link(),
            retry_info("17s"),
        ],
    );

    let error = failure(Reply::status(429, body)).await;

    assert_eq!(error.error.code, ErrorCode::UpstreamRateLimited);
    assert_eq!(error.error.class(), FailureClass::Retryable);
    assert_eq!(
        error.key_outcome,
        KeyOutcome::Throttled {
            retry_after: Some(Duration::from_secs(17))
        }
    );
    assert_eq!(error.retry_after, Some(Duration::from_secs(17)));
}

#[tokio::test]
async fn per_day_429_rests_the_key_until_the_quota_resets_but_not_the_job() {
    let body = error_body(
        429,
        "RESOURCE_EXHAUSTED",
        "You exceeded your current quota.",
        vec![quota_failure(
            "GenerateRequestsPerDayPerProjectPerModel-FreeTier",
            "generativelanguage.googleapis.com/generate_content_free_tier_requests",
        )],
    );

    let error = failure(Reply::status(429, body)).await;

    assert_eq!(error.error.code, ErrorCode::UpstreamRateLimited);
    assert_eq!(error.retry_after, None);
    match error.key_outcome {
        KeyOutcome::QuotaExhausted {
            resets_at: Some(at),
        } => {
            let rest = at - chrono::Utc::now();
            assert!(rest > chrono::Duration::zero() && rest <= chrono::Duration::hours(24));
        }
        other => panic!("expected QuotaExhausted, got {other:?}"),
    }
}

/// The next 08:00 UTC (midnight Pacific standard time), when per-day quotas reset.
fn next_daily_reset(now: chrono::DateTime<chrono::Utc>) -> chrono::DateTime<chrono::Utc> {
    let today = now
        .date_naive()
        .and_hms_opt(8, 0, 0)
        .expect("08:00")
        .and_utc();
    if today > now {
        today
    } else {
        today + chrono::Duration::days(1)
    }
}

#[tokio::test]
async fn per_day_429_with_a_short_retry_delay_rests_the_key_until_the_daily_reset() {
    let body = error_body(
        429,
        "RESOURCE_EXHAUSTED",
        "You exceeded your current quota, please check your plan and billing details. For more \
         information on this error, head to: https://ai.google.dev/gemini-api/docs/rate-limits.\n\
         * Quota exceeded for metric: generativelanguage.googleapis.com/generate_content_free_tier_requests, \
         limit: 100, model: gemini-2.5-flash-image",
        vec![
            quota_failure(
                "GenerateRequestsPerDayPerProjectPerModel-FreeTier",
                "generativelanguage.googleapis.com/generate_content_free_tier_requests",
            ),
            help_link(),
            retry_info("43s"),
        ],
    );
    let before = chrono::Utc::now();

    let error = failure(Reply::status(429, body)).await;

    let want = next_daily_reset(before).max(before + chrono::Duration::seconds(43));
    assert_eq!(error.error.code, ErrorCode::UpstreamRateLimited);
    assert_eq!(
        error.retry_after, None,
        "the job may try another key at once"
    );
    match error.key_outcome {
        KeyOutcome::QuotaExhausted {
            resets_at: Some(at),
        } => {
            let off = (at - want).num_seconds().abs();
            assert!(off <= 5, "key rests until {at}, want about {want}");
        }
        other => panic!("expected QuotaExhausted, got {other:?}"),
    }
}

#[tokio::test]
async fn a_429_without_details_uses_the_retry_after_header() {
    let reply = Reply::Json {
        status: 429,
        body: error_body(
            429,
            "RESOURCE_EXHAUSTED",
            "Resource has been exhausted",
            vec![],
        ),
        headers: vec![("retry-after", "9".into())],
    };

    let error = failure(reply).await;

    assert_eq!(
        error.key_outcome,
        KeyOutcome::Throttled {
            retry_after: Some(Duration::from_secs(9))
        }
    );
}

#[tokio::test]
async fn an_invalid_key_400_disables_the_key_and_lets_the_job_try_another() {
    let body = error_body(
        400,
        "INVALID_ARGUMENT",
        "API key not valid. Please pass a valid API key.",
        vec![error_info("API_KEY_INVALID")],
    );

    let error = failure(Reply::status(400, body)).await;

    assert_eq!(error.key_outcome, KeyOutcome::Invalid);
    assert_eq!(error.error.code, ErrorCode::UpstreamKeyRejected);
    assert_eq!(error.error.class(), FailureClass::Retryable);
}

#[tokio::test]
async fn a_revoked_key_403_disables_the_key() {
    let body = error_body(
        403,
        "PERMISSION_DENIED",
        "Your API key was reported as leaked. Please use another API key.",
        vec![],
    );

    let error = failure(Reply::status(403, body)).await;

    assert_eq!(error.key_outcome, KeyOutcome::Invalid);
}

#[tokio::test]
async fn a_403_naming_an_api_key_reason_disables_the_key() {
    for reason in ["API_KEY_SERVICE_BLOCKED", "API_KEY_HTTP_REFERRER_BLOCKED"] {
        let body = error_body(
            403,
            "PERMISSION_DENIED",
            "Requests to this API generativelanguage.googleapis.com method \
             google.ai.generativelanguage.v1beta.GenerativeService.GenerateContent are blocked.",
            vec![error_info(reason)],
        );

        let error = failure(Reply::status(403, body)).await;

        assert_eq!(error.key_outcome, KeyOutcome::Invalid, "{reason}");
        assert_eq!(error.error.code, ErrorCode::UpstreamKeyRejected, "{reason}");
    }
}

#[tokio::test]
async fn a_permission_denied_403_about_the_request_is_final_and_leaves_the_key_alone() {
    let body = error_body(
        403,
        "PERMISSION_DENIED",
        "The caller does not have permission",
        vec![],
    );

    let error = failure(Reply::status(403, body)).await;

    assert_eq!(error.key_outcome, KeyOutcome::Neutral);
    assert_eq!(error.error.code, ErrorCode::UpstreamError);
    assert_eq!(error.error.class(), FailureClass::Final);
    assert!(error.error.message.contains("does not have permission"));
}

#[tokio::test]
async fn other_400s_and_404s_are_final_for_the_job_and_neutral_for_the_key() {
    let bad = error_body(
        400,
        "INVALID_ARGUMENT",
        "Unable to process input image. Please retry or report in https://developers.generativeai.google/guide/troubleshooting",
        vec![],
    );
    let missing = error_body(
        404,
        "NOT_FOUND",
        "models/gemini-9-image is not found for API version v1beta",
        vec![],
    );

    let bad = failure(Reply::status(400, bad)).await;
    let missing = failure(Reply::status(404, missing)).await;

    assert_eq!(bad.error.code, ErrorCode::InvalidInput);
    assert_eq!(bad.error.class(), FailureClass::Final);
    assert!(bad.error.message.contains("Unable to process input image"));
    assert_eq!(bad.key_outcome, KeyOutcome::Neutral);
    assert_eq!(missing.error.code, ErrorCode::UpstreamError);
    assert_eq!(missing.error.class(), FailureClass::Final);
}

#[tokio::test]
async fn server_errors_are_retryable_and_keep_the_upstream_hint() {
    let cases = [
        (500, "INTERNAL", ErrorCode::UpstreamUnavailable),
        (503, "UNAVAILABLE", ErrorCode::UpstreamUnavailable),
        (504, "DEADLINE_EXCEEDED", ErrorCode::UpstreamTimeout),
    ];

    for (status, name, code) in cases {
        let body = error_body(
            status,
            name,
            "The model is overloaded. Please try again later.",
            vec![retry_info("2.5s")],
        );

        let error = failure(Reply::status(status, body)).await;

        assert_eq!(error.error.code, code, "{status}");
        assert_eq!(error.error.class(), FailureClass::Retryable, "{status}");
        assert_eq!(error.retry_after, Some(Duration::from_millis(2500)));
    }
}

#[tokio::test]
async fn a_slow_upstream_times_out_as_a_retryable_failure() {
    let fake = FakeGemini::start().await;
    fake.then(Reply::Slow(
        Duration::from_secs(3),
        Box::new(Reply::ok(answer_with(vec![image_part(&png())]))),
    ));

    let error = provider(&fake, Duration::from_millis(500))
        .generate(&request(Mode::Draft), None)
        .await
        .expect_err("timeout");

    assert_eq!(error.error.code, ErrorCode::UpstreamTimeout);
    assert_eq!(error.error.class(), FailureClass::Retryable);
}

#[tokio::test]
async fn a_truncated_answer_is_retryable_never_a_success() {
    let body = answer_with(vec![image_part(&png())]);

    let error = failure(Reply::Truncated { body, keep: 60 }).await;

    assert_eq!(error.error.code, ErrorCode::UpstreamUnavailable);
    assert_eq!(error.error.class(), FailureClass::Retryable);
}
