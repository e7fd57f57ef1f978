//! What only the Redis limiter must show: one hash tag and a TTL on every key it writes,
//! scripts that run on a cluster node, no caller clock in any call, and connections with a
//! password and with TLS.
//!
//! Run it with `cargo test -p imagegen-shared --features redis --test limiter_redis`; each test
//! starts its own `redis-server` on a free port.

#![cfg(feature = "redis")]
#![allow(clippy::unwrap_used)]

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use imagegen::domain::{
    KeyState, Limits, QuotaGroup, QuotaGroupId, TenantId, UpstreamKey, UpstreamKeyId,
};
use imagegen::limiter::redis_server::LocalRedisServer;
use imagegen::limiter::{KeyPool, LimiterSettings, RedisLimiter, RedisSettings, SqliteKeyRegistry};
use imagegen::ports::{
    Admission, KeyOutcome, KeyRegistry, Limiter, Permit, PermitRequest, PortError,
};
use imagegen::secrets::SqliteSecrets;
use imagegen::store::SqliteDb;
use secrecy::SecretString;

async fn pool_with_keys(keys: &[(&str, &str)]) -> Arc<KeyPool> {
    let db = SqliteDb::in_memory().unwrap();
    let registry = Arc::new(SqliteKeyRegistry::new(db.clone()).await.unwrap());
    for (key, group) in keys {
        let group = QuotaGroup {
            id: QuotaGroupId::parse(group).unwrap(),
            limits: Limits {
                requests_per_minute: Some(100),
                concurrency: Some(10),
            },
            updated_at: Utc::now(),
        };
        registry.put_group(&group).await.unwrap();
        registry
            .put_key(&UpstreamKey {
                id: UpstreamKeyId::parse(key).unwrap(),
                group: group.id,
                limits: Limits::default(),
                state: KeyState::Enabled,
                disabled_reason: None,
                label: None,
                created_at: Utc::now(),
                updated_at: Utc::now(),
            })
            .await
            .unwrap();
    }
    Arc::new(KeyPool::new(
        registry,
        Arc::new(SqliteSecrets::new(db)),
        Duration::from_secs(60),
    ))
}

fn keyed(tenant: &str) -> PermitRequest {
    PermitRequest {
        tenant_id: TenantId::new(tenant),
        tenant_concurrency: 10,
        tenant_rpm: Some(100),
        needs_key: true,
        lease: Duration::from_secs(30),
    }
}

/// Run every kind of acquire and release once.
async fn exercise(limiter: &RedisLimiter) {
    let outcomes = [
        KeyOutcome::Success,
        KeyOutcome::Neutral,
        KeyOutcome::Unused,
        KeyOutcome::Failure,
        KeyOutcome::Throttled {
            retry_after: Some(Duration::from_millis(50)),
        },
        KeyOutcome::QuotaExhausted {
            resets_at: Some(Utc::now() + chrono::Duration::milliseconds(50)),
        },
        KeyOutcome::Invalid,
    ];
    for (i, outcome) in outcomes.into_iter().enumerate() {
        let permit = granted(limiter, &format!("ten_{i}")).await;
        limiter.release(&permit, outcome).await.unwrap();
    }
    let ids = [
        UpstreamKeyId::parse("k1").unwrap(),
        UpstreamKeyId::parse("k2").unwrap(),
    ];
    limiter.key_health(&ids).await.unwrap();
}

/// A keyed permit for `tenant`, waiting as long as the limiter says.
async fn granted(limiter: &RedisLimiter, tenant: &str) -> Permit {
    loop {
        match limiter.acquire(&keyed(tenant)).await.unwrap() {
            Admission::Granted(permit) => return permit,
            Admission::Denied { retry_after } => tokio::time::sleep(retry_after).await,
        }
    }
}

async fn all_keys(limiter: &RedisLimiter) -> Vec<String> {
    let mut connection = limiter.connection();
    redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut connection)
        .await
        .unwrap()
}

#[tokio::test]
async fn every_key_the_limiter_writes_shares_one_hash_tag_and_has_a_ttl() {
    let server = LocalRedisServer::start(&[]).unwrap();
    let pool = pool_with_keys(&[("k1", "p1"), ("k2", "p2")]).await;
    let settings = RedisSettings::new(server.url().into());
    let limiter = RedisLimiter::connect(LimiterSettings::default(), settings, pool)
        .await
        .unwrap();

    exercise(&limiter).await;
    // A lease still held keeps the counts and the lease index alive.
    let _held = granted(&limiter, "ten_held").await;
    let keys = all_keys(&limiter).await;

    for kind in [
        "{imagegen}:c",
        "{imagegen}:x",
        "{imagegen}:h",
        "{imagegen}:s:k:k1",
    ] {
        assert!(
            keys.iter().any(|k| k == kind),
            "{kind} missing from {keys:?}"
        );
    }
    let mut connection = limiter.connection();
    for key in keys {
        assert!(key.starts_with("{imagegen}:"), "{key}");
        let ttl: i64 = redis::cmd("PTTL")
            .arg(&key)
            .query_async(&mut connection)
            .await
            .unwrap();
        assert!(ttl > 0, "{key} has no TTL");
    }
}

