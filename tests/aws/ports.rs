//! One behavioural suite per port, each a function over the port's trait, run against the
//! embedded adapter (SQLite, folder) and the AWS adapter (DynamoDB, SQS, S3, Secrets Manager on
//! moto's server). Both must pass the same suite.
//!
//! Run with `make test-aws`, or `cargo test -p imagegen-aws-tests --test ports`.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chrono::DateTime;
use chrono::Utc;
use imagegen::blob::s3::S3BlobStore;
use imagegen::blob::FsBlobStore;
use imagegen::deliveries::{DynamoDeliveryLog, SqliteDeliveryLog};
use imagegen::domain::{
    ErrorCode, IdempotencyKey, Job, JobError, JobStatus, KeyState, Limits, Mode, Plan, Prompt,
    QuotaGroup, QuotaGroupId, Tenant, TenantId, UpstreamKey, UpstreamKeyId, WebhookEvent,
};
use imagegen::fetch::{self, FetchError, UploadId};
use imagegen::limiter::registry_dynamo::DynamoKeyRegistry;
use imagegen::limiter::SqliteKeyRegistry;
use imagegen::ports::{
    AttemptOutcome, BlobStore, BoundedRead, CreateOutcome, DeliveryAttempt, DeliveryLog,
    IdempotencyClaim, JobStore, KeyRegistry, Queue, QueueConsumer, QueueName, SecretStore,
    WebhookEventRecord, WriteOutcome,
};
use imagegen::queue::sqs::SqsQueue;
use imagegen::queue::SqliteQueue;
use imagegen::secrets::aws::AwsSecrets;
use imagegen::secrets::SqliteSecrets;
use imagegen::service::submit::{self, Submission};
use imagegen::store::dynamo::DynamoStore;
use imagegen::store::{SqliteDb, SqliteStore};
use imagegen::App;
use imagegen_aws_tests::Stack;
use secrecy::{ExposeSecret, SecretString};

const MAX_RECEIVES: u32 = 2;

fn db() -> SqliteDb {
    SqliteDb::in_memory().unwrap_or_else(|e| panic!("sqlite: {e}"))
}

fn job(tenant: &TenantId) -> Job {
    Job::new(
        tenant.clone(),
        Mode::Draft,
        "a red fox".into(),
        None,
        4,
        Utc::now(),
    )
}

fn claim(key: &str) -> IdempotencyClaim {
    IdempotencyClaim {
        key: IdempotencyKey::parse(key).unwrap_or_else(|e| panic!("{e}")),
        request_hash: "hash-1".into(),
        expires_at: Utc::now() + chrono::Duration::hours(1),
    }
}

async fn create(store: &dyn JobStore, job: &Job) {
    let outcome = store.create_job(job, None, 100).await;
    assert_eq!(outcome.ok(), Some(CreateOutcome::Created));
}

