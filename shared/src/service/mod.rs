//! The use cases, written against the ports only.

pub mod admin;
pub mod deliver;
pub mod finalize;
pub mod generate;
pub mod inputs;
pub mod jobs;
pub mod keys;
pub mod messages;
pub mod reconcile;
pub mod retry;
pub mod submit;
pub mod webhooks;
