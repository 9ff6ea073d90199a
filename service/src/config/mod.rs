//! Typed configuration: command-line flags, each also read from a
//! `TXENGINE_*` environment variable. `txengine --help` lists them all.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, ValueEnum};

/// A secret (the admin token): `Debug` never prints it, so neither does a
/// logged `Config`; [`Secret::expose`] is the one way to read it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(redacted)")
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        Ok(Self::new(value))
    }
}

/// Which parts of the engine this process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Role {
    /// The HTTP API: validates, claims ids, publishes to Kafka.
    Api,
    /// A consumer in the group: applies records to Redis.
    Consumer,
    /// Both in one process.
    All,
    /// Print the OpenAPI document of the HTTP API and exit.
    Openapi,
}

pub use crate::store::RedisTopology;

#[derive(Debug, Clone, PartialEq, Parser)]
#[command(
    name = "txengine",
    version,
    about = "Atomic transaction engine: HTTP -> Kafka -> Redis (Lua)"
)]
pub struct Config {
    /// What this process runs.
    #[arg(value_enum, default_value = "all", env = "TXENGINE_ROLE")]
    pub role: Role,

    /// Address the HTTP API listens on (role api/all).
    #[arg(long, env = "TXENGINE_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// Address for `/metrics` and `/health` of a consumer-only process (the
    /// API serves them on `--listen`). Unset: no metrics listener.
    #[arg(long, env = "TXENGINE_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,

