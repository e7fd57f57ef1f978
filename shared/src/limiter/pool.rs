//! The key pool as the limiter sees it: enabled keys with their group's limits, read from the
//! [`KeyRegistry`] and cached briefly so a dispatch costs one limiter round trip, not a
//! registry read too.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use secrecy::SecretString;
use tracing::{error, warn};

use crate::domain::{KeyState, Limits, QuotaGroupId, UpstreamKeyId};
use crate::ports::{KeyRegistry, PortResult, SecretStore};

/// A key the limiter may choose, with everything needed to check it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub key: UpstreamKeyId,
    pub group: QuotaGroupId,
    pub key_limits: Limits,
    pub group_limits: Limits,
}

#[derive(Default)]
struct Snapshot {
    candidates: Arc<Vec<Candidate>>,
    /// Every known key's group, enabled or not, so a release finds the group to give back to.
    groups: HashMap<UpstreamKeyId, QuotaGroupId>,
}

/// Cached view of the registry, shared by the limiter adapters.
pub struct KeyPool {
    registry: Arc<dyn KeyRegistry>,
    secrets: Arc<dyn SecretStore>,
    ttl: Duration,
    cache: Mutex<Option<(Instant, Arc<Snapshot>)>>,
}

impl KeyPool {
    pub fn new(
        registry: Arc<dyn KeyRegistry>,
        secrets: Arc<dyn SecretStore>,
        ttl: Duration,
    ) -> Self {
        Self {
            registry,
            secrets,
            ttl,
            cache: Mutex::new(None),
        }
    }

    fn cached(&self, fresh_only: bool) -> Option<Arc<Snapshot>> {
        let cache = self.cache.lock().ok()?;
        let (at, snapshot) = cache.as_ref()?;
        (!fresh_only || at.elapsed() < self.ttl).then(|| Arc::clone(snapshot))
    }

    async fn snapshot(&self) -> PortResult<Arc<Snapshot>> {
        if let Some(snapshot) = self.cached(true) {
            return Ok(snapshot);
        }
        match self.load().await {
            Ok(snapshot) => {
                let snapshot = Arc::new(snapshot);
                if let Ok(mut cache) = self.cache.lock() {
                    *cache = Some((Instant::now(), Arc::clone(&snapshot)));
                }
                Ok(snapshot)
            }
            // A registry hiccup should not stop dispatch while a recent view exists.
            Err(e) => match self.cached(false) {
                Some(stale) => {
                    warn!(error = %e, "key registry unreadable; using cached keys");
                    Ok(stale)
                }
                None => Err(e),
            },
        }
    }

    async fn load(&self) -> PortResult<Snapshot> {
        let groups: HashMap<QuotaGroupId, Limits> = self
            .registry
            .list_groups()
            .await?
            .into_iter()
            .map(|g| (g.id, g.limits))
            .collect();
        let keys = self.registry.list_keys().await?;

        let mut snapshot = Snapshot::default();
        let mut candidates = Vec::new();
        for key in keys {
            snapshot.groups.insert(key.id.clone(), key.group.clone());
            if key.state != KeyState::Enabled {
                continue;
            }
            let Some(group_limits) = groups.get(&key.group) else {
                warn!(key_id = %key.id, group = %key.group, "key skipped: its group is missing");
                continue;
            };
            candidates.push(Candidate {
                key: key.id,
                group: key.group,
                key_limits: key.limits,
                group_limits: *group_limits,
            });
        }
        snapshot.candidates = Arc::new(candidates);
        Ok(snapshot)
    }

    /// The enabled keys, by id.
    ///
    /// # Errors
    /// [`crate::ports::PortError`] when the registry fails and nothing is cached.
    pub async fn candidates(&self) -> PortResult<Arc<Vec<Candidate>>> {
        Ok(Arc::clone(&self.snapshot().await?.candidates))
    }

    /// The group of a key, enabled or not; `None` for a key the registry no longer has.
    pub async fn group_of(&self, key: &UpstreamKeyId) -> Option<QuotaGroupId> {
        let snapshot = self.snapshot().await.ok()?;
        if let Some(group) = snapshot.groups.get(key) {
            return Some(group.clone());
        }
        self.registry
            .get_key(key)
            .await
            .ok()
            .flatten()
            .map(|k| k.group)
    }

    /// Drop the cached view; the next dispatch reads the registry.
    pub fn invalidate(&self) {
        if let Ok(mut cache) = self.cache.lock() {
            *cache = None;
        }
    }

    /// Mark a key disabled in the registry, after the upstream called it invalid.
    pub async fn disable(&self, key: &UpstreamKeyId, reason: &str) {
        match self.registry.get_key(key).await {
            Ok(Some(mut record)) if record.state == KeyState::Enabled => {
                record.state = KeyState::Disabled;
                record.disabled_reason = Some(reason.to_owned());
                record.updated_at = Utc::now();
                if let Err(e) = self.registry.put_key(&record).await {
                    warn!(key_id = %key, error = %e, "disabled key not recorded in the registry");
                }
                error!(key_id = %key, group = %record.group, reason, "upstream key disabled");
            }
            Ok(_) => {}
            Err(e) => warn!(key_id = %key, error = %e, "disabled key not recorded in the registry"),
        }
        self.invalidate();
    }

    /// A key's secret from the secret store.
    ///
    /// # Errors
    /// [`crate::ports::PortError`] when the secret store fails.
    pub async fn secret(&self, key_id: &str) -> PortResult<Option<SecretString>> {
        let Ok(id) = UpstreamKeyId::parse(key_id) else {
            return Ok(None);
        };
        self.secrets.get(&id.secret_name()).await
    }
}
