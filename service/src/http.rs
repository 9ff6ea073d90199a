//! The HTTP API (axum): routes, request parsing and problem+json errors.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, MatchedPath, Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::domain::{
    AccountId, Amount, Balance, Movement, Outcome, RuleError, Transaction, TxId, TxStatus,
    MAX_MINOR_UNITS,
};
use crate::publisher::{PublishError, Publisher};
use crate::store::{Claim, Store, StoreError};
use crate::wire::{now_ms, Record};

/// Largest request body accepted; a transaction is well under 1 KiB.
pub const MAX_BODY_BYTES: usize = 16 * 1024;

pub struct ApiState {
    pub store: Store,
    pub publisher: Publisher,
    pub admin_token: Option<String>,
    pub retry_after_secs: u64,
    pub metrics: PrometheusHandle,
}

pub fn router(state: Arc<ApiState>) -> Router {
    Router::new()
        .route("/transactions", post(post_transaction))
        .route("/transaction", post(post_transaction))
        .route("/transactions/{id}", get(get_transaction))
        .route("/balance/{account}", get(get_balance).put(put_balance))
        .route("/health", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/ready", get(ready))
        .route("/metrics", get(render_metrics))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::from_fn(record_request))
        .with_state(state)
}

/// An RFC 9457 problem; every error answer of the API is one of these.
#[derive(Debug)]
pub struct Problem {
    status: StatusCode,
    slug: &'static str,
    title: &'static str,
    detail: String,
    retry_after_secs: Option<u64>,
}

impl Problem {
    fn new(
        status: StatusCode,
        slug: &'static str,
        title: &'static str,
        detail: impl Into<String>,
    ) -> Self {
        Self {
            status,
            slug,
            title,
            detail: detail.into(),
            retry_after_secs: None,
        }
    }

    fn rule(error: RuleError) -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "rule-broken",
            "A rule of the request is broken",
            error.to_string(),
        )
    }

    fn malformed(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "malformed",
            "The body is not valid JSON of the expected shape",
            detail,
        )
    }

    fn unavailable(detail: impl Into<String>, retry_after_secs: u64) -> Self {
        Self {
            retry_after_secs: Some(retry_after_secs),
            ..Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "The engine cannot take the request now",
                detail,
            )
        }
    }

    fn from_store(e: StoreError, retry_after_secs: u64) -> Self {
        metrics::counter!("txengine_redis_errors_total", "op" => "api").increment(1);
        tracing::warn!(error = %e, "redis unavailable for an API request");
        Self::unavailable("redis is unavailable", retry_after_secs)
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let body = json!({
            "type": format!("urn:txengine:problem:{}", self.slug),
            "title": self.title,
            "status": self.status.as_u16(),
            "detail": self.detail,
        });
        let mut response = (self.status, Json(body)).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Some(secs) = self.retry_after_secs {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

/// The body of `POST /transactions`, before any rule is checked. Wrong JSON
/// types and unknown fields are 400; broken rules are 422.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TransactionRequest {
    id: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
    account: Option<String>,
    to: Option<String>,
    amount: Option<serde_json::Number>,
}

/// Parses an integer amount in minor units, refusing fractions, signs and
/// anything above 2^53-1 before it can reach Lua.
fn parse_minor_units(number: &serde_json::Number, field: &'static str) -> Result<u64, RuleError> {
    number
        .as_u64()
        .filter(|n| *n <= MAX_MINOR_UNITS)
        .ok_or(RuleError::AmountOutOfRange { field })
}

impl TransactionRequest {
    fn into_transaction(self, header_id: Option<&str>) -> Result<Transaction, RuleError> {
        let id = match (self.id.as_deref(), header_id) {
            (Some(body), Some(header)) if body != header => return Err(RuleError::IdMismatch),
            (Some(raw), _) | (None, Some(raw)) => TxId::parse(raw)?,
            (None, None) => TxId::generate(),
        };
        let account = AccountId::parse(
            self.account
                .as_deref()
                .ok_or(RuleError::Missing("account"))?,
        )?;
        let to = self
            .to
            .as_deref()
            .map(|raw| AccountId::parse(raw).map_err(|_| RuleError::BadId { field: "to" }))
            .transpose()?;
        let amount = self.amount.as_ref().ok_or(RuleError::Missing("amount"))?;
        let amount = Amount::new(parse_minor_units(amount, "amount")?)?;
        let movement = Movement::new(self.kind.as_deref(), account, to, amount)?;
        Ok(Transaction { id, movement })
    }
}

fn require_json(headers: &HeaderMap) -> Result<(), Problem> {
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|mime| {
            let mime = mime.trim().to_ascii_lowercase();
            mime == "application/json"
                || (mime.starts_with("application/") && mime.ends_with("+json"))
        })
        .unwrap_or(false);
    if is_json {
        Ok(())
    } else {
        Err(Problem::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "not-json",
            "The body must be JSON",
            "send Content-Type: application/json",
        ))
    }
}

