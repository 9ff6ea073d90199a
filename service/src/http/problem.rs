//! Problem answers (RFC 9457 `application/problem+json`): every error of the API.

use axum::http::{header, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use crate::admission::Refused;
use crate::domain::RuleError;
use crate::store::StoreError;

/// An RFC 9457 problem; every error answer of the API is one of these.
#[derive(Debug)]
pub(crate) struct Problem {
    status: StatusCode,
    slug: &'static str,
    title: &'static str,
    detail: String,
    retry_after_secs: Option<u64>,
    /// More fields for the answer (the rate limit fields of a 429).
    headers: Vec<(HeaderName, HeaderValue)>,
    /// The transaction this answer is about, when the client must retry
    /// with its id (see [`Problem::naming`]). Boxed: a `Problem` is the
    /// error of every handler, kept small.
    id: Option<Box<str>>,
}

impl Problem {
    pub(super) fn new(
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
            headers: Vec::new(),
            id: None,
        }
    }

    /// Names the transaction `id` in the answer (an `id` field, and
    /// `Location` on a 503): after a claim, a publish that failed may
    /// still land, so the client's retry must carry this id (the server
    /// may have made it), or it could pay twice.
    pub(super) fn naming(mut self, id: &crate::domain::TxId) -> Self {
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            if let Ok(location) = HeaderValue::from_str(&format!("/transactions/{id}")) {
                self.headers.push((header::LOCATION, location));
            }
            self.detail = format!("{}; retry with id {id}", self.detail);
        }
        self.id = Some(id.as_str().into());
        self
    }

    /// More header fields for the answer (a limited key's quota).
    pub(super) fn with_headers(
        mut self,
        headers: impl IntoIterator<Item = (HeaderName, HeaderValue)>,
    ) -> Self {
        self.headers.extend(headers);
        self
    }

    pub(super) fn rule(error: RuleError) -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "rule-broken",
            "A rule of the request is broken",
            error.to_string(),
        )
    }

    /// 400 or 422 for a body the decoder refused.
    pub(super) fn request(error: super::RequestError) -> Self {
        match error {
            super::RequestError::Malformed(detail) => Self::malformed(detail),
            super::RequestError::Rule(rule) => Self::rule(rule),
        }
    }

    pub(super) fn malformed(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "malformed",
            "The body is not valid JSON of the expected shape",
            detail,
        )
    }

    pub(super) fn unavailable(detail: impl Into<String>, retry_after_secs: u64) -> Self {
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

    /// The consumers are too far behind: nothing new is taken until they
    /// catch up (a 503 a client retries as any other, told apart so that a
    /// load runner or an operator can count it).
    pub(super) fn overloaded(detail: impl Into<String>, retry_after_secs: u64) -> Self {
        Self {
            retry_after_secs: Some(retry_after_secs),
            ..Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "overloaded",
                "The engine is behind and takes nothing new for now",
                detail,
            )
        }
    }

    pub(super) fn rate_limited(
        detail: String,
        retry_after_secs: u64,
        headers: impl IntoIterator<Item = (HeaderName, HeaderValue)>,
    ) -> Self {
        Self {
            retry_after_secs: Some(retry_after_secs),
            headers: headers.into_iter().collect(),
            ..Self::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate-limited",
                "The API key is over its rate limit",
                detail,
            )
        }
    }

    pub(super) fn refused(refused: Refused, retry_after_secs: u64) -> Self {
        let detail = refused.to_string();
        match refused {
            Refused::Invalid(rule) => Self::rule(rule),
            Refused::Forbidden { .. } => {
                Self::new(StatusCode::FORBIDDEN, "forbidden", "Not allowed", detail)
            }
            Refused::HoldUnreadable(e) => Self::from_store(e, retry_after_secs),
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
            // The handler answers from the verdict first (with the fields);
            // this is only the fallback.
            Refused::RateLimited => Self::rate_limited(detail, retry_after_secs, []),
            Refused::Redis(e) => Self::from_store(e, retry_after_secs),
            Refused::Kafka(e) => {
                tracing::warn!(error = %e, "publish failed");
                Self::unavailable(detail, retry_after_secs)
            }
            Refused::Backlog(_) => Self::overloaded(detail, retry_after_secs),
            Refused::QueueFull | Refused::BindingLost(_) | Refused::Internal(_) => {
                Self::unavailable(detail, retry_after_secs)
            }
        }
    }

    pub(super) fn from_store(e: StoreError, retry_after_secs: u64) -> Self {
        metrics::counter!("txengine_redis_errors_total", "op" => "api").increment(1);
        tracing::warn!(error = %e, "redis unavailable for an API request");
        Self::unavailable("redis is unavailable", retry_after_secs)
    }
}

/// The body of every error answer (`application/problem+json`, RFC 9457).
#[derive(Serialize, ToSchema)]
pub(super) struct ProblemBody {
    /// `urn:txengine:problem:<slug>`; slugs: malformed, too-large, not-json,
    /// body-timeout, rule-broken, id-conflict, in-flight, not-found,
    /// unauthorized, forbidden, rate-limited, method-not-allowed, unavailable,
    /// overloaded.
    #[serde(rename = "type")]
    #[schema(pattern = "^urn:txengine:problem:[a-z-]+$")]
    kind: String,
    /// A short summary, the same for every problem of this type.
    title: &'static str,
    /// The HTTP status code.
    status: u16,
    /// What went wrong with this request.
    detail: String,
    /// The transaction the answer is about, when a transaction was claimed
    /// (the server makes the id when the request has none): a 503 may still
    /// be applied, so retry with this id, never with a new one.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(pattern = "^[A-Za-z0-9_.:-]{1,64}$")]
    id: Option<String>,
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let body = ProblemBody {
            kind: format!("urn:txengine:problem:{}", self.slug),
            title: self.title,
            status: self.status.as_u16(),
            detail: self.detail,
            id: self.id.map(String::from),
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
        headers.extend(self.headers);
        response
    }
}

pub(super) fn not_found(detail: String) -> Problem {
    Problem::new(StatusCode::NOT_FOUND, "not-found", "Not found", detail)
}
