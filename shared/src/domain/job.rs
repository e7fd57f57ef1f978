use std::fmt;

use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};

use super::{JobError, Mode, TenantId};

/// A job id: a ULID with a `job_` prefix, so ids sort by creation time.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct JobId(String);

impl JobId {
    pub fn generate() -> Self {
        Self(format!("job_{}", ulid::Ulid::new()))
    }

    /// Accepts only ids of the shape [`JobId::generate`] makes.
    pub fn parse(raw: &str) -> Option<Self> {
        let ulid = raw.strip_prefix("job_")?;
        ulid::Ulid::from_string(ulid).ok()?;
        Some(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The states of a job. The allowed moves between them live in [`JobStatus::can_become`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum JobStatus {
    Queued,
    Running,
    Retrying,
    Succeeded,
    Failed,
    Canceled,
}

impl JobStatus {
    pub const ALL: [JobStatus; 6] = [
        Self::Queued,
        Self::Running,
        Self::Retrying,
        Self::Succeeded,
        Self::Failed,
        Self::Canceled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "QUEUED",
            Self::Running => "RUNNING",
            Self::Retrying => "RETRYING",
            Self::Succeeded => "SUCCEEDED",
            Self::Failed => "FAILED",
            Self::Canceled => "CANCELED",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == raw)
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Canceled)
    }

    /// The transition table. `Running -> Running` is a lease takeover by another worker.
    pub fn can_become(self, next: JobStatus) -> bool {
        use JobStatus::*;
        matches!(
            (self, next),
            (Queued, Running | Failed | Canceled)
                | (Running, Running | Retrying | Succeeded | Failed | Canceled)
                | (Retrying, Running | Failed | Canceled)
        )
    }
}

/// Which provider and model produced a job's images, and what the call cost.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProviderInfo {
    pub provider: String,
    pub model: String,
    /// How long the successful upstream call took.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<u64>,
    /// The upstream's usage figures (tokens), as it reported them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<serde_json::Value>,
}

impl ProviderInfo {
    pub fn new(provider: impl Into<String>, model: impl Into<String>) -> Self {
        Self {
            provider: provider.into(),
            model: model.into(),
            latency_ms: None,
            usage: None,
        }
    }
}

/// The UTC day a unit of usage is booked against.
pub type UsageDay = NaiveDate;

/// One image-generation job, as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    pub id: JobId,
    pub tenant_id: TenantId,
    pub status: JobStatus,
    pub mode: Mode,
    pub prompt: String,
    pub input_image_url: Option<String>,
    pub attempts: u32,
    pub max_attempts: u32,
    pub result_keys: Vec<String>,
    pub error: Option<JobError>,
    pub provider: Option<ProviderInfo>,
    pub lease_owner: Option<String>,
    pub lease_until: Option<DateTime<Utc>>,
    /// Earliest time the next attempt may start: set while RETRYING, and while a QUEUED or
    /// RETRYING job waits for capacity (its message is due then).
    pub not_before: Option<DateTime<Utc>>,
    /// No attempt starts after this; the job then ends FAILED with `EXPIRED`.
    #[serde(default)]
    pub deadline: Option<DateTime<Utc>>,
    pub cancel_requested: bool,
    /// True while the reserved unit is held; false once it has been refunded.
    pub charged: bool,
    pub usage_day: UsageDay,
    /// Set once the terminal notice has been handed to the webhook queue.
    pub notified: bool,
    /// On a finalized draft: its final job, kept for good (the idempotency record expires).
    #[serde(default)]
    pub final_job_id: Option<JobId>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Bumped by every write; stores accept a write only on the version they read.
    pub version: u64,
}

/// A move the transition table does not allow, or one made by a worker without the lease.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransitionError {
    #[error("a {from:?} job cannot become {to:?}")]
    NotAllowed { from: JobStatus, to: JobStatus },
    #[error("the job's lease is held by another worker")]
    LeaseHeld,
    #[error("the job has used all {max} of its attempts")]
    AttemptsExhausted { max: u32 },
}

impl Job {
    /// A fresh QUEUED job holding one reserved unit.
    pub fn new(
        tenant_id: TenantId,
        mode: Mode,
        prompt: String,
        input_image_url: Option<String>,
        max_attempts: u32,
        now: DateTime<Utc>,
    ) -> Self {
        Self {
            id: JobId::generate(),
            tenant_id,
            status: JobStatus::Queued,
            mode,
            prompt,
            input_image_url,
            attempts: 0,
            max_attempts,
            result_keys: Vec::new(),
            error: None,
            provider: None,
            lease_owner: None,
            lease_until: None,
            not_before: None,
            deadline: None,
            cancel_requested: false,
            charged: true,
            usage_day: now.date_naive(),
            notified: false,
            final_job_id: None,
            created_at: now,
            updated_at: now,
            version: 0,
        }
    }

    fn moved(&self, to: JobStatus, now: DateTime<Utc>) -> Result<Job, TransitionError> {
        if !self.status.can_become(to) {
            return Err(TransitionError::NotAllowed {
                from: self.status,
                to,
            });
        }
        let mut next = self.clone();
        next.status = to;
        next.updated_at = now;
        next.version = self.version + 1;
        if to != JobStatus::Running {
            next.lease_owner = None;
            next.lease_until = None;
        }
        if to.is_terminal() {
            next.not_before = None;
        }
        Ok(next)
    }

