//! The distributed limiter on Redis (ElastiCache or Valkey), behind the `redis` feature.
//!
//! One script call takes every permit of a dispatch (`acquire.lua`) and one gives them back
//! (`release.lua`). Every key a script touches is passed in `KEYS` and carries the same hash
//! tag, so the scripts run unchanged on a cluster; every key has a TTL. Auth and TLS come
//! from the URL (`rediss://user:password@host:6379`), with an optional private CA.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rand::Rng;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Script, Value};
use secrecy::{ExposeSecret, SecretString};
use tracing::{info, warn};

use super::pool::KeyPool;
use super::{summarize, LimiterSettings};
use crate::domain::{QuotaGroupId, TenantId, UpstreamKeyId};
use crate::ports::{
    Admission, KeyHealth, KeyOutcome, Limiter, Permit, PermitRequest, PortError, PortResult,
};

/// Where the Redis limiter connects and how it names its keys.
#[derive(Clone)]
pub struct RedisSettings {
    /// `redis://` or `rediss://` (TLS) URL; it may carry a user and password.
    pub url: SecretString,
    /// Prefix and hash tag of every key (`{imagegen}:...`).
    pub namespace: String,
    /// PEM of a private CA to trust for TLS, when the server's certificate is not public.
    pub ca_pem: Option<Vec<u8>>,
    /// How long key health outlives its last change (a cooldown in force is always kept).
    pub health_ttl: Duration,
    /// How long one call may take before the limiter counts as unreachable.
    pub timeout: Duration,
}

impl RedisSettings {
    /// Read `IMAGEGEN_REDIS_URL` (required), `IMAGEGEN_REDIS_NAMESPACE` and
    /// `IMAGEGEN_REDIS_CA_FILE` (a PEM file of a private CA) once, at start-up.
    ///
    /// # Errors
    /// A message naming the variable that is missing or the file that cannot be read.
    pub fn from_env() -> Result<Self, String> {
        let url = std::env::var("IMAGEGEN_REDIS_URL")
            .map_err(|_| "IMAGEGEN_REDIS_URL is not set (redis:// or rediss:// URL)".to_owned())?;
        let mut settings = Self::new(url.into());
        if let Ok(namespace) = std::env::var("IMAGEGEN_REDIS_NAMESPACE") {
            settings.namespace = namespace;
        }
        if let Ok(path) = std::env::var("IMAGEGEN_REDIS_CA_FILE") {
            let pem = std::fs::read(&path)
                .map_err(|e| format!("IMAGEGEN_REDIS_CA_FILE {path} cannot be read: {e}"))?;
            settings.ca_pem = Some(pem);
        }
        Ok(settings)
    }

    pub fn new(url: SecretString) -> Self {
        Self {
            url,
            namespace: "imagegen".into(),
            ca_pem: None,
            health_ttl: Duration::from_secs(24 * 3600),
            timeout: Duration::from_secs(2),
        }
    }
}

fn unavailable(e: redis::RedisError) -> PortError {
    PortError::Unavailable(format!("redis: {e}"))
}

fn ms(d: Duration) -> i64 {
    d.as_millis().min(i64::MAX as u128) as i64
}

fn limit(value: Option<u32>) -> i64 {
    value.map_or(-1, i64::from)
}

fn int(value: &Value) -> Option<i64> {
    match value {
        Value::Int(n) => Some(*n),
        Value::BulkString(bytes) => std::str::from_utf8(bytes).ok()?.parse().ok(),
        Value::SimpleString(s) => s.parse().ok(),
        _ => None,
    }
}

fn text(value: &Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) => String::from_utf8(bytes.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Finished attempts a key's "requests in the last minute" can count (in-flight ones come on
/// top): more than a key makes in a minute at any upstream limit we know of.
const RECENT_ATTEMPTS_COUNTED: u32 = 1_000;

/// Clear a key's disabled mark and keep the rest of its health record.
const ENABLE: &str = r"
local record = redis.call('HGET', KEYS[1], ARGV[1])
if not record then return 0 end
local head, tail = string.match(record, '^(%S+ %S+ %S+ %S+) %S+ (.*)$')
if not head then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], head .. ' 0 ' .. tail)
return 1
";

/// The levels a lease id names: `<start>-<random>|<global counted>|<key>|<group>|<tenant>`.
struct LeaseLevels {
    global: bool,
    key: Option<UpstreamKeyId>,
    group: Option<QuotaGroupId>,
}

