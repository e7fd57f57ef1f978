//! The Gemini image models ("nano banana") through the public `generateContent` REST API.
//!
//! One call per attempt: `POST {base}/v1beta/models/{model}:generateContent` with the key in
//! `x-goog-api-key`. Every answer is classified once into a [`Generation`] or a
//! [`ProviderError`] that says whether the job may try again and what the answer says about
//! the key. The table lives in `docs/provider.md`.

use std::time::{Duration, Instant};

use async_trait::async_trait;
use base64::engine::general_purpose::{STANDARD, URL_SAFE};
use base64::Engine;
use bytes::{Bytes, BytesMut};
use chrono::{Timelike, Utc};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::{json, Value};
use tracing::{debug, info, warn};
use url::Url;

use crate::domain::{ErrorCode, JobError, Mode};
use crate::fetch::sniff;
use crate::ports::{
    GeneratedImage, Generation, GenerationRequest, KeyOutcome, Provider, ProviderError,
};

/// The public endpoint.
pub const DEFAULT_BASE_URL: &str = "https://generativelanguage.googleapis.com";

/// Aspect ratios the image models accept.
pub const ASPECT_RATIOS: [&str; 10] = [
    "1:1", "2:3", "3:2", "3:4", "4:3", "4:5", "5:4", "9:16", "16:9", "21:9",
];

/// Image sizes the models that take one accept.
pub const IMAGE_SIZES: [&str; 3] = ["1K", "2K", "4K"];

/// Finish reasons that mean the model refused: the job ends, the key is not to blame.
const REFUSALS: [&str; 9] = [
    "SAFETY",
    "RECITATION",
    "BLOCKLIST",
    "PROHIBITED_CONTENT",
    "SPII",
    "IMAGE_SAFETY",
    "IMAGE_PROHIBITED_CONTENT",
    "IMAGE_RECITATION",
    "IMAGE_OTHER",
];

/// The model and image size one mode uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModeSettings {
    pub model: String,
    /// Sent as `imageConfig.imageSize`; `None` for models that do not take one.
    pub image_size: Option<String>,
}

/// Everything the client needs, read once at start-up.
#[derive(Debug, Clone)]
pub struct GeminiSettings {
    pub base_url: Url,
    /// Used when the key pool hands out no key (single-key setups such as `make demo`).
    pub api_key: Option<SecretString>,
    pub draft: ModeSettings,
    pub final_: ModeSettings,
    pub aspect_ratio: String,
    /// The whole call, body included.
    pub timeout: Duration,
    pub connect_timeout: Duration,
    /// Largest answer read; images arrive base64-encoded inside the JSON.
    pub max_response_bytes: usize,
}

impl GeminiSettings {
    /// Defaults for `base_url`: a fast model for drafts, a higher-quality one at 2K for finals.
    pub fn new(base_url: Url, api_key: Option<SecretString>) -> Self {
        Self {
            base_url,
            api_key,
            draft: ModeSettings {
                model: "gemini-2.5-flash-image".into(),
                image_size: None,
            },
            final_: ModeSettings {
                model: "gemini-3-pro-image-preview".into(),
                image_size: Some("2K".into()),
            },
            aspect_ratio: "1:1".into(),
            timeout: Duration::from_secs(90),
            connect_timeout: Duration::from_secs(10),
            max_response_bytes: 64 * 1024 * 1024,
        }
    }

    pub fn for_mode(&self, mode: Mode) -> &ModeSettings {
        match mode {
            Mode::Draft => &self.draft,
            Mode::Final => &self.final_,
        }
    }

