//! The Redis store: balances, the per-transaction record (claim, pending,
//! outcome) and the Lua scripts that change them.
//!
//! Key layout ([`Layout`]). Every key carries a hash tag, `{tag}`, naming its
//! Redis Cluster slot: `{ns}` for every key on one Redis, `{ns:<shard>}` on a
//! cluster, where an account's shard (and a transaction id's) is a hash of
//! its name over [`CLUSTER_SHARDS`] shards, so accounts spread over the
//! cluster's masters.
//! - `{tag}:bal:<account>`  balance in minor units, a decimal string
//! - `{tag}:tx:<id>`        hash: `fp` (the body the id is bound to, from the
//!   first claim on), `lease` + `lease_until_ms` (which request may publish
//!   it now), `accepted` (1 once Kafka has the record), and once settled
//!   `state` applied|rejected, `reason`, `balance_after`, `applied_at_ms`,
//!   and `seq` when the outcome was decided in this slot
//! - `{tag}:seq`            counter: the order in which this slot's outcomes
//!   and saga steps were decided
//! - cluster only, in the account's slot: `{tag}:step:<id>:<step>` (the
//!   flag of an apply whose tx record is in another slot, `apply`, or of a
//!   saga step, `debit` | `credit` | `settle`) and `{tag}:held:<account>`
//!   (money sagas debited from the account and have not settled)
//! - API keys, all in one slot (`{ns}` on one Redis, `{ns:keys}` on a
//!   cluster): `{keys}:apikey:<key id>` (hash: `hash` of the secret,
//!   `accounts` as a JSON array, `rate_per_s` and `burst` when limited,
//!   `created_at_ms`) and `{keys}:apikeys` (the set of key ids)
//! - `{tag}:rate:<key id>`: the key's GCRA state, in the key id's shard

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::{AsyncCommands, Cmd, Pipeline, RedisFuture, Script, Value};

use crate::config::RedisTopology;

use crate::domain::{AccountId, Balance, Outcome, RejectReason, Transaction, TxId, TxStatus};
use crate::keys::{ApiKey, KeyId, RateLimit, Scope};
use crate::wire::{Record, SagaStep};

/// How many shards accounts and transaction ids are hashed over on a
/// cluster: each shard is one hash tag, so one slot. Enough to spread over
/// every master (a shard moves with its slot when the cluster reshards).
pub const CLUSTER_SHARDS: u32 = 1024;

/// Key names and the slot each lives in; the store and the harness (which
/// reads Redis to check invariants) both build keys with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    namespace: String,
    shards: u32,
}

