//! The embedded wiring: every port on its embedded adapter over one SQLite database. The local
//! runner and the tests start from here and replace single adapters where they need to.

use std::sync::Arc;

use crate::app::{App, AppSettings};
use crate::deliveries::SqliteDeliveryLog;
use crate::limiter::{KeyPool, LimiterSettings, LocalLimiter, SqliteKeyRegistry};
use crate::ports::{BlobStore, PortResult};
use crate::provider::OfflineProvider;
use crate::queue::SqliteQueue;
use crate::secrets::SqliteSecrets;
use crate::store::{SqliteDb, SqliteStore};
use crate::webhook::WebhookSender;

/// Receives after which the embedded queue dead-letters a message.
pub const MAX_RECEIVES: u32 = 5;

/// An [`App`] on the embedded adapters: store, queue, secrets, key registry, in-process
/// limiter and delivery log in `db`, images in `blobs`, the offline provider.
///
/// # Errors
/// [`crate::ports::PortError`] when the key registry's tables cannot be made.
pub async fn app(
    db: SqliteDb,
    blobs: Arc<dyn BlobStore>,
    webhooks: WebhookSender,
    settings: AppSettings,
    limiter: LimiterSettings,
) -> PortResult<App> {
    let keys = Arc::new(SqliteKeyRegistry::new(db.clone()).await?);
    let secrets = Arc::new(SqliteSecrets::new(db.clone()));
    let pool = Arc::new(KeyPool::new(
        keys.clone(),
        secrets.clone(),
        limiter.key_cache_ttl,
    ));
    Ok(App {
        store: Arc::new(SqliteStore::new(db.clone())),
        queue: Arc::new(SqliteQueue::new(db.clone(), MAX_RECEIVES)),
        blobs,
        secrets,
        limiter: Arc::new(LocalLimiter::new(limiter, pool)),
        keys,
        provider: Arc::new(OfflineProvider::default()),
        webhooks,
        deliveries: Arc::new(SqliteDeliveryLog::new(db)),
        settings: Arc::new(settings),
        worker_id: format!("embedded-{}", std::process::id()),
    })
}
