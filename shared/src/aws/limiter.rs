//! The Redis limiter behind a connection made on first use, so a Lambda whose Redis is not
//! reachable at cold start still starts. Until Redis answers, every call reports
//! [`PortError::Unavailable`]: submissions are then admitted (the daily cap is kept by the job
//! store) and dispatch re-queues its jobs to wait, as `docs/contract.md` promises. Once
//! connected, redis-rs's `ConnectionManager` reconnects by itself.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use secrecy::SecretString;
use tokio::sync::OnceCell;
use tracing::{info, warn};

use crate::domain::{TenantId, UpstreamKeyId};
use crate::limiter::{KeyPool, LimiterSettings, RedisLimiter, RedisSettings};
use crate::ports::{
    Admission, KeyHealth, KeyOutcome, Limiter, Permit, PermitRequest, PortError, PortResult,
};

/// After a failed connection attempt, calls fail at once for this long instead of each
/// waiting out a connection timeout of its own.
const RECONNECT_PAUSE: Duration = Duration::from_secs(1);

/// A [`RedisLimiter`] connected on the first call that needs it.
pub struct LazyRedisLimiter {
    settings: LimiterSettings,
    redis: RedisSettings,
    pool: Arc<KeyPool>,
    connected: OnceCell<RedisLimiter>,
    /// No new connection attempt before this instant.
    paused_until: Mutex<Option<Instant>>,
}

impl LazyRedisLimiter {
    /// A limiter that connects to `redis` when first used; nothing is sent yet.
    pub fn new(settings: LimiterSettings, redis: RedisSettings, pool: Arc<KeyPool>) -> Self {
        Self {
            settings,
            redis,
            pool,
            connected: OnceCell::new(),
            paused_until: Mutex::new(None),
        }
    }

    /// Try to connect now, so a reachable Redis costs the first request nothing. Bounded by
    /// one call's timeout: Lambda gives init 10 s, and a silent address would otherwise use
    /// them up in connection retries.
    pub async fn warm_up(&self) {
        let error = match tokio::time::timeout(self.redis.timeout, self.limiter()).await {
            Ok(Ok(_)) => return,
            Ok(Err(e)) => e.to_string(),
            Err(_) => "no answer within the timeout".to_owned(),
        };
        warn!(error = %error, "redis unreachable at cold start; dispatch waits until it answers");
    }

    /// Whether a connection has been made.
    pub fn is_connected(&self) -> bool {
        self.connected.initialized()
    }

    /// The connected limiter, connecting first when needed.
    async fn limiter(&self) -> PortResult<&RedisLimiter> {
        if let Some(limiter) = self.connected.get() {
            return Ok(limiter);
        }
        let paused = self
            .paused_until
            .lock()
            .map(|until| until.is_some_and(|t| Instant::now() < t))
            .unwrap_or(false);
        if paused {
            return Err(PortError::Unavailable(
                "redis unreachable; the next connection attempt is due shortly".into(),
            ));
        }

        let result = self
            .connected
            .get_or_try_init(|| {
                RedisLimiter::connect(self.settings.clone(), self.redis.clone(), self.pool.clone())
            })
            .await;
        match result {
            Ok(limiter) => {
                info!(namespace = %self.redis.namespace, "redis limiter connected");
                Ok(limiter)
            }
            Err(e) => {
                if let Ok(mut until) = self.paused_until.lock() {
                    *until = Some(Instant::now() + RECONNECT_PAUSE);
                }
                Err(match e {
                    PortError::Internal(cause) => PortError::Unavailable(cause),
                    unavailable => unavailable,
                })
            }
        }
    }
}

#[async_trait]
impl Limiter for LazyRedisLimiter {
    async fn acquire(&self, request: &PermitRequest) -> PortResult<Admission> {
        self.limiter().await?.acquire(request).await
    }

    async fn admit_submission(
        &self,
        tenant: &TenantId,
        limit: u32,
    ) -> PortResult<Option<Duration>> {
        self.limiter().await?.admit_submission(tenant, limit).await
    }

    async fn release(&self, permit: &Permit, outcome: KeyOutcome) -> PortResult<()> {
        self.limiter().await?.release(permit, outcome).await
    }

    async fn key_secret(&self, key_id: &str) -> PortResult<Option<SecretString>> {
        // Secrets come from the key pool, which needs no Redis.
        self.pool.secret(key_id).await
    }

    async fn key_health(&self, keys: &[UpstreamKeyId]) -> PortResult<Vec<KeyHealth>> {
        self.limiter().await?.key_health(keys).await
    }

    async fn key_changed(&self, key: Option<&UpstreamKeyId>) -> PortResult<()> {
        self.limiter().await?.key_changed(key).await
    }
}
