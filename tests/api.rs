//! The HTTP contract: input validation, authentication, tenant isolation, listing,
//! idempotency and the usage ledger.

use imagegen_tests::{assert_error, TestApp};
use secrecy::ExposeSecret;
use serde_json::{json, Value};

async fn raw_post(app: &TestApp, key: &str, content_type: &str, body: Vec<u8>) -> (u16, Value) {
    let response = app
        .http
        .post(app.url("/v1/images:generate"))
        .bearer_auth(key)
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .expect("post");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn every_bad_submission_gets_a_400_family_error_with_a_stable_code() {
    let app = TestApp::spawn().await;
    let tenant = app.tenant().await;
    let json = "application/json";
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        (
            "malformed json",
            b"{\"prompt\": ".to_vec(),
            400,
            "INVALID_JSON",
        ),
        (
            "not an object",
            b"[\"a cat\"]".to_vec(),
            400,
            "INVALID_REQUEST",
        ),
        (
            "prompt is a number",
            br#"{"prompt": 5}"#.to_vec(),
            400,
            "INVALID_REQUEST",
        ),
        (
            "prompt missing",
            br#"{"mode": "draft"}"#.to_vec(),
            400,
            "INVALID_REQUEST",
        ),
        (
            "mode is a number",
            br#"{"prompt": "a", "mode": 1}"#.to_vec(),
            400,
            "INVALID_REQUEST",
        ),
        (
            "unknown field",
            br#"{"prompt": "a", "colour": "red"}"#.to_vec(),
            400,
            "INVALID_REQUEST",
        ),
        (
            "unknown mode",
            br#"{"prompt": "a", "mode": "poster"}"#.to_vec(),
            400,
            "INVALID_MODE",
        ),
        (
            "empty prompt",
            br#"{"prompt": ""}"#.to_vec(),
            400,
            "INVALID_PROMPT",
        ),
        (
            "blank prompt",
            br#"{"prompt": "   "}"#.to_vec(),
            400,
            "INVALID_PROMPT",
        ),
        (
            "control characters",
            br#"{"prompt": "a\u0000b"}"#.to_vec(),
            400,
            "INVALID_PROMPT",
        ),
        (
            "image url not a url",
            br#"{"prompt": "a", "inputImageUrl": "nope"}"#.to_vec(),
            400,
            "INVALID_IMAGE_URL",
        ),
        (
            "image url with credentials",
            br#"{"prompt": "a", "inputImageUrl": "https://u:p@example.com/a.png"}"#.to_vec(),
            400,
            "INVALID_IMAGE_URL",
        ),
    ];

    for (name, body, status, code) in cases {
        let (got, response) = raw_post(&app, &tenant.key, json, body).await;
        assert_eq!(got, status, "{name}: {response}");
        assert_error(got, &response, status, code);
    }
}

#[tokio::test]
async fn prompt_over_the_documented_limit_is_refused_and_at_the_limit_is_accepted() {
    let app = TestApp::spawn().await;
    let tenant = app.tenant().await;
    let at_limit = "p".repeat(imagegen::domain::PROMPT_MAX_CHARS);
    let over = "p".repeat(imagegen::domain::PROMPT_MAX_CHARS + 1);

    let (ok, _) = app.submit(&tenant, json!({ "prompt": at_limit })).await;
    let (status, body) = app.submit(&tenant, json!({ "prompt": over })).await;

    assert_eq!(ok, 202);
    assert_error(status, &body, 400, "INVALID_PROMPT");
}

#[tokio::test]
async fn body_over_one_mebibyte_is_413_and_wrong_content_type_is_415() {
    let app = TestApp::spawn().await;
    let tenant = app.tenant().await;
    let huge = format!("{{\"prompt\": \"{}\"}}", "x".repeat(1024 * 1024 + 10));

    let (status, body) = raw_post(&app, &tenant.key, "application/json", huge.into_bytes()).await;
    assert_error(status, &body, 413, "PAYLOAD_TOO_LARGE");

    let (status, body) = raw_post(
        &app,
        &tenant.key,
        "text/plain",
        br#"{"prompt": "a"}"#.to_vec(),
    )
    .await;
    assert_error(status, &body, 415, "UNSUPPORTED_MEDIA_TYPE");
}

