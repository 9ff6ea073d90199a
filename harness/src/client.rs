//! The harness's one HTTP client for the engine's API: the tests, the
//! scenario runner and the load runs' setup all speak to the engine through
//! it, and it sends every request through the client library
//! (`txengine-client`), one try each. Raw answers come back as (status,
//! JSON body); anything that is not JSON where JSON was promised is an
//! error, never a silent `null`.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::{json, Value};
use txengine_client::{Client, KeySpec, Method, RetryPolicy, StatusCode};

use crate::workload::{account_name, AccountSpec, Ledger};

/// The rate limit of the keys the harness makes for itself: the largest a
/// key may have, far above any load here, so every request pays for the
/// limiter and none is refused by it.
pub const HARNESS_KEY_RATE: u64 = txengine::limits::MAX_RATE;

#[derive(Clone)]
pub struct ApiClient {
    /// `http://host:port`, no trailing slash.
    pub base_url: String,
    /// The admin token, for the balance setter and the key endpoints.
    pub admin_token: String,
    /// The API key every request sends (as `Authorization: Bearer`), unless
    /// it sets its own: [`ApiClient::with_api_key`].
    pub api_key: Option<String>,
    /// The client library with the API key (none before
    /// [`ApiClient::with_api_key`]): every request of the methods below goes
    /// through it or through [`ApiClient::admin`].
    pub client: Client,
    /// The client library with the admin token.
    pub admin: Client,
    /// A bare HTTP client sending the API key, for the tests of the HTTP
    /// layer itself (headers, content types) that no client library sends.
    pub http: reqwest::Client,
    timeout: Duration,
}

/// A key as `POST /admin/keys` made it.
#[derive(Debug, Clone)]
pub struct NewKey {
    pub id: String,
    pub secret: String,
}

impl ApiClient {
    /// A client for `base_url` whose requests give up after `timeout`; it
    /// sends no API key until [`ApiClient::with_api_key`].
    pub fn new(base_url: &str, admin_token: &str, timeout: Duration) -> anyhow::Result<Self> {
        Self::connect(base_url, admin_token, None, timeout)
    }

    /// The same client sending `secret` as its API key on every request
    /// (a request that sets `Authorization` itself, as the admin calls do,
    /// sends that instead), on connections of its own: this one's, idle
    /// in its pools, close with it (a test of the engine's connection cap
    /// counts only its own).
    pub fn with_api_key(&self, secret: &str) -> anyhow::Result<Self> {
        Self::connect(
            &self.base_url,
            &self.admin_token,
            Some(secret),
            self.timeout,
        )
    }

    fn connect(
        base_url: &str,
        admin_token: &str,
        api_key: Option<&str>,
        timeout: Duration,
    ) -> anyhow::Result<Self> {
        let pool = || reqwest::Client::builder().timeout(timeout);
        // The harness judges every answer itself: one try per request.
        let admin = Client::with_http(
            base_url,
            Some(admin_token),
            pool().build()?,
            RetryPolicy::NEVER,
        );
        let client = Client::with_http(base_url, api_key, pool().build()?, RetryPolicy::NEVER);
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(secret) = api_key {
            let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {secret}"))?;
            value.set_sensitive(true);
            headers.insert(reqwest::header::AUTHORIZATION, value);
        }
        Ok(Self {
            base_url: admin.base_url().to_owned(),
            admin_token: admin_token.to_owned(),
            api_key: api_key.map(str::to_owned),
            admin,
            client,
            http: pool().default_headers(headers).build()?,
            timeout,
        })
    }

    /// Makes a key for every account, limited at [`HARNESS_KEY_RATE`], and
    /// returns this client sending it.
    pub async fn with_new_key(&self) -> anyhow::Result<Self> {
        let key = self
            .create_key(&["*"], Some(HARNESS_KEY_RATE), Some(HARNESS_KEY_RATE))
            .await?;
        self.with_api_key(&key.secret)
    }

    /// POST /admin/keys with the admin token.
    pub async fn create_key(
        &self,
        accounts: &[&str],
        rate_per_s: Option<u64>,
        burst: Option<u64>,
    ) -> anyhow::Result<NewKey> {
        let spec = KeySpec {
            accounts: accounts.iter().map(|a| a.to_string()).collect(),
            rate_per_s,
            burst,
        };
        let created = self
            .admin
            .create_key(&spec)
            .await
            .context("POST /admin/keys")?;
        Ok(NewKey {
            id: created.key.id,
            secret: created.secret,
        })
    }

