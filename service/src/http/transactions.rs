//! `POST /transactions` (and the seed's `POST /transaction`): decoding and
//! checking a request, then handing it to admission.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::auth::{authenticate, forbidden, Quota};
use super::problem::{Problem, ProblemBody};
use super::status::{status_response, TransactionView};
use super::ApiState;
use crate::admission::{Admitted, Posted, Refused};
use crate::domain::{
    AccountId, Amount, Asset, Kind, Metadata, Movement, Posting, Postings, RuleError, Transaction,
    TxId,
};
use crate::limits::{MAX_BODY_BYTES, MAX_MINOR_UNITS};

/// The body of `POST /transactions`, before any rule is checked. Wrong JSON
/// types and unknown fields are 400; broken rules are 422.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct TransactionRequest {
    /// The transaction id (or send it as `Idempotency-Key`); the server makes
    /// a UUIDv7 when neither is given.
    #[schema(pattern = "^[A-Za-z0-9_.:-]{1,64}$")]
    id: Option<String>,
    /// What the movement does; `debit` when absent.
    #[serde(rename = "type")]
    #[schema(value_type = Option<MovementKind>)]
    kind: Option<String>,
    /// The account whose balance is checked: debited, credited, the source
    /// of a transfer, or the account a hold reserves money of. Not for a
    /// capture or void (they act on their hold's account).
    #[schema(pattern = "^[A-Za-z0-9_.:-]{1,64}$")]
    account: Option<String>,
    /// The destination of a transfer, or of a hold's capture (optional for a hold).
    #[schema(pattern = "^[A-Za-z0-9_.:-]{1,64}$")]
    to: Option<String>,
    /// Minor units (an integer). Required but for a capture (default: all
    /// the hold holds) and a void (none).
    #[schema(value_type = Option<u64>, minimum = 1, maximum = 9007199254740991_u64)]
    amount: Option<serde_json::Number>,
    /// A capture's or void's hold: the id of the hold it ends.
    #[schema(pattern = "^[A-Za-z0-9_.:-]{1,64}$")]
    hold: Option<String>,
    /// A hold's longest life in seconds from when it is applied (default
    /// and most: see the server's `--hold-timeout-s` and `--max-hold-timeout-s`).
    #[schema(value_type = Option<u64>, minimum = 1)]
    timeout_s: Option<serde_json::Number>,
    /// Your own data, kept with the transaction: a flat object of strings,
    /// at most 16 keys of 1 to 64 characters, values of at most 512. Part
    /// of what the id is bound to (absent, `null` and `{}` are the same).
    /// Returned by `GET /transactions/{id}` and in the account's history.
    metadata: Option<BTreeMap<String, String>>,
    /// The asset every account it touches must hold (`USD/2`); given, the
    /// transaction is `rejected` `asset_mismatch` where one does not. Part
    /// of what the id is bound to.
    #[schema(pattern = "^[A-Z][A-Z0-9_]{0,15}(/[0-9]{1,2})?$", example = "USD/2")]
    asset: Option<String>,
    /// A `postings` transaction's movements, 1 to 16, applied in order,
    /// all or none: each moves `amount` from `from` to `to`, checked
    /// against the balances the postings before it left.
    #[schema(max_items = 16, min_items = 1)]
    postings: Option<Vec<PostingRequest>>,
}

/// One posting of a `postings` transaction.
#[derive(Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct PostingRequest {
    /// The account money leaves (the key's scope must match it).
    #[schema(pattern = "^[A-Za-z0-9_.:-]{1,64}$")]
    from: String,
    /// The account money enters; not `from`.
    #[schema(pattern = "^[A-Za-z0-9_.:-]{1,64}$")]
    to: String,
    /// Minor units (an integer).
    #[schema(value_type = u64, minimum = 1, maximum = 9007199254740991_u64)]
    amount: serde_json::Number,
    /// The asset both accounts must hold; given, the transaction is
    /// `rejected` `asset_mismatch` at this posting where one does not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(pattern = "^[A-Z][A-Z0-9_]{0,15}(/[0-9]{1,2})?$", example = "USD/2")]
    asset: Option<String>,
}

