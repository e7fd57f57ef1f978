//! Reference images: where a job's input image comes from, how its bytes are fetched, and how
//! their type is told from the bytes themselves.
//!
//! A URL given by a tenant is hostile until proven otherwise: it is fetched through the same
//! outbound guard as webhooks (checked addresses, pinned connection, no redirects) and read up
//! to a size limit. An upload (`upload://upl_...`) is read from the blob store. Either way the
//! bytes must sniff as PNG, JPEG, WebP, HEIC or HEIF; the declared content type is ignored.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use url::Url;

use crate::domain::{ErrorCode, TenantId, ValueError, WebhookUrl};
use crate::ports::{BlobStore, BoundedRead, InputImage, PortError};
use crate::webhook::{GuardError, OutboundPolicy};

/// The scheme a job uses to name an upload instead of a URL.
pub const UPLOAD_SCHEME: &str = "upload://";

/// The image types the upstream accepts as input, told from their first bytes.
pub fn sniff(bytes: &[u8]) -> Option<&'static str> {
    if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        return Some("image/png");
    }
    if bytes.starts_with(&[0xff, 0xd8, 0xff]) {
        return Some("image/jpeg");
    }
    if bytes.len() >= 12 && &bytes[0..4] == b"RIFF" && &bytes[8..12] == b"WEBP" {
        return Some("image/webp");
    }
    // HEIC and HEIF are ISO media files: a `ftyp` box whose major brand names the flavour.
    if bytes.len() >= 12 && &bytes[4..8] == b"ftyp" {
        return match &bytes[8..12] {
            b"heic" | b"heix" | b"heim" | b"heis" | b"hevc" | b"hevx" => Some("image/heic"),
            b"mif1" | b"msf1" | b"heif" => Some("image/heif"),
            _ => None,
        };
    }
    None
}

/// An upload id: `upl_` and a ULID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadId(String);

impl UploadId {
    pub fn generate() -> Self {
        Self(format!("upl_{}", ulid::Ulid::new()))
    }

    /// Accepts only ids of the shape [`UploadId::generate`] makes.
    pub fn parse(raw: &str) -> Option<Self> {
        let ulid = raw.strip_prefix("upl_")?;
        ulid::Ulid::from_string(ulid).ok()?;
        Some(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Where the upload's bytes live. Scoped by tenant, so one tenant cannot use another's.
    pub fn blob_key(&self, tenant: &TenantId) -> String {
        format!("uploads/{tenant}/{}", self.0)
    }

    /// How a job refers to it.
    pub fn reference(&self) -> String {
        format!("{UPLOAD_SCHEME}{}", self.0)
    }
}

/// Where a job's reference image comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageSource {
    Url(WebhookUrl),
    Upload(UploadId),
}

impl ImageSource {
    /// Parse what a client sent as `inputImageUrl`: an http(s) URL or `upload://<uploadId>`.
    ///
    /// # Errors
    /// A [`ValueError::Url`] saying what is wrong.
    pub fn parse(raw: &str, allow_http: bool) -> Result<Self, ValueError> {
        if let Some(id) = raw.strip_prefix(UPLOAD_SCHEME) {
            return UploadId::parse(id).map(Self::Upload).ok_or_else(|| {
                ValueError::Url(
                    "upload reference must be upload://upl_<id> from /v1/uploads".into(),
                )
            });
        }
        WebhookUrl::parse(raw, allow_http).map(Self::Url)
    }

    /// The form stored on the job and hashed for idempotency.
    pub fn as_str(&self) -> String {
        match self {
            Self::Url(url) => url.as_str().to_owned(),
            Self::Upload(id) => id.reference(),
        }
    }
}

/// Why a reference image could not be used.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The image will never be usable: refused address, redirect, 4xx, too large, not an
    /// image of an accepted type, missing upload. The code is what the API answers at submit.
    #[error("{1}")]
    Refused(ErrorCode, String),
    /// Worth another try later: timeouts, broken connections, 5xx, a failing blob store.
    #[error("{0}")]
    Transient(String),
}

impl From<GuardError> for FetchError {
    fn from(e: GuardError) -> Self {
        match e {
            // A name that does not resolve now may resolve in a minute.
            GuardError::Unresolvable => Self::Transient(format!("input image host: {e}")),
            other => Self::Refused(
                ErrorCode::InvalidImageUrl,
                format!("input image URL refused: {other}"),
            ),
        }
    }
}

impl From<PortError> for FetchError {
    fn from(e: PortError) -> Self {
        Self::Transient(format!("reading the upload failed: {e}"))
    }
}

