//! When a failed webhook attempt is tried again.

use std::time::Duration;

use rand::Rng;

/// Exponential backoff with jitter. The default makes 8 attempts spread over about a day:
/// nominal waits of 30 s, 2 min, 8 min, 32 min, about 2 h, about 8.5 h and 12 h, each moved
/// by up to a fifth either way so a fleet of failing receivers is not retried in step.
#[derive(Debug, Clone, PartialEq)]
pub struct RetrySchedule {
    /// Attempts in all, the first included. After the last one fails the event is dead.
    pub attempts: u32,
    /// The nominal wait after the first failure.
    pub first: Duration,
    /// Each wait is this many times the one before...
    pub factor: u32,
    /// ...up to this.
    pub cap: Duration,
    /// The share of a wait that jitter may add or take away (0.2 = up to 20 %).
    pub jitter: f64,
}

impl Default for RetrySchedule {
    fn default() -> Self {
        Self {
            attempts: 8,
            first: Duration::from_secs(30),
            factor: 4,
            cap: Duration::from_secs(12 * 3600),
            jitter: 0.2,
        }
    }
}

impl RetrySchedule {
    /// The wait after attempt `failed` (1-based) failed, before jitter.
    pub fn nominal_after(&self, failed: u32) -> Duration {
        let growth = self.factor.saturating_pow(failed.saturating_sub(1));
        self.first.saturating_mul(growth).min(self.cap)
    }

    /// The wait after attempt `failed` failed, with jitter. `None` when it was the last one.
    pub fn delay_after(&self, failed: u32) -> Option<Duration> {
        if failed >= self.attempts {
            return None;
        }
        let nominal = self.nominal_after(failed).as_secs_f64();
        let spread = nominal * self.jitter.clamp(0.0, 1.0);
        let jittered = if spread > 0.0 {
            rand::thread_rng().gen_range(nominal - spread..=nominal + spread)
        } else {
            nominal
        };
        Some(Duration::from_secs_f64(jittered.max(0.0)))
    }

    /// The nominal time from the first attempt to the last.
    pub fn nominal_span(&self) -> Duration {
        (1..self.attempts).map(|n| self.nominal_after(n)).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_schedule_makes_eight_attempts_over_about_a_day() {
        let schedule = RetrySchedule::default();
        let span = schedule.nominal_span().as_secs_f64() / 3600.0;

        assert_eq!(schedule.attempts, 8);
        assert!((20.0..=28.0).contains(&span), "span {span} h");
        assert!(schedule.delay_after(7).is_some());
        assert_eq!(schedule.delay_after(8), None);
    }

    #[test]
    fn waits_grow_exponentially_up_to_the_cap_and_stay_within_the_jitter() {
        let schedule = RetrySchedule::default();
        let nominal: Vec<u64> = (1..8)
            .map(|n| schedule.nominal_after(n).as_secs())
            .collect();

        assert_eq!(nominal, [30, 120, 480, 1920, 7680, 30720, 43200]);
        for failed in 1..8 {
            let base = schedule.nominal_after(failed).as_secs_f64();
            for _ in 0..50 {
                let wait = schedule.delay_after(failed).map(|d| d.as_secs_f64());
                let wait = wait.unwrap_or_default();
                assert!(
                    wait >= base * 0.8 - 1e-6 && wait <= base * 1.2 + 1e-6,
                    "{wait}"
                );
            }
        }
    }

    #[test]
    fn jitter_spreads_waits_apart() {
        let schedule = RetrySchedule::default();
        let waits: std::collections::HashSet<u128> = (0..20)
            .filter_map(|_| schedule.delay_after(3))
            .map(|d| d.as_millis())
            .collect();

        assert!(waits.len() > 10);
    }

    #[test]
    fn later_waits_exceed_the_queue_maximum_delay() {
        let schedule = RetrySchedule::default();

        assert!(schedule.nominal_after(5) > crate::ports::MAX_QUEUE_DELAY);
    }
}
