//! The retry schedule for failed attempts.

use std::time::Duration;

use rand::Rng;

/// The wait before attempt `attempts + 1`, given that `attempts` have failed: about 2-5 s,
/// 8-15 s, 30-60 s, then 2-5 minutes, with jitter so retries do not march in step.
pub fn backoff(attempts: u32) -> Duration {
    let (low, high) = match attempts {
        0 | 1 => (2_000, 5_000),
        2 => (8_000, 15_000),
        3 => (30_000, 60_000),
        _ => (120_000, 300_000),
    };
    Duration::from_millis(rand::thread_rng().gen_range(low..=high))
}

/// The wait actually used: the schedule's, or the upstream's hint when that is longer.
pub fn next_delay(attempts: u32, hint: Option<Duration>) -> Duration {
    let scheduled = backoff(attempts);
    hint.map_or(scheduled, |h| h.max(scheduled))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_grows_within_its_bands() {
        for _ in 0..200 {
            let first = backoff(1).as_secs_f64();
            let second = backoff(2).as_secs_f64();
            let third = backoff(3).as_secs_f64();
            let fourth = backoff(4).as_secs_f64();
            assert!((2.0..=5.0).contains(&first));
            assert!((8.0..=15.0).contains(&second));
            assert!((30.0..=60.0).contains(&third));
            assert!((120.0..=300.0).contains(&fourth));
        }
    }

    #[test]
    fn a_longer_upstream_hint_wins_and_a_shorter_one_does_not() {
        let long = Duration::from_secs(600);

        assert_eq!(next_delay(1, Some(long)), long);
        assert!(next_delay(1, Some(Duration::from_millis(1))) >= Duration::from_secs(2));
    }
}
