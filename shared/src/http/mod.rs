//! The HTTP API, as one axum router served by the `submit` and `poll` Lambdas (through
//! `lambda_http`) and by the local runner.

mod admin_keys;
mod auth;
mod error;
mod extract;
mod inputs;
mod routes;
mod webhooks;

pub use error::ApiError;
pub use routes::{router, MAX_BODY_BYTES, ROUTES};
