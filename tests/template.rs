//! The SAM template against the code: every route the router serves reaches a function that
//! has the settings and IAM rights the route needs, every queue function can make the AWS calls
//! its code path makes, and the timeouts nest as the lease design needs.
//!
//! moto does not enforce IAM, so this is where a missing right shows before a deployment.
//! Run with `cargo test -p imagegen-tests --test template`.

use std::collections::{BTreeMap, BTreeSet};

use serde_yaml_ng::Value;

fn template() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../template.yaml");
    let text = std::fs::read_to_string(path).expect("template.yaml");
    serde_yaml_ng::from_str(&text).expect("template.yaml parses")
}

fn resources(t: &Value) -> &serde_yaml_ng::Mapping {
    t["Resources"].as_mapping().expect("Resources")
}

/// A CloudFormation value as a plain string: `!GetAtt X.Arn` and `!Ref X` become `X`,
/// `${X.Arn}` inside a `!Sub` becomes `X`, and a secret's ARN becomes `secret:{name}` (its
/// name without the stack's prefix).
fn plain(t: &Value, v: &Value) -> String {
    let text = match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Tagged(tagged) if tagged.tag == "GetAtt" => match &tagged.value {
            Value::String(s) => s.trim_end_matches(".Arn").to_owned(),
            Value::Sequence(parts) => plain(t, &parts[0]),
            other => panic!("GetAtt of {other:?}"),
        },
        Value::Tagged(tagged) if tagged.tag == "Ref" => {
            let name = tagged.value.as_str().expect("Ref of a name");
            let resource = &t["Resources"][name];
            if resource["Type"] == "AWS::SecretsManager::Secret" {
                return plain(t, &resource["Properties"]["Name"]);
            }
            name.to_owned()
        }
        Value::Tagged(tagged) if tagged.tag == "Sub" => {
            let mut out = tagged.value.as_str().expect("Sub of a string").to_owned();
            while let Some(start) = out.find("${") {
                let end = start + out[start..].find('}').expect("closed ${");
                let inner = out[start + 2..end].to_owned();
                let replaced = match inner.strip_suffix(".Arn") {
                    Some(resource) => resource.to_owned(),
                    None => format!("<{inner}>"),
                };
                out.replace_range(start..=end, &replaced);
            }
            out
        }
        other => panic!("cannot read {other:?}"),
    };
    match text.split_once("<AWS::StackName>/") {
        Some((_, name)) => format!("secret:{name}"),
        None => text,
    }
}

/// One function as the template makes it.
#[derive(Debug)]
struct Function {
    env: BTreeMap<String, String>,
    /// (action, resource pattern) pairs its policies allow.
    allowed: BTreeSet<(String, String)>,
    timeout: Option<u64>,
}

impl Function {
    fn allows(&self, action: &str, resource: &str) -> bool {
        self.allowed.iter().any(|(a, pattern)| {
            a == action
                && match pattern.strip_suffix('*') {
                    Some(prefix) => resource.starts_with(prefix),
                    None => resource == pattern,
                }
        })
    }
}

fn statements(t: &Value, policy: &Value) -> Vec<Value> {
    match policy {
        Value::Tagged(tagged) if tagged.tag == "Ref" => {
            let name = tagged.value.as_str().expect("policy name");
            let managed = &t["Resources"][name]["Properties"]["PolicyDocument"]["Statement"];
            managed.as_sequence().expect("managed statements").clone()
        }
        other => other["Statement"]
            .as_sequence()
            .expect("inline statements")
            .clone(),
    }
}

fn list(v: &Value) -> Vec<Value> {
    match v {
        Value::Sequence(items) => items.clone(),
        one => vec![one.clone()],
    }
}

