//! Test harness for the AWS adapters: starts moto's server on a free port (once per test
//! binary), creates a private set of tables, queues, bucket and secrets per test, and counts
//! the AWS API calls the adapters make.
//!
//! moto runs under `infra/moto_server.py` (one request at a time, so each call is atomic as on
//! AWS) with the Python of `IMAGEGEN_MOTO_PYTHON`, else `$IMAGEGEN_VENV/bin/python`, else the
//! repo's `.venv`, else `python3`; `infra/venv.sh` installs moto. When it cannot be started the
//! tests fail, saying so: they never skip.
//!
//! Run with `make test-aws`, or `cargo test -p imagegen-aws-tests`.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use aws_config::{BehaviorVersion, SdkConfig};
use aws_sdk_dynamodb::config::interceptors::BeforeDeserializationInterceptorContextRef;
use aws_sdk_dynamodb::config::{ConfigBag, Credentials, Intercept, Region, RuntimeComponents};
use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, GlobalSecondaryIndex, KeySchemaElement, KeyType, Projection,
    ProjectionType, ScalarAttributeType, TimeToLiveSpecification,
};
use aws_sdk_sqs::types::QueueAttributeName;
use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::orchestrator::Metadata;
use imagegen::aws::{AwsClients, AwsSettings};
use imagegen::queue::sqs::QueueUrls;
use imagegen::store::dynamo::{DynamoTables, JOBS_BY_STATUS, JOBS_BY_TENANT, TENANTS_BY_KEY_HASH};

/// A running moto server. Its shell wrapper kills it when this process's end of the pipe
/// closes, so no server outlives the test binary.
pub struct Moto {
    pub endpoint: String,
    _child: Child,
    _stdin: Mutex<ChildStdin>,
}

static MOTO: OnceLock<Result<Moto, String>> = OnceLock::new();

/// The Python that has moto installed.
fn moto_python() -> PathBuf {
    if let Ok(path) = std::env::var("IMAGEGEN_MOTO_PYTHON") {
        return PathBuf::from(path);
    }
    let venvs = std::env::var("IMAGEGEN_VENV")
        .map(PathBuf::from)
        .into_iter()
        .chain([repo().join(".venv")]);
    for venv in venvs {
        let candidate = venv.join("bin/python");
        if candidate.exists() {
            return candidate;
        }
    }
    PathBuf::from("python3")
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn free_port() -> Result<u16, String> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| e.to_string())
}

fn start_moto() -> Result<Moto, String> {
    let python = moto_python();
    let script = repo().join("infra/moto_server.py");
    let port = free_port()?;
    let mut child = Command::new("sh")
        .arg("-c")
        // The watcher reads our pipe through fd 3: a background job's own stdin is /dev/null.
        .arg(concat!(
            r#"exec 3<&0; "$0" "$1" "$2" >/dev/null 2>&1 & pid=$!; "#,
            r#"(cat <&3 >/dev/null; kill $pid) & wait $pid"#
        ))
        .arg(&python)
        .arg(&script)
        .arg(port.to_string())
        .stdin(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run sh to start moto: {e}"))?;
    let stdin = child.stdin.take().ok_or("no pipe to moto's wrapper")?;

    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + Duration::from_secs(60);
    while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!(
                "moto ({} {}) exited at start ({status}); install it with infra/venv.sh and \
                 set IMAGEGEN_VENV (or IMAGEGEN_MOTO_PYTHON)",
                python.display(),
                script.display()
            ));
        }
        if Instant::now() > deadline {
            return Err(format!(
                "moto ({} {}) did not listen on {addr} within 60 s; install it with \
                 infra/venv.sh and set IMAGEGEN_VENV (or IMAGEGEN_MOTO_PYTHON)",
                python.display(),
                script.display()
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(Moto {
        endpoint: format!("http://{addr}"),
        _child: child,
        _stdin: Mutex::new(stdin),
    })
}

/// The shared moto server, started on first use.
///
/// # Panics
/// When moto cannot be started: these tests must not pass without it.
pub fn moto() -> &'static Moto {
    match MOTO.get_or_init(start_moto) {
        Ok(moto) => moto,
        Err(e) => panic!("moto's server is required for the AWS tests: {e}"),
    }
}

/// AWS API calls seen on the wire, by `Service.Operation`.
#[derive(Debug, Default, Clone)]
pub struct CallCounter {
    calls: Arc<Mutex<BTreeMap<String, u32>>>,
}

impl CallCounter {
    /// Every call so far, by operation.
    pub fn snapshot(&self) -> BTreeMap<String, u32> {
        self.calls.lock().map(|c| c.clone()).unwrap_or_default()
    }

    pub fn reset(&self) {
        if let Ok(mut calls) = self.calls.lock() {
            calls.clear();
        }
    }

    pub fn total(&self) -> u32 {
        self.snapshot().values().sum()
    }
}

impl Intercept for CallCounter {
    fn name(&self) -> &'static str {
        "CallCounter"
    }

    // After transmit: only requests that reached the service count (presigning sends none).
    fn read_after_transmit(
        &self,
        _context: &BeforeDeserializationInterceptorContextRef<'_>,
        _components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let name = cfg
            .load::<Metadata>()
            .map(|m| format!("{}.{}", m.service(), m.name()))
            .unwrap_or_else(|| "unknown".into());
        if let Ok(mut calls) = self.calls.lock() {
            *calls.entry(name).or_default() += 1;
        }
        Ok(())
    }
}