impl Layout {
    pub fn new(namespace: &str, topology: RedisTopology) -> Self {
        let shards = match topology {
            RedisTopology::Single => 1,
            RedisTopology::Cluster => CLUSTER_SHARDS,
        };
        Self {
            namespace: namespace.to_owned(),
            shards,
        }
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    pub fn shards(&self) -> u32 {
        self.shards
    }

    /// The shard of an account or a transaction id (FNV-1a of its name;
    /// the same in every namespace).
    pub fn shard_of(&self, name: &str) -> u32 {
        if self.shards == 1 {
            return 0;
        }
        let hash = name.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
        (hash % u64::from(self.shards)) as u32
    }

    /// `{ns}` on one Redis, `{ns:<shard>}` on a cluster.
    pub fn tag(&self, shard: u32) -> String {
        if self.shards == 1 {
            format!("{{{}}}", self.namespace)
        } else {
            format!("{{{}:{shard}}}", self.namespace)
        }
    }

    /// True when one script can touch both names' keys.
    pub fn same_slot(&self, a: &str, b: &str) -> bool {
        self.shard_of(a) == self.shard_of(b)
    }

    /// `{tag}:bal:<account>`
    pub fn balance(&self, account: &str) -> String {
        format!("{}:bal:{account}", self.tag(self.shard_of(account)))
    }

    /// `{tag}:held:<account>`: money in flight out of the account.
    pub fn held(&self, account: &str) -> String {
        format!("{}:held:{account}", self.tag(self.shard_of(account)))
    }

    /// `{tag}:tx:<id>`, in the id's own slot.
    pub fn tx(&self, id: &str) -> String {
        format!("{}:tx:{id}", self.tag(self.shard_of(id)))
    }

    /// A SCAN pattern for the tx records whose ids match `id_glob`, and
    /// what precedes the id in every such key (up to and with `:tx:`).
    pub fn tx_pattern(&self, id_glob: &str) -> String {
        if self.shards == 1 {
            format!("{}:tx:{id_glob}", self.tag(0))
        } else {
            format!("{{{}:*}}:tx:{id_glob}", self.namespace)
        }
    }

    /// `{tag}:seq` of one shard.
    pub fn seq(&self, shard: u32) -> String {
        format!("{}:seq", self.tag(shard))
    }

    /// `{tag}:step:<id>:<step>`, in `account`'s slot.
    pub fn step(&self, account: &str, id: &str, step: &str) -> String {
        format!("{}:step:{id}:{step}", self.tag(self.shard_of(account)))
    }

    /// The processed flag of a one-script apply checked on `account`: the
    /// tx record itself when it shares the account's slot (always on one
    /// Redis), else a flag in the account's slot.
    pub fn apply_flag(&self, id: &str, account: &str) -> String {
        if self.same_slot(id, account) {
            self.tx(id)
        } else {
            self.step(account, id, "apply")
        }
    }

    /// The tag of the API keys' slot: every key record and their index
    /// share one slot, so admin operations are single-slot pipelines.
    fn keys_tag(&self) -> String {
        if self.shards == 1 {
            self.tag(0)
        } else {
            format!("{{{}:keys}}", self.namespace)
        }
    }

    /// `{keys}:apikey:<key id>`: the key's record.
    pub fn api_key(&self, id: &str) -> String {
        format!("{}:apikey:{id}", self.keys_tag())
    }

    /// `{keys}:apikeys`: the ids of every key.
    pub fn api_key_index(&self) -> String {
        format!("{}:apikeys", self.keys_tag())
    }

    /// `{tag}:rate:<key id>`: the key's rate limit state, in its own shard
    /// (the limiter's load spreads over a cluster's masters).
    pub fn rate(&self, key_id: &str) -> String {
        format!("{}:rate:{key_id}", self.tag(self.shard_of(key_id)))
    }

    /// How `tx` is applied: in one script, or as a saga between slots.
    pub fn needs_saga(&self, tx: &Transaction) -> bool {
        tx.movement
            .to()
            .is_some_and(|to| !self.same_slot(tx.movement.account().as_str(), to.as_str()))
    }
}

/// The Lua sources, compiled in from `lua/` so the binary is self-contained;
/// they are loaded into Redis (SCRIPT LOAD) when the store starts.
mod lua {
    pub const APPLY: &str = include_str!("../../lua/atomic_update.lua");
    pub const CLAIM: &str = concat!(
        include_str!("../../lua/claim.lua"),
        "\nreturn claim(KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4])\n"
    );
    pub const RELEASE: &str = include_str!("../../lua/release.lua");
    pub const ACCEPT: &str = include_str!("../../lua/accept.lua");
    pub const SAGA_STEP: &str = include_str!("../../lua/saga_step.lua");
    pub const FINISH: &str = include_str!("../../lua/finish.lua");
    pub const SET_BALANCE: &str = include_str!("../../lua/set_balance.lua");
    pub const RATE_LIMIT: &str = concat!(
        include_str!("../../lua/rate_limit.lua"),
        "\nreturn rate_limit(KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2]))\n"
    );
    pub const RATE_LIMIT_THEN_CLAIM: &str = concat!(
        include_str!("../../lua/rate_limit.lua"),
        include_str!("../../lua/claim.lua"),
        include_str!("../../lua/rate_limit_then_claim.lua")
    );
}

/// What the admin setter did.
#[must_use = "a refused set wrote nothing"]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BalanceSet {
    Set,
    /// Refused: `held` minor units are in flight out of the account, and
    /// the balance plus them would pass 2^53-1.
    NoRoom {
        held: u64,
    },
}

impl BalanceSet {
    /// `Ok` when the balance was set, else the rule it broke.
    pub fn ensure_set(self) -> Result<(), crate::domain::RuleError> {
        match self {
            Self::Set => Ok(()),
            Self::NoRoom { held } => Err(crate::domain::RuleError::NoRoomForHeld { held }),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("redis answered something unexpected: {0}")]
    Unexpected(String),
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
        }
    }

    /// True when Redis could not be reached or did not answer in time (worth
    /// retrying as is), false when it answered with an error (a script
    /// error, a key of the wrong type): that one needs someone to look.
    pub fn is_unreachable(&self) -> bool {
        match self {
            Self::Redis(e) => is_transient(e),
            Self::Unexpected(_) => false,
        }
    }
}

/// True for an error that says Redis could not be reached, did not answer
/// in time, or is moving (a cluster's redirect or state the client could
/// not follow: MOVED to a node it cannot reach, TRYAGAIN, CLUSTERDOWN):
/// worth retrying as is.
fn is_transient(e: &redis::RedisError) -> bool {
    e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || matches!(
            e.code(),
            Some(
                "MOVED"
                    | "ASK"
                    | "TRYAGAIN"
                    | "CLUSTERDOWN"
                    | "MASTERDOWN"
                    | "LOADING"
                    | "READONLY"
            )
        )
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
    /// The key is over its rate limit: nothing was claimed.
    RateLimited,
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

/// What the rate limit script said about one request of a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateVerdict {
    /// The request may go ahead (and was counted).
    pub allowed: bool,
    /// Requests the key may still send right now.
    pub remaining: u64,
    /// When refused: how long until one request may come.
    pub retry_after: Duration,
    /// How long until the whole burst is available again.
    pub reset: Duration,
}

