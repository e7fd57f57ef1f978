//! Sends one signed webhook request through the outbound guard.

use std::time::{Duration, Instant};

use secrecy::SecretString;
use url::Url;

use super::guard::{GuardError, OutboundPolicy};
use super::sign::{sign, SigningError};

/// Why a delivery attempt failed. The receiver's body is never kept.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    #[error("destination refused: {0}")]
    Guard(#[from] GuardError),
    #[error(transparent)]
    Signing(#[from] SigningError),
    #[error("receiver answered {0}")]
    Status(u16),
    #[error("request failed: {0}")]
    Transport(String),
}

/// The result of one successful attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivered {
    pub status: u16,
    pub latency: Duration,
}

/// Posts signed webhook bodies.
#[derive(Debug, Clone)]
pub struct WebhookSender {
    policy: OutboundPolicy,
    timeout: Duration,
}

impl WebhookSender {
    pub fn new(policy: OutboundPolicy, timeout: Duration) -> Self {
        Self { policy, timeout }
    }

    pub fn policy(&self) -> OutboundPolicy {
        self.policy
    }

    /// POST `body` to `url`, signed with `secret`, pinned to the addresses the guard checked.
    ///
    /// # Errors
    /// [`DeliveryError`] for a refused address, a non-2xx answer (redirects included) or a
    /// transport failure or timeout.
    pub async fn send(
        &self,
        url: &Url,
        secret: &SecretString,
        msg_id: &str,
        attempt: u32,
        body: &str,
    ) -> Result<Delivered, DeliveryError> {
        let addrs = self.policy.resolve(url).await?;
        let mut builder = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(self.timeout)
            .no_proxy();
        if let Some(domain) = url.domain() {
            builder = builder.resolve_to_addrs(domain, &addrs);
        }
        let client = builder
            .build()
            .map_err(|e| DeliveryError::Transport(e.to_string()))?;

        let timestamp = chrono::Utc::now().timestamp();
        let signature = sign(secret, msg_id, timestamp, body.as_bytes())?;
        let started = Instant::now();
        let response = client
            .post(url.clone())
            .header("content-type", "application/json")
            .header("user-agent", "imagegen-webhooks/1")
            .header("webhook-id", msg_id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .header("webhook-attempt", attempt.to_string())
            .body(body.to_owned())
            .send()
            .await
            .map_err(|e| DeliveryError::Transport(e.without_url().to_string()))?;

        let status = response.status().as_u16();
        if !response.status().is_success() {
            return Err(DeliveryError::Status(status));
        }
        Ok(Delivered {
            status,
            latency: started.elapsed(),
        })
    }
}