    /// DELETE /admin/keys/{id} with the admin token.
    pub async fn revoke_key(&self, id: &str) -> anyhow::Result<()> {
        self.admin
            .revoke_key(id)
            .await
            .with_context(|| format!("DELETE /admin/keys/{id}"))
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url)
    }

    /// POST /transactions with a JSON body.
    pub async fn post(&self, body: &Value) -> anyhow::Result<(StatusCode, Value)> {
        raw(&self.client, Method::POST, "/transactions", Some(body)).await
    }

    /// POST /transactions/batch with these items.
    pub async fn post_batch(&self, items: &[Value]) -> anyhow::Result<(StatusCode, Value)> {
        let body = json!({ "transactions": items });
        raw(
            &self.client,
            Method::POST,
            "/transactions/batch",
            Some(&body),
        )
        .await
    }

    pub async fn get(&self, path: &str) -> anyhow::Result<(StatusCode, Value)> {
        raw(&self.client, Method::GET, path, None).await
    }

    /// GET `path` with the admin token (which `/ready` shows more to).
    pub async fn get_as_admin(&self, path: &str) -> anyhow::Result<(StatusCode, Value)> {
        raw(&self.admin, Method::GET, path, None).await
    }

    /// PUT /balance/{account} with the admin token: its answer, whatever it is.
    pub async fn put_balance_raw(
        &self,
        account: &str,
        balance: i64,
    ) -> anyhow::Result<(StatusCode, Value)> {
        let path = format!("/balance/{account}");
        let body = json!({ "balance": balance });
        raw(&self.admin, Method::PUT, &path, Some(&body)).await
    }

    /// PUT /accounts/{account} with the admin token: its answer, whatever
    /// it is.
    pub async fn put_account(
        &self,
        account: &str,
        body: &Value,
    ) -> anyhow::Result<(StatusCode, Value)> {
        let path = format!("/accounts/{account}");
        raw(&self.admin, Method::PUT, &path, Some(body)).await
    }

    /// PUT /balance/{account} with the admin token.
    pub async fn set_balance(&self, account: &str, balance: u64) -> anyhow::Result<()> {
        let balance = i64::try_from(balance).context("a balance above i64")?;
        self.admin
            .set_balance(account, balance)
            .await
            .with_context(|| format!("set_balance({account})"))?;
        Ok(())
    }

    /// The balance of `account`, `None` if it does not exist; any other
    /// answer (a 503, say) is an error.
    pub async fn balance(&self, account: &str) -> anyhow::Result<Option<i64>> {
        match self.client.balance(account).await {
            Ok(balance) => Ok(Some(balance.balance)),
            Err(e) if e.is("not-found") => Ok(None),
            Err(e) => Err(e).with_context(|| format!("GET /balance/{account}")),
        }
    }
    /// Funds accounts `acct-0 .. acct-{count-1}` with `balance` each;
    /// returns the starting balances for the ledger.
    pub async fn fund_accounts(
        &self,
        count: usize,
        balance: u64,
    ) -> anyhow::Result<HashMap<String, u64>> {
        let mut start = HashMap::new();
        for i in 0..count {
            let account = account_name(i);
            self.set_balance(&account, balance).await?;
            start.insert(account, balance);
        }
        Ok(start)
    }

    /// Makes accounts `acct-0 .. acct-{count-1}` as a scenario has them
    /// ([`AccountSpec::of_scenario`]: two assets, overdrafts, caps), each
    /// funded through the admin setter; returns the ledger's start (the
    /// balances and the specs).
    pub async fn open_accounts(&self, count: usize, balance: u64) -> anyhow::Result<Ledger> {
        let mut opened = Ledger::default();
        for i in 0..count {
            let account = account_name(i);
            let (spec, start) = AccountSpec::of_scenario(i, balance);
            let (status, body) = self.put_account(&account, &spec.request_body()).await?;
            anyhow::ensure!(
                status.is_success(),
                "PUT /accounts/{account}: {status} {body}"
            );
            self.set_balance(&account, start).await?;
            opened.start.insert(account.clone(), start);
            opened.accounts.insert(account, spec);
        }
        Ok(opened)
    }

    /// The balances of `acct-0 .. acct-{count-1}`; an account that does not
    /// exist is an error.
    pub async fn balances(&self, count: usize) -> anyhow::Result<HashMap<String, i64>> {
        let mut all = HashMap::new();
        for i in 0..count {
            let account = account_name(i);
            let balance = self
                .balance(&account)
                .await?
                .with_context(|| format!("account {account} does not exist"))?;
            all.insert(account, balance);
        }
        Ok(all)
    }

    /// Polls GET /transactions/{id} for every id until none is pending, and
    /// returns the final views.
    pub async fn wait_settled(
        &self,
        ids: &[String],
        timeout: Duration,
    ) -> anyhow::Result<HashMap<String, Value>> {
        let deadline = Instant::now() + timeout;
        let mut settled = HashMap::new();
        while settled.len() < ids.len() {
            for id in ids {
                if settled.contains_key(id) {
                    continue;
                }
                let (status, body) = self.get(&format!("/transactions/{id}")).await?;
                if status == StatusCode::OK && body["status"] != "pending" {
                    settled.insert(id.clone(), body);
                }
            }
            if settled.len() < ids.len() {
                anyhow::ensure!(
                    Instant::now() < deadline,
                    "{} of {} transactions still not settled after {timeout:?}",
                    ids.len() - settled.len(),
                    ids.len()
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Ok(settled)
    }
}

/// One try of a request through the client library: the status and the
/// JSON body (`null` when empty); a body that is not JSON is an error.
async fn raw(
    client: &Client,
    method: Method,
    path: &str,
    body: Option<&Value>,
) -> anyhow::Result<(StatusCode, Value)> {
    let answer = client
        .send_raw(method.clone(), path, body)
        .await
        .with_context(|| format!("{method} {path}"))?;
    Ok((answer.status, answer.body))
}
