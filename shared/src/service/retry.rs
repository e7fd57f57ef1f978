//! The retry schedule for failed attempts.

use std::time::Duration;

use rand::Rng;

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

#[cfg(test)]
mod tests {
    use super::*;

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
