//! A model-based test: random sequences of submit, dispatch, upstream failures, retries,
//! cancels, duplicate deliveries, crashed workers and reconciles. After every step, and after
//! draining, each job's history is a path through the transition table with at most one
//! terminal state, which is its last, and the usage ledger balances.

use std::time::Duration;

use chrono::Utc;
use imagegen::domain::{IdempotencyKey, JobId, JobStatus, Mode, Plan, Prompt, Tenant};
use imagegen::ports::{Queue, QueueName, WriteOutcome};
use imagegen::service::messages::GenerateMessage;
use imagegen::service::submit::{submit, Submission};
use imagegen_tests::harness::{fast_settings, refused, server_error, throttled, Harness, Step};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    Submit { key: Option<u8>, prompt: u8 },
    Pump,
    Upstream(u8),
    Cancel(usize),
    Duplicate(usize),
    Crash(usize),
    Reconcile,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (proptest::option::of(0u8..3), 0u8..3)
            .prop_map(|(key, prompt)| Op::Submit { key, prompt }),
        4 => Just(Op::Pump),
        2 => (0u8..4).prop_map(Op::Upstream),
        1 => (0usize..8).prop_map(Op::Cancel),
        1 => (0usize..8).prop_map(Op::Duplicate),
        1 => (0usize..8).prop_map(Op::Crash),
        1 => Just(Op::Reconcile),
    ]
}

struct World {
    h: Harness,
    tenant: Tenant,
    jobs: Vec<JobId>,
}

impl World {
    fn pick(&self, index: usize) -> Option<JobId> {
        (!self.jobs.is_empty()).then(|| self.jobs[index % self.jobs.len()].clone())
    }

    async fn send(&self, id: &JobId) {
        let body = serde_json::to_string(&GenerateMessage {
            job_id: id.clone(),
            tenant_id: self.tenant.id.clone(),
        })
        .expect("json");
        self.h
            .queue
            .send(QueueName::Generate, &body, Duration::ZERO)
            .await
            .expect("send");
    }

    async fn apply(&mut self, op: &Op) {
        match op {
            Op::Submit { key, prompt } => {
                let submission = Submission {
                    prompt: Prompt::parse(&format!("prompt {prompt}")).expect("prompt"),
                    mode: Mode::Draft,
                    input_image_url: None,
                    deadline: None,
                };
                let key = key.map(|k| IdempotencyKey::parse(&format!("k{k}")).expect("key"));
                // A reused key with another prompt is refused; that is fine for the model.
                if let Ok(accepted) = submit(&self.h.app, &self.tenant, submission, key).await {
                    if accepted.created {
                        self.jobs.push(accepted.job.id);
                    }
                }
            }
            Op::Pump => {
                self.h.pump(QueueName::Generate).await;
            }
            Op::Upstream(kind) => self.h.provider.push([match kind {
                0 => throttled(None),
                1 => server_error(),
                2 => refused(),
                _ => Step::Succeed,
            }]),
            Op::Cancel(i) => {
                if let Some(id) = self.pick(*i) {
                    let job = self
                        .h
                        .app
                        .store
                        .get_job(&id)
                        .await
                        .expect("read")
                        .expect("job");
                    let _ = imagegen::service::jobs::cancel(&self.h.app, job).await;
                }
            }
            Op::Duplicate(i) => {
                if let Some(id) = self.pick(*i) {
                    self.send(&id).await;
                }
            }
            Op::Crash(i) => {
                // A worker took the job and died at once: its lease has already ended, and its
                // message comes back as SQS would redeliver it.
                if let Some(id) = self.pick(*i) {
                    let job = self
                        .h
                        .app
                        .store
                        .get_job(&id)
                        .await
                        .expect("read")
                        .expect("job");
                    let now = Utc::now();
                    if let Ok(running) = job.start("dead-worker", now, now) {
                        if let Ok(WriteOutcome::Written) =
                            self.h.app.store.update_job(&job, &running).await
                        {
                            self.send(&id).await;
                        }
                    }
                }
            }
            Op::Reconcile => {
                imagegen::service::reconcile::reconcile(&self.h.app, Duration::ZERO, 100)
                    .await
                    .expect("reconcile");
            }
        }
    }

