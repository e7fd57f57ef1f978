//! Fault injection: the upstream throttling, failing and hanging, messages delivered twice or
//! concurrently, a worker dying mid-job, the queue refusing a send, the limiter unreachable,
//! poison messages. No job is lost, run twice to two results, or charged twice.

use std::sync::atomic::Ordering;
use std::time::Duration;

use chrono::Utc;
use imagegen::domain::{IdempotencyKey, Job, JobId, JobStatus, Mode, Plan, Prompt, Tenant};
use imagegen::ports::{Queue, QueueConsumer, QueueName};
use imagegen::service::messages::GenerateMessage;
use imagegen::service::reconcile::reconcile;
use imagegen::service::submit::{submit, Deadline, Submission};
use imagegen_tests::harness::{fast_settings, refused, server_error, throttled, Harness, Step};

fn plan() -> Plan {
    Plan {
        requests_per_minute: 1000,
        daily_cap: 1000,
        max_concurrency: 10,
    }
}

fn submission(prompt: &str) -> Submission {
    Submission {
        prompt: Prompt::parse(prompt).expect("prompt"),
        mode: Mode::Draft,
        input_image_url: None,
        deadline: None,
    }
}

async fn run_to_end(h: &Harness, id: &JobId) -> Job {
    let store = h.app.store.clone();
    let finished = h
        .run_until(Duration::from_secs(15), || {
            let store = store.clone();
            let id = id.clone();
            async move {
                let job = store.get_job(&id).await.ok().flatten();
                job.is_some_and(|j| j.status.is_terminal())
            }
        })
        .await;
    let job = h.job(id).await;
    assert!(finished, "job never ended: {job:?}");
    job
}

async fn units(h: &Harness, tenant: &Tenant) -> u64 {
    h.app
        .store
        .usage(&tenant.id, Utc::now().date_naive())
        .await
        .expect("usage")
}

async fn statuses(h: &Harness, id: &JobId) -> Vec<JobStatus> {
    let events = h.app.store.job_events(id).await.expect("events");
    events.into_iter().map(|e| e.to).collect()
}

#[tokio::test]
async fn a_throttle_storm_is_retried_until_the_upstream_recovers() {
    let h = Harness::new(fast_settings()).await;
    let tenant = h.tenant(plan()).await;
    h.provider
        .push([throttled(None), throttled(None), server_error()]);
    let id = h.submit_draft(&tenant, "fault test").await;

    let done = run_to_end(&h, &id).await;

    assert_eq!(done.status, JobStatus::Succeeded);
    assert_eq!(done.attempts, 4);
    assert_eq!(
        statuses(&h, &id)
            .await
            .iter()
            .filter(|s| **s == JobStatus::Retrying)
            .count(),
        3
    );
    assert_eq!(units(&h, &tenant).await, 1, "a success keeps its unit");
}

#[tokio::test]
async fn endless_throttling_fails_after_max_attempts_with_the_last_error_and_refunds() {
    let h = Harness::new(fast_settings()).await;
    let tenant = h.tenant(plan()).await;
    h.provider.push(std::iter::repeat_n(throttled(None), 10));
    let id = h.submit_draft(&tenant, "fault test").await;

    let done = run_to_end(&h, &id).await;

    assert_eq!(done.status, JobStatus::Failed);
    assert_eq!(done.attempts, 4);
    assert_eq!(h.provider.calls.load(Ordering::SeqCst), 4);
    let error = done.error.expect("error");
    assert_eq!(error.code, imagegen::domain::ErrorCode::UpstreamRateLimited);
    assert_eq!(units(&h, &tenant).await, 0);
}

#[tokio::test]
async fn a_content_refusal_is_final_at_once() {
    let h = Harness::new(fast_settings()).await;
    let tenant = h.tenant(plan()).await;
    h.provider.push([refused()]);
    let id = h.submit_draft(&tenant, "fault test").await;

    let done = run_to_end(&h, &id).await;

    assert_eq!(done.status, JobStatus::Failed);
    assert_eq!(done.attempts, 1);
    assert_eq!(h.provider.calls.load(Ordering::SeqCst), 1);
    assert_eq!(units(&h, &tenant).await, 0);
}

