use serde::{Deserialize, Serialize};
use url::Url;

/// The longest prompt accepted, in Unicode scalar values.
pub const PROMPT_MAX_CHARS: usize = 4_000;

/// Why a value from outside was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    #[error("prompt must not be empty")]
    EmptyPrompt,
    #[error("prompt is longer than {PROMPT_MAX_CHARS} characters")]
    PromptTooLong,
    #[error("prompt contains control characters")]
    PromptControlChars,
    #[error("idempotency key must be 1 to 255 visible ASCII characters")]
    IdempotencyKey,
    #[error("{0}")]
    Url(String),
}

/// A prompt that passed validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prompt(String);

impl Prompt {
    /// # Errors
    /// Refuses empty (or whitespace-only) prompts, prompts over [`PROMPT_MAX_CHARS`] and
    /// prompts with control characters other than newline and tab.
    pub fn parse(raw: &str) -> Result<Self, ValueError> {
        if raw.trim().is_empty() {
            return Err(ValueError::EmptyPrompt);
        }
        if raw.chars().count() > PROMPT_MAX_CHARS {
            return Err(ValueError::PromptTooLong);
        }
        if raw
            .chars()
            .any(|c| c.is_control() && c != '\n' && c != '\t')
        {
            return Err(ValueError::PromptControlChars);
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_inner(self) -> String {
        self.0
    }
}

/// Draft (fast, smaller) or final (slower, larger).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    #[default]
    Draft,
    Final,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Draft => "draft",
            Self::Final => "final",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "draft" => Some(Self::Draft),
            "final" => Some(Self::Final),
            _ => None,
        }
    }
}

/// A client's `Idempotency-Key`, scoped to its tenant by the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    /// # Errors
    /// Refuses empty keys, keys over 255 characters and keys with non-visible characters.
    pub fn parse(raw: &str) -> Result<Self, ValueError> {
        let ok = !raw.is_empty() && raw.len() <= 255 && raw.bytes().all(|b| b.is_ascii_graphic());
        if !ok {
            return Err(ValueError::IdempotencyKey);
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An outbound URL a tenant gave us (webhook or input image). Parsing checks its shape only;
/// the address it resolves to is checked again when we connect (`crate::webhook::guard`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookUrl(Url);

impl WebhookUrl {
    /// # Errors
    /// Refuses anything but absolute http(s) URLs with a host and no credentials; plain http
    /// only when `allow_http` is set (local runs).
    pub fn parse(raw: &str, allow_http: bool) -> Result<Self, ValueError> {
        let url = Url::parse(raw).map_err(|e| ValueError::Url(format!("not a valid URL: {e}")))?;
        match url.scheme() {
            "https" => {}
            "http" if allow_http => {}
            _ => return Err(ValueError::Url("URL must use https".into())),
        }
        if url.host().is_none() {
            return Err(ValueError::Url("URL must have a host".into()));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(ValueError::Url("URL must not carry credentials".into()));
        }
        if url.fragment().is_some() {
            return Err(ValueError::Url("URL must not have a fragment".into()));
        }
        Ok(Self(url))
    }

    pub fn as_url(&self) -> &Url {
        &self.0
    }

    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompt_rejects_blank_oversized_and_control_characters() {
        assert_eq!(Prompt::parse("   "), Err(ValueError::EmptyPrompt));
        let long = "x".repeat(PROMPT_MAX_CHARS + 1);
        assert_eq!(Prompt::parse(&long), Err(ValueError::PromptTooLong));
        assert_eq!(
            Prompt::parse("a\u{0}b"),
            Err(ValueError::PromptControlChars)
        );
        assert!(Prompt::parse("a cat\non a mat").is_ok());
    }

    #[test]
    fn prompt_limit_counts_characters_not_bytes() {
        let wide = "é".repeat(PROMPT_MAX_CHARS);

        assert!(Prompt::parse(&wide).is_ok());
    }

    #[test]
    fn idempotency_key_allows_255_visible_ascii_characters_only() {
        assert!(IdempotencyKey::parse(&"k".repeat(255)).is_ok());
        assert!(IdempotencyKey::parse(&"k".repeat(256)).is_err());
        assert!(IdempotencyKey::parse("has space").is_err());
        assert!(IdempotencyKey::parse("").is_err());
    }

    #[test]
    fn webhook_url_needs_https_a_host_and_no_credentials() {
        assert!(WebhookUrl::parse("https://hooks.example.com/x", false).is_ok());
        assert!(WebhookUrl::parse("http://hooks.example.com/x", false).is_err());
        assert!(WebhookUrl::parse("http://127.0.0.1:9/x", true).is_ok());
        assert!(WebhookUrl::parse("https://u:p@hooks.example.com/", false).is_err());
        assert!(WebhookUrl::parse("ftp://hooks.example.com/", true).is_err());
        assert!(WebhookUrl::parse("not a url", true).is_err());
    }
}
