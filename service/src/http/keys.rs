//! The admin's API key endpoints: `POST /admin/keys`, `GET /admin/keys`,
//! `DELETE /admin/keys/{id}`.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::auth::authorize_admin;
use super::problem::{not_found, Problem, ProblemBody};
use super::transactions::{read_body, RequestError};
use super::ApiState;
use crate::domain::RuleError;
use crate::keys::{self, ApiKey, KeyId, RateLimit, Scope};
use crate::wire::now_ms;

/// The body of `POST /admin/keys`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct KeyRequest {
    /// The accounts the key may touch: account ids, prefixes ending in `*`
    /// (`shop-*`), or `*` for every account; 1 ..= 100 of them.
    #[schema(required = true, min_items = 1, max_items = 100)]
    accounts: Option<Vec<String>>,
    /// Requests per second the key may make on average; no limit when
    /// absent (and `burst` absent too).
    #[schema(value_type = Option<u64>, minimum = 1, maximum = 1000000)]
    rate_per_s: Option<serde_json::Number>,
    /// How many requests may come at once; `rate_per_s` when absent.
    #[schema(value_type = Option<u64>, minimum = 1, maximum = 1000000)]
    burst: Option<serde_json::Number>,
}

/// Reads a limit field: a whole number, else out of range.
fn limit_field(
    number: Option<&serde_json::Number>,
    field: &'static str,
) -> Result<Option<u64>, RuleError> {
    number
        .map(|n| n.as_u64().ok_or(RuleError::LimitOutOfRange { field }))
        .transpose()
}

impl KeyRequest {
    /// The key's scope and limit, or the rule the request breaks.
    fn into_policy(self) -> Result<(Scope, Option<RateLimit>), RuleError> {
        let accounts = self.accounts.ok_or(RuleError::Missing("accounts"))?;
        let scope = Scope::parse(&accounts)?;
        let limit = RateLimit::parse(
            limit_field(self.rate_per_s.as_ref(), "rate_per_s")?,
            limit_field(self.burst.as_ref(), "burst")?,
        )?;
        Ok((scope, limit))
    }
}

/// Decodes and checks the body of `POST /admin/keys` (raw bytes): the
/// whole of what the API checks before it makes a key. Public for the fuzzer.
pub fn decode_key_request(body: &[u8]) -> Result<(Scope, Option<RateLimit>), RequestError> {
    let request: KeyRequest = super::from_json_object(body).map_err(RequestError::Malformed)?;
    request.into_policy().map_err(RequestError::Rule)
}

/// A key as `GET /admin/keys` lists it: never its secret.
#[derive(Serialize, ToSchema)]
pub(super) struct KeyView {
    /// The key's public id (16 hex digits).
    #[schema(value_type = String, pattern = "^[0-9a-f]{16}$")]
    id: KeyId,
    /// The account patterns it may touch.
    accounts: Vec<String>,
    /// Requests per second; `null`: no limit.
    rate_per_s: Option<u64>,
    /// Requests at once; `null`: no limit.
    burst: Option<u64>,
    /// When it was made, milliseconds since 1970.
    created_at_ms: u64,
}

impl From<&ApiKey> for KeyView {
    fn from(key: &ApiKey) -> Self {
        Self {
            id: key.id.clone(),
            accounts: key.scope.patterns(),
            rate_per_s: key.limit.map(|l| l.rate_per_s),
            burst: key.limit.map(|l| l.burst),
            created_at_ms: key.created_at_ms,
        }
    }
}

/// A new key with its secret: the only time the secret is shown.
#[derive(Serialize, ToSchema)]
pub(super) struct CreatedKey {
    #[serde(flatten)]
    key: KeyView,
    /// `txk_<id>_<64 hex digits>`: send it as `Authorization: Bearer <secret>`.
    /// Only its hash is kept; it cannot be shown again.
    secret: String,
}

/// All keys.
#[derive(Serialize, ToSchema)]
pub(super) struct KeyList {
    keys: Vec<KeyView>,
}

