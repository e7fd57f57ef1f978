//! Operator actions: creating tenants and configuring their webhooks.

use secrecy::SecretString;

use crate::app::App;
use crate::domain::{Plan, Tenant, TenantId, TenantKey, WebhookEvent, WebhookUrl};
use crate::ports::PortResult;
use crate::service::webhooks::{self, ConfigError, EndpointSettings};

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

/// Point a tenant's webhook at `url` for every event, and return its signing secret when one
/// was made (a tenant's first endpoint); an existing endpoint keeps its secret.
///
/// # Errors
/// [`ConfigError`] when the URL may not be called or a store fails.
pub async fn set_webhook(
    app: &App,
    tenant: &Tenant,
    url: &WebhookUrl,
) -> Result<Option<SecretString>, ConfigError> {
    let settings = EndpointSettings {
        url: url.clone(),
        events: WebhookEvent::ALL.to_vec(),
        enabled: true,
    };
    Ok(webhooks::configure(app, &tenant.id, settings).await?.secret)
}
