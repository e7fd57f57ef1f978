//! Queue message bodies. They carry ids and small metadata, never image bytes.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::domain::{JobId, TenantId, WebhookEvent};

/// Asks a worker to advance a job. Any copy of it can drive the job: the job record, not the
/// message, says what happens next.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GenerateMessage {
    pub job_id: JobId,
    pub tenant_id: TenantId,
}

/// One webhook event. `body` is serialised once, when the event is made, and every attempt
/// signs and sends exactly those bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WebhookMessage {
    pub event_id: String,
    pub job_id: JobId,
    pub tenant_id: TenantId,
    pub attempt: u32,
    /// Do not send before this time (longer waits than one queue delay are chained).
    pub not_before: Option<DateTime<Utc>>,
    pub body: String,
    /// The event's type; absent in messages queued before it was carried.
    #[serde(default)]
    pub event_type: Option<WebhookEvent>,
    /// 0 for an event's first delivery, then 1, 2... for each replay; `attempt` restarts at 1.
    #[serde(default)]
    pub round: u32,
}