#[tokio::test]
async fn every_bad_key_gets_the_same_401() {
    let app = TestApp::spawn().await;
    let _tenant = app.tenant().await;
    let url = app.url("/v1/jobs");
    let requests = vec![
        app.http.get(&url),
        app.http.get(&url).bearer_auth("igk_not_a_key"),
        app.http.get(&url).header("authorization", "Basic abc"),
        app.http.get(&url).header("x-api-key", "wrong"),
        app.http.get(&url).header("authorization", "Bearer "),
    ];

    let mut bodies = Vec::new();
    for request in requests {
        let response = request.send().await.expect("request");
        let status = response.status().as_u16();
        let body: Value = response.json().await.expect("json");
        assert_error(status, &body, 401, "UNAUTHORIZED");
        bodies.push(body);
    }
    assert!(
        bodies.windows(2).all(|pair| pair[0] == pair[1]),
        "401 bodies differ: {bodies:?}"
    );
}

#[tokio::test]
async fn x_api_key_header_authenticates_like_bearer() {
    let app = TestApp::spawn().await;
    let tenant = app.tenant().await;

    let response = app
        .http
        .get(app.url("/v1/jobs"))
        .header("x-api-key", &tenant.key)
        .send()
        .await
        .expect("list");

    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn a_tenant_never_sees_another_tenants_job() {
    let app = TestApp::spawn().await;
    let owner = app.tenant().await;
    let other = app.tenant().await;
    let (_, submitted) = app.submit(&owner, json!({ "prompt": "private" })).await;
    let job_id = submitted["jobId"].as_str().expect("job id");

    let (status, body) = app.get(&other, &format!("/v1/jobs/{job_id}")).await;
    let (own_status, _) = app.get(&owner, &format!("/v1/jobs/{job_id}")).await;
    let (_, listing) = app.get(&other, "/v1/jobs").await;

    assert_error(status, &body, 404, "NOT_FOUND");
    assert_eq!(own_status, 200);
    assert_eq!(listing["jobs"].as_array().map(Vec::len), Some(0));
}

#[tokio::test]
async fn unknown_and_malformed_job_ids_are_404() {
    let app = TestApp::spawn().await;
    let tenant = app.tenant().await;

    for id in ["job_01J0000000000000000000000A", "nonsense", "job_", "%20"] {
        let (status, body) = app.get(&tenant, &format!("/v1/jobs/{id}")).await;
        assert_error(status, &body, 404, "NOT_FOUND");
    }
}

#[tokio::test]
async fn listing_pages_through_every_job_once_newest_first() {
    let app = TestApp::spawn().await;
    let tenant = app.tenant().await;
    let mut submitted = Vec::new();
    for n in 0..5 {
        let (_, body) = app
            .submit(&tenant, json!({ "prompt": format!("p{n}") }))
            .await;
        submitted.push(body["jobId"].as_str().expect("id").to_owned());
    }

    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/jobs?limit=2&cursor={c}"),
            None => "/v1/jobs?limit=2".to_owned(),
        };
        let (status, page) = app.get(&tenant, &path).await;
        assert_eq!(status, 200, "{page}");
        for job in page["jobs"].as_array().expect("jobs") {
            seen.push(job["jobId"].as_str().expect("id").to_owned());
        }
        pages += 1;
        match page["nextCursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
        assert!(pages < 10, "cursor never ends");
    }

    submitted.reverse();
    assert_eq!(seen, submitted);
}

