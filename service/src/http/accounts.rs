//! `PUT /accounts/{account}` (admin: make an account, or change its bounds
//! and metadata) and `GET /accounts/{account}` (a key that sees it).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::auth::{authenticate, authorize_admin, require_scope, spend};
use super::history::rfc3339;
use super::problem::{not_found, Problem, ProblemBody};
use super::transactions::{read_body, with_quota, RequestError};
use super::ApiState;
use crate::domain::{Account, AccountChange, AccountId, Asset, Balance, RuleError};
use crate::metadata::Metadata;
use crate::store::AccountPut;

/// An account: its asset, bounds and money, in minor units of its asset.
#[derive(Serialize, ToSchema)]
pub(super) struct AccountView {
    #[schema(value_type = String)]
    account: AccountId,
    #[schema(value_type = String, example = "USD/2")]
    asset: Asset,
    /// The lowest balance money leaving may make (below 0: an overdraft).
    #[schema(value_type = i64, minimum = -9007199254740991_i64, maximum = 9007199254740991_i64)]
    min_balance: Balance,
    /// The highest balance money coming in may make.
    #[schema(value_type = i64, minimum = -9007199254740991_i64, maximum = 9007199254740991_i64)]
    max_balance: Balance,
    #[schema(value_type = i64, minimum = -9007199254740991_i64, maximum = 9007199254740991_i64)]
    balance: Balance,
    /// What its active holds keep.
    #[schema(maximum = 9007199254740991_u64)]
    pending: u64,
    /// What may still leave it: balance - pending - min_balance (at most
    /// 2^53-1).
    #[schema(maximum = 9007199254740991_u64)]
    available: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<std::collections::BTreeMap<String, String>>)]
    metadata: Option<Metadata>,
    /// When it was made (RFC 3339, UTC).
    created_at: String,
}

impl AccountView {
    fn new(id: AccountId, account: Account) -> Self {
        Self {
            account: id,
            available: account.available(),
            asset: account.asset,
            min_balance: account.bounds.min(),
            max_balance: account.bounds.max(),
            balance: account.balance,
            pending: account.pending,
            metadata: (!account.metadata.is_empty()).then_some(account.metadata),
            created_at: rfc3339(account.created_ms),
        }
    }
}

/// The body of `PUT /accounts/{account}`: each field given replaces the
/// account's; left out, it keeps its value (its default on a new account).
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct AccountRequest {
    /// `^[A-Z][A-Z0-9_]{0,15}(/[0-9]{1,2})?$`; fixed once the account is made
    /// (default: the server's default asset).
    #[schema(pattern = "^[A-Z][A-Z0-9_]{0,15}(/[0-9]{1,2})?$", example = "USD/2")]
    asset: Option<String>,
    /// Default 0; -(2^53-1) for an account that funds others without limit.
    #[schema(value_type = Option<i64>, minimum = -9007199254740991_i64, maximum = 9007199254740991_i64)]
    min_balance: Option<serde_json::Number>,
    /// Default 2^53-1.
    #[schema(value_type = Option<i64>, minimum = -9007199254740991_i64, maximum = 9007199254740991_i64)]
    max_balance: Option<serde_json::Number>,
    /// A flat object of strings (`{}` removes it).
    metadata: Option<std::collections::BTreeMap<String, String>>,
}

fn bound(
    raw: Option<serde_json::Number>,
    field: &'static str,
) -> Result<Option<Balance>, RuleError> {
    raw.map(|n| {
        n.as_i64()
            .and_then(|n| Balance::new(n).ok())
            .ok_or(RuleError::BoundOutOfRange { field })
    })
    .transpose()
}

impl AccountRequest {
    /// The change asked; bounds that cross (given, or one given against
    /// the account's other) are refused by the store, in one place.
    fn change(self) -> Result<AccountChange, RuleError> {
        Ok(AccountChange {
            asset: self.asset.as_deref().map(Asset::parse).transpose()?,
            min_balance: bound(self.min_balance, "min_balance")?,
            max_balance: bound(self.max_balance, "max_balance")?,
            metadata: self.metadata.map(Metadata::try_from).transpose()?,
        })
    }
}

/// Reads a `PUT /accounts/{account}` body: `Err` with a 400 (`Malformed`:
/// not JSON of the shape) or a 422 (`Rule`: a value outside the rules),
/// as the handler answers them. Public for the fuzzer.
pub fn decode_account_request(body: &[u8]) -> Result<AccountChange, RequestError> {
    let request: AccountRequest = super::from_json_object(body).map_err(RequestError::Malformed)?;
    request.change().map_err(RequestError::Rule)
}

