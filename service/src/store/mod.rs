//! The Redis store: accounts, the per-transaction record (claim, pending,
//! outcome) and the Lua scripts that change them. One concern per file:
//!
//! - [`layout`]: key names and slots (the key layout is described there).
//! - [`connection`]: one Redis or a cluster, and pipelines split by slot.
//! - [`scripts`]: the Lua sources of `lua/`.
//! - [`accounts`], [`outcomes`], [`api_keys`], [`rate_limit`]: reads and
//!   writes of each kind of record.
//! - [`claim`]: the API's claim, accept and release of an id.
//! - [`apply`]: the consumer's apply, saga steps and their replies.
//! - [`posting_steps`]: postings between slots: their slots, the votes of
//!   their reserves and the decision.
//! - [`calls`]: the call contract (KEYS and ARGV, in order) of each script
//!   that applies records.
//! - [`apply_many`]: a slot's applies in one script call, in order.
//! - [`history`]: each account's history, read by page and at a time.
//! - [`holds`]: holds as the API and the expirer read them (their terms,
//!   where they stand, which are past their deadline).
//! - [`migrate`]: data of an earlier key layout brought to this one at
//!   start (and a newer layout refused).

mod accounts;
mod api_keys;
mod apply;
mod apply_many;
mod calls;
mod claim;
pub mod connection;
mod history;
mod holds;
pub mod layout;
mod migrate;
mod outcomes;
pub mod posting_steps;
pub use outcomes::TxRecord;
mod rate_limit;
mod scripts;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use redis::{Cmd, Script, Value};

pub use accounts::{AccountPut, BalanceSet};
pub use apply::{Applied, EndedElsewhere, Progress};
pub use claim::{Acceptance, Claim, ClaimRequest, RequestClaims};
use connection::is_transient;
pub use connection::{Cluster, Connection};
pub use history::{is_position, BalanceAt, EntryKind, EntryStatus, HistoryEntry, HistoryQuery};
pub use holds::{DueHold, HoldPhase, HoldRecord};
pub use layout::{Layout, RedisTopology};
pub use migrate::LAYOUT_VERSION;
pub use rate_limit::RateVerdict;
use scripts::Scripts;

use crate::domain::{AccountId, Asset, TxId};

/// Why a store operation failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("redis answered something unexpected: {0}")]
    Unexpected(String),
    #[error("redis runs with maxmemory-policy {0}: it may evict a balance or a processed flag (money lost, or applied twice); run it with maxmemory-policy noeviction")]
    Eviction(String),
    #[error("redis holds data in key layout {found}, written by a newer txengine (this one knows layout {known} and older): run that version, or a newer one than this")]
    NewerLayout { found: u32, known: u32 },
    /// `WAIT` counted fewer replicas than asked within its timeout: the
    /// writes may be lost if a master fails over now.
    #[error("the writes reached {acknowledged} of {wanted} replicas in time")]
    ReplicasBehind { acknowledged: u32, wanted: u32 },
}

/// Every text in an answer (one node's string, or a cluster's map of them).
fn collect_texts(value: &Value, into: &mut Vec<String>) {
    match value {
        Value::BulkString(bytes) => into.push(String::from_utf8_lossy(bytes).into_owned()),
        Value::SimpleString(text) => into.push(text.clone()),
        Value::VerbatimString { text, .. } => into.push(text.clone()),
        Value::Map(pairs) => pairs.iter().for_each(|(_, v)| collect_texts(v, into)),
        Value::Array(items) => items.iter().for_each(|v| collect_texts(v, into)),
        _ => {}
    }
}

impl StoreError {
    /// What went wrong, without the data of the command (no accounts,
    /// amounts or balances): Redis's error code, or the kind of failure.
    pub fn summary(&self) -> String {
        match self {
            Self::Redis(e) => {
                // A pipeline's failure carries the failed commands' errors.
                let code = e.code().map(str::to_owned).or_else(|| {
                    let errors = e.clone().into_server_errors()?;
                    errors.first().map(|(_, error)| error.code().to_owned())
                });
                match code {
                    Some(code) => format!("redis answered {code} (details in the log)"),
                    None => format!("redis failed: {:?} (details in the log)", e.kind()),
                }
            }
            Self::Unexpected(_) => {
                "redis answered what this build does not expect (details in the log)".into()
            }
            Self::Eviction(policy) => format!("redis runs with maxmemory-policy {policy}"),
            Self::ReplicasBehind { .. } | Self::NewerLayout { .. } => self.to_string(),
        }
    }