impl PostingRequest {
    fn into_posting(self) -> Result<Posting, RuleError> {
        let from = AccountId::parse(&self.from).map_err(|_| RuleError::BadId { field: "from" })?;
        let to = AccountId::parse(&self.to).map_err(|_| RuleError::BadId { field: "to" })?;
        let amount = Amount::new(parse_minor_units(&self.amount, "amount")?)?;
        let asset = self.asset.as_deref().map(Asset::parse).transpose()?;
        Posting::new(from, to, amount, asset)
    }
}

/// The kinds of movement a request may name (documentation only: the
/// request keeps the raw string, so an unknown kind is a 422 naming it, not
/// a 400).
#[derive(ToSchema)]
#[schema(rename_all = "lowercase")]
#[allow(dead_code)]
pub(super) enum MovementKind {
    Debit,
    Credit,
    Transfer,
    Hold,
    Capture,
    Void,
    Postings,
}

/// Parses an integer amount in minor units, refusing fractions, signs and
/// anything above 2^53-1 before it can reach Lua.
pub(super) fn parse_minor_units(
    number: &serde_json::Number,
    field: &'static str,
) -> Result<u64, RuleError> {
    number
        .as_u64()
        .filter(|n| *n <= MAX_MINOR_UNITS)
        .ok_or(RuleError::AmountOutOfRange { field })
}

impl TransactionRequest {
    /// A batch's item: it must carry its id (a batch has no header to give
    /// one, and an id the server made could not be retried).
    pub(super) fn into_batch_item(self) -> Result<Posted, RuleError> {
        if self.id.is_none() {
            return Err(RuleError::Missing("id"));
        }
        self.into_posted(None)
    }

    /// A capture (`capture`) or a void of a hold: `hold`, and a capture's
    /// `amount`; any field that is not theirs is refused.
    fn into_hold_end(
        self,
        id: TxId,
        metadata: Metadata,
        asset: Option<Asset>,
        capture: bool,
        amount: Option<Amount>,
    ) -> Result<Posted, RuleError> {
        let kind = if capture { Kind::Capture } else { Kind::Void }.as_str();
        for (field, given) in [
            ("account", self.account.is_some()),
            ("to", self.to.is_some()),
            ("timeout_s", self.timeout_s.is_some()),
            ("amount", !capture && amount.is_some()),
        ] {
            if given {
                return Err(RuleError::NotAField { field, kind });
            }
        }
        let hold = self.hold.as_deref().ok_or(RuleError::Missing("hold"))?;
        let hold = TxId::parse(hold).map_err(|_| RuleError::BadId { field: "hold" })?;
        Ok(Posted::EndsHold {
            id,
            hold,
            capture: capture.then_some(amount),
            metadata,
            asset,
        })
    }