fn read_body<T: for<'de> Deserialize<'de>>(
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<T, Problem> {
    let body = body.map_err(|rejection| {
        let status = rejection.status();
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            Problem::new(
                status,
                "too-large",
                "The body is too large",
                format!("the limit is {MAX_BODY_BYTES} bytes"),
            )
        } else {
            Problem::malformed(rejection.body_text())
        }
    })?;
    require_json(headers)?;
    serde_json::from_slice(&body).map_err(|e| Problem::malformed(e.to_string()))
}

/// The state of a transaction as clients see it.
#[derive(Serialize)]
struct TransactionView<'a> {
    id: &'a str,
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    balance_after: Option<u64>,
}

fn view(id: &TxId, status: TxStatus) -> TransactionView<'_> {
    let (status, reason, balance_after) = match status {
        TxStatus::Pending => ("pending", None, None),
        TxStatus::Settled(Outcome::Applied { balance_after }) => {
            ("applied", None, Some(balance_after.minor_units()))
        }
        TxStatus::Settled(Outcome::Rejected { reason }) => {
            ("rejected", Some(reason.as_str()), None)
        }
    };
    TransactionView {
        id: id.as_str(),
        status,
        reason,
        balance_after,
    }
}

/// 202 while pending, 200 once settled; with the transaction's location.
fn status_response(id: &TxId, status: TxStatus) -> Response {
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

async fn post_transaction(
    State(api): State<Arc<ApiState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, Problem> {
    let request: TransactionRequest = read_body(&headers, body)?;
    let header_id = match headers.get("idempotency-key") {
        Some(v) => Some(v.to_str().map_err(|_| {
            Problem::rule(RuleError::BadId {
                field: "Idempotency-Key",
            })
        })?),
        None => None,
    };
    let tx = request.into_transaction(header_id).map_err(Problem::rule)?;
    // Claim, publish and accept run to the end in their own task even if the
    // client hangs up: a handler dropped halfway would leave its claim to
    // block retries (409) until the lease ran out.
    let retry_after_secs = api.retry_after_secs;
    tokio::spawn(accept_transaction(api, tx))
        .await
        .unwrap_or_else(|e| {
            tracing::error!(error = %e, "accept task failed");
            Err(Problem::unavailable("internal error", retry_after_secs))
        })
}

/// Claims the id, publishes the record and marks it accepted.
async fn accept_transaction(api: Arc<ApiState>, tx: Transaction) -> Result<Response, Problem> {
    let retry = api.retry_after_secs;

    let token = match api
        .store
        .claim(&tx)
        .await
        .map_err(|e| Problem::from_store(e, retry))?
    {
        Claim::Claimed { token } => token,
        Claim::Conflict => {
            return Err(Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "id-conflict",
                "The id is already used by a different transaction",
                format!(
                    "transaction {} exists with another body; nothing was published",
                    tx.id
                ),
            ))
        }
        Claim::InFlight => {
            return Err(Problem::new(
                StatusCode::CONFLICT,
                "in-flight",
                "The same transaction is being accepted right now",
                format!("transaction {} is in flight; retry shortly", tx.id),
            ))
        }
        Claim::Known(status) => return Ok(status_response(&tx.id, status)),
    };

    let record = Record {
        tx,
        accepted_at_ms: now_ms(),
    };
    if let Err(e) = api.publisher.publish(&record).await {
        if let Err(release_error) = api.store.release(&record.tx.id, &token).await {
            // The lease runs out by itself; a retry after that still applies at most once.
            tracing::warn!(error = %release_error, "could not release claim");
        }
        let detail = match e {
            PublishError::QueueFull => "too many transactions are waiting for kafka".to_owned(),
            PublishError::Kafka(e) => {
                tracing::warn!(error = %e, "publish failed");
                "kafka did not acknowledge the transaction".to_owned()
            }
        };
        metrics::counter!("txengine_publish_refused_total").increment(1);
        return Err(Problem::unavailable(detail, retry));
    }
    if let Err(e) = api.store.accept(&record.tx).await {
        // Kafka has the record, so it will be applied: still a 202. Until a
        // consumer settles it, GET answers 404 once the lease runs out.
        tracing::warn!(error = %e, id = %record.tx.id, "accepted but could not mark it");
    }
    Ok(status_response(&record.tx.id, TxStatus::Pending))
}

async fn get_transaction(
    State(api): State<Arc<ApiState>>,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    let id = TxId::parse(&id).map_err(Problem::rule)?;
    match api
        .store
        .status(&id)
        .await
        .map_err(|e| Problem::from_store(e, api.retry_after_secs))?
    {
        Some(status) => Ok(Json(view(&id, status)).into_response()),
        None => Err(not_found(format!("no transaction {id}"))),
    }
}

fn not_found(detail: String) -> Problem {
    Problem::new(StatusCode::NOT_FOUND, "not-found", "Not found", detail)
}

async fn get_balance(
    State(api): State<Arc<ApiState>>,
    Path(account): Path<String>,
) -> Result<Response, Problem> {
    let account = AccountId::parse(&account).map_err(Problem::rule)?;
    match api
        .store
        .balance(&account)
        .await
        .map_err(|e| Problem::from_store(e, api.retry_after_secs))?
    {
        Some(balance) => Ok(Json(json!({"account": account, "balance": balance})).into_response()),
        None => Err(not_found(format!("no account {account}"))),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BalanceRequest {
    balance: serde_json::Number,
}

/// Compares two secrets in time independent of where they differ.
fn same_secret(given: &[u8], expected: &[u8]) -> bool {
    given.len() == expected.len()
        && given
            .iter()
            .zip(expected)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

fn authorize_admin(api: &ApiState, headers: &HeaderMap) -> Result<(), Problem> {
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| {
            Problem::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "Admin token required",
                "send Authorization: Bearer <admin token>",
            )
        })?;
    match &api.admin_token {
        Some(expected) if same_secret(given.as_bytes(), expected.as_bytes()) => Ok(()),
        _ => Err(Problem::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "Not allowed",
            "the admin token is wrong or no admin token is configured",
        )),
    }
}

async fn put_balance(
    State(api): State<Arc<ApiState>>,
    Path(account): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, Problem> {
    authorize_admin(&api, &headers)?;
    let account = AccountId::parse(&account).map_err(Problem::rule)?;
    let request: BalanceRequest = read_body(&headers, body)?;
    let balance = request
        .balance
        .as_u64()
        .ok_or(RuleError::BalanceOutOfRange)
        .and_then(Balance::new)
        .map_err(Problem::rule)?;
    api.store
        .set_balance(&account, balance)
        .await
        .map_err(|e| Problem::from_store(e, api.retry_after_secs))?;
    Ok(Json(json!({"account": account, "balance": balance})).into_response())
}

async fn ready(State(api): State<Arc<ApiState>>) -> Response {
    let redis = api.store.ping().await.is_ok();
    let kafka = api.publisher.ready().await;
    let code = if redis && kafka {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(json!({"redis": redis, "kafka": kafka}))).into_response()
}

async fn render_metrics(State(api): State<Arc<ApiState>>) -> Response {
    prometheus_text(&api.metrics)
}

fn prometheus_text(handle: &PrometheusHandle) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        handle.render(),
    )
        .into_response()
}

/// `/metrics` and `/health` alone, for a consumer-only process.
pub fn metrics_router(handle: PrometheusHandle) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(move || async move { prometheus_text(&handle) }),
        )
        .route("/health", get(|| async { Json(json!({"status": "ok"})) }))
}

/// Counts requests and times them, by route and status.
async fn record_request(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let method = request.method().to_string();
    let started = Instant::now();
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    metrics::counter!("txengine_http_requests_total", "route" => route.clone(), "method" => method.clone(), "status" => status)
        .increment(1);
    metrics::histogram!("txengine_http_request_seconds", "route" => route, "method" => method)
        .record(started.elapsed().as_secs_f64());
    response
}