impl RateVerdict {
    /// rate_limit.lua's `{allowed, remaining, retry_after_us, reset_us}`.
    fn from_script((allowed, remaining, retry_after_us, reset_us): (u8, u64, u64, u64)) -> Self {
        Self {
            allowed: allowed == 1,
            remaining,
            retry_after: Duration::from_micros(retry_after_us),
            reset: Duration::from_micros(reset_us),
        }
    }
}

/// One applied transaction as the apply script reported it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    pub outcome: Outcome,
    /// True when an earlier apply had settled the id; nothing changed.
    pub duplicate: bool,
}

/// Where the saga of a record stands once its step is applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// The transaction's outcome is decided. `recorded` is false when its tx
    /// record is in another slot: [`Store::finish`] writes it there.
    Ended { applied: Applied, recorded: bool },
    /// The saga goes on with this record, to be published.
    Next(Record),
}

/// A connection to one Redis, or to a Redis Cluster (which routes each
/// command by its keys' slot and follows MOVED, ASK and TRYAGAIN).
#[derive(Clone)]
pub enum Connection {
    Single(ConnectionManager),
    Cluster(Cluster),
}

/// A cluster connection that can be replaced by a fresh one: redis-rs's
/// cluster connection can keep timing out on a node that was killed and
/// came back (seen after two failovers of one shard: every command to that
/// shard timed out for minutes, while a new connection worked at once).
#[derive(Clone)]
pub struct Cluster {
    client: Arc<redis::cluster::ClusterClient>,
    current: Arc<Mutex<ClusterConnection>>,
    /// Commands in a row that found the cluster unreachable.
    failures: Arc<AtomicU32>,
    /// True while a fresh connection is being made.
    reconnecting: Arc<AtomicBool>,
}

/// Unreachable answers in a row after which a cluster connection is
/// replaced.
const CLUSTER_FAILURES_BEFORE_RECONNECT: u32 = 3;

impl Cluster {
    fn current(&self) -> ClusterConnection {
        self.current
            .lock()
            .expect("cluster connection lock")
            .clone()
    }

    /// Counts unreachable answers; after a few in a row, connects afresh in
    /// a task of its own (a caller's future may be dropped at any await:
    /// a batch's pipelines run together and the first error drops the rest).
    fn observe<T>(&self, result: &redis::RedisResult<T>) {
        let unreachable = result.as_ref().err().is_some_and(is_transient);
        if !unreachable {
            self.failures.store(0, Ordering::Relaxed);
            return;
        }
        if self.failures.fetch_add(1, Ordering::Relaxed) + 1 < CLUSTER_FAILURES_BEFORE_RECONNECT
            || self.reconnecting.swap(true, Ordering::AcqRel)
        {
            return;
        }
        let cluster = self.clone();
        tokio::spawn(async move {
            // redis-rs's connect can hang (redis-rs#1953): bound it.
            let fresh = tokio::time::timeout(
                Duration::from_secs(10),
                cluster.client.get_async_connection(),
            )
            .await;
            match fresh {
                Ok(Ok(fresh)) => {
                    tracing::warn!("redis cluster kept failing; connected afresh");
                    metrics::counter!("txengine_redis_cluster_reconnects_total").increment(1);
                    *cluster.current.lock().expect("cluster connection lock") = fresh;
                }
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "redis cluster kept failing; a fresh connection failed too")
                }
                Err(_) => tracing::warn!(
                    "redis cluster kept failing; a fresh connection did not come within 10 s"
                ),
            }
            cluster.failures.store(0, Ordering::Relaxed);
            cluster.reconnecting.store(false, Ordering::Release);
        });
    }
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(c) => c.req_packed_command(cmd),
            Self::Cluster(cluster) => Box::pin(async move {
                let result = cluster.current().req_packed_command(cmd).await;
                cluster.observe(&result);
                result
            }),
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
            Self::Cluster(cluster) => Box::pin(async move {
                let result = cluster
                    .current()
                    .req_packed_commands(pipeline, offset, count)
                    .await;
                cluster.observe(&result);
                result
            }),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(c) => c.get_db(),
            Self::Cluster(cluster) => cluster.current().get_db(),
        }
    }
}