/// Runs `$suite` on the embedded adapter and on the AWS adapter, as two tests.
macro_rules! on_both {
    ($name:ident, $suite:ident, $embedded:expr, $aws:expr) => {
        mod $name {
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn on_embedded_adapter() {
                $suite($embedded).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn on_aws_adapter() {
                $suite($aws).await;
            }
        }
    };
}

fn sqlite_store() -> Arc<dyn JobStore> {
    Arc::new(SqliteStore::new(db()))
}

async fn dynamo_store() -> Arc<dyn JobStore> {
    let stack = Stack::new(MAX_RECEIVES).await;
    Arc::new(DynamoStore::new(
        stack.clients.dynamo.clone(),
        stack.tables(),
    ))
}

// ---- job store ----

async fn new_job_reads_back_with_its_creation_event(store: Arc<dyn JobStore>) {
    let job = job(&TenantId::generate());

    create(store.as_ref(), &job).await;

    let stored = store.get_job(&job.id).await.ok().flatten();
    assert_eq!(stored.as_ref(), Some(&job));
    let events = store.job_events(&job.id).await.unwrap_or_default();
    assert_eq!(events.len(), 1);
    assert_eq!((events[0].from, events[0].to), (None, JobStatus::Queued));
    assert_eq!(
        store.usage(&job.tenant_id, job.usage_day).await.ok(),
        Some(1)
    );
}
on_both!(
    creating_a_job,
    new_job_reads_back_with_its_creation_event,
    sqlite_store(),
    dynamo_store().await
);

async fn write_on_a_stale_version_returns_the_stored_job(store: Arc<dyn JobStore>) {
    let queued = job(&TenantId::generate());
    create(store.as_ref(), &queued).await;
    let now = Utc::now();
    let first = queued
        .start("w1", now + chrono::Duration::seconds(60), now)
        .unwrap_or_else(|e| panic!("{e}"));
    let rival = queued.cancel(now).unwrap_or_else(|e| panic!("{e}"));

    let won = store.update_job(&queued, &first).await.ok();
    let lost = store.update_job(&queued, &rival).await.ok();
    let never_created = job(&queued.tenant_id);
    let missing = store
        .update_job(&never_created, &never_created.mark_notified(now))
        .await
        .ok();

    assert_eq!(won, Some(WriteOutcome::Written));
    assert_eq!(lost, Some(WriteOutcome::Conflict(Box::new(first.clone()))));
    assert_eq!(missing, Some(WriteOutcome::Missing));
    let events = store.job_events(&queued.id).await.unwrap_or_default();
    let moves: Vec<_> = events.iter().map(|e| (e.from, e.to)).collect();
    assert_eq!(
        moves,
        vec![
            (None, JobStatus::Queued),
            (Some(JobStatus::Queued), JobStatus::Running)
        ]
    );
}
on_both!(
    conditional_transitions,
    write_on_a_stale_version_returns_the_stored_job,
    sqlite_store(),
    dynamo_store().await
);

async fn failing_a_job_refunds_its_unit_exactly_once(store: Arc<dyn JobStore>) {
    let queued = job(&TenantId::generate());
    create(store.as_ref(), &queued).await;
    let error = JobError::new(ErrorCode::Expired, "too late");
    let failed = queued
        .fail(None, error.clone(), Utc::now())
        .unwrap_or_else(|e| panic!("{e}"));

    let first = store.update_job(&queued, &failed).await.ok();
    let again = store.update_job(&queued, &failed).await.ok();

    assert_eq!(first, Some(WriteOutcome::Written));
    assert!(matches!(again, Some(WriteOutcome::Conflict(_))));
    assert_eq!(
        store.usage(&queued.tenant_id, queued.usage_day).await.ok(),
        Some(0)
    );
}
on_both!(
    refunds,
    failing_a_job_refunds_its_unit_exactly_once,
    sqlite_store(),
    dynamo_store().await
);

async fn twenty_concurrent_creates_with_one_key_make_one_job(store: Arc<dyn JobStore>) {
    let tenant = TenantId::generate();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let store = Arc::clone(&store);
        let job = job(&tenant);
        tasks.spawn(async move {
            let outcome = store.create_job(&job, Some(&claim("one-key")), 100).await;
            (job, outcome)
        });
    }

    let mut created = Vec::new();
    let mut duplicates = Vec::new();
    while let Some(done) = tasks.join_next().await {
        let (job, outcome) = done.unwrap_or_else(|e| panic!("{e}"));
        match outcome.unwrap_or_else(|e| panic!("create failed: {e}")) {
            CreateOutcome::Created => created.push(job),
            CreateOutcome::Duplicate {
                job_id,
                status,
                created_at,
                ..
            } => duplicates.push((job_id, status, created_at)),
            other => panic!("unexpected {other:?}"),
        }
    }

    assert_eq!(created.len(), 1, "exactly one create wins");
    assert_eq!(duplicates.len(), 19);
    let winner = (
        created[0].id.clone(),
        JobStatus::Queued,
        created[0].created_at,
    );
    assert!(
        duplicates.iter().all(|d| d == &winner),
        "each repeat is answered from the record, as first created: {duplicates:?}"
    );
    let today = Utc::now().date_naive();
    assert_eq!(store.usage(&tenant, today).await.ok(), Some(1));
}
on_both!(
    concurrent_idempotent_creates,
    twenty_concurrent_creates_with_one_key_make_one_job,
    sqlite_store(),
    dynamo_store().await
);

async fn daily_cap_refuses_the_job_past_it_and_writes_nothing(store: Arc<dyn JobStore>) {
    let tenant = TenantId::generate();
    for _ in 0..2 {
        assert_eq!(
            store.create_job(&job(&tenant), None, 2).await.ok(),
            Some(CreateOutcome::Created)
        );
    }
    let third = job(&tenant);

    let outcome = store.create_job(&third, Some(&claim("k3")), 2).await.ok();

    assert_eq!(outcome, Some(CreateOutcome::DailyCapReached));
    assert_eq!(store.get_job(&third.id).await.ok(), Some(None));
    assert_eq!(store.usage(&tenant, third.usage_day).await.ok(), Some(2));
    let retried = store
        .create_job(&job(&tenant), Some(&claim("k3")), 3)
        .await
        .ok();
    assert_eq!(
        retried,
        Some(CreateOutcome::Created),
        "the refused key was not kept"
    );
}
on_both!(
    daily_cap,
    daily_cap_refuses_the_job_past_it_and_writes_nothing,
    sqlite_store(),
    dynamo_store().await
);

async fn an_expired_idempotency_key_can_be_used_again(store: Arc<dyn JobStore>) {
    let tenant = TenantId::generate();
    let mut old = claim("reused");
    old.expires_at = Utc::now() - chrono::Duration::seconds(5);
    let first = job(&tenant);
    let second = job(&tenant);

    let a = store.create_job(&first, Some(&old), 100).await.ok();
    let b = store
        .create_job(&second, Some(&claim("reused")), 100)
        .await
        .ok();

    assert_eq!(a, Some(CreateOutcome::Created));
    assert_eq!(b, Some(CreateOutcome::Created));
}
on_both!(
    expired_keys,
    an_expired_idempotency_key_can_be_used_again,
    sqlite_store(),
    dynamo_store().await
);

