//! How the queue handlers work a batch: every record at once, so the last record of a batch
//! has as much of the function's time as the first, and the partial batch response names only
//! the records that must come back.
//!
//! Run with `cargo test -p imagegen-tests --test batches`.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use imagegen::domain::{JobStatus, Plan, WebhookEvent, WebhookUrl};
use imagegen::handlers;
use imagegen::ports::{
    Generation, GenerationRequest, Provider, ProviderError, QueueConsumer, QueueName,
};
use imagegen::provider::OfflineProvider;
use imagegen::service::webhooks::{self, EndpointSettings};
use imagegen_tests::harness::{fast_settings, Harness};
use secrecy::SecretString;

/// How long the slow provider takes for every call.
const LATENCY: Duration = Duration::from_millis(600);

/// The offline renderer behind a fixed wait, like an upstream that takes its time.
struct SlowProvider(OfflineProvider);

#[async_trait]
impl Provider for SlowProvider {
    fn name(&self) -> &str {
        "slow"
    }

    fn needs_key(&self) -> bool {
        false
    }

    async fn generate(
        &self,
        request: &GenerationRequest,
        key: Option<&SecretString>,
    ) -> Result<Generation, ProviderError> {
        tokio::time::sleep(LATENCY).await;
        self.0.generate(request, key).await
    }
}

fn plan() -> Plan {
    Plan {
        requests_per_minute: 1000,
        daily_cap: 1000,
        max_concurrency: 10,
    }
}

async fn slow_harness() -> Harness {
    let mut settings = fast_settings();
    settings.provider_timeout = Duration::from_secs(5);
    settings.lease = Duration::from_secs(10);
    let mut harness = Harness::new(settings).await;
    harness.app.provider = Arc::new(SlowProvider(OfflineProvider::default()));
    harness
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_records_of_one_batch_finish_in_about_one_provider_latency() {
    let h = slow_harness().await;
    let tenant = h.tenant(plan()).await;
    let first = h.submit_draft(&tenant, "batch test").await;
    let second = h.submit_draft(&tenant, "batch test").await;
    let batch = h
        .queue
        .receive(QueueName::Generate, 10, Duration::from_secs(30))
        .await
        .expect("receive");
    assert_eq!(batch.len(), 2, "both messages in one batch");

    let started = Instant::now();
    let response = handlers::generate_batch(
        &h.app,
        imagegen_local::sqs_event(QueueName::Generate, &batch),
    )
    .await;
    let took = started.elapsed();

    assert!(response.batch_item_failures.is_empty());
    assert_eq!(h.job(&first).await.status, JobStatus::Succeeded);
    assert_eq!(h.job(&second).await.status, JobStatus::Succeeded);
    assert!(
        took < LATENCY * 3 / 2,
        "a batch of two took {took:?}; one after another would take {:?}",
        LATENCY * 2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_record_is_the_only_one_the_batch_response_names() {
    let h = slow_harness().await;
    let tenant = h.tenant(plan()).await;
    let good = h.submit_draft(&tenant, "batch test").await;
    let mut batch = h
        .queue
        .receive(QueueName::Generate, 10, Duration::from_secs(30))
        .await
        .expect("receive");
    let mut unreadable = batch[0].clone();
    unreadable.message_id = "unreadable".into();
    unreadable.body = "not json".into();
    batch.insert(0, unreadable);

    let response = handlers::generate_batch(
        &h.app,
        imagegen_local::sqs_event(QueueName::Generate, &batch),
    )
    .await;

    let failed: Vec<&str> = response
        .batch_item_failures
        .iter()
        .map(|f| f.item_identifier.as_str())
        .collect();
    assert_eq!(failed, vec!["unreadable"]);
    assert_eq!(h.job(&good).await.status, JobStatus::Succeeded);
}

/// A webhook receiver that answers 204 after [`LATENCY`]; returns its URL and a count of the
/// requests it answered.
async fn slow_receiver() -> (String, Arc<AtomicU32>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("address");
    let answered = Arc::new(AtomicU32::new(0));
    let counter = answered.clone();
    let router = axum::Router::new().route(
        "/hook",
        axum::routing::post(move || {
            let counter = counter.clone();
            async move {
                tokio::time::sleep(LATENCY).await;
                counter.fetch_add(1, Ordering::SeqCst);
                axum::http::StatusCode::NO_CONTENT
            }
        }),
    );
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    (format!("http://{address}/hook"), answered)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_webhooks_of_one_batch_are_delivered_in_about_one_receiver_latency() {
    let mut settings = fast_settings();
    settings.lease = Duration::from_secs(10);
    let h = Harness::new(settings).await;
    let tenant = h.tenant(plan()).await;
    let (url, answered) = slow_receiver().await;
    let endpoint = EndpointSettings {
        url: WebhookUrl::parse(&url, true).expect("url"),
        events: WebhookEvent::ALL.to_vec(),
        enabled: true,
    };
    webhooks::configure(&h.app, &tenant.id, endpoint)
        .await
        .expect("webhook configured");
    h.submit_draft(&tenant, "batch test").await;
    h.submit_draft(&tenant, "batch test").await;
    h.pump(QueueName::Generate).await;
    let batch = h
        .queue
        .receive(QueueName::Webhook, 10, Duration::from_secs(30))
        .await
        .expect("receive");
    assert_eq!(batch.len(), 2, "both events in one batch");

    let started = Instant::now();
    let response = handlers::webhook_batch(
        &h.app,
        imagegen_local::sqs_event(QueueName::Webhook, &batch),
    )
    .await;
    let took = started.elapsed();

    assert!(response.batch_item_failures.is_empty());
    assert_eq!(answered.load(Ordering::SeqCst), 2, "both delivered");
    assert!(
        took < LATENCY * 3 / 2,
        "a batch of two took {took:?}; one after another would take {:?}",
        LATENCY * 2
    );
}