    /// Redis URL.
    #[arg(
        long,
        env = "TXENGINE_REDIS_URL",
        default_value = "redis://127.0.0.1:6379"
    )]
    pub redis_url: String,

    /// One Redis server, or a Redis Cluster (then `--redis-url` lists seed
    /// nodes, comma separated). Every namespace lives in one hash slot.
    #[arg(
        long,
        value_enum,
        env = "TXENGINE_REDIS_TOPOLOGY",
        default_value = "single"
    )]
    pub redis_topology: RedisTopology,

    /// Kafka bootstrap servers, comma separated.
    #[arg(long, env = "TXENGINE_KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
    pub kafka_brokers: String,

    /// Topic the API publishes to and consumers read.
    #[arg(long, env = "TXENGINE_TOPIC", default_value = "transactions")]
    pub topic: String,

    /// Topic for records that cannot be decoded.
    #[arg(long, env = "TXENGINE_DLQ_TOPIC", default_value = "transactions.dlq")]
    pub dlq_topic: String,

    /// Topic the consumers publish an event to for each final outcome
    /// (created with the transactions topic's partitions).
    #[arg(
        long,
        env = "TXENGINE_OUTCOMES_TOPIC",
        default_value = "transactions.outcomes"
    )]
    pub outcomes_topic: String,

    /// Publish the outcome events (`false`: none, to measure what they cost).
    #[arg(long, env = "TXENGINE_OUTCOME_EVENTS", default_value_t = true, action = clap::ArgAction::Set)]
    pub outcome_events: bool,

    /// Partitions to create the topic with, if it does not exist.
    #[arg(long, env = "TXENGINE_PARTITIONS", default_value_t = 8)]
    pub partitions: i32,

    /// Replicas of each partition of a topic this process creates. 1 fits
    /// one broker; in production 3, with `--topic-min-insync-replicas 2`.
    #[arg(long, env = "TXENGINE_TOPIC_REPLICATION_FACTOR", default_value_t = 1)]
    pub topic_replication_factor: i32,

    /// `min.insync.replicas` of a topic this process creates: how many
    /// replicas have a record before `acks=all` answers (and so a 202).
    #[arg(long, env = "TXENGINE_TOPIC_MIN_INSYNC_REPLICAS", default_value_t = 1)]
    pub topic_min_insync_replicas: u32,

    /// Consumer group id.
    #[arg(long, env = "TXENGINE_GROUP", default_value = "txengine")]
    pub group: String,

    /// Key prefix in Redis; also every key's Redis Cluster hash tag.
    #[arg(long, env = "TXENGINE_NAMESPACE", default_value = "txe")]
    pub namespace: String,

    /// The asset of an account made without one named (by `PUT /balance`,
    /// or moved from a layout without assets): a code such as `USD/2`.
    /// `XXX` is ISO 4217's "no currency".
    #[arg(long, env = "TXENGINE_DEFAULT_ASSET", default_value = "XXX")]
    pub default_asset: crate::domain::Asset,

    /// Admin bearer token for `PUT /balance/{account}`. Without one, the
    /// setter answers 403 to everyone.
    #[arg(long, env = "TXENGINE_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<Secret>,

    /// File holding the admin token (first line), instead of the variable.
    #[arg(
        long,
        env = "TXENGINE_ADMIN_TOKEN_FILE",
        conflicts_with = "admin_token"
    )]
    pub admin_token_file: Option<PathBuf>,

    /// How long outcomes (the processed flags) are kept, in seconds. Every
    /// record must be gone from the topic before its flag expires, so a
    /// topic this process creates gets `segment.ms` and `retention.ms` whose
    /// sum plus the brokers' `log.retention.check.interval.ms` is below it,
    /// and an existing topic that keeps records longer is refused.
    #[arg(long, env = "TXENGINE_OUTCOME_TTL_SECS", default_value_t = 7 * 24 * 3600)]
    pub outcome_ttl_secs: u64,

    /// How long each account's history (`GET /accounts/{account}/transactions`,
    /// `GET /balance/{account}?at=`) is kept, in seconds; by default as long
    /// as the outcomes. 0 writes no history (to measure what it costs).
    #[arg(long, env = "TXENGINE_HISTORY_RETENTION_SECS")]
    pub history_retention_secs: Option<u64>,

    /// How long the API's claim on an id lasts while its publish is in flight.
    #[arg(long, env = "TXENGINE_LEASE_MS", default_value_t = 30_000)]
    pub lease_ms: u64,

    /// Most publishes waiting for Kafka at once; past it the API answers 503.
    #[arg(long, env = "TXENGINE_MAX_IN_FLIGHT", default_value_t = 20_000)]
    pub max_in_flight: usize,

    /// The consumers' backlog (records of the topic the group has not
    /// stored) at which the API stops taking new transactions (503 +
    /// Retry-After, nothing claimed) until they catch up; 0: never. The
    /// default is about 2.5 s of applies on 2 cores (docs/performance.md).
    #[arg(long, env = "TXENGINE_MAX_BACKLOG_RECORDS", default_value_t = 50_000)]
    pub max_backlog_records: u64,

    /// How long a publish may wait for the broker's acknowledgement (ms).
    #[arg(long, env = "TXENGINE_PUBLISH_TIMEOUT_MS", default_value_t = 5_000)]
    pub publish_timeout_ms: u64,

    /// Producer linger: how long to wait to fill a batch (ms). Each 202
    /// waits up to this long; in exchange, fewer and fuller produce
    /// requests: under wrk, 10 instead of 2 cut librdkafka's broker thread
    /// from 1.8 to 0.4 s of CPU per 10 s and the broker's CPU per request
    /// by half (docs/performance.md).
    #[arg(long, env = "TXENGINE_LINGER_MS", default_value_t = 10)]
    pub linger_ms: u64,

    /// Most records a consumer applies in one pipelined Redis round trip.
    #[arg(long, env = "TXENGINE_BATCH_SIZE", default_value_t = 2048)]
    pub batch_size: usize,

    /// Longest wait for one Redis answer (ms).
    #[arg(long, env = "TXENGINE_REDIS_TIMEOUT_MS", default_value_t = 2_000)]
    pub redis_timeout_ms: u64,

    /// Replicas that must hold a batch's writes (Redis `WAIT`) before a
    /// consumer stores the offsets past it, so that a failover to a replica
    /// loses no apply. Default: 0 on one Redis (its AOF), 1 on a cluster,
    /// where 0 is refused without `--redis-accept-failover-loss`.
    #[arg(long, env = "TXENGINE_REDIS_WAIT_REPLICAS")]
    pub redis_wait_replicas: Option<u32>,

    /// Lets a cluster run with `--redis-wait-replicas 0`: the operator
    /// accepts that a master failing over can lose applies (and, in a saga,
    /// create money: the debit lost, its credit already on its way).
    #[arg(long, env = "TXENGINE_REDIS_ACCEPT_FAILOVER_LOSS")]
    pub redis_accept_failover_loss: bool,

    /// Seconds a 503 tells the client to wait (Retry-After).
    #[arg(long, env = "TXENGINE_RETRY_AFTER_SECS", default_value_t = 1)]
    pub retry_after_secs: u64,

    /// Most open HTTP connections; more wait in the kernel's listen backlog
    /// until one closes.
    #[arg(long, env = "TXENGINE_MAX_CONNECTIONS", default_value_t = 1024)]
    pub max_connections: usize,

    /// How long a client may take to send a request's headers (ms), and how
    /// long an idle keep-alive connection stays open.
    #[arg(long, env = "TXENGINE_HEADER_READ_TIMEOUT_MS", default_value_t = 5_000)]
    pub header_read_timeout_ms: u64,

    /// How long a client may take to send a request's body (ms); then 408.
    #[arg(long, env = "TXENGINE_BODY_READ_TIMEOUT_MS", default_value_t = 5_000)]
    pub body_read_timeout_ms: u64,

    /// Whether the API enforces each key's rate limit. `off` is for
    /// measuring what the limiter costs; keys are checked either way.
    #[arg(
        long,
        value_enum,
        env = "TXENGINE_RATE_LIMIT",
        default_value = "enforce"
    )]
    pub rate_limit: RateLimitMode,

    /// How long an API process may use a key read from Redis before it
    /// reads it again (ms): a revoked key is refused everywhere within this.
    #[arg(long, env = "TXENGINE_KEY_CACHE_MS", default_value_t = 500)]
    pub key_cache_ms: u64,

    /// A hold's life when it names no `timeout_s` (s; at most
    /// `--max-hold-timeout-s`, which it is lowered to).
    #[arg(long, env = "TXENGINE_HOLD_TIMEOUT_S", default_value_t = 600)]
    pub hold_timeout_s: u32,

    /// The longest hold (s). At most half of `--outcome-ttl-secs`, so that a
    /// hold ends (and its capture can still be caught as a duplicate) while
    /// its records and flags exist.
    #[arg(long, env = "TXENGINE_MAX_HOLD_TIMEOUT_S", default_value_t = 86_400)]
    pub max_hold_timeout_s: u32,

    /// How often a consumer process looks for holds past their deadline and
    /// publishes their expiry (ms).
    #[arg(long, env = "TXENGINE_EXPIRE_SCAN_MS", default_value_t = 1_000)]
    pub expire_scan_ms: u64,
}

