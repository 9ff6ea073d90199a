//! A client for txengine's HTTP API.
//!
//! ```no_run
//! # async fn run() -> txengine_client::Result<()> {
//! use txengine_client::{Client, NewTransaction};
//! let client = Client::new("http://127.0.0.1:8080", "txk_...")?;
//! let tx = NewTransaction::transfer("alice", "bob", 250); // its id is made here
//! client.submit(&tx).await?; // retried with that id on 503, 409, timeouts
//! let done = client.wait(&tx.id, std::time::Duration::from_secs(10)).await?;
//! println!("{:?} {:?}", done.status, done.reason);
//! # Ok(()) }
//! ```
//!
//! The rules every call follows (the same in the Python and TypeScript
//! clients): a transaction's id is made when it is built, so every retry
//! sends the same transaction; 503, 409 (in flight), timeouts and connection
//! errors are retried with backoff and jitter, never sooner than the
//! answer's `Retry-After`, until [`RetryPolicy::max_elapsed`]; a 429 waits
//! as long as it says; nothing else is retried, and making a key never is
//! (a retry could make two).

mod error;
mod model;

use std::collections::VecDeque;
use std::time::{Duration, Instant};

pub use error::{Error, Problem, Result};
pub use model::*;
pub use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

/// How long and how often a call retries.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// The most a call spends, from its first try, before it gives up
    /// ([`Error::RetriesExhausted`]); zero: one try only.
    pub max_elapsed: Duration,
    /// The first backoff; each retry doubles it, up to `max_backoff`, and
    /// waits a random part of it (full jitter).
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_elapsed: Duration::from_secs(30),
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
        }
    }
}

impl RetryPolicy {
    /// One try, no retry.
    pub const NEVER: RetryPolicy = RetryPolicy {
        max_elapsed: Duration::ZERO,
        initial_backoff: Duration::ZERO,
        max_backoff: Duration::ZERO,
    };

    /// The wait before retry `attempt` (1-based): a random part of the
    /// doubled backoff, and never less than what the server asked.
    fn backoff(&self, attempt: u32, at_least: Option<Duration>) -> Duration {
        let doubled = self
            .initial_backoff
            .saturating_mul(1u32 << attempt.min(16).saturating_sub(1))
            .min(self.max_backoff);
        let jittered = doubled.mul_f64(fastrand::f64());
        jittered.max(at_least.unwrap_or_default())
    }
}

/// Whether a request may be sent twice.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Retry {
    /// Retried by the rules: the request means the same every time.
    Safe,
    /// Never retried: a second try could do it twice (a new key).
    Never,
}

/// A client of one engine with one token (an API key, or the admin token
/// for the admin calls). Cheap to clone.
#[derive(Debug, Clone)]
pub struct Client {
    base_url: String,
    token: Option<String>,
    http: reqwest::Client,
    retry: RetryPolicy,
}

/// The status, headers and JSON body (`null` when empty) of one try.
#[derive(Debug, Clone)]
pub struct RawAnswer {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl Client {
    /// A client of the engine at `base_url` sending `token`, each try given
    /// 10 s, retrying by [`RetryPolicy::default`].
    pub fn new(base_url: &str, token: &str) -> Result<Self> {
        Self::with_options(
            base_url,
            Some(token),
            Duration::from_secs(10),
            RetryPolicy::default(),
        )
    }

    /// A client with its own try timeout and retry bound; `token` may be
    /// left out for the calls that need none (`/health`, `/ready`).
    pub fn with_options(
        base_url: &str,
        token: Option<&str>,
        try_timeout: Duration,
        retry: RetryPolicy,
    ) -> Result<Self> {
        let http = reqwest::Client::builder().timeout(try_timeout).build()?;
        Ok(Self::with_http(base_url, token, http, retry))
    }