#[tokio::test]
async fn the_scripts_run_on_a_cluster_node_because_their_keys_share_one_slot() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = dir.path().join("nodes.conf");
    let server = LocalRedisServer::start(&[
        "--cluster-enabled",
        "yes",
        "--cluster-config-file",
        nodes.to_str().unwrap(),
    ])
    .unwrap();
    let client = redis::Client::open(server.url()).unwrap();
    let mut admin = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("CLUSTER")
        .arg("ADDSLOTSRANGE")
        .arg(0)
        .arg(16383)
        .query_async(&mut admin)
        .await
        .unwrap();
    for _ in 0..100 {
        let info: String = redis::cmd("CLUSTER")
            .arg("INFO")
            .query_async(&mut admin)
            .await
            .unwrap();
        if info.contains("cluster_state:ok") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let pool = pool_with_keys(&[("k1", "p1"), ("k2", "p2")]).await;
    let settings = RedisSettings::new(server.url().into());

    let limiter = RedisLimiter::connect(LimiterSettings::default(), settings, pool)
        .await
        .unwrap();

    // A key outside the slot would fail the call with CROSSSLOT.
    exercise(&limiter).await;
}

#[tokio::test]
async fn a_password_protected_server_needs_the_password_in_the_url() {
    let server = LocalRedisServer::start(&["--requirepass", "s3cret-pass"]).unwrap();
    let good = format!("redis://:s3cret-pass@127.0.0.1:{}", server.port);
    let bad = format!("redis://:wrong@127.0.0.1:{}", server.port);

    let limiter = RedisLimiter::connect(
        LimiterSettings::default(),
        RedisSettings::new(good.into()),
        pool_with_keys(&[("k1", "p1")]).await,
    )
    .await
    .unwrap();
    let refused = RedisLimiter::connect(
        LimiterSettings::default(),
        RedisSettings::new(bad.into()),
        pool_with_keys(&[("k1", "p1")]).await,
    )
    .await;

    exercise(&limiter).await;
    assert!(matches!(refused, Err(PortError::Unavailable(_))));
}

fn openssl(args: &[&str]) {
    let status = Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl is needed to make test certificates");
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
}

#[tokio::test]
async fn a_tls_server_is_reached_with_rediss_and_a_private_ca() {
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name).to_str().unwrap().to_owned();
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=test-ca",
        "-keyout",
        &path("ca.key"),
        "-out",
        &path("ca.pem"),
    ]);
    std::fs::write(
        path("ext.cnf"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )
    .unwrap();
    openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        &path("server.key"),
        "-out",
        &path("server.csr"),
    ]);
    openssl(&[
        "x509",
        "-req",
        "-in",
        &path("server.csr"),
        "-CA",
        &path("ca.pem"),
        "-CAkey",
        &path("ca.key"),
        "-CAcreateserial",
        "-days",
        "1",
        "-extfile",
        &path("ext.cnf"),
        "-out",
        &path("server.pem"),
    ]);
    let tls_port = LocalRedisServer::free_port().unwrap().to_string();
    let _server = LocalRedisServer::start(&[
        "--tls-port",
        &tls_port,
        "--tls-cert-file",
        &path("server.pem"),
        "--tls-key-file",
        &path("server.key"),
        "--tls-ca-cert-file",
        &path("ca.pem"),
        "--tls-auth-clients",
        "no",
    ])
    .unwrap();
    let mut settings =
        RedisSettings::new(SecretString::from(format!("rediss://127.0.0.1:{tls_port}")));
    settings.ca_pem = Some(std::fs::read(path("ca.pem")).unwrap());

    let limiter = RedisLimiter::connect(
        LimiterSettings::default(),
        settings,
        pool_with_keys(&[("k1", "p1")]).await,
    )
    .await
    .unwrap();

    exercise(&limiter).await;
}

/// Every integer among a `MONITOR` line's quoted arguments.
fn integer_arguments(line: &str) -> Vec<i64> {
    line.split('"')
        .skip(1)
        .step_by(2)
        .filter_map(|arg| arg.parse().ok())
        .collect()
}

#[tokio::test]
async fn callers_send_no_clock_reading_so_a_skewed_caller_cannot_move_a_window() {
    let server = LocalRedisServer::start(&[]).unwrap();
    let mut monitor = Command::new("redis-cli")
        .args(["-p", &server.port.to_string(), "monitor"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pool = pool_with_keys(&[("k1", "p1"), ("k2", "p2")]).await;
    let settings = RedisSettings::new(server.url().into());
    let limiter = RedisLimiter::connect(LimiterSettings::default(), settings, pool)
        .await
        .unwrap();
    // MONITOR answers OK once it listens; give it that moment before the calls start.
    tokio::time::sleep(Duration::from_millis(300)).await;

    exercise(&limiter).await;
    limiter
        .admit_submission(&TenantId::new("ten_clock"), 10)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    monitor.kill().unwrap();
    let output = monitor.wait_with_output().unwrap();
    let lines = String::from_utf8_lossy(&output.stdout).into_owned();

    let calls: Vec<&str> = lines
        .lines()
        .filter(|l| l.to_ascii_uppercase().contains("\"EVAL"))
        .collect();
    assert!(calls.len() >= 15, "the scripts were not seen: {lines}");
    let now_ms = Utc::now().timestamp_millis();
    let day_ms = 86_400_000;
    for call in calls {
        for n in integer_arguments(call) {
            // Milliseconds, seconds or microseconds since the epoch, give or take a day.
            for reading in [n, n.saturating_mul(1_000), n / 1_000] {
                assert!(
                    (reading - now_ms).abs() > day_ms,
                    "a script call carries a clock reading ({n}): {call}"
                );
            }
        }
    }
}