/// Whether the API enforces rate limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RateLimitMode {
    /// Every request of a limited key runs the limiter script.
    Enforce,
    /// No limiter (for measuring its cost): keys and scopes still apply.
    Off,
}

use crate::limits::MAX_KEY_CACHE_MS;

impl Config {
    /// Replicas a consumer waits for (`WAIT`) before it stores offsets.
    pub fn wait_replicas(&self) -> u32 {
        self.redis_wait_replicas
            .unwrap_or(match self.redis_topology {
                RedisTopology::Single => 0,
                RedisTopology::Cluster => 1,
            })
    }

    /// How long a `WAIT` for the replicas may take: half the Redis answer
    /// timeout, so it answers before the client gives up on it (never 0:
    /// `WAIT` with 0 waits forever).
    pub fn wait_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_millis((self.redis_timeout_ms / 2).max(1))
    }

    /// What the API waits for before it publishes a claim's record: as many
    /// replicas as a consumer waits for before it stores offsets.
    pub fn claim_replication(&self) -> crate::admission::ClaimReplication {
        crate::admission::ClaimReplication {
            replicas: self.wait_replicas(),
            timeout: self.wait_timeout(),
        }
    }

    /// How long history is kept: the flag, else the outcomes' TTL.
    pub fn history_retention_secs(&self) -> u64 {
        self.history_retention_secs.unwrap_or(self.outcome_ttl_secs)
    }

    /// What the topics are created with and checked against.
    pub fn topic_settings(&self) -> crate::topics::TopicSettings<'_> {
        crate::topics::TopicSettings {
            brokers: &self.kafka_brokers,
            topic: &self.topic,
            partitions: self.partitions,
            dlq_topic: &self.dlq_topic,
            outcomes_topic: self.outcome_events.then_some(self.outcomes_topic.as_str()),
            replication_factor: self.topic_replication_factor,
            min_insync_replicas: self.topic_min_insync_replicas,
            outcome_ttl: std::time::Duration::from_secs(self.outcome_ttl_secs),
        }
    }

    /// The admin token from the flag, the variable or the file, if any.
    pub fn admin_token(&self) -> anyhow::Result<Option<Secret>> {
        use anyhow::Context;
        if let Some(path) = &self.admin_token_file {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading admin token file {}", path.display()))?;
            let token = text.lines().next().unwrap_or("").trim().to_owned();
            anyhow::ensure!(
                !token.is_empty(),
                "admin token file {} is empty",
                path.display()
            );
            return Ok(Some(Secret::new(token)));
        }
        Ok(self.admin_token.clone().filter(|t| !t.expose().is_empty()))
    }

    /// Refuses settings that cannot work, naming the flag, instead of
    /// quietly raising them at run time.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let at_least_one = [
            ("--partitions", self.partitions.max(0) as u64),
            ("--outcome-ttl-secs", self.outcome_ttl_secs),
            ("--lease-ms", self.lease_ms),
            ("--max-in-flight", self.max_in_flight as u64),
            ("--publish-timeout-ms", self.publish_timeout_ms),
            ("--batch-size", self.batch_size as u64),
            ("--redis-timeout-ms", self.redis_timeout_ms),
            ("--max-connections", self.max_connections as u64),
            ("--header-read-timeout-ms", self.header_read_timeout_ms),
            ("--body-read-timeout-ms", self.body_read_timeout_ms),
            ("--hold-timeout-s", u64::from(self.hold_timeout_s)),
            ("--max-hold-timeout-s", u64::from(self.max_hold_timeout_s)),
            ("--expire-scan-ms", self.expire_scan_ms),
        ];
        if let Some((flag, _)) = at_least_one.iter().find(|(_, value)| *value == 0) {
            return Err(ConfigError::Zero(flag));
        }
        if self.redis_topology == RedisTopology::Cluster
            && self.wait_replicas() == 0
            && !self.redis_accept_failover_loss
        {
            return Err(ConfigError::ClusterWithoutWait);
        }
        if self.topic_replication_factor < 1
            || self.topic_min_insync_replicas < 1
            || self.topic_min_insync_replicas as i32 > self.topic_replication_factor
        {
            return Err(ConfigError::Replication {
                replication_factor: self.topic_replication_factor,
                min_insync_replicas: self.topic_min_insync_replicas,
            });
        }
        if self.key_cache_ms > MAX_KEY_CACHE_MS {
            return Err(ConfigError::KeyCacheTooLong(self.key_cache_ms));
        }
        // The id's binding is written at the claim and must outlive the
        // publish, or a late record could meet an id bound to another body.
        if self.outcome_ttl_secs.saturating_mul(1000) <= self.publish_timeout_ms {
            return Err(ConfigError::OutcomeTtlTooShort {
                outcome_ttl_secs: self.outcome_ttl_secs,
                publish_timeout_ms: self.publish_timeout_ms,
            });
        }
        if u64::from(self.max_hold_timeout_s) * 2 > self.outcome_ttl_secs {
            return Err(ConfigError::HoldOutlivesOutcomes {
                max_hold_timeout_s: self.max_hold_timeout_s,
                outcome_ttl_secs: self.outcome_ttl_secs,
            });
        }
        self.validate_names()
    }

    /// Names that must be given, and topics that must differ.
    fn validate_names(&self) -> Result<(), ConfigError> {
        for (flag, value) in [
            ("--topic", &self.topic),
            ("--dlq-topic", &self.dlq_topic),
            ("--outcomes-topic", &self.outcomes_topic),
            ("--group", &self.group),
            ("--namespace", &self.namespace),
        ] {
            if value.is_empty() {
                return Err(ConfigError::Empty(flag));
            }
        }
        let topics = [&self.topic, &self.dlq_topic, &self.outcomes_topic];
        if topics
            .iter()
            .collect::<std::collections::HashSet<_>>()
            .len()
            < topics.len()
        {
            return Err(ConfigError::SameTopics);
        }
        Ok(())
    }

    /// A configuration with every default, for embedding (tests, harness).
    pub fn defaults() -> Self {
        Self::parse_from(["txengine"])
    }
}