/// Make an account (balance 0), or change its bounds and metadata (an
/// admin operation). The same body again changes nothing.
#[utoipa::path(
    put,
    path = "/accounts/{account}",
    tag = "accounts",
    security(("admin_token" = [])),
    params(("account" = String, Path, description = "Account id", pattern = "^[A-Za-z0-9_.:-]{1,64}$")),
    request_body(content = AccountRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "The account existed: changed as asked, or already so (nothing written)", body = AccountView),
        (status = 201, description = "The account was made, with balance 0", body = AccountView),
        (status = 400, description = "Not JSON of the expected shape", body = ProblemBody, content_type = "application/problem+json"),
        (status = 401, description = "No bearer token", body = ProblemBody, content_type = "application/problem+json",
            headers(("WWW-Authenticate" = String, description = "Bearer"))),
        (status = 403, description = "Wrong token, or no admin token configured", body = ProblemBody, content_type = "application/problem+json"),
        (status = 408, description = "The body arrived too slowly; nothing was done", body = ProblemBody, content_type = "application/problem+json"),
        (status = 413, description = "Body over 16 KiB", body = ProblemBody, content_type = "application/problem+json"),
        (status = 415, description = "Content-Type is not JSON", body = ProblemBody, content_type = "application/problem+json"),
        (status = 422, description = "Not a valid account id, asset, bound or metadata; another asset than the account's; min_balance above max_balance; or bounds the balance would break, counting what holds keep and what is in flight (nothing written)", body = ProblemBody, content_type = "application/problem+json"),
        (status = 503, description = "Redis is unavailable", body = ProblemBody, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "seconds"))),
    )
)]
pub(super) async fn put_account(
    State(api): State<Arc<ApiState>>,
    Path(account): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Problem> {
    authorize_admin(&api, &headers)?;
    let account = AccountId::parse(&account).map_err(Problem::rule)?;
    let body = read_body(&api, &headers, body).await?;
    let change = decode_account_request(&body).map_err(Problem::request)?;
    let (put, found) = api
        .store
        .put_account(&account, &change)
        .await
        .map_err(|e| Problem::from_store(e, api.retry_after_secs))?
        .map_err(Problem::rule)?;
    let status = match put {
        AccountPut::Created => StatusCode::CREATED,
        AccountPut::Updated | AccountPut::Unchanged => StatusCode::OK,
    };
    Ok((status, Json(AccountView::new(account, found))).into_response())
}

/// An account (an API key whose scope matches it).
#[utoipa::path(
    get,
    path = "/accounts/{account}",
    tag = "accounts",
    security(("api_key" = [])),
    params(("account" = String, Path, description = "Account id", pattern = "^[A-Za-z0-9_.:-]{1,64}$")),
    responses(
        (status = 200, description = "The account", body = AccountView,
            headers(("RateLimit-Policy" = String, description = "a limited key's policy"), ("RateLimit" = String, description = "what a limited key has left"))),
        (status = 401, description = "No API key, or an unknown, revoked or wrong one", body = ProblemBody, content_type = "application/problem+json",
            headers(("WWW-Authenticate" = String, description = "Bearer"))),
        (status = 403, description = "The key's scope does not match the account", body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, description = "No such account", body = ProblemBody, content_type = "application/problem+json"),
        (status = 422, description = "Not a valid account id", body = ProblemBody, content_type = "application/problem+json"),
        (status = 429, description = "The key is over its rate limit", body = ProblemBody, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "seconds"), ("RateLimit-Policy" = String), ("RateLimit" = String))),
        (status = 503, description = "Redis is unavailable", body = ProblemBody, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "seconds"))),
    )
)]
pub(super) async fn get_account(
    State(api): State<Arc<ApiState>>,
    Path(account): Path<String>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let key = authenticate(&api, &headers).await?;
    let account = AccountId::parse(&account).map_err(Problem::rule)?;
    require_scope(&key, &account)?;
    let quota = spend(&api, &key).await?;
    let response = match api
        .store
        .account(&account)
        .await
        .map_err(|e| Problem::from_store(e, api.retry_after_secs))?
    {
        Some(found) => Json(AccountView::new(account, found)).into_response(),
        None => not_found(format!("no account {account}")).into_response(),
    };
    Ok(with_quota(response, quota))
}