    /// A postings transaction: `postings`, and no field of one movement
    /// (each posting names its own accounts, amount and asset).
    fn into_postings(
        self,
        id: TxId,
        metadata: Metadata,
        asset: bool,
        amount: bool,
    ) -> Result<Posted, RuleError> {
        for (field, given) in [
            ("account", self.account.is_some()),
            ("to", self.to.is_some()),
            ("amount", amount),
            ("asset", asset),
            ("hold", self.hold.is_some()),
            ("timeout_s", self.timeout_s.is_some()),
        ] {
            if given {
                return Err(RuleError::NotAField {
                    field,
                    kind: Kind::Postings.as_str(),
                });
            }
        }
        let postings = self
            .postings
            .ok_or(RuleError::Missing("postings"))?
            .into_iter()
            .enumerate()
            .map(|(index, posting)| {
                posting
                    .into_posting()
                    .map_err(|error| RuleError::InPosting {
                        index,
                        error: Box::new(error),
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Posted::Ready(Transaction {
            id,
            movement: Movement::Postings {
                postings: Postings::new(postings)?,
            },
            metadata,
            asset: None,
        }))
    }

    pub(super) fn into_posted(mut self, header_id: Option<&str>) -> Result<Posted, RuleError> {
        let id = match (self.id.as_deref(), header_id) {
            (Some(body), Some(header)) if body != header => return Err(RuleError::IdMismatch),
            (Some(raw), _) | (None, Some(raw)) => TxId::parse(raw)?,
            (None, None) => TxId::generate(),
        };
        let metadata = Metadata::try_from(self.metadata.take().unwrap_or_default())?;
        let asset = self.asset.take().as_deref().map(Asset::parse).transpose()?;
        let kind = match self.kind.as_deref() {
            Some(raw) => Kind::posted(raw)?,
            None => Kind::Debit,
        };
        let not_a_field = |field| RuleError::NotAField {
            field,
            kind: kind.as_str(),
        };
        let amount = self
            .amount
            .as_ref()
            .map(|amount| Amount::new(parse_minor_units(amount, "amount")?))
            .transpose()?;
        if kind == Kind::Postings {
            return self.into_postings(id, metadata, asset.is_some(), amount.is_some());
        }
        if self.postings.is_some() {
            return Err(not_a_field("postings"));
        }
        if matches!(kind, Kind::Capture | Kind::Void) {
            return self.into_hold_end(id, metadata, asset, kind == Kind::Capture, amount);
        }
        if self.hold.is_some() {
            return Err(not_a_field("hold"));
        }
        if kind != Kind::Hold && self.timeout_s.is_some() {
            return Err(not_a_field("timeout_s"));
        }
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
        let amount = amount.ok_or(RuleError::Missing("amount"))?;
        if kind == Kind::Hold {
            if to.as_ref() == Some(&account) {
                return Err(RuleError::TransferToSelf);
            }
            // Not a positive integer: 0, refused by `complete` naming this
            // server's longest hold.
            let timeout_s = self.timeout_s.as_ref().map(|t| t.as_u64().unwrap_or(0));
            return Ok(Posted::Hold {
                id,
                account,
                to,
                amount,
                timeout_s,
                metadata,
                asset,
            });
        }
        let movement = Movement::new(kind, account, to, amount)?;
        Ok(Posted::Ready(Transaction {
            id,
            movement,
            metadata,
            asset,
        }))
    }
}

pub(super) fn require_json(headers: &HeaderMap) -> Result<(), Problem> {
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
) -> Result<Posted, RequestError> {
    let request: TransactionRequest =
        super::from_json_object(body).map_err(RequestError::Malformed)?;
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
    request.into_posted(header_id).map_err(RequestError::Rule)
}

/// Reads a JSON body of at most [`MAX_BODY_BYTES`] that arrives within the
/// body deadline. Nothing has been done when this refuses.
pub(super) async fn read_body(
    api: &ApiState,
    headers: &HeaderMap,
    body: Body,
) -> Result<Bytes, Problem> {
    read_body_within(api, headers, body, MAX_BODY_BYTES).await
}

/// [`read_body`] with another limit (a batch's).
pub(super) async fn read_body_within(
    api: &ApiState,
    headers: &HeaderMap,
    body: Body,
    limit: usize,
) -> Result<Bytes, Problem> {
    let too_large = || {
        Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too-large",
            "The body is too large",
            format!("the limit is {limit} bytes"),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|length| length > limit as u64) {
        return Err(too_large());
    }
    let read = axum::body::to_bytes(body, limit);
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

/// The answers of `POST /transactions` and of the seed's `POST /transaction`
/// (for the OpenAPI document; the handler builds them as `Response`s).
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
pub(super) enum PostAnswers {
    #[response(status = 202, description = "Kafka has the transaction (or it was accepted before and is still pending)",
        headers(("Location" = String, description = "/transactions/{id}"),
            ("RateLimit-Policy" = String, description = "a limited key's policy"), ("RateLimit" = String, description = "what a limited key has left")))]
    Accepted(TransactionView<'static>),
    #[response(status = 200, description = "The same transaction was accepted before and is settled: its outcome",
        headers(("Location" = String, description = "/transactions/{id}"),
            ("RateLimit-Policy" = String, description = "a limited key's policy"), ("RateLimit" = String, description = "what a limited key has left")))]
    Settled(TransactionView<'static>),
    #[response(
        status = 400,
        description = "Not JSON of the expected shape (wrong types, unknown fields)",
        content_type = "application/problem+json"
    )]
    Malformed(ProblemBody),
    #[response(status = 401, description = "No API key, or an unknown, revoked or wrong one; nothing was done", content_type = "application/problem+json",
        headers(("WWW-Authenticate" = String, description = "Bearer")))]
    Unauthorized(ProblemBody),
    #[response(
        status = 403,
        description = "The key's scope does not match `account`; nothing was done",
        content_type = "application/problem+json"
    )]
    Forbidden(ProblemBody),
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
    #[response(status = 429, description = "The key is over its rate limit; nothing was done", content_type = "application/problem+json",
        headers(("Retry-After" = u64, description = "seconds"), ("RateLimit-Policy" = String), ("RateLimit" = String)))]
    RateLimited(ProblemBody),
    #[response(status = 503, description = "Kafka or Redis cannot take the request; retry after Retry-After seconds with the `id` the problem names (a publish that failed may still land)", content_type = "application/problem+json",
        headers(("Retry-After" = u64, description = "seconds"), ("Location" = String, description = "/transactions/{id} of the claimed transaction")))]
    Unavailable(ProblemBody),
}

