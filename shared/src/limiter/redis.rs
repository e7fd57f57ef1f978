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

use super::batch::Batcher;
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

/// The most dispatches one script call carries.
const BATCH_MAX: usize = 64;

/// Script calls of one kind in flight at once: one on the wire while the next gathers.
const BATCH_IN_FLIGHT: usize = 2;

/// One dispatch's part of a batched acquire.
struct AcquireCall {
    request: PermitRequest,
}

/// One release's part of a batched release.
struct ReleaseCall {
    lease_id: String,
    tenant: TenantId,
    outcome: &'static str,
    wait_ms: i64,
}

/// What a batched acquire answers for one dispatch.
enum Acquired {
    Granted {
        lease_id: String,
        key_id: Option<String>,
    },
    Denied {
        wait_ms: i64,
    },
}

/// What a batched release answers for one lease: whether it was still held, and whether it
/// disabled its key.
struct Released {
    newly_disabled: bool,
}

/// The connection, scripts and names the batch tasks share with the limiter.
struct Shared {
    settings: LimiterSettings,
    redis: RedisSettings,
    pool: Arc<KeyPool>,
    connection: ConnectionManager,
    acquire: Script,
    release: Script,
}

/// The [`Limiter`] on Redis.
///
/// Acquires and releases that arrive while earlier ones are in flight share the next script
/// call (see `batch.rs`): each dispatch still takes one round trip, all or nothing.
pub struct RedisLimiter {
    shared: Arc<Shared>,
    acquires: Batcher<AcquireCall, Acquired>,
    releases: Batcher<ReleaseCall, Released>,
    health: Script,
    submit: Script,
    enable: Script,
}

impl RedisLimiter {
    /// Connect to Redis and start the batch tasks on the current runtime.
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
        // Nagle's algorithm would hold a call back until the previous one is acknowledged,
        // which on a pipelined connection adds milliseconds to calls that race.
        let info = redis::IntoConnectionInfo::into_connection_info(redis.url.expose_secret())
            .map_err(unavailable)?
            .set_tcp_settings(redis::io::tcp::TcpSettings::default().set_nodelay(true));
        let client = match &redis.ca_pem {
            Some(pem) => redis::Client::build_with_tls(
                info,
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(pem.clone()),
                },
            ),
            None => redis::Client::open(info),
        }
        .map_err(unavailable)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(redis.timeout))
            .set_response_timeout(Some(redis.timeout))
            .set_number_of_retries(2);
        let connection = ConnectionManager::new_with_config(client, config)
            .await
            .map_err(unavailable)?;
        let shared = Arc::new(Shared {
            settings,
            redis,
            pool,
            connection,
            acquire: Script::new(include_str!("acquire.lua")),
            release: Script::new(include_str!("release.lua")),
        });

        let for_acquires = Arc::clone(&shared);
        let acquires = Batcher::start(
            BATCH_MAX,
            BATCH_IN_FLIGHT,
            Arc::new(move |calls: Vec<AcquireCall>| {
                let shared = Arc::clone(&for_acquires);
                Box::pin(async move { shared.acquire_batch(calls).await })
            }),
        );
        let for_releases = Arc::clone(&shared);
        let releases = Batcher::start(
            BATCH_MAX,
            BATCH_IN_FLIGHT,
            Arc::new(move |calls: Vec<ReleaseCall>| {
                let shared = Arc::clone(&for_releases);
                Box::pin(async move { shared.release_batch(calls).await })
            }),
        );
        Ok(Self {
            shared,
            acquires,
            releases,
            health: Script::new(include_str!("health.lua")),
            submit: Script::new(include_str!("submit.lua")),
            enable: Script::new(ENABLE),
        })
    }

    fn key(&self, kind: &str, level: &str) -> String {
        self.shared.key(kind, level)
    }

    /// A level's sorted set of admissions and leases.
    fn level(&self, level: &str) -> String {
        self.key("z", level)
    }

    /// The live lease count of every level.
    fn counts(&self) -> String {
        self.shared.counts()
    }

    /// Every live lease, scored by its expiry.
    fn index(&self) -> String {
        self.shared.index()
    }

    /// Key and group health records.
    fn health_hash(&self) -> String {
        self.shared.health_hash()
    }

    /// Outcomes kept per key: enough for the error rate and latency figures and to count the
    /// attempts of the last minute, up to [`RECENT_ATTEMPTS_COUNTED`].
    fn outcomes_kept(&self) -> u32 {
        self.shared.outcomes_kept()
    }

    /// Every key name this limiter may write, for tests and operators.
    pub fn namespace_pattern(&self) -> String {
        format!("{{{}}}:*", self.shared.redis.namespace)
    }

    /// The connection, for benchmarks and tests that inspect the keys.
    pub fn connection(&self) -> ConnectionManager {
        self.shared.connection.clone()
    }
}

