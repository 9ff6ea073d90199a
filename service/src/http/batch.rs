//! `POST /transactions/batch`: many transactions in one request, each
//! decoded, checked and admitted on its own (no all-or-nothing), answered
//! one result per item in order. The request as a whole is refused only
//! when it cannot be read, or when no item could be taken (503).

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use utoipa::ToSchema;

use super::auth::{authenticate, Quota};
use super::problem::{Problem, ProblemBody};
use super::status::view;
use super::transactions::{read_body_within, RequestError, TransactionRequest};
use super::ApiState;
use crate::admission::{Admitted, Answer, Posted, Refused};
use crate::domain::{Outcome, TxId, TxStatus};
use crate::limits::{MAX_BATCH_BODY_BYTES, MAX_BATCH_ITEMS};

/// The body of `POST /transactions/batch` (documentation; the handler reads
/// each item on its own, so one broken item does not refuse the others).
#[derive(ToSchema)]
#[allow(dead_code)]
pub(super) struct BatchRequest {
    /// 1 ..= 1000 items, each a transaction as `POST /transactions` takes
    /// it (TransactionRequest), with its `id`. Any JSON value is read: an
    /// item that is not a valid transaction is answered `invalid` with the
    /// reason, and the other items go on.
    #[schema(min_items = 1, max_items = 1000)]
    transactions: Vec<serde_json::Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchBody<'a> {
    #[serde(borrow)]
    transactions: Vec<&'a RawValue>,
}

/// The `id` of an item that could not be decoded, if it has a string one.
#[derive(Deserialize)]
struct IdOnly {
    id: Option<serde_json::Value>,
}

/// One item of a batch as decoded: its id as given (when it has a string
/// one) and the transaction, or why it cannot be one.
#[derive(Debug)]
pub struct BatchItem {
    pub id: Option<String>,
    pub transaction: Result<Posted, RequestError>,
}

/// Why a batch cannot be read at all.
#[derive(Debug, PartialEq, Eq)]
pub enum BatchError {
    /// Not JSON, or not `{"transactions": [...]}`: 400.
    Malformed(String),
    /// No items: 422.
    Empty,
    /// More than [`MAX_BATCH_ITEMS`]: 413.
    TooMany(usize),
}

/// Decodes the body of `POST /transactions/batch`: the batch's shape, then
/// each item as `POST /transactions` decodes one (an item must carry its
/// id). Public for the fuzzer.
pub fn decode_batch(body: &[u8]) -> Result<Vec<BatchItem>, BatchError> {
    let batch: BatchBody<'_> = super::from_json_object(body).map_err(BatchError::Malformed)?;
    match batch.transactions.len() {
        0 => return Err(BatchError::Empty),
        n if n > MAX_BATCH_ITEMS => return Err(BatchError::TooMany(n)),
        _ => {}
    }
    Ok(batch.transactions.into_iter().map(decode_item).collect())
}

fn decode_item(raw: &RawValue) -> BatchItem {
    match super::from_json_object::<TransactionRequest>(raw.get().as_bytes()) {
        Ok(request) => {
            let transaction = request.into_batch_item().map_err(RequestError::Rule);
            let id = transaction
                .as_ref()
                .ok()
                .map(|posted| posted.id().as_str().to_owned());
            let id = id.or_else(|| id_as_given(raw));
            BatchItem { id, transaction }
        }
        Err(e) => BatchItem {
            id: id_as_given(raw),
            transaction: Err(RequestError::Malformed(e)),
        },
    }
}

fn id_as_given(raw: &RawValue) -> Option<String> {
    // Only an object names an id (an array would be read by position).
    match super::from_json_object::<IdOnly>(raw.get().as_bytes())
        .ok()?
        .id?
    {
        serde_json::Value::String(id) => Some(id),
        _ => None,
    }
}

