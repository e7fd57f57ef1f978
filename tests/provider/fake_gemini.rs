//! A stand-in for the Gemini `generateContent` endpoint on a free loopback port. It speaks the
//! documented wire format: answers are scripted per test, and every request is recorded.

#![allow(dead_code)]

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde_json::{json, Value};
use tokio::net::TcpListener;

/// One scripted answer.
#[derive(Clone, Debug)]
pub enum Reply {
    Json {
        status: u16,
        body: Value,
        headers: Vec<(&'static str, String)>,
    },
    /// Wait this long before answering.
    Slow(Duration, Box<Reply>),
    /// Send the status and the first `keep` bytes of the body, then drop the connection.
    Truncated { body: Value, keep: usize },
}

impl Reply {
    pub fn ok(body: Value) -> Self {
        Self::Json {
            status: 200,
            body,
            headers: Vec::new(),
        }
    }

    pub fn status(status: u16, body: Value) -> Self {
        Self::Json {
            status,
            body,
            headers: Vec::new(),
        }
    }
}

/// One request the fake received.
#[derive(Clone, Debug)]
pub struct Call {
    pub model_action: String,
    pub api_key: Option<String>,
    pub body: Value,
}

#[derive(Default)]
struct Script {
    replies: VecDeque<Reply>,
    /// Answer used once the script runs out.
    fallback: Option<Reply>,
    calls: Vec<Call>,
}

/// The running fake.
#[derive(Clone)]
pub struct FakeGemini {
    pub base_url: String,
    script: Arc<Mutex<Script>>,
}

impl FakeGemini {
    pub async fn start() -> Self {
        let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .expect("bind fake gemini");
        let base_url = format!("http://{}", listener.local_addr().expect("addr"));
        let script = Arc::new(Mutex::new(Script::default()));
        let app = Router::new()
            .route("/v1beta/models/{action}", post(answer))
            .with_state(script.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { base_url, script }
    }

    /// Queue answers, used in order.
    pub fn then(&self, reply: Reply) -> &Self {
        self.script.lock().expect("lock").replies.push_back(reply);
        self
    }

    /// The answer for every request once the queue is empty.
    pub fn always(&self, reply: Reply) {
        self.script.lock().expect("lock").fallback = Some(reply);
    }

    pub fn calls(&self) -> Vec<Call> {
        self.script.lock().expect("lock").calls.clone()
    }
}

async fn answer(
    State(script): State<Arc<Mutex<Script>>>,
    Path(action): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let reply = {
        let mut script = script.lock().expect("lock");
        script.calls.push(Call {
            model_action: action,
            api_key: headers
                .get("x-goog-api-key")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
            body: serde_json::from_slice(&body).unwrap_or(Value::Null),
        });
        script
            .replies
            .pop_front()
            .or_else(|| script.fallback.clone())
    };
    match reply {
        Some(reply) => respond(reply).await,
        None => (StatusCode::INTERNAL_SERVER_ERROR, "no scripted answer").into_response(),
    }
}

async fn respond(reply: Reply) -> Response {
    let mut reply = reply;
    while let Reply::Slow(wait, inner) = reply {
        tokio::time::sleep(wait).await;
        reply = *inner;
    }
    match reply {
        Reply::Json {
            status,
            body,
            headers,
        } => {
            let mut response = (
                StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                axum::Json(body),
            )
                .into_response();
            for (name, value) in headers {
                response
                    .headers_mut()
                    .insert(name, value.parse().expect("header value"));
            }
            response
        }
        Reply::Truncated { body, keep } => {
            let text = body.to_string();
            let head = text.as_bytes()[..keep.min(text.len())].to_vec();
            // A body stream that fails after its first chunk: the server drops the connection
            // before the message is complete, as a cut-off upstream answer does.
            let chunks: Vec<Result<Vec<u8>, std::io::Error>> = vec![
                Ok(head),
                Err(std::io::Error::new(
                    std::io::ErrorKind::ConnectionReset,
                    "cut",
                )),
            ];
            let stream = futures_util::stream::iter(chunks);
            Response::builder()
                .status(200)
                .header("content-type", "application/json")
                .body(Body::from_stream(stream))
                .expect("response")
        }
        Reply::Slow(..) => unreachable!("unwrapped above"),
    }
}

/// A small real PNG.
pub fn png() -> Vec<u8> {
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, 2, 2);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header().expect("png header");
    writer.write_image_data(&[200; 12]).expect("png data");
    writer.finish().expect("png end");
    out
}

pub fn b64(bytes: &[u8]) -> String {
    STANDARD.encode(bytes)
}

/// Usage figures as the API reports them.
pub fn usage() -> Value {
    json!({
        "promptTokenCount": 12,
        "candidatesTokenCount": 1290,
        "totalTokenCount": 1302,
        "promptTokensDetails": [{ "modality": "TEXT", "tokenCount": 12 }],
        "candidatesTokensDetails": [{ "modality": "IMAGE", "tokenCount": 1290 }]
    })
}

/// A successful answer with the given parts.
pub fn answer_with(parts: Vec<Value>) -> Value {
    json!({
        "candidates": [{
            "content": { "role": "model", "parts": parts },
            "finishReason": "STOP",
            "index": 0
        }],
        "usageMetadata": usage(),
        "modelVersion": "gemini-2.5-flash-image",
        "responseId": "resp-1"
    })
}

pub fn image_part(bytes: &[u8]) -> Value {
    json!({ "inlineData": { "mimeType": "image/png", "data": b64(bytes) } })
}

/// An answer whose only candidate stopped for `reason` without an image.
pub fn finished_without_image(reason: &str) -> Value {
    json!({
        "candidates": [{
            "content": { "role": "model", "parts": [] },
            "finishReason": reason,
            "index": 0
        }],
        "usageMetadata": { "promptTokenCount": 12, "totalTokenCount": 12 },
        "modelVersion": "gemini-2.5-flash-image"
    })
}

/// An answer where the prompt itself was blocked.
pub fn prompt_blocked(reason: &str) -> Value {
    json!({
        "promptFeedback": {
            "blockReason": reason,
            "safetyRatings": [
                { "category": "HARM_CATEGORY_DANGEROUS_CONTENT", "probability": "HIGH" }
            ]
        },
        "usageMetadata": { "promptTokenCount": 12, "totalTokenCount": 12 },
        "modelVersion": "gemini-2.5-flash-image"
    })
}

/// The documented error body.
pub fn error_body(code: u16, status: &str, message: &str, details: Vec<Value>) -> Value {
    json!({ "error": { "code": code, "message": message, "status": status, "details": details } })
}

pub fn quota_failure(quota_id: &str, metric: &str) -> Value {
    json!({
        "@type": "type.googleapis.com/google.rpc.QuotaFailure",
        "violations": [{
            "quotaMetric": metric,
            "quotaId": quota_id,
            "quotaDimensions": { "location": "global", "model": "gemini-2.5-flash-image" },
            "quotaValue": "10"
        }]
    })
}

pub fn retry_info(delay: &str) -> Value {
    json!({ "@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": delay })
}

pub fn help_link() -> Value {
    json!({
        "@type": "type.googleapis.com/google.rpc.Help",
        "links": [{ "description": "Learn more about Gemini API quotas", "url": "https://ai.google.dev/gemini-api/docs/rate-limits" }]
    })
}

pub fn error_info(reason: &str) -> Value {
    json!({
        "@type": "type.googleapis.com/google.rpc.ErrorInfo",
        "reason": reason,
        "domain": "googleapis.com",
        "metadata": { "service": "generativelanguage.googleapis.com" }
    })
}
