//! Operator actions on the upstream key pool: quota groups, keys and their secrets.
//!
//! Records go to the [`crate::ports::KeyRegistry`], secrets to the
//! [`crate::ports::SecretStore`] (never back out), and every change tells the limiter so the
//! next dispatch sees it.

use chrono::Utc;
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use tracing::{info, warn};

use crate::app::App;
use crate::domain::{KeyState, Limits, QuotaGroup, QuotaGroupId, UpstreamKey, UpstreamKeyId};
use crate::ports::{KeyHealth, PortError};

/// Why an operator action was refused.
#[derive(Debug, thiserror::Error)]
pub enum KeyAdminError {
    #[error("no such key or group")]
    NotFound,
    #[error("a key with this id already exists")]
    Exists,
    #[error("quota group {0} does not exist; create it first")]
    UnknownGroup(QuotaGroupId),
    #[error("quota group still has keys; delete or move them first")]
    GroupInUse,
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Port(#[from] PortError),
}

/// The longest upstream secret accepted.
const MAX_SECRET_CHARS: usize = 4096;
/// The longest label accepted.
const MAX_LABEL_CHARS: usize = 200;

/// Limits an operator may set: whole numbers from 1, or absent for unlimited.
///
/// # Errors
/// [`KeyAdminError::Invalid`] for a zero limit (it would stop all work silently).
pub fn check_limits(limits: &Limits) -> Result<(), KeyAdminError> {
    if limits.requests_per_minute == Some(0) || limits.concurrency == Some(0) {
        return Err(KeyAdminError::Invalid(
            "limits must be at least 1; leave them out (or null) for no limit".into(),
        ));
    }
    Ok(())
}

fn check_secret(secret: &SecretString) -> Result<(), KeyAdminError> {
    let raw = secret.expose_secret();
    if raw.is_empty() || raw.chars().count() > MAX_SECRET_CHARS {
        return Err(KeyAdminError::Invalid(format!(
            "secret must be 1 to {MAX_SECRET_CHARS} characters"
        )));
    }
    if raw.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(KeyAdminError::Invalid(
            "secret must not contain spaces or control characters".into(),
        ));
    }
    Ok(())
}

fn check_label(label: Option<&str>) -> Result<(), KeyAdminError> {
    match label {
        Some(l) if l.chars().count() > MAX_LABEL_CHARS || l.chars().any(char::is_control) => {
            Err(KeyAdminError::Invalid(format!(
                "label must be at most {MAX_LABEL_CHARS} characters, without control characters"
            )))
        }
        _ => Ok(()),
    }
}

/// Create or replace a quota group's limits.
///
/// # Errors
/// [`KeyAdminError`] for bad limits or a failing registry.
pub async fn put_group(
    app: &App,
    id: QuotaGroupId,
    limits: Limits,
) -> Result<QuotaGroup, KeyAdminError> {
    check_limits(&limits)?;
    let group = QuotaGroup {
        id,
        limits,
        updated_at: Utc::now(),
    };
    app.keys.put_group(&group).await?;
    app.limiter.key_changed(None).await?;
    info!(group = %group.id, "quota group saved");
    Ok(group)
}

/// Remove a quota group that no key uses.
///
/// # Errors
/// [`KeyAdminError::GroupInUse`], [`KeyAdminError::NotFound`] or a failing registry.
pub async fn delete_group(app: &App, id: &QuotaGroupId) -> Result<(), KeyAdminError> {
    let keys = app.keys.list_keys().await?;
    if keys.iter().any(|k| &k.group == id) {
        return Err(KeyAdminError::GroupInUse);
    }
    if !app.keys.delete_group(id).await? {
        return Err(KeyAdminError::NotFound);
    }
    app.limiter.key_changed(None).await?;
    Ok(())
}

/// A key to add.
pub struct NewKey {
    pub id: Option<UpstreamKeyId>,
    pub group: QuotaGroupId,
    pub secret: SecretString,
    pub label: Option<String>,
    pub limits: Limits,
}

