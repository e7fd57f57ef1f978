//! Provider adapters: the offline PNG renderer (default) and the Gemini client.

pub mod offline;

pub use offline::OfflineProvider;
