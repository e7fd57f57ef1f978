//! Delivery log adapters: webhook events and their attempts, per job.

mod sqlite;

pub use sqlite::SqliteDeliveryLog;
