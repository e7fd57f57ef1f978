//! Limiter adapters: in-process (embedded) and, with the `aws` feature, Redis.

pub mod local;

pub use local::LocalLimiter;