fn lease_levels(lease_id: &str) -> LeaseLevels {
    let mut parts = lease_id.splitn(5, '|').skip(1);
    let global = parts.next() == Some("1");
    let key = parts.next().and_then(|k| UpstreamKeyId::parse(k).ok());
    let group = parts.next().and_then(|g| QuotaGroupId::parse(g).ok());
    LeaseLevels { global, key, group }
}

fn malformed() -> PortError {
    PortError::Internal("limiter script answered in an unexpected shape".into())
}

/// The [`Limiter`] on Redis.
pub struct RedisLimiter {
    settings: LimiterSettings,
    redis: RedisSettings,
    pool: Arc<KeyPool>,
    connection: ConnectionManager,
    acquire: Script,
    release: Script,
    health: Script,
    submit: Script,
    enable: Script,
}

impl RedisLimiter {
    /// Connect to Redis.
    ///
    /// # Errors
    /// [`PortError::Unavailable`] when the URL is invalid or the server cannot be reached.
    pub async fn connect(
        settings: LimiterSettings,
        redis: RedisSettings,
        pool: Arc<KeyPool>,
    ) -> PortResult<Self> {
        // With the AWS SDK (aws-lc) and reqwest (ring) in one binary, rustls cannot pick a
        // crypto provider by itself, and a TLS connection to ElastiCache would panic. Name one;
        // if another part of the process already did, that choice stands.
        let _ = rustls::crypto::ring::default_provider().install_default();

        let namespace = &redis.namespace;
        if namespace.is_empty() || namespace.contains(['{', '}']) {
            // The namespace is the hash tag that keeps every key in one cluster slot.
            return Err(PortError::Internal(format!(
                "redis namespace {namespace:?} must be non-empty and free of braces"
            )));
        }
        let url = redis.url.expose_secret();
        let client = match &redis.ca_pem {
            Some(pem) => redis::Client::build_with_tls(
                url,
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(pem.clone()),
                },
            ),
            None => redis::Client::open(url),
        }
        .map_err(unavailable)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(redis.timeout))
            .set_response_timeout(Some(redis.timeout))
            .set_number_of_retries(2);
        let connection = ConnectionManager::new_with_config(client, config)
            .await
            .map_err(unavailable)?;
        Ok(Self {
            settings,
            redis,
            pool,
            connection,
            acquire: Script::new(include_str!("acquire.lua")),
            release: Script::new(include_str!("release.lua")),
            health: Script::new(include_str!("health.lua")),
            submit: Script::new(include_str!("submit.lua")),
            enable: Script::new(ENABLE),
        })
    }

    fn key(&self, kind: &str, level: &str) -> String {
        format!("{{{}}}:{kind}:{level}", self.redis.namespace)
    }

    /// A level's sorted set of admissions and leases.
    fn level(&self, level: &str) -> String {
        self.key("z", level)
    }

    /// A rate-limited level's log of admissions in the window.
    fn log(&self, level: &str) -> String {
        self.key("w", level)
    }

    /// The live lease count of every level, and each key's recent admissions.
    fn counts(&self) -> String {
        format!("{{{}}}:c", self.redis.namespace)
    }

    /// Every live lease, scored by its expiry.
    fn index(&self) -> String {
        format!("{{{}}}:x", self.redis.namespace)
    }

    /// Key and group health records.
    fn health_hash(&self) -> String {
        format!("{{{}}}:h", self.redis.namespace)
    }

    fn key_level(key: &UpstreamKeyId) -> String {
        format!("k:{key}")
    }

    fn group_level(group: &QuotaGroupId) -> String {
        format!("q:{group}")
    }

    /// Outcomes kept per key: enough for the error rate and latency figures and to count the
    /// attempts of the last minute, up to [`RECENT_ATTEMPTS_COUNTED`].
    fn outcomes_kept(&self) -> u32 {
        self.settings.health_samples.max(RECENT_ATTEMPTS_COUNTED)
    }

    /// Every key name this limiter may write, for tests and operators.
    pub fn namespace_pattern(&self) -> String {
        format!("{{{}}}:*", self.redis.namespace)
    }

    /// The connection, for benchmarks and tests that inspect the keys.
    pub fn connection(&self) -> ConnectionManager {
        self.connection.clone()
    }
}

