//! Sends one signed webhook request through the outbound guard.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use secrecy::SecretString;
use url::Url;

use super::guard::{GuardError, OutboundPolicy, Resolver, SharedResolver};
use super::schedule::RetrySchedule;
use super::sign::{sign_all, SigningError};

/// How long a receiver has to answer one attempt.
pub const DELIVERY_TIMEOUT: Duration = Duration::from_secs(15);

/// Why a delivery attempt failed. Nothing of the receiver's body is ever kept: these
/// messages reach the delivery log and the logs, and a body could carry anything.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeliveryError {
    #[error("destination refused: {0}")]
    Guard(#[from] GuardError),
    #[error("webhook secret is malformed")]
    Signing,
    #[error("receiver answered {0}")]
    Status(u16),
    #[error("receiver answered {0}; redirects are not followed")]
    Redirect(u16),
    #[error("no answer within {} s", .0.as_secs())]
    Timeout(Duration),
    #[error("could not connect to the receiver")]
    Connect,
    #[error("request failed")]
    Transport,
}

impl From<SigningError> for DeliveryError {
    fn from(_: SigningError) -> Self {
        Self::Signing
    }
}

/// What one attempt did: the status the receiver answered, if it answered, and how long it
/// took. `error` is `None` exactly when the answer was 2xx.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptReport {
    pub status: Option<u16>,
    pub latency: Duration,
    pub error: Option<DeliveryError>,
}

impl AttemptReport {
    pub fn delivered(&self) -> bool {
        self.error.is_none()
    }

    /// The receiver answered 410 Gone: it asks us to stop sending.
    pub fn gone(&self) -> bool {
        self.status == Some(410)
    }

    fn refused(error: DeliveryError) -> Self {
        Self {
            status: None,
            latency: Duration::ZERO,
            error: Some(error),
        }
    }
}

/// Posts signed webhook bodies, and knows the retry schedule.
#[derive(Debug, Clone)]
pub struct WebhookSender {
    policy: OutboundPolicy,
    timeout: Duration,
    resolver: SharedResolver,
    schedule: RetrySchedule,
}

impl WebhookSender {
    /// A sender using the system resolver and the default retry schedule.
    pub fn new(policy: OutboundPolicy, timeout: Duration) -> Self {
        Self {
            policy,
            timeout,
            resolver: SharedResolver::default(),
            schedule: RetrySchedule::default(),
        }
    }

    /// Resolve receiver hosts with `resolver` instead of the system's.
    pub fn with_resolver(mut self, resolver: Arc<dyn Resolver>) -> Self {
        self.resolver = SharedResolver(resolver);
        self
    }

    /// Retry failed attempts on `schedule`.
    pub fn with_schedule(mut self, schedule: RetrySchedule) -> Self {
        self.schedule = schedule;
        self
    }

    pub fn policy(&self) -> OutboundPolicy {
        self.policy
    }

    pub fn schedule(&self) -> &RetrySchedule {
        &self.schedule
    }

    /// Check that `url` may be called now: its shape and every address its host names.
    ///
    /// # Errors
    /// [`GuardError`] naming the rule broken.
    pub async fn check(&self, url: &Url) -> Result<Vec<SocketAddr>, GuardError> {
        self.policy
            .resolve_with(url, self.resolver.0.as_ref())
            .await
    }