/// Submit a money movement; 202 once Kafka has it. The API key's scope must
/// match `account` (the account debited, credited, or paying in a transfer).
#[utoipa::path(
    post,
    path = "/transactions",
    tag = "transactions",
    security(("api_key" = [])),
    request_body(content = TransactionRequest, content_type = "application/json"),
    params(("Idempotency-Key" = Option<String>, Header, description = "The transaction id, instead of `id` in the body (both given: they must match)", pattern = "^[A-Za-z0-9_.:-]{1,64}$")),
    responses(PostAnswers)
)]
pub(super) async fn post_transaction(
    State(api): State<Arc<ApiState>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Problem> {
    // Refused at once without a valid key; checked again once the body is
    // in: a key revoked while the body was on its way (up to the body
    // deadline) must not move money.
    authenticate(&api, &headers).await?;
    let body = read_body(&api, &headers, body).await?;
    let key = authenticate(&api, &headers).await?;
    let idempotency_key = headers.get("idempotency-key").map(|v| v.as_bytes());
    let posted = decode_transaction(&body, idempotency_key).map_err(Problem::request)?;
    let id = posted.id().clone();
    let Admitted { answers, quota } = api.admission.admit(key.clone(), vec![posted]).await;
    let quota = quota.map(|(limit, verdict)| Quota::new(limit, verdict));
    let answer = answers
        .into_iter()
        .next()
        .unwrap_or_else(|| Err(Refused::Internal("admission gave no answer".into())));
    let response = match answer {
        Ok(status) => status_response(&id, status),
        // Its own fields: the quota's, once.
        Err(Refused::RateLimited) => match quota {
            Some(quota) => return Err(quota.refusal(&key)),
            None => return Err(Problem::refused(Refused::RateLimited, api.retry_after_secs)),
        },
        Err(Refused::Forbidden { account, .. }) => {
            forbidden(&key, format!("account {account}")).into_response()
        }
        Err(refused) if !refused.names_the_id() => {
            Problem::refused(refused, api.retry_after_secs).into_response()
        }
        Err(refused) => Problem::refused(refused, api.retry_after_secs)
            .naming(&id)
            .into_response(),
    };
    Ok(with_quota(response, quota))
}

/// Adds a limited key's `RateLimit-Policy` and `RateLimit` fields.
pub(super) fn with_quota(mut response: Response, quota: Option<Quota>) -> Response {
    response
        .headers_mut()
        .extend(quota.iter().flat_map(Quota::headers));
    response
}

/// The seed's path: the same as `POST /transactions`.
#[utoipa::path(
    post,
    path = "/transaction",
    tag = "transactions",
    security(("api_key" = [])),
    request_body(content = TransactionRequest, content_type = "application/json"),
    params(("Idempotency-Key" = Option<String>, Header, description = "As for POST /transactions", pattern = "^[A-Za-z0-9_.:-]{1,64}$")),
    responses(PostAnswers)
)]
pub(super) async fn post_transaction_seed_path(
    api: State<Arc<ApiState>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Problem> {
    post_transaction(api, headers, body).await
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
        assert_eq!(tx.id().as_str(), "key-1");
    }

    /// serde reads a struct from a JSON array too (fields by position); no
    /// decoder of the API takes one, top-level or as a batch's item.
    #[test]
    fn a_body_that_is_an_array_is_refused_by_every_decoder() {
        let positional = br#" ["t-1", "debit", "acct", null, 5]"#;
        let object = br#"{"id": "t-1", "type": "debit", "account": "acct", "amount": 5}"#;
        assert!(decode_transaction(object, None).is_ok());
        assert!(matches!(
            decode_transaction(positional, None),
            Err(RequestError::Malformed(_))
        ));
        let batch_of_arrays = br#"{"transactions": [["t-1", "debit", "acct", null, 5]]}"#;
        let items = crate::http::decode_batch(batch_of_arrays).unwrap();
        assert!(matches!(
            items[0].transaction,
            Err(RequestError::Malformed(_))
        ));
        let short_array = crate::http::decode_batch(br#"{"transactions": [["t-1"]]}"#).unwrap();
        assert_eq!(short_array[0].id, None, "an array names no id");
        assert!(
            crate::http::decode_batch(br#"[[{"id": "t-1", "account": "a", "amount": 1}]]"#)
                .is_err()
        );
        assert!(crate::http::decode_key_request(br#"{"accounts": ["*"]}"#).is_ok());
        assert!(crate::http::decode_key_request(br#"[["*"]]"#).is_err());
    }

    #[test]
    fn metadata_is_a_flat_object_of_strings_within_its_limits_on_every_kind() {
        let fingerprint = |body: &str| match decode_transaction(body.as_bytes(), None) {
            Ok(Posted::Ready(tx)) => Ok(tx.fingerprint()),
            Ok(other) => Ok(format!("{other:?}")),
            Err(e) => Err(e),
        };
        let debit = r#""id":"t","account":"a","amount":1"#;
        let bare = fingerprint(&format!("{{{debit}}}")).unwrap();
        for same in [r#","metadata":null"#, r#","metadata":{}"#] {
            assert_eq!(
                fingerprint(&format!("{{{debit}{same}}}")).unwrap(),
                bare,
                "{same}"
            );
        }
        assert_eq!(
            fingerprint(&format!(r#"{{{debit},"metadata":{{"b":"2","a":"1"}}}}"#)).unwrap(),
            format!("{bare}\n{{\"a\":\"1\",\"b\":\"2\"}}")
        );
        for wrong_type in [r#"{"k":1}"#, r#"{"k":{"n":"v"}}"#, r#"["k"]"#, r#""k""#] {
            assert!(
                matches!(
                    fingerprint(&format!(r#"{{{debit},"metadata":{wrong_type}}}"#)),
                    Err(RequestError::Malformed(_))
                ),
                "{wrong_type}"
            );
        }
        let long_value = format!(r#"{{"k":"{}"}}"#, "v".repeat(513));
        assert_eq!(
            fingerprint(&format!(r#"{{{debit},"metadata":{long_value}}}"#)),
            Err(RequestError::Rule(RuleError::MetadataValue {
                key: "k".into()
            }))
        );
        // A hold, a capture and a void carry theirs to the transaction.
        let posted = |body: &str| decode_transaction(body.as_bytes(), None).unwrap();
        let terms = crate::domain::HoldTerms {
            account: AccountId::parse("a").unwrap(),
            to: None,
            amount: Amount::new(9).unwrap(),
        };
        let timeouts = crate::admission::HoldTimeouts {
            default_s: 60,
            max_s: 60,
        };
        for body in [
            r#"{"id":"h","type":"hold","account":"a","amount":1,"metadata":{"k":"v"}}"#,
            r#"{"id":"c","type":"capture","hold":"h","metadata":{"k":"v"}}"#,
            r#"{"id":"v","type":"void","hold":"h","metadata":{"k":"v"}}"#,
        ] {
            let tx = posted(body)
                .complete(timeouts, Some(terms.clone()))
                .unwrap();
            assert_eq!(tx.metadata.to_json(), r#"{"k":"v"}"#, "{body}");
        }
    }
}