/// `url` (or comma-separated URLs) with any password replaced by `***`,
/// for logs and errors.
pub fn redacted_url(url: &str) -> String {
    url.split(',')
        .map(|one| {
            let Some((scheme, rest)) = one.split_once("://") else {
                return one.to_owned();
            };
            // The password ends at the last '@' (an unescaped '/' or '?' in it
            // must not end the search early).
            let (authority, tail) = match rest.rfind('@') {
                Some(at) => {
                    let user = rest[..at].split(':').next().unwrap_or("");
                    (format!("{user}:***@"), &rest[at + 1..])
                }
                None => (String::new(), rest),
            };
            // redis+unix URLs carry it as a query parameter.
            let tail = match tail.split_once('?') {
                Some((path, query)) => {
                    let query: Vec<String> = query
                        .split('&')
                        .map(|pair| match pair.split_once('=') {
                            Some((key, _)) if key == "pass" || key == "password" => {
                                format!("{key}=***")
                            }
                            _ => pair.to_owned(),
                        })
                        .collect();
                    format!("{path}?{}", query.join("&"))
                }
                None => tail.to_owned(),
            };
            format!("{scheme}://{authority}{tail}")
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// A setting that cannot work.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("{0} must be at least 1")]
    Zero(&'static str),
    #[error("{0} must not be empty")]
    Empty(&'static str),
    #[error("--key-cache-ms ({0}) must be at most {MAX_KEY_CACHE_MS}: a revoked key must be refused within 1 s")]
    KeyCacheTooLong(u64),
    #[error("--redis-wait-replicas 0 on a Redis Cluster: a master that fails over can lose applies (a saga's debit lost while its credit is on its way creates money); wait for 1 replica (the default), or say --redis-accept-failover-loss")]
    ClusterWithoutWait,
    #[error("--topic-replication-factor ({replication_factor}) must be at least 1, and --topic-min-insync-replicas ({min_insync_replicas}) between 1 and it")]
    Replication {
        replication_factor: i32,
        min_insync_replicas: u32,
    },
    #[error("--topic, --dlq-topic and --outcomes-topic must differ")]
    SameTopics,
    #[error("--outcome-ttl-secs ({outcome_ttl_secs} s) must be longer than --publish-timeout-ms ({publish_timeout_ms} ms): an id must stay bound to its body for as long as its publish can land")]
    OutcomeTtlTooShort {
        outcome_ttl_secs: u64,
        publish_timeout_ms: u64,
    },
    #[error("--max-hold-timeout-s ({max_hold_timeout_s} s) must be at most half of --outcome-ttl-secs ({outcome_ttl_secs} s): a hold must end while its records and flags exist")]
    HoldOutlivesOutcomes {
        max_hold_timeout_s: u32,
        outcome_ttl_secs: u64,
    },
}

mod args;
#[cfg(test)]
mod tests;
