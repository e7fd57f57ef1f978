//! Keeps `docs/openapi.yaml` true: it documents exactly the routes in `imagegen::http::ROUTES`,
//! that list names every route registered in `shared/src/http/*.rs` (read off the source, since
//! an axum router cannot be enumerated), and every response the API gives in a walk through the
//! operations, tenant and admin, has a documented status and a body that matches its schema.
//!
//! Run with `cargo test -p imagegen-tests --test openapi`.

use std::collections::BTreeSet;

use imagegen_tests::TestApp;
use reqwest::Method;
use secrecy::ExposeSecret;
use serde_json::{json, Value};

fn spec() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/openapi.yaml");
    let text = std::fs::read_to_string(path).expect("docs/openapi.yaml");
    serde_yaml_ng::from_str(&text).expect("valid YAML")
}

fn resolve<'a>(spec: &'a Value, node: &'a Value) -> &'a Value {
    match node.get("$ref").and_then(Value::as_str) {
        Some(reference) => {
            let pointer = reference.trim_start_matches('#');
            resolve(spec, spec.pointer(pointer).expect("$ref resolves"))
        }
        None => node,
    }
}

/// Check `value` against a schema; returns the first mismatch.
fn check(spec: &Value, schema: &Value, value: &Value, at: &str) -> Result<(), String> {
    let schema = resolve(spec, schema);
    if value.is_null() {
        return if schema["nullable"] == true {
            Ok(())
        } else {
            Err(format!("{at}: null where the schema does not allow it"))
        };
    }
    if let Some(all) = schema["allOf"].as_array() {
        for part in all {
            check(spec, part, value, at)?;
        }
    }
    if let Some(choices) = schema["enum"].as_array() {
        if !choices.contains(value) {
            return Err(format!("{at}: {value} is not one of {choices:?}"));
        }
    }
    let ok = match schema["type"].as_str() {
        Some("object") => value.is_object(),
        Some("array") => value.is_array(),
        Some("string") => value.is_string(),
        Some("integer") => value.is_i64() || value.is_u64(),
        Some("number") => value.is_number(),
        Some("boolean") => value.is_boolean(),
        _ => true,
    };
    if !ok {
        return Err(format!("{at}: {value} is not of type {}", schema["type"]));
    }
    if let Some(required) = schema["required"].as_array() {
        for name in required.iter().filter_map(Value::as_str) {
            if value.get(name).is_none() {
                return Err(format!("{at}: required property {name} missing"));
            }
        }
    }
    if let (Some(properties), Some(object)) = (schema["properties"].as_object(), value.as_object())
    {
        for (name, field) in object {
            match properties.get(name) {
                Some(sub) => check(spec, sub, field, &format!("{at}.{name}"))?,
                None => return Err(format!("{at}: property {name} is not documented")),
            }
        }
    }
    if let (Some(items), Some(array)) = (schema.get("items"), value.as_array()) {
        for (i, item) in array.iter().enumerate() {
            check(spec, items, item, &format!("{at}[{i}]"))?;
        }
    }
    Ok(())
}

/// Assert a response is documented for `method path` with this status, and matches the schema.
fn assert_documented(spec: &Value, method: &str, path: &str, status: u16, body: &Value) {
    let operation = &spec["paths"][path][method.to_ascii_lowercase()];
    assert!(operation.is_object(), "{method} {path} is not documented");
    let response = operation["responses"]
        .get(status.to_string())
        .unwrap_or_else(|| panic!("{method} {path} answered undocumented {status}: {body}"));
    let response = resolve(spec, response);
    if response.get("content").is_none() {
        assert!(
            body.is_null(),
            "{method} {path} {status} is documented without a body but sent {body}"
        );
        return;
    }
    let schema = &response["content"]["application/json"]["schema"];
    check(spec, schema, body, &format!("{method} {path} {status}"))
        .unwrap_or_else(|e| panic!("{e}\nbody: {body}"));
}

