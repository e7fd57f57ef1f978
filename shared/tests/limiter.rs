//! The behavioural suite every limiter adapter must pass: the in-process one always, and the
//! Redis one (against a `redis-server` each test starts on a free port) with `--features redis`.
//!
//! Run it with `cargo test -p imagegen-shared --features redis --test limiter`.
//!
//! Windows, leases and cooldowns are shortened to fractions of a second so the suite runs in
//! seconds; the semantics do not depend on their length.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use imagegen::domain::{
    KeyState, Limits, QuotaGroup, QuotaGroupId, TenantId, UpstreamKey, UpstreamKeyId,
};
use imagegen::limiter::{KeyPool, LimiterSettings, LocalLimiter, SqliteKeyRegistry};
use imagegen::ports::{
    Admission, KeyOutcome, KeyRegistry, Limiter, Permit, PermitRequest, SecretStore,
};
use imagegen::secrets::SqliteSecrets;
use imagegen::store::SqliteDb;

const WINDOW: Duration = Duration::from_millis(1000);

fn settings() -> LimiterSettings {
    LimiterSettings {
        window: WINDOW,
        failure_threshold: 3,
        cooldown: Duration::from_millis(600),
        throttle_cooldown: Duration::from_millis(300),
        busy_retry: Duration::from_millis(100),
        no_key_retry: Duration::from_millis(2_000),
        key_cache_ttl: Duration::from_secs(60),
        ..LimiterSettings::default()
    }
}

/// A limiter under test with the registry it reads keys from.
pub struct Harness {
    pub limiter: Arc<dyn Limiter>,
    pub registry: Arc<dyn KeyRegistry>,
    _server: Option<Box<dyn std::any::Any + Send>>,
}

async fn registry_and_pool(settings: &LimiterSettings) -> (Arc<dyn KeyRegistry>, Arc<KeyPool>) {
    let db = SqliteDb::in_memory().unwrap();
    let registry: Arc<dyn KeyRegistry> =
        Arc::new(SqliteKeyRegistry::new(db.clone()).await.unwrap());
    let secrets: Arc<dyn SecretStore> = Arc::new(SqliteSecrets::new(db));
    let pool = Arc::new(KeyPool::new(
        Arc::clone(&registry),
        secrets,
        settings.key_cache_ttl,
    ));
    (registry, pool)
}

pub async fn local(settings: LimiterSettings) -> Harness {
    let (registry, pool) = registry_and_pool(&settings).await;
    Harness {
        limiter: Arc::new(LocalLimiter::new(settings, pool)),
        registry,
        _server: None,
    }
}

#[cfg(feature = "redis")]
pub async fn redis(settings: LimiterSettings) -> Harness {
    use imagegen::limiter::redis_server::LocalRedisServer;
    use imagegen::limiter::{RedisLimiter, RedisSettings};

    let server = LocalRedisServer::start(&[]).unwrap();
    let (registry, pool) = registry_and_pool(&settings).await;
    let redis = RedisSettings::new(server.url().into());
    let limiter = RedisLimiter::connect(settings, redis, pool).await.unwrap();
    Harness {
        limiter: Arc::new(limiter),
        registry,
        _server: Some(Box::new(server)),
    }
}

fn limits(rpm: Option<u32>, concurrency: Option<u32>) -> Limits {
    Limits {
        requests_per_minute: rpm,
        concurrency,
    }
}

impl Harness {
    async fn group(&self, id: &str, limits: Limits) {
        let group = QuotaGroup {
            id: QuotaGroupId::parse(id).unwrap(),
            limits,
            updated_at: Utc::now(),
        };
        self.registry.put_group(&group).await.unwrap();
        self.limiter.key_changed(None).await.unwrap();
    }

