//! Webhook delivery: Standard Webhooks signing, the outbound address guard, and the sender.

pub mod guard;
pub mod sign;

mod sender;

pub use guard::{GuardError, OutboundPolicy};
pub use sender::{DeliveryError, WebhookSender};
pub use sign::{generate_secret, sign, SigningError};