async fn cursor_paging_visits_every_match_once_even_through_empty_pages(store: Arc<dyn JobStore>) {
    let tenant = TenantId::generate();
    let other = TenantId::generate();
    let mut jobs = Vec::new();
    for _ in 0..7 {
        let job = job(&tenant);
        create(store.as_ref(), &job).await;
        jobs.push(job);
    }
    create(store.as_ref(), &job(&other)).await;
    jobs.sort_by(|a, b| b.id.cmp(&a.id));
    let mut failed_ids = Vec::new();
    for index in [0, 6] {
        let failed = jobs[index]
            .fail(None, JobError::new(ErrorCode::Expired, "late"), Utc::now())
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            store.update_job(&jobs[index], &failed).await.ok(),
            Some(WriteOutcome::Written)
        );
        failed_ids.push(jobs[index].id.clone());
    }

    let mut seen = Vec::new();
    let mut pages = 0;
    let mut empty_pages_with_cursor = 0;
    let mut after = None;
    loop {
        let page = store
            .list_jobs(&tenant, Some(JobStatus::Failed), 2, after.as_ref())
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        pages += 1;
        if page.jobs.is_empty() && page.last_evaluated.is_some() {
            empty_pages_with_cursor += 1;
        }
        seen.extend(page.jobs.iter().map(|j| j.id.clone()));
        match page.last_evaluated {
            Some(last) => after = Some(last),
            None => break,
        }
        assert!(pages < 10, "paging does not end");
    }
    let everything = store
        .list_jobs(&tenant, None, 100, None)
        .await
        .unwrap_or_else(|e| panic!("{e}"));

    assert_eq!(seen, failed_ids, "each failed job once, newest first");
    assert!(
        empty_pages_with_cursor >= 1,
        "a page may be empty and still go on"
    );
    let all: Vec<_> = everything.jobs.iter().map(|j| j.id.clone()).collect();
    let expected: Vec<_> = jobs.iter().map(|j| j.id.clone()).collect();
    assert_eq!(all, expected, "the other tenant's job is not listed");
    assert_eq!(everything.last_evaluated, None);
}
on_both!(
    cursor_paging,
    cursor_paging_visits_every_match_once_even_through_empty_pages,
    sqlite_store(),
    dynamo_store().await
);

async fn stale_jobs_are_found_by_status_oldest_first(store: Arc<dyn JobStore>) {
    let tenant = TenantId::generate();
    let mut old = job(&tenant);
    old.updated_at = Utc::now() - chrono::Duration::minutes(10);
    let mut older = job(&tenant);
    older.updated_at = Utc::now() - chrono::Duration::minutes(20);
    let fresh = job(&tenant);
    for job in [&old, &older, &fresh] {
        create(store.as_ref(), job).await;
    }

    let stale = store
        .stale_jobs(
            JobStatus::Queued,
            Utc::now() - chrono::Duration::minutes(5),
            10,
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));

    let ids: Vec<_> = stale
        .iter()
        .filter(|j| j.tenant_id == tenant)
        .map(|j| j.id.clone())
        .collect();
    assert_eq!(ids, vec![older.id.clone(), old.id.clone()]);
}
on_both!(
    stale_jobs,
    stale_jobs_are_found_by_status_oldest_first,
    sqlite_store(),
    dynamo_store().await
);

async fn tenant_reads_back_by_id_and_by_key_hash(store: Arc<dyn JobStore>) {
    let tenant = Tenant {
        id: TenantId::generate(),
        name: "acme".into(),
        key_hash: format!("hash-{}", ulid::Ulid::new()),
        plan: Plan::default(),
        webhook: None,
    };

    store
        .put_tenant(&tenant)
        .await
        .unwrap_or_else(|e| panic!("{e}"));

    assert_eq!(
        store.get_tenant(&tenant.id).await.ok().flatten(),
        Some(tenant.clone())
    );
    let found = store
        .tenant_by_key_hash(&tenant.key_hash)
        .await
        .ok()
        .flatten();
    assert_eq!(found, Some(tenant));
    assert_eq!(store.tenant_by_key_hash("nobody").await.ok(), Some(None));
}
on_both!(
    tenants,
    tenant_reads_back_by_id_and_by_key_hash,
    sqlite_store(),
    dynamo_store().await
);

// ---- submit through the service: one job and one message ----

async fn sqlite_app() -> (App, Arc<dyn QueueConsumer>) {
    let db = db();
    let queue = SqliteQueue::new(db.clone(), MAX_RECEIVES);
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let blobs = Arc::new(FsBlobStore::new(
        dir.keep(),
        "http://127.0.0.1:1",
        b"k".to_vec(),
    ));
    let webhooks = imagegen::webhook::WebhookSender::new(
        imagegen::webhook::OutboundPolicy {
            allow_loopback: true,
            loopback_only: true,
        },
        Duration::from_secs(5),
    );
    let mut app = imagegen::embedded::app(
        db,
        blobs,
        webhooks,
        imagegen::AppSettings::default(),
        imagegen::limiter::LimiterSettings::default(),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    app.queue = Arc::new(queue.clone());
    (app, Arc::new(queue))
}

async fn aws_app() -> (App, Arc<dyn QueueConsumer>) {
    let stack = Stack::new(MAX_RECEIVES).await;
    let consumer = SqsQueue::new(stack.clients.sqs.clone(), stack.queues());
    let built = imagegen::aws::app_from_parts(stack.settings.clone(), stack.clients.clone())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    (built.app, Arc::new(consumer))
}

async fn twenty_concurrent_submits_with_one_key_make_one_job_and_one_message(
    (app, consumer): (App, Arc<dyn QueueConsumer>),
) {
    let tenant = Tenant {
        id: TenantId::generate(),
        name: "t".into(),
        key_hash: "h".into(),
        plan: Plan::default(),
        webhook: None,
    };
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let (app, tenant) = (app.clone(), tenant.clone());
        tasks.spawn(async move {
            let submission = Submission {
                prompt: Prompt::parse("a lighthouse").unwrap_or_else(|e| panic!("{e}")),
                mode: Mode::Draft,
                input_image_url: None,
                deadline: None,
            };
            let key = IdempotencyKey::parse("same").ok();
            submit::submit(&app, &tenant, submission, key).await
        });
    }

    let mut ids = HashSet::new();
    let mut created = 0;
    while let Some(done) = tasks.join_next().await {
        let accepted = done
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|e| panic!("submit failed: {e}"));
        created += usize::from(accepted.created);
        ids.insert(accepted.job.id);
    }
    let mut messages = Vec::new();
    loop {
        let batch = consumer
            .receive(QueueName::Generate, 10, Duration::from_secs(30))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        if batch.is_empty() {
            break;
        }
        messages.extend(batch);
    }

    assert_eq!((created, ids.len()), (1, 1), "one job for twenty submits");
    assert_eq!(messages.len(), 1, "one message for one job");
}
on_both!(
    concurrent_submits,
    twenty_concurrent_submits_with_one_key_make_one_job_and_one_message,
    sqlite_app().await,
    aws_app().await
);

