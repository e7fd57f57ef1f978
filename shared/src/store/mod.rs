//! Job store adapters: SQLite (embedded) and, with the `aws` feature, DynamoDB.

#[cfg(feature = "aws")]
pub mod dynamo;
pub mod sqlite;

pub use sqlite::{SqliteDb, SqliteStore};