#[async_trait]
impl Limiter for RedisLimiter {
    async fn admit_submission(
        &self,
        tenant: &TenantId,
        limit: u32,
    ) -> PortResult<Option<Duration>> {
        let wait: i64 = self
            .submit
            .key(self.level(&format!("s:{tenant}")))
            .arg(ms(self.settings.window))
            .arg(i64::from(limit))
            .arg(format!("{:016x}", rand::thread_rng().gen::<u64>()))
            .invoke_async(&mut self.connection.clone())
            .await
            .map_err(unavailable)?;
        Ok((wait > 0).then(|| Duration::from_millis(wait as u64)))
    }

    async fn acquire(&self, request: &PermitRequest) -> PortResult<Admission> {
        let candidates = if request.needs_key {
            self.pool.candidates().await?
        } else {
            Arc::default()
        };
        let settings = &self.settings;

        let lease = request.lease.min(settings.max_lease);
        let set_ttl = ms(lease.max(settings.max_lease).max(settings.window)) + 1000;

        let mut call = self.acquire.prepare_invoke();
        call.key(self.counts())
            .key(self.index())
            .key(self.health_hash())
            .key(self.log("g"))
            .key(self.log(&format!("t:{}", request.tenant_id)));
        for candidate in candidates.iter() {
            call.key(self.log(&Self::key_level(&candidate.key)))
                .key(self.log(&Self::group_level(&candidate.group)));
        }
        call.arg(ms(lease))
            .arg(ms(settings.window))
            .arg(ms(settings.busy_retry))
            .arg(ms(settings.no_key_retry))
            .arg(format!("{:016x}", rand::thread_rng().gen::<u64>()))
            .arg(if request.needs_key { 1 } else { 0 })
            .arg(limit(settings.global.requests_per_minute))
            .arg(limit(settings.global.concurrency))
            .arg(limit(request.tenant_rpm))
            .arg(i64::from(request.tenant_concurrency))
            .arg(set_ttl)
            .arg(format!("t:{}", request.tenant_id))
            .arg(request.tenant_id.as_str())
            .arg(candidates.len());
        for candidate in candidates.iter() {
            call.arg(Self::key_level(&candidate.key))
                .arg(Self::group_level(&candidate.group))
                .arg(limit(candidate.key_limits.requests_per_minute))
                .arg(limit(candidate.key_limits.concurrency))
                .arg(limit(candidate.group_limits.requests_per_minute))
                .arg(limit(candidate.group_limits.concurrency));
        }

        let mut connection = self.connection.clone();
        let answer: Value = call
            .invoke_async(&mut connection)
            .await
            .map_err(unavailable)?;
        let Value::Array(parts) = answer else {
            return Err(malformed());
        };
        match parts.first().and_then(int) {
            Some(1) => {
                let lease_id = parts.get(1).and_then(text).ok_or_else(malformed)?;
                let key_id = parts.get(2).and_then(text).filter(|k| !k.is_empty());
                Ok(Admission::Granted(Permit {
                    lease_id,
                    tenant_id: request.tenant_id.clone(),
                    key_id,
                }))
            }
            Some(0) => {
                let wait = parts.get(1).and_then(int).ok_or_else(malformed)?;
                Ok(Admission::Denied {
                    retry_after: Duration::from_millis(wait.max(1) as u64),
                })
            }
            _ => Err(malformed()),
        }
    }