// ---- queue ----

type Queues = (Arc<dyn Queue>, Arc<dyn QueueConsumer>);

fn sqlite_queues() -> Queues {
    let queue = SqliteQueue::new(db(), MAX_RECEIVES);
    (Arc::new(queue.clone()), Arc::new(queue))
}

async fn sqs_queues() -> Queues {
    let stack = Stack::new(MAX_RECEIVES).await;
    let queue = SqsQueue::new(stack.clients.sqs.clone(), stack.queues());
    (Arc::new(queue.clone()), Arc::new(queue))
}

async fn receive(consumer: &dyn QueueConsumer, visibility: Duration) -> Vec<String> {
    consumer
        .receive(QueueName::Generate, 10, visibility)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .into_iter()
        .map(|m| m.body)
        .collect()
}

async fn delayed_message_stays_hidden_until_its_delay_ends((queue, consumer): Queues) {
    queue
        .send(QueueName::Generate, "later", Duration::from_secs(2))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    queue
        .send(QueueName::Webhook, "other queue", Duration::ZERO)
        .await
        .unwrap_or_else(|e| panic!("{e}"));

    let early = receive(consumer.as_ref(), Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let late = receive(consumer.as_ref(), Duration::from_secs(30)).await;

    assert!(early.is_empty(), "delivered before its delay: {early:?}");
    assert_eq!(late, vec!["later".to_owned()]);
}
on_both!(
    delays,
    delayed_message_stays_hidden_until_its_delay_ends,
    sqlite_queues(),
    sqs_queues().await
);

async fn received_message_is_hidden_for_the_visibility_timeout_then_returns(
    (queue, consumer): Queues,
) {
    queue
        .send(QueueName::Generate, "work", Duration::ZERO)
        .await
        .unwrap_or_else(|e| panic!("{e}"));

    let first = consumer
        .receive(QueueName::Generate, 10, Duration::from_secs(1))
        .await
        .unwrap_or_default();
    let hidden = receive(consumer.as_ref(), Duration::from_secs(1)).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let again = consumer
        .receive(QueueName::Generate, 10, Duration::from_secs(30))
        .await
        .unwrap_or_default();
    if let Some(message) = again.first() {
        consumer
            .delete(QueueName::Generate, &message.receipt_handle)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let after_delete = receive(consumer.as_ref(), Duration::ZERO).await;

    assert_eq!(first.len(), 1);
    assert_eq!(first[0].receive_count, 1);
    assert!(hidden.is_empty(), "visible during its visibility timeout");
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].receive_count, 2);
    assert!(after_delete.is_empty(), "a deleted message came back");
}
on_both!(
    visibility,
    received_message_is_hidden_for_the_visibility_timeout_then_returns,
    sqlite_queues(),
    sqs_queues().await
);

async fn message_received_past_the_maximum_moves_to_the_dead_letter_queue(
    (queue, consumer): Queues,
) {
    queue
        .send(QueueName::Generate, "poison", Duration::ZERO)
        .await
        .unwrap_or_else(|e| panic!("{e}"));

    let mut receipts = 0;
    for _ in 0..MAX_RECEIVES + 1 {
        receipts += receive(consumer.as_ref(), Duration::from_secs(1))
            .await
            .len();
        tokio::time::sleep(Duration::from_millis(1200)).await;
    }
    let dead = consumer
        .dead_letters(QueueName::Generate)
        .await
        .unwrap_or_else(|e| panic!("{e}"));

    assert_eq!(
        receipts as u32, MAX_RECEIVES,
        "received once per allowed receive"
    );
    assert_eq!(dead, vec!["poison".to_owned()]);
    assert!(receive(consumer.as_ref(), Duration::ZERO).await.is_empty());
}
on_both!(
    redrive,
    message_received_past_the_maximum_moves_to_the_dead_letter_queue,
    sqlite_queues(),
    sqs_queues().await
);

// ---- blob store ----