async fn sdk_config(endpoint: &str) -> SdkConfig {
    aws_config::defaults(BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("testing", "testing", None, None, "tests"))
        .load()
        .await
}

/// Clients pointed at moto, each reporting its calls to `counter`.
pub async fn clients(counter: &CallCounter) -> AwsClients {
    let sdk = sdk_config(&moto().endpoint).await;
    let dynamo = aws_sdk_dynamodb::config::Builder::from(&sdk)
        .interceptor(counter.clone())
        .build();
    let sqs = aws_sdk_sqs::config::Builder::from(&sdk)
        .interceptor(counter.clone())
        .build();
    let s3 = aws_sdk_s3::config::Builder::from(&sdk)
        .force_path_style(true)
        .interceptor(counter.clone())
        .build();
    let secrets = aws_sdk_secretsmanager::config::Builder::from(&sdk)
        .interceptor(counter.clone())
        .build();
    AwsClients {
        dynamo: aws_sdk_dynamodb::Client::from_conf(dynamo),
        sqs: aws_sdk_sqs::Client::from_conf(sqs),
        s3: aws_sdk_s3::Client::from_conf(s3),
        secrets: aws_sdk_secretsmanager::Client::from_conf(secrets),
        sdk,
    }
}

/// One test's private resources on moto.
pub struct Stack {
    pub clients: AwsClients,
    pub counter: CallCounter,
    pub settings: AwsSettings,
    /// The suffix every resource name carries.
    pub id: String,
}

fn attribute(name: &str, kind: ScalarAttributeType) -> AttributeDefinition {
    AttributeDefinition::builder()
        .attribute_name(name)
        .attribute_type(kind)
        .build()
        .unwrap_or_else(|e| panic!("{e}"))
}

fn key(name: &str, kind: KeyType) -> KeySchemaElement {
    KeySchemaElement::builder()
        .attribute_name(name)
        .key_type(kind)
        .build()
        .unwrap_or_else(|e| panic!("{e}"))
}

fn index(name: &str, keys: Vec<KeySchemaElement>) -> GlobalSecondaryIndex {
    GlobalSecondaryIndex::builder()
        .index_name(name)
        .set_key_schema(Some(keys))
        .projection(
            Projection::builder()
                .projection_type(ProjectionType::All)
                .build(),
        )
        .build()
        .unwrap_or_else(|e| panic!("{e}"))
}

/// A table as the SAM template declares it: on-demand, with TTL on `ttl` where it has one.
async fn create_table(
    client: &aws_sdk_dynamodb::Client,
    name: &str,
    attributes: Vec<AttributeDefinition>,
    keys: Vec<KeySchemaElement>,
    indexes: Vec<GlobalSecondaryIndex>,
    ttl: bool,
) {
    client
        .create_table()
        .table_name(name)
        .billing_mode(BillingMode::PayPerRequest)
        .set_attribute_definitions(Some(attributes))
        .set_key_schema(Some(keys))
        .set_global_secondary_indexes((!indexes.is_empty()).then_some(indexes))
        .send()
        .await
        .unwrap_or_else(|e| panic!("create table {name}: {e:?}"));
    if ttl {
        client
            .update_time_to_live()
            .table_name(name)
            .time_to_live_specification(
                TimeToLiveSpecification::builder()
                    .enabled(true)
                    .attribute_name("ttl")
                    .build()
                    .unwrap_or_else(|e| panic!("{e}")),
            )
            .send()
            .await
            .unwrap_or_else(|e| panic!("ttl on {name}: {e:?}"));
    }
}