/// What happened to one item, as the single endpoint would have said it.
#[derive(Serialize, ToSchema, Debug, Clone)]
pub(super) struct ItemResult {
    /// The item's id as given (null when it has no string id).
    #[schema(required = true)]
    id: Option<String>,
    status: ItemStatus,
    /// rejected: why (insufficient_funds, ...); invalid: the rule broken;
    /// forbidden, conflict, in_flight, unavailable: what happened.
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
    /// rejected postings: the 0-based index of the posting that failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    posting: Option<u16>,
    /// applied: the checked account's balance right after it.
    #[serde(skip_serializing_if = "Option::is_none")]
    balance_after: Option<i64>,
    /// in_flight, rate_limited, unavailable: retry the item after this many
    /// seconds, with the same id and body.
    #[serde(skip_serializing_if = "Option::is_none")]
    retry_after_s: Option<u64>,
    /// Unavailable because the consumers are too far behind (the batch is
    /// then `overloaded` as a whole when no item was taken).
    #[serde(skip)]
    shed: bool,
}

/// Where an item stands.
#[derive(Serialize, ToSchema, Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub(super) enum ItemStatus {
    /// Accepted: Kafka has it (or it was accepted before and is not settled).
    Pending,
    /// Accepted before and applied.
    Applied,
    /// Accepted before and rejected (reason).
    Rejected,
    /// The id is bound to another body: nothing was published.
    Conflict,
    /// The same transaction is being accepted by another request right now.
    InFlight,
    /// Not a valid transaction (reason): nothing was done.
    Invalid,
    /// The key's scope does not match `account`: nothing was done.
    Forbidden,
    /// Over the key's rate limit: nothing was done.
    RateLimited,
    /// Kafka or Redis could not take it: retry with the same id (a publish
    /// that failed may still land).
    Unavailable,
}

impl ItemStatus {
    #[cfg(test)]
    const ALL: [Self; 9] = [
        Self::Pending,
        Self::Applied,
        Self::Rejected,
        Self::Conflict,
        Self::InFlight,
        Self::Invalid,
        Self::Forbidden,
        Self::RateLimited,
        Self::Unavailable,
    ];

    /// Its name in the answer (serde's) and the metric's label.
    fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Applied => "applied",
            Self::Rejected => "rejected",
            Self::Conflict => "conflict",
            Self::InFlight => "in_flight",
            Self::Invalid => "invalid",
            Self::Forbidden => "forbidden",
            Self::RateLimited => "rate_limited",
            Self::Unavailable => "unavailable",
        }
    }
}

/// The answer of `POST /transactions/batch`.
#[derive(Serialize, ToSchema)]
pub(super) struct BatchAnswer {
    /// One per item, in the request's order.
    results: Vec<ItemResult>,
}

impl ItemResult {
    fn new(id: Option<String>, status: ItemStatus) -> Self {
        Self {
            id,
            status,
            reason: None,
            posting: None,
            balance_after: None,
            retry_after_s: None,
            shed: false,
        }
    }

    fn because(mut self, reason: impl Into<String>) -> Self {
        self.reason = Some(reason.into());
        self
    }

    fn retry_after(mut self, secs: u64) -> Self {
        self.retry_after_s = Some(secs);
        self
    }

    fn of_status(id: &TxId, status: TxStatus) -> Self {
        let seen = view(id, status);
        let item_status = match status {
            TxStatus::Pending => ItemStatus::Pending,
            TxStatus::Settled(Outcome::Applied { .. }) => ItemStatus::Applied,
            TxStatus::Settled(Outcome::Rejected { .. }) => ItemStatus::Rejected,
        };
        let mut result = Self::new(Some(id.as_str().to_owned()), item_status);
        result.reason = seen.reason.map(str::to_owned);
        result.posting = seen.posting;
        result.balance_after = seen.balance_after;
        result
    }

