//! Limiter adapters: in-process (embedded) and, with the `redis` feature, Redis.
//!
//! Both take every permit a dispatch needs (global, tenant, quota group and key; requests in
//! a sliding window and concurrency leases) in one step, or none, and keep key health the
//! same way. `docs/limiter.md` describes the semantics; one behavioural suite
//! (`shared/tests/limiter.rs`) holds both adapters to them.

use std::time::Duration;

use chrono::{DateTime, Timelike, Utc};

use crate::domain::Limits;

#[cfg(feature = "redis")]
mod batch;
pub mod local;
pub mod pool;
#[cfg(feature = "redis")]
pub mod redis;
#[cfg(feature = "redis")]
pub mod redis_server;
pub mod registry;
#[cfg(feature = "aws")]
pub mod registry_dynamo;

pub use local::LocalLimiter;
pub use pool::KeyPool;
#[cfg(feature = "redis")]
pub use redis::{RedisLimiter, RedisSettings};
pub use registry::SqliteKeyRegistry;

/// How the limiter behaves; the same for every adapter.
#[derive(Debug, Clone)]
pub struct LimiterSettings {
    /// The sliding window that "per minute" limits count in. Only tests shorten it.
    pub window: Duration,
    /// Limits over all dispatches.
    pub global: Limits,
    /// Consecutive failures that put a key in cooldown.
    pub failure_threshold: u32,
    /// How long a failing key cools before one probe decides.
    pub cooldown: Duration,
    /// Cooldown after an upstream 429 that did not say how long to wait.
    pub throttle_cooldown: Duration,
    /// The wait returned when only concurrency is full: leases end when jobs finish, which is
    /// usually long before they expire.
    pub busy_retry: Duration,
    /// The wait returned when the pool has no usable key at all.
    pub no_key_retry: Duration,
    /// The UTC hour when upstream daily quotas reset, when the upstream does not say
    /// (Gemini's reset at midnight Pacific time: 8 in winter, 7 in summer).
    pub daily_reset_utc_hour: u32,
    /// How long key and group records are cached between registry reads.
    pub key_cache_ttl: Duration,
    /// Outcomes kept per key for the error rate and latency figures.
    pub health_samples: u32,
    /// The longest lease granted; longer requests are cut to it. Redis keys holding leases
    /// live this long (plus a second) after their last write.
    pub max_lease: Duration,
}

impl Default for LimiterSettings {
    fn default() -> Self {
        Self {
            window: Duration::from_secs(60),
            global: Limits::default(),
            failure_threshold: 5,
            cooldown: Duration::from_secs(600),
            throttle_cooldown: Duration::from_secs(30),
            busy_retry: Duration::from_secs(1),
            no_key_retry: Duration::from_secs(30),
            daily_reset_utc_hour: 8,
            key_cache_ttl: Duration::from_secs(10),
            health_samples: 100,
            max_lease: Duration::from_secs(900),
        }
    }
}

impl LimiterSettings {
    /// The next daily quota reset strictly after `now`.
    pub fn next_daily_reset(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        let hour = self.daily_reset_utc_hour.min(23);
        let today = now
            .with_hour(hour)
            .and_then(|t| t.with_minute(0))
            .and_then(|t| t.with_second(0))
            .and_then(|t| t.with_nanosecond(0))
            .unwrap_or(now);
        if today > now {
            today
        } else {
            today + chrono::Duration::days(1)
        }
    }
}

/// Lease ids start with the admission time in milliseconds (on the limiter's own clock), so a
/// release can tell how long the attempt took without storing anything more.
pub(crate) fn lease_start_ms(lease_id: &str) -> Option<i64> {
    lease_id.split_once('-')?.0.parse().ok()
}

/// Error rate and 95th-percentile latency of recent outcomes, newest first.
pub(crate) fn summarize(samples: &[(bool, u64)]) -> (f64, Option<u64>) {
    if samples.is_empty() {
        return (0.0, None);
    }
    let failed = samples.iter().filter(|(ok, _)| !ok).count();
    let mut latencies: Vec<u64> = samples.iter().map(|(_, ms)| *ms).collect();
    latencies.sort_unstable();
    let rank = (latencies.len() * 95).div_ceil(100).max(1) - 1;
    (
        failed as f64 / samples.len() as f64,
        latencies.get(rank).copied(),
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_daily_reset_is_the_next_occurrence_of_the_hour() {
        let settings = LimiterSettings::default();
        let before: DateTime<Utc> = "2026-03-01T05:00:00Z".parse().unwrap();
        let after: DateTime<Utc> = "2026-03-01T09:30:00Z".parse().unwrap();

        assert_eq!(
            settings.next_daily_reset(before),
            "2026-03-01T08:00:00Z".parse::<DateTime<Utc>>().unwrap()
        );
        assert_eq!(
            settings.next_daily_reset(after),
            "2026-03-02T08:00:00Z".parse::<DateTime<Utc>>().unwrap()
        );
    }

    #[test]
    fn summaries_count_failures_and_take_the_95th_percentile() {
        let mut samples: Vec<(bool, u64)> = (1..=100).map(|ms| (true, ms)).collect();
        samples[0].0 = false;
        samples[1].0 = false;

        let (rate, p95) = summarize(&samples);

        assert!((rate - 0.02).abs() < 1e-9);
        assert_eq!(p95, Some(95));
        assert_eq!(summarize(&[]), (0.0, None));
    }

    #[test]
    fn lease_ids_carry_their_start() {
        assert_eq!(
            lease_start_ms("1700000000123-abcd"),
            Some(1_700_000_000_123)
        );
        assert_eq!(lease_start_ms("garbage"), None);
    }
}