    /// POST `body` to `url`, signed with every secret in `secrets`, connected only to the
    /// addresses the guard just checked. Redirects are not followed and the answer's body is
    /// never read.
    pub async fn send(
        &self,
        url: &Url,
        secrets: &[SecretString],
        msg_id: &str,
        attempt: u32,
        body: &str,
    ) -> AttemptReport {
        let addrs = match self.check(url).await {
            Ok(addrs) => addrs,
            Err(e) => return AttemptReport::refused(e.into()),
        };
        let mut builder = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(self.timeout)
            .no_proxy();
        if let Some(domain) = url.domain() {
            // Pinning: the client never asks DNS again, so it cannot reach another address.
            builder = builder.resolve_to_addrs(domain, &addrs);
        }
        let Ok(client) = builder.build() else {
            return AttemptReport::refused(DeliveryError::Transport);
        };

        let timestamp = chrono::Utc::now().timestamp();
        let signature = match sign_all(secrets, msg_id, timestamp, body.as_bytes()) {
            Ok(signature) => signature,
            Err(e) => return AttemptReport::refused(e.into()),
        };
        let started = Instant::now();
        let sent = client
            .post(url.clone())
            .header("content-type", "application/json")
            .header("user-agent", "imagegen-webhooks/1")
            .header("webhook-id", msg_id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .header("webhook-attempt", attempt.to_string())
            .body(body.to_owned())
            .send()
            .await;
        let latency = started.elapsed();

        match sent {
            Ok(response) => {
                let status = response.status();
                let error = if status.is_success() {
                    None
                } else if status.is_redirection() {
                    Some(DeliveryError::Redirect(status.as_u16()))
                } else {
                    Some(DeliveryError::Status(status.as_u16()))
                };
                AttemptReport {
                    status: Some(status.as_u16()),
                    latency,
                    error,
                }
            }
            Err(e) => {
                let error = if e.is_timeout() {
                    DeliveryError::Timeout(self.timeout)
                } else if e.is_connect() {
                    DeliveryError::Connect
                } else {
                    DeliveryError::Transport
                };
                AttemptReport {
                    status: None,
                    latency,
                    error: Some(error),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use async_trait::async_trait;
    use axum::http::{HeaderMap, StatusCode};
    use axum::routing::post;
    use axum::Router;
    use tokio::net::TcpListener;
    use tokio::sync::mpsc;

    use super::*;
    use crate::webhook::generate_secret;

    /// A DNS server that answers `first` once and `later` ever after: the rebinding attack.
    struct RebindingResolver {
        first: IpAddr,
        later: IpAddr,
        calls: AtomicUsize,
    }

    #[async_trait]
    impl Resolver for RebindingResolver {
        async fn lookup(&self, _host: &str, port: u16) -> std::io::Result<Vec<SocketAddr>> {
            let call = self.calls.fetch_add(1, Ordering::SeqCst);
            let ip = if call == 0 { self.first } else { self.later };
            Ok(vec![SocketAddr::new(ip, port)])
        }
    }

    /// A loopback receiver answering `status` (after `delay`) and reporting each request's
    /// headers.
    async fn receiver(
        status: StatusCode,
        delay: Duration,
    ) -> (SocketAddr, mpsc::UnboundedReceiver<HeaderMap>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (tx, rx) = mpsc::unbounded_channel();
        let app = Router::new().route(
            "/{*path}",
            post(move |headers: HeaderMap| {
                let tx = tx.clone();
                async move {
                    let _ = tx.send(headers);
                    tokio::time::sleep(delay).await;
                    (
                        status,
                        [("location", "http://169.254.169.254/")],
                        "secret body",
                    )
                }
            }),
        );
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        (addr, rx)
    }

    fn local_sender() -> WebhookSender {
        let policy = OutboundPolicy {
            allow_loopback: true,
            loopback_only: false,
        };
        WebhookSender::new(policy, DELIVERY_TIMEOUT)
    }

    fn url(raw: &str) -> Url {
        Url::parse(raw).expect("url")
    }

    #[tokio::test]
    async fn the_connection_goes_to_the_checked_address_even_if_dns_changes_its_answer() {
        let (addr, mut hits) = receiver(StatusCode::NO_CONTENT, Duration::ZERO).await;
        let dns = Arc::new(RebindingResolver {
            first: addr.ip(),
            later: "10.0.0.7".parse().expect("ip"),
            calls: AtomicUsize::new(0),
        });
        let sender = local_sender().with_resolver(dns.clone());
        let target = url(&format!("http://hooks.rebind.test:{}/in", addr.port()));
        let secrets = [generate_secret()];

        let report = sender.send(&target, &secrets, "evt_1", 1, "{}").await;

        // The name exists only in the resolver, so reaching the receiver proves the client
        // used the pinned address instead of resolving again.
        assert_eq!(report.error, None);
        assert_eq!(dns.calls.load(Ordering::SeqCst), 1);
        assert!(hits.try_recv().is_ok());
    }

    #[tokio::test]
    async fn a_name_that_rebinds_to_a_private_address_is_refused_on_the_next_send() {
        let (addr, mut hits) = receiver(StatusCode::NO_CONTENT, Duration::ZERO).await;
        let dns = Arc::new(RebindingResolver {
            first: addr.ip(),
            later: "169.254.169.254".parse().expect("ip"),
            calls: AtomicUsize::new(0),
        });
        let sender = local_sender().with_resolver(dns);
        let target = url(&format!("http://hooks.rebind.test:{}/in", addr.port()));
        let secrets = [generate_secret()];

        let first = sender.send(&target, &secrets, "evt_1", 1, "{}").await;
        let second = sender.send(&target, &secrets, "evt_1", 2, "{}").await;

        assert_eq!(first.error, None);
        assert_eq!(
            second.error,
            Some(DeliveryError::Guard(GuardError::Forbidden(
                "169.254.169.254".parse().expect("ip")
            )))
        );
        assert!(hits.try_recv().is_ok());
        assert!(hits.try_recv().is_err(), "the second send must not connect");
    }

    #[tokio::test]
    async fn registration_check_passes_and_send_time_check_refuses_a_rebound_name() {
        let dns = Arc::new(RebindingResolver {
            first: "93.184.216.34".parse().expect("ip"),
            later: "127.0.0.1".parse().expect("ip"),
            calls: AtomicUsize::new(0),
        });
        let sender =
            WebhookSender::new(OutboundPolicy::default(), DELIVERY_TIMEOUT).with_resolver(dns);
        let target = url("https://hooks.rebind.test/in");

        let at_registration = sender.check(&target).await;
        let at_send = sender
            .send(&target, &[generate_secret()], "e", 1, "{}")
            .await;

        assert!(at_registration.is_ok());
        assert_eq!(
            at_send.error,
            Some(DeliveryError::Guard(GuardError::Forbidden(
                "127.0.0.1".parse().expect("ip")
            )))
        );
        assert_eq!(at_send.status, None);
    }

    #[tokio::test]
    async fn a_redirect_is_a_failure_and_is_not_followed() {
        let (addr, _hits) = receiver(StatusCode::FOUND, Duration::ZERO).await;
        let target = url(&format!("http://{addr}/in"));

        let report = local_sender()
            .send(&target, &[generate_secret()], "e", 1, "{}")
            .await;

        assert_eq!(report.status, Some(302));
        assert_eq!(report.error, Some(DeliveryError::Redirect(302)));
    }

    #[tokio::test]
    async fn a_non_2xx_answer_is_a_failure_and_410_means_gone() {
        let (addr, _) = receiver(StatusCode::SERVICE_UNAVAILABLE, Duration::ZERO).await;
        let (gone_addr, _) = receiver(StatusCode::GONE, Duration::ZERO).await;
        let secrets = [generate_secret()];

        let failed = local_sender()
            .send(&url(&format!("http://{addr}/in")), &secrets, "e", 1, "{}")
            .await;
        let gone = local_sender()
            .send(
                &url(&format!("http://{gone_addr}/in")),
                &secrets,
                "e",
                1,
                "{}",
            )
            .await;

        assert_eq!(failed.error, Some(DeliveryError::Status(503)));
        assert!(!failed.gone());
        assert!(gone.gone());
        let text = failed.error.map(|e| e.to_string()).unwrap_or_default();
        assert!(
            !text.contains("secret body"),
            "receiver bodies never reach errors"
        );
    }

    #[tokio::test]
    async fn a_receiver_slower_than_the_timeout_fails_as_a_timeout() {
        let (addr, _) = receiver(StatusCode::OK, Duration::from_secs(5)).await;
        let policy = OutboundPolicy {
            allow_loopback: true,
            loopback_only: false,
        };
        let sender = WebhookSender::new(policy, Duration::from_millis(200));

        let report = sender
            .send(
                &url(&format!("http://{addr}/in")),
                &[generate_secret()],
                "e",
                1,
                "{}",
            )
            .await;

        assert_eq!(
            report.error,
            Some(DeliveryError::Timeout(Duration::from_millis(200)))
        );
        assert!(report.latency < Duration::from_secs(2));
    }

    #[tokio::test]
    async fn every_attempt_carries_the_standard_headers_and_its_attempt_number() {
        let (addr, mut hits) = receiver(StatusCode::OK, Duration::ZERO).await;
        let target = url(&format!("http://{addr}/in"));

        let report = local_sender()
            .send(&target, &[generate_secret()], "evt_9", 3, "{}")
            .await;

        let headers = hits.try_recv().expect("a request");
        assert!(report.delivered());
        assert_eq!(headers["webhook-id"], "evt_9");
        assert_eq!(headers["webhook-attempt"], "3");
        assert!(headers["webhook-timestamp"]
            .to_str()
            .is_ok_and(|t| t.parse::<i64>().is_ok()));
        assert!(headers["webhook-signature"]
            .to_str()
            .is_ok_and(|s| s.starts_with("v1,")));
        assert_eq!(headers["content-type"], "application/json");
    }

    #[test]
    fn receivers_get_fifteen_seconds_to_answer() {
        assert_eq!(DELIVERY_TIMEOUT, Duration::from_secs(15));
    }
}
