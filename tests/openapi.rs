//! Keeps `docs/openapi.yaml` true: it documents exactly the routes the API serves, and every
//! response the API gives in a walk through the operations has a documented status and a body
//! that matches the documented schema.

use std::collections::BTreeSet;

use imagegen_tests::TestApp;
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

#[tokio::test]
async fn every_listed_route_is_really_served() {
    let app = TestApp::spawn().await;
    let tenant = app.tenant().await;
    let (_, job) = app
        .submit(&tenant, json!({ "prompt": "route check" }))
        .await;
    let job_id = job["jobId"].as_str().expect("id");

    for (method, path) in imagegen::http::ROUTES {
        let url = app.url(&path.replace("{jobId}", job_id));
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let response = app
            .http
            .request(method.clone(), &url)
            .bearer_auth(&tenant.key)
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
    use reqwest::Method;

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
