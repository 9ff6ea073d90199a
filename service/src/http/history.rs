//! `GET /accounts/{account}/transactions` (an account's history, newest
//! first, by page) and `GET /balance/{account}?at=` (its balance at a time),
//! both read from the history the money scripts write.

use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use utoipa::{IntoParams, ToSchema};

use super::auth::{authenticate, require_scope, spend};
use super::problem::{not_found, Problem, ProblemBody};
use super::transactions::with_quota;
use super::ApiState;
use crate::domain::{AccountId, Metadata};
use crate::limits::{DEFAULT_HISTORY_PAGE, MAX_HISTORY_PAGE};
use crate::store::{is_position, BalanceAt, HistoryEntry, HistoryQuery};

/// The query of `GET /accounts/{account}/transactions`.
#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct HistoryParams {
    /// Entries in the page: 1 ..= 1000 (default 100).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 1000)]
    limit: Option<String>,
    /// Where the page starts: a previous page's `next_cursor` (opaque).
    #[param(pattern = "^[0-9]{1,20}-[0-9]{1,20}$")]
    cursor: Option<String>,
    /// Only entries at or after this time (RFC 3339).
    #[param(format = DateTime)]
    since: Option<String>,
    /// Only entries before this time (RFC 3339).
    #[param(format = DateTime)]
    until: Option<String>,
}

/// One entry of an account's history: a transaction (or a step of one, or
/// a hold's change) as it touched this account.
#[derive(Serialize, ToSchema)]
pub(super) struct EntryView {
    /// The transaction; absent for an admin balance set.
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<String>,
    /// debit, credit, transfer, hold, capture, void, expire, postings, or
    /// set (the admin's setter: its amount is the balance set).
    #[serde(rename = "type")]
    kind: &'static str,
    /// Minor units moved; for a set, the balance set (which may be below 0).
    amount: i64,
    /// This account's signed change (0 when nothing moved).
    delta: i64,
    /// The other account of a transfer, a posting, or a capture to another
    /// account.
    #[serde(skip_serializing_if = "Option::is_none")]
    counterparty: Option<String>,
    /// applied or rejected; a transfer between Redis Cluster slots as its
    /// steps: debited, credited, released, refunded; a hold's changes:
    /// held, capturing, captured, voided, expired.
    status: &'static str,
    /// Why it was rejected.
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
    /// This account's balance right after it.
    balance_after: i64,
    /// When it was applied (Redis's clock).
    at: String,
    /// The hold this entry is of (a hold, or its capture, void, expiry).
    #[serde(skip_serializing_if = "Option::is_none")]
    hold: Option<String>,
    /// A postings transaction's entry: the 0-based index of its posting
    /// (of the one that failed, on a rejection).
    #[serde(skip_serializing_if = "Option::is_none")]
    posting: Option<u16>,
    /// The transaction's metadata.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<std::collections::BTreeMap<String, String>>)]
    metadata: Option<Metadata>,
}

/// A page of an account's history, newest first.
#[derive(Serialize, ToSchema)]
pub(super) struct HistoryPage {
    #[schema(value_type = String)]
    account: AccountId,
    entries: Vec<EntryView>,
    /// The cursor of the next (older) page; absent on the last one.
    #[serde(skip_serializing_if = "Option::is_none")]
    next_cursor: Option<String>,
}