    /// True when Redis could not be reached or did not answer in time (worth
    /// retrying as is), false when it answered with an error (a script
    /// error, a key of the wrong type): that one needs someone to look.
    pub fn is_unreachable(&self) -> bool {
        match self {
            Self::Redis(e) => is_transient(e),
            // Replicas catch up, or a failover ends: worth retrying.
            Self::ReplicasBehind { .. } => true,
            Self::Unexpected(_) | Self::Eviction(_) | Self::NewerLayout { .. } => false,
        }
    }
}

/// The store: a connection, the key layout and the scripts, cheap to clone.
#[derive(Clone)]
pub struct Store {
    conn: Connection,
    // Shared, not copied: the API clones a store for every request (the
    // profile showed the scripts' sources copied per request).
    layout: Arc<Layout>,
    outcome_ttl_secs: u64,
    history_keep_ms: u64,
    lease_ms: u64,
    /// The asset of an account made without one named.
    default_asset: Asset,
    scripts: Arc<Scripts>,
    topology: RedisTopology,
}

pub struct StoreSettings<'a> {
    /// One URL, or for a cluster seed URLs separated by commas.
    pub url: &'a str,
    pub topology: RedisTopology,
    /// Key prefix; also the Redis Cluster hash tag of every key.
    pub namespace: &'a str,
    /// How long a settled outcome (the processed flag) is kept.
    pub outcome_ttl_secs: u64,
    /// How long each account's history is kept (0: none is written).
    pub history_keep_secs: u64,
    /// How long an API claim on an id lasts while its publish is in flight.
    pub lease_ms: u64,
    /// Longest wait for one Redis answer.
    pub response_timeout: Duration,
    /// The asset of an account made without one named (by the seed's
    /// `PUT /balance`, or moved from a layout without assets).
    pub default_asset: Asset,
}

impl Store {
    pub async fn connect(settings: StoreSettings<'_>) -> Result<Self, StoreError> {
        let conn =
            Connection::open(settings.url, settings.topology, settings.response_timeout).await?;
        let store = Self {
            conn,
            layout: Arc::new(Layout::new(settings.namespace, settings.topology)),
            outcome_ttl_secs: settings.outcome_ttl_secs,
            history_keep_ms: settings.history_keep_secs.saturating_mul(1000),
            lease_ms: settings.lease_ms,
            default_asset: settings.default_asset,
            scripts: Arc::new(Scripts::new()),
            topology: settings.topology,
        };
        store.load_scripts().await?;
        Ok(store)
    }