impl Connection {
    /// Connects to `url` (for a cluster, seed URLs separated by commas).
    pub async fn open(
        url: &str,
        topology: RedisTopology,
        response_timeout: Duration,
    ) -> Result<Self, StoreError> {
        Ok(match topology {
            RedisTopology::Single => {
                let client = redis::Client::open(url)?;
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(Duration::from_secs(2)))
                    .set_response_timeout(Some(response_timeout))
                    .set_number_of_retries(2)
                    .set_max_delay(Duration::from_millis(500));
                Self::Single(ConnectionManager::new_with_config(client, config).await?)
            }
            RedisTopology::Cluster => {
                let seeds: Vec<&str> = url.split(',').map(str::trim).collect();
                // redis-rs waits about 1.28 s before its first retry by
                // default; a slot migration or a failover should cost
                // tens of milliseconds a retry, not seconds.
                let client = ClusterClientBuilder::new(seeds)
                    .connection_timeout(Duration::from_secs(2))
                    .response_timeout(response_timeout)
                    .retries(8)
                    .min_retry_wait(20)
                    .max_retry_wait(500)
                    .build()?;
                let conn = client.get_async_connection().await?;
                Self::Cluster(Cluster {
                    client: Arc::new(client),
                    current: Arc::new(Mutex::new(conn)),
                    failures: Arc::new(AtomicU32::new(0)),
                    reconnecting: Arc::new(AtomicBool::new(false)),
                })
            }
        })
    }

    /// Runs `commands`, one answer each, in order. A cluster pipeline must
    /// stay in one slot, so they go as one pipeline per slot (`slot_of`
    /// names it), all slots at once; on one Redis, as one pipeline.
    pub async fn run_by_slot<T: redis::FromRedisValue>(
        &self,
        commands: Vec<(u32, Cmd)>,
    ) -> Result<Vec<T>, StoreError> {
        let mut pipes: BTreeMap<u32, (Vec<usize>, Pipeline)> = BTreeMap::new();
        for (index, (slot, cmd)) in commands.into_iter().enumerate() {
            let (indices, pipe) = pipes
                .entry(slot)
                .or_insert_with(|| (Vec::new(), redis::pipe()));
            indices.push(index);
            pipe.add_command(cmd);
        }
        let total = pipes.values().map(|(indices, _)| indices.len()).sum();
        let runs = pipes.into_values().map(|(indices, pipe)| {
            let mut conn = self.clone();
            async move {
                let values: Vec<Value> = pipe.query_async(&mut conn).await?;
                Ok::<_, redis::RedisError>((indices, values))
            }
        });
        let mut answers: Vec<Option<Value>> = vec![None; total];
        for (indices, values) in futures_util::future::try_join_all(runs).await? {
            if indices.len() != values.len() {
                return Err(StoreError::Unexpected(format!(
                    "a pipeline of {} commands had {} answers",
                    indices.len(),
                    values.len()
                )));
            }
            for (index, value) in indices.into_iter().zip(values) {
                answers[index] = Some(value);
            }
        }
        answers
            .into_iter()
            .map(|value| {
                let value = value
                    .ok_or_else(|| StoreError::Unexpected("a command had no answer".into()))?;
                redis::from_redis_value(value).map_err(|e| StoreError::Unexpected(e.to_string()))
            })
            .collect()
    }
}

#[derive(Clone)]
pub struct Store {
    conn: Connection,
    // Shared, not copied: the API clones a store for every request (the
    // profile showed the scripts' sources copied per request).
    layout: Arc<Layout>,
    outcome_ttl_secs: u64,
    lease_ms: u64,
    apply: Arc<Script>,
    claim: Arc<Script>,
    release: Arc<Script>,
    accept: Arc<Script>,
    saga_step: Arc<Script>,
    finish: Arc<Script>,
    set_balance: Arc<Script>,
    rate_limit: Arc<Script>,
    rate_limit_then_claim: Arc<Script>,
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
    /// How long an API claim on an id lasts while its publish is in flight.
    pub lease_ms: u64,
    /// Longest wait for one Redis answer.
    pub response_timeout: Duration,
}

impl Store {
    pub async fn connect(settings: StoreSettings<'_>) -> Result<Self, StoreError> {
        let conn =
            Connection::open(settings.url, settings.topology, settings.response_timeout).await?;
        let store = Self {
            conn,
            layout: Arc::new(Layout::new(settings.namespace, settings.topology)),
            outcome_ttl_secs: settings.outcome_ttl_secs,
            lease_ms: settings.lease_ms,
            apply: Arc::new(Script::new(lua::APPLY)),
            claim: Arc::new(Script::new(lua::CLAIM)),
            release: Arc::new(Script::new(lua::RELEASE)),
            accept: Arc::new(Script::new(lua::ACCEPT)),
            saga_step: Arc::new(Script::new(lua::SAGA_STEP)),
            finish: Arc::new(Script::new(lua::FINISH)),
            set_balance: Arc::new(Script::new(lua::SET_BALANCE)),
            rate_limit: Arc::new(Script::new(lua::RATE_LIMIT)),
            rate_limit_then_claim: Arc::new(Script::new(lua::RATE_LIMIT_THEN_CLAIM)),
            topology: settings.topology,
        };
        store.load_scripts().await?;
        Ok(store)
    }

