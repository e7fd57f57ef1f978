//! The `make demo` scenario through the Lambda handlers on the AWS adapters (moto's server):
//! API Gateway v2 events go through `lambda_http`'s adapter into the shared router, real SQS
//! batches go to the generate and webhook handlers, the PNG is fetched through its presigned
//! S3 URL and the webhook is verified with the `standardwebhooks` crate. The limiter is the
//! Redis one, on a throwaway `redis-server`, as in a deployment. The AWS calls each step makes
//! are counted and printed (recorded in `docs/benchmarks.md`).
//!
//! Run with `cargo test -p imagegen-aws-tests --test lambda_e2e -- --nocapture`.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use aws_lambda_events::event::sqs::{SqsEvent, SqsMessage};
use aws_sdk_sqs::types::MessageSystemAttributeName;
use axum::body::Bytes;
use axum::http::HeaderMap;
use base64::Engine;
use lambda_http::request::LambdaRequest;
use lambda_http::{Adapter, Context, LambdaEvent};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tower::ServiceExt;

use imagegen::aws::RedisTarget;
use imagegen::domain::JobId;
use imagegen::limiter::redis_server::LocalRedisServer;
use imagegen::limiter::RedisSettings;
use imagegen::ports::{JobStore, QueueName};
use imagegen::store::dynamo::DynamoStore;
use imagegen_aws_tests::{CallCounter, Stack};

