//! `GET /transactions/{id}`: where a transaction stands, and what a key may
//! see of it; the views every answer about a transaction is built from.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use super::auth::{authenticate, spend};
use super::problem::{not_found, Problem, ProblemBody};
use super::transactions::with_quota;
use super::ApiState;
use crate::domain::{
    AccountId, Asset, Binding, Metadata, Movement, Outcome, Postings, TxId, TxStatus,
};
use crate::keys::ApiKey;
use crate::store::{HoldPhase, TxRecord};

/// The state of a transaction as clients see it.
#[derive(Serialize, ToSchema)]
pub(super) struct TransactionView<'a> {
    id: &'a str,
    /// What was asked, to a key that sees the source only: the kind and
    /// the accounts (a postings transaction's are in `postings`).
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, example = "transfer")]
    pub(super) kind: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub(super) account: Option<AccountId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub(super) to: Option<AccountId>,
    /// The amount asked (a capture's may be less than its hold's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) amount: Option<u64>,
    /// The hold a capture or void ends.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub(super) hold: Option<TxId>,
    /// `pending` until a consumer applied or rejected it.
    #[schema(value_type = TxState)]
    pub(super) status: &'static str,
    /// Why it was rejected: insufficient_funds, unknown_account, balance_overflow.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) reason: Option<&'static str>,
    /// A rejected postings transaction: the 0-based index of the first
    /// posting that failed (nothing moved).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) posting: Option<u16>,
    /// The checked account's balance right after it was applied.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) balance_after: Option<i64>,
    /// A captured hold: the amount its capture moved.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) captured_amount: Option<u64>,
    /// The asset of the money: the asset of the account it was applied or
    /// rejected on (only `GET /transactions/{id}` answers it, once settled;
    /// none when that account did not exist).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, example = "USD/2")]
    pub(super) asset: Option<Asset>,
    /// The metadata it was posted with (only `GET /transactions/{id}`
    /// answers it, and only to a key that sees the source).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<std::collections::BTreeMap<String, String>>)]
    pub(super) metadata: Option<Metadata>,
    /// A postings transaction's postings, as posted (only `GET
    /// /transactions/{id}` answers them, to a key that sees the first
    /// posting's `from`).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Vec<super::transactions::PostingRequest>>)]
    pub(super) postings: Option<Postings>,
}

/// Where a transaction stands (documentation only). A hold, once applied,
/// is `held`, then `captured`, `voided` or `expired` (`capturing` while a
/// capture to an account in another Redis Cluster slot is under way).
#[derive(ToSchema)]
#[schema(rename_all = "lowercase")]
#[allow(dead_code)]
pub(super) enum TxState {
    Pending,
    Applied,
    Rejected,
    Held,
    Capturing,
    Captured,
    Voided,
    Expired,
}

pub(super) fn view(id: &TxId, status: TxStatus) -> TransactionView<'_> {
    let (reason, posting, balance_after) = match status {
        TxStatus::Pending => (None, None, None),
        TxStatus::Settled(Outcome::Applied { balance_after }) => {
            (None, None, Some(balance_after.minor_units()))
        }
        TxStatus::Settled(Outcome::Rejected { reason, posting }) => {
            (Some(reason.as_str()), posting, None)
        }
    };
    TransactionView {
        id: id.as_str(),
        kind: None,
        account: None,
        to: None,
        amount: None,
        hold: None,
        status: status.as_str(),
        reason,
        posting,
        balance_after,
        captured_amount: None,
        asset: None,
        metadata: None,
        postings: None,
    }
}

/// The view of an applied hold, in its phase.
impl TransactionView<'_> {
    /// What was asked: the kind, and for all but postings (whose postings
    /// say it) the account, `to` and amount; a capture's or void's hold.
    fn show_asked(&mut self, movement: &Movement) {
        self.kind = Some(movement.kind().as_str());
        if movement.postings().is_none() {
            self.account = Some(movement.account().clone());
            self.to = movement.to().cloned();
            self.amount = movement.amount().map(|amount| amount.minor_units());
        }
        self.hold = movement.ended_hold().cloned();
    }
}

fn hold_view(id: &TxId, status: TxStatus, phase: HoldPhase) -> TransactionView<'_> {
    let mut seen = view(id, status);
    seen.status = phase.as_str();
    if let HoldPhase::Captured { amount } = phase {
        seen.captured_amount = Some(amount);
    }
    seen
}

/// 202 while pending, 200 once settled; with the transaction's location.
pub(super) fn status_response(id: &TxId, status: TxStatus) -> Response {
    let code = match status {
        TxStatus::Pending => StatusCode::ACCEPTED,
        TxStatus::Settled(_) => StatusCode::OK,
    };
    let mut response = (code, Json(view(id, status))).into_response();
    if let Ok(location) = HeaderValue::from_str(&format!("/transactions/{id}")) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    response
}

