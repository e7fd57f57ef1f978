//! Queue adapters: a SQLite table (embedded) and, with the `aws` feature, SQS.

pub mod sqlite;
#[cfg(feature = "aws")]
pub mod sqs;

pub use sqlite::SqliteQueue;
