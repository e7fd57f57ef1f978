//! imagegen: an asynchronous image-generation API.
//!
//! This crate holds everything but the process entry points: the domain ([`domain`]), the
//! ports ([`ports`]) with their embedded adapters, the use cases ([`service`]), the HTTP API
//! ([`http`]) and the queue handlers ([`handlers`]). The Lambda binaries in `functions/` and
//! the local runner in `local/` only wire adapters to these.

pub mod app;
#[cfg(feature = "aws")]
pub mod aws;
pub mod blob;
pub mod deliveries;
pub mod domain;
pub mod embedded;
pub mod fetch;
pub mod handlers;
pub mod http;
pub mod limiter;
pub mod ports;
pub mod provider;
pub mod queue;
pub mod secrets;
pub mod service;
pub mod store;
pub mod webhook;

pub use app::{App, AppSettings};
