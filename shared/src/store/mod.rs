//! Job store adapters: SQLite (embedded) and, with the `aws` feature, DynamoDB.

pub mod sqlite;

pub use sqlite::{SqliteDb, SqliteStore};