    /// Whether a live lease held by someone else stops `owner` from taking the job.
    pub fn lease_blocks(&self, owner: &str, now: DateTime<Utc>) -> bool {
        self.status == JobStatus::Running
            && self.lease_owner.as_deref() != Some(owner)
            && self.lease_until.is_some_and(|until| until > now)
    }

    /// Whether every attempt the job may make has been started.
    pub fn attempts_exhausted(&self) -> bool {
        self.attempts >= self.max_attempts
    }

    /// Start an attempt: take the lease until `lease_until` and count the attempt.
    ///
    /// # Errors
    /// Fails when the job is terminal, another worker's lease is still live, or the job has
    /// started all its attempts (a takeover is an attempt too).
    pub fn start(
        &self,
        owner: &str,
        lease_until: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<Job, TransitionError> {
        if self.lease_blocks(owner, now) {
            return Err(TransitionError::LeaseHeld);
        }
        if self.attempts_exhausted() {
            return Err(TransitionError::AttemptsExhausted {
                max: self.max_attempts,
            });
        }
        let mut next = self.moved(JobStatus::Running, now)?;
        next.lease_owner = Some(owner.to_owned());
        next.lease_until = Some(lease_until);
        next.not_before = None;
        next.attempts = self.attempts + 1;
        Ok(next)
    }

    fn check_owner(&self, owner: &str) -> Result<(), TransitionError> {
        if self.status == JobStatus::Running && self.lease_owner.as_deref() != Some(owner) {
            return Err(TransitionError::LeaseHeld);
        }
        Ok(())
    }

    /// Finish with stored images. A cancel requested meanwhile wins: the result is discarded.
    ///
    /// # Errors
    /// Fails unless `owner` holds the RUNNING job's lease.
    pub fn succeed(
        &self,
        owner: &str,
        result_keys: Vec<String>,
        provider: ProviderInfo,
        now: DateTime<Utc>,
    ) -> Result<Job, TransitionError> {
        self.check_owner(owner)?;
        if self.cancel_requested {
            return self.cancel(now);
        }
        let mut next = self.moved(JobStatus::Succeeded, now)?;
        next.result_keys = result_keys;
        next.provider = Some(provider);
        next.error = None;
        Ok(next)
    }

    /// Schedule another attempt no earlier than `not_before`, keeping the error for the record.
    ///
    /// # Errors
    /// Fails unless `owner` holds the RUNNING job's lease.
    pub fn retry(
        &self,
        owner: &str,
        error: JobError,
        not_before: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<Job, TransitionError> {
        self.check_owner(owner)?;
        if self.cancel_requested {
            return self.cancel(now);
        }
        let mut next = self.moved(JobStatus::Retrying, now)?;
        next.error = Some(error);
        next.not_before = Some(not_before);
        Ok(next)
    }

    /// Record that a waiting job's next message is due at `at` (after the limiter denied it or
    /// could not be reached), so the reconciler does not take it for stranded meanwhile.
    ///
    /// # Errors
    /// Fails unless the job is QUEUED or RETRYING.
    pub fn wait_until(
        &self,
        at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<Job, TransitionError> {
        if !matches!(self.status, JobStatus::Queued | JobStatus::Retrying) {
            return Err(TransitionError::NotAllowed {
                from: self.status,
                to: self.status,
            });
        }
        let mut next = self.clone();
        next.not_before = Some(at);
        next.updated_at = now;
        next.version = self.version + 1;
        Ok(next)
    }

    /// End FAILED and give the reserved unit back.
    ///
    /// # Errors
    /// Fails for a terminal job, or a RUNNING one whose lease `owner` does not hold.
    pub fn fail(
        &self,
        owner: Option<&str>,
        error: JobError,
        now: DateTime<Utc>,
    ) -> Result<Job, TransitionError> {
        if let Some(owner) = owner {
            self.check_owner(owner)?;
        }
        let mut next = self.moved(JobStatus::Failed, now)?;
        next.error = Some(error);
        next.charged = false;
        Ok(next)
    }

    /// End CANCELED and give the reserved unit back.
    ///
    /// # Errors
    /// Fails for a terminal job.
    pub fn cancel(&self, now: DateTime<Utc>) -> Result<Job, TransitionError> {
        let mut next = self.moved(JobStatus::Canceled, now)?;
        next.charged = false;
        next.cancel_requested = true;
        Ok(next)
    }

    /// Ask a RUNNING job to stop: its worker discards the result and ends it CANCELED.
    ///
    /// # Errors
    /// Fails unless the job is RUNNING.
    pub fn request_cancel(&self, now: DateTime<Utc>) -> Result<Job, TransitionError> {
        if self.status != JobStatus::Running {
            return Err(TransitionError::NotAllowed {
                from: self.status,
                to: JobStatus::Canceled,
            });
        }
        let mut next = self.clone();
        next.cancel_requested = true;
        next.updated_at = now;
        next.version = self.version + 1;
        Ok(next)
    }

    /// Whether the deadline has passed for a job that is not running.
    pub fn expired(&self, now: DateTime<Utc>) -> bool {
        matches!(self.status, JobStatus::Queued | JobStatus::Retrying)
            && self.deadline.is_some_and(|d| d <= now)
    }

    /// Record that the terminal notice is on the webhook queue.
    pub fn mark_notified(&self, now: DateTime<Utc>) -> Job {
        let mut next = self.clone();
        next.notified = true;
        next.updated_at = now;
        next.version = self.version + 1;
        next
    }

    /// Record the final job made from this draft.
    pub fn with_final_job(&self, final_job_id: JobId, now: DateTime<Utc>) -> Job {
        let mut next = self.clone();
        next.final_job_id = Some(final_job_id);
        next.updated_at = now;
        next.version = self.version + 1;
        next
    }

    /// Whether this write gives the reserved unit back (charged before, not after).
    pub fn refunds_from(&self, previous: &Job) -> bool {
        previous.charged && !self.charged
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::TenantId;
    use chrono::Duration;

    fn queued() -> Job {
        Job::new(
            TenantId::new("t1"),
            Mode::Draft,
            "a red fox".into(),
            None,
            4,
            Utc::now(),
        )
    }

    #[test]
    fn terminal_states_allow_no_move_at_all() {
        for from in JobStatus::ALL.into_iter().filter(|s| s.is_terminal()) {
            for to in JobStatus::ALL {
                assert!(!from.can_become(to), "{from:?} -> {to:?} must be refused");
            }
        }
    }

    #[test]
    fn queued_job_cannot_jump_to_succeeded_or_retrying() {
        assert!(!JobStatus::Queued.can_become(JobStatus::Succeeded));
        assert!(!JobStatus::Queued.can_become(JobStatus::Retrying));
        assert!(JobStatus::Queued.can_become(JobStatus::Running));
    }

    #[test]
    fn start_counts_an_attempt_and_takes_the_lease() {
        let now = Utc::now();
        let job = queued();

        let running = job.start("w1", now + Duration::seconds(30), now);

        let running = running.unwrap_or_else(|e| panic!("start failed: {e}"));
        assert_eq!(running.status, JobStatus::Running);
        assert_eq!(running.attempts, 1);
        assert_eq!(running.lease_owner.as_deref(), Some("w1"));
        assert_eq!(running.version, job.version + 1);
    }

    #[test]
    fn live_lease_blocks_another_worker_until_it_expires() {
        let now = Utc::now();
        let running = queued()
            .start("w1", now + Duration::seconds(30), now)
            .unwrap_or_else(|e| panic!("{e}"));

        assert_eq!(
            running.start("w2", now + Duration::seconds(60), now),
            Err(TransitionError::LeaseHeld)
        );
        let later = now + Duration::seconds(31);
        let taken = running.start("w2", later + Duration::seconds(30), later);
        assert_eq!(taken.map(|j| j.attempts), Ok(2));
    }

    #[test]
    fn a_takeover_after_the_last_attempt_is_refused() {
        let now = Utc::now();
        let mut running = queued()
            .start("w1", now, now)
            .unwrap_or_else(|e| panic!("{e}"));
        running.attempts = running.max_attempts;

        let taken = running.start("w2", now + Duration::seconds(30), now);

        assert_eq!(taken, Err(TransitionError::AttemptsExhausted { max: 4 }));
    }

    #[test]
    fn only_the_lease_owner_can_finish_a_running_job() {
        let now = Utc::now();
        let running = queued()
            .start("w1", now + Duration::seconds(30), now)
            .unwrap_or_else(|e| panic!("{e}"));
        let info = ProviderInfo::new("offline", "m");

        let stolen = running.succeed("w2", vec!["k".into()], info.clone(), now);

        assert_eq!(stolen, Err(TransitionError::LeaseHeld));
        assert!(running.succeed("w1", vec!["k".into()], info, now).is_ok());
    }

    #[test]
    fn failing_and_canceling_refund_the_unit_once() {
        let now = Utc::now();
        let job = queued();

        let failed = job
            .fail(
                None,
                JobError::new(crate::domain::ErrorCode::Expired, "late"),
                now,
            )
            .unwrap_or_else(|e| panic!("{e}"));

        assert!(failed.refunds_from(&job));
        assert!(
            failed.cancel(now).is_err(),
            "a failed job cannot be canceled"
        );
    }

    #[test]
    fn cancel_requested_while_running_discards_the_result() {
        let now = Utc::now();
        let running = queued()
            .start("w1", now + Duration::seconds(30), now)
            .and_then(|j| j.request_cancel(now))
            .unwrap_or_else(|e| panic!("{e}"));
        let info = ProviderInfo::new("offline", "m");

        let done = running
            .succeed("w1", vec!["k".into()], info, now)
            .unwrap_or_else(|e| panic!("{e}"));

        assert_eq!(done.status, JobStatus::Canceled);
        assert!(done.result_keys.is_empty());
        assert!(!done.charged);
    }
}