impl Shared {
    fn key(&self, kind: &str, level: &str) -> String {
        format!("{{{}}}:{kind}:{level}", self.redis.namespace)
    }

    /// A rate-limited level's log of admissions in the window.
    fn log(&self, level: &str) -> String {
        self.key("w", level)
    }

    fn counts(&self) -> String {
        format!("{{{}}}:c", self.redis.namespace)
    }

    fn index(&self) -> String {
        format!("{{{}}}:x", self.redis.namespace)
    }

    fn health_hash(&self) -> String {
        format!("{{{}}}:h", self.redis.namespace)
    }

    fn key_level(key: &UpstreamKeyId) -> String {
        format!("k:{key}")
    }

    fn group_level(group: &QuotaGroupId) -> String {
        format!("q:{group}")
    }

    fn outcomes_kept(&self) -> u32 {
        self.settings.health_samples.max(RECENT_ATTEMPTS_COUNTED)
    }

    /// One `acquire.lua` call for every dispatch in `calls`, answered in order.
    async fn acquire_batch(&self, calls: Vec<AcquireCall>) -> PortResult<Vec<Acquired>> {
        let candidates = if calls.iter().any(|c| c.request.needs_key) {
            self.pool.candidates().await?
        } else {
            Arc::default()
        };
        let settings = &self.settings;
        let set_ttl = ms(settings.max_lease.max(settings.window)) + 1000;
        // Stale log entries are dropped on about one call in sixteen.
        let (prune, suffixes) = {
            let mut rng = rand::thread_rng();
            let suffixes: Vec<String> = (0..calls.len())
                .map(|_| format!("{:016x}", rng.gen::<u64>()))
                .collect();
            (rng.gen_range(0..16) == 0, suffixes)
        };

        let mut call = self.acquire.prepare_invoke();
        call.key(self.counts())
            .key(self.index())
            .key(self.health_hash())
            .key(self.log("g"));
        for candidate in candidates.iter() {
            call.key(self.log(&Self::key_level(&candidate.key)))
                .key(self.log(&Self::group_level(&candidate.group)));
        }
        for c in &calls {
            call.key(self.log(&format!("t:{}", c.request.tenant_id)));
        }
        call.arg(ms(settings.window))
            .arg(ms(settings.busy_retry))
            .arg(ms(settings.no_key_retry))
            .arg(limit(settings.global.requests_per_minute))
            .arg(limit(settings.global.concurrency))
            .arg(set_ttl)
            .arg(u8::from(prune))
            .arg(candidates.len())
            .arg(calls.len());
        for candidate in candidates.iter() {
            call.arg(Self::key_level(&candidate.key))
                .arg(Self::group_level(&candidate.group))
                .arg(limit(candidate.key_limits.requests_per_minute))
                .arg(limit(candidate.key_limits.concurrency))
                .arg(limit(candidate.group_limits.requests_per_minute))
                .arg(limit(candidate.group_limits.concurrency));
        }
        for (c, suffix) in calls.iter().zip(&suffixes) {
            let request = &c.request;
            call.arg(ms(request.lease.min(settings.max_lease)))
                .arg(suffix)
                .arg(u8::from(request.needs_key))
                .arg(limit(request.tenant_rpm))
                .arg(i64::from(request.tenant_concurrency))
                .arg(request.tenant_id.as_str());
        }

        let mut connection = self.connection.clone();
        let answer: Value = call
            .invoke_async(&mut connection)
            .await
            .map_err(unavailable)?;
        let Value::Array(parts) = answer else {
            return Err(malformed());
        };
        if parts.len() != 3 * calls.len() {
            return Err(malformed());
        }
        parts
            .chunks(3)
            .map(|part| match int(&part[0]) {
                Some(1) => Ok(Acquired::Granted {
                    lease_id: text(&part[1]).ok_or_else(malformed)?,
                    key_id: text(&part[2]).filter(|k| !k.is_empty()),
                }),
                Some(0) => Ok(Acquired::Denied {
                    wait_ms: int(&part[1]).ok_or_else(malformed)?,
                }),
                _ => Err(malformed()),
            })
            .collect()
    }