    async fn key(&self, id: &str, group: &str, limits: Limits) {
        let key = UpstreamKey {
            id: UpstreamKeyId::parse(id).unwrap(),
            group: QuotaGroupId::parse(group).unwrap(),
            limits,
            state: KeyState::Enabled,
            disabled_reason: None,
            label: None,
            created_at: Utc::now(),
            updated_at: Utc::now(),
        };
        self.registry.put_key(&key).await.unwrap();
        self.limiter.key_changed(None).await.unwrap();
    }

    async fn acquire(&self, request: &PermitRequest) -> Admission {
        self.limiter.acquire(request).await.unwrap()
    }

    async fn grant(&self, request: &PermitRequest) -> Permit {
        match self.acquire(request).await {
            Admission::Granted(permit) => permit,
            Admission::Denied { retry_after } => panic!("denied for {retry_after:?}"),
        }
    }

    async fn denied(&self, request: &PermitRequest) -> Duration {
        match self.acquire(request).await {
            Admission::Granted(permit) => panic!("granted {permit:?}"),
            Admission::Denied { retry_after } => retry_after,
        }
    }

    async fn release(&self, permit: &Permit, outcome: KeyOutcome) {
        self.limiter.release(permit, outcome).await.unwrap();
    }

    async fn health(&self, key: &str) -> imagegen::ports::KeyHealth {
        let id = UpstreamKeyId::parse(key).unwrap();
        self.limiter.key_health(&[id]).await.unwrap().remove(0)
    }
}

fn request(tenant: &str) -> PermitRequest {
    PermitRequest {
        tenant_id: TenantId::new(tenant),
        tenant_concurrency: 100,
        tenant_rpm: None,
        needs_key: false,
        lease: Duration::from_secs(30),
    }
}

fn keyed(tenant: &str) -> PermitRequest {
    PermitRequest {
        needs_key: true,
        ..request(tenant)
    }
}

/// Send every request at once, as racing workers would; answers in request order.
async fn race(limiter: &Arc<dyn Limiter>, requests: Vec<PermitRequest>) -> Vec<Admission> {
    let calls: Vec<_> = requests
        .into_iter()
        .map(|r| {
            let limiter = Arc::clone(limiter);
            tokio::spawn(async move { limiter.acquire(&r).await.unwrap() })
        })
        .collect();
    let mut answers = Vec::new();
    for call in calls {
        answers.push(call.await.unwrap());
    }
    answers
}

fn granted(answers: &[Admission]) -> Vec<Permit> {
    answers
        .iter()
        .filter_map(|a| match a {
            Admission::Granted(p) => Some(p.clone()),
            Admission::Denied { .. } => None,
        })
        .collect()
}

