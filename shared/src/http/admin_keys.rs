//! `/v1/admin/keys` and `/v1/admin/quota-groups`: the upstream key pool, for operators only
//! (the admin token, never a tenant key). Secrets go in and never come out.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::{Json, Router};
use secrecy::SecretString;
use serde::{Deserialize, Deserializer};
use serde_json::json;

use super::auth::Operator;
use super::error::ApiError;
use super::extract::ApiJson;
use super::routes::HttpState;
use crate::domain::{ErrorCode, KeyState, Limits, QuotaGroupId, UpstreamKeyId};
use crate::service::keys::{self, KeyAdminError, KeyUpdate, NewKey};

/// The routes, merged into the main router.
pub fn routes() -> Router<HttpState> {
    Router::new()
        .route("/v1/admin/quota-groups", get(list_groups))
        .route(
            "/v1/admin/quota-groups/{group}",
            put(put_group).delete(delete_group),
        )
        .route("/v1/admin/keys", get(list_keys).post(add_key))
        .route(
            "/v1/admin/keys/{key}",
            get(get_key)
                .patch(update_key)
                .delete(delete_key)
                .post(key_action),
        )
}

impl From<KeyAdminError> for ApiError {
    fn from(e: KeyAdminError) -> Self {
        match e {
            KeyAdminError::NotFound => ApiError::NotFound,
            KeyAdminError::Exists => ApiError::Conflict(ErrorCode::ResourceExists, e.to_string()),
            KeyAdminError::GroupInUse => {
                ApiError::Conflict(ErrorCode::ResourceInUse, e.to_string())
            }
            KeyAdminError::UnknownGroup(_) | KeyAdminError::Invalid(_) => {
                ApiError::bad(ErrorCode::InvalidRequest, e.to_string())
            }
            KeyAdminError::Port(e) => e.into(),
        }
    }
}

fn key_id(raw: &str) -> Result<UpstreamKeyId, ApiError> {
    UpstreamKeyId::parse(raw).map_err(|_| ApiError::NotFound)
}

fn group_id(raw: &str) -> Result<QuotaGroupId, ApiError> {
    QuotaGroupId::parse(raw).map_err(|e| ApiError::bad(ErrorCode::InvalidRequest, e.to_string()))
}

/// Tells a field sent as `null` (`Some(None)`) from one left out (`None`).
fn present<'de, D, T>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(deserializer).map(Some)
}

/// Reads a secret straight into a wrapper that cannot be printed by accident.
fn secret<'de, D: Deserializer<'de>>(deserializer: D) -> Result<SecretString, D::Error> {
    String::deserialize(deserializer).map(SecretString::from)
}