/// What a key may see of a transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sight {
    /// The key's scope matches the checked account (the source, a postings
    /// transaction's first `from`): everything.
    Whole,
    /// It matches another `from` of a postings transaction: the status, why
    /// it was rejected and at which posting, not the first `from`'s balance
    /// or asset.
    Outcome,
    /// It matches only the destination of a transfer: the status, not the
    /// source's balance after it or why the source could not pay.
    StatusOnly,
    /// It matches neither: answered as an unknown id (no existence oracle).
    Nothing,
}

/// What `key` may see of the transaction of `binding` (none known: nothing).
fn sight(key: &ApiKey, binding: Option<&Binding>) -> Sight {
    let Some(movement) = binding.map(|binding| &binding.movement) else {
        return Sight::Nothing;
    };
    if key.scope.allows(movement.account()) {
        Sight::Whole
    } else if movement
        .sources()
        .into_iter()
        .any(|from| key.scope.allows(from))
    {
        Sight::Outcome
    } else if movement.to().is_some_and(|to| key.scope.allows(to)) {
        Sight::StatusOnly
    } else {
        Sight::Nothing
    }
}

/// Where a transaction stands. A key whose scope matches its account (the
/// source) sees everything; one that matches only a transfer's destination
/// sees the status; any other key gets 404, as for an unknown id.
#[utoipa::path(
    get,
    path = "/transactions/{id}",
    tag = "transactions",
    security(("api_key" = [])),
    params(("id" = String, Path, description = "Transaction id", pattern = "^[A-Za-z0-9_.:-]{1,64}$")),
    responses(
        (status = 200, description = "Pending, applied or rejected", body = TransactionView,
            headers(("RateLimit-Policy" = String, description = "a limited key's policy"), ("RateLimit" = String, description = "what a limited key has left"))),
        (status = 401, description = "No API key, or an unknown, revoked or wrong one", body = ProblemBody, content_type = "application/problem+json",
            headers(("WWW-Authenticate" = String, description = "Bearer"))),
        (status = 404, description = "No such transaction (never accepted, or its outcome has expired), or none the key's scope may see", body = ProblemBody, content_type = "application/problem+json"),
        (status = 422, description = "Not a valid id", body = ProblemBody, content_type = "application/problem+json"),
        (status = 429, description = "The key is over its rate limit", body = ProblemBody, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "seconds"), ("RateLimit-Policy" = String), ("RateLimit" = String))),
        (status = 503, description = "Redis is unavailable", body = ProblemBody, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "seconds"))),
    )
)]
pub(super) async fn get_transaction(
    State(api): State<Arc<ApiState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let key = authenticate(&api, &headers).await?;
    let id = TxId::parse(&id).map_err(Problem::rule)?;
    let quota = spend(&api, &key).await?;
    let found = api
        .store
        .lookup(&id)
        .await
        .map_err(|e| Problem::from_store(e, api.retry_after_secs))?;
    let unknown = || not_found(format!("no transaction {id}")).into_response();
    let Some(TxRecord {
        status,
        fingerprint,
        asset,
        posting_assets,
    }) = found
    else {
        return Ok(with_quota(unknown(), quota));
    };
    let binding = Binding::decode(&fingerprint);
    // An applied hold answers in its phase (held, captured, ...).
    let terms = binding.as_ref().and_then(Binding::hold_terms);
    let phase = match (status, terms) {
        (TxStatus::Settled(Outcome::Applied { .. }), Some(terms)) => api
            .store
            .hold_phase(&terms.account, &id)
            .await
            .map_err(|e| Problem::from_store(e, api.retry_after_secs))?,
        _ => None,
    };
    let view = |id, status| {
        let mut seen = match phase {
            Some(phase) => hold_view(id, status, phase),
            None => view(id, status),
        };
        seen.asset = asset.clone();
        seen
    };
    let response = match sight(&key, binding.as_ref()) {
        Sight::Whole => {
            let mut seen = view(&id, status);
            if let Some(binding) = binding {
                // Each posting's asset where the key sees its `from` (the
                // others' assets are theirs).
                seen.postings = binding.movement.postings().map(|postings| {
                    let visible: Vec<_> = postings
                        .iter()
                        .zip(&posting_assets)
                        .map(|(posting, asset)| {
                            asset.clone().filter(|_| key.scope.allows(&posting.from))
                        })
                        .collect();
                    postings.with_assets(&visible)
                });
                seen.show_asked(&binding.movement);
                seen.metadata = Some(binding.metadata).filter(|metadata| !metadata.is_empty());
            }
            Json(seen).into_response()
        }
        Sight::Outcome => {
            let mut seen = view(&id, status);
            seen.balance_after = None;
            seen.asset = None;
            Json(seen).into_response()
        }
        Sight::StatusOnly => {
            let mut seen = view(&id, status);
            seen.reason = None;
            seen.posting = None;
            seen.balance_after = None;
            // The source's asset is the source's: on a refusal it would
            // say what the hidden reason is about.
            seen.asset = None;
            Json(seen).into_response()
        }
        Sight::Nothing => unknown(),
    };
    Ok(with_quota(response, quota))
}