#[tokio::test]
async fn listing_filters_by_status_and_rejects_bad_parameters() {
    let app = TestApp::spawn().await;
    let tenant = app.tenant().await;
    let (_, body) = app.submit(&tenant, json!({ "prompt": "filtered" })).await;
    let job_id = body["jobId"].as_str().expect("id").to_owned();
    app.wait_terminal(&tenant, &job_id, std::time::Duration::from_secs(20))
        .await;

    let (_, done) = app.get(&tenant, "/v1/jobs?status=SUCCEEDED").await;
    let (_, failed) = app.get(&tenant, "/v1/jobs?status=FAILED").await;
    assert_eq!(done["jobs"][0]["jobId"], job_id.as_str());
    assert_eq!(failed["jobs"].as_array().map(Vec::len), Some(0));

    for query in [
        "status=DONE",
        "limit=0",
        "limit=101",
        "limit=ten",
        "cursor=forged.value",
    ] {
        let (status, body) = app.get(&tenant, &format!("/v1/jobs?{query}")).await;
        assert_eq!(status, 400, "{query}: {body}");
    }
}

#[tokio::test]
async fn a_cursor_cannot_be_used_by_another_tenant() {
    let app = TestApp::spawn().await;
    let owner = app.tenant().await;
    let other = app.tenant().await;
    for n in 0..3 {
        app.submit(&owner, json!({ "prompt": format!("c{n}") }))
            .await;
    }
    let (_, page) = app.get(&owner, "/v1/jobs?limit=1").await;
    let cursor = page["nextCursor"].as_str().expect("cursor").to_owned();

    let (status, body) = app
        .get(&other, &format!("/v1/jobs?limit=1&cursor={cursor}"))
        .await;

    assert_error(status, &body, 400, "INVALID_CURSOR");
}

#[tokio::test]
async fn same_idempotency_key_and_body_returns_the_same_job() {
    let app = TestApp::spawn().await;
    let tenant = app.tenant().await;
    let send = |body: Value| {
        app.http
            .post(app.url("/v1/images:generate"))
            .bearer_auth(&tenant.key)
            .header("idempotency-key", "order-42")
            .json(&body)
            .send()
    };

    let first: Value = send(json!({ "prompt": "same" }))
        .await
        .expect("1")
        .json()
        .await
        .expect("j");
    let again = send(json!({ "prompt": "same" })).await.expect("2");
    assert_eq!(again.status(), 202);
    let again: Value = again.json().await.expect("j");
    let different = send(json!({ "prompt": "different" })).await.expect("3");
    let status = different.status().as_u16();
    let different: Value = different.json().await.expect("j");

    assert_eq!(first["jobId"], again["jobId"]);
    assert_error(status, &different, 422, "IDEMPOTENCY_KEY_REUSED");
    let (_, usage) = app.get(&tenant, "/v1/usage").await;
    assert_eq!(
        usage["units"], 1,
        "a repeated request must not reserve a second unit"
    );
}

#[tokio::test]
async fn same_key_and_body_with_a_deadline_sent_a_second_later_returns_the_same_job() {
    let app = TestApp::spawn().await;
    let tenant = app.tenant().await;
    let body = json!({ "prompt": "same", "deadlineSeconds": 600 });
    let send = || {
        app.http
            .post(app.url("/v1/images:generate"))
            .bearer_auth(&tenant.key)
            .header("idempotency-key", "deadline-retry")
            .json(&body)
            .send()
    };

    let first = send().await.expect("first");
    let first_status = first.status();
    let first: Value = first.json().await.expect("json");
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let again = send().await.expect("again");
    let again_status = again.status();
    let again: Value = again.json().await.expect("json");

    assert_eq!(first_status, 202);
    assert_eq!(again_status, 202, "the retry was refused: {again}");
    assert_eq!(first["jobId"], again["jobId"]);
}

#[tokio::test]
async fn idempotency_keys_are_scoped_per_tenant() {
    let app = TestApp::spawn().await;
    let a = app.tenant().await;
    let b = app.tenant().await;
    let mut ids = Vec::new();

    for tenant in [&a, &b] {
        let response = app
            .http
            .post(app.url("/v1/images:generate"))
            .bearer_auth(&tenant.key)
            .header("idempotency-key", "shared-key")
            .json(&json!({ "prompt": "same" }))
            .send()
            .await
            .expect("submit");
        let body: Value = response.json().await.expect("json");
        ids.push(body["jobId"].clone());
    }

    assert_ne!(ids[0], ids[1]);
}

