//! Who is asking: the admin token for admin operations, an API key (its
//! scope and its rate limit) for the money endpoints. Every check here runs
//! before anything is claimed, published or written.

use std::sync::Arc;
use std::time::Instant;

use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use subtle::ConstantTimeEq;

use super::problem::Problem;
use super::ApiState;
use crate::domain::AccountId;
use crate::keys::{self, ApiKey, RateLimit};
use crate::store::RateVerdict;

/// The bearer token of a request, if it sent one (the scheme name is
/// case-insensitive, RFC 9110 11.1).
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

fn unauthorized(detail: &str) -> Problem {
    Problem::new(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "Credentials required",
        detail,
    )
}

pub(super) fn authorize_admin(api: &ApiState, headers: &HeaderMap) -> Result<(), Problem> {
    let given =
        bearer(headers).ok_or_else(|| unauthorized("send Authorization: Bearer <admin token>"))?;
    match &api.admin_token {
        Some(expected) if bool::from(given.as_bytes().ct_eq(expected.expose().as_bytes())) => {
            Ok(())
        }
        _ => Err(Problem::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "Not allowed",
            "the admin token is wrong or no admin token is configured",
        )),
    }
}

fn count_refusal(status: &'static str, key: &str) {
    metrics::counter!("txengine_auth_refused_total", "status" => status, "key" => key.to_owned())
        .increment(1);
}

/// The API key a request presents: known (read from Redis at most
/// `--key-cache-ms` ago) and its secret right, or 401. Redis down: 503.
pub(super) async fn authenticate(
    api: &ApiState,
    headers: &HeaderMap,
) -> Result<Arc<ApiKey>, Problem> {
    let refused = |key: &str| {
        count_refusal("401", key);
        unauthorized(
            "send Authorization: Bearer <API key>; unknown, revoked or wrong keys are refused",
        )
    };
    let secret = bearer(headers).ok_or_else(|| refused("none"))?;
    let id = keys::key_id_of(secret).ok_or_else(|| refused("unknown"))?;
    let key = match api.keys.get(&id) {
        Some(key) => key,
        None => {
            let read_at = Instant::now();
            let key = api
                .store
                .api_key(&id)
                .await
                .map_err(|e| Problem::from_store(e, api.retry_after_secs))?
                .ok_or_else(|| refused("unknown"))?;
            let key = Arc::new(key);
            api.keys.insert(key.clone(), read_at);
            key
        }
    };
    if key.verifies(secret) {
        Ok(key)
    } else {
        Err(refused(key.id.as_str()))
    }
}

/// 403 unless `key`'s scope matches `account`.
pub(super) fn require_scope(key: &ApiKey, account: &AccountId) -> Result<(), Problem> {
    if key.scope.allows(account) {
        Ok(())
    } else {
        Err(forbidden(key, format!("account {account}")))
    }
}

/// The 403 of a key out of its scope (`what` it may not touch), counted.
pub(super) fn forbidden(key: &ApiKey, what: String) -> Problem {
    count_refusal("403", key.id.as_str());
    Problem::new(
        StatusCode::FORBIDDEN,
        "forbidden",
        "Not allowed",
        format!("API key {} may not touch {what}", key.id),
    )
}

/// What a limited key has left, for the `RateLimit-Policy` and `RateLimit`
/// fields (draft-ietf-httpapi-ratelimit-headers-10): the policy is the
/// key's quota, `rate_per_s` requests per 1-second window (the draft has no
/// burst parameter; the burst shows in `r`, what is left right now).
pub(super) struct Quota {
    limit: RateLimit,
    verdict: RateVerdict,
}

impl Quota {
    pub(super) fn new(limit: RateLimit, verdict: RateVerdict) -> Self {
        Self { limit, verdict }
    }

    /// Seconds until the key may send again.
    pub(super) fn retry_after_secs(&self) -> u64 {
        self.verdict
            .retry_after
            .as_micros()
            .div_ceil(1_000_000)
            .max(1) as u64
    }

    /// The 429 of a request `key`'s limit refused, with its fields.
    pub(super) fn refusal(&self, key: &ApiKey) -> Problem {
        Problem::rate_limited(
            format!(
                "API key {} is over its limit of {} requests per second (burst {})",
                key.id, self.limit.rate_per_s, self.limit.burst
            ),
            self.retry_after_secs(),
            self.headers(),
        )
    }

    pub(super) fn headers(&self) -> [(HeaderName, HeaderValue); 2] {
        let policy = format!("\"key\";q={};w=1", self.limit.rate_per_s);
        let state = format!(
            "\"key\";r={};t={}",
            self.verdict.remaining,
            self.verdict.reset.as_micros().div_ceil(1_000_000)
        );
        [
            (
                HeaderName::from_static("ratelimit-policy"),
                HeaderValue::from_str(&policy).expect("ASCII"),
            ),
            (
                HeaderName::from_static("ratelimit"),
                HeaderValue::from_str(&state).expect("ASCII"),
            ),
        ]
    }
}

/// Counts one read against `key`'s rate limit (the limit admission counts
/// money requests by): `None` for a key without a limit (or with the
/// limiter off), the quota left when allowed, 429 when over it, 503 when
/// Redis does not answer (never unlimited).
pub(super) async fn spend(api: &ApiState, key: &ApiKey) -> Result<Option<Quota>, Problem> {
    let Some(limit) = api.admission.limit_of(key) else {
        return Ok(None);
    };
    let verdict = api
        .store
        .spend(&key.id, limit)
        .await
        .map_err(|e| Problem::from_store(e, api.retry_after_secs))?;
    let quota = Quota::new(limit, verdict);
    if verdict.allowed {
        return Ok(Some(quota));
    }
    metrics::counter!("txengine_rate_limited_total", "key" => key.id.as_str().to_owned())
        .increment(1);
    Err(quota.refusal(key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_takes_any_case_of_the_scheme_and_nothing_else() {
        let with = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::AUTHORIZATION, HeaderValue::from_str(value).unwrap());
            bearer(&headers).map(str::to_owned)
        };
        assert_eq!(with("Bearer abc").as_deref(), Some("abc"));
        assert_eq!(with("bearer abc").as_deref(), Some("abc"));
        assert_eq!(with("Basic abc"), None);
        assert_eq!(with("Bearer "), None);
        assert_eq!(with("Bearerabc"), None);
        assert_eq!(bearer(&HeaderMap::new()), None);
    }
}
