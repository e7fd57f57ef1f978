//! Images in a folder, handed out through expiring URLs signed with HMAC-SHA256. The local
//! runner serves `GET /files/{key}?expires=..&sig=..` and checks the signature with
//! [`FsBlobStore::verify`]; client uploads arrive as `PUT /files/{key}?expires=..&sig=..`,
//! checked with [`FsBlobStore::verify_put`]. The two signatures differ, so a download link
//! cannot be used to overwrite the object.

use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::ports::{BlobStore, BoundedRead, PortError, PortResult, SignedUrl};

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
        self.signature_for("", key, expires)
    }

    fn signature_for(&self, method: &str, key: &str, expires: i64) -> String {
        let mut mac = match Hmac::<Sha256>::new_from_slice(&self.signing_key) {
            Ok(mac) => mac,
            Err(_) => return String::new(),
        };
        mac.update(method.as_bytes());
        mac.update(key.as_bytes());
        mac.update(b"\n");
        mac.update(expires.to_string().as_bytes());
        hex::encode(mac.finalize().into_bytes())
    }

    /// Whether a URL's `expires` and `sig` grant access to `key` at `now`.
    pub fn verify(&self, key: &str, expires: i64, sig: &str, now: DateTime<Utc>) -> bool {
        self.verify_for("", key, expires, sig, now)
    }

    /// Whether an upload URL's `expires` and `sig` allow a PUT to `key` at `now`.
    pub fn verify_put(&self, key: &str, expires: i64, sig: &str, now: DateTime<Utc>) -> bool {
        self.verify_for(PUT_PREFIX, key, expires, sig, now)
    }

    fn verify_for(
        &self,
        method: &str,
        key: &str,
        expires: i64,
        sig: &str,
        now: DateTime<Utc>,
    ) -> bool {
        let Ok(given) = hex::decode(sig) else {
            return false;
        };
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&self.signing_key) else {
            return false;
        };
        mac.update(method.as_bytes());
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

    async fn get_at_most(&self, key: &str, max_bytes: usize) -> PortResult<Option<BoundedRead>> {
        let path = self.path_of(key)?;
        let size = match tokio::fs::metadata(&path).await {
            Ok(meta) => meta.len(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(PortError::Unavailable(e.to_string())),
        };
        if size > max_bytes as u64 {
            return Ok(Some(BoundedRead::TooLarge { size }));
        }
        // The file may grow between the two calls; the length is checked again after.
        Ok(self
            .get(key)
            .await?
            .map(|bytes| BoundedRead::of(bytes, max_bytes)))
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

    async fn signed_put_url(&self, key: &str, ttl: Duration) -> PortResult<SignedUrl> {
        self.path_of(key)?;
        let expires_at = Utc::now() + ttl;
        let expires = expires_at.timestamp();
        let sig = self.signature_for(PUT_PREFIX, key, expires);
        Ok(SignedUrl {
            url: format!("{}/files/{key}?expires={expires}&sig={sig}", self.base_url),
            expires_at: DateTime::from_timestamp(expires, 0).unwrap_or(expires_at),
        })
    }
}

/// Mixed into upload signatures only. A newline cannot start a blob key, so no GET
/// signature input can equal a PUT one.
const PUT_PREFIX: &str = "\nPUT\n";

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

    fn query_of(url: &str) -> (i64, String) {
        let parsed = url::Url::parse(url).unwrap_or_else(|e| panic!("{e}"));
        let get = |name: &str| {
            parsed
                .query_pairs()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.into_owned())
                .unwrap_or_default()
        };
        (get("expires").parse().unwrap_or_default(), get("sig"))
    }

    #[tokio::test]
    async fn download_and_upload_signatures_do_not_stand_in_for_each_other() {
        let store = store();
        let now = Utc::now();
        let key = "uploads/t/upl_1";
        let ttl = Duration::from_secs(60);
        let get = store.signed_url(key, ttl).await.map(|u| u.url);
        let put = store.signed_put_url(key, ttl).await.map(|u| u.url);

        let (get_expires, get_sig) = query_of(&get.unwrap_or_default());
        let (put_expires, put_sig) = query_of(&put.unwrap_or_default());

        assert!(store.verify_put(key, put_expires, &put_sig, now));
        assert!(!store.verify_put(key, get_expires, &get_sig, now));
        assert!(!store.verify(key, put_expires, &put_sig, now));
        assert!(store.verify(key, get_expires, &get_sig, now));
    }
}
