//! Dispatch against the tenant's plan and the job's state: a tenant at its concurrency waits
//! for a slot, and a job canceled between attempts is never dispatched again.
//!
//! Run with `cargo test -p imagegen-tests --test dispatch`.

use std::sync::atomic::Ordering;
use std::time::Duration;

use chrono::Utc;
use imagegen::domain::{Job, JobId, JobStatus, Plan};
use imagegen::ports::{QueueConsumer, QueueName};
use imagegen_tests::harness::{fast_settings, server_error, Harness, Step};

fn plan(max_concurrency: u32) -> Plan {
    Plan {
        requests_per_minute: 1000,
        daily_cap: 1000,
        max_concurrency,
    }
}

/// Receive one generate message and hand it to the handler, as one Lambda invocation would.
async fn dispatch_one(h: &Harness) -> tokio::task::JoinHandle<()> {
    let batch = h
        .queue
        .receive(QueueName::Generate, 1, h.visibility)
        .await
        .expect("receive");
    assert_eq!(batch.len(), 1, "one message is waiting");
    let app = h.app.clone();
    tokio::spawn(async move {
        imagegen::handlers::generate_batch(
            &app,
            imagegen_local::sqs_event(QueueName::Generate, &batch),
        )
        .await;
    })
}

async fn until_terminal(h: &Harness, ids: &[JobId]) -> Vec<Job> {
    let store = h.app.store.clone();
    let finished = h
        .run_until(Duration::from_secs(15), || {
            let store = store.clone();
            let ids = ids.to_vec();
            async move {
                for id in &ids {
                    let job = store.get_job(id).await.ok().flatten();
                    if !job.is_some_and(|j| j.status.is_terminal()) {
                        return false;
                    }
                }
                true
            }
        })
        .await;
    assert!(finished, "jobs never ended");
    let mut jobs = Vec::new();
    for id in ids {
        jobs.push(h.job(id).await);
    }
    jobs
}

#[tokio::test]
async fn a_tenant_at_its_max_concurrency_waits_for_a_slot_without_spending_an_attempt() {
    let h = Harness::new(fast_settings()).await;
    let tenant = h.tenant(plan(1)).await;
    h.provider.push([Step::Hang]);
    let first = h.submit_draft(&tenant, "first").await;
    let second = h.submit_draft(&tenant, "second").await;

    let running = dispatch_one(&h).await;
    let mut waited = 0;
    loop {
        let a = h.job(&first).await.status;
        let b = h.job(&second).await.status;
        if a == JobStatus::Running || b == JobStatus::Running {
            break;
        }
        assert!(waited < 400, "no job started");
        waited += 1;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (busy, other) = if h.job(&first).await.status == JobStatus::Running {
        (first.clone(), second.clone())
    } else {
        (second.clone(), first.clone())
    };
    dispatch_one(&h).await.await.expect("second dispatch");
    let held_back = h.job(&other).await;
    let calls_while_busy = h.provider.calls.load(Ordering::SeqCst);
    running.await.expect("first dispatch");
    let done = until_terminal(&h, &[busy, other]).await;

    assert_eq!(held_back.status, JobStatus::Queued, "{held_back:?}");
    assert_eq!(
        held_back.attempts, 0,
        "waiting for a slot is not an attempt"
    );
    assert_eq!(
        calls_while_busy, 1,
        "only one job reached the upstream at once"
    );
    assert!(
        done.iter().all(|j| j.status == JobStatus::Succeeded),
        "{done:?}"
    );
}

#[tokio::test]
async fn a_job_canceled_while_retrying_is_never_dispatched_again_and_refunds() {
    let h = Harness::new(fast_settings()).await;
    let tenant = h.tenant(plan(4)).await;
    h.provider.push([server_error()]);
    let id = h.submit_draft(&tenant, "canceled between attempts").await;
    h.pump(QueueName::Generate).await;
    let retrying = h.job(&id).await;

    let canceled = imagegen::service::jobs::cancel(&h.app, retrying.clone())
        .await
        .expect("cancel");
    // Long past the retry's backoff: the re-queued message arrives and must be dropped.
    let deadline = tokio::time::Instant::now() + Duration::from_millis(500);
    while tokio::time::Instant::now() < deadline {
        h.pump(QueueName::Generate).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let after = h.job(&id).await;
    let units = h
        .app
        .store
        .usage(&tenant.id, Utc::now().date_naive())
        .await
        .expect("usage");

    assert_eq!(retrying.status, JobStatus::Retrying, "{retrying:?}");
    assert_eq!(canceled.status, JobStatus::Canceled);
    assert_eq!(after.status, JobStatus::Canceled);
    assert_eq!(after.attempts, 1);
    assert_eq!(h.provider.calls.load(Ordering::SeqCst), 1);
    assert_eq!(units, 0, "the reserved unit came back");
}
