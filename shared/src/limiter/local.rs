//! The in-process limiter: the same semantics as the Redis one, for one process.
//!
//! Its clock is the process's monotonic clock, so every caller in the process shares it and a
//! wall-clock jump cannot grant extra permits. State lives in one mutex-guarded map; each
//! acquire or release is one critical section, the in-process analogue of one script call.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rand::Rng;
use secrecy::SecretString;
use tracing::info;

use super::pool::{Candidate, KeyPool};
use super::{lease_start_ms, summarize, LimiterSettings};
use crate::domain::{Limits, QuotaGroupId, TenantId, UpstreamKeyId};
use crate::ports::{
    Admission, KeyHealth, KeyOutcome, Limiter, Permit, PermitRequest, PortError, PortResult,
};

/// Admission times of one level, oldest first, with the lease that made each.
type Log = VecDeque<(i64, String)>;

/// How a usable key compares: shared load, key load, recent failure share, failures.
type Rank = (f64, f64, f64, u32);

#[derive(Default)]
struct Health {
    cooldown_until: i64,
    failures: u32,
    /// After a cooldown, one lease at a time (the probe) decides whether the key is back.
    probing: bool,
    probe: Option<(String, i64)>,
    disabled: bool,
    /// Recent failure share, weighted towards the newest outcomes (0 = healthy).
    ewma: f64,
    samples: VecDeque<(bool, u64)>,
}

#[derive(Default)]
struct State {
    logs: HashMap<String, Log>,
    leases: HashMap<String, HashMap<String, i64>>,
    health: HashMap<UpstreamKeyId, Health>,
    group_cooldown: HashMap<QuotaGroupId, i64>,
}

struct Clock {
    started: Instant,
    started_ms: i64,
}

impl Clock {
    fn now_ms(&self) -> i64 {
        self.started_ms + self.started.elapsed().as_millis() as i64
    }
}

fn ms(d: Duration) -> i64 {
    d.as_millis() as i64
}

/// The level names, the same suffixes the Redis adapter uses in its key names.
fn tenant_level(tenant: &str) -> String {
    format!("t:{tenant}")
}

fn key_level(key: &UpstreamKeyId) -> String {
    format!("k:{key}")
}

fn group_level(group: &QuotaGroupId) -> String {
    format!("q:{group}")
}

const GLOBAL: &str = "g";

impl State {
    /// Drop what no longer counts: admissions older than the window and expired leases.
    fn prune(&mut self, level: &str, now: i64, window: i64) {
        if let Some(log) = self.logs.get_mut(level) {
            while log.front().is_some_and(|(at, _)| *at < now - window) {
                log.pop_front();
            }
            if log.is_empty() {
                self.logs.remove(level);
            }
        }
        if let Some(leases) = self.leases.get_mut(level) {
            leases.retain(|_, expiry| *expiry > now);
            if leases.is_empty() {
                self.leases.remove(level);
            }
        }
    }

    /// How long until `level` could admit one more under `limits` (0 = now), and its load.
    fn wait(
        &self,
        level: &str,
        limits: Limits,
        now: i64,
        settings: &LimiterSettings,
    ) -> (i64, f64) {
        let window = ms(settings.window);
        let mut wait = 0;
        let mut load: f64 = 0.0;
        if let Some(limit) = limits.requests_per_minute {
            let count = self.logs.get(level).map_or(0, VecDeque::len);
            load = load.max(count as f64 / f64::from(limit.max(1)));
            if count >= limit as usize {
                // The admission whose ageing out brings the count below the limit.
                let index = count - limit as usize;
                wait = match self.logs.get(level).and_then(|log| log.get(index)) {
                    Some((at, _)) => at + window + 1 - now,
                    None => window,
                };
            }
        }
        let held = self.leases.get(level).map_or(0, HashMap::len);
        if limits.concurrency.is_none() {
            // Without a limit, the lease count alone (scaled below any fraction) spreads work.
            load = load.max(held as f64 * 0.000_001);
        }
        if let Some(limit) = limits.concurrency {
            load = load.max(held as f64 / f64::from(limit.max(1)));
            if held >= limit as usize {
                let mut expiries: Vec<i64> = self
                    .leases
                    .get(level)
                    .map(|l| l.values().copied().collect())
                    .unwrap_or_default();
                expiries.sort_unstable();
                let index = held - limit as usize;
                let freed = expiries.get(index).map_or(window, |at| at - now);
                wait = wait.max(freed.min(ms(settings.busy_retry)).max(1));
            }
        }
        (wait.max(0), load)
    }

