//! Job store adapters: SQLite (embedded) and, with the `aws` feature, DynamoDB.

#[cfg(feature = "aws")]
pub mod dynamo;
pub mod sqlite;
pub mod tenant_cache;

pub use sqlite::{SqliteDb, SqliteStore};
pub use tenant_cache::TenantCache;