async fn create_queue(client: &aws_sdk_sqs::Client, name: &str, max_receives: u32) -> String {
    let dlq = client
        .create_queue()
        .queue_name(format!("{name}-dlq"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("create dlq {name}: {e:?}"));
    let dlq_arn = client
        .get_queue_attributes()
        .queue_url(dlq.queue_url().unwrap_or_default())
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .unwrap_or_else(|e| panic!("dlq arn {name}: {e:?}"))
        .attributes
        .and_then(|mut a| a.remove(&QueueAttributeName::QueueArn))
        .unwrap_or_default();
    let policy = serde_json::json!({
        "deadLetterTargetArn": dlq_arn,
        "maxReceiveCount": max_receives.to_string(),
    });
    client
        .create_queue()
        .queue_name(name)
        .attributes(QueueAttributeName::RedrivePolicy, policy.to_string())
        .attributes(QueueAttributeName::VisibilityTimeout, "30")
        .send()
        .await
        .unwrap_or_else(|e| panic!("create queue {name}: {e:?}"))
        .queue_url
        .unwrap_or_default()
}

impl Stack {
    /// Create tables, queues (with dead-letter queues after `max_receives`), a bucket and the
    /// cursor-key and admin-token secrets, all named with a fresh suffix.
    pub async fn new(max_receives: u32) -> Stack {
        let counter = CallCounter::default();
        let clients = clients(&counter).await;
        let id = ulid::Ulid::new().to_string().to_ascii_lowercase();
        let name = |kind: &str| format!("ig-{kind}-{id}");
        let s = ScalarAttributeType::S;
        let n = ScalarAttributeType::N;
        let dynamo = &clients.dynamo;

        create_table(
            dynamo,
            &name("jobs"),
            vec![
                attribute("id", s.clone()),
                attribute("tenant_id", s.clone()),
                attribute("status", s.clone()),
                attribute("updated_ms", n.clone()),
            ],
            vec![key("id", KeyType::Hash)],
            vec![
                index(
                    JOBS_BY_TENANT,
                    vec![key("tenant_id", KeyType::Hash), key("id", KeyType::Range)],
                ),
                index(
                    JOBS_BY_STATUS,
                    vec![
                        key("status", KeyType::Hash),
                        key("updated_ms", KeyType::Range),
                    ],
                ),
            ],
            false,
        )
        .await;
        create_table(
            dynamo,
            &name("idempotency"),
            vec![attribute("pk", s.clone())],
            vec![key("pk", KeyType::Hash)],
            vec![],
            true,
        )
        .await;
        create_table(
            dynamo,
            &name("tenants"),
            vec![attribute("id", s.clone()), attribute("keyHash", s.clone())],
            vec![key("id", KeyType::Hash)],
            vec![index(
                TENANTS_BY_KEY_HASH,
                vec![key("keyHash", KeyType::Hash)],
            )],
            false,
        )
        .await;
        create_table(
            dynamo,
            &name("usage"),
            vec![attribute("pk", s.clone())],
            vec![key("pk", KeyType::Hash)],
            vec![],
            true,
        )
        .await;
        create_table(
            dynamo,
            &name("events"),
            vec![attribute("jobId", s.clone()), attribute("version", n)],
            vec![key("jobId", KeyType::Hash), key("version", KeyType::Range)],
            vec![],
            true,
        )
        .await;

        create_table(
            dynamo,
            &name("keys"),
            vec![attribute("id", s.clone())],
            vec![key("id", KeyType::Hash)],
            vec![],
            false,
        )
        .await;
        create_table(
            dynamo,
            &name("deliveries"),
            vec![attribute("jobId", s.clone()), attribute("sk", s.clone())],
            vec![key("jobId", KeyType::Hash), key("sk", KeyType::Range)],
            vec![],
            false,
        )
        .await;

        let generate = create_queue(&clients.sqs, &name("generate"), max_receives).await;
        let webhook = create_queue(&clients.sqs, &name("webhook"), max_receives).await;
        clients
            .s3
            .create_bucket()
            .bucket(name("images"))
            .send()
            .await
            .unwrap_or_else(|e| panic!("create bucket: {e:?}"));

        let prefix = format!("ig-{id}/");
        for (secret, value) in [
            ("cursor-key", "cursor-signing-key"),
            ("admin-token", "operator"),
        ] {
            clients
                .secrets
                .create_secret()
                .name(format!("{prefix}{secret}"))
                .secret_string(value)
                .send()
                .await
                .unwrap_or_else(|e| panic!("create secret {secret}: {e:?}"));
        }

        let vars = BTreeMap::from([
            ("IMAGEGEN_JOBS_TABLE", name("jobs")),
            ("IMAGEGEN_IDEMPOTENCY_TABLE", name("idempotency")),
            ("IMAGEGEN_TENANTS_TABLE", name("tenants")),
            ("IMAGEGEN_USAGE_TABLE", name("usage")),
            ("IMAGEGEN_EVENTS_TABLE", name("events")),
            ("IMAGEGEN_KEYS_TABLE", name("keys")),
            ("IMAGEGEN_DELIVERIES_TABLE", name("deliveries")),
            ("IMAGEGEN_GENERATE_QUEUE_URL", generate),
            ("IMAGEGEN_WEBHOOK_QUEUE_URL", webhook),
            ("IMAGEGEN_BUCKET", name("images")),
            ("IMAGEGEN_SECRETS_PREFIX", prefix),
            ("IMAGEGEN_ADMIN_TOKEN_SECRET", "admin-token".into()),
            ("IMAGEGEN_S3_PATH_STYLE", "true".into()),
            ("IMAGEGEN_ALLOW_LOOPBACK", "true".into()),
        ]);
        let settings = AwsSettings::from_lookup(|var| vars.get(var).cloned())
            .unwrap_or_else(|e| panic!("settings: {e}"));
        counter.reset();
        Stack {
            clients,
            counter,
            settings,
            id,
        }
    }

    pub fn tables(&self) -> DynamoTables {
        self.settings.tables.clone()
    }

    pub fn queues(&self) -> QueueUrls {
        self.settings.queues.clone()
    }
}