#[tokio::test]
async fn a_hang_past_the_timeout_becomes_a_retryable_timeout() {
    let h = Harness::new(fast_settings()).await;
    let tenant = h.tenant(plan()).await;
    h.provider.push([Step::Hang]);
    let id = h.submit_draft(&tenant, "fault test").await;

    let done = run_to_end(&h, &id).await;

    assert_eq!(done.status, JobStatus::Succeeded);
    assert_eq!(done.attempts, 2);
    assert!(statuses(&h, &id).await.contains(&JobStatus::Retrying));
}

#[tokio::test]
async fn an_upstream_retry_hint_longer_than_the_backoff_is_honoured() {
    let h = Harness::new(fast_settings()).await;
    let tenant = h.tenant(plan()).await;
    h.provider
        .push([throttled(Some(Duration::from_millis(600)))]);
    let id = h.submit_draft(&tenant, "fault test").await;

    h.pump(QueueName::Generate).await;
    let retrying = h.job(&id).await;

    assert_eq!(retrying.status, JobStatus::Retrying);
    let wait = retrying.not_before.expect("not_before") - retrying.updated_at;
    assert!(
        wait >= chrono::Duration::milliseconds(600),
        "waited only {wait}"
    );
}

#[tokio::test]
async fn concurrent_deliveries_of_one_message_run_the_job_once() {
    let h = Harness::new(fast_settings()).await;
    let tenant = h.tenant(plan()).await;
    let id = h.submit_draft(&tenant, "fault test").await;
    let copy = serde_json::to_string(&GenerateMessage {
        job_id: id.clone(),
        tenant_id: tenant.id.clone(),
    })
    .expect("json");
    h.queue
        .send(QueueName::Generate, &copy, Duration::ZERO)
        .await
        .expect("send");

    let first = h
        .queue
        .receive(QueueName::Generate, 1, h.visibility)
        .await
        .expect("receive");
    let second = h
        .queue
        .receive(QueueName::Generate, 1, h.visibility)
        .await
        .expect("receive");
    let (a, b) = tokio::join!(
        imagegen::handlers::generate_batch(
            &h.app,
            imagegen_local::sqs_event(QueueName::Generate, &first)
        ),
        imagegen::handlers::generate_batch(
            &h.app,
            imagegen_local::sqs_event(QueueName::Generate, &second)
        ),
    );
    for m in first.iter().chain(&second) {
        h.queue
            .delete(QueueName::Generate, &m.receipt_handle)
            .await
            .expect("delete");
    }
    assert!(a.batch_item_failures.is_empty() && b.batch_item_failures.is_empty());
    let done = run_to_end(&h, &id).await;

    assert_eq!(done.status, JobStatus::Succeeded);
    assert_eq!(h.provider.calls.load(Ordering::SeqCst), 1);
    assert_eq!(h.blobs.puts.load(Ordering::SeqCst), 1);
    assert_eq!(done.result_keys.len(), 1);
}

#[tokio::test]
async fn a_message_for_a_finished_job_is_acknowledged_and_dropped() {
    let h = Harness::new(fast_settings()).await;
    let tenant = h.tenant(plan()).await;
    let id = h.submit_draft(&tenant, "fault test").await;
    let done = run_to_end(&h, &id).await;
    let late = serde_json::to_string(&GenerateMessage {
        job_id: id.clone(),
        tenant_id: tenant.id.clone(),
    })
    .expect("json");
    h.queue
        .send(QueueName::Generate, &late, Duration::ZERO)
        .await
        .expect("send");

    h.pump(QueueName::Generate).await;

    assert_eq!(h.provider.calls.load(Ordering::SeqCst), 1);
    assert_eq!(h.job(&id).await.version, done.version);
    assert_eq!(
        h.pump(QueueName::Generate).await,
        0,
        "the message must be gone"
    );
    assert!(h
        .queue
        .dead_letters(QueueName::Generate)
        .await
        .expect("dlq")
        .is_empty());
}

