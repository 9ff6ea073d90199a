//! The Redis store: balances, the per-transaction record (claim, pending,
//! outcome) and the Lua scripts that change them.
//!
//! Key layout, all under one hash tag so every script's keys share a Redis
//! Cluster slot (transfers touch two accounts):
//! - `{ns}:bal:<account>`  balance in minor units, a decimal string
//! - `{ns}:tx:<id>`        hash: `fp` (the body the id is bound to, from the
//!   first claim on), `lease` + `lease_until_ms` (which request may publish
//!   it now), `accepted` (1 once Kafka has the record), and once settled
//!   `state` applied|rejected, `reason`, `balance_after`, `applied_at_ms`, `seq`
//! - `{ns}:seq`            counter: the order in which outcomes were decided

use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use redis::{AsyncCommands, Cmd, Pipeline, RedisFuture, Script, Value};

use crate::config::RedisTopology;

use crate::domain::{AccountId, Balance, Outcome, RejectReason, Transaction, TxId, TxStatus};

/// The key layout, spelled out here only: the store and the harness (which
/// reads Redis to check invariants) both build keys with these.
pub mod keys {
    /// `{ns}:bal:<account>`
    pub fn balance(namespace: &str, account: &str) -> String {
        format!("{{{namespace}}}:bal:{account}")
    }

    /// `{ns}:tx:`, the prefix of every transaction record (for SCAN).
    pub fn tx_prefix(namespace: &str) -> String {
        format!("{{{namespace}}}:tx:")
    }

    /// `{ns}:tx:<id>`
    pub fn tx(namespace: &str, id: &str) -> String {
        format!("{}{id}", tx_prefix(namespace))
    }

    /// `{ns}:seq`
    pub fn seq(namespace: &str) -> String {
        format!("{{{namespace}}}:seq")
    }
}

/// The Lua sources, compiled in from `lua/` so the binary is self-contained;
/// they are loaded into Redis (SCRIPT LOAD) when the store starts.
mod lua {
    pub const APPLY: &str = include_str!("../../lua/atomic_update.lua");
    pub const CLAIM: &str = include_str!("../../lua/claim.lua");
    pub const RELEASE: &str = include_str!("../../lua/release.lua");
    pub const ACCEPT: &str = include_str!("../../lua/accept.lua");
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("redis answered something unexpected: {0}")]
    Unexpected(String),
}

impl StoreError {
    /// True when Redis could not be reached or did not answer in time (worth
    /// retrying as is), false when it answered with an error (a script
    /// error, a key of the wrong type): that one needs someone to look.
    pub fn is_unreachable(&self) -> bool {
        match self {
            Self::Redis(e) => {
                e.is_io_error()
                    || e.is_timeout()
                    || e.is_connection_dropped()
                    || e.is_connection_refusal()
            }
            Self::Unexpected(_) => false,
        }
    }
}

/// What the claim script found for an id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// This request holds the id's lease (under its token) and may publish.
    Claimed,
    /// The id is bound to a different body.
    Conflict,
    /// The same request is being published by another caller right now.
    InFlight,
    /// The same request was accepted before; this is where it stands.
    Known(TxStatus),
}

/// What the accept script did with a published record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acceptance {
    /// This request held the lease; the id is marked accepted.
    Accepted,
    /// The lease ran out and is another request's (of the same body, the
    /// binding being this body); nothing was changed.
    NotOwner,
    /// The id is bound to another body; nothing was changed.
    Conflict,
}

/// One applied transaction as the apply script reported it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    pub outcome: Outcome,
    /// True when an earlier apply had settled the id; nothing changed.
    pub duplicate: bool,
}

/// A connection to one Redis, or to a Redis Cluster (which routes each
/// command by its keys' slot and follows MOVED, ASK and TRYAGAIN).
#[derive(Clone)]
enum Connection {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
        }
    }
}

