//! The Lambda functions' settings: environment variables read once at cold start into a typed
//! struct. The SAM template sets every required one.

use std::time::Duration;

use crate::app::AppSettings;
use crate::limiter::RedisSettings;
use crate::queue::sqs::QueueUrls;
use crate::store::dynamo::DynamoTables;

/// A setting that is missing or cannot be read, named so the fix is obvious.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SettingsError {
    #[error("environment variable {0} is not set; the SAM template sets it for every function")]
    Missing(&'static str),
    #[error("environment variable {name} is {value:?}; expected {expected}")]
    Invalid {
        name: &'static str,
        value: String,
        expected: &'static str,
    },
}

/// Everything an AWS-hosted function is configured with.
#[derive(Debug, Clone)]
pub struct AwsSettings {
    pub tables: DynamoTables,
    pub queues: QueueUrls,
    pub bucket: String,
    /// When set, result URLs are `{public_base_url}/{key}` (a CDN in front of the bucket)
    /// instead of presigned GETs.
    pub public_base_url: Option<String>,
    /// Prepended to every secret name (`imagegen/`), so IAM can grant one prefix.
    pub secrets_prefix: String,
    pub secrets_cache_ttl: Duration,
    /// How long an API-key lookup is reused by a warm function; zero turns the cache off.
    pub tenant_cache_ttl: Duration,
    /// Secret (under the prefix) holding the key that signs list cursors.
    pub cursor_key_secret: String,
    /// Secret (under the prefix) holding the operator token for `/v1/admin/*`; only the
    /// function serving the admin routes is given one (and the IAM right to read it).
    pub admin_token_secret: Option<String>,
    /// How long job events are kept before DynamoDB's TTL removes them.
    pub events_ttl: Duration,
    /// How long webhook events and delivery attempts are kept before DynamoDB's TTL removes
    /// them.
    pub deliveries_ttl: Duration,
    pub webhook_timeout: Duration,
    /// The queue functions' timeouts, as the template sets them; checked against the lease
    /// and the webhook timeout at cold start.
    pub function_timeouts: FunctionTimeouts,
    /// Emulators only: address buckets by path rather than by host name.
    pub s3_path_style: bool,
    /// Tests and emulators only: accept plain-http and loopback webhook and image URLs.
    pub allow_loopback: bool,
    pub worker_id: String,
    /// The distributed limiter's Redis, when `IMAGEGEN_REDIS_URL` is set.
    pub redis: Option<RedisTarget>,
    pub app: AppSettings,
}

/// Where the Redis limiter connects. Its `Debug` shows the namespace only: the URL may carry a
/// password.
#[derive(Clone)]
pub struct RedisTarget(pub RedisSettings);

impl std::fmt::Debug for RedisTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisTarget")
            .field("namespace", &self.0.namespace)
            .finish_non_exhaustive()
    }
}

impl AwsSettings {
    /// Read the settings from the process environment.
    ///
    /// # Errors
    /// [`SettingsError`] naming the first variable that is missing or malformed.
    pub fn from_env() -> Result<Self, SettingsError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Read the settings through `lookup` (the environment, or a map in tests).
    ///
    /// # Errors
    /// [`SettingsError`] naming the first variable that is missing or malformed.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, SettingsError> {
        let env = Env { lookup: &lookup };
        let defaults = AppSettings::default();
        let app = AppSettings {
            max_attempts: env.number("IMAGEGEN_MAX_ATTEMPTS", defaults.max_attempts)?,
            lease: env.seconds("IMAGEGEN_LEASE_SECONDS", defaults.lease)?,
            provider_timeout: env.seconds(
                "IMAGEGEN_PROVIDER_TIMEOUT_SECONDS",
                defaults.provider_timeout,
            )?,
            result_url_ttl: env
                .seconds("IMAGEGEN_RESULT_URL_TTL_SECONDS", defaults.result_url_ttl)?,
            webhook_url_ttl: env
                .seconds("IMAGEGEN_WEBHOOK_URL_TTL_SECONDS", defaults.webhook_url_ttl)?,
            idempotency_ttl: env
                .seconds("IMAGEGEN_IDEMPOTENCY_TTL_SECONDS", defaults.idempotency_ttl)?,
            poison_receives: env.number("IMAGEGEN_POISON_RECEIVES", defaults.poison_receives)?,
            ..defaults
        };
        let timeouts = FunctionTimeouts {
            generate: env.optional_seconds("IMAGEGEN_GENERATE_FUNCTION_TIMEOUT_SECONDS")?,
            webhook: env.optional_seconds("IMAGEGEN_WEBHOOK_FUNCTION_TIMEOUT_SECONDS")?,
        };
        let webhook_timeout =
            env.seconds("IMAGEGEN_WEBHOOK_TIMEOUT_SECONDS", Duration::from_secs(15))?;
        check_timeouts(&app, webhook_timeout, timeouts)?;

