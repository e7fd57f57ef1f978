//! The embedded [`KeyRegistry`]: upstream key and quota group records in the SQLite file the
//! other embedded adapters share. Its tables are made here, beside the code that uses them.

use async_trait::async_trait;
use rusqlite::{params, OptionalExtension};

use crate::domain::{QuotaGroup, QuotaGroupId, UpstreamKey, UpstreamKeyId};
use crate::ports::{KeyRegistry, PortError, PortResult};
use crate::store::sqlite::{internal, SqliteDb};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS upstream_groups (
    id TEXT PRIMARY KEY,
    body TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS upstream_keys (
    id TEXT PRIMARY KEY,
    body TEXT NOT NULL
);
";

/// Key and group records in SQLite, one JSON body per row (as one item per record would be
/// in DynamoDB).
#[derive(Clone)]
pub struct SqliteKeyRegistry {
    db: SqliteDb,
}

impl SqliteKeyRegistry {
    /// Make the registry's tables if they are missing.
    ///
    /// # Errors
    /// [`PortError::Internal`] when the tables cannot be made.
    pub async fn new(db: SqliteDb) -> PortResult<Self> {
        db.call(|conn| conn.execute_batch(SCHEMA).map_err(internal))
            .await?;
        Ok(Self { db })
    }
}

fn decode<T: serde::de::DeserializeOwned>(body: &str) -> PortResult<T> {
    serde_json::from_str(body).map_err(|e| PortError::Internal(format!("bad registry row: {e}")))
}

impl SqliteKeyRegistry {
    async fn put(&self, table: &'static str, id: String, body: String) -> PortResult<()> {
        self.db
            .call(move |conn| {
                let sql = format!(
                    "INSERT INTO {table} (id, body) VALUES (?1, ?2)
                     ON CONFLICT (id) DO UPDATE SET body = ?2"
                );
                conn.execute(&sql, params![id, body]).map_err(internal)?;
                Ok(())
            })
            .await
    }

    async fn get(&self, table: &'static str, id: String) -> PortResult<Option<String>> {
        self.db
            .call(move |conn| {
                let sql = format!("SELECT body FROM {table} WHERE id = ?1");
                conn.query_row(&sql, params![id], |row| row.get(0))
                    .optional()
                    .map_err(internal)
            })
            .await
    }

    async fn list(&self, table: &'static str) -> PortResult<Vec<String>> {
        self.db
            .call(move |conn| {
                let sql = format!("SELECT body FROM {table} ORDER BY id");
                let mut statement = conn.prepare(&sql).map_err(internal)?;
                let rows = statement
                    .query_map([], |row| row.get(0))
                    .map_err(internal)?;
                rows.collect::<Result<Vec<String>, _>>().map_err(internal)
            })
            .await
    }

    async fn delete(&self, table: &'static str, id: String) -> PortResult<bool> {
        self.db
            .call(move |conn| {
                let sql = format!("DELETE FROM {table} WHERE id = ?1");
                let deleted = conn.execute(&sql, params![id]).map_err(internal)?;
                Ok(deleted > 0)
            })
            .await
    }
}

#[async_trait]
impl KeyRegistry for SqliteKeyRegistry {
    async fn put_group(&self, group: &QuotaGroup) -> PortResult<()> {
        let body = serde_json::to_string(group).map_err(internal)?;
        self.put("upstream_groups", group.id.to_string(), body)
            .await
    }

    async fn get_group(&self, id: &QuotaGroupId) -> PortResult<Option<QuotaGroup>> {
        let body = self.get("upstream_groups", id.to_string()).await?;
        body.as_deref().map(decode).transpose()
    }

    async fn list_groups(&self) -> PortResult<Vec<QuotaGroup>> {
        let bodies = self.list("upstream_groups").await?;
        bodies.iter().map(|b| decode(b)).collect()
    }

    async fn delete_group(&self, id: &QuotaGroupId) -> PortResult<bool> {
        self.delete("upstream_groups", id.to_string()).await
    }

    async fn put_key(&self, key: &UpstreamKey) -> PortResult<()> {
        let body = serde_json::to_string(key).map_err(internal)?;
        self.put("upstream_keys", key.id.to_string(), body).await
    }

    async fn get_key(&self, id: &UpstreamKeyId) -> PortResult<Option<UpstreamKey>> {
        let body = self.get("upstream_keys", id.to_string()).await?;
        body.as_deref().map(decode).transpose()
    }

    async fn list_keys(&self) -> PortResult<Vec<UpstreamKey>> {
        let bodies = self.list("upstream_keys").await?;
        bodies.iter().map(|b| decode(b)).collect()
    }

    async fn delete_key(&self, id: &UpstreamKeyId) -> PortResult<bool> {
        self.delete("upstream_keys", id.to_string()).await
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use chrono::Utc;

    use super::*;
    use crate::domain::{KeyState, Limits};

    fn key(id: &str, group: &str) -> UpstreamKey {
        UpstreamKey {
            id: UpstreamKeyId::parse(id).unwrap(),
            group: QuotaGroupId::parse(group).unwrap(),
            limits: Limits::default(),
            state: KeyState::Enabled,
            disabled_reason: None,
            label: Some("primary".into()),
            created_at: Utc::now(),
            updated_at: Utc::now(),
        }
    }

    #[tokio::test]
    async fn keys_round_trip_list_in_id_order_and_delete_once() {
        let registry = SqliteKeyRegistry::new(SqliteDb::in_memory().unwrap())
            .await
            .unwrap();
        let b = key("b", "p1");
        let a = key("a", "p1");

        registry.put_key(&b).await.unwrap();
        registry.put_key(&a).await.unwrap();
        let listed = registry.list_keys().await.unwrap();
        let first_delete = registry.delete_key(&a.id).await.unwrap();
        let second_delete = registry.delete_key(&a.id).await.unwrap();

        assert_eq!(listed, vec![a.clone(), b.clone()]);
        assert!(first_delete);
        assert!(!second_delete);
        assert_eq!(registry.get_key(&a.id).await.unwrap(), None);
        assert_eq!(registry.get_key(&b.id).await.unwrap(), Some(b));
    }

    #[tokio::test]
    async fn putting_a_group_again_replaces_its_limits() {
        let registry = SqliteKeyRegistry::new(SqliteDb::in_memory().unwrap())
            .await
            .unwrap();
        let mut group = QuotaGroup {
            id: QuotaGroupId::parse("p1").unwrap(),
            limits: Limits {
                requests_per_minute: Some(10),
                concurrency: Some(2),
            },
            updated_at: Utc::now(),
        };

        registry.put_group(&group).await.unwrap();
        group.limits.concurrency = Some(5);
        registry.put_group(&group).await.unwrap();

        assert_eq!(registry.list_groups().await.unwrap(), vec![group.clone()]);
        assert_eq!(registry.get_group(&group.id).await.unwrap(), Some(group));
    }
}
