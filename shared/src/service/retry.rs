//! The retry schedule for failed attempts.

use std::time::Duration;

use rand::Rng;

use crate::domain::{ErrorCode, FailureClass, Job, JobError};

/// Waits between attempts: band `n` is the jittered range for the wait after `n + 1` failed
/// attempts; the last band repeats.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    pub bands: Vec<(Duration, Duration)>,
}

impl Default for RetryPolicy {
    /// About 2-5 s, 8-15 s, 30-60 s, then 2-5 minutes.
    fn default() -> Self {
        let s = Duration::from_secs;
        Self {
            bands: vec![
                (s(2), s(5)),
                (s(8), s(15)),
                (s(30), s(60)),
                (s(120), s(300)),
            ],
        }
    }
}

impl RetryPolicy {
    /// The wait before the next attempt, given that `attempts` have failed, with jitter so
    /// retries do not march in step.
    pub fn backoff(&self, attempts: u32) -> Duration {
        let index = (attempts.max(1) as usize - 1).min(self.bands.len().saturating_sub(1));
        let Some(&(low, high)) = self.bands.get(index) else {
            return Duration::ZERO;
        };
        if high <= low {
            return low;
        }
        let millis = rand::thread_rng().gen_range(low.as_millis()..=high.as_millis());
        Duration::from_millis(millis as u64)
    }

    /// The wait actually used: the schedule's, or the upstream's hint when that is longer.
    pub fn next_delay(&self, attempts: u32, hint: Option<Duration>) -> Duration {
        let scheduled = self.backoff(attempts);
        hint.map_or(scheduled, |h| h.max(scheduled))
    }
}

/// Whether a RUNNING job that just failed with `error` gets another attempt. Retryable
/// failures retry until the job's attempts run out, except an answer without an image, which
/// is retried once: a model that twice declines to draw a prompt will keep declining.
pub fn worth_retrying(job: &Job, error: &JobError) -> bool {
    if error.class() != FailureClass::Retryable || job.attempts >= job.max_attempts {
        return false;
    }
    // While RUNNING, the job still carries the error of the attempt before this one.
    let again = job
        .error
        .as_ref()
        .is_some_and(|e| e.code == ErrorCode::NoImage);
    !(error.code == ErrorCode::NoImage && again)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Mode, TenantId};

    fn running(attempts: u32, previous: Option<ErrorCode>) -> Job {
        let mut job = Job::new(
            TenantId::new("t1"),
            Mode::Draft,
            "a fox".into(),
            None,
            4,
            chrono::Utc::now(),
        );
        job.attempts = attempts;
        job.error = previous.map(|code| JobError::new(code, "earlier"));
        job
    }

    #[test]
    fn an_answer_without_an_image_is_retried_once_only() {
        let no_image = JobError::new(ErrorCode::NoImage, "none");

        assert!(worth_retrying(&running(1, None), &no_image));
        assert!(worth_retrying(
            &running(2, Some(ErrorCode::UpstreamUnavailable)),
            &no_image
        ));
        assert!(!worth_retrying(
            &running(2, Some(ErrorCode::NoImage)),
            &no_image
        ));
    }

    #[test]
    fn refusals_are_never_retried_and_outages_retry_until_attempts_run_out() {
        let refused = JobError::new(ErrorCode::ContentRefused, "no");
        let outage = JobError::new(ErrorCode::UpstreamUnavailable, "503");

        assert!(!worth_retrying(&running(1, None), &refused));
        assert!(worth_retrying(
            &running(3, Some(ErrorCode::UpstreamUnavailable)),
            &outage
        ));
        assert!(!worth_retrying(&running(4, None), &outage));
    }

    #[test]
    fn default_schedule_grows_within_its_bands() {
        let policy = RetryPolicy::default();
        for _ in 0..200 {
            let waits: Vec<f64> = (1..=5).map(|n| policy.backoff(n).as_secs_f64()).collect();
            assert!((2.0..=5.0).contains(&waits[0]));
            assert!((8.0..=15.0).contains(&waits[1]));
            assert!((30.0..=60.0).contains(&waits[2]));
            assert!((120.0..=300.0).contains(&waits[3]));
            assert!((120.0..=300.0).contains(&waits[4]), "the last band repeats");
        }
    }

    #[test]
    fn waits_are_jittered() {
        let policy = RetryPolicy::default();

        let waits: std::collections::HashSet<_> = (0..50).map(|_| policy.backoff(1)).collect();

        assert!(waits.len() > 10, "only {} distinct waits", waits.len());
    }

    #[test]
    fn a_longer_upstream_hint_wins_and_a_shorter_one_does_not() {
        let policy = RetryPolicy::default();
        let long = Duration::from_secs(600);

        assert_eq!(policy.next_delay(1, Some(long)), long);
        assert!(policy.next_delay(1, Some(Duration::from_millis(1))) >= Duration::from_secs(2));
    }
}