#[derive(Clone)]
pub struct Store {
    conn: Connection,
    namespace: String,
    outcome_ttl_secs: u64,
    lease_ms: u64,
    apply: Script,
    claim: Script,
    release: Script,
    accept: Script,
}

pub struct StoreSettings<'a> {
    /// One URL, or for a cluster seed URLs separated by commas.
    pub url: &'a str,
    pub topology: RedisTopology,
    /// Key prefix; also the Redis Cluster hash tag of every key.
    pub namespace: &'a str,
    /// How long a settled outcome (the processed flag) is kept.
    pub outcome_ttl_secs: u64,
    /// How long an API claim on an id lasts while its publish is in flight.
    pub lease_ms: u64,
    /// Longest wait for one Redis answer.
    pub response_timeout: Duration,
}

impl Store {
    pub async fn connect(settings: StoreSettings<'_>) -> Result<Self, StoreError> {
        let conn = match settings.topology {
            RedisTopology::Single => {
                let client = redis::Client::open(settings.url)?;
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(Duration::from_secs(2)))
                    .set_response_timeout(Some(settings.response_timeout))
                    .set_number_of_retries(2)
                    .set_max_delay(Duration::from_millis(500));
                Connection::Single(ConnectionManager::new_with_config(client, config).await?)
            }
            RedisTopology::Cluster => {
                let seeds: Vec<&str> = settings.url.split(',').map(str::trim).collect();
                // redis-rs waits about 1.28 s before its first retry by
                // default; a slot migration or a failover should cost
                // tens of milliseconds a retry, not seconds.
                let client = ClusterClientBuilder::new(seeds)
                    .connection_timeout(Duration::from_secs(2))
                    .response_timeout(settings.response_timeout)
                    .retries(8)
                    .min_retry_wait(20)
                    .max_retry_wait(500)
                    .build()?;
                Connection::Cluster(client.get_async_connection().await?)
            }
        };
        let store = Self {
            conn,
            namespace: settings.namespace.to_owned(),
            outcome_ttl_secs: settings.outcome_ttl_secs,
            lease_ms: settings.lease_ms,
            apply: Script::new(lua::APPLY),
            claim: Script::new(lua::CLAIM),
            release: Script::new(lua::RELEASE),
            accept: Script::new(lua::ACCEPT),
        };
        store.load_scripts().await?;
        Ok(store)
    }

    /// SCRIPT LOAD every script; run at start and after a NOSCRIPT answer
    /// (a restarted Redis has an empty script cache).
    pub async fn load_scripts(&self) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        for script in [&self.apply, &self.claim, &self.release, &self.accept] {
            script.prepare_invoke().load_async(&mut conn).await?;
        }
        Ok(())
    }

    pub fn balance_key(&self, account: &AccountId) -> String {
        keys::balance(&self.namespace, account.as_str())
    }

    pub fn tx_key(&self, id: &TxId) -> String {
        keys::tx(&self.namespace, id.as_str())
    }

    /// Waits until `replicas` replicas hold every write made so far through
    /// this store's connection (Redis `WAIT`, at most `timeout`), and says
    /// how many do. On a cluster it asks the master of the namespace's slot,
    /// where every write of the store goes (redis-rs would ask every master
    /// and take the smallest answer, so a replica down in another shard
    /// would hold this one back).
    pub async fn wait_replicas(&self, replicas: u32, timeout: Duration) -> Result<u32, StoreError> {
        let mut wait = redis::cmd("WAIT");
        wait.arg(replicas).arg(timeout.as_millis() as u64);
        let answer: Value = match self.conn.clone() {
            Connection::Single(mut conn) => wait.query_async(&mut conn).await?,
            Connection::Cluster(mut conn) => {
                let route = Route::with_key(keys::seq(&self.namespace), SlotAddr::Master);
                let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(route));
                conn.route_command(wait, routing).await?
            }
        };
        redis::from_redis_value(answer)
            .map_err(|e| StoreError::Unexpected(format!("WAIT answered {e}")))
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        let _: String = redis::cmd("PING").query_async(&mut conn).await?;
        Ok(())
    }

    pub async fn balance(&self, account: &AccountId) -> Result<Option<Balance>, StoreError> {
        let mut conn = self.conn.clone();
        let raw: Option<u64> = conn.get(self.balance_key(account)).await?;
        raw.map(|b| Balance::new(b).map_err(|e| StoreError::Unexpected(e.to_string())))
            .transpose()
    }

    pub async fn set_balance(
        &self,
        account: &AccountId,
        balance: Balance,
    ) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        let _: () = conn
            .set(self.balance_key(account), balance.minor_units())
            .await?;
        Ok(())
    }

    /// Where an id stands; `None` if unknown or only claimed (not yet accepted).
    pub async fn status(&self, id: &TxId) -> Result<Option<TxStatus>, StoreError> {
        let mut conn = self.conn.clone();
        type Fields = (
            Option<String>,
            Option<String>,
            Option<String>,
            Option<String>,
        );
        let (state, reason, balance_after, accepted): Fields = redis::cmd("HMGET")
            .arg(self.tx_key(id))
            .arg("state")
            .arg("reason")
            .arg("balance_after")
            .arg("accepted")
            .query_async(&mut conn)
            .await?;
        match (state.as_deref(), accepted) {
            (Some(state @ ("applied" | "rejected")), _) => parse_status(
                state,
                reason.as_deref().unwrap_or(""),
                balance_after.as_deref().unwrap_or(""),
            )
            .map(Some),
            (_, Some(_)) => Ok(Some(TxStatus::Pending)),
            _ => Ok(None),
        }
    }

    /// How long a claim lasts unless released or accepted.
    pub fn lease(&self) -> Duration {
        Duration::from_millis(self.lease_ms)
    }

    /// A fresh lease token, naming one request's claim.
    pub fn lease_token() -> String {
        uuid::Uuid::new_v4().simple().to_string()
    }

    /// Claims `tx.id` for this request, under `token`, before it is
    /// published: binds the id to this body (for the outcome TTL) and takes
    /// its lease. After an error the claim may still have been made (the
    /// command can reach Redis after the wait for its answer ended): release
    /// `token` then.
    pub async fn claim(&self, tx: &Transaction, token: &str) -> Result<Claim, StoreError> {
        let (verdict, reason, balance_after): (String, String, String) = self
            .with_scripts(|| {
                let mut conn = self.conn.clone();
                let mut invocation = self.claim.key(self.tx_key(&tx.id));
                invocation
                    .arg(tx.movement.fingerprint())
                    .arg(self.lease_ms)
                    .arg(token)
                    .arg(self.outcome_ttl_secs);
                async move { invocation.invoke_async(&mut conn).await }
            })
            .await?;
        Ok(match verdict.as_str() {
            "claimed" => Claim::Claimed,
            "conflict" => Claim::Conflict,
            "leased" => Claim::InFlight,
            state => Claim::Known(parse_status(state, &reason, &balance_after)?),
        })
    }

    /// Marks an id as accepted once Kafka acknowledged its record, if the
    /// lease `token` is still this request's (one script: check and write).
    pub async fn accept(&self, tx: &Transaction, token: &str) -> Result<Acceptance, StoreError> {
        let verdict: String = self
            .with_scripts(|| {
                let mut conn = self.conn.clone();
                let mut invocation = self.accept.key(self.tx_key(&tx.id));
                invocation.arg(tx.movement.fingerprint()).arg(token);
                async move { invocation.invoke_async(&mut conn).await }
            })
            .await?;
        match verdict.as_str() {
            "accepted" => Ok(Acceptance::Accepted),
            "not_owner" => Ok(Acceptance::NotOwner),
            "conflict" => Ok(Acceptance::Conflict),
            other => Err(StoreError::Unexpected(format!("accept answered {other}"))),
        }
    }

    /// Ends this request's lease after a failed publish (only if it is still
    /// this request's); the id stays bound to its body. True if it was.
    pub async fn release(&self, id: &TxId, token: &str) -> Result<bool, StoreError> {
        let released: i64 = self
            .with_scripts(|| {
                let mut conn = self.conn.clone();
                let mut invocation = self.release.key(self.tx_key(id));
                invocation.arg(token);
                async move { invocation.invoke_async(&mut conn).await }
            })
            .await?;
        Ok(released == 1)
    }

    /// Applies a batch in one pipelined round trip of EVALSHA, in order.
    /// Safe to call again with the same batch: the processed flag inside the
    /// script turns a repeat into a no-op that returns the first outcome.
    pub async fn apply_batch(&self, batch: &[Transaction]) -> Result<Vec<Applied>, StoreError> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let now_ms = crate::wire::now_ms();
        let seq_key = keys::seq(&self.namespace);
        let raw: Vec<(String, String, String, i64)> = self
            .with_scripts(|| {
                let mut conn = self.conn.clone();
                let mut pipe = redis::pipe();
                for tx in batch {
                    let mut invocation = self.apply.key(self.tx_key(&tx.id));
                    invocation
                        .key(&seq_key)
                        .key(self.balance_key(tx.movement.account()));
                    if let Some(to) = tx.movement.to() {
                        invocation.key(self.balance_key(to));
                    }
                    invocation
                        .arg(tx.movement.kind())
                        .arg(tx.movement.amount().minor_units())
                        .arg(tx.movement.fingerprint())
                        .arg(self.outcome_ttl_secs)
                        .arg(now_ms);
                    pipe.invoke_script(&invocation);
                }
                async move { pipe.query_async(&mut conn).await }
            })
            .await?;
        // One reply per script call of the pipeline, in order.
        debug_assert_eq!(raw.len(), batch.len(), "one apply reply per record");
        raw.into_iter()
            .map(|(state, reason, balance_after, duplicate)| {
                match parse_status(&state, &reason, &balance_after)? {
                    TxStatus::Settled(outcome) => Ok(Applied {
                        outcome,
                        duplicate: duplicate == 1,
                    }),
                    TxStatus::Pending => Err(StoreError::Unexpected(
                        "apply script left a transaction pending".into(),
                    )),
                }
            })
            .collect()
    }

    /// Runs a script call; on NOSCRIPT (Redis restarted and lost its script
    /// cache) loads the scripts and runs it once more.
    async fn with_scripts<T, F, Fut>(&self, call: F) -> Result<T, StoreError>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        match call().await {
            Err(e) if e.code() == Some("NOSCRIPT") => {
                tracing::warn!("redis lost its scripts (restart?); loading them again");
                self.load_scripts().await?;
                Ok(call().await?)
            }
            other => Ok(other?),
        }
    }
}

/// Turns the scripts' `(state, reason, balance_after)` into a status.
fn parse_status(state: &str, reason: &str, balance_after: &str) -> Result<TxStatus, StoreError> {
    let unexpected = || {
        StoreError::Unexpected(format!(
            "state={state} reason={reason} balance_after={balance_after}"
        ))
    };
    match state {
        "pending" => Ok(TxStatus::Pending),
        "applied" => {
            let balance = balance_after
                .parse::<u64>()
                .ok()
                .and_then(|b| Balance::new(b).ok())
                .ok_or_else(unexpected)?;
            Ok(TxStatus::Settled(Outcome::Applied {
                balance_after: balance,
            }))
        }
        "rejected" => {
            let reason = RejectReason::parse(reason).ok_or_else(unexpected)?;
            Ok(TxStatus::Settled(Outcome::Rejected { reason }))
        }
        _ => Err(unexpected()),
    }
}
