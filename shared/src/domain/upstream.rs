//! Upstream keys and the quota groups they draw from.
//!
//! An upstream project (a Gemini project, say) limits requests per project, not per key, so
//! every key belongs to a quota group carrying the project's limits; a key may carry tighter
//! limits of its own.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// An id an operator gave that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("ids must be 1 to 64 characters of A-Z, a-z, 0-9, '-', '_' and '.'")]
pub struct InvalidUpstreamId;

/// The longest id an operator may give a key or a group.
const MAX_ID_CHARS: usize = 64;

fn valid_id(raw: &str) -> bool {
    !raw.is_empty()
        && raw.len() <= MAX_ID_CHARS
        && raw
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// The id of an upstream key: 1 to 64 of `A-Z a-z 0-9 - _ .`, so it is safe in Redis key
/// names, secret names and URLs alike.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct UpstreamKeyId(String);

impl UpstreamKeyId {
    /// # Errors
    /// [`InvalidUpstreamId`] when `raw` is empty, too long or has other characters.
    pub fn parse(raw: &str) -> Result<Self, InvalidUpstreamId> {
        valid_id(raw)
            .then(|| Self(raw.to_owned()))
            .ok_or(InvalidUpstreamId)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The name its secret is stored under in the secret store.
    pub fn secret_name(&self) -> String {
        format!("upstream-key/{}", self.0)
    }
}

impl fmt::Display for UpstreamKeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The id of a quota group; same alphabet as [`UpstreamKeyId`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct QuotaGroupId(String);

impl QuotaGroupId {
    /// # Errors
    /// [`InvalidUpstreamId`] when `raw` is empty, too long or has other characters.
    pub fn parse(raw: &str) -> Result<Self, InvalidUpstreamId> {
        valid_id(raw)
            .then(|| Self(raw.to_owned()))
            .ok_or(InvalidUpstreamId)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for QuotaGroupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Limits at one level. `None` is unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Limits {
    /// Admissions in any sliding window (60 s unless the limiter is set otherwise).
    pub requests_per_minute: Option<u32>,
    /// Leases held at once.
    pub concurrency: Option<u32>,
}

/// An upstream project's shared quota.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct QuotaGroup {
    pub id: QuotaGroupId,
    pub limits: Limits,
    pub updated_at: DateTime<Utc>,
}

/// Whether the pool may hand a key out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyState {
    Enabled,
    Disabled,
}

/// An upstream key as the registry holds it. The secret itself lives in the secret store
/// under [`UpstreamKeyId::secret_name`] and never appears here.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UpstreamKey {
    pub id: UpstreamKeyId,
    pub group: QuotaGroupId,
    /// The key's own limits, inside its group's.
    pub limits: Limits,
    pub state: KeyState,
    /// Why the key was disabled, when it was.
    pub disabled_reason: Option<String>,
    pub label: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl UpstreamKey {
    pub fn is_enabled(&self) -> bool {
        self.state == KeyState::Enabled
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn ids_accept_the_safe_alphabet_and_refuse_the_rest() {
        assert!(UpstreamKeyId::parse("gemini-prod_1.a").is_ok());
        assert!(QuotaGroupId::parse("project-42").is_ok());

        for bad in [
            "",
            "has space",
            "brace{x}",
            "colon:x",
            "slash/x",
            &"x".repeat(65),
        ] {
            assert!(UpstreamKeyId::parse(bad).is_err(), "{bad} accepted");
            assert!(QuotaGroupId::parse(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn a_key_secret_is_named_after_its_id() {
        let id = UpstreamKeyId::parse("k1").unwrap();

        assert_eq!(id.secret_name(), "upstream-key/k1");
    }
}