    async fn release(&self, permit: &Permit, outcome: KeyOutcome) -> PortResult<()> {
        let settings = &self.settings;
        // The lease id names the key and group it holds (`acquire.lua`).
        let LeaseLevels { global, key, group } = lease_levels(&permit.lease_id);
        let (name, wait) = match &outcome {
            KeyOutcome::Success => ("success", 0),
            KeyOutcome::Neutral => ("neutral", 0),
            KeyOutcome::Unused => ("unused", 0),
            KeyOutcome::Failure => ("failure", 0),
            KeyOutcome::Throttled { retry_after } => ("throttled", retry_after.map_or(-1, ms)),
            KeyOutcome::Invalid => ("invalid", 0),
            KeyOutcome::QuotaExhausted { resets_at } => {
                let now = Utc::now();
                let reset = resets_at.unwrap_or_else(|| settings.next_daily_reset(now));
                ("quota", (reset - now).num_milliseconds().max(0))
            }
        };

        // A lease without a key still declares key names, which the script leaves alone.
        let key_level = key.as_ref().map_or("k:-".to_owned(), Self::key_level);
        let group_level = group.as_ref().map_or("q:-".to_owned(), Self::group_level);
        let mut call = self.release.prepare_invoke();
        call.key(self.counts())
            .key(self.index())
            .key(self.health_hash())
            .key(self.log("g"))
            .key(self.log(&format!("t:{}", permit.tenant_id)))
            .key(self.log(&key_level))
            .key(self.log(&group_level))
            .key(self.key("s", &key_level));
        call.arg(&permit.lease_id)
            .arg(name)
            .arg(wait)
            .arg(settings.failure_threshold)
            .arg(ms(settings.cooldown))
            .arg(ms(settings.throttle_cooldown))
            .arg(self.outcomes_kept())
            .arg(ms(self.redis.health_ttl))
            .arg(key.as_ref().map_or(String::new(), Self::key_level))
            .arg(group.as_ref().map_or(String::new(), Self::group_level))
            .arg(format!("t:{}", permit.tenant_id));
        if global {
            call.arg("g");
        }
        if key.is_some() {
            call.arg(&key_level);
        }
        if group.is_some() {
            call.arg(&group_level);
        }

        let mut connection = self.connection.clone();
        let answer: Value = call
            .invoke_async(&mut connection)
            .await
            .map_err(unavailable)?;
        let Value::Array(parts) = answer else {
            return Err(malformed());
        };
        let disabled = parts.get(1).and_then(int) == Some(1);
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
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let mut call = self.health.prepare_invoke();
        call.key(self.counts())
            .key(self.index())
            .key(self.health_hash());
        for key in keys {
            call.key(self.key("s", &Self::key_level(key)));
        }
        call.arg(ms(self.settings.window))
            .arg(self.settings.health_samples.max(1))
            .arg(self.outcomes_kept());
        for key in keys {
            // A key without a group has no group cooldown.
            let group = self.pool.group_of(key).await;
            call.arg(key.as_str())
                .arg(group.as_ref().map_or("", QuotaGroupId::as_str));
        }

        let mut connection = self.connection.clone();
        let answer: Value = call
            .invoke_async(&mut connection)
            .await
            .map_err(unavailable)?;
        let Value::Array(parts) = answer else {
            return Err(malformed());
        };
        let now = parts.first().and_then(int).ok_or_else(malformed)?;

        let mut figures = Vec::with_capacity(keys.len());
        for (key, entry) in keys.iter().zip(parts.iter().skip(1)) {
            let Value::Array(fields) = entry else {
                return Err(malformed());
            };
            let field = |i: usize| fields.get(i).and_then(int).unwrap_or(0);
            let cooldown = field(2);
            let samples: Vec<(bool, u64)> = match fields.get(5) {
                Some(Value::Array(items)) => items
                    .iter()
                    .filter_map(text)
                    .filter_map(|s| {
                        // `ok:latency_ms:start_ms`
                        let mut parts = s.split(':');
                        let ok = parts.next()? == "1";
                        Some((ok, parts.next()?.parse().ok()?))
                    })
                    .collect(),
                _ => Vec::new(),
            };
            let (error_rate, p95) = summarize(&samples);
            figures.push(KeyHealth {
                key_id: key.clone(),
                in_flight: field(0) as u32,
                requests_last_minute: field(1) as u32,
                cooldown_until: (cooldown > now)
                    .then(|| DateTime::from_timestamp_millis(cooldown))
                    .flatten(),
                consecutive_failures: field(3) as u32,
                error_rate,
                p95_latency_ms: p95,
                disabled: field(4) == 1,
            });
        }
        Ok(figures)
    }

    async fn key_changed(&self, key: Option<&UpstreamKeyId>) -> PortResult<()> {
        self.pool.invalidate();
        if let Some(key) = key {
            let mut connection = self.connection.clone();
            let removed: Result<i64, _> = self
                .enable
                .key(self.health_hash())
                .arg(Self::key_level(key))
                .invoke_async(&mut connection)
                .await;
            if let Err(e) = removed {
                warn!(key_id = %key, error = %e, "key health not reset");
                return Err(unavailable(e));
            }
        }
        Ok(())
    }
}