        Ok(Self {
            tables: DynamoTables {
                jobs: env.required("IMAGEGEN_JOBS_TABLE")?,
                idempotency: env.required("IMAGEGEN_IDEMPOTENCY_TABLE")?,
                tenants: env.required("IMAGEGEN_TENANTS_TABLE")?,
                usage: env.required("IMAGEGEN_USAGE_TABLE")?,
                events: env.required("IMAGEGEN_EVENTS_TABLE")?,
                keys: env.required("IMAGEGEN_KEYS_TABLE")?,
                deliveries: env.required("IMAGEGEN_DELIVERIES_TABLE")?,
            },
            queues: QueueUrls {
                generate: env.required("IMAGEGEN_GENERATE_QUEUE_URL")?,
                webhook: env.required("IMAGEGEN_WEBHOOK_QUEUE_URL")?,
                generate_dead_letter: env.optional("IMAGEGEN_GENERATE_DLQ_URL"),
                webhook_dead_letter: env.optional("IMAGEGEN_WEBHOOK_DLQ_URL"),
            },
            bucket: env.required("IMAGEGEN_BUCKET")?,
            public_base_url: env
                .optional("IMAGEGEN_PUBLIC_BASE_URL")
                .map(|u| u.trim_end_matches('/').to_owned()),
            secrets_prefix: env
                .optional("IMAGEGEN_SECRETS_PREFIX")
                .unwrap_or_else(|| "imagegen/".into()),
            secrets_cache_ttl: env
                .seconds("IMAGEGEN_SECRETS_CACHE_SECONDS", Duration::from_secs(300))?,
            tenant_cache_ttl: env
                .seconds("IMAGEGEN_TENANT_CACHE_SECONDS", Duration::from_secs(30))?,
            cursor_key_secret: env
                .optional("IMAGEGEN_CURSOR_KEY_SECRET")
                .unwrap_or_else(|| "cursor-key".into()),
            admin_token_secret: env.optional("IMAGEGEN_ADMIN_TOKEN_SECRET"),
            events_ttl: Duration::from_secs(
                env.number::<u64>("IMAGEGEN_EVENTS_TTL_DAYS", 90)? * 24 * 3600,
            ),
            deliveries_ttl: Duration::from_secs(
                env.number::<u64>("IMAGEGEN_DELIVERIES_TTL_DAYS", 30)? * 24 * 3600,
            ),
            webhook_timeout,
            function_timeouts: timeouts,
            s3_path_style: env.flag("IMAGEGEN_S3_PATH_STYLE")?,
            allow_loopback: env.flag("IMAGEGEN_ALLOW_LOOPBACK")?,
            redis: env.redis()?,
            worker_id: env
                .optional("AWS_LAMBDA_LOG_STREAM_NAME")
                .unwrap_or_else(|| format!("aws-{}", ulid::Ulid::new())),
            app,
        })
    }
}

/// The Lambda timeouts of the queue functions. `None` where the host sets no limit (the local
/// runner, the test suites).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FunctionTimeouts {
    pub generate: Option<Duration>,
    pub webhook: Option<Duration>,
}

/// Store and queue work a webhook attempt does besides the request itself.
const WEBHOOK_MARGIN: Duration = Duration::from_secs(5);

/// Every deadline must sit inside the one that encloses it: the reference-image fetch and the
/// upstream call inside the lease, the lease inside the generate function's timeout, and one
/// webhook attempt (plus its bookkeeping) inside the webhook function's. A job whose lease
/// outlives its function is taken over while the first worker may still write.
fn check_timeouts(
    app: &AppSettings,
    webhook_timeout: Duration,
    functions: FunctionTimeouts,
) -> Result<(), SettingsError> {
    let invalid = |name, value: Duration, expected| SettingsError::Invalid {
        name,
        value: value.as_secs().to_string(),
        expected,
    };

    if app.input_images.timeout + app.provider_timeout >= app.lease {
        return Err(invalid(
            "IMAGEGEN_LEASE_SECONDS",
            app.lease,
            "more seconds than IMAGEGEN_PROVIDER_TIMEOUT_SECONDS plus the 20 s image fetch",
        ));
    }
    if let Some(generate) = functions.generate {
        if app.lease >= generate {
            return Err(invalid(
                "IMAGEGEN_GENERATE_FUNCTION_TIMEOUT_SECONDS",
                generate,
                "more seconds than IMAGEGEN_LEASE_SECONDS",
            ));
        }
    }
    if let Some(webhook) = functions.webhook {
        if webhook_timeout + WEBHOOK_MARGIN > webhook {
            return Err(invalid(
                "IMAGEGEN_WEBHOOK_FUNCTION_TIMEOUT_SECONDS",
                webhook,
                "at least IMAGEGEN_WEBHOOK_TIMEOUT_SECONDS plus 5",
            ));
        }
    }
    Ok(())
}

