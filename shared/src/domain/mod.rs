//! Domain values and rules: jobs and their lifecycle, tenants and plans, error codes.
//!
//! Nothing in here performs I/O; adapters and services build on these types.

mod error;
mod job;
mod tenant;
mod upstream;
mod values;

pub use error::{ErrorCode, FailureClass, JobError};
pub use job::{Job, JobId, JobStatus, ProviderInfo, TransitionError, UsageDay};
pub use tenant::{hash_api_key, Plan, Tenant, TenantId, TenantKey, WebhookConfig, WebhookEvent};
pub use upstream::{
    InvalidUpstreamId, KeyState, Limits, QuotaGroup, QuotaGroupId, UpstreamKey, UpstreamKeyId,
};
pub use values::{IdempotencyKey, Mode, Prompt, ValueError, WebhookUrl, PROMPT_MAX_CHARS};