    /// The result of the item of transaction `id` that admission answered.
    fn of_answer(id: &TxId, answer: Answer, rate_retry_s: u64, retry_s: u64) -> Self {
        let refused = match answer {
            Ok(status) => return Self::of_status(id, status),
            Err(refused) => refused,
        };
        let id = Some(id.as_str().to_owned());
        let detail = refused.to_string();
        match refused {
            Refused::Invalid(_) => Self::new(id, ItemStatus::Invalid).because(detail),
            Refused::Forbidden { .. } => Self::new(id, ItemStatus::Forbidden).because(detail),
            Refused::HoldUnreadable(e) => {
                tracing::warn!(error = %e, "redis unavailable for a batch's holds");
                Self::new(id, ItemStatus::Unavailable)
                    .because(detail)
                    .retry_after(retry_s)
            }
            Refused::Conflict(_) => Self::new(id, ItemStatus::Conflict).because(detail),
            Refused::InFlight(_) => Self::new(id, ItemStatus::InFlight)
                .because(detail)
                .retry_after(1),
            Refused::RateLimited => {
                Self::new(id, ItemStatus::RateLimited).retry_after(rate_retry_s)
            }
            Refused::Redis(e) => {
                tracing::warn!(error = %e, "redis unavailable for a batch");
                Self::new(id, ItemStatus::Unavailable)
                    .because(detail)
                    .retry_after(retry_s)
            }
            Refused::Kafka(e) => {
                tracing::warn!(error = %e, "publish failed");
                Self::new(id, ItemStatus::Unavailable)
                    .because(detail)
                    .retry_after(retry_s)
            }
            Refused::Backlog(_) => Self {
                shed: true,
                ..Self::new(id, ItemStatus::Unavailable)
                    .because(detail)
                    .retry_after(retry_s)
            },
            Refused::QueueFull | Refused::BindingLost(_) | Refused::Internal(_) => {
                Self::new(id, ItemStatus::Unavailable)
                    .because(detail)
                    .retry_after(retry_s)
            }
        }
    }

    fn is_unavailable(&self) -> bool {
        self.status == ItemStatus::Unavailable
    }

    /// Whether the item was valid and in the key's scope, so that taking it
    /// was tried (whatever came of it).
    fn was_tried(&self) -> bool {
        !matches!(self.status, ItemStatus::Invalid | ItemStatus::Forbidden)
    }
}