fn fs_blobs() -> Arc<dyn BlobStore> {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    Arc::new(FsBlobStore::new(
        dir.keep(),
        "http://127.0.0.1:1",
        b"k".to_vec(),
    ))
}

async fn s3_blobs() -> Arc<dyn BlobStore> {
    let stack = Stack::new(MAX_RECEIVES).await;
    Arc::new(S3BlobStore::new(
        stack.clients.s3.clone(),
        stack.clients.sdk.credentials_provider(),
        stack.settings.bucket.clone(),
        None,
    ))
}

async fn stored_image_reads_back_and_its_url_states_a_true_expiry(blobs: Arc<dyn BlobStore>) {
    let key = "ten_1/job_1/0.png";
    let bytes = Bytes::from_static(b"\x89PNG\r\n\x1a\nnot really");

    blobs
        .put(key, bytes.clone(), "image/png")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let before = Utc::now();
    let signed = blobs
        .signed_url(key, Duration::from_secs(600))
        .await
        .unwrap_or_else(|e| panic!("{e}"));

    assert_eq!(blobs.get(key).await.ok().flatten(), Some(bytes));
    assert_eq!(blobs.get("ten_1/job_1/9.png").await.ok(), Some(None));
    assert!(signed.url.starts_with("http"), "{}", signed.url);
    let ceiling = before + chrono::Duration::seconds(600);
    assert!(signed.expires_at <= ceiling, "claims more time than asked");
    assert!(signed.expires_at >= ceiling - chrono::Duration::seconds(2));
}
on_both!(
    blobs,
    stored_image_reads_back_and_its_url_states_a_true_expiry,
    fs_blobs(),
    s3_blobs().await
);

async fn a_bounded_read_refuses_an_object_over_the_limit_without_returning_it(
    blobs: Arc<dyn BlobStore>,
) {
    let key = "uploads/ten_1/upl_big";
    let bytes = Bytes::from(vec![7u8; 64]);
    blobs
        .put(key, bytes.clone(), "application/octet-stream")
        .await
        .unwrap_or_else(|e| panic!("{e}"));

    let over = blobs.get_at_most(key, 63).await.ok().flatten();
    let exact = blobs.get_at_most(key, 64).await.ok().flatten();
    let missing = blobs.get_at_most("uploads/ten_1/none", 64).await.ok();

    assert_eq!(over, Some(BoundedRead::TooLarge { size: 64 }));
    assert_eq!(exact, Some(BoundedRead::Found(bytes)));
    assert_eq!(missing, Some(None));
}
on_both!(
    bounded_reads,
    a_bounded_read_refuses_an_object_over_the_limit_without_returning_it,
    fs_blobs(),
    s3_blobs().await
);