#[tokio::test]
async fn a_worker_killed_after_the_upstream_answered_is_taken_over_once_its_lease_ends() {
    let h = Harness::new(fast_settings()).await;
    let tenant = h.tenant(plan()).await;
    let id = h.submit_draft(&tenant, "fault test").await;
    h.blobs.hang.store(true, Ordering::SeqCst);

    let app = h.app.clone();
    let batch = h
        .queue
        .receive(QueueName::Generate, 1, h.visibility)
        .await
        .expect("receive");
    let doomed = tokio::spawn(async move {
        imagegen::handlers::generate_batch(
            &app,
            imagegen_local::sqs_event(QueueName::Generate, &batch),
        )
        .await
    });
    h.blobs.reached.notified().await;
    doomed.abort();
    let orphan = h.job(&id).await;
    assert_eq!(orphan.status, JobStatus::Running);

    let done = run_to_end(&h, &id).await;

    assert_eq!(done.status, JobStatus::Succeeded);
    assert_eq!(done.attempts, 2, "the takeover counts a new attempt");
    assert_eq!(h.provider.calls.load(Ordering::SeqCst), 2);
    assert_eq!(h.blobs.puts.load(Ordering::SeqCst), 1, "one stored result");
    assert_eq!(
        statuses(&h, &id).await,
        vec![
            JobStatus::Queued,
            JobStatus::Running,
            JobStatus::Running,
            JobStatus::Succeeded
        ]
    );
}

/// Deliver generate messages until one reaches the blob store, then kill that worker there,
/// as a crash or a function timeout would: the job stays RUNNING until its lease ends.
async fn kill_the_worker_mid_attempt(h: &Harness) {
    h.blobs.hang.store(true, Ordering::SeqCst);
    loop {
        let batch = h
            .queue
            .receive(QueueName::Generate, 10, h.visibility)
            .await
            .expect("receive");
        if batch.is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        }
        let app = h.app.clone();
        let event = imagegen_local::sqs_event(QueueName::Generate, &batch);
        let mut worker =
            tokio::spawn(async move { imagegen::handlers::generate_batch(&app, event).await });
        tokio::select! {
            () = h.blobs.reached.notified() => {
                worker.abort();
                return;
            }
            response = &mut worker => {
                let response = response.expect("worker");
                for m in &batch {
                    let failed = response
                        .batch_item_failures
                        .iter()
                        .any(|f| f.item_identifier == m.message_id);
                    if !failed {
                        h.queue
                            .delete(QueueName::Generate, &m.receipt_handle)
                            .await
                            .expect("delete");
                    }
                }
            }
        }
    }
}

#[tokio::test]
async fn a_job_whose_worker_dies_on_every_attempt_fails_after_max_attempts_without_more_calls() {
    let mut settings = fast_settings();
    settings.max_attempts = 2;
    let h = Harness::new(settings).await;
    let tenant = h.tenant(plan()).await;
    let id = h.submit_draft(&tenant, "fault test").await;

    for _ in 0..2 {
        kill_the_worker_mid_attempt(&h).await;
    }
    let done = run_to_end(&h, &id).await;

    assert_eq!(done.status, JobStatus::Failed);
    assert_eq!(done.attempts, 2);
    assert_eq!(
        done.error.map(|e| e.code),
        Some(imagegen::domain::ErrorCode::Poison)
    );
    assert_eq!(h.provider.calls.load(Ordering::SeqCst), 2, "no third call");
    assert_eq!(units(&h, &tenant).await, 0, "a failed job is refunded");
}

#[tokio::test]
async fn a_failed_queue_send_after_the_job_write_is_recovered_by_the_reconciler() {
    let h = Harness::new(fast_settings()).await;
    let tenant = h.tenant(plan()).await;
    h.flaky_queue.failing.store(true, Ordering::SeqCst);
    let id = h.submit_draft(&tenant, "fault test").await;
    h.flaky_queue.failing.store(false, Ordering::SeqCst);
    assert_eq!(h.pump(QueueName::Generate).await, 0, "nothing was queued");

    let requeued = reconcile(&h.app, Duration::ZERO, 100)
        .await
        .expect("reconcile");
    assert_eq!(requeued, 1);
    let done = run_to_end(&h, &id).await;

    assert_eq!(requeued, 1);
    assert_eq!(done.status, JobStatus::Succeeded);
}