    /// A client on an HTTP client of your own (its timeouts, pool, proxy).
    pub fn with_http(
        base_url: &str,
        token: Option<&str>,
        http: reqwest::Client,
        retry: RetryPolicy,
    ) -> Self {
        Self {
            base_url: base_url.trim_end_matches('/').to_owned(),
            token: token.map(str::to_owned),
            http,
            retry,
        }
    }

    /// The same client (and connections) sending another token.
    pub fn with_token(&self, token: &str) -> Self {
        Self {
            token: Some(token.to_owned()),
            ..self.clone()
        }
    }

    /// The same client with another retry bound.
    pub fn with_retry(&self, retry: RetryPolicy) -> Self {
        Self {
            retry,
            ..self.clone()
        }
    }

    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    /// Submits a transaction: `pending` once the broker has it (202), or
    /// its outcome if it was already settled (the same id again).
    pub async fn submit(&self, tx: &NewTransaction) -> Result<Transaction> {
        let answer = self
            .call(Method::POST, "/transactions", &[], Some(tx), Retry::Safe)
            .await
            .map_err(|e| with_id(e, &tx.id))?;
        decode(answer).await
    }

    /// Submits up to 1,000 transactions: one result per item, in order.
    /// Items answered `in_flight`, `rate_limited` or `unavailable` are sent
    /// again (alone, with their ids) within the retry bound; past it they
    /// keep that status, and their ids are the ones to retry with.
    pub async fn submit_batch(&self, items: &[NewTransaction]) -> Result<Vec<ItemResult>> {
        let started = Instant::now();
        let mut results: Vec<Option<ItemResult>> = vec![None; items.len()];
        let mut open: Vec<usize> = (0..items.len()).collect();
        for attempt in 1.. {
            let body = BatchBody {
                transactions: open.iter().map(|&i| &items[i]).collect(),
            };
            let answer = self
                .call_since(
                    started,
                    Method::POST,
                    "/transactions/batch",
                    &[],
                    Some(&body),
                    Retry::Safe,
                )
                .await?;
            let BatchAnswer { results: answered } = decode(answer).await?;
            if answered.len() != open.len() {
                return Err(Error::Unexpected {
                    status: 200,
                    detail: format!("{} results for {} items", answered.len(), open.len()),
                });
            }
            let mut again = Vec::new();
            let mut asked = None;
            for (&i, result) in open.iter().zip(answered) {
                if result.status.is_retried() {
                    again.push(i);
                    asked = asked.max(result.retry_after_s.map(Duration::from_secs));
                }
                results[i] = Some(result);
            }
            let wait = self.retry.backoff(attempt, asked);
            if again.is_empty() || started.elapsed() + wait > self.retry.max_elapsed {
                break;
            }
            tokio::time::sleep(wait).await;
            open = again;
        }
        Ok(results.into_iter().flatten().collect())
    }

    /// A transaction by id (a `not-found` problem when unknown).
    pub async fn transaction(&self, id: &str) -> Result<Transaction> {
        self.get(&format!("/transactions/{id}"), &[]).await
    }

    /// Polls a transaction until it is settled ([`Status::is_settled`]),
    /// backing off from 20 ms to 1 s; [`Error::WaitTimedOut`] after
    /// `deadline`.
    pub async fn wait(&self, id: &str, deadline: Duration) -> Result<Transaction> {
        let started = Instant::now();
        let mut pause = Duration::from_millis(20);
        loop {
            let tx = self.transaction(id).await?;
            if tx.status.is_settled() {
                return Ok(tx);
            }
            if started.elapsed() >= deadline {
                return Err(Error::WaitTimedOut {
                    id: id.to_owned(),
                    status: tx.status,
                    waited: started.elapsed(),
                });
            }
            tokio::time::sleep(pause.min(deadline.saturating_sub(started.elapsed()))).await;
            pause = (pause * 2).min(Duration::from_secs(1));
        }
    }

    pub async fn account(&self, account: &str) -> Result<Account> {
        self.get(&format!("/accounts/{account}"), &[]).await
    }

    pub async fn balance(&self, account: &str) -> Result<Balance> {
        self.get(&format!("/balance/{account}"), &[]).await
    }