#[tokio::test]
async fn overlong_idempotency_key_is_refused() {
    let app = TestApp::spawn().await;
    let tenant = app.tenant().await;

    let response = app
        .http
        .post(app.url("/v1/images:generate"))
        .bearer_auth(&tenant.key)
        .header("idempotency-key", "k".repeat(256))
        .json(&json!({ "prompt": "a" }))
        .send()
        .await
        .expect("submit");
    let status = response.status().as_u16();
    let body: Value = response.json().await.expect("json");

    assert_error(status, &body, 400, "INVALID_IDEMPOTENCY_KEY");
}

#[tokio::test]
async fn daily_cap_refuses_with_its_own_code_and_a_retry_after() {
    let app = TestApp::spawn().await;
    let plan = json!({ "requestsPerMinute": 100, "dailyCap": 2, "maxConcurrency": 2 });
    let tenant = app.tenant_with(Some(plan)).await;

    for n in 0..2 {
        let (status, _) = app
            .submit(&tenant, json!({ "prompt": format!("n{n}") }))
            .await;
        assert_eq!(status, 202);
    }
    let response = app
        .http
        .post(app.url("/v1/images:generate"))
        .bearer_auth(&tenant.key)
        .json(&json!({ "prompt": "one too many" }))
        .send()
        .await
        .expect("submit");
    let retry_after = response.headers().get("retry-after").cloned();
    let status = response.status().as_u16();
    let body: Value = response.json().await.expect("json");

    assert_error(status, &body, 429, "DAILY_CAP_REACHED");
    assert!(retry_after.is_some(), "429 must say when to retry");
}

#[tokio::test]
async fn canceling_a_queued_job_returns_its_unit_once() {
    let dir = tempfile::tempdir().expect("dir");
    let mut config = imagegen_tests::config(dir.path().to_path_buf());
    config.workers = false;
    let app = TestApp::spawn_with(config).await;
    let tenant = app.tenant().await;
    let (_, body) = app.submit(&tenant, json!({ "prompt": "cancel me" })).await;
    let job_id = body["jobId"].as_str().expect("id").to_owned();
    let (_, before) = app.get(&tenant, "/v1/usage").await;

    let cancel = |id: String| {
        app.http
            .post(app.url(&format!("/v1/jobs/{id}:cancel")))
            .bearer_auth(&tenant.key)
            .send()
    };
    let first = cancel(job_id.clone()).await.expect("cancel");
    let second = cancel(job_id.clone()).await.expect("cancel again");
    let (_, after) = app.get(&tenant, "/v1/usage").await;
    let (_, job) = app.get(&tenant, &format!("/v1/jobs/{job_id}")).await;

    assert_eq!(first.status(), 202);
    assert_eq!(second.status(), 202, "canceling twice is harmless");
    assert_eq!(before["units"], 1);
    assert_eq!(after["units"], 0);
    assert_eq!(job["status"], "CANCELED");
}

#[tokio::test]
async fn canceling_a_finished_job_is_409() {
    let app = TestApp::spawn().await;
    let tenant = app.tenant().await;
    let (_, body) = app.submit(&tenant, json!({ "prompt": "done soon" })).await;
    let job_id = body["jobId"].as_str().expect("id").to_owned();
    app.wait_terminal(&tenant, &job_id, std::time::Duration::from_secs(20))
        .await;

    let response = app
        .http
        .post(app.url(&format!("/v1/jobs/{job_id}:cancel")))
        .bearer_auth(&tenant.key)
        .send()
        .await
        .expect("cancel");
    let status = response.status().as_u16();
    let body: Value = response.json().await.expect("json");

    assert_error(status, &body, 409, "JOB_NOT_CANCELABLE");
}

