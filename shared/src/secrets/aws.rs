//! Secrets Manager, behind an in-process cache. A warm Lambda reads each secret once per TTL
//! instead of once per message; values stay wrapped in [`SecretString`] from the SDK's answer
//! to the caller, so they cannot reach a log by accident.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use aws_sdk_secretsmanager::error::SdkError;
use aws_sdk_secretsmanager::operation::get_secret_value::GetSecretValueError;
use aws_sdk_secretsmanager::operation::put_secret_value::PutSecretValueError;
use aws_sdk_secretsmanager::Client;
use secrecy::{ExposeSecret, SecretString};

use crate::aws::sdk_error;
use crate::ports::{PortError, PortResult, SecretStore};

/// The Secrets Manager [`SecretStore`]. Names are prefixed (`imagegen/webhook/ten_..`) so one
/// IAM statement can grant the whole set.
#[derive(Debug)]
pub struct AwsSecrets {
    client: Client,
    prefix: String,
    ttl: Duration,
    cache: Mutex<HashMap<String, (SecretString, Instant)>>,
}

impl AwsSecrets {
    pub fn new(client: Client, prefix: String, ttl: Duration) -> Self {
        Self {
            client,
            prefix,
            ttl,
            cache: Mutex::new(HashMap::new()),
        }
    }

    fn full_name(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    fn cached(&self, name: &str) -> Option<SecretString> {
        let cache = self.cache.lock().ok()?;
        let (value, read_at) = cache.get(name)?;
        (read_at.elapsed() < self.ttl).then(|| value.clone())
    }

    fn remember(&self, name: &str, value: &SecretString) {
        if let Ok(mut cache) = self.cache.lock() {
            cache.insert(name.to_owned(), (value.clone(), Instant::now()));
        }
    }
}

#[async_trait]
impl SecretStore for AwsSecrets {
    async fn get(&self, name: &str) -> PortResult<Option<SecretString>> {
        if let Some(value) = self.cached(name) {
            return Ok(Some(value));
        }
        let result = self
            .client
            .get_secret_value()
            .secret_id(self.full_name(name))
            .send()
            .await;
        let output = match result {
            Ok(output) => output,
            // Absence is not cached: a secret created a moment later must be found.
            Err(SdkError::ServiceError(e))
                if matches!(e.err(), GetSecretValueError::ResourceNotFoundException(_)) =>
            {
                return Ok(None)
            }
            Err(e) => return Err(sdk_error(e)),
        };
        let Some(value) = output.secret_string.map(SecretString::from) else {
            return Err(PortError::Internal(format!(
                "secret {name} has no string value"
            )));
        };
        self.remember(name, &value);
        Ok(Some(value))
    }

    async fn put(&self, name: &str, value: &SecretString) -> PortResult<()> {
        let full_name = self.full_name(name);
        let result = self
            .client
            .put_secret_value()
            .secret_id(&full_name)
            .secret_string(value.expose_secret())
            .send()
            .await;
        match result {
            Ok(_) => {}
            Err(SdkError::ServiceError(e))
                if matches!(e.err(), PutSecretValueError::ResourceNotFoundException(_)) =>
            {
                self.client
                    .create_secret()
                    .name(&full_name)
                    .secret_string(value.expose_secret())
                    .send()
                    .await
                    .map_err(sdk_error)?;
            }
            Err(e) => return Err(sdk_error(e)),
        }
        self.remember(name, value);
        Ok(())
    }
}
