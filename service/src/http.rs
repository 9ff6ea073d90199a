//! The HTTP API (axum): routes, request parsing and problem+json errors.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{MatchedPath, Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::{Deserialize, Serialize};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

use crate::admission::{Admission, Refused};
use crate::config::Secret;
use crate::consumer::{ConsumerHealth, Stall};
use crate::domain::{
    AccountId, Amount, Balance, Movement, Outcome, RuleError, Transaction, TxId, TxStatus,
    MAX_MINOR_UNITS,
};
use crate::publisher::Publisher;
use crate::store::{Store, StoreError};

/// Largest request body accepted; a transaction is well under 1 KiB.
pub const MAX_BODY_BYTES: usize = 16 * 1024;

pub struct ApiState {
    pub store: Store,
    pub publisher: Publisher,
    pub admission: Admission,
    /// The consumer of this process (role `all`), for `/ready`.
    pub consumer: Option<ConsumerHealth>,
    pub admin_token: Option<Secret>,
    pub retry_after_secs: u64,
    /// How long a client may take to send a body; then 408.
    pub body_read_timeout: Duration,
    pub metrics: PrometheusHandle,
}

pub fn router(state: Arc<ApiState>) -> Router {
    Router::new()
        .route("/transactions", post(post_transaction))
        .route("/transaction", post(post_transaction_seed_path))
        .route("/transactions/{id}", get(get_transaction))
        .route("/balance/{account}", get(get_balance).put(put_balance))
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(render_metrics))
        .route("/openapi.json", get(openapi_json))
        .fallback(unknown_route)
        .method_not_allowed_fallback(method_not_allowed)
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

    fn refused(refused: Refused, retry_after_secs: u64) -> Self {
        let detail = refused.to_string();
        match refused {
            Refused::Conflict(_) => Self::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "id-conflict",
                "The id is already used by a different transaction",
                detail,
            ),
            Refused::InFlight(_) => Self::new(
                StatusCode::CONFLICT,
                "in-flight",
                "The same transaction is being accepted right now",
                detail,
            ),
            Refused::Redis(e) => Self::from_store(e, retry_after_secs),
            Refused::Kafka(e) => {
                tracing::warn!(error = %e, "publish failed");
                Self::unavailable(detail, retry_after_secs)
            }
            Refused::QueueFull | Refused::BindingLost(_) | Refused::Internal(_) => {
                Self::unavailable(detail, retry_after_secs)
            }
        }
    }

    fn from_store(e: StoreError, retry_after_secs: u64) -> Self {
        metrics::counter!("txengine_redis_errors_total", "op" => "api").increment(1);
        tracing::warn!(error = %e, "redis unavailable for an API request");
        Self::unavailable("redis is unavailable", retry_after_secs)
    }
}

