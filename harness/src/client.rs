//! The harness's one HTTP client for the engine's API: the tests, the
//! scenario runner and the load runs' setup all speak to the engine through
//! it. Answers come back as (status, JSON body); anything that is not JSON
//! where JSON was promised is an error, never a silent `null`.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::Context;
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::workload::account_name;

#[derive(Clone)]
pub struct ApiClient {
    /// `http://host:port`, no trailing slash.
    pub base_url: String,
    /// The admin token, for the balance setter.
    pub admin_token: String,
    /// The underlying client, for requests the methods below do not cover.
    pub http: reqwest::Client,
}

impl ApiClient {
    /// A client for `base_url` whose requests give up after `timeout`.
    pub fn new(base_url: &str, admin_token: &str, timeout: Duration) -> anyhow::Result<Self> {
        Ok(Self {
            base_url: base_url.trim_end_matches('/').to_owned(),
            admin_token: admin_token.to_owned(),
            http: reqwest::Client::builder().timeout(timeout).build()?,
        })
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url)
    }

    /// POST /transactions with a JSON body.
    pub async fn post(&self, body: &Value) -> anyhow::Result<(StatusCode, Value)> {
        let response = self
            .http
            .post(self.url("/transactions"))
            .json(body)
            .send()
            .await?;
        read(response).await
    }

    pub async fn get(&self, path: &str) -> anyhow::Result<(StatusCode, Value)> {
        read(self.http.get(self.url(path)).send().await?).await
    }

    /// PUT /balance/{account} with the admin token.
    pub async fn set_balance(&self, account: &str, balance: u64) -> anyhow::Result<()> {
        let response = self
            .http
            .put(self.url(&format!("/balance/{account}")))
            .bearer_auth(&self.admin_token)
            .json(&json!({ "balance": balance }))
            .send()
            .await?;
        let (status, body) = read(response).await?;
        anyhow::ensure!(
            status == StatusCode::OK,
            "set_balance({account}): {status} {body}"
        );
        Ok(())
    }

    /// The balance of `account`, `None` if it does not exist; any other
    /// answer (a 503, say) is an error.
    pub async fn balance(&self, account: &str) -> anyhow::Result<Option<u64>> {
        let (status, body) = self.get(&format!("/balance/{account}")).await?;
        match status {
            StatusCode::OK => body["balance"]
                .as_u64()
                .map(Some)
                .with_context(|| format!("GET /balance/{account}: no balance in {body}")),
            StatusCode::NOT_FOUND => Ok(None),
            other => anyhow::bail!("GET /balance/{account}: {other} {body}"),
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

    /// The balances of `acct-0 .. acct-{count-1}`; an account that does not
    /// exist is an error.
    pub async fn balances(&self, count: usize) -> anyhow::Result<HashMap<String, u64>> {
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

/// The status and the JSON body (`null` when empty) of an answer.
async fn read(response: reqwest::Response) -> anyhow::Result<(StatusCode, Value)> {
    let status = response.status();
    let bytes = response.bytes().await?;
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).with_context(|| {
            format!(
                "{status}: the body is not JSON: {}",
                String::from_utf8_lossy(&bytes)
            )
        })?
    };
    Ok((status, body))
}