/// How reference images are read.
#[derive(Debug, Clone, Copy)]
pub struct FetchLimits {
    /// Largest image accepted, in bytes.
    pub max_bytes: usize,
    /// How long one fetch may take, connection included.
    pub timeout: Duration,
}

impl Default for FetchLimits {
    fn default() -> Self {
        Self {
            max_bytes: DEFAULT_MAX_INPUT_BYTES,
            timeout: Duration::from_secs(20),
        }
    }
}

/// The upstream takes at most 20 MB of inline data per request; 10 MiB of image is about
/// 13.4 MB once base64-encoded, which leaves room for the prompt.
pub const DEFAULT_MAX_INPUT_BYTES: usize = 10 * 1024 * 1024;

fn accepted(bytes: Bytes, max_bytes: usize) -> Result<InputImage, FetchError> {
    if bytes.len() > max_bytes {
        return Err(FetchError::Refused(
            ErrorCode::PayloadTooLarge,
            format!("input image is larger than {max_bytes} bytes"),
        ));
    }
    let mime_type = sniff(&bytes).ok_or_else(|| {
        FetchError::Refused(
            ErrorCode::UnsupportedImageType,
            "input image must be PNG, JPEG, WebP, HEIC or HEIF".into(),
        )
    })?;
    Ok(InputImage {
        bytes,
        mime_type: mime_type.to_owned(),
    })
}

