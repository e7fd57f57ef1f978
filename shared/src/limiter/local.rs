//! The in-process limiter: tenant concurrency held as leases that expire on their own.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use secrecy::SecretString;

use crate::ports::{Admission, KeyOutcome, Limiter, Permit, PermitRequest, PortError, PortResult};

#[derive(Default)]
struct State {
    /// lease id -> (tenant, expiry)
    leases: HashMap<String, (String, Instant)>,
}

/// The embedded [`Limiter`].
#[derive(Default)]
pub struct LocalLimiter {
    state: Mutex<State>,
}

impl LocalLimiter {
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl Limiter for LocalLimiter {
    async fn acquire(&self, request: &PermitRequest) -> PortResult<Admission> {
        let mut state = self
            .state
            .lock()
            .map_err(|_| PortError::Internal("limiter state poisoned".into()))?;
        let now = Instant::now();
        state.leases.retain(|_, (_, expiry)| *expiry > now);

        let tenant = request.tenant_id.as_str();
        let held: Vec<Instant> = state
            .leases
            .values()
            .filter(|(t, _)| t == tenant)
            .map(|(_, e)| *e)
            .collect();
        if held.len() as u32 >= request.tenant_concurrency {
            let soonest = held.into_iter().min().unwrap_or(now);
            let wait = soonest
                .saturating_duration_since(now)
                .min(Duration::from_secs(5));
            return Ok(Admission::Denied {
                retry_after: wait.max(Duration::from_millis(500)),
            });
        }

        let lease_id = ulid::Ulid::new().to_string();
        state
            .leases
            .insert(lease_id.clone(), (tenant.to_owned(), now + request.lease));
        Ok(Admission::Granted(Permit {
            lease_id,
            tenant_id: request.tenant_id.clone(),
            key_id: None,
        }))
    }

    async fn release(&self, permit: &Permit, _outcome: KeyOutcome) -> PortResult<()> {
        let mut state = self
            .state
            .lock()
            .map_err(|_| PortError::Internal("limiter state poisoned".into()))?;
        state.leases.remove(&permit.lease_id);
        Ok(())
    }

    async fn key_secret(&self, _key_id: &str) -> PortResult<Option<SecretString>> {
        Ok(None)
    }
}