/// Submit up to 1000 money movements at once; each item is what `POST
/// /transactions` takes, with its `id`. Items are independent: each is
/// checked, claimed and published on its own, and one refused item does
/// not refuse the others. The rate limit counts items; each item's
/// `account` must be in the key's scope.
#[utoipa::path(
    post,
    path = "/transactions/batch",
    tag = "transactions",
    security(("api_key" = [])),
    request_body(content = BatchRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "One result per item, in order", body = BatchAnswer,
            headers(("RateLimit-Policy" = String, description = "a limited key's policy"), ("RateLimit" = String, description = "what a limited key has left"),
                ("Retry-After" = u64, description = "seconds, when an item is rate_limited or unavailable"))),
        (status = 400, description = "Not JSON, or not `{\"transactions\": [...]}`", body = ProblemBody, content_type = "application/problem+json"),
        (status = 401, description = "No API key, or an unknown, revoked or wrong one; nothing was done", body = ProblemBody, content_type = "application/problem+json",
            headers(("WWW-Authenticate" = String, description = "Bearer"))),
        (status = 408, description = "The body arrived too slowly; nothing was done", body = ProblemBody, content_type = "application/problem+json"),
        (status = 413, description = "Body over 1000 KiB, or more than 1000 items; nothing was done", body = ProblemBody, content_type = "application/problem+json"),
        (status = 415, description = "Content-Type is not JSON", body = ProblemBody, content_type = "application/problem+json"),
        (status = 422, description = "No items; nothing was done", body = ProblemBody, content_type = "application/problem+json"),
        (status = 503, description = "No item could be taken (Kafka or Redis unavailable); retry the batch after Retry-After seconds with the same ids", body = ProblemBody, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "seconds"))),
    )
)]
pub(super) async fn post_batch(
    State(api): State<Arc<ApiState>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Problem> {
    // As for one transaction: the key is checked again once the body is in.
    authenticate(&api, &headers).await?;
    let body = read_body_within(&api, &headers, body, MAX_BATCH_BODY_BYTES).await?;
    let key = authenticate(&api, &headers).await?;
    let items = decode_batch(&body).map_err(batch_problem)?;
    let (results, ids, posted) = sort_decoded(items);
    let Admitted { answers, quota } = api.admission.admit(key.clone(), posted).await;
    let quota = quota.map(|(limit, verdict)| Quota::new(limit, verdict));
    let rate_retry_s = quota.as_ref().map_or(1, Quota::retry_after_secs);
    let mut answered = ids
        .iter()
        .zip(answers)
        .map(|(id, answer)| ItemResult::of_answer(id, answer, rate_retry_s, api.retry_after_secs));
    let results: Vec<ItemResult> = results
        .into_iter()
        .map(|result| match result {
            Some(result) => result,
            None => answered.next().expect("one answer per item admitted"),
        })
        .collect();

    if none_taken(&results) {
        let problem = match results.iter().any(|result| result.shed) {
            true => Problem::overloaded(
                "the consumers are too far behind: no item was taken; retry the batch with the same ids",
                api.retry_after_secs,
            ),
            false => Problem::unavailable(
                "no item of the batch could be taken (Kafka or Redis is unavailable); retry it with the same ids",
                api.retry_after_secs,
            ),
        };
        return Err(problem.with_headers(quota.iter().flat_map(Quota::headers)));
    }
    count_items(&results);
    let retry = results
        .iter()
        .filter_map(|result| match result.status {
            ItemStatus::RateLimited | ItemStatus::Unavailable => result.retry_after_s,
            _ => None,
        })
        .max();
    let mut response = (StatusCode::OK, Json(BatchAnswer { results })).into_response();
    let fields = response.headers_mut();
    if let Some(secs) = retry {
        fields.insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    fields.extend(quota.iter().flat_map(Quota::headers));
    Ok(response)
}

/// Each item's result when it could not be decoded (`None` for the others),
/// and the ids and requests of the others, to admit.
fn sort_decoded(items: Vec<BatchItem>) -> (Vec<Option<ItemResult>>, Vec<TxId>, Vec<Posted>) {
    let mut results = Vec::with_capacity(items.len());
    let mut ids = Vec::new();
    let mut posted = Vec::new();
    for item in items {
        let invalid = |reason: String| {
            Some(ItemResult::new(item.id.clone(), ItemStatus::Invalid).because(reason))
        };
        match item.transaction {
            Ok(transaction) => {
                results.push(None);
                ids.push(transaction.id().clone());
                posted.push(transaction);
            }
            Err(RequestError::Malformed(detail)) => results.push(invalid(detail)),
            Err(RequestError::Rule(rule)) => results.push(invalid(rule.to_string())),
        }
    }
    (results, ids, posted)
}

/// Of the items that were valid and in scope, none could be taken: the
/// request as a whole is unavailable (retried with the same ids).
fn none_taken(results: &[ItemResult]) -> bool {
    let mut tried = results
        .iter()
        .filter(|result| result.was_tried())
        .peekable();
    tried.peek().is_some() && tried.all(ItemResult::is_unavailable)
}

/// The problem of a batch that cannot be read.
fn batch_problem(error: BatchError) -> Problem {
    match error {
        BatchError::Malformed(detail) => Problem::malformed(detail),
        BatchError::Empty => Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "rule-broken",
            "A rule of the request is broken",
            "`transactions` needs at least one item",
        ),
        BatchError::TooMany(n) => Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too-large",
            "The body is too large",
            format!("{n} items; a batch takes at most {MAX_BATCH_ITEMS}"),
        ),
    }
}

/// Counts the items of a batch by what happened to them.
fn count_items(results: &[ItemResult]) {
    let mut counts: HashMap<ItemStatus, u64> = HashMap::new();
    for result in results {
        *counts.entry(result.status).or_default() += 1;
    }
    for (status, count) in &counts {
        metrics::counter!("txengine_batch_items_total", "status" => status.as_str())
            .increment(*count);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An item's status has one name: the answer's (serde) is the metric's.
    #[test]
    fn each_item_status_is_named_once() {
        for status in ItemStatus::ALL {
            let json = serde_json::to_value(status).unwrap();
            assert_eq!(json.as_str(), Some(status.as_str()), "{status:?}");
        }
    }
}
