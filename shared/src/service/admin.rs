//! Operator actions: creating tenants and configuring their webhooks.

use secrecy::SecretString;

use crate::app::App;
use crate::domain::{Plan, Tenant, TenantId, TenantKey, WebhookConfig, WebhookEvent, WebhookUrl};
use crate::ports::PortResult;
use crate::webhook::generate_secret;

/// A tenant just created, with its key in clear (shown once).
pub struct NewTenant {
    pub tenant: Tenant,
    pub key: TenantKey,
}

/// Create a tenant with a fresh API key.
///
/// # Errors
/// [`crate::ports::PortError`] when the store fails.
pub async fn create_tenant(app: &App, name: &str, plan: Plan) -> PortResult<NewTenant> {
    let key = TenantKey::generate();
    let tenant = Tenant {
        id: TenantId::generate(),
        name: name.to_owned(),
        key_hash: key.hash(),
        plan,
        webhook: None,
    };
    app.store.put_tenant(&tenant).await?;
    Ok(NewTenant { tenant, key })
}

/// Point a tenant's webhook at `url` with a newly generated secret, which is returned once.
///
/// # Errors
/// [`crate::ports::PortError`] when the store or the secret store fails.
pub async fn set_webhook(app: &App, tenant: &Tenant, url: &WebhookUrl) -> PortResult<SecretString> {
    let secret = generate_secret();
    let secret_ref = format!("webhook/{}", tenant.id);
    app.secrets.put(&secret_ref, &secret).await?;

    let mut updated = tenant.clone();
    updated.webhook = Some(WebhookConfig {
        url: url.as_str().to_owned(),
        enabled: true,
        events: vec![
            WebhookEvent::JobSucceeded,
            WebhookEvent::JobFailed,
            WebhookEvent::JobCanceled,
        ],
        secret_ref,
    });
    app.store.put_tenant(&updated).await?;
    Ok(secret)
}