#[tokio::test]
async fn unknown_routes_and_methods_answer_json_errors() {
    let app = TestApp::spawn().await;
    let tenant = app.tenant().await;

    let (status, body) = app.get(&tenant, "/v1/nothing-here").await;
    assert_error(status, &body, 404, "NOT_FOUND");

    let response = app
        .http
        .delete(app.url("/v1/jobs"))
        .bearer_auth(&tenant.key)
        .send()
        .await
        .expect("delete");
    let status = response.status().as_u16();
    let body: Value = response.json().await.expect("json");
    assert_error(status, &body, 405, "METHOD_NOT_ALLOWED");
}

#[tokio::test]
async fn a_tenant_is_refused_for_an_unknown_plan_field_or_a_bad_name() {
    let app = TestApp::spawn().await;
    let create = |body: Value| {
        app.http
            .post(app.url("/v1/admin/tenants"))
            .bearer_auth(app.admin.expose_secret())
            .json(&body)
            .send()
    };
    let plan = json!({ "requestsPerMinute": 1, "dailyCap": 1, "maxConcurrency": 1 });
    let mut extra = plan.clone();
    extra["x"] = json!(1);
    let emoji = "\u{1F600}".repeat(51);

    let refused = [
        json!({ "name": "p", "plan": extra }),
        json!({ "name": "a\u{0}b" }),
        json!({ "name": "\u{1F600}".repeat(201) }),
    ];
    for body in refused {
        let response = create(body.clone()).await.expect("create");
        let status = response.status().as_u16();
        let answer: Value = response.json().await.expect("json");
        assert_error(status, &answer, 400, "INVALID_REQUEST");
    }
    let accepted = create(json!({ "name": emoji, "plan": plan }))
        .await
        .expect("create");

    assert_eq!(
        accepted.status().as_u16(),
        201,
        "51 characters (204 bytes) are within 200"
    );
}

#[tokio::test]
async fn an_empty_cursor_is_the_first_page() {
    let app = TestApp::spawn().await;
    let tenant = app.tenant().await;
    app.submit(&tenant, json!({ "prompt": "one" })).await;

    let (status, page) = app.get(&tenant, "/v1/jobs?cursor=").await;

    assert_eq!(status, 200, "{page}");
    assert_eq!(page["jobs"].as_array().map(Vec::len), Some(1), "{page}");
}

#[tokio::test]
async fn admin_routes_refuse_tenant_keys() {
    let app = TestApp::spawn().await;
    let tenant = app.tenant().await;

    let response = app
        .http
        .post(app.url("/v1/admin/tenants"))
        .bearer_auth(&tenant.key)
        .json(&json!({ "name": "sneaky" }))
        .send()
        .await
        .expect("admin");
    let status = response.status().as_u16();
    let body: Value = response.json().await.expect("json");

    assert_error(status, &body, 401, "UNAUTHORIZED");
}

#[tokio::test]
async fn deadline_outside_its_range_is_refused_and_a_valid_one_is_shown_on_the_job() {
    let app = TestApp::spawn().await;
    let tenant = app.tenant().await;

    for seconds in [-1, 0, 604_801] {
        let (status, body) = app
            .submit(
                &tenant,
                json!({ "prompt": "a", "deadlineSeconds": seconds }),
            )
            .await;
        assert_error(status, &body, 400, "INVALID_DEADLINE");
    }
    let (status, body) = app
        .submit(&tenant, json!({ "prompt": "a", "deadlineSeconds": 60 }))
        .await;
    let (_, job) = app
        .get(
            &tenant,
            &format!("/v1/jobs/{}", body["jobId"].as_str().expect("id")),
        )
        .await;

    assert_eq!(status, 202);
    let deadline = job["deadline"].as_str().expect("deadline shown");
    let deadline = chrono::DateTime::parse_from_rfc3339(deadline).expect("rfc3339");
    let ahead = deadline.with_timezone(&chrono::Utc) - chrono::Utc::now();
    assert!(ahead > chrono::Duration::seconds(50) && ahead <= chrono::Duration::seconds(60));
}

