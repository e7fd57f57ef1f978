//! Running on AWS: the settings the Lambda binaries read once at cold start, the SDK clients,
//! and [`app_from_env`], which wires the AWS adapters into an [`App`].
//!
//! Compiled only with the `aws` feature. The SDK's standard endpoint overrides
//! (`AWS_ENDPOINT_URL`, `AWS_ENDPOINT_URL_DYNAMODB`, ...) point the same binaries at a local
//! emulator; `docs/aws.md` lists every setting.

mod limiter;
mod settings;

use std::sync::Arc;
use std::time::Duration;

use aws_config::{BehaviorVersion, SdkConfig};
use aws_sdk_dynamodb::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use secrecy::{ExposeSecret, SecretString};
use tracing::{info, warn};

pub use limiter::LazyRedisLimiter;
pub use settings::{AwsSettings, FunctionTimeouts, RedisTarget, SettingsError};

use crate::app::App;
use crate::blob::s3::S3BlobStore;
use crate::deliveries::DynamoDeliveryLog;
use crate::limiter::registry_dynamo::DynamoKeyRegistry;
use crate::limiter::{KeyPool, LimiterSettings, LocalLimiter};
use crate::ports::{JobStore, KeyRegistry, Limiter, PortError, Provider, SecretStore};
use crate::queue::sqs::SqsQueue;
use crate::secrets::aws::AwsSecrets;
use crate::store::dynamo::DynamoStore;
use crate::store::TenantCache;
use crate::webhook::{OutboundPolicy, WebhookSender};

/// Map an SDK failure to a [`PortError`]: throttling, server faults and transport failures are
/// worth retrying; everything else (validation, missing resources, access denied) is a bug in
/// the deployment and is reported as internal.
pub(crate) fn sdk_error<E, R>(e: SdkError<E, R>) -> PortError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    let detail = DisplayErrorContext(&e).to_string();
    match &e {
        SdkError::ServiceError(service) => {
            let code = service.err().code().unwrap_or_default();
            let transient = code.contains("Throttl")
                || code.contains("ThroughputExceeded")
                || code.contains("LimitExceeded")
                || code.contains("InternalServer")
                || code.contains("InternalError")
                || code.contains("ServiceUnavailable")
                || code.contains("TransactionConflict")
                || code.contains("TransactionInProgress");
            if transient {
                PortError::Unavailable(detail)
            } else {
                PortError::Internal(detail)
            }
        }
        _ => PortError::Unavailable(detail),
    }
}

/// One client per service, built once per cold start and shared by every invocation.
#[derive(Clone, Debug)]
pub struct AwsClients {
    pub dynamo: aws_sdk_dynamodb::Client,
    pub sqs: aws_sdk_sqs::Client,
    pub s3: aws_sdk_s3::Client,
    pub secrets: aws_sdk_secretsmanager::Client,
    /// Kept to read the signing credentials' expiry for presigned URLs.
    pub sdk: SdkConfig,
}

impl AwsClients {
    /// Clients for `sdk`. `s3_path_style` is for emulators that do not serve
    /// virtual-hosted buckets.
    pub fn new(sdk: &SdkConfig, s3_path_style: bool) -> Self {
        let s3 = aws_sdk_s3::config::Builder::from(sdk)
            .force_path_style(s3_path_style)
            .build();
        Self {
            dynamo: aws_sdk_dynamodb::Client::new(sdk),
            sqs: aws_sdk_sqs::Client::new(sdk),
            s3: aws_sdk_s3::Client::from_conf(s3),
            secrets: aws_sdk_secretsmanager::Client::new(sdk),
            sdk: sdk.clone(),
        }
    }

    /// Load the SDK's configuration from the environment (region, credentials, endpoint
    /// overrides) and build the clients.
    pub async fn from_env(s3_path_style: bool) -> Self {
        let sdk = aws_config::defaults(BehaviorVersion::latest()).load().await;
        Self::new(&sdk, s3_path_style)
    }
}

/// What a Lambda binary needs: the app and, for the HTTP functions, the operator token.
pub struct AwsApp {
    pub app: App,
    /// `None` when no admin-token secret is configured or it does not exist: the admin
    /// routes then answer 401.
    pub admin_token: Option<SecretString>,
}

/// Why the app could not be built at cold start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Settings(#[from] SettingsError),
    #[error("cannot read secret {name}: {source}")]
    Secret { name: String, source: PortError },
    #[error("secret {0} is missing; create it (the SAM template does) and redeploy")]
    MissingSecret(String),
    #[error("provider: {0}")]
    Provider(String),
}

/// The limiter: the distributed Redis limiter when `IMAGEGEN_REDIS_URL` is set (every
/// deployment from the SAM template), else an in-process one whose limits hold per instance
/// only (a single function instance, or a trial without ElastiCache).
///
/// Redis is tried once here; when it cannot be reached the function starts anyway, its
/// limiter reports itself unavailable and connects on a later call (`LazyRedisLimiter`).
pub async fn lambda_limiter(redis: Option<&RedisTarget>, pool: Arc<KeyPool>) -> Arc<dyn Limiter> {
    let settings = LimiterSettings::default();
    let Some(RedisTarget(redis)) = redis else {
        warn!("IMAGEGEN_REDIS_URL is not set; limits hold per function instance only");
        return Arc::new(LocalLimiter::new(settings, pool));
    };
    let limiter = LazyRedisLimiter::new(settings, redis.clone(), pool);
    limiter.warm_up().await;
    Arc::new(limiter)
}