    /// The balance at `at` (an RFC 3339 time).
    pub async fn balance_at(&self, account: &str, at: &str) -> Result<BalanceAt> {
        self.get(&format!("/balance/{account}"), &[("at", at)])
            .await
    }

    /// An account's history, newest first, page after page as it is read.
    pub fn history(&self, account: &str, query: HistoryQuery) -> History<'_> {
        History {
            client: self,
            account: account.to_owned(),
            query,
            cursor: None,
            entries: VecDeque::new(),
            done: false,
        }
    }

    /// Admin: makes an account or changes it (asset, bounds, metadata).
    pub async fn put_account(&self, account: &str, spec: &AccountSpec) -> Result<Account> {
        let path = format!("/accounts/{account}");
        decode(
            self.call(Method::PUT, &path, &[], Some(spec), Retry::Safe)
                .await?,
        )
        .await
    }

    /// Admin: sets a balance (within the account's bounds).
    pub async fn set_balance(&self, account: &str, balance: i64) -> Result<Balance> {
        let path = format!("/balance/{account}");
        let body = serde_json::json!({ "balance": balance });
        decode(
            self.call(Method::PUT, &path, &[], Some(&body), Retry::Safe)
                .await?,
        )
        .await
    }

    /// Admin: makes a key. Never retried: a second try could make two.
    pub async fn create_key(&self, spec: &KeySpec) -> Result<CreatedKey> {
        decode(
            self.call(Method::POST, "/admin/keys", &[], Some(spec), Retry::Never)
                .await?,
        )
        .await
    }

    /// Admin: every key (never their secrets).
    pub async fn keys(&self) -> Result<Vec<Key>> {
        #[derive(serde::Deserialize)]
        struct KeyList {
            keys: Vec<Key>,
        }
        let list: KeyList = self.get("/admin/keys", &[]).await?;
        Ok(list.keys)
    }

    /// Admin: revokes a key; its requests are refused from now on.
    pub async fn revoke_key(&self, id: &str) -> Result<()> {
        let path = format!("/admin/keys/{id}");
        let answer = self
            .call::<()>(Method::DELETE, &path, &[], None, Retry::Safe)
            .await?;
        expect_success(answer).await.map(drop)
    }

    /// One try of any request, answered as it came (any status): for what
    /// the typed calls do not cover, and for probing the API itself.
    pub async fn send_raw(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<RawAnswer> {
        let response = self.request(method, path, &[], body).send().await?;
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.bytes().await?;
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).map_err(|e| Error::Unexpected {
                status: status.as_u16(),
                detail: format!("not JSON ({e}): {}", String::from_utf8_lossy(&bytes)),
            })?
        };
        Ok(RawAnswer {
            status,
            headers,
            body,
        })
    }

    async fn get<T: DeserializeOwned>(&self, path: &str, query: &[(&str, &str)]) -> Result<T> {
        decode(
            self.call::<()>(Method::GET, path, query, None, Retry::Safe)
                .await?,
        )
        .await
    }

    fn request<B: Serialize + ?Sized>(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        body: Option<&B>,
    ) -> reqwest::RequestBuilder {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.base_url))
            .query(query);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        request
    }

    async fn call<B: Serialize + ?Sized>(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        body: Option<&B>,
        retry: Retry,
    ) -> Result<reqwest::Response> {
        self.call_since(Instant::now(), method, path, query, body, retry)
            .await
    }

    /// Tries the request until an answer that is not retried, or until
    /// the retry bound counted from `started`.
    async fn call_since<B: Serialize + ?Sized>(
        &self,
        started: Instant,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        body: Option<&B>,
        retry: Retry,
    ) -> Result<reqwest::Response> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let sent = self.request(method.clone(), path, query, body).send().await;
            let (error, asked) = match sent {
                Ok(response) => match retried_status(&response) {
                    None => return Ok(response),
                    Some(asked) => {
                        let problem = problem_of(response).await;
                        (Error::Problem(problem), asked)
                    }
                },
                Err(e) if e.is_timeout() || e.is_connect() || e.is_request() => {
                    (Error::Transport(e), None)
                }
                Err(e) => return Err(Error::Transport(e)),
            };
            let wait = self.retry.backoff(attempt, asked);
            if retry == Retry::Never || started.elapsed() + wait > self.retry.max_elapsed {
                let retried = retry == Retry::Safe && !self.retry.max_elapsed.is_zero();
                return Err(if attempt == 1 && !retried {
                    error
                } else {
                    Error::RetriesExhausted {
                        id: None,
                        attempts: attempt,
                        elapsed: started.elapsed(),
                        last: Box::new(error),
                    }
                });
            }
            tokio::time::sleep(wait).await;
        }
    }
}

