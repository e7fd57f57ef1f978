//! Provider adapters: the offline PNG renderer (default) and the Gemini client, and
//! [`provider_from_lookup`], which picks one from the settings.

pub mod gemini;
pub mod offline;

use std::sync::Arc;

pub use gemini::{GeminiProvider, GeminiSettings};
pub use offline::OfflineProvider;

use crate::ports::Provider;

/// Which image model the workers call, from `IMAGEGEN_PROVIDER`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProviderChoice {
    /// Unset: Gemini when `GEMINI_API_KEY` is set (one fixed key), else the offline renderer.
    Auto,
    /// Gemini; keys come from the key pool unless `GEMINI_API_KEY` fixes one.
    Gemini,
    /// The offline renderer, whatever else is set.
    Offline,
}

impl ProviderChoice {
    /// # Errors
    /// A message naming `IMAGEGEN_PROVIDER` and the values it takes.
    pub fn parse(raw: Option<&str>) -> Result<Self, String> {
        match raw.map(str::trim).filter(|v| !v.is_empty()) {
            None | Some("auto") => Ok(Self::Auto),
            Some("gemini") => Ok(Self::Gemini),
            Some("offline") => Ok(Self::Offline),
            Some(other) => Err(format!(
                "IMAGEGEN_PROVIDER must be gemini, offline or auto, got {other:?}"
            )),
        }
    }
}

/// The provider `IMAGEGEN_PROVIDER` and the `GEMINI_*` variables ask for, read through `get`
/// (the environment, or a map in tests).
///
/// # Errors
/// A message naming the setting that is wrong.
pub fn provider_from_lookup(
    get: impl Fn(&str) -> Option<String>,
) -> Result<Arc<dyn Provider>, String> {
    let gemini = match ProviderChoice::parse(get("IMAGEGEN_PROVIDER").as_deref())? {
        ProviderChoice::Offline => None,
        ProviderChoice::Auto => GeminiSettings::from_lookup(&get)?,
        ProviderChoice::Gemini => Some(GeminiSettings::with_pool_from_lookup(&get)?),
    };
    match gemini {
        Some(settings) => Ok(Arc::new(GeminiProvider::new(settings)?)),
        None => Ok(Arc::new(OfflineProvider::default())),
    }
}

/// [`provider_from_lookup`] on the process environment.
///
/// # Errors
/// A message naming the setting that is wrong.
pub fn provider_from_env() -> Result<Arc<dyn Provider>, String> {
    provider_from_lookup(|name| std::env::var(name).ok())
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn provider(vars: &[(&str, &str)]) -> Result<Arc<dyn Provider>, String> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        provider_from_lookup(|name| vars.get(name).cloned())
    }

    #[test]
    fn gemini_without_a_fixed_key_takes_its_keys_from_the_pool() {
        let built = provider(&[("IMAGEGEN_PROVIDER", "gemini")]).unwrap_or_else(|e| panic!("{e}"));

        assert_eq!(built.name(), GeminiProvider::NAME);
        assert!(built.needs_key(), "a pool key is asked for on every call");
    }

    #[test]
    fn gemini_with_a_fixed_key_needs_no_pool_key() {
        let built = provider(&[("IMAGEGEN_PROVIDER", "gemini"), ("GEMINI_API_KEY", "k")])
            .unwrap_or_else(|e| panic!("{e}"));

        assert_eq!(built.name(), GeminiProvider::NAME);
        assert!(!built.needs_key());
    }

    #[test]
    fn without_a_choice_the_key_decides_as_before() {
        let offline = provider(&[]).unwrap_or_else(|e| panic!("{e}"));
        let gemini = provider(&[("GEMINI_API_KEY", "k")]).unwrap_or_else(|e| panic!("{e}"));
        let forced = provider(&[("IMAGEGEN_PROVIDER", "offline"), ("GEMINI_API_KEY", "k")])
            .unwrap_or_else(|e| panic!("{e}"));

        assert_eq!(offline.name(), OfflineProvider::default().name());
        assert_eq!(gemini.name(), GeminiProvider::NAME);
        assert_eq!(forced.name(), OfflineProvider::default().name());
    }

    #[test]
    fn an_unknown_provider_is_named_in_the_error() {
        let error = provider(&[("IMAGEGEN_PROVIDER", "dall-e")])
            .err()
            .unwrap_or_default();

        assert!(error.contains("IMAGEGEN_PROVIDER"), "{error}");
        assert!(error.contains("dall-e"), "{error}");
    }
}