/// An account's history (an API key whose scope matches the account):
/// every transaction that touched it, newest first, with its balance after
/// each; replaying them in order gives its balance. Kept for
/// `--history-retention-secs`.
#[utoipa::path(
    get,
    path = "/accounts/{account}/transactions",
    tag = "balances",
    security(("api_key" = [])),
    params(("account" = String, Path, description = "Account id", pattern = "^[A-Za-z0-9_.:-]{1,64}$"), HistoryParams),
    responses(
        (status = 200, description = "A page of entries, newest first (empty for an account without history)", body = HistoryPage,
            headers(("RateLimit-Policy" = String, description = "a limited key's policy"), ("RateLimit" = String, description = "what a limited key has left"))),
        (status = 400, description = "A query parameter this endpoint does not take", body = ProblemBody, content_type = "application/problem+json"),
        (status = 401, description = "No API key, or an unknown, revoked or wrong one", body = ProblemBody, content_type = "application/problem+json",
            headers(("WWW-Authenticate" = String, description = "Bearer"))),
        (status = 403, description = "The key's scope does not match the account", body = ProblemBody, content_type = "application/problem+json"),
        (status = 422, description = "Not a valid account id, limit, cursor or time; or no history is kept", body = ProblemBody, content_type = "application/problem+json"),
        (status = 429, description = "The key is over its rate limit", body = ProblemBody, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "seconds"), ("RateLimit-Policy" = String), ("RateLimit" = String))),
        (status = 503, description = "Redis is unavailable", body = ProblemBody, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "seconds"))),
    )
)]
pub(super) async fn get_history(
    State(api): State<Arc<ApiState>>,
    Path(account): Path<String>,
    params: Result<Query<HistoryParams>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let key = authenticate(&api, &headers).await?;
    let account = AccountId::parse(&account).map_err(Problem::rule)?;
    let Query(params) = params.map_err(|e| Problem::malformed(e.body_text()))?;
    require_scope(&key, &account)?;
    let query = history_query(&params)?;
    refuse_when_off(&api)?;
    let quota = spend(&api, &key).await?;
    // One more than the page: whether an older page exists.
    let mut entries = api
        .store
        .history(
            &account,
            &HistoryQuery {
                limit: query.limit + 1,
                ..query.clone()
            },
        )
        .await
        .map_err(|e| Problem::from_store(e, api.retry_after_secs))?;
    let next_cursor = if entries.len() > query.limit {
        entries.truncate(query.limit);
        entries.last().map(|entry| entry.position.clone())
    } else {
        None
    };
    let page = HistoryPage {
        account,
        entries: entries.into_iter().map(entry_view).collect(),
        next_cursor,
    };
    Ok(with_quota(Json(page).into_response(), quota))
}

/// The query's bounds, each checked (422 naming the parameter).
fn history_query(params: &HistoryParams) -> Result<HistoryQuery, Problem> {
    let limit = match &params.limit {
        None => DEFAULT_HISTORY_PAGE,
        Some(limit) => limit
            .parse::<usize>()
            .ok()
            .filter(|limit| (1..=MAX_HISTORY_PAGE).contains(limit))
            .ok_or_else(|| {
                bad_query(format!(
                    "limit must be an integer from 1 to {MAX_HISTORY_PAGE}"
                ))
            })?,
    };
    if let Some(cursor) = &params.cursor {
        if !is_position(cursor) {
            return Err(bad_query(
                "cursor is not one this API gave (use a page's next_cursor)".into(),
            ));
        }
    }
    Ok(HistoryQuery {
        before: params.cursor.clone(),
        since_ms: params
            .since
            .as_deref()
            .map(|t| time_ms("since", t))
            .transpose()?,
        until_ms: params
            .until
            .as_deref()
            .map(|t| time_ms("until", t))
            .transpose()?,
        limit,
    })
}

/// The query of `GET /balance/{account}`.
#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct BalanceParams {
    /// The balance at this time (RFC 3339), from the account's history,
    /// instead of now.
    #[param(format = DateTime)]
    pub(super) at: Option<String>,
}

/// An account's balance at a time, from its history.
#[derive(Serialize, ToSchema)]
pub(super) struct BalanceAtView {
    #[schema(value_type = String)]
    account: AccountId,
    #[schema(minimum = -9007199254740991_i64, maximum = 9007199254740991_i64)]
    balance: i64,
    /// The time asked for.
    at: String,
    /// The time of the last change at or before it.
    since: String,
}