/// An answer the rules retry: `Some(Retry-After)` for a 503, a 409 or a
/// 429, `None` for any other.
fn retried_status(response: &reqwest::Response) -> Option<Option<Duration>> {
    is_retried_status(response.status().as_u16()).then(|| {
        response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok())
            .map(Duration::from_secs)
    })
}

/// Whether an answer of this status is retried: 503 (not taken now), 409
/// (the same transaction in flight) and 429 (over the rate); no other.
pub fn is_retried_status(status: u16) -> bool {
    matches!(status, 503 | 409 | 429)
}

/// Names `id` in exhausted retries of a transaction, so the caller knows
/// what to retry with.
fn with_id(error: Error, id: &str) -> Error {
    match error {
        Error::RetriesExhausted {
            attempts,
            elapsed,
            last,
            ..
        } => Error::RetriesExhausted {
            id: Some(id.to_owned()),
            attempts,
            elapsed,
            last,
        },
        other => other,
    }
}

/// The problem an answer that is not a success carries.
async fn problem_of(response: reqwest::Response) -> Problem {
    let status = response.status();
    let bytes = response.bytes().await.unwrap_or_default();
    serde_json::from_slice(&bytes).unwrap_or_else(|_| Problem {
        kind: "urn:txengine:problem:unknown".into(),
        title: status.canonical_reason().unwrap_or("").into(),
        status: status.as_u16(),
        detail: String::from_utf8_lossy(&bytes).into_owned(),
        id: None,
    })
}

async fn expect_success(response: reqwest::Response) -> Result<reqwest::Response> {
    if response.status().is_success() {
        Ok(response)
    } else {
        Err(Error::Problem(problem_of(response).await))
    }
}

async fn decode<T: DeserializeOwned>(response: reqwest::Response) -> Result<T> {
    let response = expect_success(response).await?;
    let status = response.status().as_u16();
    let bytes = response.bytes().await?;
    serde_json::from_slice(&bytes).map_err(|e| Error::Unexpected {
        status,
        detail: format!("{e}: {}", String::from_utf8_lossy(&bytes)),
    })
}

#[derive(Serialize)]
struct BatchBody<'a> {
    transactions: Vec<&'a NewTransaction>,
}

#[derive(serde::Deserialize)]
struct BatchAnswer {
    results: Vec<ItemResult>,
}

/// An account's history read page by page: [`History::next`] gives the
/// entries one at a time, following the cursors.
pub struct History<'a> {
    client: &'a Client,
    account: String,
    query: HistoryQuery,
    cursor: Option<String>,
    entries: VecDeque<Entry>,
    done: bool,
}