/// GET `url` through the outbound guard: pinned to the checked addresses, no redirects, no
/// proxy, at most `limits.max_bytes` read, and the bytes sniffed.
///
/// # Errors
/// [`FetchError::Refused`] for what no retry can fix, [`FetchError::Transient`] otherwise.
pub async fn fetch_url(
    policy: &OutboundPolicy,
    url: &Url,
    limits: FetchLimits,
) -> Result<InputImage, FetchError> {
    let addrs = policy.resolve(url).await?;
    let mut builder = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(limits.timeout)
        .no_proxy();
    if let Some(domain) = url.domain() {
        builder = builder.resolve_to_addrs(domain, &addrs);
    }
    let client = builder
        .build()
        .map_err(|e| FetchError::Transient(format!("http client: {e}")))?;

    let transport = |e: reqwest::Error| {
        let what = if e.is_timeout() {
            "timed out"
        } else {
            "failed"
        };
        FetchError::Transient(format!("fetching the input image {what}"))
    };
    let mut response = client
        .get(url.clone())
        .header(
            "accept",
            "image/png, image/jpeg, image/webp, image/heic, image/heif",
        )
        .header("user-agent", "imagegen-fetch/1")
        .send()
        .await
        .map_err(transport)?;

    let status = response.status();
    if status.is_redirection() {
        return Err(FetchError::Refused(
            ErrorCode::InvalidImageUrl,
            format!(
                "input image URL answered {} (a redirect); give the final URL",
                status.as_u16()
            ),
        ));
    }
    if status.as_u16() == 408 || status.as_u16() == 429 || status.is_server_error() {
        return Err(FetchError::Transient(format!(
            "input image URL answered {}",
            status.as_u16()
        )));
    }
    if !status.is_success() {
        return Err(FetchError::Refused(
            ErrorCode::InvalidImageUrl,
            format!("input image URL answered {}", status.as_u16()),
        ));
    }
    let too_large = || {
        FetchError::Refused(
            ErrorCode::PayloadTooLarge,
            format!("input image is larger than {} bytes", limits.max_bytes),
        )
    };
    if response
        .content_length()
        .is_some_and(|n| n > limits.max_bytes as u64)
    {
        return Err(too_large());
    }

    // The declared length can lie (or be absent), so count what actually arrives.
    let mut body = BytesMut::new();
    while let Some(chunk) = response.chunk().await.map_err(transport)? {
        if body.len() + chunk.len() > limits.max_bytes {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    accepted(body.freeze(), limits.max_bytes)
}

/// Read a tenant's upload and check it.
///
/// # Errors
/// [`FetchError::Refused`] when nothing was uploaded under the id or it is not an accepted
/// image; [`FetchError::Transient`] when the blob store fails.
pub async fn read_upload(
    blobs: &dyn BlobStore,
    tenant: &TenantId,
    id: &UploadId,
    max_bytes: usize,
) -> Result<InputImage, FetchError> {
    // The upload URL cannot limit what is PUT to it, so the size is checked before the read.
    let read = blobs
        .get_at_most(&id.blob_key(tenant), max_bytes)
        .await?
        .ok_or_else(|| {
            FetchError::Refused(
                ErrorCode::InvalidImageUrl,
                format!(
                    "nothing was uploaded as {}; PUT the image to the upload URL first",
                    id.as_str()
                ),
            )
        })?;
    match read {
        BoundedRead::Found(bytes) => accepted(bytes, max_bytes),
        BoundedRead::TooLarge { .. } => Err(FetchError::Refused(
            ErrorCode::PayloadTooLarge,
            format!("input image is larger than {max_bytes} bytes"),
        )),
    }
}

/// Load a job's reference image from wherever it lives.
///
/// # Errors
/// See [`fetch_url`] and [`read_upload`].
pub async fn load(
    source: &ImageSource,
    tenant: &TenantId,
    blobs: &dyn BlobStore,
    policy: &OutboundPolicy,
    limits: FetchLimits,
) -> Result<InputImage, FetchError> {
    match source {
        ImageSource::Url(url) => fetch_url(policy, url.as_url(), limits).await,
        ImageSource::Upload(id) => read_upload(blobs, tenant, id, limits.max_bytes).await,
    }
}

/// What can be checked before a job is accepted, without fetching a URL: a URL's address must
/// pass the guard, and an upload must exist and be an accepted image.
///
/// # Errors
/// [`FetchError::Refused`] for a source the job could never use.
pub async fn check_at_submit(
    source: &ImageSource,
    tenant: &TenantId,
    blobs: &dyn BlobStore,
    policy: &OutboundPolicy,
    max_bytes: usize,
) -> Result<(), FetchError> {
    match source {
        ImageSource::Url(url) => match policy.resolve(url.as_url()).await {
            // A name that does not resolve now may resolve in a moment: DNS failures are not
            // the client's fault, so the worker decides when it fetches.
            Ok(_) | Err(GuardError::Unresolvable) => Ok(()),
            Err(e) => Err(e.into()),
        },
        ImageSource::Upload(id) => read_upload(blobs, tenant, id, max_bytes).await.map(|_| ()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sniffing_knows_the_five_accepted_types_by_their_bytes() {
        let webp = b"RIFF\x10\x00\x00\x00WEBPVP8 ";
        let heic = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00";
        let heif = b"\x00\x00\x00\x18ftypmif1\x00\x00\x00\x00";

        assert_eq!(sniff(b"\x89PNG\r\n\x1a\n\0\0"), Some("image/png"));
        assert_eq!(sniff(&[0xff, 0xd8, 0xff, 0xe0]), Some("image/jpeg"));
        assert_eq!(sniff(webp), Some("image/webp"));
        assert_eq!(sniff(heic), Some("image/heic"));
        assert_eq!(sniff(heif), Some("image/heif"));
    }

    #[test]
    fn sniffing_refuses_other_formats_and_declared_types_do_not_matter() {
        let avif = b"\x00\x00\x00\x18ftypavif\x00\x00\x00\x00";

        assert_eq!(sniff(b"GIF89a\x01\x00"), None);
        assert_eq!(sniff(b"<svg xmlns="), None);
        assert_eq!(sniff(avif), None);
        assert_eq!(sniff(b"RIFF\x10\x00\x00\x00WAVEfmt "), None);
        assert_eq!(sniff(b""), None);
    }

    #[test]
    fn image_source_accepts_urls_and_upload_references_only() {
        let id = UploadId::generate();

        let upload = ImageSource::parse(&id.reference(), false);
        let url = ImageSource::parse("https://img.example.com/a.png", false);

        assert_eq!(upload, Ok(ImageSource::Upload(id.clone())));
        assert!(matches!(url, Ok(ImageSource::Url(_))));
        assert!(ImageSource::parse("upload://../../etc/passwd", false).is_err());
        assert!(ImageSource::parse("upload://upl_nope", false).is_err());
        assert!(ImageSource::parse("file:///etc/passwd", true).is_err());
        assert_eq!(
            ImageSource::parse(&id.reference(), false).map(|s| s.as_str()),
            Ok(id.reference())
        );
    }

    #[test]
    fn an_oversized_or_unknown_body_is_refused_not_retried() {
        let png = Bytes::from_static(b"\x89PNG\r\n\x1a\n0123456789");

        assert!(accepted(png.clone(), 1024).is_ok());
        assert!(matches!(
            accepted(png, 8),
            Err(FetchError::Refused(ErrorCode::PayloadTooLarge, _))
        ));
        assert!(matches!(
            accepted(Bytes::from_static(b"GIF89a"), 1024),
            Err(FetchError::Refused(ErrorCode::UnsupportedImageType, _))
        ));
    }
}