#[tokio::test]
async fn wrong_method_on_a_job_says_which_methods_are_allowed() {
    let app = TestApp::spawn().await;
    let tenant = app.tenant().await;
    let (_, body) = app.submit(&tenant, json!({ "prompt": "a" })).await;
    let id = body["jobId"].as_str().expect("id");

    let on_job = app
        .http
        .delete(app.url(&format!("/v1/jobs/{id}")))
        .bearer_auth(&tenant.key);
    let on_cancel = app
        .http
        .get(app.url(&format!("/v1/jobs/{id}:cancel")))
        .bearer_auth(&tenant.key);
    let unknown_action = app
        .http
        .post(app.url(&format!("/v1/jobs/{id}:explode")))
        .bearer_auth(&tenant.key);

    let response = on_job.send().await.expect("delete");
    assert_eq!(response.status(), 405);
    assert_eq!(response.headers()["allow"], "GET, HEAD");
    let response = on_cancel.send().await.expect("get cancel");
    assert_eq!(response.status(), 405);
    assert_eq!(response.headers()["allow"], "POST");
    assert_eq!(unknown_action.send().await.expect("post").status(), 404);
}

#[tokio::test]
async fn usage_can_be_read_for_a_given_day() {
    let app = TestApp::spawn().await;
    let tenant = app.tenant().await;
    app.submit(&tenant, json!({ "prompt": "counted" })).await;
    let today = chrono::Utc::now().date_naive();

    let (_, usage_today) = app.get(&tenant, &format!("/v1/usage?day={today}")).await;
    let (_, long_ago) = app.get(&tenant, "/v1/usage?day=2020-01-01").await;
    let (status, bad) = app.get(&tenant, "/v1/usage?day=yesterday").await;

    assert_eq!(usage_today["units"], 1);
    assert_eq!(long_ago["units"], 0);
    assert_error(status, &bad, 400, "INVALID_REQUEST");
}

#[tokio::test]
async fn submissions_over_the_plans_requests_per_minute_get_429_with_retry_after() {
    let app = TestApp::spawn().await;
    let plan = json!({ "requestsPerMinute": 2, "dailyCap": 100, "maxConcurrency": 2 });
    let tenant = app.tenant_with(Some(plan)).await;
    let other = app
        .tenant_with(Some(
            json!({ "requestsPerMinute": 2, "dailyCap": 100, "maxConcurrency": 2 }),
        ))
        .await;

    for n in 0..2 {
        let (status, _) = app
            .submit(&tenant, json!({ "prompt": format!("r{n}") }))
            .await;
        assert_eq!(status, 202);
    }
    let response = app
        .http
        .post(app.url("/v1/images:generate"))
        .bearer_auth(&tenant.key)
        .json(&json!({ "prompt": "third" }))
        .send()
        .await
        .expect("submit");
    let retry_after: u64 = response.headers()["retry-after"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("seconds");
    let status = response.status().as_u16();
    let body: Value = response.json().await.expect("json");
    let (other_status, _) = app.submit(&other, json!({ "prompt": "unaffected" })).await;
    let (_, usage) = app.get(&tenant, "/v1/usage").await;

    assert_error(status, &body, 429, "RATE_LIMITED");
    assert!((1..=61).contains(&retry_after), "Retry-After {retry_after}");
    assert_eq!(other_status, 202);
    assert_eq!(usage["units"], 2, "a refused submission reserves nothing");
}

#[tokio::test]
async fn a_local_runner_refuses_loopback_webhooks_unless_told_to_allow_them() {
    let dir = tempfile::tempdir().expect("dir");
    let config = imagegen_local::LocalConfig::new(
        dir.path().to_path_buf(),
        secrecy::SecretString::from("test-admin-token".to_owned()),
    );
    let app = TestApp::spawn_with(config).await;
    let tenant = app.tenant().await;

    let response = app
        .http
        .put(app.url("/v1/webhook"))
        .bearer_auth(&tenant.key)
        .json(&json!({ "url": "http://127.0.0.1:9/hooks" }))
        .send()
        .await
        .expect("put webhook");
    let status = response.status().as_u16();
    let body: Value = response.json().await.expect("json");

    assert_error(status, &body, 400, "INVALID_WEBHOOK_URL");
    app.shutdown().await;
}