    /// Read the `GEMINI_*` variables from the process environment.
    ///
    /// # Errors
    /// A message naming the variable that is wrong.
    pub fn from_env() -> Result<Option<Self>, String> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Read settings through `get`. `Ok(None)` when `GEMINI_API_KEY` is unset or empty: the
    /// offline provider is then the one to use.
    ///
    /// # Errors
    /// A message naming the variable that is wrong.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Option<Self>, String> {
        let has_key = get("GEMINI_API_KEY").is_some_and(|v| !v.trim().is_empty());
        if !has_key {
            return Ok(None);
        }
        Self::with_pool_from_lookup(get).map(Some)
    }

    /// Read settings through `get` whether or not `GEMINI_API_KEY` is set: without it, every
    /// call takes its key from the key pool (`IMAGEGEN_PROVIDER=gemini`).
    ///
    /// # Errors
    /// A message naming the variable that is wrong.
    pub fn with_pool_from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, String> {
        let get = |name: &str| {
            get(name)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        let key = get("GEMINI_API_KEY").map(SecretString::from);

        let base = get("GEMINI_BASE_URL").unwrap_or_else(|| DEFAULT_BASE_URL.into());
        let base_url = Url::parse(&base)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
            .ok_or_else(|| format!("GEMINI_BASE_URL must be an http(s) URL, got {base:?}"))?;
        let mut settings = Self::new(base_url, key);

        if let Some(model) = get("GEMINI_DRAFT_MODEL") {
            settings.draft.model = model;
        }
        if let Some(model) = get("GEMINI_FINAL_MODEL") {
            settings.final_.model = model;
        }
        for (name, slot) in [
            ("GEMINI_DRAFT_IMAGE_SIZE", &mut settings.draft.image_size),
            ("GEMINI_FINAL_IMAGE_SIZE", &mut settings.final_.image_size),
        ] {
            match get(name).as_deref() {
                None => {}
                Some("none") => *slot = None,
                Some(size) if IMAGE_SIZES.contains(&size) => *slot = Some(size.to_owned()),
                Some(other) => {
                    return Err(format!("{name} must be 1K, 2K, 4K or none, got {other:?}"))
                }
            }
        }
        if let Some(ratio) = get("GEMINI_ASPECT_RATIO") {
            if !ASPECT_RATIOS.contains(&ratio.as_str()) {
                return Err(format!(
                    "GEMINI_ASPECT_RATIO must be one of {}, got {ratio:?}",
                    ASPECT_RATIOS.join(", ")
                ));
            }
            settings.aspect_ratio = ratio;
        }
        let seconds = |name: &str, default: Duration| -> Result<Duration, String> {
            match get(name) {
                None => Ok(default),
                Some(raw) => raw
                    .parse::<u64>()
                    .ok()
                    .filter(|s| *s > 0)
                    .map(Duration::from_secs)
                    .ok_or_else(|| {
                        format!("{name} must be a whole number of seconds, got {raw:?}")
                    }),
            }
        };
        settings.timeout = seconds("GEMINI_TIMEOUT_SECS", settings.timeout)?;
        settings.connect_timeout =
            seconds("GEMINI_CONNECT_TIMEOUT_SECS", settings.connect_timeout)?;
        Ok(settings)
    }
}

/// The Gemini [`Provider`].
#[derive(Debug, Clone)]
pub struct GeminiProvider {
    settings: GeminiSettings,
    client: reqwest::Client,
}

impl GeminiProvider {
    pub const NAME: &'static str = "gemini";