    /// Take a lease; log the admission where a rate is limited (and always per key, for its
    /// health figures), so unlimited levels cost no memory per admission.
    fn take(&mut self, level: &str, lease_id: &str, now: i64, expiry: i64, logged: bool) {
        if logged {
            self.logs
                .entry(level.to_owned())
                .or_default()
                .push_back((now, lease_id.to_owned()));
        }
        self.leases
            .entry(level.to_owned())
            .or_default()
            .insert(lease_id.to_owned(), expiry);
    }

    /// Give a lease back; `true` when it was still held.
    fn give_back(&mut self, level: &str, lease_id: &str, refund: bool) -> bool {
        if refund {
            if let Some(log) = self.logs.get_mut(level) {
                log.retain(|(_, id)| id != lease_id);
            }
        }
        self.leases
            .get_mut(level)
            .is_some_and(|leases| leases.remove(lease_id).is_some())
    }
}

/// The embedded [`Limiter`].
pub struct LocalLimiter {
    settings: LimiterSettings,
    pool: Arc<KeyPool>,
    clock: Clock,
    state: Mutex<State>,
}

impl LocalLimiter {
    pub fn new(settings: LimiterSettings, pool: Arc<KeyPool>) -> Self {
        Self {
            settings,
            pool,
            clock: Clock {
                started: Instant::now(),
                started_ms: Utc::now().timestamp_millis(),
            },
            state: Mutex::new(State::default()),
        }
    }

