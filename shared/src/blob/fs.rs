//! Images in a folder, handed out through expiring URLs signed with HMAC-SHA256. The local
//! runner serves `GET /files/{key}?expires=..&sig=..` and checks the signature with
//! [`FsBlobStore::verify`].

use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::ports::{BlobStore, PortError, PortResult, SignedUrl};

/// The folder [`BlobStore`].
#[derive(Clone)]
pub struct FsBlobStore {
    root: PathBuf,
    base_url: String,
    signing_key: Vec<u8>,
}

impl FsBlobStore {
    /// Objects live under `root`; signed URLs start with `base_url` (no trailing slash).
    pub fn new(root: PathBuf, base_url: impl Into<String>, signing_key: Vec<u8>) -> Self {
        Self {
            root,
            base_url: base_url.into().trim_end_matches('/').to_owned(),
            signing_key,
        }
    }

    fn path_of(&self, key: &str) -> PortResult<PathBuf> {
        let relative = Path::new(key);
        let clean = !key.is_empty()
            && relative
                .components()
                .all(|c| matches!(c, Component::Normal(_)));
        if !clean {
            return Err(PortError::Internal(format!("unsafe blob key {key:?}")));
        }
        Ok(self.root.join(relative))
    }

    fn signature(&self, key: &str, expires: i64) -> String {
        let mut mac = match Hmac::<Sha256>::new_from_slice(&self.signing_key) {
            Ok(mac) => mac,
            Err(_) => return String::new(),
        };
        mac.update(key.as_bytes());
        mac.update(b"\n");
        mac.update(expires.to_string().as_bytes());
        hex::encode(mac.finalize().into_bytes())
    }

    /// Whether a URL's `expires` and `sig` grant access to `key` at `now`.
    pub fn verify(&self, key: &str, expires: i64, sig: &str, now: DateTime<Utc>) -> bool {
        let Ok(given) = hex::decode(sig) else {
            return false;
        };
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&self.signing_key) else {
            return false;
        };
        mac.update(key.as_bytes());
        mac.update(b"\n");
        mac.update(expires.to_string().as_bytes());
        now.timestamp() < expires && mac.verify_slice(&given).is_ok()
    }
}

#[async_trait]
impl BlobStore for FsBlobStore {
    async fn put(&self, key: &str, bytes: Bytes, _content_type: &str) -> PortResult<()> {
        let path = self.path_of(key)?;
        let tmp = path.with_extension(format!("tmp-{}", ulid::Ulid::new()));
        if let Some(dir) = path.parent() {
            tokio::fs::create_dir_all(dir)
                .await
                .map_err(|e| PortError::Unavailable(e.to_string()))?;
        }
        // Write then rename, so a reader never sees half an image.
        tokio::fs::write(&tmp, &bytes)
            .await
            .map_err(|e| PortError::Unavailable(e.to_string()))?;
        tokio::fs::rename(&tmp, &path)
            .await
            .map_err(|e| PortError::Unavailable(e.to_string()))
    }

    async fn get(&self, key: &str) -> PortResult<Option<Bytes>> {
        let path = self.path_of(key)?;
        match tokio::fs::read(&path).await {
            Ok(bytes) => Ok(Some(Bytes::from(bytes))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(PortError::Unavailable(e.to_string())),
        }
    }

    async fn signed_url(&self, key: &str, ttl: Duration) -> PortResult<SignedUrl> {
        self.path_of(key)?;
        let expires_at = Utc::now() + ttl;
        let expires = expires_at.timestamp();
        let sig = self.signature(key, expires);
        Ok(SignedUrl {
            url: format!("{}/files/{key}?expires={expires}&sig={sig}", self.base_url),
            expires_at: DateTime::from_timestamp(expires, 0).unwrap_or(expires_at),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> FsBlobStore {
        FsBlobStore::new(std::env::temp_dir(), "http://x", b"k".to_vec())
    }

    #[test]
    fn keys_that_climb_out_of_the_folder_are_refused() {
        let store = store();

        assert!(store.path_of("../etc/passwd").is_err());
        assert!(store.path_of("/etc/passwd").is_err());
        assert!(store.path_of("").is_err());
        assert!(store.path_of("t/j/0.png").is_ok());
    }

    #[test]
    fn signature_binds_key_and_expiry() {
        let store = store();
        let now = Utc::now();
        let expires = now.timestamp() + 60;
        let sig = store.signature("t/j/0.png", expires);

        assert!(store.verify("t/j/0.png", expires, &sig, now));
        assert!(!store.verify("t/j/1.png", expires, &sig, now));
        assert!(!store.verify("t/j/0.png", expires + 1, &sig, now));
        assert!(!store.verify(
            "t/j/0.png",
            expires,
            &sig,
            now + chrono::Duration::seconds(61)
        ));
    }
}
