//! Typed configuration: command-line flags, each also read from a
//! `TXENGINE_*` environment variable. `txengine --help` lists them all.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, ValueEnum};

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

#[derive(Debug, Clone, Parser)]
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

    /// Kafka bootstrap servers, comma separated.
    #[arg(long, env = "TXENGINE_KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
    pub kafka_brokers: String,

    /// Topic the API publishes to and consumers read.
    #[arg(long, env = "TXENGINE_TOPIC", default_value = "transactions")]
    pub topic: String,

    /// Topic for records that cannot be decoded.
    #[arg(long, env = "TXENGINE_DLQ_TOPIC", default_value = "transactions.dlq")]
    pub dlq_topic: String,

    /// Partitions to create the topic with, if it does not exist.
    #[arg(long, env = "TXENGINE_PARTITIONS", default_value_t = 8)]
    pub partitions: i32,

    /// Consumer group id.
    #[arg(long, env = "TXENGINE_GROUP", default_value = "txengine")]
    pub group: String,

    /// Key prefix in Redis; also every key's Redis Cluster hash tag.
    #[arg(long, env = "TXENGINE_NAMESPACE", default_value = "txe")]
    pub namespace: String,

    /// Admin bearer token for `PUT /balance/{account}`. Without one, the
    /// setter answers 403 to everyone.
    #[arg(long, env = "TXENGINE_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,

    /// File holding the admin token (first line), instead of the variable.
    #[arg(
        long,
        env = "TXENGINE_ADMIN_TOKEN_FILE",
        conflicts_with = "admin_token"
    )]
    pub admin_token_file: Option<PathBuf>,

    /// How long outcomes (the processed flags) are kept, in seconds. Also the
    /// retention given to a topic this process creates: a duplicate arriving
    /// later than this could be applied again, so never make it shorter than
    /// the topic's retention.
    #[arg(long, env = "TXENGINE_OUTCOME_TTL_SECS", default_value_t = 7 * 24 * 3600)]
    pub outcome_ttl_secs: u64,

    /// How long the API's claim on an id lasts while its publish is in flight.
    #[arg(long, env = "TXENGINE_LEASE_MS", default_value_t = 30_000)]
    pub lease_ms: u64,

    /// Most publishes waiting for Kafka at once; past it the API answers 503.
    #[arg(long, env = "TXENGINE_MAX_IN_FLIGHT", default_value_t = 20_000)]
    pub max_in_flight: usize,

    /// How long a publish may wait for the broker's acknowledgement (ms).
    #[arg(long, env = "TXENGINE_PUBLISH_TIMEOUT_MS", default_value_t = 5_000)]
    pub publish_timeout_ms: u64,

    /// Producer linger: how long to wait to fill a batch (ms).
    #[arg(long, env = "TXENGINE_LINGER_MS", default_value_t = 2)]
    pub linger_ms: u64,

    /// Most records a consumer applies in one pipelined Redis round trip.
    #[arg(long, env = "TXENGINE_BATCH_SIZE", default_value_t = 2048)]
    pub batch_size: usize,

    /// Longest wait for one Redis answer (ms).
    #[arg(long, env = "TXENGINE_REDIS_TIMEOUT_MS", default_value_t = 2_000)]
    pub redis_timeout_ms: u64,

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
}

impl Config {
    /// The admin token from the flag, the variable or the file, if any.
    pub fn admin_token(&self) -> anyhow::Result<Option<String>> {
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
            return Ok(Some(token));
        }
        Ok(self.admin_token.clone().filter(|t| !t.is_empty()))
    }

    /// A configuration with every default, for embedding (tests, harness).
    pub fn defaults() -> Self {
        Self::parse_from(["txengine"])
    }
}