/// The image model `IMAGEGEN_PROVIDER` asks for (`gemini` with keys from the pool in the SAM
/// template); unset, Gemini when `GEMINI_API_KEY` is set, else the offline renderer.
///
/// # Errors
/// [`StartError::Provider`] when the provider settings are malformed.
pub fn lambda_provider() -> Result<Arc<dyn Provider>, StartError> {
    crate::provider::provider_from_env().map_err(StartError::Provider)
}

/// Read settings from the environment, build clients, and wire the AWS adapters.
///
/// # Errors
/// [`StartError`] naming the missing or malformed variable, or the secret that cannot be read.
pub async fn app_from_env() -> Result<AwsApp, StartError> {
    let settings = AwsSettings::from_env()?;
    let clients = AwsClients::from_env(settings.s3_path_style).await;
    app_from_parts(settings, clients).await
}

/// Wire the AWS adapters from settings and clients (the binaries go through
/// [`app_from_env`]; tests pass clients pointed at an emulator).
///
/// # Errors
/// [`StartError`] when the cursor key or admin token cannot be read.
pub async fn app_from_parts(
    settings: AwsSettings,
    clients: AwsClients,
) -> Result<AwsApp, StartError> {
    let secrets = AwsSecrets::new(
        clients.secrets.clone(),
        settings.secrets_prefix.clone(),
        settings.secrets_cache_ttl,
    );

    // Read at cold start, so the first request pays nothing and a missing secret stops the
    // function from starting rather than failing every request.
    let cursor_key = read_secret(&secrets, &settings.cursor_key_secret)
        .await?
        .ok_or_else(|| StartError::MissingSecret(settings.cursor_key_secret.clone()))?;
    let admin_token = match &settings.admin_token_secret {
        Some(name) => read_secret(&secrets, name).await?,
        None => None,
    };

    let mut app_settings = settings.app.clone();
    app_settings.cursor_key = cursor_key.expose_secret().as_bytes().to_vec();
    app_settings.allow_http_urls = settings.allow_loopback;

    let dynamo = DynamoStore::new(clients.dynamo.clone(), settings.tables.clone())
        .with_events_ttl(settings.events_ttl);
    let store: Arc<dyn JobStore> = if settings.tenant_cache_ttl.is_zero() {
        Arc::new(dynamo)
    } else {
        Arc::new(TenantCache::new(
            Arc::new(dynamo),
            settings.tenant_cache_ttl,
        ))
    };
    let queue = SqsQueue::new(clients.sqs.clone(), settings.queues.clone());
    let blobs = S3BlobStore::new(
        clients.s3.clone(),
        clients.sdk.credentials_provider(),
        settings.bucket.clone(),
        settings.public_base_url.clone(),
    );
    let secrets: Arc<dyn SecretStore> = Arc::new(secrets);
    let keys: Arc<dyn KeyRegistry> = Arc::new(DynamoKeyRegistry::new(
        clients.dynamo.clone(),
        settings.tables.keys.clone(),
    ));
    let pool = Arc::new(KeyPool::new(
        keys.clone(),
        secrets.clone(),
        LimiterSettings::default().key_cache_ttl,
    ));
    let policy = OutboundPolicy {
        allow_loopback: settings.allow_loopback,
        loopback_only: false,
    };
    let app = App {
        store,
        queue: Arc::new(queue),
        blobs: Arc::new(blobs),
        secrets,
        limiter: lambda_limiter(settings.redis.as_ref(), pool).await,
        keys,
        provider: lambda_provider()?,
        webhooks: WebhookSender::new(policy, settings.webhook_timeout),
        deliveries: Arc::new(
            DynamoDeliveryLog::new(clients.dynamo.clone(), settings.tables.deliveries.clone())
                .with_ttl(settings.deliveries_ttl),
        ),
        settings: Arc::new(app_settings),
        worker_id: settings.worker_id.clone(),
    };
    warm_up(&app).await;
    info!(worker_id = %app.worker_id, "aws adapters ready");
    Ok(AwsApp { app, admin_token })
}

/// Open the DynamoDB connection during init (DNS, TLS, credentials), which every function's
/// first request would otherwise pay for. A read of a tenant that cannot exist needs no right
/// beyond the ones each function already has.
async fn warm_up(app: &App) {
    let probe = crate::domain::TenantId::new("warm-up");
    if let Err(e) = app.store.get_tenant(&probe).await {
        warn!(error = %e, "dynamodb warm-up failed; the first request will connect");
    }
}

async fn read_secret(secrets: &AwsSecrets, name: &str) -> Result<Option<SecretString>, StartError> {
    secrets
        .get(name)
        .await
        .map_err(|source| StartError::Secret {
            name: name.to_owned(),
            source,
        })
}

/// Seconds since the epoch, as DynamoDB's TTL attribute wants them.
pub(crate) fn epoch_seconds(at: chrono::DateTime<chrono::Utc>) -> i64 {
    at.timestamp()
}

/// A duration as whole seconds, rounded up so a wait is never cut short.
pub(crate) fn ceil_seconds(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}
