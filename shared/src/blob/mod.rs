//! Blob store adapters: a folder with HMAC-signed URLs (embedded) and, with the `aws`
//! feature, S3 with presigned GETs.

pub mod fs;
#[cfg(feature = "aws")]
pub mod s3;

pub use fs::FsBlobStore;
