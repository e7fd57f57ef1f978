use std::fmt;

use chrono::{DateTime, Utc};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// A tenant's id.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TenantId(String);

impl TenantId {
    pub fn new(raw: impl Into<String>) -> Self {
        Self(raw.into())
    }

    pub fn generate() -> Self {
        Self(format!("ten_{}", ulid::Ulid::new()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A tenant's API key in clear. It is shown once, at creation; only its hash is stored.
pub struct TenantKey(String);

impl TenantKey {
    pub fn generate() -> Self {
        let mut bytes = [0u8; 24];
        rand::thread_rng().fill_bytes(&mut bytes);
        Self(format!("igk_{}", hex::encode(bytes)))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn hash(&self) -> String {
        hash_api_key(&self.0)
    }
}

impl fmt::Debug for TenantKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TenantKey(..)")
    }
}

/// The stored form of an API key: hex SHA-256. Keys are long random strings, so a fast hash
/// is enough; no key is ever compared in clear.
pub fn hash_api_key(raw: &str) -> String {
    hex::encode(Sha256::digest(raw.as_bytes()))
}

/// What a tenant may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Plan {
    /// Submissions accepted in any 60 s window.
    pub requests_per_minute: u32,
    /// Units that may be reserved per UTC day.
    pub daily_cap: u32,
    /// Jobs that may run at once.
    pub max_concurrency: u32,
}

impl Default for Plan {
    fn default() -> Self {
        Self {
            requests_per_minute: 60,
            daily_cap: 1_000,
            max_concurrency: 4,
        }
    }
}

/// The notices a tenant can subscribe to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum WebhookEvent {
    #[serde(rename = "job.succeeded")]
    JobSucceeded,
    #[serde(rename = "job.failed")]
    JobFailed,
    #[serde(rename = "job.canceled")]
    JobCanceled,
}

impl WebhookEvent {
    pub const ALL: [WebhookEvent; 3] = [Self::JobSucceeded, Self::JobFailed, Self::JobCanceled];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::JobSucceeded => "job.succeeded",
            Self::JobFailed => "job.failed",
            Self::JobCanceled => "job.canceled",
        }
    }
}

/// Where and how a tenant receives notices. The signing secret lives in the secret store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WebhookConfig {
    pub url: String,
    pub enabled: bool,
    pub events: Vec<WebhookEvent>,
    /// Name of the secret holding the `whsec_` signing secret.
    pub secret_ref: String,
    /// The secret being rotated out: deliveries are signed with it too until
    /// `previous_secret_expires_at`, so receivers can switch secrets without missing one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_secret_ref: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_secret_expires_at: Option<DateTime<Utc>>,
    /// Why the service turned the endpoint off (it answered 410 Gone), for the API to show.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disabled_reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disabled_at: Option<DateTime<Utc>>,
}

impl WebhookConfig {
    /// An enabled endpoint receiving every event, signed with the secret named `secret_ref`.
    pub fn new(url: impl Into<String>, secret_ref: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            enabled: true,
            events: WebhookEvent::ALL.to_vec(),
            secret_ref: secret_ref.into(),
            previous_secret_ref: None,
            previous_secret_expires_at: None,
            disabled_reason: None,
            disabled_at: None,
        }
    }
}

/// A customer account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Tenant {
    pub id: TenantId,
    pub name: String,
    pub key_hash: String,
    pub plan: Plan,
    pub webhook: Option<WebhookConfig>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_differ_and_hash_stably() {
        let a = TenantKey::generate();
        let b = TenantKey::generate();

        assert_ne!(a.expose(), b.expose());
        assert_eq!(a.hash(), hash_api_key(a.expose()));
        assert_eq!(a.hash().len(), 64);
    }

    #[test]
    fn webhook_config_stored_before_rotation_and_disabling_existed_still_parses() {
        let stored = r#"{"url":"https://h.example.com/","enabled":true,
            "events":["job.succeeded"],"secretRef":"webhook/ten_1"}"#;

        let config: Result<WebhookConfig, _> = serde_json::from_str(stored);

        let config = config.expect("old config parses");
        assert_eq!(config.previous_secret_ref, None);
        assert_eq!(config.disabled_reason, None);
    }

    #[test]
    fn debug_output_never_shows_the_key() {
        let key = TenantKey::generate();

        assert!(!format!("{key:?}").contains(key.expose()));
    }
}