    /// One `release.lua` call for every lease in `calls`, answered in order.
    async fn release_batch(&self, calls: Vec<ReleaseCall>) -> PortResult<Vec<Released>> {
        let settings = &self.settings;
        let mut call = self.release.prepare_invoke();
        call.key(self.counts())
            .key(self.index())
            .key(self.health_hash())
            .key(self.log("g"));
        call.arg(settings.failure_threshold)
            .arg(ms(settings.cooldown))
            .arg(ms(settings.throttle_cooldown))
            .arg(self.outcomes_kept())
            .arg(ms(self.redis.health_ttl))
            .arg(calls.len());
        for c in &calls {
            // The lease id names the key and group it holds (`acquire.lua`).
            let LeaseLevels { global, key, group } = lease_levels(&c.lease_id);
            // A lease without a key still declares key names, which the script leaves alone.
            let key_level = key.as_ref().map_or("k:-".to_owned(), Self::key_level);
            let group_level = group.as_ref().map_or("q:-".to_owned(), Self::group_level);
            call.key(self.log(&format!("t:{}", c.tenant)))
                .key(self.log(&key_level))
                .key(self.log(&group_level))
                .key(self.key("s", &key_level));

            let mut fields = vec![format!("t:{}", c.tenant)];
            if global {
                fields.push("g".into());
            }
            if key.is_some() {
                fields.push(key_level.clone());
            }
            if group.is_some() {
                fields.push(group_level.clone());
            }
            call.arg(&c.lease_id)
                .arg(c.outcome)
                .arg(c.wait_ms)
                .arg(if key.is_some() {
                    key_level.as_str()
                } else {
                    ""
                })
                .arg(if group.is_some() {
                    group_level.as_str()
                } else {
                    ""
                })
                .arg(fields.len())
                .arg(fields);
        }

        let mut connection = self.connection.clone();
        let answer: Value = call
            .invoke_async(&mut connection)
            .await
            .map_err(unavailable)?;
        let Value::Array(parts) = answer else {
            return Err(malformed());
        };
        if parts.len() != 2 * calls.len() {
            return Err(malformed());
        }
        Ok(parts
            .chunks(2)
            .map(|part| Released {
                newly_disabled: int(&part[1]) == Some(1),
            })
            .collect())
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
            .arg(ms(self.shared.settings.window))
            .arg(i64::from(limit))
            .arg(format!("{:016x}", rand::thread_rng().gen::<u64>()))
            .invoke_async(&mut self.connection())
            .await
            .map_err(unavailable)?;
        Ok((wait > 0).then(|| Duration::from_millis(wait as u64)))
    }

    async fn acquire(&self, request: &PermitRequest) -> PortResult<Admission> {
        let answer = self
            .acquires
            .call(AcquireCall {
                request: request.clone(),
            })
            .await?;
        Ok(match answer {
            Acquired::Granted { lease_id, key_id } => Admission::Granted(Permit {
                lease_id,
                tenant_id: request.tenant_id.clone(),
                key_id,
            }),
            Acquired::Denied { wait_ms } => Admission::Denied {
                retry_after: Duration::from_millis(wait_ms.max(1) as u64),
            },
        })
    }

    async fn release(&self, permit: &Permit, outcome: KeyOutcome) -> PortResult<()> {
        let (name, wait_ms) = match &outcome {
            KeyOutcome::Success => ("success", 0),
            KeyOutcome::Neutral => ("neutral", 0),
            KeyOutcome::Unused => ("unused", 0),
            KeyOutcome::Failure => ("failure", 0),
            KeyOutcome::Throttled { retry_after } => ("throttled", retry_after.map_or(-1, ms)),
            KeyOutcome::Invalid => ("invalid", 0),
            KeyOutcome::QuotaExhausted { resets_at } => {
                let now = Utc::now();
                let reset = resets_at.unwrap_or_else(|| self.shared.settings.next_daily_reset(now));
                ("quota", (reset - now).num_milliseconds().max(0))
            }
        };

        let answer = self
            .releases
            .call(ReleaseCall {
                lease_id: permit.lease_id.clone(),
                tenant: permit.tenant_id.clone(),
                outcome: name,
                wait_ms,
            })
            .await?;
        let key = lease_levels(&permit.lease_id).key;
        if let (true, Some(key)) = (answer.newly_disabled, &key) {
            self.shared
                .pool
                .disable(key, "the upstream rejected the key as invalid or revoked")
                .await;
        }
        if let (KeyOutcome::QuotaExhausted { .. }, Some(key)) = (&outcome, &key) {
            info!(key_id = %key, "daily quota spent; key cools until it resets");
        }
        Ok(())
    }

    async fn key_secret(&self, key_id: &str) -> PortResult<Option<SecretString>> {
        self.shared.pool.secret(key_id).await
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
            call.key(self.key("s", &Shared::key_level(key)));
        }
        call.arg(ms(self.shared.settings.window))
            .arg(self.shared.settings.health_samples.max(1))
            .arg(self.outcomes_kept());
        for key in keys {
            // A key without a group has no group cooldown.
            let group = self.shared.pool.group_of(key).await;
            call.arg(key.as_str())
                .arg(group.as_ref().map_or("", QuotaGroupId::as_str));
        }

        let mut connection = self.connection();
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
        self.shared.pool.invalidate();
        if let Some(key) = key {
            let mut connection = self.connection();
            let removed: Result<i64, _> = self
                .enable
                .key(self.health_hash())
                .arg(Shared::key_level(key))
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