    /// SCRIPT LOAD every script; run at start and after a NOSCRIPT answer
    /// (a restarted Redis has an empty script cache).
    pub async fn load_scripts(&self) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        for script in self.scripts.all() {
            script.prepare_invoke().load_async(&mut conn).await?;
        }
        Ok(())
    }

    /// Each script's name and SHA1 (what EVALSHA names it by in Redis's
    /// slow log), for reports of what each costs.
    /// They follow from the sources alone: no Redis is asked.
    pub fn script_hashes() -> Vec<(&'static str, String)> {
        Scripts::new()
            .named()
            .into_iter()
            .map(|(name, script)| (name, script.get_hash().to_owned()))
            .collect()
    }

    /// The source of the script `name` (as [`Store::script_hashes`] names
    /// it) as Redis runs it, for tools that load or price one script alone.
    pub fn script_source(name: &str) -> Option<&'static str> {
        scripts::SOURCES
            .iter()
            .find(|(script, _)| *script == name)
            .map(|(_, source)| *source)
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The account's record (`{tag}:acct:<account>`).
    pub fn account_key(&self, account: &AccountId) -> String {
        self.layout.account(account.as_str())
    }

    pub fn tx_key(&self, id: &TxId) -> String {
        self.layout.tx(id.as_str())
    }

    /// Waits until `replicas` replicas hold every write made so far through
    /// this store's connection (Redis `WAIT`, at most `timeout`), and says
    /// how many do. On a cluster, writes go to every master, so redis-rs
    /// asks every master and answers the smallest count.
    pub async fn wait_replicas(&self, replicas: u32, timeout: Duration) -> Result<u32, StoreError> {
        let mut conn = self.conn.clone();
        let answer: Value = redis::cmd("WAIT")
            .arg(replicas)
            .arg(timeout.as_millis() as u64)
            .query_async(&mut conn)
            .await?;
        redis::from_redis_value(answer)
            .map_err(|e| StoreError::Unexpected(format!("WAIT answered {e}")))
    }

    /// `Ok` once `replicas` replicas hold every write made so far through
    /// this store's connection to the nodes of the tx records of `ids` (one
    /// `WAIT` a slot of theirs, at once); too few on any within `timeout` is
    /// [`StoreError::ReplicasBehind`]. Nothing to wait for with `replicas` 0.
    pub async fn replicated<'a>(
        &self,
        ids: impl IntoIterator<Item = &'a TxId>,
        replicas: u32,
        timeout: Duration,
    ) -> Result<(), StoreError> {
        if replicas == 0 {
            return Ok(());
        }
        let mut keys: BTreeMap<u32, String> = BTreeMap::new();
        for id in ids {
            let shard = self.layout.shard_of(id.as_str());
            keys.entry(shard).or_insert_with(|| self.tx_key(id));
        }
        let waits = keys
            .values()
            .map(|key| self.conn.wait_on(key, replicas, timeout));
        for acknowledged in futures_util::future::join_all(waits).await {
            let acknowledged = acknowledged?;
            if acknowledged < replicas {
                return Err(StoreError::ReplicasBehind {
                    acknowledged,
                    wanted: replicas,
                });
            }
        }
        Ok(())
    }

    /// Refuses a Redis that may evict keys: an evicted balance or flag is
    /// money lost or applied twice. Every master is asked (`INFO memory`;
    /// on a cluster redis-rs sends it to each and answers per node).
    pub async fn ensure_no_eviction(&self) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        let answer: Value = redis::cmd("INFO")
            .arg("memory")
            .query_async(&mut conn)
            .await?;
        let mut texts = Vec::new();
        collect_texts(&answer, &mut texts);
        if texts.is_empty() {
            return Err(StoreError::Unexpected(
                "INFO memory answered no text".into(),
            ));
        }
        for text in texts {
            let policy = text
                .lines()
                .find_map(|line| line.trim().strip_prefix("maxmemory_policy:"))
                .unwrap_or("(not reported)");
            if policy != "noeviction" {
                return Err(StoreError::Eviction(policy.to_owned()));
            }
        }
        Ok(())
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        let _: String = redis::cmd("PING").query_async(&mut conn).await?;
        Ok(())
    }

    /// Runs a script call; on NOSCRIPT (Redis restarted, or a replica was
    /// promoted, and lost its script cache) loads the scripts and runs it
    /// once more.
    async fn with_scripts<T, E, F, Fut>(&self, call: F) -> Result<T, StoreError>
    where
        E: Into<StoreError>,
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T, E>>,
    {
        match call().await.map_err(Into::into) {
            Err(StoreError::Redis(e)) if e.code() == Some("NOSCRIPT") => {
                tracing::warn!("redis lost its scripts (restart?); loading them again");
                self.load_scripts().await?;
                call().await.map_err(Into::into)
            }
            other => other,
        }
    }
}

/// `EVALSHA <sha> <numkeys> <keys...>`; the caller adds the ARGV.
fn evalsha(script: &Script, keys: &[String]) -> Cmd {
    let mut cmd = redis::cmd("EVALSHA");
    cmd.arg(script.get_hash()).arg(keys.len()).arg(keys);
    cmd
}