/// An API Gateway HTTP API (payload 2.0) event, shaped like `events/submit.json`.
fn http_event(
    method: &str,
    path: &str,
    query: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> Value {
    let mut event: Value = serde_json::from_str(include_str!("../../events/submit.json"))
        .unwrap_or_else(|e| panic!("events/submit.json: {e}"));
    let mut header_map = serde_json::Map::new();
    for (name, value) in headers {
        header_map.insert((*name).to_owned(), json!(value));
    }
    event["rawPath"] = json!(path);
    event["rawQueryString"] = json!(query);
    event["headers"] = Value::Object(header_map);
    event["requestContext"]["http"]["method"] = json!(method);
    event["requestContext"]["http"]["path"] = json!(path);
    event["routeKey"] = json!(format!("{method} /v1/{{proxy+}}"));
    event["requestContext"]["routeKey"] = event["routeKey"].clone();
    event["pathParameters"] = json!({ "proxy": path.trim_start_matches("/v1/") });
    event["queryStringParameters"] = if query.is_empty() {
        Value::Null
    } else {
        let pairs: serde_json::Map<String, Value> = query
            .split('&')
            .filter_map(|p| p.split_once('='))
            .map(|(k, v)| (k.to_owned(), json!(v)))
            .collect();
        Value::Object(pairs)
    };
    match body {
        Some(body) => {
            event["body"] = json!(body);
            event["isBase64Encoded"] = json!(false);
        }
        None => {
            event["body"] = Value::Null;
            event["isBase64Encoded"] = json!(false);
        }
    }
    event
}

/// What API Gateway would send back to the client.
struct HttpReply {
    status: u16,
    headers: Value,
    body: Value,
}

/// Invoke the HTTP function the way `lambda_http::run` does, on a raw event.
async fn invoke(router: &axum::Router, event: Value) -> HttpReply {
    let request: LambdaRequest =
        serde_json::from_value(event).unwrap_or_else(|e| panic!("not an API Gateway event: {e}"));
    let response = Adapter::from(router.clone())
        .oneshot(LambdaEvent::new(request, Context::default()))
        .await
        .unwrap_or_else(|e: std::convert::Infallible| match e {});
    let reply = serde_json::to_value(&response).unwrap_or_else(|e| panic!("{e}"));
    let raw_body = reply["body"].as_str().unwrap_or_default();
    let text = if reply["isBase64Encoded"].as_bool().unwrap_or(false) {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(raw_body)
            .unwrap_or_default();
        String::from_utf8_lossy(&bytes).into_owned()
    } else {
        raw_body.to_owned()
    };
    HttpReply {
        status: reply["statusCode"].as_u64().unwrap_or_default() as u16,
        headers: reply["headers"].clone(),
        body: serde_json::from_str(&text).unwrap_or(Value::String(text)),
    }
}

/// A webhook receiver on a free loopback port.
async fn hook_receiver() -> (String, mpsc::UnboundedReceiver<(HeaderMap, Bytes)>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let url = format!(
        "http://{}/hooks",
        listener.local_addr().unwrap_or_else(|e| panic!("{e}"))
    );
    let (tx, rx) = mpsc::unbounded_channel();
    let app = axum::Router::new().route(
        "/hooks",
        axum::routing::post(move |headers: HeaderMap, body: Bytes| {
            let tx = tx.clone();
            async move {
                let _ = tx.send((headers, body));
                axum::http::StatusCode::NO_CONTENT
            }
        }),
    );
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (url, rx)
}

/// Receive a batch from SQS as Lambda's event source mapping would, hand it to `handle`, and
/// delete what the partial batch response does not name. Returns how many messages came.
/// `sqs` is a client whose calls are not counted: Lambda makes these, not our code.
async fn drive_queue<F, Fut>(
    stack: &Stack,
    sqs: &aws_sdk_sqs::Client,
    queue: QueueName,
    handle: F,
) -> usize
where
    F: Fn(SqsEvent) -> Fut,
    Fut: std::future::Future<Output = aws_lambda_events::event::sqs::SqsBatchResponse>,
{
    let url = match queue {
        QueueName::Generate => stack.settings.queues.generate.clone(),
        QueueName::Webhook => stack.settings.queues.webhook.clone(),
    };
    let received = sqs
        .receive_message()
        .queue_url(&url)
        .max_number_of_messages(10)
        .visibility_timeout(30)
        .message_system_attribute_names(MessageSystemAttributeName::All)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e:?}"));
    let messages = received.messages.unwrap_or_default();
    if messages.is_empty() {
        return 0;
    }

    let mut event = SqsEvent::default();
    for message in &messages {
        let mut record = SqsMessage::default();
        record.message_id = message.message_id.clone();
        record.receipt_handle = message.receipt_handle.clone();
        record.body = message.body.clone();
        record.event_source = Some("aws:sqs".into());
        record.attributes = message
            .attributes
            .clone()
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k.as_str().to_owned(), v))
            .collect::<HashMap<_, _>>();
        event.records.push(record);
    }
    let response = handle(event).await;
    for message in &messages {
        let failed = response
            .batch_item_failures
            .iter()
            .any(|f| Some(&f.item_identifier) == message.message_id.as_ref());
        if !failed {
            sqs.delete_message()
                .queue_url(&url)
                .receipt_handle(message.receipt_handle.clone().unwrap_or_default())
                .send()
                .await
                .unwrap_or_else(|e| panic!("{e:?}"));
        }
    }
    messages.len()
}

fn calls(stack: &Stack) -> BTreeMap<String, u32> {
    let snapshot = stack.counter.snapshot();
    stack.counter.reset();
    snapshot
}

fn report(step: &str, calls: &BTreeMap<String, u32>) {
    let total: u32 = calls.values().sum();
    println!("aws calls | {step:<32} | {total:>2} | {calls:?}");
}

/// Redis settings for `url` under a namespace of the test's own.
fn redis_target(url: String, stack: &Stack) -> RedisTarget {
    let mut redis = RedisSettings::new(url.into());
    redis.namespace = format!("e2e-{}", stack.id);
    RedisTarget(redis)
}