    fn lock(&self) -> PortResult<std::sync::MutexGuard<'_, State>> {
        self.state
            .lock()
            .map_err(|_| PortError::Internal("limiter state poisoned".into()))
    }

    fn admit(&self, request: &PermitRequest, candidates: &[Candidate]) -> PortResult<Admission> {
        let settings = &self.settings;
        let window = ms(settings.window);
        let mut state = self.lock()?;
        let now = self.clock.now_ms();

        let tenant = tenant_level(request.tenant_id.as_str());
        let tenant_limits = Limits {
            requests_per_minute: request.tenant_rpm,
            concurrency: Some(request.tenant_concurrency),
        };
        state.prune(GLOBAL, now, window);
        state.prune(&tenant, now, window);
        let (global_wait, _) = state.wait(GLOBAL, settings.global, now, settings);
        let (tenant_wait, _) = state.wait(&tenant, tenant_limits, now, settings);
        let shared_wait = global_wait.max(tenant_wait);

        let mut chosen: Option<(&Candidate, Rank)> = None;
        let mut soonest: Option<i64> = None;
        // A full global or tenant level decides the wait on its own, as in the Redis script.
        if request.needs_key && shared_wait == 0 {
            for candidate in candidates {
                let key = key_level(&candidate.key);
                let group = group_level(&candidate.group);
                state.prune(&key, now, window);
                state.prune(&group, now, window);

                let health = state.health.get(&candidate.key);
                if health.is_some_and(|h| h.disabled) {
                    continue;
                }
                let cooldown = health.map_or(0, |h| h.cooldown_until).max(
                    state
                        .group_cooldown
                        .get(&candidate.group)
                        .copied()
                        .unwrap_or(0),
                );
                let mut wait = (cooldown - now).max(0);
                if let Some((_, expiry)) = health
                    .filter(|h| h.probing)
                    .and_then(|h| h.probe.as_ref())
                    .filter(|(_, expiry)| *expiry > now)
                {
                    wait = wait.max((expiry - now).min(ms(settings.busy_retry)));
                }
                let (key_wait, key_load) = state.wait(&key, candidate.key_limits, now, settings);
                let (group_wait, group_load) =
                    state.wait(&group, candidate.group_limits, now, settings);
                let wait = wait.max(key_wait).max(group_wait);
                if wait > 0 {
                    soonest = Some(soonest.map_or(wait, |s| s.min(wait)));
                    continue;
                }
                // Least loaded (the busier of key and group, then the key alone), then healthiest.
                let rank = (
                    key_load.max(group_load),
                    key_load,
                    health.map_or(0.0, |h| h.ewma),
                    health.map_or(0, |h| h.failures),
                );
                if chosen.as_ref().is_none_or(|(_, best)| rank < *best) {
                    chosen = Some((candidate, rank));
                }
            }
        }

        // A full global or tenant level answers with its own wait: the keys were not looked at.
        let key_wait = match (&chosen, request.needs_key) {
            (_, false) | (Some(_), true) => 0,
            (None, true) if shared_wait > 0 => 0,
            (None, true) => soonest.unwrap_or(ms(settings.no_key_retry)),
        };
        let wait = shared_wait.max(key_wait);
        if wait > 0 {
            return Ok(Admission::Denied {
                retry_after: Duration::from_millis(wait as u64),
            });
        }

        let lease_id = format!("{now}-{:016x}", rand::thread_rng().gen::<u64>());
        let expiry = now + ms(request.lease.min(settings.max_lease));
        let global_logged = settings.global.requests_per_minute.is_some();
        state.take(GLOBAL, &lease_id, now, expiry, global_logged);
        state.take(
            &tenant,
            &lease_id,
            now,
            expiry,
            request.tenant_rpm.is_some(),
        );
        let key_id = match chosen {
            Some((candidate, _)) => {
                state.take(&key_level(&candidate.key), &lease_id, now, expiry, true);
                let group_logged = candidate.group_limits.requests_per_minute.is_some();
                state.take(
                    &group_level(&candidate.group),
                    &lease_id,
                    now,
                    expiry,
                    group_logged,
                );
                let health = state.health.entry(candidate.key.clone()).or_default();
                if health.probing {
                    health.probe = Some((lease_id.clone(), expiry));
                }
                Some(candidate.key.to_string())
            }
            None => None,
        };
        Ok(Admission::Granted(Permit {
            lease_id,
            tenant_id: request.tenant_id.clone(),
            key_id,
        }))
    }

    /// Record an attempt's outcome on its key; returns whether the key was just disabled.
    fn record(
        &self,
        state: &mut State,
        key: &UpstreamKeyId,
        group: Option<&QuotaGroupId>,
        lease_id: &str,
        outcome: &KeyOutcome,
        now: i64,
    ) -> bool {
        let settings = &self.settings;
        let latency = lease_start_ms(lease_id).map_or(0, |start| (now - start).max(0) as u64);
        let health = state.health.entry(key.clone()).or_default();
        let was_probe = health.probe.as_ref().is_some_and(|(id, _)| id == lease_id);
        if was_probe {
            health.probe = None;
        }

        let mut failed = false;
        let mut sample = None;
        let mut newly_disabled = false;
        let mut group_until = None;
        match outcome {
            KeyOutcome::Success => {
                health.failures = 0;
                health.probing = false;
                sample = Some(true);
            }
            KeyOutcome::Neutral => sample = Some(true),
            KeyOutcome::Unused => {}
            KeyOutcome::Failure => failed = true,
            KeyOutcome::Throttled { retry_after } => {
                let wait = retry_after.unwrap_or(settings.throttle_cooldown);
                health.cooldown_until = health.cooldown_until.max(now + ms(wait));
                failed = true;
            }
            KeyOutcome::Invalid => {
                newly_disabled = !health.disabled;
                health.disabled = true;
                sample = Some(false);
            }
            KeyOutcome::QuotaExhausted { resets_at } => {
                let reset = resets_at.unwrap_or_else(|| settings.next_daily_reset(Utc::now()));
                let wait = (reset - Utc::now()).num_milliseconds().max(0);
                health.cooldown_until = health.cooldown_until.max(now + wait);
                group_until = Some(now + wait);
            }
        }
        if failed {
            health.failures += 1;
            sample = Some(false);
            if health.probing || health.failures >= settings.failure_threshold {
                health.cooldown_until = health.cooldown_until.max(now + ms(settings.cooldown));
                health.probing = true;
            }
        }
        if let Some(ok) = sample {
            let hit = if ok { 0.0 } else { 1.0 };
            health.ewma = health.ewma * 0.9 + hit * 0.1;
            health.samples.push_front((ok, latency));
            health.samples.truncate(settings.health_samples as usize);
        }
        if let (Some(until), Some(group)) = (group_until, group) {
            let cooldown = state.group_cooldown.entry(group.clone()).or_insert(0);
            *cooldown = (*cooldown).max(until);
        }
        newly_disabled
    }
}