impl History<'_> {
    /// The next (older) entry, `None` after the last.
    pub async fn next(&mut self) -> Result<Option<Entry>> {
        while self.entries.is_empty() {
            match self.next_page().await? {
                Some(page) => self.entries.extend(page.entries),
                None => return Ok(None),
            }
        }
        Ok(self.entries.pop_front())
    }

    /// The next page whole, `None` after the last.
    pub async fn next_page(&mut self) -> Result<Option<HistoryPage>> {
        if self.done {
            return Ok(None);
        }
        let limit = self.query.limit.map(|l| l.to_string());
        let mut query = Vec::new();
        let fields = [
            ("limit", limit.as_deref()),
            ("since", self.query.since.as_deref()),
            ("until", self.query.until.as_deref()),
            ("cursor", self.cursor.as_deref()),
        ];
        for (name, value) in fields {
            if let Some(value) = value {
                query.push((name, value));
            }
        }
        let path = format!("/accounts/{}/transactions", self.account);
        let page: HistoryPage = self.client.get(&path, &query).await?;
        self.cursor = page.next_cursor.clone();
        self.done = self.cursor.is_none();
        Ok(Some(page))
    }

    /// Every entry left, read to the end.
    pub async fn collect(mut self) -> Result<Vec<Entry>> {
        let mut all = Vec::new();
        while let Some(entry) = self.next().await? {
            all.push(entry);
        }
        Ok(all)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_under_its_cap_and_honours_what_the_server_asked() {
        let policy = RetryPolicy {
            max_elapsed: Duration::from_secs(10),
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(400),
        };
        for _ in 0..200 {
            assert!(policy.backoff(1, None) <= Duration::from_millis(100));
            assert!(policy.backoff(3, None) <= Duration::from_millis(400));
            assert!(policy.backoff(9, None) <= Duration::from_millis(400));
            let asked = Some(Duration::from_secs(2));
            assert!(policy.backoff(1, asked) >= Duration::from_secs(2));
        }
        // Jitter: not the same wait every time.
        let waits: std::collections::HashSet<_> =
            (0..20).map(|_| policy.backoff(3, None)).collect();
        assert!(waits.len() > 1);
    }

    #[tokio::test]
    async fn connection_errors_are_retried_but_making_a_key_never_is() {
        // Nothing listens on port 1 of loopback: every try is refused at once.
        let retry = RetryPolicy {
            max_elapsed: Duration::from_millis(300),
            ..RetryPolicy::default()
        };
        let client = Client::with_options(
            "http://127.0.0.1:1",
            Some("t"),
            Duration::from_secs(1),
            retry,
        )
        .unwrap();
        match client.balance("a").await {
            Err(Error::RetriesExhausted { attempts, last, .. }) => {
                assert!(attempts > 1);
                assert!(matches!(*last, Error::Transport(_)), "{last}");
            }
            other => panic!("expected exhausted retries, got {other:?}"),
        }
        let spec = KeySpec {
            accounts: vec!["*".into()],
            rate_per_s: None,
            burst: None,
        };
        let once = client.create_key(&spec).await;
        assert!(matches!(once, Err(Error::Transport(_))), "{once:?}");
    }

    #[test]
    fn a_transaction_is_serialized_as_the_api_takes_it() {
        let tx = NewTransaction::hold_for("alice", 100, Some("bob".into()), Some(60))
            .with_id("h-1")
            .with_asset("USD/2")
            .with_metadata("order", "42");
        assert_eq!(
            serde_json::to_value(&tx).unwrap(),
            serde_json::json!({"id": "h-1", "type": "hold", "account": "alice", "amount": 100,
                "to": "bob", "timeout_s": 60, "asset": "USD/2", "metadata": {"order": "42"}})
        );
        let capture = NewTransaction::capture("h-1", None);
        let body = serde_json::to_value(&capture).unwrap();
        assert_eq!(body["type"], "capture");
        assert!(body.get("amount").is_none());
        // A UUIDv7, made before any try.
        assert_eq!(
            uuid::Uuid::parse_str(&capture.id)
                .unwrap()
                .get_version_num(),
            7
        );
    }

    #[test]
    fn unknown_statuses_are_read_not_refused() {
        let tx: Transaction =
            serde_json::from_value(serde_json::json!({"id": "x", "status": "teleported"})).unwrap();
        assert_eq!(tx.status, Status::Unknown);
        assert!(!Status::Pending.is_settled());
        assert!(!Status::Capturing.is_settled());
        assert!(Status::Held.is_settled());
    }
}