/// A tiny valid PNG header followed by filler: enough for the type sniffer.
fn png_bytes(len: usize) -> Vec<u8> {
    let mut bytes = b"\x89PNG\r\n\x1a\n".to_vec();
    bytes.resize(len, 0);
    bytes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_put_to_a_presigned_upload_url_are_read_by_the_job_path_within_the_cap() {
    let blobs = s3_blobs().await;
    let tenant = TenantId::generate();
    let (fits, too_big) = (UploadId::generate(), UploadId::generate());
    let client = reqwest::Client::new();

    let mut urls = Vec::new();
    for (id, len) in [(&fits, 2048), (&too_big, 4096)] {
        let signed = blobs
            .signed_put_url(&id.blob_key(&tenant), Duration::from_secs(300))
            .await
            .unwrap_or_else(|e| panic!("signing an upload: {e}"));
        let put = client
            .put(&signed.url)
            .header("content-type", "image/png")
            .body(png_bytes(len))
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(put.status().is_success(), "PUT answered {}", put.status());
        urls.push(signed);
    }
    let read = fetch::read_upload(blobs.as_ref(), &tenant, &fits, 3000).await;
    let refused = fetch::read_upload(blobs.as_ref(), &tenant, &too_big, 3000).await;
    let other_tenant = fetch::read_upload(blobs.as_ref(), &TenantId::generate(), &fits, 3000).await;

    assert!(urls[0].url.contains("X-Amz-Signature="), "{}", urls[0].url);
    assert!(urls[0].expires_at <= Utc::now() + chrono::Duration::seconds(300));
    let image = read.unwrap_or_else(|e| panic!("upload not readable: {e}"));
    assert_eq!(image.mime_type, "image/png");
    assert_eq!(image.bytes.len(), 2048);
    assert!(matches!(
        refused,
        Err(FetchError::Refused(ErrorCode::PayloadTooLarge, _))
    ));
    assert!(matches!(
        other_tenant,
        Err(FetchError::Refused(ErrorCode::InvalidImageUrl, _))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_slot_on_aws_takes_a_put_and_a_job_naming_it_is_accepted() {
    let (app, _) = aws_app().await;
    let tenant = imagegen::service::admin::create_tenant(&app, "uploader", Plan::default())
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .tenant;

    let ticket = imagegen::service::inputs::create_upload(&app, &tenant.id)
        .await
        .unwrap_or_else(|e| panic!("POST /v1/uploads would fail: {e}"));
    let put = reqwest::Client::new()
        .put(&ticket.upload_url)
        .body(png_bytes(512))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let source =
        fetch::ImageSource::parse(&ticket.input_image_url, false).unwrap_or_else(|e| panic!("{e}"));
    let checked = imagegen::service::inputs::check_source(&app, &tenant.id, &source).await;
    let mut job = job(&tenant.id);
    job.input_image_url = Some(ticket.input_image_url.clone());
    let loaded = imagegen::service::inputs::load_for(&app, &job).await;

    assert!(put.status().is_success(), "PUT answered {}", put.status());
    assert!(checked.is_ok(), "{checked:?}");
    let loaded = loaded
        .unwrap_or_else(|e| panic!("{e:?}"))
        .map(|i| i.bytes.len());
    assert_eq!(loaded, Some(512));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presigned_url_serves_the_image_with_its_content_type() {
    let blobs = s3_blobs().await;
    let bytes = Bytes::from_static(b"\x89PNG\r\n\x1a\npixels");
    blobs
        .put("t/j/0.png", bytes.clone(), "image/png")
        .await
        .unwrap_or_else(|e| panic!("{e}"));

    let signed = blobs
        .signed_url("t/j/0.png", Duration::from_secs(60))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let response = reqwest::get(&signed.url)
        .await
        .unwrap_or_else(|e| panic!("{e}"));

    assert_eq!(response.status(), 200);
    assert!(signed.url.contains("X-Amz-Signature="));
    assert!(signed.url.contains("X-Amz-Expires=60"));
    let content_type = response.headers().get("content-type").cloned();
    assert_eq!(
        content_type.as_ref().and_then(|v| v.to_str().ok()),
        Some("image/png")
    );
    assert_eq!(response.bytes().await.ok(), Some(bytes));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_base_url_gives_plain_urls_under_it() {
    let stack = Stack::new(MAX_RECEIVES).await;
    let blobs = S3BlobStore::new(
        stack.clients.s3.clone(),
        stack.clients.sdk.credentials_provider(),
        stack.settings.bucket.clone(),
        Some("https://cdn.example.test/".into()),
    );

    let signed = blobs
        .signed_url("t/j/0.png", Duration::from_secs(60))
        .await
        .unwrap_or_else(|e| panic!("{e}"));

    assert_eq!(signed.url, "https://cdn.example.test/t/j/0.png");
    assert_eq!(stack.counter.total(), 0, "no AWS call for a public URL");
}

// ---- secrets ----

fn sqlite_secrets() -> Arc<dyn SecretStore> {
    Arc::new(SqliteSecrets::new(db()))
}

async fn aws_secrets() -> Arc<dyn SecretStore> {
    let stack = Stack::new(MAX_RECEIVES).await;
    Arc::new(AwsSecrets::new(
        stack.clients.secrets.clone(),
        stack.settings.secrets_prefix.clone(),
        Duration::from_secs(300),
    ))
}

async fn secret_is_absent_until_put_then_reads_back_its_latest_value(
    secrets: Arc<dyn SecretStore>,
) {
    let name = "webhook/ten_1";

    let before = secrets.get(name).await.unwrap_or_else(|e| panic!("{e}"));
    secrets
        .put(name, &SecretString::from("whsec_one"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    secrets
        .put(name, &SecretString::from("whsec_two"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let after = secrets.get(name).await.ok().flatten();

    assert!(before.is_none());
    assert_eq!(
        after.as_ref().map(|s| s.expose_secret().to_owned()),
        Some("whsec_two".into())
    );
    assert!(
        !format!("{after:?}").contains("whsec_two"),
        "a secret printed"
    );
}
on_both!(
    secrets,
    secret_is_absent_until_put_then_reads_back_its_latest_value,
    sqlite_secrets(),
    aws_secrets().await
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_secret_is_read_from_secrets_manager_once_per_ttl() {
    let stack = Stack::new(MAX_RECEIVES).await;
    let writer = AwsSecrets::new(
        stack.clients.secrets.clone(),
        stack.settings.secrets_prefix.clone(),
        Duration::from_secs(300),
    );
    let reader = AwsSecrets::new(
        stack.clients.secrets.clone(),
        stack.settings.secrets_prefix.clone(),
        Duration::from_millis(300),
    );
    writer
        .put("upstream/key-1", &SecretString::from("v1"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    stack.counter.reset();

    for _ in 0..5 {
        assert!(reader.get("upstream/key-1").await.ok().flatten().is_some());
    }
    let warm_reads = stack.counter.snapshot();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let _ = reader.get("upstream/key-1").await;

    assert_eq!(
        warm_reads.get("Secrets Manager.GetSecretValue").copied(),
        Some(1)
    );
    assert_eq!(stack.counter.total(), 2, "read again once the TTL passed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presigned_url_expiry_never_outlives_the_signing_credentials() {
    let stack = Stack::new(MAX_RECEIVES).await;
    let expiry = std::time::SystemTime::now() + Duration::from_secs(120);
    let short_lived = aws_sdk_s3::config::SharedCredentialsProvider::new(
        aws_sdk_s3::config::Credentials::new("testing", "testing", None, Some(expiry), "role"),
    );
    let config = aws_sdk_s3::config::Builder::from(&stack.clients.sdk)
        .credentials_provider(short_lived.clone())
        .force_path_style(true)
        .build();
    let blobs = S3BlobStore::new(
        aws_sdk_s3::Client::from_conf(config),
        Some(short_lived),
        stack.settings.bucket.clone(),
        None,
    );

    let signed = blobs
        .signed_url("t/j/0.png", Duration::from_secs(3600))
        .await
        .unwrap_or_else(|e| panic!("{e}"));

    let limit = Utc::now() + chrono::Duration::seconds(120);
    assert!(signed.expires_at <= limit, "URL outlives its credentials");
    assert!(signed.expires_at > limit - chrono::Duration::seconds(5));
    assert!(!signed.url.contains("X-Amz-Expires=3600"), "{}", signed.url);
}

// ---- key registry ----

async fn sqlite_registry() -> Arc<dyn KeyRegistry> {
    Arc::new(
        SqliteKeyRegistry::new(db())
            .await
            .unwrap_or_else(|e| panic!("{e}")),
    )
}

async fn dynamo_registry() -> Arc<dyn KeyRegistry> {
    let stack = Stack::new(MAX_RECEIVES).await;
    Arc::new(DynamoKeyRegistry::new(
        stack.clients.dynamo.clone(),
        stack.settings.tables.keys.clone(),
    ))
}

/// Whole seconds, so every adapter stores the time exactly.
fn second() -> DateTime<Utc> {
    DateTime::from_timestamp(Utc::now().timestamp(), 0).unwrap_or_else(Utc::now)
}

fn group(id: &str) -> QuotaGroup {
    QuotaGroup {
        id: QuotaGroupId::parse(id).unwrap_or_else(|e| panic!("{e}")),
        limits: Limits {
            requests_per_minute: Some(60),
            concurrency: Some(4),
        },
        updated_at: second(),
    }
}

fn upstream_key(id: &str, group: &QuotaGroup) -> UpstreamKey {
    UpstreamKey {
        id: UpstreamKeyId::parse(id).unwrap_or_else(|e| panic!("{e}")),
        group: group.id.clone(),
        limits: Limits {
            requests_per_minute: Some(10),
            concurrency: None,
        },
        state: KeyState::Enabled,
        disabled_reason: None,
        label: Some("first".into()),
        created_at: second(),
        updated_at: second(),
    }
}

async fn keys_and_groups_are_put_read_listed_replaced_and_deleted(registry: Arc<dyn KeyRegistry>) {
    let (project_b, project_a) = (group("project-b"), group("project-a"));
    let key_2 = upstream_key("key-2", &project_a);
    let key_1 = upstream_key("key-1", &project_b);
    for g in [&project_b, &project_a] {
        registry
            .put_group(g)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }
    for k in [&key_2, &key_1] {
        registry.put_key(k).await.unwrap_or_else(|e| panic!("{e}"));
    }
    let mut disabled = key_2.clone();
    disabled.state = KeyState::Disabled;
    disabled.disabled_reason = Some("rejected by the upstream".into());

    let read_group = registry.get_group(&project_a.id).await.ok().flatten();
    let read_key = registry.get_key(&key_1.id).await.ok().flatten();
    let groups = registry
        .list_groups()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let keys = registry.list_keys().await.unwrap_or_else(|e| panic!("{e}"));
    registry
        .put_key(&disabled)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let replaced = registry.get_key(&key_2.id).await.ok().flatten();
    let deleted_key = registry.delete_key(&key_1.id).await.ok();
    let deleted_again = registry.delete_key(&key_1.id).await.ok();
    let deleted_group = registry.delete_group(&project_b.id).await.ok();
    let missing_group = registry
        .delete_group(&QuotaGroupId::parse("nobody").unwrap_or_else(|e| panic!("{e}")))
        .await
        .ok();

    assert_eq!(read_group, Some(project_a.clone()));
    assert_eq!(read_key, Some(key_1.clone()));
    assert_eq!(
        groups,
        vec![project_a.clone(), project_b.clone()],
        "groups by id"
    );
    assert_eq!(keys, vec![key_1.clone(), key_2.clone()], "keys by id");
    assert_eq!(replaced, Some(disabled.clone()));
    assert_eq!(deleted_key, Some(true));
    assert_eq!(deleted_again, Some(false));
    assert_eq!(deleted_group, Some(true));
    assert_eq!(missing_group, Some(false));
    assert_eq!(registry.get_key(&key_1.id).await.ok(), Some(None));
    assert_eq!(registry.list_keys().await.ok(), Some(vec![disabled]));
    assert_eq!(registry.list_groups().await.ok(), Some(vec![project_a]));
}
on_both!(
    key_registry,
    keys_and_groups_are_put_read_listed_replaced_and_deleted,
    sqlite_registry().await,
    dynamo_registry().await
);

// ---- delivery log ----

fn sqlite_deliveries() -> Arc<dyn DeliveryLog> {
    Arc::new(SqliteDeliveryLog::new(db()))
}

async fn dynamo_deliveries() -> Arc<dyn DeliveryLog> {
    let stack = Stack::new(MAX_RECEIVES).await;
    Arc::new(DynamoDeliveryLog::new(
        stack.clients.dynamo.clone(),
        stack.settings.tables.deliveries.clone(),
    ))
}

fn event(job: &Job, kind: WebhookEvent, name: &str, at: DateTime<Utc>) -> WebhookEventRecord {
    WebhookEventRecord {
        event_id: format!("evt_{}_{name}", job.id),
        job_id: job.id.clone(),
        tenant_id: job.tenant_id.clone(),
        event_type: kind,
        body: format!(r#"{{"type":"{name}"}}"#),
        created_at: at,
    }
}

fn attempt(
    event: &WebhookEventRecord,
    round: u32,
    n: u32,
    outcome: AttemptOutcome,
) -> DeliveryAttempt {
    DeliveryAttempt {
        event_id: event.event_id.clone(),
        job_id: event.job_id.clone(),
        round,
        attempt: n,
        at: event.created_at + chrono::Duration::seconds(i64::from(round * 10 + n)),
        status_code: (outcome != AttemptOutcome::Retrying).then_some(204),
        latency_ms: 12,
        error: (outcome == AttemptOutcome::Retrying).then(|| "receiver answered 503".into()),
        outcome,
        next_attempt_at: None,
    }
}

async fn events_and_attempts_read_back_per_job_in_order_once_each(log: Arc<dyn DeliveryLog>) {
    let job = job(&TenantId::generate());
    let other = job_for_another_tenant();
    let at = second();
    let canceled = event(&job, WebhookEvent::JobCanceled, "canceled", at);
    let mut later = event(&job, WebhookEvent::JobSucceeded, "succeeded", at);
    later.created_at = at + chrono::Duration::seconds(60);
    let first = attempt(&canceled, 0, 1, AttemptOutcome::Retrying);
    let second_try = attempt(&canceled, 0, 2, AttemptOutcome::Delivered);
    let replay = attempt(&canceled, 1, 1, AttemptOutcome::Delivered);
    let unrelated = event(&other, WebhookEvent::JobFailed, "failed", at);

    for e in [&later, &canceled, &unrelated] {
        log.record_event(e).await.unwrap_or_else(|e| panic!("{e}"));
    }
    let mut changed = canceled.clone();
    changed.body = "changed".into();
    let kept = log
        .record_event(&changed)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        kept, canceled.body,
        "a second record answers with the first body"
    );
    for a in [&replay, &second_try, &first, &first] {
        log.append(a).await.unwrap_or_else(|e| panic!("{e}"));
    }
    let read = log.for_job(&job.id).await.unwrap_or_else(|e| panic!("{e}"));
    let nothing = log
        .for_job(&imagegen::domain::JobId::generate())
        .await
        .unwrap_or_else(|e| panic!("{e}"));

    let events: Vec<_> = read.iter().map(|d| d.event.clone()).collect();
    assert_eq!(
        events,
        vec![canceled.clone(), later],
        "oldest first, first write kept"
    );
    assert_eq!(
        read[0].attempts,
        vec![first, second_try, replay],
        "in order, once each"
    );
    assert!(read[1].attempts.is_empty());
    assert!(nothing.is_empty());
}
on_both!(
    delivery_log,
    events_and_attempts_read_back_per_job_in_order_once_each,
    sqlite_deliveries(),
    dynamo_deliveries().await
);

fn job_for_another_tenant() -> Job {
    job(&TenantId::generate())
}

// ---- dead letters and the delivery log ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configured_dead_letter_url_is_sent_to_without_looking_it_up() {
    let stack = Stack::new(MAX_RECEIVES).await;
    let mut urls = stack.queues();
    urls.webhook_dead_letter = Some(format!("{}-dlq", urls.webhook));
    let queue = SqsQueue::new(stack.clients.sqs.clone(), urls);
    stack.counter.reset();

    queue
        .send_to_dead_letter(QueueName::Webhook, "failed for good")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let calls = stack.counter.snapshot();
    let dead = queue
        .dead_letters(QueueName::Webhook)
        .await
        .unwrap_or_else(|e| panic!("{e}"));

    assert_eq!(
        calls.values().sum::<u32>(),
        1,
        "one send, no lookups: {calls:?}"
    );
    assert!(
        calls.keys().all(|op| op.ends_with(".SendMessage")),
        "{calls:?}"
    );
    assert_eq!(dead, vec!["failed for good".to_owned()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_log_items_carry_a_ttl_so_dynamodb_expires_them() {
    let stack = Stack::new(MAX_RECEIVES).await;
    let table = stack.tables().deliveries;
    let log = DynamoDeliveryLog::new(stack.clients.dynamo.clone(), table.clone())
        .with_ttl(Duration::from_secs(24 * 3600));
    let tenant = TenantId::new("ten_ttl");
    let record = WebhookEventRecord {
        event_id: "evt_1".into(),
        job_id: job(&tenant).id,
        tenant_id: tenant,
        event_type: WebhookEvent::JobSucceeded,
        body: "{}".into(),
        created_at: Utc::now(),
    };

    log.record_event(&record)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let items = stack
        .clients
        .dynamo
        .scan()
        .table_name(table)
        .send()
        .await
        .unwrap_or_else(|e| panic!("scan: {e:?}"))
        .items
        .unwrap_or_default();

    let expected = Utc::now().timestamp() + 24 * 3600;
    let ttls: Vec<i64> = items
        .iter()
        .filter_map(|item| item.get("ttl")?.as_n().ok()?.parse().ok())
        .collect();
    assert_eq!(ttls.len(), 1, "{items:?}");
    assert!(
        (ttls[0] - expected).abs() < 60,
        "ttl {} vs {expected}",
        ttls[0]
    );
}