#[test]
fn the_document_lists_exactly_the_routes_the_api_serves() {
    let spec = spec();
    let mut documented = BTreeSet::new();
    for (path, item) in spec["paths"].as_object().expect("paths") {
        for method in item.as_object().expect("path item").keys() {
            documented.insert((method.to_ascii_uppercase(), path.clone()));
        }
    }
    let served: BTreeSet<(String, String)> = imagegen::http::ROUTES
        .iter()
        .map(|(m, p)| ((*m).to_owned(), (*p).to_owned()))
        .collect();

    assert_eq!(documented, served);
}

/// The source of the HTTP module, file by file, so the routes it registers can be read off.
fn http_sources() -> Vec<(String, String)> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/src/http");
    let mut sources: Vec<(String, String)> = std::fs::read_dir(dir)
        .expect("shared/src/http")
        .map(|entry| entry.expect("dir entry").path())
        .filter(|path| path.extension().is_some_and(|e| e == "rs"))
        .map(|path| {
            let text = std::fs::read_to_string(&path).expect("source file");
            (path.display().to_string(), text)
        })
        .collect();
    sources.sort();
    sources
}

/// The text between the parenthesis at `open` and its match, skipping string literals.
fn parenthesised(text: &str, open: usize) -> &str {
    let mut depth = 0;
    let mut in_string = false;
    let mut escaped = false;
    for (i, c) in text[open..].char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if in_string => escaped = true,
            '"' => in_string = !in_string,
            '(' if !in_string => depth += 1,
            ')' if !in_string => {
                depth -= 1;
                if depth == 0 {
                    return &text[open + 1..open + i];
                }
            }
            _ => {}
        }
    }
    panic!("unbalanced parentheses after byte {open}");
}

/// The method routers chained at the top level of `get(a).post(b)`: `["get", "post"]`.
fn chained_methods(chain: &str) -> Vec<String> {
    let mut methods = Vec::new();
    let mut rest = chain.trim();
    loop {
        let name_end = rest.find('(').expect("a method router call");
        methods.push(rest[..name_end].trim().trim_start_matches('.').to_owned());
        let args = parenthesised(rest, name_end);
        rest = rest[name_end + args.len() + 2..].trim();
        if rest.is_empty() {
            return methods;
        }
        assert!(rest.starts_with('.'), "unexpected router text: {rest}");
    }
}

/// Every `.route("<path>", <method routers>)` call in the HTTP module.
fn registered_routes() -> Vec<(String, Vec<String>)> {
    let mut routes = Vec::new();
    for (file, text) in http_sources() {
        for unseen in [".nest(", ".route_service(", ".nest_service("] {
            assert!(
                !text.contains(unseen),
                "{file} uses {unseen}, which this test cannot read: teach it, or use .route"
            );
        }
        for (at, _) in text.match_indices(".route(") {
            let line_start = text[..at].rfind('\n').map_or(0, |i| i + 1);
            if text[line_start..at].trim_start().starts_with("//") {
                continue;
            }
            let call = parenthesised(&text, at + ".route".len());
            let (path, chain) = call.split_once(',').expect("route(path, methods)");
            let path = path.trim().trim_matches('"').to_owned();
            let methods = chained_methods(chain.trim().trim_end_matches(','))
                .into_iter()
                .map(|m| m.to_ascii_uppercase())
                .collect();
            routes.push((path, methods));
        }
    }
    routes
}

/// A path with its parameters unnamed and an action after a parameter (`{jobId}:cancel`)
/// dropped: the shape the router matches, one route taking every action of its segment.
fn router_shape(path: &str) -> String {
    let mut shape = String::new();
    for (i, segment) in path.split('/').enumerate() {
        if i > 0 {
            shape.push('/');
        }
        if segment.starts_with('{') {
            shape.push_str("{}");
        } else {
            shape.push_str(segment);
        }
    }
    shape
}

