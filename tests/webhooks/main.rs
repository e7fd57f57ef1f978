//! Webhook delivery end to end: the HTTP API, the generate and webhook handlers and real
//! loopback receivers, with every signature checked by the independent `standardwebhooks`
//! crate.
//!
//! Run with `cargo test -p imagegen-tests --test webhooks`.

mod api;
mod delivery;
mod harness;