/// The body of every error answer (`application/problem+json`, RFC 9457).
#[derive(Serialize, ToSchema)]
struct ProblemBody {
    /// `urn:txengine:problem:<slug>`; slugs: malformed, too-large, not-json,
    /// body-timeout, rule-broken, id-conflict, in-flight, not-found,
    /// unauthorized, forbidden, method-not-allowed, unavailable.
    #[serde(rename = "type")]
    #[schema(pattern = "^urn:txengine:problem:[a-z-]+$")]
    kind: String,
    /// A short summary, the same for every problem of this type.
    title: &'static str,
    /// The HTTP status code.
    status: u16,
    /// What went wrong with this request.
    detail: String,
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let body = ProblemBody {
            kind: format!("urn:txengine:problem:{}", self.slug),
            title: self.title,
            status: self.status.as_u16(),
            detail: self.detail,
        };
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
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct TransactionRequest {
    /// The transaction id (or send it as `Idempotency-Key`); the server makes
    /// a UUIDv7 when neither is given.
    #[schema(pattern = "^[A-Za-z0-9_.:-]{1,64}$")]
    id: Option<String>,
    /// What the movement does; `debit` when absent.
    #[serde(rename = "type")]
    #[schema(value_type = Option<MovementKind>)]
    kind: Option<String>,
    /// The account whose balance is checked: debited, credited, or the source of a transfer.
    #[schema(value_type = String, required = true, pattern = "^[A-Za-z0-9_.:-]{1,64}$")]
    account: Option<String>,
    /// The destination of a transfer; only for transfers.
    #[schema(pattern = "^[A-Za-z0-9_.:-]{1,64}$")]
    to: Option<String>,
    /// Minor units (an integer).
    #[schema(value_type = u64, required = true, minimum = 1, maximum = 9007199254740991_u64)]
    amount: Option<serde_json::Number>,
}

/// The kinds of movement (documentation only: the request keeps the raw
/// string, so an unknown kind is a 422 naming it, not a 400).
#[derive(ToSchema)]
#[schema(rename_all = "lowercase")]
#[allow(dead_code)]
enum MovementKind {
    Debit,
    Credit,
    Transfer,
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

/// Why a transaction request was refused before anything was done.
#[derive(Debug, PartialEq, Eq)]
pub enum RequestError {
    /// Not JSON of the expected shape: 400.
    Malformed(String),
    /// A rule is broken: 422.
    Rule(RuleError),
}

/// Decodes and validates the body of `POST /transactions` and its
/// `Idempotency-Key` header (raw bytes, as they came): the whole of what the
/// API checks before it touches Redis or Kafka. Public for the fuzzer.
pub fn decode_transaction(
    body: &[u8],
    idempotency_key: Option<&[u8]>,
) -> Result<Transaction, RequestError> {
    let request: TransactionRequest =
        serde_json::from_slice(body).map_err(|e| RequestError::Malformed(e.to_string()))?;
    // Header values may carry any byte; only ASCII can be an id, and what is
    // not is refused as the header's fault, not the body's.
    let header_id = idempotency_key
        .map(|raw| {
            std::str::from_utf8(raw)
                .ok()
                .filter(|text| text.is_ascii())
                .ok_or(RuleError::BadId {
                    field: "Idempotency-Key",
                })
        })
        .transpose()
        .map_err(RequestError::Rule)?;
    request
        .into_transaction(header_id)
        .map_err(RequestError::Rule)
}

/// Reads a JSON body of at most [`MAX_BODY_BYTES`] that arrives within the
/// body deadline. Nothing has been done when this refuses.
async fn read_body(api: &ApiState, headers: &HeaderMap, body: Body) -> Result<Bytes, Problem> {
    let too_large = || {
        Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too-large",
            "The body is too large",
            format!("the limit is {MAX_BODY_BYTES} bytes"),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|length| length > MAX_BODY_BYTES as u64) {
        return Err(too_large());
    }
    let read = axum::body::to_bytes(body, MAX_BODY_BYTES);
    let bytes = match tokio::time::timeout(api.body_read_timeout, read).await {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(e)) => {
            let over_limit = e
                .into_inner()
                .downcast_ref::<http_body_util::LengthLimitError>()
                .is_some();
            return Err(if over_limit {
                too_large()
            } else {
                Problem::malformed("the body could not be read")
            });
        }
        Err(_) => {
            return Err(Problem::new(
                StatusCode::REQUEST_TIMEOUT,
                "body-timeout",
                "The body arrived too slowly",
                format!(
                    "send the whole body within {} ms; nothing was done",
                    api.body_read_timeout.as_millis()
                ),
            ))
        }
    };
    require_json(headers)?;
    Ok(bytes)
}

/// The state of a transaction as clients see it.
#[derive(Serialize, ToSchema)]
struct TransactionView<'a> {
    id: &'a str,
    /// `pending` until a consumer applied or rejected it.
    #[schema(value_type = TxState)]
    status: &'static str,
    /// Why it was rejected: insufficient_funds, unknown_account, balance_overflow.
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'static str>,
    /// The checked account's balance right after it was applied.
    #[serde(skip_serializing_if = "Option::is_none")]
    balance_after: Option<u64>,
}

/// Where a transaction stands (documentation only).
#[derive(ToSchema)]
#[schema(rename_all = "lowercase")]
#[allow(dead_code)]
enum TxState {
    Pending,
    Applied,
    Rejected,
}

/// An account's balance in minor units.
#[derive(Serialize, ToSchema)]
struct BalanceView {
    #[schema(value_type = String)]
    account: AccountId,
    #[schema(value_type = u64, maximum = 9007199254740991_u64)]
    balance: Balance,
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

/// The answers of `POST /transactions` and of the seed's `POST /transaction`
/// (for the OpenAPI document; the handler builds them as `Response`s).
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
enum PostAnswers {
    #[response(status = 202, description = "Kafka has the transaction (or it was accepted before and is still pending)",
        headers(("Location" = String, description = "/transactions/{id}")))]
    Accepted(TransactionView<'static>),
    #[response(status = 200, description = "The same transaction was accepted before and is settled: its outcome",
        headers(("Location" = String, description = "/transactions/{id}")))]
    Settled(TransactionView<'static>),
    #[response(
        status = 400,
        description = "Not JSON of the expected shape (wrong types, unknown fields)",
        content_type = "application/problem+json"
    )]
    Malformed(ProblemBody),
    #[response(
        status = 408,
        description = "The body arrived too slowly; nothing was done",
        content_type = "application/problem+json"
    )]
    BodyTimeout(ProblemBody),
    #[response(
        status = 409,
        description = "The same transaction is being accepted by another request right now",
        content_type = "application/problem+json"
    )]
    InFlight(ProblemBody),
    #[response(
        status = 413,
        description = "Body over 16 KiB",
        content_type = "application/problem+json"
    )]
    TooLarge(ProblemBody),
    #[response(
        status = 415,
        description = "Content-Type is not JSON",
        content_type = "application/problem+json"
    )]
    NotJson(ProblemBody),
    #[response(
        status = 422,
        description = "A rule is broken (amount, ids, transfer to self, missing field), or the id is used by another body; nothing was published",
        content_type = "application/problem+json"
    )]
    RuleBroken(ProblemBody),
    #[response(status = 503, description = "Kafka or Redis cannot take the request; retry after Retry-After seconds", content_type = "application/problem+json",
        headers(("Retry-After" = u64, description = "seconds")))]
    Unavailable(ProblemBody),
}

