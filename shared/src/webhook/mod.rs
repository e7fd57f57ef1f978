//! Webhook delivery: Standard Webhooks signing, the outbound address guard, the retry
//! schedule, and the sender.

pub mod guard;
pub mod schedule;
pub mod sign;

mod sender;

pub use guard::{GuardError, OutboundPolicy, Resolver, SharedResolver, SystemResolver};
pub use schedule::RetrySchedule;
pub use sender::{AttemptReport, DeliveryError, WebhookSender, DELIVERY_TIMEOUT};
pub use sign::{generate_secret, sign, sign_all, SigningError};