#[test]
fn every_route_the_router_registers_is_listed_with_its_methods() {
    let registered = registered_routes();
    let listed: BTreeSet<(String, String)> = imagegen::http::ROUTES
        .iter()
        .map(|(m, p)| ((*m).to_owned(), router_shape(p)))
        .collect();
    assert!(
        registered.len() >= 10,
        "found only {} .route calls; is the parser still reading the files?",
        registered.len()
    );

    let mut missing = Vec::new();
    for (path, methods) in &registered {
        let shape = router_shape(path);
        for method in methods {
            let is_listed = if method == "ANY" {
                listed.iter().any(|(_, p)| *p == shape)
            } else {
                listed.contains(&(method.clone(), shape.clone()))
            };
            if !is_listed {
                missing.push(format!("{method} {path}"));
            }
        }
    }
    let mut unregistered = Vec::new();
    for (method, shape) in &listed {
        let is_registered = registered.iter().any(|(path, methods)| {
            router_shape(path) == *shape && methods.iter().any(|m| m == method || m == "ANY")
        });
        if !is_registered {
            unregistered.push(format!("{method} {shape}"));
        }
    }

    assert!(
        missing.is_empty(),
        "registered but not in imagegen::http::ROUTES (and so not documented): {missing:?}"
    );
    assert!(
        unregistered.is_empty(),
        "in imagegen::http::ROUTES but registered by no .route call: {unregistered:?}"
    );
}

#[test]
fn the_route_reader_sees_multi_line_calls_and_every_chained_method() {
    let routes = registered_routes();

    let key = routes
        .iter()
        .find(|(path, _)| path == "/v1/admin/keys/{key}")
        .expect("the key route");

    assert_eq!(key.1, ["GET", "PATCH", "DELETE", "POST"]);
}

#[tokio::test]
async fn every_listed_route_is_really_served() {
    let app = TestApp::spawn().await;
    let tenant = app.tenant().await;
    let (_, job) = app
        .submit(&tenant, json!({ "prompt": "route check" }))
        .await;
    let job_id = job["jobId"].as_str().expect("id");
    let admin = app.admin.expose_secret();
    let pool = [
        (Method::PUT, "/v1/admin/quota-groups/routes", json!({})),
        (
            Method::POST,
            "/v1/admin/keys",
            json!({ "id": "routes-key", "group": "routes", "secret": "s" }),
        ),
    ];
    for (method, path, body) in pool {
        let response = app
            .http
            .request(method, app.url(path))
            .bearer_auth(admin)
            .json(&body)
            .send()
            .await
            .expect("pool setup");
        assert!(
            response.status().is_success(),
            "{path}: {}",
            response.status()
        );
    }
    // Deleting comes last, so every route still finds the resources it names: a missing one
    // answers NOT_FOUND, which would read as a route that is not served.
    let mut routes = imagegen::http::ROUTES.to_vec();
    routes.sort_by_key(|(method, _)| *method == "DELETE");

    for (method, path) in routes {
        let url = app.url(
            &path
                .replace("{jobId}", job_id)
                .replace("{tenantId}", &tenant.id)
                .replace("{groupId}", "routes")
                .replace("{keyId}", "routes-key"),
        );
        let token = if path.starts_with("/v1/admin/") {
            admin
        } else {
            tenant.key.as_str()
        };
        let method = Method::from_bytes(method.as_bytes()).expect("method");
        let response = app
            .http
            .request(method.clone(), &url)
            .bearer_auth(token)
            .json(&json!({}))
            .send()
            .await
            .expect("request");
        let body: Value = response.json().await.unwrap_or(Value::Null);
        let code = body["error"]["code"].as_str().unwrap_or_default();
        let unrouted = code == "NOT_FOUND" || code == "METHOD_NOT_ALLOWED";
        assert!(
            !unrouted,
            "{method} {path} is listed but not served: {body}"
        );
    }
}