macro_rules! suite {
    ($module:ident, $make:path) => {
        mod $module {
            use super::*;

            #[tokio::test]
            async fn requests_per_window_hold_in_every_sliding_window_and_refill_as_they_age() {
                let h = $make(settings()).await;
                let mut r = request("t1");
                r.tenant_rpm = Some(3);
                let started = Instant::now();
                let mut grants = Vec::new();

                while started.elapsed() < WINDOW * 3 / 2 {
                    if let Admission::Granted(p) = h.acquire(&r).await {
                        grants.push(started.elapsed());
                        h.release(&p, KeyOutcome::Success).await;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }

                // Measured on the test's clock: allow a little slack for call latency.
                let slack = Duration::from_millis(40);
                for (i, at) in grants.iter().enumerate() {
                    let inside = grants[..=i]
                        .iter()
                        .filter(|t| **t + WINDOW > *at + slack)
                        .count();
                    assert!(
                        inside <= 3,
                        "{inside} admissions within one window: {grants:?}"
                    );
                }
                assert_eq!(
                    grants.len(),
                    6,
                    "the window refills as it slides: {grants:?}"
                );
            }

            #[tokio::test]
            async fn a_denial_says_when_the_oldest_admission_ages_out() {
                let h = $make(settings()).await;
                let mut r = request("t1");
                r.tenant_rpm = Some(1);

                h.grant(&r).await;
                let wait = h.denied(&r).await;
                tokio::time::sleep(wait).await;

                assert!(wait > WINDOW - Duration::from_millis(200), "{wait:?}");
                assert!(wait <= WINDOW + Duration::from_millis(5), "{wait:?}");
                h.grant(&r).await;
            }

            #[tokio::test]
            async fn submissions_are_counted_per_tenant_in_a_sliding_window() {
                let h = $make(settings()).await;
                let t1 = imagegen::domain::TenantId::new("t1");
                let t2 = imagegen::domain::TenantId::new("t2");

                for _ in 0..3 {
                    assert_eq!(h.limiter.admit_submission(&t1, 3).await.unwrap(), None);
                }
                let wait = h.limiter.admit_submission(&t1, 3).await.unwrap();
                let other = h.limiter.admit_submission(&t2, 3).await.unwrap();

                let wait = wait.expect("the fourth submission in a window is refused");
                assert!(wait > WINDOW - Duration::from_millis(200), "{wait:?}");
                assert!(wait <= WINDOW + Duration::from_millis(5), "{wait:?}");
                assert_eq!(other, None, "another tenant has its own window");
                tokio::time::sleep(wait).await;
                assert_eq!(h.limiter.admit_submission(&t1, 3).await.unwrap(), None);
            }

            #[tokio::test]
            async fn concurrency_is_held_as_leases_released_by_lease_id() {
                let h = $make(settings()).await;
                let mut r = request("t1");
                r.tenant_concurrency = 2;

                let first = h.grant(&r).await;
                let second = h.grant(&r).await;
                let wait = h.denied(&r).await;
                h.release(&first, KeyOutcome::Success).await;
                let third = h.grant(&r).await;

                assert!(wait <= settings().busy_retry, "{wait:?}");
                assert_ne!(first.lease_id, second.lease_id);
                assert_ne!(third.lease_id, second.lease_id);
                h.denied(&r).await;
            }

            #[tokio::test]
            async fn a_lease_whose_holder_died_is_reclaimed_when_it_expires() {
                let h = $make(settings()).await;
                let mut r = request("t1");
                r.tenant_concurrency = 1;
                r.lease = Duration::from_millis(300);

                h.grant(&r).await;
                h.denied(&r).await;
                tokio::time::sleep(Duration::from_millis(350)).await;

                h.grant(&r).await;
            }

            #[tokio::test]
            async fn a_denial_takes_no_permit_at_any_level() {
                let mut s = settings();
                s.global = limits(Some(2), None);
                let h = $make(s).await;
                h.group("p1", limits(None, None)).await;
                h.key("k1", "p1", limits(None, None)).await;
                let mut busy = keyed("busy");
                busy.tenant_concurrency = 1;

                h.grant(&busy).await;
                h.denied(&busy).await;
                h.denied(&busy).await;
                h.grant(&keyed("other")).await;
                h.denied(&keyed("third")).await;

                assert_eq!(h.health("k1").await.requests_last_minute, 2);
                assert_eq!(h.health("k1").await.in_flight, 2);
            }

            #[tokio::test]
            async fn a_permit_never_used_hands_its_admission_back() {
                let h = $make(settings()).await;
                let mut r = request("t1");
                r.tenant_rpm = Some(1);

                let permit = h.grant(&r).await;
                h.release(&permit, KeyOutcome::Unused).await;

                h.grant(&r).await;
            }

            #[tokio::test]
            async fn a_dispatch_without_an_upstream_key_skips_the_pool() {
                let h = $make(settings()).await;

                let permit = h.grant(&request("t1")).await;

                assert_eq!(permit.key_id, None);
            }

            #[tokio::test]
            async fn with_no_key_at_all_a_keyed_dispatch_waits() {
                let h = $make(settings()).await;

                let wait = h.denied(&keyed("t1")).await;

                assert_eq!(wait, settings().no_key_retry);
            }

            #[tokio::test]
            async fn keys_of_one_project_share_its_quota() {
                let h = $make(settings()).await;
                h.group("p1", limits(Some(2), None)).await;
                h.key("k1", "p1", limits(Some(10), None)).await;
                h.key("k2", "p1", limits(Some(10), None)).await;

                h.grant(&keyed("t1")).await;
                h.grant(&keyed("t1")).await;
                let wait = h.denied(&keyed("t1")).await;

                assert!(wait > WINDOW / 2, "{wait:?}");
            }

            #[tokio::test]
            async fn the_least_loaded_key_is_chosen_and_full_keys_are_skipped() {
                let h = $make(settings()).await;
                h.group("p1", limits(None, Some(10))).await;
                h.group("p2", limits(None, Some(10))).await;
                h.key("k1", "p1", limits(None, Some(2))).await;
                h.key("k2", "p2", limits(None, Some(2))).await;

                let a = h.grant(&keyed("t1")).await.key_id.unwrap();
                let b = h.grant(&keyed("t1")).await.key_id.unwrap();
                let c = h.grant(&keyed("t1")).await.key_id.unwrap();
                let d = h.grant(&keyed("t1")).await.key_id.unwrap();
                let wait = h.denied(&keyed("t1")).await;

                assert_ne!(a, b, "the second dispatch goes to the idle key");
                assert_ne!(c, d);
                assert!(wait <= settings().busy_retry, "{wait:?}");
            }

            #[tokio::test]
            async fn work_spreads_over_keys_that_have_no_limits_of_their_own() {
                let h = $make(settings()).await;
                h.group("p1", limits(None, None)).await;
                h.key("k1", "p1", limits(None, None)).await;
                h.key("k2", "p1", limits(None, None)).await;

                let a = h.grant(&keyed("t1")).await.key_id.unwrap();
                let b = h.grant(&keyed("t1")).await.key_id.unwrap();

                assert_ne!(a, b);
            }

            #[tokio::test]
            async fn the_healthier_key_wins_between_equally_loaded_ones() {
                let h = $make(settings()).await;
                h.group("p1", limits(None, None)).await;
                h.key("k1", "p1", limits(None, Some(5))).await;
                h.key("k2", "p1", limits(None, Some(5))).await;
                let first = h.grant(&keyed("t1")).await;
                let sick = first.key_id.clone().unwrap();
                h.release(&first, KeyOutcome::Failure).await;

                let next = h.grant(&keyed("t1")).await;

                assert_ne!(next.key_id.unwrap(), sick);
            }

            #[tokio::test]
            async fn consecutive_failures_cool_a_key_and_then_one_probe_decides() {
                let h = $make(settings()).await;
                h.group("p1", limits(None, None)).await;
                h.key("k1", "p1", limits(None, None)).await;

                for _ in 0..3 {
                    let p = h.grant(&keyed("t1")).await;
                    h.release(&p, KeyOutcome::Failure).await;
                }
                let cooling = h.denied(&keyed("t1")).await;
                tokio::time::sleep(cooling + Duration::from_millis(20)).await;
                let probe = h.grant(&keyed("t1")).await;
                let during_probe = h.denied(&keyed("t1")).await;
                h.release(&probe, KeyOutcome::Failure).await;
                let after_failed_probe = h.denied(&keyed("t1")).await;
                tokio::time::sleep(after_failed_probe + Duration::from_millis(20)).await;
                let probe = h.grant(&keyed("t1")).await;
                h.release(&probe, KeyOutcome::Success).await;
                let a = h.grant(&keyed("t1")).await;
                let b = h.grant(&keyed("t1")).await;

                assert!(cooling > Duration::from_millis(400), "{cooling:?}");
                assert!(during_probe <= settings().busy_retry, "{during_probe:?}");
                assert!(after_failed_probe > Duration::from_millis(400));
                assert_ne!(a.lease_id, b.lease_id);
                assert_eq!(h.health("k1").await.consecutive_failures, 0);
            }

            #[tokio::test]
            async fn a_throttle_hint_cools_at_least_that_long_and_a_later_one_never_shortens_it() {
                let h = $make(settings()).await;
                h.group("p1", limits(None, None)).await;
                h.key("k1", "p1", limits(None, None)).await;
                let first = h.grant(&keyed("t1")).await;
                let second = h.grant(&keyed("t1")).await;

                h.release(
                    &first,
                    KeyOutcome::Throttled {
                        retry_after: Some(Duration::from_millis(1500)),
                    },
                )
                .await;
                h.release(
                    &second,
                    KeyOutcome::Throttled {
                        retry_after: Some(Duration::from_millis(100)),
                    },
                )
                .await;
                let wait = h.denied(&keyed("t1")).await;

                assert!(wait > Duration::from_millis(1300), "{wait:?}");
                let until = h.health("k1").await.cooldown_until.unwrap();
                assert!(until > Utc::now() + chrono::Duration::milliseconds(1300));
            }

            #[tokio::test]
            async fn a_spent_daily_quota_cools_the_whole_project_until_it_resets() {
                let h = $make(settings()).await;
                h.group("p1", limits(None, None)).await;
                h.group("p2", limits(None, None)).await;
                h.key("k1", "p1", limits(None, None)).await;
                h.key("k2", "p1", limits(None, None)).await;
                h.key("k3", "p2", limits(None, Some(1))).await;
                let resets_at = Utc::now() + chrono::Duration::seconds(5);
                let mut spent = h.grant(&keyed("t1")).await;
                while spent.key_id.as_deref() == Some("k3") {
                    spent = h.grant(&keyed("t1")).await;
                }

                h.release(
                    &spent,
                    KeyOutcome::QuotaExhausted {
                        resets_at: Some(resets_at),
                    },
                )
                .await;
                let elsewhere = h.grant(&keyed("t1")).await;
                let wait = h.denied(&keyed("t1")).await;

                assert_eq!(elsewhere.key_id.as_deref(), Some("k3"));
                assert!(wait <= settings().busy_retry, "k3 frees first: {wait:?}");
                for key in ["k1", "k2"] {
                    let until = h.health(key).await.cooldown_until.unwrap();
                    assert!(
                        until > resets_at - chrono::Duration::milliseconds(200),
                        "{key}"
                    );
                }
            }

            #[tokio::test]
            async fn an_invalid_key_is_disabled_recorded_and_usable_again_once_re_enabled() {
                let h = $make(settings()).await;
                h.group("p1", limits(None, None)).await;
                h.key("k1", "p1", limits(None, None)).await;
                let p = h.grant(&keyed("t1")).await;

                h.release(&p, KeyOutcome::Invalid).await;
                let wait = h.denied(&keyed("t1")).await;
                let id = UpstreamKeyId::parse("k1").unwrap();
                let mut record = h.registry.get_key(&id).await.unwrap().unwrap();

                assert_eq!(wait, settings().no_key_retry);
                assert_eq!(record.state, KeyState::Disabled);
                assert!(record.disabled_reason.is_some());
                assert!(h.health("k1").await.disabled);

                record.state = KeyState::Enabled;
                h.registry.put_key(&record).await.unwrap();
                h.limiter.key_changed(Some(&id)).await.unwrap();
                h.grant(&keyed("t1")).await;
            }

            #[tokio::test]
            async fn a_content_refusal_is_not_a_key_failure() {
                let mut s = settings();
                s.failure_threshold = 1;
                let h = $make(s).await;
                h.group("p1", limits(None, None)).await;
                h.key("k1", "p1", limits(None, None)).await;

                let p = h.grant(&keyed("t1")).await;
                h.release(&p, KeyOutcome::Neutral).await;

                h.grant(&keyed("t1")).await;
                assert_eq!(h.health("k1").await.consecutive_failures, 0);
            }

            #[tokio::test]
            async fn releasing_twice_counts_the_outcome_once() {
                let h = $make(settings()).await;
                h.group("p1", limits(None, None)).await;
                h.key("k1", "p1", limits(None, None)).await;

                let p = h.grant(&keyed("t1")).await;
                h.release(&p, KeyOutcome::Failure).await;
                h.release(&p, KeyOutcome::Failure).await;

                assert_eq!(h.health("k1").await.consecutive_failures, 1);
            }

            #[tokio::test]
            async fn key_health_reports_load_failures_error_rate_and_latency() {
                let h = $make(settings()).await;
                h.group("p1", limits(None, None)).await;
                h.key("k1", "p1", limits(None, None)).await;

                let held = h.grant(&keyed("t1")).await;
                for outcome in [
                    KeyOutcome::Success,
                    KeyOutcome::Failure,
                    KeyOutcome::Failure,
                ] {
                    let p = h.grant(&keyed("t1")).await;
                    tokio::time::sleep(Duration::from_millis(30)).await;
                    h.release(&p, outcome).await;
                }
                let health = h.health("k1").await;

                assert_eq!(health.in_flight, 1);
                assert_eq!(health.requests_last_minute, 4);
                assert_eq!(health.consecutive_failures, 2);
                assert!((health.error_rate - 2.0 / 3.0).abs() < 1e-6, "{health:?}");
                assert!(health.p95_latency_ms.unwrap() >= 30, "{health:?}");
                assert_eq!(health.cooldown_until, None);
                drop(held);
            }

            #[tokio::test]
            async fn racing_dispatches_never_take_more_than_a_limit_allows() {
                let h = $make(settings()).await;
                h.group("p1", limits(Some(12), Some(4))).await;
                h.key("k1", "p1", limits(None, None)).await;
                h.key("k2", "p1", limits(None, None)).await;
                let racers = |round: usize| {
                    (0..40)
                        .map(|i| keyed(&format!("t{round}-{i}")))
                        .collect::<Vec<_>>()
                };

                let mut per_round = Vec::new();
                let mut waits = Vec::new();
                for round in 0..4 {
                    let answers = race(&h.limiter, racers(round)).await;
                    let permits = granted(&answers);
                    per_round.push(permits.len());
                    waits.extend(answers.iter().filter_map(|a| match a {
                        Admission::Denied { retry_after } => Some(*retry_after),
                        Admission::Granted(_) => None,
                    }));
                    for p in &permits {
                        h.release(p, KeyOutcome::Success).await;
                    }
                }

                // Four at once, and twelve in the window: the fourth round finds it spent.
                assert_eq!(per_round, vec![4, 4, 4, 0]);
                assert!(
                    waits
                        .iter()
                        .all(|w| *w > Duration::ZERO && *w <= WINDOW + Duration::from_millis(5)),
                    "{waits:?}"
                );
                assert!(granted(&race(&h.limiter, racers(9)).await).is_empty());
            }

            #[tokio::test]
            async fn racing_dispatches_of_one_tenant_share_its_concurrency() {
                let h = $make(settings()).await;
                let mut r = request("solo");
                r.tenant_concurrency = 3;

                let answers = race(&h.limiter, vec![r.clone(); 30]).await;
                let permits = granted(&answers);
                let mut ids: Vec<&str> = permits.iter().map(|p| p.lease_id.as_str()).collect();
                ids.sort_unstable();
                ids.dedup();

                assert_eq!(permits.len(), 3);
                assert_eq!(ids.len(), 3, "every lease has its own id");
                h.release(&permits[0], KeyOutcome::Success).await;
                assert_eq!(granted(&race(&h.limiter, vec![r; 30]).await).len(), 1);
            }

            #[tokio::test]
            async fn racing_tenants_each_keep_their_own_requests_per_minute() {
                let h = $make(settings()).await;
                h.group("p1", limits(Some(6), None)).await;
                h.key("k1", "p1", limits(None, None)).await;
                let with_rpm = |tenant: &str, rpm: u32, key: bool| {
                    let mut r = if key { keyed(tenant) } else { request(tenant) };
                    r.tenant_rpm = Some(rpm);
                    r
                };
                let per_tenant = |answers: &[Admission]| {
                    let mut counts = std::collections::BTreeMap::new();
                    for p in granted(answers) {
                        *counts.entry(p.tenant_id.as_str().to_owned()).or_insert(0) += 1;
                    }
                    counts
                };
                let mut unkeyed = Vec::new();
                let mut keyed_racers = Vec::new();
                for _ in 0..4 {
                    unkeyed.push(with_rpm("ta", 2, false));
                    unkeyed.push(with_rpm("tb", 2, false));
                    keyed_racers.push(with_rpm("tc", 3, true));
                    keyed_racers.push(with_rpm("td", 3, true));
                }

                let first = per_tenant(&race(&h.limiter, unkeyed).await);
                let second = per_tenant(&race(&h.limiter, keyed_racers).await);

                assert_eq!(first.get("ta"), Some(&2), "{first:?}");
                assert_eq!(first.get("tb"), Some(&2), "{first:?}");
                // Each tenant to its own limit, and together exactly the project's six.
                assert_eq!(second.get("tc"), Some(&3), "{second:?}");
                assert_eq!(second.get("td"), Some(&3), "{second:?}");
            }

            #[tokio::test]
            async fn a_full_tenant_answers_with_its_own_wait_even_when_a_key_is_needed() {
                let h = $make(settings()).await;
                h.group("p1", limits(None, None)).await;
                h.key("k1", "p1", limits(None, None)).await;
                let mut r = keyed("t1");
                r.tenant_concurrency = 1;

                let _held = h.grant(&r).await;
                let wait = h.denied(&r).await;

                assert!(wait <= settings().busy_retry, "{wait:?}");
            }

            #[tokio::test]
            async fn a_racer_denied_by_a_short_lease_just_granted_waits_only_for_that_lease() {
                let h = $make(settings()).await;
                let mut r = request("t1");
                r.tenant_concurrency = 1;
                r.lease = Duration::from_millis(40);

                let answers = race(&h.limiter, vec![r.clone(), r]).await;
                let waits: Vec<Duration> = answers
                    .iter()
                    .filter_map(|a| match a {
                        Admission::Denied { retry_after } => Some(*retry_after),
                        Admission::Granted(_) => None,
                    })
                    .collect();

                assert_eq!(waits.len(), 1, "{answers:?}");
                assert!(waits[0] <= Duration::from_millis(40), "{waits:?}");
            }

            #[tokio::test]
            async fn racing_releases_of_one_lease_count_its_outcome_once() {
                let h = $make(settings()).await;
                h.group("p1", limits(None, None)).await;
                h.key("k1", "p1", limits(None, None)).await;
                let permit = h.grant(&keyed("t1")).await;

                let releases: Vec<_> = (0..10)
                    .map(|_| {
                        let limiter = Arc::clone(&h.limiter);
                        let permit = permit.clone();
                        tokio::spawn(async move {
                            limiter.release(&permit, KeyOutcome::Failure).await.unwrap()
                        })
                    })
                    .collect();
                for release in releases {
                    release.await.unwrap();
                }
                let health = h.health("k1").await;

                assert_eq!(health.consecutive_failures, 1, "{health:?}");
                assert_eq!(health.in_flight, 0, "{health:?}");
            }

            #[tokio::test]
            async fn after_a_cooldown_one_racing_dispatch_gets_the_probe() {
                let h = $make(settings()).await;
                h.group("p1", limits(None, None)).await;
                h.key("k1", "p1", limits(None, None)).await;
                for _ in 0..settings().failure_threshold {
                    let p = h.grant(&keyed("t1")).await;
                    h.release(&p, KeyOutcome::Failure).await;
                }
                h.denied(&keyed("t1")).await;
                tokio::time::sleep(settings().cooldown + Duration::from_millis(50)).await;

                let answers = race(&h.limiter, vec![keyed("t1"); 20]).await;

                assert_eq!(granted(&answers).len(), 1, "one probe at a time");
            }
        }
    };
}

suite!(embedded, local);
#[cfg(feature = "redis")]
suite!(on_redis, redis);