    /// SCRIPT LOAD every script; run at start and after a NOSCRIPT answer
    /// (a restarted Redis has an empty script cache).
    pub async fn load_scripts(&self) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        for script in [
            &self.apply,
            &self.claim,
            &self.release,
            &self.accept,
            &self.saga_step,
            &self.finish,
            &self.set_balance,
            &self.rate_limit,
            &self.rate_limit_then_claim,
        ] {
            script.prepare_invoke().load_async(&mut conn).await?;
        }
        Ok(())
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    pub fn balance_key(&self, account: &AccountId) -> String {
        self.layout.balance(account.as_str())
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

    /// Sets `account`'s balance (the admin setter), unless the balance and
    /// the money in flight out of the account (sagas may refund it) would
    /// pass 2^53-1: then nothing is written.
    pub async fn set_balance(
        &self,
        account: &AccountId,
        balance: Balance,
    ) -> Result<BalanceSet, StoreError> {
        let (set, held): (i64, String) = self
            .with_scripts(|| {
                let mut conn = self.conn.clone();
                let mut invocation = self.set_balance.key(self.balance_key(account));
                invocation
                    .key(self.layout.held(account.as_str()))
                    .arg(balance.minor_units());
                async move { invocation.invoke_async(&mut conn).await }
            })
            .await?;
        let held = held
            .parse()
            .map_err(|_| StoreError::Unexpected(format!("set_balance answered held={held}")))?;
        Ok(if set == 1 {
            BalanceSet::Set
        } else {
            BalanceSet::NoRoom { held }
        })
    }

    /// Where an id stands; `None` if unknown or only claimed (not yet accepted).
    pub async fn status(&self, id: &TxId) -> Result<Option<TxStatus>, StoreError> {
        Ok(self.lookup(id).await?.map(|(status, _)| status))
    }

    /// Where an id stands and the fingerprint of the body it is bound to
    /// (which names its accounts); `None` if unknown or only claimed.
    pub async fn lookup(&self, id: &TxId) -> Result<Option<(TxStatus, String)>, StoreError> {
        let mut conn = self.conn.clone();
        type Fields = (
            Option<String>,
            Option<String>,
            Option<String>,
            Option<String>,
            Option<String>,
        );
        let (state, reason, balance_after, accepted, fingerprint): Fields = redis::cmd("HMGET")
            .arg(self.tx_key(id))
            .arg("state")
            .arg("reason")
            .arg("balance_after")
            .arg("accepted")
            .arg("fp")
            .query_async(&mut conn)
            .await?;
        let status = match (state.as_deref(), accepted) {
            (Some(state @ ("applied" | "rejected")), _) => parse_status(
                state,
                reason.as_deref().unwrap_or(""),
                balance_after.as_deref().unwrap_or(""),
            )?,
            (_, Some(_)) => TxStatus::Pending,
            _ => return Ok(None),
        };
        Ok(Some((status, fingerprint.unwrap_or_default())))
    }

    /// Stores a new API key and lists it. False (nothing written) when a
    /// key with its id exists: make another id.
    pub async fn create_key(&self, key: &ApiKey) -> Result<bool, StoreError> {
        let mut conn = self.conn.clone();
        let record = self.layout.api_key(key.id.as_str());
        let exists: bool = conn.exists(&record).await?;
        if exists {
            return Ok(false);
        }
        let mut fields: Vec<(&str, String)> = vec![
            ("hash", key.secret_hash.clone()),
            (
                "accounts",
                serde_json::to_string(&key.scope.patterns()).expect("strings"),
            ),
            ("created_at_ms", key.created_at_ms.to_string()),
        ];
        if let Some(limit) = key.limit {
            fields.push(("rate_per_s", limit.rate_per_s.to_string()));
            fields.push(("burst", limit.burst.to_string()));
        }
        // Listed first, then written: a crash in between leaves an id in the
        // index with no record (lists skip it), never a key that works but
        // is not listed.
        let _: () = redis::pipe()
            .sadd(self.layout.api_key_index(), key.id.as_str())
            .ignore()
            .hset_multiple(&record, &fields)
            .ignore()
            .query_async(&mut conn)
            .await?;
        Ok(true)
    }

    /// The key `id`, if it exists.
    pub async fn api_key(&self, id: &KeyId) -> Result<Option<ApiKey>, StoreError> {
        let mut conn = self.conn.clone();
        let fields: HashMap<String, String> =
            conn.hgetall(self.layout.api_key(id.as_str())).await?;
        parse_key(id, &fields)
    }

    /// Every key, by id.
    pub async fn api_keys(&self) -> Result<Vec<ApiKey>, StoreError> {
        let mut conn = self.conn.clone();
        let mut ids: Vec<String> = conn.smembers(self.layout.api_key_index()).await?;
        ids.sort();
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for id in &ids {
            pipe.hgetall(self.layout.api_key(id));
        }
        let records: Vec<HashMap<String, String>> = pipe.query_async(&mut conn).await?;
        let mut keys = Vec::new();
        for (id, fields) in ids.iter().zip(records) {
            let id = KeyId::parse(id).map_err(|e| StoreError::Unexpected(e.to_string()))?;
            keys.extend(parse_key(&id, &fields)?);
        }
        Ok(keys)
    }

    /// Deletes the key `id` (its record first, so it stops working at once
    /// for every reader of Redis) and its rate limit state. False when
    /// there was no such key.
    pub async fn delete_key(&self, id: &KeyId) -> Result<bool, StoreError> {
        let mut conn = self.conn.clone();
        let (deleted, _): (u32, u32) = redis::pipe()
            .del(self.layout.api_key(id.as_str()))
            .srem(self.layout.api_key_index(), id.as_str())
            .query_async(&mut conn)
            .await?;
        let _: () = conn.del(self.layout.rate(id.as_str())).await?;
        Ok(deleted == 1)
    }

    /// Counts one request of key `id` against `limit` (GCRA, one script on
    /// Redis's clock), unless it is over the limit.
    pub async fn spend(&self, id: &KeyId, limit: RateLimit) -> Result<RateVerdict, StoreError> {
        let answer: (u8, u64, u64, u64) = self
            .with_scripts(|| {
                let mut conn = self.conn.clone();
                let mut invocation = self.rate_limit.key(self.layout.rate(id.as_str()));
                invocation.arg(limit.interval_us()).arg(limit.burst);
                async move { invocation.invoke_async(&mut conn).await }
            })
            .await?;
        Ok(RateVerdict::from_script(answer))
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
        parse_claim(&verdict, &reason, &balance_after)
    }

    /// Counts the request against its key's `limit`, then claims `tx.id`
    /// as [`Store::claim`] does if the limit allows it ([`Claim::RateLimited`]
    /// and nothing claimed if not); no limit: only the claim. On one Redis
    /// in one script (one round trip); on a cluster the key's rate is in
    /// another slot, so in two calls, the limit first. After an error,
    /// release `token` as after a failed claim.
    pub async fn claim_within_limit(
        &self,
        tx: &Transaction,
        token: &str,
        limit: Option<(&KeyId, RateLimit)>,
    ) -> Result<(Claim, Option<RateVerdict>), StoreError> {
        let Some((key, limit)) = limit else {
            return Ok((self.claim(tx, token).await?, None));
        };
        if self.topology == RedisTopology::Cluster {
            let verdict = self.spend(key, limit).await?;
            if !verdict.allowed {
                return Ok((Claim::RateLimited, Some(verdict)));
            }
            return Ok((self.claim(tx, token).await?, Some(verdict)));
        }
        type Answer = (String, String, String, u8, u64, u64, u64);
        let (verdict, reason, balance_after, allowed, remaining, retry_after_us, reset_us): Answer =
            self.with_scripts(|| {
                let mut conn = self.conn.clone();
                let mut invocation = self.rate_limit_then_claim.key(self.tx_key(&tx.id));
                invocation
                    .key(self.layout.rate(key.as_str()))
                    .arg(tx.movement.fingerprint())
                    .arg(self.lease_ms)
                    .arg(token)
                    .arg(self.outcome_ttl_secs)
                    .arg(limit.interval_us())
                    .arg(limit.burst);
                async move { invocation.invoke_async(&mut conn).await }
            })
            .await?;
        let rate = RateVerdict::from_script((allowed, remaining, retry_after_us, reset_us));
        if !rate.allowed {
            return Ok((Claim::RateLimited, Some(rate)));
        }
        Ok((parse_claim(&verdict, &reason, &balance_after)?, Some(rate)))
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

    /// Applies transactions that end in one script (debits, credits,
    /// transfers within a slot), in order. Safe to call again with the same
    /// batch: the processed flag inside the script turns a repeat into a
    /// no-op that returns the first outcome.
    pub async fn apply_batch(&self, batch: &[Transaction]) -> Result<Vec<Applied>, StoreError> {
        let records: Vec<Record> = batch
            .iter()
            .map(|tx| Record {
                tx: tx.clone(),
                accepted_at_ms: 0,
                saga: None,
            })
            .collect();
        self.apply_records(&records)
            .await?
            .into_iter()
            .map(|progress| match progress {
                Progress::Ended { applied, .. } => Ok(applied),
                Progress::Next(_) => Err(StoreError::Unexpected(
                    "apply_batch got a transfer between slots (a saga)".into(),
                )),
            })
            .collect()
    }

    /// Applies each record's step, one script each, pipelined per slot
    /// (all slots at once, in order within a slot), and says where each
    /// transaction stands. Safe to call again with the same records: every
    /// step's flag turns a repeat into a no-op that answers as the first.
    pub async fn apply_records(&self, records: &[Record]) -> Result<Vec<Progress>, StoreError> {
        if records.is_empty() {
            return Ok(Vec::new());
        }
        let now_ms = crate::wire::now_ms();
        let replies: Vec<(String, String, String, i64)> = self
            .with_scripts(|| {
                let commands = records
                    .iter()
                    .map(|record| self.step_command(record, now_ms))
                    .collect::<Result<Vec<_>, _>>();
                async move { self.conn.run_by_slot(commands?).await }
            })
            .await?;
        // One reply per script call, in order: checked in every build, or a
        // short answer would let offsets pass records never applied.
        if replies.len() != records.len() {
            return Err(StoreError::Unexpected(format!(
                "{} replies for {} records",
                replies.len(),
                records.len()
            )));
        }
        records
            .iter()
            .zip(replies)
            .map(|(record, reply)| self.progress(record, reply))
            .collect()
    }

    /// The script call that applies `record`'s step, and the shard it runs in.
    fn step_command(&self, record: &Record, now_ms: u64) -> Result<(u32, Cmd), StoreError> {
        let layout = &self.layout;
        let tx = &record.tx;
        let id = tx.id.as_str();
        let account = tx.movement.account().as_str();
        let amount = tx.movement.amount().minor_units();
        let fingerprint = tx.movement.fingerprint();
        let saga_step = |on: &str, step: &str, flag: &str| {
            let shard = layout.shard_of(on);
            let keys = [
                layout.step(on, id, flag),
                layout.seq(shard),
                layout.balance(on),
                layout.held(on),
            ];
            let mut cmd = evalsha(&self.saga_step, &keys);
            cmd.arg(step)
                .arg(amount)
                .arg(&fingerprint)
                .arg(self.outcome_ttl_secs)
                .arg(now_ms);
            (shard, cmd)
        };
        Ok(match (&record.saga, tx.movement.to()) {
            (None, _) if !layout.needs_saga(tx) => {
                let shard = layout.shard_of(account);
                let mut keys = vec![
                    layout.apply_flag(id, account),
                    layout.seq(shard),
                    layout.balance(account),
                ];
                if let Some(to) = tx.movement.to() {
                    keys.push(layout.balance(to.as_str()));
                }
                if layout.shards() > 1 && tx.movement.kind() != "debit" {
                    let credited = tx.movement.to().map_or(account, AccountId::as_str);
                    keys.push(layout.held(credited));
                }
                let mut cmd = evalsha(&self.apply, &keys);
                cmd.arg(tx.movement.kind())
                    .arg(amount)
                    .arg(&fingerprint)
                    .arg(self.outcome_ttl_secs)
                    .arg(now_ms);
                (shard, cmd)
            }
            (None, Some(_)) => saga_step(account, "debit", "debit"),
            (Some(SagaStep::Credit { .. }), Some(to)) => saga_step(to.as_str(), "credit", "credit"),
            (Some(SagaStep::Settle { refused, .. }), Some(_)) => {
                let step = if refused.is_some() {
                    "refund"
                } else {
                    "release"
                };
                saga_step(account, step, "settle")
            }
            (Some(_), None) => {
                return Err(StoreError::Unexpected(format!(
                    "saga step of {id}, which is not a transfer"
                )))
            }
            (None, None) => unreachable!("a movement without `to` never needs a saga"),
        })
    }

    /// Reads a step's reply `(state, reason, balance_after, duplicate)`.
    fn progress(
        &self,
        record: &Record,
        (state, reason, balance_after, duplicate): (String, String, String, i64),
    ) -> Result<Progress, StoreError> {
        let tx = &record.tx;
        let duplicate = duplicate == 1;
        let unexpected = || {
            StoreError::Unexpected(format!(
                "{} step {:?} answered state={state} reason={reason} balance_after={balance_after}",
                tx.id, record.saga
            ))
        };
        let ended = |outcome, recorded| {
            Ok(Progress::Ended {
                applied: Applied { outcome, duplicate },
                recorded,
            })
        };
        let next = |step| {
            Ok(Progress::Next(Record {
                saga: Some(step),
                ..record.clone()
            }))
        };
        let rejected = || {
            RejectReason::parse(&reason)
                .map(|reason| Outcome::Rejected { reason })
                .ok_or_else(unexpected)
        };
        match (&record.saga, state.as_str()) {
            (None, _) if !self.layout.needs_saga(tx) => {
                match parse_status(&state, &reason, &balance_after)? {
                    TxStatus::Settled(outcome) => {
                        let account = tx.movement.account().as_str();
                        ended(outcome, self.layout.same_slot(tx.id.as_str(), account))
                    }
                    TxStatus::Pending => Err(StoreError::Unexpected(
                        "apply script left a transaction pending".into(),
                    )),
                }
            }
            (None, "rejected") => ended(rejected()?, false),
            (None, "debited") => {
                let debited_balance_after = parse_balance(&balance_after).ok_or_else(unexpected)?;
                next(SagaStep::Credit {
                    debited_balance_after,
                })
            }
            (
                Some(SagaStep::Credit {
                    debited_balance_after,
                }),
                "credited" | "refused",
            ) => {
                let refused = if state == "refused" {
                    Some(RejectReason::parse(&reason).ok_or_else(unexpected)?)
                } else {
                    None
                };
                next(SagaStep::Settle {
                    debited_balance_after: *debited_balance_after,
                    refused,
                })
            }
            (
                Some(SagaStep::Settle {
                    debited_balance_after,
                    refused: None,
                }),
                "released",
            ) => ended(
                Outcome::Applied {
                    balance_after: *debited_balance_after,
                },
                false,
            ),
            (
                Some(SagaStep::Settle {
                    refused: Some(reason),
                    ..
                }),
                "refunded",
            ) => ended(Outcome::Rejected { reason: *reason }, false),
            _ => Err(unexpected()),
        }
    }

    /// Writes the outcomes of transactions whose outcome was decided in
    /// another slot than their tx record's (see `lua/finish.lua`); the first
    /// write wins, so a repeat is harmless.
    pub async fn finish(&self, ended: &[(&Transaction, Outcome)]) -> Result<(), StoreError> {
        if ended.is_empty() {
            return Ok(());
        }
        let now_ms = crate::wire::now_ms();
        let _: Vec<i64> = self
            .with_scripts(|| {
                let commands: Vec<(u32, Cmd)> = ended
                    .iter()
                    .map(|(tx, outcome)| {
                        let (state, reason, balance_after) = match outcome {
                            Outcome::Applied { balance_after } => {
                                ("applied", "", balance_after.minor_units().to_string())
                            }
                            Outcome::Rejected { reason } => {
                                ("rejected", reason.as_str(), String::new())
                            }
                        };
                        let mut cmd = evalsha(&self.finish, &[self.tx_key(&tx.id)]);
                        cmd.arg(state)
                            .arg(reason)
                            .arg(balance_after)
                            .arg(now_ms)
                            .arg(tx.movement.fingerprint())
                            .arg(self.outcome_ttl_secs);
                        (self.layout.shard_of(tx.id.as_str()), cmd)
                    })
                    .collect();
                async move { self.conn.run_by_slot(commands).await }
            })
            .await?;
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

/// claim.lua's answer.
fn parse_claim(verdict: &str, reason: &str, balance_after: &str) -> Result<Claim, StoreError> {
    Ok(match verdict {
        "claimed" => Claim::Claimed,
        "conflict" => Claim::Conflict,
        "leased" => Claim::InFlight,
        state => Claim::Known(parse_status(state, reason, balance_after)?),
    })
}

/// `EVALSHA <sha> <numkeys> <keys...>`; the caller adds the ARGV.
fn evalsha(script: &Script, keys: &[String]) -> Cmd {
    let mut cmd = redis::cmd("EVALSHA");
    cmd.arg(script.get_hash()).arg(keys.len()).arg(keys);
    cmd
}

/// A key record's fields (an empty map: no such key).
fn parse_key(id: &KeyId, fields: &HashMap<String, String>) -> Result<Option<ApiKey>, StoreError> {
    if fields.is_empty() {
        return Ok(None);
    }
    let broken = |what: &str| StoreError::Unexpected(format!("api key {id}: {what}"));
    let number = |field: &str| -> Result<Option<u64>, StoreError> {
        fields
            .get(field)
            .map(|raw| raw.parse().map_err(|_| broken(field)))
            .transpose()
    };
    let patterns: Vec<String> = fields
        .get("accounts")
        .and_then(|raw| serde_json::from_str(raw).ok())
        .ok_or_else(|| broken("accounts"))?;
    Ok(Some(ApiKey {
        id: id.clone(),
        secret_hash: fields.get("hash").cloned().ok_or_else(|| broken("hash"))?,
        scope: Scope::parse(&patterns).map_err(|e| broken(&e.to_string()))?,
        limit: RateLimit::parse(number("rate_per_s")?, number("burst")?)
            .map_err(|e| broken(&e.to_string()))?,
        created_at_ms: number("created_at_ms")?.ok_or_else(|| broken("created_at_ms"))?,
    }))
}

fn parse_balance(raw: &str) -> Option<Balance> {
    raw.parse::<u64>().ok().and_then(|b| Balance::new(b).ok())
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
            let balance = parse_balance(balance_after).ok_or_else(unexpected)?;
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
