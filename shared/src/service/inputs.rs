//! Reference images for jobs: handing out upload URLs, checking a source at submit, and
//! loading the bytes in the worker. Bytes go from the source straight to the provider call;
//! queue messages only ever carry the job id.

use chrono::{DateTime, Utc};
use serde::Serialize;
use tracing::info;

use crate::app::App;
use crate::domain::{ErrorCode, Job, JobError, TenantId};
use crate::fetch::{self, FetchError, ImageSource, UploadId};
use crate::ports::{InputImage, KeyOutcome, PortResult, ProviderError};

/// What `POST /v1/uploads` answers.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UploadTicket {
    pub upload_id: String,
    /// Put this in a job's `inputImageUrl`.
    pub input_image_url: String,
    /// PUT the image bytes here before submitting the job.
    pub upload_url: String,
    pub method: &'static str,
    pub expires_at: DateTime<Utc>,
    pub max_bytes: usize,
}

/// Make a new upload slot for `tenant` and a URL to fill it.
///
/// # Errors
/// [`crate::ports::PortError`] when the blob store cannot sign an upload URL.
pub async fn create_upload(app: &App, tenant: &TenantId) -> PortResult<UploadTicket> {
    let id = UploadId::generate();
    let signed = app
        .blobs
        .signed_put_url(&id.blob_key(tenant), app.settings.upload_url_ttl)
        .await?;
    info!(tenant_id = %tenant, upload_id = id.as_str(), "upload slot created");
    Ok(UploadTicket {
        upload_id: id.as_str().to_owned(),
        input_image_url: id.reference(),
        upload_url: signed.url,
        method: "PUT",
        expires_at: signed.expires_at,
        max_bytes: app.settings.input_images.max_bytes,
    })
}

/// Check what can be checked before the job is accepted.
///
/// # Errors
/// [`FetchError::Refused`] with a message for the client.
pub async fn check_source(
    app: &App,
    tenant: &TenantId,
    source: &ImageSource,
) -> Result<(), FetchError> {
    fetch::check_at_submit(
        source,
        tenant,
        app.blobs.as_ref(),
        &app.webhooks.policy(),
        app.settings.input_images.max_bytes,
    )
    .await
}

/// The job's reference image, if it has one, ready for the provider.
///
/// # Errors
/// A [`ProviderError`] that ends the job (`INVALID_INPUT`) for an image that can never be
/// used, or lets it retry (`UNAVAILABLE`) when the source failed for now.
pub async fn load_for(app: &App, job: &Job) -> Result<Option<InputImage>, ProviderError> {
    let Some(raw) = job.input_image_url.as_deref() else {
        return Ok(None);
    };
    let refused = |message: String| ProviderError {
        error: JobError::new(ErrorCode::InvalidInput, message),
        key_outcome: KeyOutcome::Neutral,
        retry_after: None,
    };
    // The stored value passed the same parse at submit; plain http was allowed then if it is
    // stored now.
    let source = ImageSource::parse(raw, true).map_err(|e| refused(e.to_string()))?;
    let loaded = fetch::load(
        &source,
        &job.tenant_id,
        app.blobs.as_ref(),
        &app.webhooks.policy(),
        app.settings.input_images,
    )
    .await;
    match loaded {
        Ok(image) => {
            info!(job_id = %job.id, bytes = image.bytes.len(), mime = %image.mime_type,
                "input image loaded");
            Ok(Some(image))
        }
        Err(FetchError::Refused(_, message)) => Err(refused(message)),
        Err(FetchError::Transient(message)) => Err(ProviderError {
            error: JobError::new(ErrorCode::InputImageUnavailable, message),
            key_outcome: KeyOutcome::Neutral,
            retry_after: None,
        }),
    }
}