/// Store a new key's secret, then its record, enabled.
///
/// # Errors
/// [`KeyAdminError`] for bad input, an existing id, a missing group or a failing port.
pub async fn add_key(app: &App, new: NewKey) -> Result<UpstreamKey, KeyAdminError> {
    check_limits(&new.limits)?;
    check_secret(&new.secret)?;
    check_label(new.label.as_deref())?;
    let id = match new.id {
        Some(id) => id,
        None => UpstreamKeyId::parse(&format!("key_{}", ulid::Ulid::new()))
            .map_err(|e| KeyAdminError::Invalid(e.to_string()))?,
    };
    if app.keys.get_group(&new.group).await?.is_none() {
        return Err(KeyAdminError::UnknownGroup(new.group));
    }
    if app.keys.get_key(&id).await?.is_some() {
        return Err(KeyAdminError::Exists);
    }

    // The secret first: a record whose secret is missing would be handed out and fail.
    app.secrets.put(&id.secret_name(), &new.secret).await?;
    let now = Utc::now();
    let key = UpstreamKey {
        id,
        group: new.group,
        limits: new.limits,
        state: KeyState::Enabled,
        disabled_reason: None,
        label: new.label,
        created_at: now,
        updated_at: now,
    };
    app.keys.put_key(&key).await?;
    app.limiter.key_changed(Some(&key.id)).await?;
    info!(key_id = %key.id, group = %key.group, "upstream key added");
    Ok(key)
}

/// Changes to a key; `None` leaves a field as it is.
#[derive(Default)]
pub struct KeyUpdate {
    pub label: Option<Option<String>>,
    pub requests_per_minute: Option<Option<u32>>,
    pub concurrency: Option<Option<u32>>,
    pub state: Option<KeyState>,
    /// A new secret (rotation).
    pub secret: Option<SecretString>,
}

/// Apply `update` to a key.
///
/// # Errors
/// [`KeyAdminError`] for bad input, a missing key or a failing port.
pub async fn update_key(
    app: &App,
    id: &UpstreamKeyId,
    update: KeyUpdate,
) -> Result<UpstreamKey, KeyAdminError> {
    let mut key = app.keys.get_key(id).await?.ok_or(KeyAdminError::NotFound)?;
    if let Some(label) = update.label {
        check_label(label.as_deref())?;
        key.label = label;
    }
    if let Some(rpm) = update.requests_per_minute {
        key.limits.requests_per_minute = rpm;
    }
    if let Some(concurrency) = update.concurrency {
        key.limits.concurrency = concurrency;
    }
    check_limits(&key.limits)?;
    if let Some(secret) = &update.secret {
        check_secret(secret)?;
        app.secrets.put(&id.secret_name(), secret).await?;
    }
    let re_enabled = update.state == Some(KeyState::Enabled);
    if let Some(state) = update.state {
        key.state = state;
        key.disabled_reason = match state {
            KeyState::Enabled => None,
            KeyState::Disabled => Some("disabled by an operator".into()),
        };
    }
    key.updated_at = Utc::now();

    app.keys.put_key(&key).await?;
    let reset = (re_enabled || update.secret.is_some()).then_some(id);
    app.limiter.key_changed(reset).await?;
    info!(key_id = %key.id, state = ?key.state, "upstream key updated");
    Ok(key)
}

/// Remove a key record. Its leases expire on their own.
///
/// # Errors
/// [`KeyAdminError::NotFound`] or a failing port.
pub async fn delete_key(app: &App, id: &UpstreamKeyId) -> Result<(), KeyAdminError> {
    if !app.keys.delete_key(id).await? {
        return Err(KeyAdminError::NotFound);
    }
    app.limiter.key_changed(None).await?;
    info!(key_id = %id, "upstream key deleted");
    Ok(())
}

/// A key as operators see it: the record and live health, never the secret.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct KeyView {
    #[serde(flatten)]
    pub key: UpstreamKey,
    /// `null` when the limiter cannot be reached: the records are still worth showing.
    pub health: Option<KeyHealth>,
}

/// Keys with their health, in the order given. When the limiter cannot be reached the keys
/// are returned without health rather than not at all.
///
/// # Errors
/// None today; the signature leaves room for a registry read.
pub async fn views(app: &App, keys: Vec<UpstreamKey>) -> Result<Vec<KeyView>, PortError> {
    let ids: Vec<UpstreamKeyId> = keys.iter().map(|k| k.id.clone()).collect();
    let mut health = match app.limiter.key_health(&ids).await {
        Ok(health) => health.into_iter().map(Some).collect(),
        Err(e) => {
            warn!(error = %e, "key health unavailable");
            Vec::new()
        }
    };
    health.resize(keys.len(), None);
    Ok(keys
        .into_iter()
        .zip(health)
        .map(|(key, health)| KeyView { key, health })
        .collect())
}
