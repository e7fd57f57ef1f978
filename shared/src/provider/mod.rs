//! Provider adapters: the offline PNG renderer (default) and the Gemini client.

pub mod gemini;
pub mod offline;

pub use gemini::{GeminiProvider, GeminiSettings};
pub use offline::OfflineProvider;
