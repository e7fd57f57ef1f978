//! Upstream key and quota group records in DynamoDB: one item per record in the provider keys
//! table, keyed `group#<id>` or `key#<id>`, with the record as JSON in `body`.

use async_trait::async_trait;
use aws_sdk_dynamodb::types::{AttributeValue, ReturnValue};
use aws_sdk_dynamodb::Client;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::aws::sdk_error;
use crate::domain::{QuotaGroup, QuotaGroupId, UpstreamKey, UpstreamKeyId};
use crate::ports::{KeyRegistry, PortError, PortResult};

const GROUP: &str = "group";
const KEY: &str = "key";

/// The DynamoDB [`KeyRegistry`].
#[derive(Clone)]
pub struct DynamoKeyRegistry {
    client: Client,
    table: String,
}

fn internal(e: impl std::fmt::Display) -> PortError {
    PortError::Internal(format!("key registry item: {e}"))
}

impl DynamoKeyRegistry {
    pub fn new(client: Client, table: String) -> Self {
        Self { client, table }
    }

    async fn put<T: Serialize>(&self, kind: &str, id: &str, record: &T) -> PortResult<()> {
        let body = serde_json::to_string(record).map_err(internal)?;
        self.client
            .put_item()
            .table_name(&self.table)
            .item("id", AttributeValue::S(format!("{kind}#{id}")))
            .item("kind", AttributeValue::S(kind.to_owned()))
            .item("body", AttributeValue::S(body))
            .send()
            .await
            .map_err(sdk_error)?;
        Ok(())
    }

    async fn get<T: DeserializeOwned>(&self, kind: &str, id: &str) -> PortResult<Option<T>> {
        let found = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("id", AttributeValue::S(format!("{kind}#{id}")))
            .consistent_read(true)
            .send()
            .await
            .map_err(sdk_error)?;
        found
            .item()
            .and_then(|item| item.get("body"))
            .and_then(|body| body.as_s().ok())
            .map(|body| serde_json::from_str(body).map_err(internal))
            .transpose()
    }

    async fn list<T: DeserializeOwned>(&self, kind: &str) -> PortResult<Vec<T>> {
        let mut records = Vec::new();
        let mut start = None;
        loop {
            let page = self
                .client
                .scan()
                .table_name(&self.table)
                .filter_expression("kind = :kind")
                .expression_attribute_values(":kind", AttributeValue::S(kind.to_owned()))
                .consistent_read(true)
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(sdk_error)?;
            for item in page.items() {
                let body = item
                    .get("body")
                    .and_then(|b| b.as_s().ok())
                    .ok_or_else(|| internal("missing body"))?;
                records.push(serde_json::from_str(body).map_err(internal)?);
            }
            match page.last_evaluated_key() {
                Some(key) => start = Some(key.clone()),
                None => return Ok(records),
            }
        }
    }

    async fn delete(&self, kind: &str, id: &str) -> PortResult<bool> {
        let old = self
            .client
            .delete_item()
            .table_name(&self.table)
            .key("id", AttributeValue::S(format!("{kind}#{id}")))
            .return_values(ReturnValue::AllOld)
            .send()
            .await
            .map_err(sdk_error)?;
        Ok(old.attributes().is_some_and(|a| !a.is_empty()))
    }
}

#[async_trait]
impl KeyRegistry for DynamoKeyRegistry {
    async fn put_group(&self, group: &QuotaGroup) -> PortResult<()> {
        self.put(GROUP, &group.id.to_string(), group).await
    }

    async fn get_group(&self, id: &QuotaGroupId) -> PortResult<Option<QuotaGroup>> {
        self.get(GROUP, &id.to_string()).await
    }

    async fn list_groups(&self) -> PortResult<Vec<QuotaGroup>> {
        let mut groups: Vec<QuotaGroup> = self.list(GROUP).await?;
        groups.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(groups)
    }

    async fn delete_group(&self, id: &QuotaGroupId) -> PortResult<bool> {
        self.delete(GROUP, &id.to_string()).await
    }

    async fn put_key(&self, key: &UpstreamKey) -> PortResult<()> {
        self.put(KEY, &key.id.to_string(), key).await
    }

    async fn get_key(&self, id: &UpstreamKeyId) -> PortResult<Option<UpstreamKey>> {
        self.get(KEY, &id.to_string()).await
    }

    async fn list_keys(&self) -> PortResult<Vec<UpstreamKey>> {
        let mut keys: Vec<UpstreamKey> = self.list(KEY).await?;
        keys.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(keys)
    }

    async fn delete_key(&self, id: &UpstreamKeyId) -> PortResult<bool> {
        self.delete(KEY, &id.to_string()).await
    }
}