#[tokio::test]
async fn responses_across_the_operations_match_the_document() {
    let spec = spec();
    let app = TestApp::spawn().await;
    let plan = json!({ "requestsPerMinute": 100, "dailyCap": 3, "maxConcurrency": 2 });
    let tenant = app.tenant_with(Some(plan)).await;
    let send = |method: reqwest::Method, path: &str, body: Option<Value>| {
        let mut request = app
            .http
            .request(method, app.url(path))
            .bearer_auth(&tenant.key);
        if let Some(body) = body {
            request = request.json(&body);
        }
        async move {
            let response = request.send().await.expect("request");
            let status = response.status().as_u16();
            (
                status,
                response.json::<Value>().await.unwrap_or(Value::Null),
            )
        }
    };

    let (status, body) = send(Method::GET, "/healthz", None).await;
    assert_documented(&spec, "GET", "/healthz", status, &body);

    let created = app
        .http
        .post(app.url("/v1/admin/tenants"))
        .bearer_auth("test-admin-token")
        .json(&json!({ "name": "documented" }))
        .send()
        .await
        .expect("create");
    let status = created.status().as_u16();
    let body: Value = created.json().await.expect("json");
    assert_documented(&spec, "POST", "/v1/admin/tenants", status, &body);

    let (status, body) = send(
        Method::POST,
        "/v1/images:generate",
        Some(json!({ "prompt": "doc" })),
    )
    .await;
    assert_documented(&spec, "POST", "/v1/images:generate", status, &body);
    let job_id = body["jobId"].as_str().expect("id").to_owned();
    let done = app
        .wait_terminal(&tenant, &job_id, std::time::Duration::from_secs(30))
        .await;
    assert_documented(&spec, "GET", "/v1/jobs/{jobId}", 200, &done);

    let (status, body) = send(
        Method::POST,
        "/v1/images:generate",
        Some(json!({ "prompt": "" })),
    )
    .await;
    assert_documented(&spec, "POST", "/v1/images:generate", status, &body);

    let (status, body) = send(Method::GET, "/v1/jobs?limit=1", None).await;
    assert_documented(&spec, "GET", "/v1/jobs", status, &body);
    let (status, body) = send(Method::GET, "/v1/jobs?limit=0", None).await;
    assert_documented(&spec, "GET", "/v1/jobs", status, &body);

    let (status, body) = send(Method::GET, "/v1/jobs/job_01J0000000000000000000000A", None).await;
    assert_documented(&spec, "GET", "/v1/jobs/{jobId}", status, &body);

    let (status, body) = send(Method::POST, &format!("/v1/jobs/{job_id}:cancel"), None).await;
    assert_documented(&spec, "POST", "/v1/jobs/{jobId}:cancel", status, &body);

    let (status, body) = send(Method::GET, "/v1/usage", None).await;
    assert_documented(&spec, "GET", "/v1/usage", status, &body);

    let hook = json!({ "url": "http://127.0.0.1:9/hook" });
    let (status, body) = send(Method::PUT, "/v1/webhook", Some(hook)).await;
    assert_documented(&spec, "PUT", "/v1/webhook", status, &body);

    for n in 0..3 {
        let (status, body) = send(
            Method::POST,
            "/v1/images:generate",
            Some(json!({ "prompt": format!("{n}") })),
        )
        .await;
        assert_documented(&spec, "POST", "/v1/images:generate", status, &body);
    }

    let unauthenticated = app
        .http
        .get(app.url("/v1/usage"))
        .send()
        .await
        .expect("get");
    let status = unauthenticated.status().as_u16();
    let body: Value = unauthenticated.json().await.expect("json");
    assert_documented(&spec, "GET", "/v1/usage", status, &body);
}