#[async_trait]
impl Limiter for LocalLimiter {
    async fn admit_submission(
        &self,
        tenant: &TenantId,
        limit: u32,
    ) -> PortResult<Option<Duration>> {
        let now = self.clock.now_ms();
        let window = ms(self.settings.window);
        let mut state = self
            .state
            .lock()
            .map_err(|_| PortError::Internal("limiter state poisoned".into()))?;
        let log = state.logs.entry(format!("s:{tenant}")).or_default();
        while log.front().is_some_and(|(at, _)| *at <= now - window) {
            log.pop_front();
        }
        if (log.len() as u64) < u64::from(limit) {
            log.push_back((now, String::new()));
            return Ok(None);
        }
        let oldest = log.front().map_or(now, |(at, _)| *at);
        Ok(Some(Duration::from_millis(
            (oldest + window - now).max(1) as u64
        )))
    }

    async fn acquire(&self, request: &PermitRequest) -> PortResult<Admission> {
        let candidates = if request.needs_key {
            self.pool.candidates().await?
        } else {
            Arc::default()
        };
        self.admit(request, &candidates)
    }

    async fn release(&self, permit: &Permit, outcome: KeyOutcome) -> PortResult<()> {
        let key = permit
            .key_id
            .as_deref()
            .and_then(|k| UpstreamKeyId::parse(k).ok());
        let group = match &key {
            Some(key) => self.pool.group_of(key).await,
            None => None,
        };
        let refund = outcome == KeyOutcome::Unused;

        let disabled = {
            let mut state = self.lock()?;
            let now = self.clock.now_ms();
            let lease = permit.lease_id.as_str();
            state.give_back(GLOBAL, lease, refund);
            state.give_back(&tenant_level(permit.tenant_id.as_str()), lease, refund);
            match &key {
                Some(key) => {
                    let held = state.give_back(&key_level(key), lease, refund);
                    if let Some(group) = &group {
                        state.give_back(&group_level(group), lease, refund);
                    }
                    // A repeated release must not count the same outcome twice.
                    held && self.record(&mut state, key, group.as_ref(), lease, &outcome, now)
                }
                None => false,
            }
        };

        if let (true, Some(key)) = (disabled, &key) {
            self.pool
                .disable(key, "the upstream rejected the key as invalid or revoked")
                .await;
        }
        if let (KeyOutcome::QuotaExhausted { .. }, Some(key)) = (&outcome, &key) {
            info!(key_id = %key, "daily quota spent; key cools until it resets");
        }
        Ok(())
    }

    async fn key_secret(&self, key_id: &str) -> PortResult<Option<SecretString>> {
        self.pool.secret(key_id).await
    }

    async fn key_health(&self, keys: &[UpstreamKeyId]) -> PortResult<Vec<KeyHealth>> {
        let mut groups = Vec::with_capacity(keys.len());
        for key in keys {
            groups.push(self.pool.group_of(key).await);
        }
        let mut state = self.lock()?;
        let now = self.clock.now_ms();
        let window = ms(self.settings.window);
        let offset = Utc::now().timestamp_millis() - now;

        let mut figures = Vec::with_capacity(keys.len());
        for (key, group) in keys.iter().zip(groups) {
            let level = key_level(key);
            state.prune(&level, now, window);
            let group_cooldown = group
                .and_then(|g| state.group_cooldown.get(&g).copied())
                .unwrap_or(0);
            let health = state.health.get(key);
            let cooldown = health.map_or(0, |h| h.cooldown_until).max(group_cooldown);
            let samples: Vec<(bool, u64)> = health
                .map(|h| h.samples.iter().copied().collect())
                .unwrap_or_default();
            let (error_rate, p95) = summarize(&samples);
            figures.push(KeyHealth {
                key_id: key.clone(),
                in_flight: state.leases.get(&level).map_or(0, HashMap::len) as u32,
                requests_last_minute: state.logs.get(&level).map_or(0, VecDeque::len) as u32,
                cooldown_until: (cooldown > now)
                    .then(|| DateTime::from_timestamp_millis(cooldown + offset))
                    .flatten(),
                consecutive_failures: health.map_or(0, |h| h.failures),
                error_rate,
                p95_latency_ms: p95,
                disabled: health.is_some_and(|h| h.disabled),
            });
        }
        Ok(figures)
    }

    async fn key_changed(&self, key: Option<&UpstreamKeyId>) -> PortResult<()> {
        self.pool.invalidate();
        if let Some(key) = key {
            if let Some(health) = self.lock()?.health.get_mut(key) {
                health.disabled = false;
            }
        }
        Ok(())
    }
}
