//! Queue adapters: a SQLite table (embedded) and, with the `aws` feature, SQS.

pub mod sqlite;

pub use sqlite::SqliteQueue;