fn functions(t: &Value) -> BTreeMap<String, Function> {
    let globals = &t["Globals"]["Function"];
    let mut out = BTreeMap::new();
    for (name, resource) in resources(t) {
        if resource["Type"] != "AWS::Serverless::Function" {
            continue;
        }
        let props = &resource["Properties"];
        let mut env = BTreeMap::new();
        for vars in [
            &globals["Environment"]["Variables"],
            &props["Environment"]["Variables"],
        ] {
            for (k, v) in vars.as_mapping().into_iter().flatten() {
                if let Value::Tagged(tagged) = v {
                    if tagged.tag == "If" {
                        continue;
                    }
                }
                env.insert(k.as_str().expect("name").to_owned(), plain(t, v));
            }
        }
        let mut allowed = BTreeSet::new();
        for policy in props["Policies"].as_sequence().into_iter().flatten() {
            for statement in statements(t, policy) {
                assert_eq!(statement["Effect"], "Allow");
                for action in list(&statement["Action"]) {
                    for resource in list(&statement["Resource"]) {
                        let action = action.as_str().expect("action").to_owned();
                        allowed.insert((action, plain(t, &resource)));
                    }
                }
            }
        }
        let timeout = match &props["Timeout"] {
            Value::Null => globals["Timeout"].as_u64(),
            Value::Number(n) => n.as_u64(),
            reference => Some(parameter(t, &plain(t, reference), "MaxValue")),
        };
        out.insert(
            name.as_str().expect("name").to_owned(),
            Function {
                env,
                allowed,
                timeout,
            },
        );
    }
    out
}

fn parameter(t: &Value, name: &str, field: &str) -> u64 {
    t["Parameters"][name][field]
        .as_u64()
        .unwrap_or_else(|| panic!("parameter {name} has no {field}"))
}

/// The HTTP API routes: (method, path, function).
fn api_routes(t: &Value) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for (name, resource) in resources(t) {
        for (_, event) in resource["Properties"]["Events"]
            .as_mapping()
            .into_iter()
            .flatten()
        {
            if event["Type"] != "HttpApi" {
                continue;
            }
            out.push((
                event["Properties"]["Method"]
                    .as_str()
                    .expect("method")
                    .to_ascii_uppercase(),
                event["Properties"]["Path"]
                    .as_str()
                    .expect("path")
                    .to_owned(),
                name.as_str().expect("name").to_owned(),
            ));
        }
    }
    out
}

/// The function API Gateway sends `method path` to: a full match first, then the longest
/// greedy (`{proxy+}`) match, a route for the method before `ANY`, and `$default` last.
fn route_for(routes: &[(String, String, String)], method: &str, path: &str) -> Option<String> {
    routes
        .iter()
        .filter_map(|(m, pattern, function)| {
            let method_rank = if m == method {
                1
            } else if m == "ANY" {
                0
            } else {
                return None;
            };
            let path_rank = if pattern == "$default" {
                (0, 0)
            } else if let Some(prefix) = pattern.strip_suffix("{proxy+}") {
                if !path.starts_with(prefix) || path.len() == prefix.len() {
                    return None;
                }
                (1, prefix.len())
            } else if pattern == path {
                (2, pattern.len())
            } else {
                return None;
            };
            Some(((path_rank, method_rank), function.clone()))
        })
        .max_by_key(|(rank, _)| *rank)
        .map(|(_, function)| function)
}