#[tokio::test]
async fn admin_key_pool_responses_match_the_document() {
    let spec = spec();
    let app = TestApp::spawn().await;
    let tenant = app.tenant().await;
    let call = |method: Method, path: &str, token: &str, body: Option<Value>| {
        let mut request = app.http.request(method, app.url(path)).bearer_auth(token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        async move {
            let response = request.send().await.expect("request");
            let status = response.status().as_u16();
            let body = response.json::<Value>().await.unwrap_or(Value::Null);
            (status, body)
        }
    };
    let admin = app.admin.expose_secret();
    let key = json!({ "id": "gem-1", "group": "project-a", "secret": "s3cret", "label": "docs" });
    // (method, documented path, request path, body, expected status)
    let walk = [
        (
            Method::PUT,
            "/v1/admin/quota-groups/{groupId}",
            "/v1/admin/quota-groups/project-a",
            Some(json!({ "requestsPerMinute": 60, "concurrency": 2 })),
            200,
        ),
        (
            Method::PUT,
            "/v1/admin/quota-groups/{groupId}",
            "/v1/admin/quota-groups/zero",
            Some(json!({ "requestsPerMinute": 0 })),
            400,
        ),
        (
            Method::GET,
            "/v1/admin/quota-groups",
            "/v1/admin/quota-groups",
            None,
            200,
        ),
        (
            Method::POST,
            "/v1/admin/keys",
            "/v1/admin/keys",
            Some(key.clone()),
            201,
        ),
        (
            Method::POST,
            "/v1/admin/keys",
            "/v1/admin/keys",
            Some(key),
            409,
        ),
        (
            Method::POST,
            "/v1/admin/keys",
            "/v1/admin/keys",
            Some(json!({ "group": "nowhere", "secret": "s3cret" })),
            400,
        ),
        (Method::GET, "/v1/admin/keys", "/v1/admin/keys", None, 200),
        (
            Method::GET,
            "/v1/admin/keys/{keyId}",
            "/v1/admin/keys/gem-1",
            None,
            200,
        ),
        (
            Method::GET,
            "/v1/admin/keys/{keyId}",
            "/v1/admin/keys/nope",
            None,
            404,
        ),
        (
            Method::PATCH,
            "/v1/admin/keys/{keyId}",
            "/v1/admin/keys/gem-1",
            Some(json!({ "label": null, "concurrency": 3, "requestsPerMinute": null })),
            200,
        ),
        (
            Method::PATCH,
            "/v1/admin/keys/{keyId}",
            "/v1/admin/keys/gem-1",
            Some(json!({ "group": "elsewhere" })),
            400,
        ),
        (
            Method::POST,
            "/v1/admin/keys/{keyId}:disable",
            "/v1/admin/keys/gem-1:disable",
            None,
            200,
        ),
        (
            Method::POST,
            "/v1/admin/keys/{keyId}:enable",
            "/v1/admin/keys/gem-1:enable",
            None,
            200,
        ),
        (
            Method::DELETE,
            "/v1/admin/quota-groups/{groupId}",
            "/v1/admin/quota-groups/project-a",
            None,
            409,
        ),
        (
            Method::DELETE,
            "/v1/admin/keys/{keyId}",
            "/v1/admin/keys/gem-1",
            None,
            204,
        ),
        (
            Method::DELETE,
            "/v1/admin/keys/{keyId}",
            "/v1/admin/keys/gem-1",
            None,
            404,
        ),
        (
            Method::DELETE,
            "/v1/admin/quota-groups/{groupId}",
            "/v1/admin/quota-groups/project-a",
            None,
            204,
        ),
    ];

    for (method, documented, path, body, expected) in walk {
        let (status, body) = call(method.clone(), path, admin, body).await;

        assert_eq!(status, expected, "{method} {path}: {body}");
        assert_documented(&spec, method.as_str(), documented, status, &body);
    }
    let (status, body) = call(Method::GET, "/v1/admin/keys", &tenant.key, None).await;
    assert_eq!(
        status, 401,
        "a tenant key must not reach the key pool: {body}"
    );
    assert_documented(&spec, "GET", "/v1/admin/keys", status, &body);
}