fn optional_secret<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<SecretString>, D::Error> {
    Option::<String>::deserialize(deserializer).map(|s| s.map(SecretString::from))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct GroupBody {
    requests_per_minute: Option<u32>,
    concurrency: Option<u32>,
}

async fn put_group(
    State(state): State<HttpState>,
    _operator: Operator,
    Path(group): Path<String>,
    ApiJson(body): ApiJson<GroupBody>,
) -> Result<Response, ApiError> {
    let id = group_id(&group)?;
    let limits = Limits {
        requests_per_minute: body.requests_per_minute,
        concurrency: body.concurrency,
    };
    let group = keys::put_group(&state.app, id, limits).await?;
    Ok(Json(group).into_response())
}

async fn list_groups(
    State(state): State<HttpState>,
    _operator: Operator,
) -> Result<Response, ApiError> {
    let groups = state.app.keys.list_groups().await?;
    Ok(Json(json!({ "groups": groups })).into_response())
}

async fn delete_group(
    State(state): State<HttpState>,
    _operator: Operator,
    Path(group): Path<String>,
) -> Result<Response, ApiError> {
    let id = QuotaGroupId::parse(&group).map_err(|_| ApiError::NotFound)?;
    keys::delete_group(&state.app, &id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct NewKeyBody {
    id: Option<String>,
    group: String,
    #[serde(deserialize_with = "secret")]
    secret: SecretString,
    label: Option<String>,
    requests_per_minute: Option<u32>,
    concurrency: Option<u32>,
}

async fn add_key(
    State(state): State<HttpState>,
    _operator: Operator,
    ApiJson(body): ApiJson<NewKeyBody>,
) -> Result<Response, ApiError> {
    let id = body
        .id
        .as_deref()
        .map(UpstreamKeyId::parse)
        .transpose()
        .map_err(|e| ApiError::bad(ErrorCode::InvalidRequest, e.to_string()))?;
    let new = NewKey {
        id,
        group: group_id(&body.group)?,
        secret: body.secret,
        label: body.label,
        limits: Limits {
            requests_per_minute: body.requests_per_minute,
            concurrency: body.concurrency,
        },
    };
    let key = keys::add_key(&state.app, new).await?;
    let view = keys::views(&state.app, vec![key]).await?;
    Ok((StatusCode::CREATED, Json(&view[0])).into_response())
}

async fn list_keys(
    State(state): State<HttpState>,
    _operator: Operator,
) -> Result<Response, ApiError> {
    let all = state.app.keys.list_keys().await?;
    let views = keys::views(&state.app, all).await?;
    Ok(Json(json!({ "keys": views })).into_response())
}

async fn get_key(
    State(state): State<HttpState>,
    _operator: Operator,
    Path(key): Path<String>,
) -> Result<Response, ApiError> {
    let id = key_id(&key)?;
    let key = state
        .app
        .keys
        .get_key(&id)
        .await?
        .ok_or(ApiError::NotFound)?;
    let view = keys::views(&state.app, vec![key]).await?;
    Ok(Json(&view[0]).into_response())
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct UpdateBody {
    #[serde(default, deserialize_with = "present")]
    label: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    requests_per_minute: Option<Option<u32>>,
    #[serde(default, deserialize_with = "present")]
    concurrency: Option<Option<u32>>,
    state: Option<KeyState>,
    #[serde(default, deserialize_with = "optional_secret")]
    secret: Option<SecretString>,
    /// Present only to refuse it with a clear message.
    group: Option<String>,
}

async fn update_key(
    State(state): State<HttpState>,
    _operator: Operator,
    Path(key): Path<String>,
    ApiJson(body): ApiJson<UpdateBody>,
) -> Result<Response, ApiError> {
    let id = key_id(&key)?;
    if body.group.is_some() {
        // Leases taken under the old group could not be given back to it.
        return Err(ApiError::bad(
            ErrorCode::InvalidRequest,
            "a key cannot move to another quota group; delete it and add it again",
        ));
    }
    let update = KeyUpdate {
        label: body.label,
        requests_per_minute: body.requests_per_minute,
        concurrency: body.concurrency,
        state: body.state,
        secret: body.secret,
    };
    let key = keys::update_key(&state.app, &id, update).await?;
    let view = keys::views(&state.app, vec![key]).await?;
    Ok(Json(&view[0]).into_response())
}

/// `POST /v1/admin/keys/{key}:disable` and `:enable`.
async fn key_action(
    State(state): State<HttpState>,
    _operator: Operator,
    Path(segment): Path<String>,
) -> Result<Response, ApiError> {
    let (raw, target) = if let Some(raw) = segment.strip_suffix(":disable") {
        (raw, KeyState::Disabled)
    } else if let Some(raw) = segment.strip_suffix(":enable") {
        (raw, KeyState::Enabled)
    } else {
        return Err(ApiError::NotFound);
    };
    let id = key_id(raw)?;
    let update = KeyUpdate {
        state: Some(target),
        ..KeyUpdate::default()
    };
    let key = keys::update_key(&state.app, &id, update).await?;
    let view = keys::views(&state.app, vec![key]).await?;
    Ok(Json(&view[0]).into_response())
}

async fn delete_key(
    State(state): State<HttpState>,
    _operator: Operator,
    Path(key): Path<String>,
) -> Result<Response, ApiError> {
    let id = key_id(&key)?;
    keys::delete_key(&state.app, &id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
