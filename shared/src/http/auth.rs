//! Tenant and operator authentication.

use axum::extract::FromRequestParts;
use axum::http::{header, request::Parts, HeaderMap};

use super::error::ApiError;
use super::routes::HttpState;
use crate::domain::{hash_api_key, Tenant};

/// The key a request carries: `Authorization: Bearer <key>` or `X-Api-Key: <key>`.
fn presented_key(headers: &HeaderMap) -> Option<&str> {
    if let Some(value) = headers.get(header::AUTHORIZATION) {
        let value = value.to_str().ok()?;
        let (scheme, key) = value.split_once(' ')?;
        return scheme.eq_ignore_ascii_case("bearer").then(|| key.trim());
    }
    headers.get("x-api-key")?.to_str().ok().map(str::trim)
}

/// The calling tenant. Every missing, malformed or unknown key gets the same 401.
pub struct Caller(pub Tenant);

/// Find the tenant whose key `headers` carry.
///
/// # Errors
/// [`ApiError::Unauthorized`] for any missing or unknown key; `Unavailable` if the store fails.
pub async fn authenticate(state: &HttpState, headers: &HeaderMap) -> Result<Tenant, ApiError> {
    let key = presented_key(headers)
        .filter(|k| !k.is_empty())
        .ok_or(ApiError::Unauthorized)?;
    state
        .app
        .store
        .tenant_by_key_hash(&hash_api_key(key))
        .await?
        .ok_or(ApiError::Unauthorized)
}

impl FromRequestParts<HttpState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &HttpState,
    ) -> Result<Self, Self::Rejection> {
        authenticate(state, &parts.headers).await.map(Caller)
    }
}

/// An operator, holding the admin token (a credential separate from tenant keys).
pub struct Operator;

impl FromRequestParts<HttpState> for Operator {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &HttpState,
    ) -> Result<Self, Self::Rejection> {
        let expected = state
            .admin_token_hash
            .as_deref()
            .ok_or(ApiError::Unauthorized)?;
        let key = presented_key(&parts.headers).ok_or(ApiError::Unauthorized)?;
        // Comparing hashes keeps the comparison's timing independent of the token.
        if hash_api_key(key) == expected {
            Ok(Operator)
        } else {
            Err(ApiError::Unauthorized)
        }
    }
}