/// What a route or a queue function needs from its function.
#[derive(Debug, Clone, Copy)]
enum Need {
    Env(&'static str),
    Allow(&'static str, &'static str),
}

use Need::{Allow, Env};

const AUTH: &[Need] = &[Allow("dynamodb:Query", "TenantsTable/index/by_key_hash")];
const ADMIN: &[Need] = &[
    Env("IMAGEGEN_ADMIN_TOKEN_SECRET"),
    Allow("secretsmanager:GetSecretValue", "secret:admin-token"),
];
const CREATE_JOB: &[Need] = &[
    Allow("dynamodb:GetItem", "JobsTable"),
    Allow("dynamodb:PutItem", "JobsTable"),
    Allow("dynamodb:UpdateItem", "UsageTable"),
    Allow("dynamodb:PutItem", "EventsTable"),
    Allow("dynamodb:PutItem", "IdempotencyTable"),
    Allow("sqs:SendMessage", "GenerateQueue"),
];
const TENANT_WRITE: &[Need] = &[
    Allow("dynamodb:GetItem", "TenantsTable"),
    Allow("dynamodb:PutItem", "TenantsTable"),
];
const WEBHOOK_SECRET_WRITE: &[Need] = &[
    Allow("secretsmanager:GetSecretValue", "secret:webhook/ten_1/b"),
    Allow("secretsmanager:PutSecretValue", "secret:webhook/ten_1/a"),
    Allow("secretsmanager:CreateSecret", "secret:webhook/ten_1/a"),
];
const KEY_READ: &[Need] = &[
    Allow("dynamodb:GetItem", "ProviderKeysTable"),
    Allow("dynamodb:Scan", "ProviderKeysTable"),
];
const KEY_WRITE: &[Need] = &[
    Allow("dynamodb:GetItem", "ProviderKeysTable"),
    Allow("dynamodb:PutItem", "ProviderKeysTable"),
];
const KEY_SECRET_WRITE: &[Need] = &[
    Allow("secretsmanager:PutSecretValue", "secret:upstream-key/k1"),
    Allow("secretsmanager:CreateSecret", "secret:upstream-key/k1"),
];

/// Every route the router serves and what it needs.
fn route_needs() -> Vec<(&'static str, &'static str, Vec<&'static [Need]>)> {
    let cancel: &[Need] = &[
        Allow("dynamodb:GetItem", "JobsTable"),
        Allow("dynamodb:PutItem", "JobsTable"),
        Allow("dynamodb:UpdateItem", "UsageTable"),
        Allow("dynamodb:PutItem", "EventsTable"),
        Allow("dynamodb:PutItem", "DeliveriesTable"),
        Allow("sqs:SendMessage", "WebhookQueue"),
    ];
    let replay: &[Need] = &[
        Allow("dynamodb:Query", "DeliveriesTable"),
        Allow("dynamodb:PutItem", "DeliveriesTable"),
        Allow("sqs:SendMessage", "WebhookQueue"),
    ];
    let upload: &[Need] = &[Allow("s3:PutObject", "ImagesBucket/0.png")];
    let get_job: &[Need] = &[
        Allow("dynamodb:GetItem", "JobsTable"),
        Allow("s3:GetObject", "ImagesBucket/0.png"),
    ];
    let list_jobs: &[Need] = &[Allow("dynamodb:Query", "JobsTable/index/by_tenant")];
    let usage: &[Need] = &[Allow("dynamodb:GetItem", "UsageTable")];
    let deliveries: &[Need] = &[
        Allow("dynamodb:GetItem", "JobsTable"),
        Allow("dynamodb:Query", "DeliveriesTable"),
    ];
    let tenant_read: &[Need] = &[Allow("dynamodb:GetItem", "TenantsTable")];
    let key_delete: &[Need] = &[Allow("dynamodb:DeleteItem", "ProviderKeysTable")];
    let create_tenant: &[Need] = &[Allow("dynamodb:PutItem", "TenantsTable")];
    let checked_upload: &[Need] = &[Allow("s3:GetObject", "ImagesBucket/0.png")];

    vec![
        (
            "POST",
            "/v1/images:generate",
            vec![AUTH, CREATE_JOB, checked_upload],
        ),
        ("GET", "/v1/jobs", vec![AUTH, list_jobs]),
        ("GET", "/v1/jobs/{jobId}", vec![AUTH, get_job]),
        ("POST", "/v1/jobs/{jobId}:cancel", vec![AUTH, cancel]),
        ("POST", "/v1/jobs/{jobId}:finalize", vec![AUTH, CREATE_JOB]),
        ("POST", "/v1/uploads", vec![AUTH, upload]),
        ("GET", "/v1/usage", vec![AUTH, usage]),
        ("GET", "/v1/webhook", vec![AUTH]),
        (
            "PUT",
            "/v1/webhook",
            vec![AUTH, TENANT_WRITE, WEBHOOK_SECRET_WRITE],
        ),
        ("DELETE", "/v1/webhook", vec![AUTH, TENANT_WRITE]),
        (
            "POST",
            "/v1/webhook/secret:rotate",
            vec![AUTH, TENANT_WRITE, WEBHOOK_SECRET_WRITE],
        ),
        ("GET", "/v1/jobs/{jobId}/deliveries", vec![AUTH, deliveries]),
        (
            "POST",
            "/v1/webhooks/replay",
            vec![AUTH, tenant_read, replay],
        ),
        (
            "GET",
            "/v1/admin/tenants/{tenantId}/webhook",
            vec![ADMIN, tenant_read],
        ),
        (
            "PUT",
            "/v1/admin/tenants/{tenantId}/webhook",
            vec![ADMIN, TENANT_WRITE, WEBHOOK_SECRET_WRITE],
        ),
        (
            "DELETE",
            "/v1/admin/tenants/{tenantId}/webhook",
            vec![ADMIN, TENANT_WRITE],
        ),
        (
            "POST",
            "/v1/admin/tenants/{tenantId}/webhook/secret:rotate",
            vec![ADMIN, TENANT_WRITE, WEBHOOK_SECRET_WRITE],
        ),
        ("POST", "/v1/admin/tenants", vec![ADMIN, create_tenant]),
        ("GET", "/healthz", vec![]),
        ("GET", "/v1/admin/quota-groups", vec![ADMIN, KEY_READ]),
        (
            "PUT",
            "/v1/admin/quota-groups/{groupId}",
            vec![ADMIN, KEY_WRITE],
        ),
        (
            "DELETE",
            "/v1/admin/quota-groups/{groupId}",
            vec![ADMIN, KEY_READ, key_delete],
        ),
        ("GET", "/v1/admin/keys", vec![ADMIN, KEY_READ]),
        (
            "POST",
            "/v1/admin/keys",
            vec![ADMIN, KEY_WRITE, KEY_SECRET_WRITE],
        ),
        ("GET", "/v1/admin/keys/{keyId}", vec![ADMIN, KEY_READ]),
        (
            "PATCH",
            "/v1/admin/keys/{keyId}",
            vec![ADMIN, KEY_WRITE, KEY_SECRET_WRITE],
        ),
        ("DELETE", "/v1/admin/keys/{keyId}", vec![ADMIN, key_delete]),
        (
            "POST",
            "/v1/admin/keys/{keyId}:disable",
            vec![ADMIN, KEY_WRITE],
        ),
        (
            "POST",
            "/v1/admin/keys/{keyId}:enable",
            vec![ADMIN, KEY_WRITE],
        ),
    ]
}

/// A request path for `route`, its parameters filled in.
fn sample(route: &str) -> String {
    route
        .replace("{jobId}", "job_1")
        .replace("{tenantId}", "ten_1")
        .replace("{groupId}", "g1")
        .replace("{keyId}", "k1")
}

/// Every need `function` misses.
fn missing(function: &Function, needs: &[&[Need]]) -> Vec<String> {
    needs
        .iter()
        .flat_map(|group| group.iter())
        .filter(|need| match need {
            Env(name) => !function.env.contains_key(*name),
            Allow(action, resource) => !function.allows(action, resource),
        })
        .map(|need| format!("{need:?}"))
        .collect()
}

#[test]
fn the_route_table_covers_every_route_the_router_serves() {
    let served: BTreeSet<(&str, &str)> = imagegen::http::ROUTES.iter().copied().collect();
    let listed: BTreeSet<(&str, &str)> = route_needs().iter().map(|(m, p, _)| (*m, *p)).collect();

    assert_eq!(listed, served);
}

#[test]
fn every_route_reaches_a_function_with_the_settings_and_rights_it_needs() {
    let t = template();
    let functions = functions(&t);
    let routes = api_routes(&t);

    let mut wrong = Vec::new();
    for (method, route, needs) in route_needs() {
        let Some(name) = route_for(&routes, method, &sample(route)) else {
            wrong.push(format!("{method} {route}: no function"));
            continue;
        };
        let gaps = missing(&functions[&name], &needs);
        if !gaps.is_empty() {
            wrong.push(format!(
                "{method} {route} -> {name} lacks {}",
                gaps.join(", ")
            ));
        }
    }

    assert!(wrong.is_empty(), "\n{}", wrong.join("\n"));
}

#[test]
fn reads_go_to_the_poll_function_and_changes_to_the_submit_function() {
    let routes = api_routes(&template());

    assert_eq!(
        route_for(&routes, "GET", "/v1/admin/keys").as_deref(),
        Some("PollFunction")
    );
    assert_eq!(
        route_for(&routes, "HEAD", "/v1/jobs").as_deref(),
        Some("PollFunction")
    );
    assert_eq!(
        route_for(&routes, "PATCH", "/v1/admin/keys/k1").as_deref(),
        Some("SubmitFunction")
    );
    assert_eq!(
        route_for(&routes, "DELETE", "/v1/webhook").as_deref(),
        Some("SubmitFunction")
    );
    assert_eq!(
        route_for(&routes, "DELETE", "/unknown").as_deref(),
        Some("PollFunction")
    );
}

#[test]
fn queue_functions_can_make_every_call_their_code_path_makes() {
    let functions = functions(&template());
    let generate: &[Need] = &[
        Env("IMAGEGEN_GENERATE_FUNCTION_TIMEOUT_SECONDS"),
        Env("IMAGEGEN_PROVIDER"),
        Allow("secretsmanager:GetSecretValue", "secret:cursor-key"),
        Allow("secretsmanager:GetSecretValue", "secret:upstream-key/k1"),
        Allow("dynamodb:GetItem", "JobsTable"),
        Allow("dynamodb:PutItem", "JobsTable"),
        Allow("dynamodb:UpdateItem", "UsageTable"),
        Allow("dynamodb:PutItem", "EventsTable"),
        Allow("dynamodb:GetItem", "TenantsTable"),
        Allow("dynamodb:Scan", "ProviderKeysTable"),
        Allow("dynamodb:PutItem", "DeliveriesTable"),
        Allow("s3:GetObject", "ImagesBucket/0.png"),
        Allow("s3:PutObject", "ImagesBucket/0.png"),
        Allow("sqs:SendMessage", "GenerateQueue"),
        Allow("sqs:SendMessage", "WebhookQueue"),
    ];
    let webhook: &[Need] = &[
        Env("IMAGEGEN_WEBHOOK_DLQ_URL"),
        Env("IMAGEGEN_WEBHOOK_FUNCTION_TIMEOUT_SECONDS"),
        Allow("secretsmanager:GetSecretValue", "secret:cursor-key"),
        Allow("secretsmanager:GetSecretValue", "secret:webhook/ten_1/a"),
        Allow("dynamodb:GetItem", "TenantsTable"),
        Allow("dynamodb:PutItem", "TenantsTable"),
        Allow("dynamodb:Query", "DeliveriesTable"),
        Allow("dynamodb:PutItem", "DeliveriesTable"),
        Allow("sqs:SendMessage", "WebhookQueue"),
        Allow("sqs:SendMessage", "WebhookDeadLetterQueue"),
    ];
    let reconcile: &[Need] = &[
        Allow("secretsmanager:GetSecretValue", "secret:cursor-key"),
        Allow("dynamodb:Query", "JobsTable/index/by_status"),
        Allow("sqs:SendMessage", "GenerateQueue"),
    ];

    for (name, needs) in [
        ("GenerateFunction", generate),
        ("WebhookFunction", webhook),
        ("ReconcileFunction", reconcile),
    ] {
        let gaps = missing(&functions[name], &[needs]);
        assert!(gaps.is_empty(), "{name} lacks {}", gaps.join(", "));
    }
    assert_eq!(
        functions["WebhookFunction"].env["IMAGEGEN_WEBHOOK_DLQ_URL"],
        "WebhookDeadLetterQueue"
    );
}

#[test]
fn timeouts_nest_inside_each_other_for_every_accepted_parameter() {
    let t = template();
    let functions = functions(&t);
    let fetch = imagegen::fetch::FetchLimits::default().timeout.as_secs();
    let webhook_attempt = 15;

    let provider_max = parameter(&t, "ProviderTimeoutSeconds", "MaxValue");
    let lease_min = parameter(&t, "LeaseSeconds", "MinValue");
    let lease_max = parameter(&t, "LeaseSeconds", "MaxValue");
    let generate_min = parameter(&t, "GenerateTimeoutSeconds", "MinValue");
    let generate_max = parameter(&t, "GenerateTimeoutSeconds", "MaxValue");
    let generate_visibility = t["Resources"]["GenerateQueue"]["Properties"]["VisibilityTimeout"]
        .as_u64()
        .expect("visibility");
    let webhook = functions["WebhookFunction"]
        .timeout
        .expect("webhook timeout");
    let webhook_visibility = t["Resources"]["WebhookQueue"]["Properties"]["VisibilityTimeout"]
        .as_u64()
        .expect("visibility");

    assert!(
        fetch + provider_max < lease_min,
        "fetch + provider must end inside the lease"
    );
    assert!(
        lease_max < generate_min,
        "the lease must end inside the generate timeout"
    );
    assert!(generate_visibility >= 6 * generate_max);
    assert!(
        webhook >= webhook_attempt + 5,
        "a webhook attempt must fit the function"
    );
    assert!(webhook_visibility >= 6 * webhook);
    assert_eq!(
        functions["WebhookFunction"].env["IMAGEGEN_WEBHOOK_FUNCTION_TIMEOUT_SECONDS"],
        webhook.to_string()
    );
    assert_eq!(
        functions["GenerateFunction"].env["IMAGEGEN_GENERATE_FUNCTION_TIMEOUT_SECONDS"],
        "GenerateTimeoutSeconds"
    );
}

#[test]
fn the_delivery_log_table_expires_items_by_their_ttl_attribute() {
    let t = template();
    let ttl = &t["Resources"]["DeliveriesTable"]["Properties"]["TimeToLiveSpecification"];

    assert_eq!(ttl["AttributeName"], "ttl");
    assert_eq!(ttl["Enabled"], true);
}