/// Make an API key (admin).
#[utoipa::path(
    post,
    path = "/admin/keys",
    tag = "keys",
    security(("admin_token" = [])),
    request_body(content = KeyRequest, content_type = "application/json"),
    responses(
        (status = 201, description = "The key and its secret, shown this once", body = CreatedKey,
            headers(("Cache-Control" = String, description = "no-store"))),
        (status = 400, description = "Not JSON of the expected shape", body = ProblemBody, content_type = "application/problem+json"),
        (status = 401, description = "No bearer token", body = ProblemBody, content_type = "application/problem+json",
            headers(("WWW-Authenticate" = String, description = "Bearer"))),
        (status = 403, description = "Wrong token, or no admin token configured", body = ProblemBody, content_type = "application/problem+json"),
        (status = 408, description = "The body arrived too slowly; nothing was done", body = ProblemBody, content_type = "application/problem+json"),
        (status = 413, description = "Body over 16 KiB", body = ProblemBody, content_type = "application/problem+json"),
        (status = 415, description = "Content-Type is not JSON", body = ProblemBody, content_type = "application/problem+json"),
        (status = 422, description = "A pattern, the rate or the burst breaks a rule", body = ProblemBody, content_type = "application/problem+json"),
        (status = 503, description = "Redis is unavailable", body = ProblemBody, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "seconds"))),
    )
)]
pub(super) async fn create_key(
    State(api): State<Arc<ApiState>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Problem> {
    authorize_admin(&api, &headers)?;
    let body = read_body(&api, &headers, body).await?;
    let (scope, limit) = decode_key_request(&body).map_err(Problem::request)?;
    // 64-bit ids clash about never; the store refuses one that does.
    for _ in 0..3 {
        let (id, secret) = keys::generate();
        let key = ApiKey {
            id,
            secret_hash: keys::hash_secret(&secret),
            scope: scope.clone(),
            limit,
            created_at_ms: now_ms(),
        };
        let created = api
            .store
            .create_key(&key)
            .await
            .map_err(|e| Problem::from_store(e, api.retry_after_secs))?;
        if created {
            tracing::info!(key = %key.id, accounts = ?key.scope.patterns(), ?limit, "api key created");
            let view = CreatedKey {
                key: KeyView::from(&key),
                secret,
            };
            let mut response = (StatusCode::CREATED, Json(view)).into_response();
            response
                .headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            return Ok(response);
        }
    }
    Err(Problem::unavailable(
        "could not make a key id that is not taken",
        api.retry_after_secs,
    ))
}

/// Every API key, without secrets (admin).
#[utoipa::path(
    get,
    path = "/admin/keys",
    tag = "keys",
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "The keys, by id", body = KeyList),
        (status = 401, description = "No bearer token", body = ProblemBody, content_type = "application/problem+json",
            headers(("WWW-Authenticate" = String, description = "Bearer"))),
        (status = 403, description = "Wrong token, or no admin token configured", body = ProblemBody, content_type = "application/problem+json"),
        (status = 503, description = "Redis is unavailable", body = ProblemBody, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "seconds"))),
    )
)]
pub(super) async fn list_keys(
    State(api): State<Arc<ApiState>>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    authorize_admin(&api, &headers)?;
    let keys = api
        .store
        .api_keys()
        .await
        .map_err(|e| Problem::from_store(e, api.retry_after_secs))?;
    let keys = keys.iter().map(KeyView::from).collect();
    Ok(Json(KeyList { keys }).into_response())
}

/// Revoke an API key (admin): every API process refuses it within 1 s.
#[utoipa::path(
    delete,
    path = "/admin/keys/{id}",
    tag = "keys",
    security(("admin_token" = [])),
    params(("id" = String, Path, description = "Key id", pattern = "^[0-9a-f]{16}$")),
    responses(
        (status = 204, description = "Revoked"),
        (status = 401, description = "No bearer token", body = ProblemBody, content_type = "application/problem+json",
            headers(("WWW-Authenticate" = String, description = "Bearer"))),
        (status = 403, description = "Wrong token, or no admin token configured", body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, description = "No such key", body = ProblemBody, content_type = "application/problem+json"),
        (status = 422, description = "Not a key id", body = ProblemBody, content_type = "application/problem+json"),
        (status = 503, description = "Redis is unavailable", body = ProblemBody, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "seconds"))),
    )
)]
pub(super) async fn delete_key(
    State(api): State<Arc<ApiState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    authorize_admin(&api, &headers)?;
    let id = KeyId::parse(&id).map_err(Problem::rule)?;
    let deleted = api
        .store
        .delete_key(&id)
        .await
        .map_err(|e| Problem::from_store(e, api.retry_after_secs))?;
    // This process refuses it at once; the others once their cache entry
    // is older than --key-cache-ms.
    api.keys.remove(&id);
    if deleted {
        tracing::info!(key = %id, "api key revoked");
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Err(not_found(format!("no API key {id}")))
    }
}