/// Every key the limiter wrote under the test's namespace.
async fn redis_connection(url: &str) -> redis::aio::MultiplexedConnection {
    let client = redis::Client::open(url).unwrap_or_else(|e| panic!("{e}"));
    client
        .get_multiplexed_async_connection()
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

async fn limiter_keys(url: &str, stack: &Stack) -> Vec<String> {
    let mut connection = redis_connection(url).await;
    let mut keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{{e2e-{}}}:*", stack.id))
        .query_async(&mut connection)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    keys.sort();
    keys
}

/// Limiter scripts redis-server has run so far (`INFO commandstats`).
async fn script_calls(url: &str) -> u64 {
    let mut connection = redis_connection(url).await;
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut connection)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    info.lines()
        .filter(|l| l.starts_with("cmdstat_evalsha:") || l.starts_with("cmdstat_eval:"))
        .filter_map(|l| {
            l.split("calls=")
                .nth(1)?
                .split(',')
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn demo_scenario_runs_through_the_lambda_handlers_on_aws_adapters() {
    let redis = LocalRedisServer::start(&[]).unwrap_or_else(|e| panic!("{e}"));
    let mut stack = Stack::new(5).await;
    stack.settings.redis = Some(redis_target(redis.url(), &stack));
    // The test's own reads (is the job done?) and Lambda's receives and deletes go through
    // clients whose calls are not counted.
    let quiet = imagegen_aws_tests::clients(&CallCounter::default()).await;
    let quiet_store = DynamoStore::new(quiet.dynamo.clone(), stack.tables());
    let built = imagegen::aws::app_from_parts(stack.settings.clone(), stack.clients.clone())
        .await
        .unwrap_or_else(|e| panic!("cold start failed: {e}"));
    let cold = calls(&stack);
    report("cold start", &cold);
    assert_eq!(
        cold.get("DynamoDB.GetItem"),
        Some(&1),
        "init opens the DynamoDB connection: {cold:?}"
    );
    let app = built.app;
    let router = imagegen::http::router(app.clone(), built.admin_token.as_ref());
    let json_headers = |key: &str| {
        vec![
            ("content-type".to_owned(), "application/json".to_owned()),
            ("authorization".to_owned(), format!("Bearer {key}")),
        ]
    };
    let as_refs = |h: &Vec<(String, String)>| -> Vec<(String, String)> { h.clone() };

    // A tenant, made by the operator through the admin route.
    let admin = as_refs(&json_headers("operator"));
    let admin: Vec<(&str, &str)> = admin
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let tenant = invoke(
        &router,
        http_event(
            "POST",
            "/v1/admin/tenants",
            "",
            &admin,
            Some(r#"{"name":"demo"}"#),
        ),
    )
    .await;
    assert_eq!(tenant.status, 201, "{}", tenant.body);
    let key = tenant.body["apiKey"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let tenant_headers = json_headers(&key);
    let headers: Vec<(&str, &str)> = tenant_headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();

    // Its webhook, pointed at a local receiver.
    let (hook_url, mut hooks) = hook_receiver().await;
    let hook = invoke(
        &router,
        http_event(
            "PUT",
            "/v1/webhook",
            "",
            &headers,
            Some(&json!({ "url": hook_url }).to_string()),
        ),
    )
    .await;
    assert_eq!(hook.status, 200, "{}", hook.body);
    let secret = hook.body["secret"].as_str().unwrap_or_default().to_owned();
    report("tenant and webhook set up", &calls(&stack));

    // Submit, then submit the same request again.
    let mut submit_headers = headers.clone();
    submit_headers.push(("idempotency-key", "demo-1"));
    let body = r#"{"prompt":"a lighthouse on a cliff at dusk, oil painting","mode":"draft"}"#;
    let submitted = invoke(
        &router,
        http_event(
            "POST",
            "/v1/images:generate",
            "",
            &submit_headers,
            Some(body),
        ),
    )
    .await;
    let accept_calls = calls(&stack);
    report("accept a new job, key uncached", &accept_calls);
    let again = invoke(
        &router,
        http_event(
            "POST",
            "/v1/images:generate",
            "",
            &submit_headers,
            Some(body),
        ),
    )
    .await;
    let duplicate_calls = calls(&stack);
    report("answer a duplicate", &duplicate_calls);

    assert_eq!(submitted.status, 202, "{}", submitted.body);
    let job_id = submitted.body["jobId"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert_eq!(again.status, 202);
    assert_eq!(again.body["jobId"].as_str(), Some(job_id.as_str()));
    assert_eq!(again.body["status"], "QUEUED", "the first answer, again");
    let after_submit = limiter_keys(&redis.url(), &stack).await;
    assert!(
        !after_submit.is_empty(),
        "the submission was counted in Redis, not in-process"
    );
    let scripts_before_generate = script_calls(&redis.url()).await;
    assert_eq!(
        submitted.headers["location"].as_str(),
        Some(format!("/v1/jobs/{job_id}").as_str())
    );

    // The generate function works the queue until the job is done.
    let mut batches = 0;
    let mut messages = 0;
    loop {
        let handled = drive_queue(&stack, &quiet.sqs, QueueName::Generate, |event| {
            imagegen::handlers::generate_batch(&app, event)
        })
        .await;
        batches += 1;
        messages += handled;
        let job = quiet_store
            .get_job(&JobId::parse(&job_id).unwrap_or_else(|| panic!("id")))
            .await
            .ok()
            .flatten();
        if job.is_some_and(|j| j.status.is_terminal() && j.notified) {
            break;
        }
        assert!(batches < 20, "job not done after {batches} batches");
        if handled == 0 {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    let generate_calls = calls(&stack);
    report("generate (one message)", &generate_calls);
    assert_eq!(messages, 1, "one message ran the job");
    // A released lease leaves no key behind; the scripts' runs show dispatch went through Redis.
    let dispatch_scripts = script_calls(&redis.url()).await - scripts_before_generate;
    assert!(
        dispatch_scripts >= 2,
        "dispatch acquired and released its permits in Redis ({dispatch_scripts} script calls)"
    );

    // Poll: SUCCEEDED, with a fresh presigned URL serving the PNG.
    let path = format!("/v1/jobs/{job_id}");
    let polled = invoke(&router, http_event("GET", &path, "", &headers, None)).await;
    report("poll a finished job", &calls(&stack));
    assert_eq!(polled.status, 200, "{}", polled.body);
    assert_eq!(polled.body["status"], "SUCCEEDED", "{}", polled.body);
    let url = polled.body["resultUrls"][0].as_str().unwrap_or_default();
    let image = reqwest::get(url).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(image.status(), 200);
    assert_eq!(
        image
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("image/png")
    );
    let png = image.bytes().await.unwrap_or_default();
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    let stored = stack
        .clients
        .s3
        .head_object()
        .bucket(&stack.settings.bucket)
        .key(format!(
            "{}/{job_id}/0.png",
            tenant.body["tenantId"].as_str().unwrap_or_default()
        ))
        .send()
        .await
        .unwrap_or_else(|e| panic!("image not under the tenant/job prefix: {e:?}"));
    assert_eq!(stored.content_type(), Some("image/png"));
    let expires: chrono::DateTime<chrono::Utc> = polled.body["resultUrlsExpireAt"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no expiry: {}", polled.body));
    let ttl = chrono::Duration::from_std(app.settings.result_url_ttl).unwrap_or_default();
    assert!(expires <= chrono::Utc::now() + ttl);
    assert!(expires > chrono::Utc::now() + ttl - chrono::Duration::seconds(30));
    calls(&stack);

    // The webhook function delivers the signed event.
    let delivered = drive_queue(&stack, &quiet.sqs, QueueName::Webhook, |event| {
        imagegen::handlers::webhook_batch(&app, event)
    })
    .await;
    let webhook_calls = calls(&stack);
    report("webhook (one message)", &webhook_calls);
    assert_eq!(delivered, 1);
    let (hook_headers, hook_body) = tokio::time::timeout(Duration::from_secs(10), hooks.recv())
        .await
        .ok()
        .flatten()
        .unwrap_or_else(|| panic!("no webhook arrived"));
    standardwebhooks::Webhook::new(&secret)
        .unwrap_or_else(|e| panic!("{e}"))
        .verify(&hook_body, &hook_headers)
        .unwrap_or_else(|e| panic!("webhook signature did not verify: {e}"));
    let event: Value = serde_json::from_slice(&hook_body).unwrap_or_default();
    assert_eq!(event["type"], "job.succeeded");
    assert_eq!(event["jobId"].as_str(), Some(job_id.as_str()));

    // A further job on the now-warm function: the key lookup is cached.
    calls(&stack);
    let mut next_headers = headers.clone();
    next_headers.push(("idempotency-key", "demo-2"));
    let next = invoke(
        &router,
        http_event("POST", "/v1/images:generate", "", &next_headers, Some(body)),
    )
    .await;
    let warm_calls = calls(&stack);
    report("accept a new job, warm", &warm_calls);
    assert_eq!(next.status, 202, "{}", next.body);

    let total = |calls: &BTreeMap<String, u32>| calls.values().sum::<u32>();
    assert_eq!(
        accept_calls.get("DynamoDB.TransactWriteItems"),
        Some(&1),
        "one write accepts a job: {accept_calls:?}"
    );
    assert_eq!(
        total(&accept_calls),
        3,
        "uncached: lookup, write, send: {accept_calls:?}"
    );
    assert_eq!(total(&warm_calls), 2, "warm: write, send: {warm_calls:?}");
    assert_eq!(
        total(&duplicate_calls),
        1,
        "duplicate: the failed write returns the answer: {duplicate_calls:?}"
    );
    let expected = |pairs: &[(&str, u32)]| -> BTreeMap<String, u32> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect()
    };
    assert_eq!(
        generate_calls,
        expected(GENERATE_CALLS),
        "generate, one message to SUCCEEDED"
    );
    assert_eq!(
        webhook_calls,
        expected(WEBHOOK_CALLS),
        "webhook, one message"
    );
}

/// The AWS calls of the generate function for one message that ends SUCCEEDED (the rows of
/// `docs/benchmarks.md`).
const GENERATE_CALLS: &[(&str, u32)] = &[
    ("DynamoDB.GetItem", 3),
    ("DynamoDB.PutItem", 1),
    ("DynamoDB.TransactWriteItems", 2),
    ("S3.PutObject", 1),
    ("SQS.SendMessage", 1),
];

/// The AWS calls of the webhook function for one delivered event.
const WEBHOOK_CALLS: &[(&str, u32)] = &[
    ("DynamoDB.GetItem", 1),
    ("DynamoDB.Query", 1),
    ("DynamoDB.PutItem", 2),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cold_start_with_redis_unreachable_accepts_jobs_and_waits_until_redis_answers() {
    let mut stack = Stack::new(5).await;
    let port = LocalRedisServer::free_port().unwrap_or_else(|e| panic!("{e}"));
    stack.settings.redis = Some(redis_target(format!("redis://127.0.0.1:{port}"), &stack));
    let quiet = imagegen_aws_tests::clients(&CallCounter::default()).await;

    let built = imagegen::aws::app_from_parts(stack.settings.clone(), stack.clients.clone())
        .await
        .unwrap_or_else(|e| panic!("init must not need Redis: {e}"));
    let app = built.app;
    let router = imagegen::http::router(app.clone(), built.admin_token.as_ref());
    let tenant = imagegen::service::admin::create_tenant(&app, "no-redis", Default::default())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let bearer = format!("Bearer {}", tenant.key.expose());
    let headers = [
        ("content-type", "application/json"),
        ("authorization", bearer.as_str()),
    ];
    let submitted = invoke(
        &router,
        http_event(
            "POST",
            "/v1/images:generate",
            "",
            &headers,
            Some(r#"{"prompt":"a quiet harbour"}"#),
        ),
    )
    .await;
    stack.counter.reset();
    let mut handled = 0;
    for _ in 0..10 {
        handled = drive_queue(&stack, &quiet.sqs, QueueName::Generate, |event| async {
            let response = imagegen::handlers::generate_batch(&app, event).await;
            assert!(
                response.batch_item_failures.is_empty(),
                "the message is acknowledged and re-sent, not failed: {response:?}"
            );
            response
        })
        .await;
        if handled > 0 {
            break;
        }
    }
    let dispatch_calls = calls(&stack);
    let job_id = submitted.body["jobId"].as_str().unwrap_or_default();
    let job = app
        .store
        .get_job(&JobId::parse(job_id).unwrap_or_else(|| panic!("no job id")))
        .await
        .ok()
        .flatten()
        .unwrap_or_else(|| panic!("job not stored"));

    assert_eq!(submitted.status, 202, "{}", submitted.body);
    assert_eq!(handled, 1);
    assert_eq!(job.status, imagegen::domain::JobStatus::Queued);
    assert_eq!(job.attempts, 0, "waiting for the limiter is not an attempt");
    assert_eq!(
        dispatch_calls.get("SQS.SendMessage"),
        Some(&1),
        "the job was re-delayed: {dispatch_calls:?}"
    );

    // Redis comes up on that port: a later call connects, with no restart.
    let mut server = std::process::Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start redis-server: {e}"));
    let mut admitted = None;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if let Ok(answer) = app.limiter.admit_submission(&tenant.tenant.id, 100).await {
            admitted = Some(answer);
            break;
        }
    }
    let _ = server.kill();
    let _ = server.wait();
    assert_eq!(
        admitted,
        Some(None),
        "the limiter connected once Redis was up"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_api_gateway_can_send_but_we_cannot_serve_get_a_json_4xx() {
    let stack = Stack::new(5).await;
    let built = imagegen::aws::app_from_parts(stack.settings.clone(), stack.clients.clone())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let router = imagegen::http::router(built.app, built.admin_token.as_ref());
    let json = [
        ("content-type", "application/json"),
        ("authorization", "Bearer operator"),
    ];
    let base64_body = base64::engine::general_purpose::STANDARD.encode(r#"{"name":"b64"}"#);
    let mut encoded = http_event("POST", "/v1/admin/tenants", "", &json, Some(&base64_body));
    encoded["isBase64Encoded"] = json!(true);

    let cases = vec![
        (
            "unknown path",
            http_event("GET", "/v2/nothing", "", &[], None),
            404,
            "NOT_FOUND",
        ),
        (
            "wrong method",
            http_event("DELETE", "/v1/jobs", "", &[], None),
            405,
            "METHOD_NOT_ALLOWED",
        ),
        (
            "no key",
            http_event("GET", "/v1/jobs", "", &[], None),
            401,
            "UNAUTHORIZED",
        ),
        (
            "not JSON",
            http_event("POST", "/v1/admin/tenants", "", &json, Some("{nope")),
            400,
            "INVALID_JSON",
        ),
        (
            "wrong content type",
            http_event(
                "POST",
                "/v1/admin/tenants",
                "",
                &[("authorization", "Bearer operator")],
                Some("{}"),
            ),
            415,
            "UNSUPPORTED_MEDIA_TYPE",
        ),
        ("base64 body", encoded, 201, ""),
    ];

    for (what, event, status, code) in cases {
        let reply = invoke(&router, event).await;

        assert_eq!(reply.status, status, "{what}: {}", reply.body);
        if !code.is_empty() {
            assert_eq!(reply.body["error"]["code"], code, "{what}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_sample_event_is_one_its_function_accepts() {
    let stack = Stack::new(5).await;
    let built = imagegen::aws::app_from_parts(stack.settings.clone(), stack.clients.clone())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let router = imagegen::http::router(built.app.clone(), built.admin_token.as_ref());

    for (name, raw) in [
        ("submit", include_str!("../../events/submit.json")),
        ("poll", include_str!("../../events/poll.json")),
    ] {
        let event: Value = serde_json::from_str(raw).unwrap_or_else(|e| panic!("{name}: {e}"));
        let reply = invoke(&router, event).await;
        // The sample's key belongs to no tenant here: a JSON 401 proves the route matched.
        assert_eq!(reply.status, 401, "{name}: {}", reply.body);
        assert_eq!(reply.body["error"]["code"], "UNAUTHORIZED");
    }
    for (name, raw) in [
        ("generate", include_str!("../../events/generate.json")),
        ("webhook", include_str!("../../events/webhook.json")),
    ] {
        let event: SqsEvent = serde_json::from_str(raw).unwrap_or_else(|e| panic!("{name}: {e}"));
        let count = event.records.len();
        let response = match name {
            "generate" => imagegen::handlers::generate_batch(&built.app, event).await,
            _ => imagegen::handlers::webhook_batch(&built.app, event).await,
        };
        // The sample jobs and tenants do not exist here: each message is dropped, not retried.
        assert!(count > 0);
        assert!(
            response.batch_item_failures.is_empty(),
            "{name}: {response:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_strings_from_api_gateway_reach_the_routes() {
    let stack = Stack::new(5).await;
    let built = imagegen::aws::app_from_parts(stack.settings.clone(), stack.clients.clone())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let router = imagegen::http::router(built.app, built.admin_token.as_ref());
    let admin = [
        ("content-type", "application/json"),
        ("authorization", "Bearer operator"),
    ];
    let tenant = invoke(
        &router,
        http_event(
            "POST",
            "/v1/admin/tenants",
            "",
            &admin,
            Some(r#"{"name":"q"}"#),
        ),
    )
    .await;
    let bearer = format!(
        "Bearer {}",
        tenant.body["apiKey"].as_str().unwrap_or_default()
    );
    let auth = [("authorization", bearer.as_str())];

    let listed = invoke(
        &router,
        http_event("GET", "/v1/jobs", "limit=2&status=QUEUED", &auth, None),
    )
    .await;
    let bad_limit = invoke(
        &router,
        http_event("GET", "/v1/jobs", "limit=0", &auth, None),
    )
    .await;
    let bad_cursor = invoke(
        &router,
        http_event("GET", "/v1/jobs", "cursor=forged", &auth, None),
    )
    .await;

    assert_eq!(listed.status, 200, "{}", listed.body);
    assert_eq!(listed.body["jobs"], json!([]));
    assert_eq!(listed.body["nextCursor"], Value::Null);
    assert_eq!(bad_limit.status, 400, "{}", bad_limit.body);
    assert_eq!(bad_limit.body["error"]["code"], "INVALID_REQUEST");
    assert_eq!(bad_cursor.status, 400, "{}", bad_cursor.body);
    assert_eq!(bad_cursor.body["error"]["code"], "INVALID_CURSOR");
}

#[tokio::test]
async fn the_scheduled_reconciler_requeues_a_job_whose_message_was_never_sent() {
    use imagegen::domain::{Job, Mode, Plan};
    use imagegen::ports::QueueConsumer;

    let stack = Stack::new(3).await;
    let app = imagegen::aws::app_from_parts(stack.settings.clone(), stack.clients.clone())
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .app;
    let tenant = imagegen::service::admin::create_tenant(&app, "stranded", Plan::default())
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .tenant;
    let written = chrono::Utc::now() - chrono::Duration::minutes(5);
    let job = Job::new(
        tenant.id.clone(),
        Mode::Draft,
        "never queued".into(),
        None,
        4,
        written,
    );
    app.store
        .create_job(&job, None, 100)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let consumer = imagegen::queue::sqs::SqsQueue::new(stack.clients.sqs.clone(), stack.queues());

    let requeued = imagegen::service::reconcile::reconcile(&app, Duration::from_secs(120), 200)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let messages = consumer
        .receive(QueueName::Generate, 10, Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| panic!("{e}"));

    assert_eq!(requeued, 1);
    assert!(
        messages.iter().any(|m| m.body.contains(job.id.as_str())),
        "{messages:?}"
    );
    let sample: Value = serde_json::from_str(include_str!("../../events/reconcile.json"))
        .unwrap_or_else(|e| panic!("events/reconcile.json: {e}"));
    assert_eq!(sample["detail-type"], "Scheduled Event");
}