#[tokio::test]
async fn an_unreachable_limiter_pauses_dispatch_and_jobs_wait_instead_of_failing() {
    let h = Harness::new(fast_settings()).await;
    let tenant = h.tenant(plan()).await;
    h.limiter.down.store(true, Ordering::SeqCst);
    let id = h.submit_draft(&tenant, "fault test").await;

    for _ in 0..5 {
        h.pump(QueueName::Generate).await;
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    let waiting = h.job(&id).await;
    h.limiter.down.store(false, Ordering::SeqCst);
    let done = run_to_end(&h, &id).await;

    assert_eq!(waiting.status, JobStatus::Queued);
    assert_eq!(waiting.attempts, 0);
    assert_eq!(h.provider.calls.load(Ordering::SeqCst), 1);
    assert_eq!(done.status, JobStatus::Succeeded);
}

#[tokio::test]
async fn a_denied_job_is_redelayed_without_counting_attempts_or_receives() {
    let h = Harness::new(fast_settings()).await;
    let tenant = h.tenant(plan()).await;
    *h.limiter.deny_for.lock().expect("deny") = Some(Duration::from_millis(20));
    let id = h.submit_draft(&tenant, "fault test").await;

    let mut most_receives = 0;
    for _ in 0..10 {
        let batch = h
            .queue
            .receive(QueueName::Generate, 10, h.visibility)
            .await
            .expect("receive");
        most_receives = batch
            .iter()
            .map(|m| m.receive_count)
            .max()
            .unwrap_or(0)
            .max(most_receives);
        let response = imagegen::handlers::generate_batch(
            &h.app,
            imagegen_local::sqs_event(QueueName::Generate, &batch),
        )
        .await;
        assert!(response.batch_item_failures.is_empty());
        for m in &batch {
            h.queue
                .delete(QueueName::Generate, &m.receipt_handle)
                .await
                .expect("delete");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let waiting = h.job(&id).await;
    *h.limiter.deny_for.lock().expect("deny") = None;
    let done = run_to_end(&h, &id).await;

    assert_eq!(waiting.attempts, 0);
    assert_eq!(most_receives, 1, "every wait must use a fresh message");
    assert!(h
        .queue
        .dead_letters(QueueName::Generate)
        .await
        .expect("dlq")
        .is_empty());
    assert_eq!(done.attempts, 1);
}

#[tokio::test]
async fn a_job_kept_waiting_for_capacity_across_reconciles_keeps_one_message() {
    let h = Harness::new(fast_settings()).await;
    let tenant = h.tenant(plan()).await;
    *h.limiter.deny_for.lock().expect("deny") = Some(Duration::from_millis(100));
    let id = h.submit_draft(&tenant, "fault test").await;

    for _ in 0..5 {
        h.pump(QueueName::Generate).await;
        reconcile(&h.app, Duration::ZERO, 100)
            .await
            .expect("reconcile");
        tokio::time::sleep(Duration::from_millis(120)).await;
    }
    let live = h
        .queue
        .receive(QueueName::Generate, 10, h.visibility)
        .await
        .expect("receive");
    let waiting = h.job(&id).await;
    *h.limiter.deny_for.lock().expect("deny") = None;
    let done = run_to_end(&h, &id).await;

    assert_eq!(
        live.len(),
        1,
        "the job must have one message, not {}",
        live.len()
    );
    assert_eq!(waiting.status, JobStatus::Queued);
    assert_eq!(waiting.attempts, 0);
    assert_eq!(done.status, JobStatus::Succeeded);
    assert_eq!(h.provider.calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn an_unreadable_message_ends_in_the_dead_letter_queue() {
    let h = Harness::new(fast_settings()).await;
    h.queue
        .send(QueueName::Generate, "{not json", Duration::ZERO)
        .await
        .expect("send");

    for _ in 0..8 {
        h.pump(QueueName::Generate).await;
        tokio::time::sleep(h.visibility + Duration::from_millis(20)).await;
    }

    assert_eq!(
        h.queue
            .dead_letters(QueueName::Generate)
            .await
            .expect("dlq"),
        vec!["{not json"]
    );
}

#[tokio::test]
async fn a_job_whose_message_keeps_failing_inside_the_service_ends_failed_as_poison() {
    let h = Harness::new(fast_settings()).await;
    let tenant = h.tenant(plan()).await;
    let id = h.submit_draft(&tenant, "fault test").await;
    // The job must wait, but the wait cannot be queued: every step fails inside the service.
    *h.limiter.deny_for.lock().expect("deny") = Some(Duration::from_millis(5));
    h.flaky_queue.failing.store(true, Ordering::SeqCst);

    for _ in 0..8 {
        h.pump(QueueName::Generate).await;
        tokio::time::sleep(h.visibility + Duration::from_millis(20)).await;
    }
    let failed = h.job(&id).await;

    assert_eq!(failed.status, JobStatus::Failed);
    assert_eq!(
        failed.error.map(|e| e.code),
        Some(imagegen::domain::ErrorCode::Poison)
    );
    assert_eq!(units(&h, &tenant).await, 0);
    assert_eq!(
        h.queue
            .dead_letters(QueueName::Generate)
            .await
            .expect("dlq")
            .len(),
        1
    );
}

#[tokio::test]
async fn a_poisoned_message_leaves_alone_a_job_another_worker_is_running() {
    let h = Harness::new(fast_settings()).await;
    let tenant = h.tenant(plan()).await;
    let id = h.submit_draft(&tenant, "fault test").await;
    let queued = h.job(&id).await;
    let now = Utc::now();
    let running = queued
        .start("other-worker", now + chrono::Duration::seconds(60), now)
        .expect("start");
    h.app
        .store
        .update_job(&queued, &running)
        .await
        .expect("write");
    // The message cannot be re-delayed behind the lease: it fails until it is poison.
    h.flaky_queue.failing.store(true, Ordering::SeqCst);

    for _ in 0..6 {
        h.pump(QueueName::Generate).await;
        tokio::time::sleep(h.visibility + Duration::from_millis(20)).await;
    }
    let after = h.job(&id).await;

    assert_eq!(after.status, JobStatus::Running);
    assert_eq!(after.lease_owner.as_deref(), Some("other-worker"));
    assert_eq!(units(&h, &tenant).await, 1, "nothing was refunded");
}

#[tokio::test]
async fn canceling_a_running_job_discards_its_result_and_refunds() {
    let h = Harness::new(fast_settings()).await;
    let tenant = h.tenant(plan()).await;
    h.provider.push([Step::Hang]);
    let id = h.submit_draft(&tenant, "fault test").await;
    let app = h.app.clone();
    let batch = h
        .queue
        .receive(QueueName::Generate, 1, h.visibility)
        .await
        .expect("receive");
    let worker = tokio::spawn(async move {
        imagegen::handlers::generate_batch(
            &app,
            imagegen_local::sqs_event(QueueName::Generate, &batch),
        )
        .await
    });
    while h.job(&id).await.status != JobStatus::Running {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    let asked = imagegen::service::jobs::cancel(&h.app, h.job(&id).await)
        .await
        .expect("cancel");
    worker.await.expect("worker");
    let done = run_to_end(&h, &id).await;

    assert!(asked.cancel_requested);
    assert_eq!(asked.status, JobStatus::Running);
    assert_eq!(done.status, JobStatus::Canceled);
    assert!(done.result_keys.is_empty());
    assert_eq!(units(&h, &tenant).await, 0);
}

#[tokio::test]
async fn a_job_not_started_by_its_deadline_fails_as_expired() {
    let h = Harness::new(fast_settings()).await;
    let tenant = h.tenant(plan()).await;
    *h.limiter.deny_for.lock().expect("deny") = Some(Duration::from_secs(5));
    let mut late = submission("too late");
    late.deadline = Some(Deadline::after(Duration::from_millis(100), Utc::now()));
    let id = submit(&h.app, &tenant, late, None)
        .await
        .expect("submit")
        .job
        .id;

    let done = run_to_end(&h, &id).await;

    assert_eq!(done.status, JobStatus::Failed);
    assert_eq!(
        done.error.map(|e| e.code),
        Some(imagegen::domain::ErrorCode::Expired)
    );
    assert_eq!(h.provider.calls.load(Ordering::SeqCst), 0);
    assert_eq!(units(&h, &tenant).await, 0);
}

#[tokio::test]
async fn twenty_concurrent_submits_with_one_key_make_one_job_and_one_message() {
    let h = Harness::new(fast_settings()).await;
    let tenant = h.tenant(plan()).await;
    let key = IdempotencyKey::parse("same-key").expect("key");

    let attempts = (0..20).map(|_| submit(&h.app, &tenant, submission("once"), Some(key.clone())));
    let results = futures_join_all(attempts).await;

    let ids: std::collections::HashSet<String> = results
        .into_iter()
        .map(|r| r.expect("no error").job.id.to_string())
        .collect();
    assert_eq!(ids.len(), 1);
    assert_eq!(h.flaky_queue.sends.load(Ordering::SeqCst), 1);
    assert_eq!(units(&h, &tenant).await, 1);
}

async fn futures_join_all<F: std::future::Future>(
    futures: impl Iterator<Item = F>,
) -> Vec<F::Output> {
    let mut set = Vec::new();
    for f in futures {
        set.push(f);
    }
    let mut out = Vec::with_capacity(set.len());
    let handles: Vec<_> = set.into_iter().map(Box::pin).collect();
    // Poll them together so the writes really race.
    let joined = join_vec(handles).await;
    out.extend(joined);
    out
}

async fn join_vec<F: std::future::Future + Unpin>(mut futures: Vec<F>) -> Vec<F::Output> {
    use std::task::Poll;
    let mut results: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (i, f) in futures.iter_mut().enumerate() {
            if results[i].is_none() {
                match std::pin::Pin::new(f).poll(cx) {
                    Poll::Ready(v) => results[i] = Some(v),
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await;
    results.into_iter().map(|r| r.expect("ready")).collect()
}

#[tokio::test]
async fn with_redis_gone_submissions_are_still_accepted_and_jobs_wait_for_dispatch() {
    use imagegen::limiter::redis_server::LocalRedisServer;
    use imagegen::limiter::{KeyPool, LimiterSettings, RedisLimiter, RedisSettings};

    let mut h = Harness::new(fast_settings()).await;
    let server = LocalRedisServer::start(&[]).expect("redis-server");
    let pool = std::sync::Arc::new(KeyPool::new(
        h.app.keys.clone(),
        h.app.secrets.clone(),
        Duration::from_secs(60),
    ));
    let mut redis = RedisSettings::new(server.url().into());
    redis.timeout = Duration::from_millis(300);
    let limiter = RedisLimiter::connect(LimiterSettings::default(), redis, pool)
        .await
        .expect("connect");
    h.app.limiter = std::sync::Arc::new(limiter);
    let tenant = h.tenant(plan()).await;
    drop(server);

    let id = h.submit_draft(&tenant, "fault test").await;
    for _ in 0..3 {
        h.pump(QueueName::Generate).await;
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    let waiting = h.job(&id).await;

    assert_eq!(waiting.status, JobStatus::Queued);
    assert_eq!(waiting.attempts, 0);
    assert_eq!(h.provider.calls.load(Ordering::SeqCst), 0);
    assert!(h
        .queue
        .dead_letters(QueueName::Generate)
        .await
        .expect("dlq")
        .is_empty());
}

/// A receiver that notes each request as it arrives and answers 204 only after `delay`, so a
/// test can act while a delivery is in flight.
async fn slow_receiver(
    delay: Duration,
) -> (
    String,
    std::sync::Arc<std::sync::Mutex<Vec<(String, bytes::Bytes)>>>,
) {
    use axum::extract::State;
    use std::sync::{Arc, Mutex};

    type Seen = Arc<Mutex<Vec<(String, bytes::Bytes)>>>;
    let seen: Seen = Arc::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}/hooks", listener.local_addr().expect("addr"));
    let app = axum::Router::new()
        .route(
            "/hooks",
            axum::routing::post(
                move |State(seen): State<Seen>,
                      headers: axum::http::HeaderMap,
                      body: bytes::Bytes| async move {
                    let id = headers
                        .get("webhook-id")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_owned();
                    seen.lock().expect("seen").push((id, body));
                    tokio::time::sleep(delay).await;
                    axum::http::StatusCode::NO_CONTENT
                },
            ),
        )
        .with_state(seen.clone());
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (url, seen)
}

#[tokio::test]
async fn a_notice_queued_twice_reaches_the_receiver_with_one_id_and_identical_bytes() {
    use imagegen::domain::{WebhookEvent, WebhookUrl};
    use imagegen::service::webhooks::{configure, EndpointSettings};

    let h = Harness::new(fast_settings()).await;
    let tenant = h.tenant(plan()).await;
    let id = h.submit_draft(&tenant, "fault test").await;
    let done = run_to_end(&h, &id).await;
    let (url, seen) = slow_receiver(Duration::from_millis(300)).await;
    configure(
        &h.app,
        &tenant.id,
        EndpointSettings {
            url: WebhookUrl::parse(&url, true).expect("url"),
            events: vec![WebhookEvent::JobSucceeded],
            enabled: true,
        },
    )
    .await
    .expect("webhook");
    // A repeated generate step queues the notice again, its body made a little later.
    imagegen::service::generate::notify(&h.app, &done)
        .await
        .expect("notify");
    tokio::time::sleep(Duration::from_millis(50)).await;
    imagegen::service::generate::notify(&h.app, &done)
        .await
        .expect("notify");
    let copies = h
        .queue
        .receive(QueueName::Webhook, 10, Duration::from_secs(30))
        .await
        .expect("receive");
    assert_eq!(copies.len(), 2);

    let app = h.app.clone();
    let first = imagegen_local::sqs_event(QueueName::Webhook, &copies[..1]);
    let in_flight =
        tokio::spawn(async move { imagegen::handlers::webhook_batch(&app, first).await });
    while seen.lock().expect("seen").is_empty() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let second = imagegen_local::sqs_event(QueueName::Webhook, &copies[1..]);
    imagegen::handlers::webhook_batch(&h.app, second).await;
    in_flight.await.expect("first delivery");

    let seen = seen.lock().expect("seen").clone();
    assert_eq!(seen.len(), 2, "both copies were sent");
    assert_eq!(seen[0].0, seen[1].0, "one event id");
    assert_eq!(seen[0].1, seen[1].1, "the same bytes under one id");
}

#[tokio::test]
async fn finalizing_a_draft_again_after_its_idempotency_record_expired_returns_the_same_job() {
    let mut settings = fast_settings();
    settings.idempotency_ttl = Duration::ZERO;
    let h = Harness::new(settings).await;
    let tenant = h.tenant(plan()).await;
    let id = h.submit_draft(&tenant, "fault test").await;
    let draft = run_to_end(&h, &id).await;

    let first = imagegen::service::finalize::finalize(&h.app, &tenant, &draft)
        .await
        .expect("finalize");
    let draft = h.job(&id).await;
    let again = imagegen::service::finalize::finalize(&h.app, &tenant, &draft)
        .await
        .expect("finalize again");

    assert!(first.created);
    assert!(!again.created, "no second final job");
    assert_eq!(first.job.id, again.job.id);
    assert_eq!(draft.final_job_id.as_ref(), Some(&first.job.id));
    assert_eq!(units(&h, &tenant).await, 2, "the draft and one final job");
}