/// `GET /balance/{account}?at=`: the balance at `at`, from the history.
pub(super) async fn balance_at(
    api: &ApiState,
    account: AccountId,
    at: &str,
) -> Result<Response, Problem> {
    let at_ms = time_ms("at", at)?;
    refuse_when_off(api)?;
    let found = api
        .store
        .balance_at(&account, at_ms)
        .await
        .map_err(|e| Problem::from_store(e, api.retry_after_secs))?;
    Ok(match found {
        BalanceAt::Known { balance, since_ms } => Json(BalanceAtView {
            account,
            balance,
            at: rfc3339(at_ms),
            since: rfc3339(since_ms),
        })
        .into_response(),
        BalanceAt::Unknown => not_found(format!(
            "account {account} has no history at or before {at}"
        ))
        .into_response(),
        BalanceAt::BeforeRetention { oldest_ms } => Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "before-retention",
            "Earlier than the history goes back",
            format!(
                "the history of account {account} goes back to {} (kept {} s)",
                rfc3339(oldest_ms),
                api.store.history_keep_ms() / 1000
            ),
        )
        .into_response(),
    })
}

/// History is off (`--history-retention-secs 0`): nothing to read.
fn refuse_when_off(api: &ApiState) -> Result<(), Problem> {
    if api.store.history_is_off() {
        return Err(bad_query(
            "this engine keeps no history (--history-retention-secs 0)".into(),
        ));
    }
    Ok(())
}

fn bad_query(detail: String) -> Problem {
    Problem::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid-query",
        "Invalid query parameter",
        detail,
    )
}

/// Milliseconds since the epoch of an RFC 3339 time (422 naming `name`).
fn time_ms(name: &str, text: &str) -> Result<u64, Problem> {
    OffsetDateTime::parse(text, &Rfc3339)
        .ok()
        .and_then(|t| u64::try_from(t.unix_timestamp_nanos() / 1_000_000).ok())
        .ok_or_else(|| {
            bad_query(format!(
                "{name} must be an RFC 3339 time after 1970, like 2026-12-01T12:00:00Z"
            ))
        })
}

/// An RFC 3339 time of milliseconds since the epoch: UTC, always three
/// digits of milliseconds, so times sort as text too.
pub(super) fn rfc3339(ms: u64) -> String {
    let Ok(t) = OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000) else {
        return String::new();
    };
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
}

fn entry_view(entry: HistoryEntry) -> EntryView {
    EntryView {
        at: rfc3339(entry.at_ms),
        id: entry.id,
        kind: entry.kind.as_str(),
        amount: entry.amount,
        delta: entry.delta,
        counterparty: entry.counterparty,
        status: entry.status.as_str(),
        reason: entry.reason,
        balance_after: entry.balance_after,
        hold: entry.hold,
        posting: entry.posting,
        metadata: entry
            .metadata
            .and_then(|raw| serde_json::from_str::<Metadata>(&raw).ok()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_read_and_print_in_rfc_3339_with_milliseconds() {
        let ms = time_ms("at", "2026-12-01T12:00:00.123Z").unwrap();
        assert_eq!(ms, 1_796_126_400_123);
        assert_eq!(rfc3339(ms), "2026-12-01T12:00:00.123Z");
        assert_eq!(
            time_ms("at", "2026-12-01T13:00:00+01:00").unwrap(),
            1_796_126_400_000
        );
        assert_eq!(rfc3339(1_796_126_400_000), "2026-12-01T12:00:00.000Z");
        for bad in [
            "",
            "yesterday",
            "2026-12-01",
            "1969-12-31T23:59:59Z",
            "1796126400123",
        ] {
            assert!(time_ms("at", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_page_s_bounds_are_checked() {
        let params = |limit: Option<&str>, cursor: Option<&str>| HistoryParams {
            limit: limit.map(str::to_owned),
            cursor: cursor.map(str::to_owned),
            since: None,
            until: None,
        };
        assert_eq!(
            history_query(&params(None, None)).unwrap().limit,
            DEFAULT_HISTORY_PAGE
        );
        assert_eq!(
            history_query(&params(Some("1000"), None)).unwrap().limit,
            1000
        );
        for bad in ["0", "1001", "-1", "ten", "1.5"] {
            assert!(history_query(&params(Some(bad), None)).is_err(), "{bad}");
        }
        assert!(history_query(&params(None, Some("1700000000000-3"))).is_ok());
        assert!(history_query(&params(None, Some("+"))).is_err());
    }
}
