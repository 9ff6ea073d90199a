//! `GET /balance/{account}` and the admin's `PUT /balance/{account}`.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::auth::{authenticate, authorize_admin, require_scope, spend};
use super::history::{balance_at, BalanceAtView, BalanceParams};
use super::problem::{not_found, Problem, ProblemBody};
use super::transactions::{read_body, with_quota};
use super::ApiState;
use crate::domain::{Account, AccountId, Asset, Balance, RuleError};

/// An account's money in minor units of its asset: its balance, what its
/// active holds keep of it (`pending`), and what may leave it
/// (`available = balance - pending - min_balance`).
#[derive(Serialize, ToSchema)]
pub(super) struct BalanceView {
    #[schema(value_type = String)]
    account: AccountId,
    #[schema(value_type = String, example = "USD/2")]
    asset: Asset,
    #[schema(value_type = i64, minimum = -9007199254740991_i64, maximum = 9007199254740991_i64)]
    balance: Balance,
    #[schema(maximum = 9007199254740991_u64)]
    pending: u64,
    #[schema(maximum = 9007199254740991_u64)]
    available: u64,
}

/// What `GET /balance/{account}` answers (documentation only): the money
/// now, or with `at` the balance then.
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
#[allow(dead_code)]
pub(super) enum BalanceAnswer {
    Now(BalanceView),
    At(BalanceAtView),
}

impl BalanceView {
    fn new(id: AccountId, account: &Account) -> Self {
        Self {
            account: id,
            asset: account.asset.clone(),
            balance: account.balance,
            pending: account.pending,
            available: account.available(),
        }
    }
}

/// An account's balance (an API key whose scope matches the account); with
/// `at`, its balance at that time, from its history.
#[utoipa::path(
    get,
    path = "/balance/{account}",
    tag = "balances",
    security(("api_key" = [])),
    params(("account" = String, Path, description = "Account id", pattern = "^[A-Za-z0-9_.:-]{1,64}$"), BalanceParams),
    responses(
        (status = 200, description = "The balance, pending and available, in minor units; with `at`, the balance then", body = BalanceAnswer,
            headers(("RateLimit-Policy" = String, description = "a limited key's policy"), ("RateLimit" = String, description = "what a limited key has left"))),
        (status = 400, description = "A query parameter this endpoint does not take", body = ProblemBody, content_type = "application/problem+json"),
        (status = 401, description = "No API key, or an unknown, revoked or wrong one", body = ProblemBody, content_type = "application/problem+json",
            headers(("WWW-Authenticate" = String, description = "Bearer"))),
        (status = 403, description = "The key's scope does not match the account", body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, description = "No such account; with `at`, no history of the account at or before it", body = ProblemBody, content_type = "application/problem+json"),
        (status = 422, description = "Not a valid account id or time; `at` earlier than the history goes back (the detail names its oldest time), or no history is kept", body = ProblemBody, content_type = "application/problem+json"),
        (status = 429, description = "The key is over its rate limit", body = ProblemBody, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "seconds"), ("RateLimit-Policy" = String), ("RateLimit" = String))),
        (status = 503, description = "Redis is unavailable", body = ProblemBody, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "seconds"))),
    )
)]
pub(super) async fn get_balance(
    State(api): State<Arc<ApiState>>,
    Path(account): Path<String>,
    params: Result<Query<BalanceParams>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let key = authenticate(&api, &headers).await?;
    let account = AccountId::parse(&account).map_err(Problem::rule)?;
    let Query(params) = params.map_err(|e| Problem::malformed(e.body_text()))?;
    require_scope(&key, &account)?;
    let quota = spend(&api, &key).await?;
    if let Some(at) = &params.at {
        return Ok(with_quota(balance_at(&api, account, at).await?, quota));
    }
    let response = match api
        .store
        .account(&account)
        .await
        .map_err(|e| Problem::from_store(e, api.retry_after_secs))?
    {
        Some(found) => Json(BalanceView::new(account, &found)).into_response(),
        None => not_found(format!("no account {account}")).into_response(),
    };
    Ok(with_quota(response, quota))
}

/// The body of `PUT /balance/{account}`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct BalanceRequest {
    /// Minor units, -(2^53-1) ..= 2^53-1, within the account's bounds.
    #[schema(value_type = i64, minimum = -9007199254740991_i64, maximum = 9007199254740991_i64)]
    balance: serde_json::Number,
}

/// Set an account's balance (the seed's setter; an admin operation). A
/// missing account is made, of the default asset, with the default bounds.
#[utoipa::path(
    put,
    path = "/balance/{account}",
    tag = "balances",
    security(("admin_token" = [])),
    params(("account" = String, Path, description = "Account id", pattern = "^[A-Za-z0-9_.:-]{1,64}$")),
    request_body(content = BalanceRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "The balance is set", body = BalanceView),
        (status = 400, description = "Not JSON of the expected shape", body = ProblemBody, content_type = "application/problem+json"),
        (status = 401, description = "No bearer token", body = ProblemBody, content_type = "application/problem+json",
            headers(("WWW-Authenticate" = String, description = "Bearer"))),
        (status = 403, description = "Wrong token, or no admin token configured", body = ProblemBody, content_type = "application/problem+json"),
        (status = 408, description = "The body arrived too slowly; nothing was done", body = ProblemBody, content_type = "application/problem+json"),
        (status = 413, description = "Body over 16 KiB", body = ProblemBody, content_type = "application/problem+json"),
        (status = 415, description = "Content-Type is not JSON", body = ProblemBody, content_type = "application/problem+json"),
        (status = 422, description = "Not a valid account id or balance, a balance that leaves no room below the account's max_balance for the money in flight out of it, or one that less what its active holds keep is below its min_balance (nothing written)", body = ProblemBody, content_type = "application/problem+json"),
        (status = 503, description = "Redis is unavailable", body = ProblemBody, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "seconds"))),
    )
)]
pub(super) async fn put_balance(
    State(api): State<Arc<ApiState>>,
    Path(account): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Problem> {
    authorize_admin(&api, &headers)?;
    let account = AccountId::parse(&account).map_err(Problem::rule)?;
    let body = read_body(&api, &headers, body).await?;
    let request: BalanceRequest = super::from_json_object(&body).map_err(Problem::malformed)?;
    let balance = request
        .balance
        .as_i64()
        .ok_or(RuleError::BalanceOutOfRange)
        .and_then(Balance::new)
        .map_err(Problem::rule)?;
    let set = api
        .store
        .set_balance(&account, balance)
        .await
        .map_err(|e| Problem::from_store(e, api.retry_after_secs))?;
    let found = set.ensure_set().map_err(Problem::rule)?;
    Ok(Json(BalanceView::new(account, &found)).into_response())
}