/// Submit a money movement; 202 once Kafka has it.
#[utoipa::path(
    post,
    path = "/transactions",
    tag = "transactions",
    request_body(content = TransactionRequest, content_type = "application/json"),
    params(("Idempotency-Key" = Option<String>, Header, description = "The transaction id, instead of `id` in the body (both given: they must match)", pattern = "^[A-Za-z0-9_.:-]{1,64}$")),
    responses(PostAnswers)
)]
async fn post_transaction(
    State(api): State<Arc<ApiState>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Problem> {
    let body = read_body(&api, &headers, body).await?;
    let idempotency_key = headers.get("idempotency-key").map(|v| v.as_bytes());
    let tx = decode_transaction(&body, idempotency_key).map_err(|e| match e {
        RequestError::Malformed(detail) => Problem::malformed(detail),
        RequestError::Rule(rule) => Problem::rule(rule),
    })?;
    let id = tx.id.clone();
    match api.admission.admit(tx).await {
        Ok(status) => Ok(status_response(&id, status)),
        Err(refused) => Err(Problem::refused(refused, api.retry_after_secs)),
    }
}

/// The seed's path: the same as `POST /transactions`.
#[utoipa::path(
    post,
    path = "/transaction",
    tag = "transactions",
    request_body(content = TransactionRequest, content_type = "application/json"),
    params(("Idempotency-Key" = Option<String>, Header, description = "As for POST /transactions", pattern = "^[A-Za-z0-9_.:-]{1,64}$")),
    responses(PostAnswers)
)]
async fn post_transaction_seed_path(
    api: State<Arc<ApiState>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Problem> {
    post_transaction(api, headers, body).await
}

/// Where a transaction stands.
#[utoipa::path(
    get,
    path = "/transactions/{id}",
    tag = "transactions",
    params(("id" = String, Path, description = "Transaction id", pattern = "^[A-Za-z0-9_.:-]{1,64}$")),
    responses(
        (status = 200, description = "Pending, applied or rejected", body = TransactionView),
        (status = 404, description = "No such transaction (never accepted, or its outcome has expired)", body = ProblemBody, content_type = "application/problem+json"),
        (status = 422, description = "Not a valid id", body = ProblemBody, content_type = "application/problem+json"),
        (status = 503, description = "Redis is unavailable", body = ProblemBody, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "seconds"))),
    )
)]
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

/// An account's balance.
#[utoipa::path(
    get,
    path = "/balance/{account}",
    tag = "balances",
    params(("account" = String, Path, description = "Account id", pattern = "^[A-Za-z0-9_.:-]{1,64}$")),
    responses(
        (status = 200, description = "The balance in minor units", body = BalanceView),
        (status = 404, description = "No such account", body = ProblemBody, content_type = "application/problem+json"),
        (status = 422, description = "Not a valid account id", body = ProblemBody, content_type = "application/problem+json"),
        (status = 503, description = "Redis is unavailable", body = ProblemBody, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "seconds"))),
    )
)]
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
        Some(balance) => Ok(Json(BalanceView { account, balance }).into_response()),
        None => Err(not_found(format!("no account {account}"))),
    }
}

/// The body of `PUT /balance/{account}`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct BalanceRequest {
    /// Minor units, 0 ..= 2^53-1.
    #[schema(value_type = u64, minimum = 0, maximum = 9007199254740991_u64)]
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
        Some(expected) if same_secret(given.as_bytes(), expected.expose().as_bytes()) => Ok(()),
        _ => Err(Problem::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "Not allowed",
            "the admin token is wrong or no admin token is configured",
        )),
    }
}