    /// # Errors
    /// When the HTTP client cannot be built (no TLS backend), which is a build problem.
    pub fn new(settings: GeminiSettings) -> Result<Self, String> {
        let client = reqwest::Client::builder()
            .timeout(settings.timeout)
            .connect_timeout(settings.connect_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent("imagegen/1")
            .build()
            .map_err(|e| format!("cannot build the Gemini HTTP client: {e}"))?;
        Ok(Self { settings, client })
    }

    pub fn settings(&self) -> &GeminiSettings {
        &self.settings
    }

    fn endpoint(&self, model: &str) -> Result<Url, ProviderError> {
        let base = self.settings.base_url.as_str().trim_end_matches('/');
        Url::parse(&format!("{base}/v1beta/models/{model}:generateContent")).map_err(|e| {
            failure(
                ErrorCode::UpstreamError,
                format!("the model name makes no URL: {e}"),
                KeyOutcome::Neutral,
            )
        })
    }
}

/// The request body for one call.
pub fn request_body(request: &GenerationRequest, mode: &ModeSettings, aspect_ratio: &str) -> Value {
    let mut parts = vec![json!({ "text": request.prompt })];
    if let Some(image) = &request.input_image {
        parts.push(json!({
            "inline_data": { "mime_type": image.mime_type, "data": STANDARD.encode(&image.bytes) }
        }));
    }
    let mut image_config = json!({ "aspectRatio": aspect_ratio });
    if let Some(size) = &mode.image_size {
        image_config["imageSize"] = json!(size);
    }
    json!({
        "contents": [{ "role": "user", "parts": parts }],
        "generationConfig": {
            "responseModalities": ["TEXT", "IMAGE"],
            "imageConfig": image_config,
        },
    })
}

fn failure(code: ErrorCode, message: impl Into<String>, key_outcome: KeyOutcome) -> ProviderError {
    ProviderError {
        error: JobError::new(code, message),
        key_outcome,
        retry_after: None,
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct Answer {
    candidates: Vec<Candidate>,
    prompt_feedback: Option<PromptFeedback>,
    usage_metadata: Option<Value>,
    model_version: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct Candidate {
    content: Option<Content>,
    finish_reason: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Content {
    parts: Vec<Part>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct Part {
    #[serde(alias = "inline_data")]
    inline_data: Option<InlineData>,
    thought: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct InlineData {
    #[serde(alias = "mime_type")]
    mime_type: Option<String>,
    data: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct PromptFeedback {
    block_reason: Option<String>,
}

/// What a 200 answer holds: its images, or why there are none.
fn read_answer(answer: &Answer) -> Result<Vec<GeneratedImage>, ProviderError> {
    let mut images = Vec::new();
    // Thought images are the model's sketches on the way to its answer, not the answer.
    let parts = answer
        .candidates
        .iter()
        .filter_map(|c| c.content.as_ref())
        .flat_map(|c| c.parts.iter())
        .filter(|p| !p.thought);
    for inline in parts.filter_map(|p| p.inline_data.as_ref()) {
        let bytes = STANDARD
            .decode(inline.data.as_bytes())
            .or_else(|_| URL_SAFE.decode(inline.data.as_bytes()))
            .map_err(|_| {
                failure(
                    ErrorCode::NoImage,
                    "the image model sent image data that is not valid base64",
                    KeyOutcome::Neutral,
                )
            })?;
        let mime_type = sniff(&bytes).ok_or_else(|| {
            let declared = inline.mime_type.as_deref().unwrap_or("no type");
            failure(
                ErrorCode::NoImage,
                format!("the image model sent data ({declared}) that is not an image"),
                KeyOutcome::Neutral,
            )
        })?;
        images.push(GeneratedImage {
            bytes: Bytes::from(bytes),
            mime_type: mime_type.to_owned(),
        });
    }
    if !images.is_empty() {
        return Ok(images);
    }

    if let Some(reason) = answer
        .prompt_feedback
        .as_ref()
        .and_then(|f| f.block_reason.as_deref())
    {
        return Err(failure(
            ErrorCode::ContentRefused,
            format!("the image model blocked the prompt ({reason})"),
            KeyOutcome::Neutral,
        ));
    }
    let reasons: Vec<&str> = answer
        .candidates
        .iter()
        .filter_map(|c| c.finish_reason.as_deref())
        .collect();
    if let Some(reason) = reasons.iter().find(|r| REFUSALS.contains(r)) {
        return Err(failure(
            ErrorCode::ContentRefused,
            format!("the image model refused to draw this ({reason})"),
            KeyOutcome::Neutral,
        ));
    }
    let reason = reasons.first().copied().unwrap_or("no candidates");
    Err(failure(
        ErrorCode::NoImage,
        format!("the image model answered without an image ({reason})"),
        KeyOutcome::Neutral,
    ))
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ErrorBody {
    error: ErrorStatus,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ErrorStatus {
    message: String,
    status: String,
    details: Vec<Value>,
}

impl ErrorStatus {
    fn details_of<'a>(&'a self, kind: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
        self.details.iter().filter(move |d| {
            d["@type"]
                .as_str()
                .is_some_and(|t| t.ends_with(&format!("google.rpc.{kind}")))
        })
    }

    fn reasons(&self) -> Vec<&str> {
        self.details_of("ErrorInfo")
            .filter_map(|d| d["reason"].as_str())
            .collect()
    }

    fn retry_delay(&self) -> Option<Duration> {
        self.details_of("RetryInfo")
            .find_map(|d| d["retryDelay"].as_str())
            .and_then(parse_proto_duration)
    }

    /// Whether a quota that ran out is counted per day (rather than per minute).
    fn daily_quota(&self) -> bool {
        self.details_of("QuotaFailure")
            .filter_map(|d| d["violations"].as_array())
            .flatten()
            .any(|v| {
                let id = v["quotaId"].as_str().unwrap_or_default();
                let metric = v["quotaMetric"].as_str().unwrap_or_default();
                id.contains("PerDay") || metric.contains("per_day")
            })
    }

    /// Whether the answer blames the API key itself: a 401, an `API_KEY_*` reason (invalid,
    /// expired, blocked for this service, referrer or address), or a key reported as leaked.
    /// Any other 403 is about what the project may do, which another key will not change.
    fn key_rejected(&self, http: u16) -> bool {
        let about_the_key =
            |reason: &str| reason.starts_with("API_KEY_") || reason.contains("LEAKED");
        http == 401
            || self.status == "UNAUTHENTICATED"
            || self.reasons().iter().any(|r| about_the_key(r))
            || self.message.contains("API key not valid")
            || self.message.contains("API key expired")
            || self.message.contains("API key was reported as leaked")
    }
}

/// A protobuf JSON duration such as `"37s"` or `"0.250s"`.
pub fn parse_proto_duration(raw: &str) -> Option<Duration> {
    let seconds: f64 = raw.strip_suffix('s')?.parse().ok()?;
    (seconds.is_finite() && seconds >= 0.0).then(|| Duration::from_secs_f64(seconds))
}

/// Per-day quotas reset at midnight Pacific time. 08:00 UTC is that midnight in winter and one
/// hour after it in summer: late rather than early, so a key is never woken into a 429.
fn until_daily_reset(now: chrono::DateTime<Utc>) -> Duration {
    let today = now.date_naive().and_hms_opt(8, 0, 0).map(|t| t.and_utc());
    let next = match today {
        Some(t) if t > now => t,
        Some(t) => t + chrono::Duration::days(1),
        None => now + chrono::Duration::hours(24 - i64::from(now.hour())),
    };
    (next - now).to_std().unwrap_or(Duration::from_secs(3600))
}

fn retry_after_header(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
}

/// Keep an upstream message short and on one line for the tenant's eyes.
fn brief(message: &str) -> String {
    let line: String = message.split_whitespace().collect::<Vec<_>>().join(" ");
    line.chars().take(300).collect()
}

/// Classify a non-200 answer.
fn classify_error(status: u16, body: &[u8], header_hint: Option<Duration>) -> ProviderError {
    let parsed: ErrorStatus = serde_json::from_slice::<ErrorBody>(body)
        .map(|b| b.error)
        .unwrap_or_default();
    let hint = parsed.retry_delay().or(header_hint);
    let said = if parsed.message.is_empty() {
        format!("HTTP {status}")
    } else {
        format!("HTTP {status}: {}", brief(&parsed.message))
    };

    if status == 429 {
        if parsed.daily_quota() {
            // RetryInfo on a per-day quota is often seconds: trusting it alone wakes the key
            // into another 429. It rests until the later of the hint and the daily reset.
            let reset = until_daily_reset(Utc::now());
            let rest = hint.map_or(reset, |hint| hint.max(reset));
            return ProviderError {
                error: JobError::new(
                    ErrorCode::UpstreamRateLimited,
                    "the upstream key's daily quota is used up; another key will be tried",
                ),
                key_outcome: KeyOutcome::QuotaExhausted {
                    resets_at: chrono::Duration::from_std(rest)
                        .ok()
                        .map(|rest| chrono::Utc::now() + rest),
                },
                // The job need not wait for this key's quota: the next attempt may get another.
                retry_after: None,
            };
        }
        return ProviderError {
            error: JobError::new(
                ErrorCode::UpstreamRateLimited,
                "the image model asked us to slow down",
            ),
            key_outcome: KeyOutcome::Throttled { retry_after: hint },
            retry_after: hint,
        };
    }
    if parsed.key_rejected(status) {
        return failure(
            ErrorCode::UpstreamKeyRejected,
            "the upstream refused the API key; another key will be tried",
            KeyOutcome::Invalid,
        );
    }
    if status == 403 {
        return failure(
            ErrorCode::UpstreamError,
            format!("the upstream denied permission for this request ({said})"),
            KeyOutcome::Neutral,
        );
    }
    let (code, key_outcome) = match status {
        400 => (ErrorCode::InvalidInput, KeyOutcome::Neutral),
        404 => (ErrorCode::UpstreamError, KeyOutcome::Neutral),
        504 => (ErrorCode::UpstreamTimeout, KeyOutcome::Failure),
        408 | 500..=599 => (ErrorCode::UpstreamUnavailable, KeyOutcome::Failure),
        _ => (ErrorCode::UpstreamError, KeyOutcome::Neutral),
    };
    let message = match code {
        ErrorCode::InvalidInput => format!("the image model refused the request ({said})"),
        ErrorCode::UpstreamError if status == 404 => {
            format!("the configured model was not found ({said})")
        }
        _ => format!("the image model failed ({said})"),
    };
    ProviderError {
        error: JobError::new(code, message),
        key_outcome,
        retry_after: hint,
    }
}

fn transport(e: &reqwest::Error) -> ProviderError {
    if e.is_timeout() {
        return failure(
            ErrorCode::UpstreamTimeout,
            "the image model took too long to answer",
            KeyOutcome::Failure,
        );
    }
    let what = if e.is_body() || e.is_decode() {
        "the image model's answer was cut off"
    } else {
        "the image model could not be reached"
    };
    failure(ErrorCode::UpstreamUnavailable, what, KeyOutcome::Failure)
}

/// Read the whole body, refusing answers over `limit`.
async fn read_body(mut response: reqwest::Response, limit: usize) -> Result<Bytes, ProviderError> {
    let mut body = BytesMut::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| transport(&e))? {
        if body.len() + chunk.len() > limit {
            return Err(failure(
                ErrorCode::UpstreamError,
                format!("the image model's answer is larger than {limit} bytes"),
                KeyOutcome::Neutral,
            ));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

#[async_trait]
impl Provider for GeminiProvider {
    fn name(&self) -> &str {
        Self::NAME
    }

    /// A single key from the settings (`make demo` with `GEMINI_API_KEY`) stands in for the
    /// pool; without one, every call takes a key from the pool.
    fn needs_key(&self) -> bool {
        self.settings.api_key.is_none()
    }

    async fn generate(
        &self,
        request: &GenerationRequest,
        key: Option<&SecretString>,
    ) -> Result<Generation, ProviderError> {
        let Some(key) = key.or(self.settings.api_key.as_ref()) else {
            return Err(failure(
                ErrorCode::Unavailable,
                "no upstream key is available",
                KeyOutcome::Neutral,
            ));
        };
        let mode = self.settings.for_mode(request.mode);
        let url = self.endpoint(&mode.model)?;
        let body = request_body(request, mode, &self.settings.aspect_ratio);

        let started = Instant::now();
        let response = self
            .client
            .post(url)
            .header("x-goog-api-key", key.expose_secret())
            .json(&body)
            .send()
            .await
            .map_err(|e| transport(&e))?;
        let status = response.status().as_u16();
        let hint = retry_after_header(response.headers());
        let bytes = read_body(response, self.settings.max_response_bytes).await?;
        let latency = started.elapsed();
        info!(job_id = %request.job_id, model = %mode.model, status,
            latency_ms = latency.as_millis() as u64, bytes = bytes.len(), "upstream answered");

        if status != 200 {
            let error = classify_error(status, &bytes, hint);
            warn!(job_id = %request.job_id, status, code = error.error.code.as_str(),
                "upstream call failed");
            return Err(error);
        }
        let answer: Answer = serde_json::from_slice(&bytes).map_err(|e| {
            debug!(job_id = %request.job_id, error = %e, "unreadable upstream answer");
            failure(
                ErrorCode::UpstreamUnavailable,
                "the image model's answer was cut off or malformed",
                KeyOutcome::Failure,
            )
        })?;
        let images = read_answer(&answer)?;
        Ok(Generation {
            images,
            provider: Self::NAME.into(),
            model: answer.model_version.unwrap_or_else(|| mode.model.clone()),
            latency,
            usage: answer.usage_metadata,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(raw: Value) -> Answer {
        serde_json::from_value(raw).unwrap_or_default()
    }

    #[test]
    fn settings_are_absent_without_a_key_and_named_when_wrong() {
        let none = GeminiSettings::from_lookup(|_| None);
        let bad = GeminiSettings::from_lookup(|n| match n {
            "GEMINI_API_KEY" => Some("k".into()),
            "GEMINI_FINAL_IMAGE_SIZE" => Some("8K".into()),
            _ => None,
        });

        assert!(matches!(none, Ok(None)));
        assert!(bad
            .err()
            .unwrap_or_default()
            .contains("GEMINI_FINAL_IMAGE_SIZE"));
    }

    #[test]
    fn settings_pick_model_and_size_per_mode() {
        let settings = GeminiSettings::from_lookup(|n| match n {
            "GEMINI_API_KEY" => Some("k".into()),
            "GEMINI_DRAFT_MODEL" => Some("fast-model".into()),
            "GEMINI_DRAFT_IMAGE_SIZE" => Some("1K".into()),
            "GEMINI_FINAL_IMAGE_SIZE" => Some("none".into()),
            _ => None,
        })
        .ok()
        .flatten()
        .unwrap_or_else(|| panic!("settings expected"));

        assert_eq!(settings.for_mode(Mode::Draft).model, "fast-model");
        assert_eq!(
            settings.for_mode(Mode::Draft).image_size.as_deref(),
            Some("1K")
        );
        assert_eq!(settings.for_mode(Mode::Final).image_size, None);
    }

    #[test]
    fn proto_durations_parse_whole_and_fractional_seconds() {
        assert_eq!(parse_proto_duration("37s"), Some(Duration::from_secs(37)));
        assert_eq!(
            parse_proto_duration("0.5s"),
            Some(Duration::from_millis(500))
        );
        assert_eq!(parse_proto_duration("37"), None);
        assert_eq!(parse_proto_duration("-1s"), None);
    }

    #[test]
    fn thought_images_are_not_results() {
        let thought = STANDARD.encode(b"\x89PNG\r\n\x1a\nthought");
        let raw = json!({"candidates": [{"content": {"parts": [
            {"inlineData": {"mimeType": "image/png", "data": thought}, "thought": true}
        ]}, "finishReason": "STOP"}]});

        let result = read_answer(&answer(raw));

        assert_eq!(result.map_err(|e| e.error.code), Err(ErrorCode::NoImage));
    }

    #[test]
    fn daily_reset_is_at_most_a_day_away() {
        let now = Utc::now();

        let wait = until_daily_reset(now);

        assert!(wait > Duration::ZERO && wait <= Duration::from_secs(24 * 3600));
    }

    #[test]
    fn an_unparseable_error_body_still_classifies_by_status() {
        let error = classify_error(503, b"<html>busy</html>", Some(Duration::from_secs(3)));

        assert_eq!(error.error.code, ErrorCode::UpstreamUnavailable);
        assert_eq!(error.retry_after, Some(Duration::from_secs(3)));
    }
}
