//! Images in S3, under the `{tenant}/{job}/` prefix the worker chooses, each with its own
//! Content-Type. Result URLs are presigned GETs made fresh on each poll, or plain URLs under a
//! public (CDN) base when one is set. Client uploads go straight to S3 through presigned PUTs.

use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use aws_sdk_s3::config::{ProvideCredentials, SharedCredentialsProvider};
use aws_sdk_s3::error::SdkError;
use aws_sdk_s3::operation::get_object::GetObjectError;
use aws_sdk_s3::presigning::PresigningConfig;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::Client;
use bytes::Bytes;
use chrono::{DateTime, Utc};

use crate::aws::sdk_error;
use crate::ports::{BlobStore, BoundedRead, PortError, PortResult, SignedUrl};

/// SigV4 refuses presigned URLs that live longer than this.
const MAX_PRESIGN: Duration = Duration::from_secs(7 * 24 * 3600);

/// The S3 [`BlobStore`].
#[derive(Clone, Debug)]
pub struct S3BlobStore {
    client: Client,
    /// The provider that signs presigned URLs, to read its credentials' expiry.
    credentials: Option<SharedCredentialsProvider>,
    bucket: String,
    public_base_url: Option<String>,
}

impl S3BlobStore {
    /// Objects go to `bucket`. With `public_base_url`, URLs are `{base}/{key}` and are not
    /// signed (the base must serve the bucket, e.g. a CDN with origin access). `credentials`
    /// is the provider the client signs with (`SdkConfig::credentials_provider`).
    pub fn new(
        client: Client,
        credentials: Option<SharedCredentialsProvider>,
        bucket: String,
        public_base_url: Option<String>,
    ) -> Self {
        Self {
            client,
            credentials,
            bucket,
            public_base_url: public_base_url.map(|u| u.trim_end_matches('/').to_owned()),
        }
    }

    /// When the credentials that sign URLs stop working. A presigned URL dies with them, so
    /// its true expiry is the earlier of the two (Lambda's role credentials last hours).
    async fn credentials_expiry(&self) -> PortResult<Option<SystemTime>> {
        let Some(provider) = &self.credentials else {
            return Ok(None);
        };
        let credentials = provider
            .provide_credentials()
            .await
            .map_err(|e| PortError::Unavailable(format!("cannot load credentials: {e}")))?;
        Ok(credentials.expiry())
    }

    /// The presigning window for `ttl`: at most SigV4's limit and the credentials' life, in
    /// whole seconds so the stated expiry is never later than the signature's.
    async fn presigning(&self, ttl: Duration) -> PortResult<(PresigningConfig, DateTime<Utc>)> {
        let now = Utc::now();
        let mut ttl = ttl.min(MAX_PRESIGN);
        if let Some(expiry) = self.credentials_expiry().await? {
            let left = expiry
                .duration_since(SystemTime::now())
                .unwrap_or(Duration::ZERO);
            ttl = ttl.min(left);
        }
        let ttl = Duration::from_secs(ttl.as_secs().max(1));
        let config = PresigningConfig::expires_in(ttl)
            .map_err(|e| PortError::Internal(format!("bad presigning window: {e}")))?;
        let expires_at = DateTime::from_timestamp(now.timestamp(), 0).unwrap_or(now) + ttl;
        Ok((config, expires_at))
    }
}

#[async_trait]
impl BlobStore for S3BlobStore {
    async fn put(&self, key: &str, bytes: Bytes, content_type: &str) -> PortResult<()> {
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .content_type(content_type)
            .body(ByteStream::from(bytes))
            .send()
            .await
            .map_err(sdk_error)?;
        Ok(())
    }

    async fn get(&self, key: &str) -> PortResult<Option<Bytes>> {
        let result = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await;
        let output = match result {
            Ok(output) => output,
            Err(SdkError::ServiceError(e)) if matches!(e.err(), GetObjectError::NoSuchKey(_)) => {
                return Ok(None)
            }
            Err(e) => return Err(sdk_error(e)),
        };
        let body = output
            .body
            .collect()
            .await
            .map_err(|e| PortError::Unavailable(format!("reading {key} failed: {e}")))?;
        Ok(Some(body.into_bytes()))
    }

    async fn get_at_most(&self, key: &str, max_bytes: usize) -> PortResult<Option<BoundedRead>> {
        // GetObject states the length before the body is read, so one call both checks the
        // size and reads an object that fits; a larger body is dropped unread.
        let result = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await;
        let mut output = match result {
            Ok(output) => output,
            Err(SdkError::ServiceError(e)) if matches!(e.err(), GetObjectError::NoSuchKey(_)) => {
                return Ok(None)
            }
            Err(e) => return Err(sdk_error(e)),
        };
        let limit = max_bytes as u64;
        if let Some(size) = output.content_length().and_then(|n| u64::try_from(n).ok()) {
            if size > limit {
                return Ok(Some(BoundedRead::TooLarge { size }));
            }
        }
        let mut body = bytes::BytesMut::new();
        while let Some(chunk) = output
            .body
            .try_next()
            .await
            .map_err(|e| PortError::Unavailable(format!("reading {key} failed: {e}")))?
        {
            if (body.len() + chunk.len()) as u64 > limit {
                return Ok(Some(BoundedRead::TooLarge {
                    size: (body.len() + chunk.len()) as u64,
                }));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(Some(BoundedRead::Found(body.freeze())))
    }

    async fn signed_url(&self, key: &str, ttl: Duration) -> PortResult<SignedUrl> {
        let now = Utc::now();
        if let Some(base) = &self.public_base_url {
            return Ok(SignedUrl {
                url: format!("{base}/{key}"),
                expires_at: now + ttl,
            });
        }

        let (config, expires_at) = self.presigning(ttl).await?;
        let presigned = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .presigned(config)
            .await
            .map_err(sdk_error)?;
        Ok(SignedUrl {
            url: presigned.uri().to_owned(),
            expires_at,
        })
    }

    async fn signed_put_url(&self, key: &str, ttl: Duration) -> PortResult<SignedUrl> {
        // Always presigned, even with a public base: that base serves GETs only. No content
        // type is signed, so a client may send its image with any Content-Type; the worker
        // tells the type from the bytes.
        let (config, expires_at) = self.presigning(ttl).await?;
        let presigned = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .presigned(config)
            .await
            .map_err(sdk_error)?;
        Ok(SignedUrl {
            url: presigned.uri().to_owned(),
            expires_at,
        })
    }
}
