//! Delivery log adapters: webhook events and their attempts, per job.

#[cfg(feature = "aws")]
mod dynamo;
mod sqlite;

#[cfg(feature = "aws")]
pub use dynamo::DynamoDeliveryLog;

pub use sqlite::SqliteDeliveryLog;