struct Env<'a> {
    lookup: &'a dyn Fn(&str) -> Option<String>,
}

impl Env<'_> {
    fn optional(&self, name: &str) -> Option<String> {
        (self.lookup)(name).filter(|v| !v.trim().is_empty())
    }

    fn required(&self, name: &'static str) -> Result<String, SettingsError> {
        self.optional(name).ok_or(SettingsError::Missing(name))
    }

    fn number<T: std::str::FromStr>(
        &self,
        name: &'static str,
        default: T,
    ) -> Result<T, SettingsError> {
        match self.optional(name) {
            None => Ok(default),
            Some(raw) => raw.trim().parse().map_err(|_| SettingsError::Invalid {
                name,
                value: raw,
                expected: "a whole number",
            }),
        }
    }

    fn seconds(&self, name: &'static str, default: Duration) -> Result<Duration, SettingsError> {
        self.number(name, default.as_secs())
            .map(Duration::from_secs)
    }

    /// `IMAGEGEN_REDIS_URL`, `IMAGEGEN_REDIS_NAMESPACE` and `IMAGEGEN_REDIS_CA_FILE` (read
    /// here, once). Only what can be checked without Redis is: reaching it is left to the
    /// limiter, so an unreachable Redis does not stop the function from starting.
    fn redis(&self) -> Result<Option<RedisTarget>, SettingsError> {
        let Some(url) = self.optional("IMAGEGEN_REDIS_URL") else {
            return Ok(None);
        };
        let mut redis = RedisSettings::new(url.into());
        if let Some(namespace) = self.optional("IMAGEGEN_REDIS_NAMESPACE") {
            if namespace.contains(['{', '}']) {
                return Err(SettingsError::Invalid {
                    name: "IMAGEGEN_REDIS_NAMESPACE",
                    value: namespace,
                    expected: "a name without braces",
                });
            }
            redis.namespace = namespace;
        }
        if let Some(path) = self.optional("IMAGEGEN_REDIS_CA_FILE") {
            let pem = std::fs::read(&path).map_err(|_| SettingsError::Invalid {
                name: "IMAGEGEN_REDIS_CA_FILE",
                value: path,
                expected: "a readable PEM file",
            })?;
            redis.ca_pem = Some(pem);
        }
        Ok(Some(RedisTarget(redis)))
    }

    fn optional_seconds(&self, name: &'static str) -> Result<Option<Duration>, SettingsError> {
        match self.optional(name) {
            None => Ok(None),
            Some(_) => self.seconds(name, Duration::ZERO).map(Some),
        }
    }

    fn flag(&self, name: &'static str) -> Result<bool, SettingsError> {
        match self.optional(name).as_deref().map(str::trim) {
            None | Some("0" | "false") => Ok(false),
            Some("1" | "true") => Ok(true),
            Some(other) => Err(SettingsError::Invalid {
                name,
                value: other.to_owned(),
                expected: "true or false",
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn complete() -> HashMap<&'static str, &'static str> {
        HashMap::from([
            ("IMAGEGEN_JOBS_TABLE", "jobs"),
            ("IMAGEGEN_IDEMPOTENCY_TABLE", "idem"),
            ("IMAGEGEN_TENANTS_TABLE", "tenants"),
            ("IMAGEGEN_USAGE_TABLE", "usage"),
            ("IMAGEGEN_EVENTS_TABLE", "events"),
            ("IMAGEGEN_KEYS_TABLE", "keys"),
            ("IMAGEGEN_DELIVERIES_TABLE", "deliveries"),
            ("IMAGEGEN_GENERATE_QUEUE_URL", "https://sqs/generate"),
            ("IMAGEGEN_WEBHOOK_QUEUE_URL", "https://sqs/webhook"),
            ("IMAGEGEN_BUCKET", "images"),
        ])
    }

    fn read(vars: &HashMap<&'static str, &'static str>) -> Result<AwsSettings, SettingsError> {
        AwsSettings::from_lookup(|name| vars.get(name).map(|v| (*v).to_owned()))
    }

    #[test]
    fn redis_settings_are_read_once_and_the_url_is_never_printed() {
        let mut vars = complete();
        let none = read(&vars).ok().and_then(|s| s.redis);
        vars.insert("IMAGEGEN_REDIS_URL", "rediss://user:hunter2@cache:6379");
        vars.insert("IMAGEGEN_REDIS_NAMESPACE", "prod");

        let settings = read(&vars).ok();
        vars.insert("IMAGEGEN_REDIS_NAMESPACE", "{prod}");
        let braces = read(&vars).err();

        assert!(none.is_none());
        let redis = settings.and_then(|s| s.redis);
        assert_eq!(redis.as_ref().map(|r| r.0.namespace.as_str()), Some("prod"));
        assert!(!format!("{redis:?}").contains("hunter2"), "{redis:?}");
        assert!(matches!(
            braces,
            Some(SettingsError::Invalid {
                name: "IMAGEGEN_REDIS_NAMESPACE",
                ..
            })
        ));
    }

    #[test]
    fn a_missing_variable_is_named_in_the_error() {
        let mut vars = complete();
        vars.remove("IMAGEGEN_BUCKET");

        let error = read(&vars).err();

        assert_eq!(error, Some(SettingsError::Missing("IMAGEGEN_BUCKET")));
        assert!(error
            .map(|e| e.to_string())
            .unwrap_or_default()
            .contains("IMAGEGEN_BUCKET"));
    }

    #[test]
    fn a_malformed_number_names_the_variable_and_the_value() {
        let mut vars = complete();
        vars.insert("IMAGEGEN_LEASE_SECONDS", "two minutes");

        let error = read(&vars).err().map(|e| e.to_string()).unwrap_or_default();

        assert!(error.contains("IMAGEGEN_LEASE_SECONDS"), "{error}");
        assert!(error.contains("two minutes"), "{error}");
    }

    fn invalid_name(vars: &HashMap<&'static str, &'static str>) -> Option<&'static str> {
        match read(vars) {
            Err(SettingsError::Invalid { name, .. }) => Some(name),
            _ => None,
        }
    }

    #[test]
    fn the_fetch_and_the_provider_call_must_end_before_the_lease() {
        let mut vars = complete();
        vars.insert("IMAGEGEN_LEASE_SECONDS", "60");
        vars.insert("IMAGEGEN_PROVIDER_TIMEOUT_SECONDS", "40");

        assert_eq!(invalid_name(&vars), Some("IMAGEGEN_LEASE_SECONDS"));
        let message = read(&vars).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(
            message.contains("IMAGEGEN_PROVIDER_TIMEOUT_SECONDS"),
            "{message}"
        );
    }

    #[test]
    fn a_lease_outliving_the_generate_function_is_named_in_the_error() {
        let mut vars = complete();
        vars.insert("IMAGEGEN_LEASE_SECONDS", "130");
        vars.insert("IMAGEGEN_PROVIDER_TIMEOUT_SECONDS", "100");
        vars.insert("IMAGEGEN_GENERATE_FUNCTION_TIMEOUT_SECONDS", "120");

        assert_eq!(
            invalid_name(&vars),
            Some("IMAGEGEN_GENERATE_FUNCTION_TIMEOUT_SECONDS")
        );

        vars.insert("IMAGEGEN_GENERATE_FUNCTION_TIMEOUT_SECONDS", "150");
        assert!(read(&vars).is_ok());
    }

    #[test]
    fn a_webhook_function_shorter_than_one_attempt_is_named_in_the_error() {
        let mut vars = complete();
        vars.insert("IMAGEGEN_WEBHOOK_TIMEOUT_SECONDS", "15");
        vars.insert("IMAGEGEN_WEBHOOK_FUNCTION_TIMEOUT_SECONDS", "15");

        assert_eq!(
            invalid_name(&vars),
            Some("IMAGEGEN_WEBHOOK_FUNCTION_TIMEOUT_SECONDS")
        );

        vars.insert("IMAGEGEN_WEBHOOK_FUNCTION_TIMEOUT_SECONDS", "30");
        assert!(read(&vars).is_ok());
    }

    #[test]
    fn dead_letter_queue_urls_are_read_when_set() {
        let mut vars = complete();
        vars.insert("IMAGEGEN_WEBHOOK_DLQ_URL", "https://sqs/webhook-dlq");

        let settings = read(&vars).unwrap_or_else(|e| panic!("{e}"));

        assert_eq!(
            settings.queues.webhook_dead_letter.as_deref(),
            Some("https://sqs/webhook-dlq")
        );
        assert_eq!(settings.queues.generate_dead_letter, None);
    }

    #[test]
    fn optional_settings_take_their_defaults() {
        let settings = read(&complete()).unwrap_or_else(|e| panic!("{e}"));

        assert_eq!(settings.secrets_prefix, "imagegen/");
        assert_eq!(settings.public_base_url, None);
        assert!(!settings.allow_loopback);
        assert_eq!(settings.events_ttl, Duration::from_secs(90 * 24 * 3600));
        assert_eq!(settings.deliveries_ttl, Duration::from_secs(30 * 24 * 3600));
        assert_eq!(settings.function_timeouts, FunctionTimeouts::default());
    }
}
