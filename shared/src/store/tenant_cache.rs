//! A job store wrapper that remembers API-key lookups for a short while, so a warm function
//! authenticates a request without a store call.
//!
//! A key that was just created is found at once (misses are not remembered); a tenant changed
//! by another instance (a new plan, a disabled key) is seen within the TTL. The instance that
//! writes a tenant forgets its own copy at once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::domain::{Job, JobId, JobStatus, Tenant, TenantId, UsageDay};
use crate::ports::{
    CreateOutcome, IdempotencyClaim, JobEvent, JobPage, JobStore, PortResult, WriteOutcome,
};

/// Caches [`JobStore::tenant_by_key_hash`]; everything else goes straight to `inner`.
pub struct TenantCache {
    inner: Arc<dyn JobStore>,
    ttl: Duration,
    by_key_hash: Mutex<HashMap<String, (Tenant, Instant)>>,
}

impl TenantCache {
    pub fn new(inner: Arc<dyn JobStore>, ttl: Duration) -> Self {
        Self {
            inner,
            ttl,
            by_key_hash: Mutex::new(HashMap::new()),
        }
    }

    fn cached(&self, key_hash: &str) -> Option<Tenant> {
        let cache = self.by_key_hash.lock().ok()?;
        let (tenant, read_at) = cache.get(key_hash)?;
        (read_at.elapsed() < self.ttl).then(|| tenant.clone())
    }

    fn forget(&self, id: &TenantId) {
        if let Ok(mut cache) = self.by_key_hash.lock() {
            cache.retain(|_, (tenant, _)| &tenant.id != id);
        }
    }
}

#[async_trait]
impl JobStore for TenantCache {
    async fn create_job(
        &self,
        job: &Job,
        idempotency: Option<&IdempotencyClaim>,
        daily_cap: u32,
    ) -> PortResult<CreateOutcome> {
        self.inner.create_job(job, idempotency, daily_cap).await
    }

    async fn get_job(&self, id: &JobId) -> PortResult<Option<Job>> {
        self.inner.get_job(id).await
    }

    async fn update_job(&self, previous: &Job, next: &Job) -> PortResult<WriteOutcome> {
        self.inner.update_job(previous, next).await
    }

    async fn list_jobs(
        &self,
        tenant: &TenantId,
        status: Option<JobStatus>,
        limit: u32,
        after: Option<&JobId>,
    ) -> PortResult<JobPage> {
        self.inner.list_jobs(tenant, status, limit, after).await
    }

    async fn stale_jobs(
        &self,
        status: JobStatus,
        before: DateTime<Utc>,
        limit: u32,
    ) -> PortResult<Vec<Job>> {
        self.inner.stale_jobs(status, before, limit).await
    }

    async fn job_events(&self, id: &JobId) -> PortResult<Vec<JobEvent>> {
        self.inner.job_events(id).await
    }

    async fn put_tenant(&self, tenant: &Tenant) -> PortResult<()> {
        self.forget(&tenant.id);
        self.inner.put_tenant(tenant).await
    }

    async fn get_tenant(&self, id: &TenantId) -> PortResult<Option<Tenant>> {
        self.inner.get_tenant(id).await
    }

    async fn tenant_by_key_hash(&self, key_hash: &str) -> PortResult<Option<Tenant>> {
        if let Some(tenant) = self.cached(key_hash) {
            return Ok(Some(tenant));
        }
        let found = self.inner.tenant_by_key_hash(key_hash).await?;
        if let (Some(tenant), Ok(mut cache)) = (&found, self.by_key_hash.lock()) {
            cache.insert(key_hash.to_owned(), (tenant.clone(), Instant::now()));
        }
        Ok(found)
    }

    async fn usage(&self, tenant: &TenantId, day: UsageDay) -> PortResult<u64> {
        self.inner.usage(tenant, day).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Plan;
    use crate::store::{SqliteDb, SqliteStore};

    fn tenant(plan_cap: u32) -> Tenant {
        Tenant {
            id: TenantId::new("ten_1"),
            name: "acme".into(),
            key_hash: "hash-1".into(),
            plan: Plan {
                daily_cap: plan_cap,
                ..Plan::default()
            },
            webhook: None,
        }
    }

    fn stores(ttl: Duration) -> (Arc<dyn JobStore>, TenantCache) {
        let db = SqliteDb::in_memory().unwrap_or_else(|e| panic!("{e}"));
        let inner: Arc<dyn JobStore> = Arc::new(SqliteStore::new(db));
        (Arc::clone(&inner), TenantCache::new(inner, ttl))
    }

    #[tokio::test]
    async fn a_cached_tenant_is_served_until_the_ttl_passes() {
        let (inner, cache) = stores(Duration::from_millis(200));
        inner
            .put_tenant(&tenant(10))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let first = cache.tenant_by_key_hash("hash-1").await.ok().flatten();

        inner
            .put_tenant(&tenant(20))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let within_ttl = cache.tenant_by_key_hash("hash-1").await.ok().flatten();
        tokio::time::sleep(Duration::from_millis(250)).await;
        let after_ttl = cache.tenant_by_key_hash("hash-1").await.ok().flatten();

        assert_eq!(first.map(|t| t.plan.daily_cap), Some(10));
        assert_eq!(within_ttl.map(|t| t.plan.daily_cap), Some(10));
        assert_eq!(after_ttl.map(|t| t.plan.daily_cap), Some(20));
    }

    #[tokio::test]
    async fn a_tenant_written_through_the_cache_is_seen_at_once() {
        let (_, cache) = stores(Duration::from_secs(60));
        cache
            .put_tenant(&tenant(10))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let _ = cache.tenant_by_key_hash("hash-1").await;

        cache
            .put_tenant(&tenant(20))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let seen = cache.tenant_by_key_hash("hash-1").await.ok().flatten();

        assert_eq!(seen.map(|t| t.plan.daily_cap), Some(20));
    }

    #[tokio::test]
    async fn an_unknown_key_is_not_remembered() {
        let (inner, cache) = stores(Duration::from_secs(60));
        let before = cache.tenant_by_key_hash("hash-1").await.ok().flatten();

        inner
            .put_tenant(&tenant(10))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let after = cache.tenant_by_key_hash("hash-1").await.ok().flatten();

        assert!(before.is_none());
        assert!(after.is_some(), "a new key must work at once");
    }
}