    async fn check(&self) -> Result<(), String> {
        let mut charged = 0u64;
        for id in &self.jobs {
            let job = self
                .h
                .app
                .store
                .get_job(id)
                .await
                .expect("read")
                .expect("job");
            let events = self.h.app.store.job_events(id).await.expect("events");
            let path: Vec<JobStatus> = events.iter().map(|e| e.to).collect();
            if path.first() != Some(&JobStatus::Queued) {
                return Err(format!("{id}: history does not start QUEUED: {path:?}"));
            }
            for pair in path.windows(2) {
                if !pair[0].can_become(pair[1]) {
                    return Err(format!("{id}: illegal move {:?} -> {:?}", pair[0], pair[1]));
                }
            }
            let terminals = path.iter().filter(|s| s.is_terminal()).count();
            if terminals > 1 {
                return Err(format!("{id}: more than one terminal state: {path:?}"));
            }
            if terminals == 1 && !path.last().is_some_and(|s| s.is_terminal()) {
                return Err(format!("{id}: left a terminal state: {path:?}"));
            }
            if path.last() != Some(&job.status) {
                return Err(format!(
                    "{id}: history ends {:?} but job is {:?}",
                    path.last(),
                    job.status
                ));
            }
            if job.attempts > job.max_attempts {
                return Err(format!(
                    "{id}: {} attempts, more than the {} allowed",
                    job.attempts, job.max_attempts
                ));
            }
            let should_hold = !matches!(job.status, JobStatus::Failed | JobStatus::Canceled);
            if job.charged != should_hold {
                return Err(format!("{id}: charged={} in {:?}", job.charged, job.status));
            }
            let has_results = !job.result_keys.is_empty();
            if (job.status == JobStatus::Succeeded) != has_results {
                return Err(format!(
                    "{id}: {:?} with results {:?}",
                    job.status, job.result_keys
                ));
            }
            charged += u64::from(job.charged);
        }
        let ledger = self
            .h
            .app
            .store
            .usage(&self.tenant.id, Utc::now().date_naive())
            .await
            .expect("usage");
        if ledger != charged {
            return Err(format!("ledger says {ledger} units, jobs hold {charged}"));
        }
        Ok(())
    }

    async fn drain(&self) -> Result<(), String> {
        self.h.provider.script.lock().expect("script").clear();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let mut open = 0;
            for id in &self.jobs {
                let job = self
                    .h
                    .app
                    .store
                    .get_job(id)
                    .await
                    .expect("read")
                    .expect("job");
                open += usize::from(!job.status.is_terminal());
            }
            if open == 0 {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                return Err(format!("{open} jobs never ended"));
            }
            if self.h.pump(QueueName::Generate).await == 0 {
                imagegen::service::reconcile::reconcile(
                    &self.h.app,
                    Duration::from_millis(500),
                    100,
                )
                .await
                .expect("reconcile");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let h = Harness::new(fast_settings()).await;
        let plan = Plan {
            requests_per_minute: 1000,
            daily_cap: 1000,
            max_concurrency: 4,
        };
        let tenant = h.tenant(plan).await;
        let mut world = World {
            h,
            tenant,
            jobs: Vec::new(),
        };
        for op in &ops {
            world.apply(op).await;
            world
                .check()
                .await
                .map_err(|e| TestCaseError::fail(format!("after {op:?}: {e}")))?;
        }
        world.drain().await.map_err(TestCaseError::fail)?;
        world
            .check()
            .await
            .map_err(|e| TestCaseError::fail(format!("after draining: {e}")))
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 40, ..ProptestConfig::default() })]

    #[test]
    fn every_job_ends_exactly_once_and_the_ledger_balances(ops in proptest::collection::vec(op(), 1..30)) {
        run(ops)?;
    }
}