/// Set an account's balance (the seed's setter; an admin operation).
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
        (status = 422, description = "Not a valid account id or balance", body = ProblemBody, content_type = "application/problem+json"),
        (status = 503, description = "Redis is unavailable", body = ProblemBody, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "seconds"))),
    )
)]
async fn put_balance(
    State(api): State<Arc<ApiState>>,
    Path(account): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Problem> {
    authorize_admin(&api, &headers)?;
    let account = AccountId::parse(&account).map_err(Problem::rule)?;
    let body = read_body(&api, &headers, body).await?;
    let request: BalanceRequest =
        serde_json::from_slice(&body).map_err(|e| Problem::malformed(e.to_string()))?;
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
    Ok(Json(BalanceView { account, balance }).into_response())
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/health", tag = "operations",
    responses((status = 200, description = "Alive", body = Health)))]
async fn health() -> Json<Health> {
    Json(Health { status: "ok" })
}

#[derive(Serialize, ToSchema)]
struct Health {
    #[schema(example = "ok")]
    status: &'static str,
}

/// Whether Redis and Kafka answer, and whether this process's consumer is
/// stuck on a record Redis refuses.
#[derive(Serialize, ToSchema)]
struct Readiness {
    redis: bool,
    kafka: bool,
    /// The record this process's consumer cannot apply (its partition does
    /// not move until it applies); absent when none.
    #[serde(skip_serializing_if = "Option::is_none")]
    stalled: Option<Stall>,
}

/// Readiness: Redis and Kafka reachable, no stalled partition.
#[utoipa::path(get, path = "/ready", tag = "operations",
    responses(
        (status = 200, description = "Both reachable, nothing stalled", body = Readiness),
        (status = 503, description = "Redis or Kafka unreachable, or this process's consumer is stalled on a record", body = Readiness),
    ))]
async fn ready(State(api): State<Arc<ApiState>>) -> Response {
    let redis = api.store.ping().await.is_ok();
    let kafka = api.publisher.ready().await;
    let stalled = api.consumer.as_ref().and_then(ConsumerHealth::stall);
    let code = if redis && kafka && stalled.is_none() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        code,
        Json(Readiness {
            redis,
            kafka,
            stalled,
        }),
    )
        .into_response()
}

/// Prometheus metrics.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text format", body = String, content_type = "text/plain")))]
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

/// `/metrics`, `/health` and `/ready` (200, or 503 with the stalled record)
/// for a consumer-only process.
pub fn metrics_router(handle: PrometheusHandle, consumer: ConsumerHealth) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(move || async move { prometheus_text(&handle) }),
        )
        .route("/health", get(health))
        .route(
            "/ready",
            get(move || async move {
                let stalled = consumer.stall();
                let code = match stalled {
                    None => StatusCode::OK,
                    Some(_) => StatusCode::SERVICE_UNAVAILABLE,
                };
                (code, Json(serde_json::json!({ "stalled": stalled })))
            }),
        )
}

/// This API's OpenAPI 3.1 document.
#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    responses((status = 200, description = "The OpenAPI document", content_type = "application/json")))]
async fn openapi_json() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        openapi_document(),
    )
        .into_response()
}

/// The OpenAPI document, as served and as committed in `service/openapi.json`;
/// built once, on first use.
pub fn openapi_document() -> &'static str {
    static DOCUMENT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DOCUMENT.get_or_init(|| {
        ApiDoc::openapi()
            .to_pretty_json()
            .expect("the OpenAPI document serializes")
            + "\n"
    })
}

async fn unknown_route() -> Problem {
    not_found("no such route; see /openapi.json".to_owned())
}

async fn method_not_allowed() -> Problem {
    Problem::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method-not-allowed",
        "Method not allowed",
        "this route does not take that method; see the Allow header",
    )
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "txengine",
        description = "Atomic transaction engine: POST money movements, read outcomes and balances. Money is an integer number of minor units, 1 ..= 2^53-1 per amount, balances 0 ..= 2^53-1."
    ),
    paths(
        post_transaction,
        post_transaction_seed_path,
        get_transaction,
        get_balance,
        put_balance,
        health,
        ready,
        render_metrics,
        openapi_json
    ),
    modifiers(&AdminToken)
)]
struct ApiDoc;

/// The bearer scheme of `PUT /balance/{account}`.
struct AdminToken;

impl Modify for AdminToken {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "admin_token",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idempotency_key_that_is_not_ascii_is_the_header_s_fault() {
        let body = br#"{"account":"a","amount":1}"#;
        let header_error = Err(RequestError::Rule(RuleError::BadId {
            field: "Idempotency-Key",
        }));
        assert_eq!(decode_transaction(body, Some("é".as_bytes())), header_error);
        assert_eq!(decode_transaction(body, Some(&[0xff])), header_error);
        let tx = decode_transaction(body, Some(b"key-1")).unwrap();
        assert_eq!(tx.id.as_str(), "key-1");
    }
}
