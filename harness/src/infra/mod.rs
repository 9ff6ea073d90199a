//! Infra providers behind one interface: where Redis and Kafka come from.
//!
//! - `local` (default): spawns `redis-server` and a KRaft Apache Kafka on free
//!   loopback ports ([`local`]); supports kill -9 and restart for faults.
//! - `docker`: testcontainers ([`docker`]), picked when a Docker API answers
//!   (Docker, or Podman's: `scripts/install-containers`); Redis restarts too.
//! - `external`: `TXENGINE_REDIS_URL` and `TXENGINE_KAFKA_BROKERS` from the env.
//!
//! `TXENGINE_INFRA=local|docker|external` forces one; unset, `external` is
//! used if both addresses are set, else `docker` if a daemon answers, else `local`.
//! `TXENGINE_REDIS_APPENDFSYNC` (`always` by default, or `everysec`) sets the
//! local Redis's AOF fsync policy. The Redis topology (one Redis or, with
//! the local provider, a Redis Cluster of 3 masters with 2 replicas each) is the
//! caller's choice (`harness up|load|backlog --redis-topology`).

pub mod docker;
pub mod local;
pub mod process;

use std::sync::{Arc, Mutex, OnceLock};

use anyhow::{bail, Context};

pub use local::{LocalKafka, LocalRedis, LocalRedisCluster, LocalService};
use txengine::config::RedisTopology;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    Local,
    Docker,
    External,
}

impl Provider {
    pub fn choose() -> anyhow::Result<Self> {
        match std::env::var("TXENGINE_INFRA").ok().as_deref() {
            Some("local") => Ok(Self::Local),
            Some("docker") => Ok(Self::Docker),
            Some("external") => Ok(Self::External),
            Some("") | Some("auto") | None => {
                if std::env::var_os("TXENGINE_REDIS_URL").is_some()
                    && std::env::var_os("TXENGINE_KAFKA_BROKERS").is_some()
                {
                    Ok(Self::External)
                } else if docker::daemon_answers() {
                    Ok(Self::Docker)
                } else {
                    Ok(Self::Local)
                }
            }
            Some(other) => {
                bail!("TXENGINE_INFRA={other}: expected local, docker, external or auto")
            }
        }
    }
}

/// Where Redis and Kafka are, and the handles to fault them when local.
pub struct Infra {
    pub provider: Provider,
    pub redis_topology: RedisTopology,
    /// One URL, or for a cluster every node's URL, comma separated.
    pub redis_url: String,
    pub kafka_brokers: String,
    /// The local Redis, for kill/restart faults (local provider only).
    pub redis: Option<Mutex<LocalRedis>>,
    /// The local Kafka, for kill/restart faults (local provider only).
    pub kafka: Option<Arc<Mutex<LocalKafka>>>,
    /// The local Redis Cluster, when that is the topology (local provider only).
    pub redis_cluster: Option<Mutex<LocalRedisCluster>>,
    /// The containers (docker provider only), for Redis restarts.
    pub docker: Option<docker::DockerStack>,
}

impl Infra {
    pub fn start(provider: Provider, topology: RedisTopology) -> anyhow::Result<Self> {
        match provider {
            Provider::Local => {
                // `TXENGINE_REDIS_APPENDFSYNC=everysec` measures the looser policy.
                let fsync =
                    std::env::var("TXENGINE_REDIS_APPENDFSYNC").unwrap_or_else(|_| "always".into());
                let kafka = LocalKafka::start()?;
                let kafka_brokers = kafka.brokers();
                let kafka = Some(Arc::new(Mutex::new(kafka)));
                match topology {
                    RedisTopology::Single => {
                        let redis = LocalRedis::start(&fsync)?;
                        Ok(Self {
                            provider,
                            redis_topology: topology,
                            redis_url: redis.url(),
                            kafka_brokers,
                            redis: Some(Mutex::new(redis)),
                            kafka,
                            redis_cluster: None,
                            docker: None,
                        })
                    }
                    RedisTopology::Cluster => {
                        // Two replicas a master: a master lost for good
                        // leaves its shard a master and a replica (WAIT 1).
                        let cluster = LocalRedisCluster::start(3, 2, &fsync)?;
                        Ok(Self {
                            provider,
                            redis_topology: topology,
                            redis_url: cluster.urls().join(","),
                            kafka_brokers,
                            redis: None,
                            kafka,
                            redis_cluster: Some(Mutex::new(cluster)),
                            docker: None,
                        })
                    }
                }
            }
            Provider::External => Ok(Self {
                provider,
                redis_topology: topology,
                redis_url: std::env::var("TXENGINE_REDIS_URL").context("TXENGINE_REDIS_URL")?,
                kafka_brokers: std::env::var("TXENGINE_KAFKA_BROKERS")
                    .context("TXENGINE_KAFKA_BROKERS")?,
                redis: None,
                kafka: None,
                redis_cluster: None,
                docker: None,
            }),
            Provider::Docker => {
                anyhow::ensure!(
                    topology == RedisTopology::Single,
                    "the docker provider runs one Redis; a cluster needs the local provider"
                );
                let stack = docker::DockerStack::start()?;
                Ok(Self {
                    provider,
                    redis_topology: topology,
                    redis_url: stack.redis_url.clone(),
                    kafka_brokers: stack.kafka_brokers.clone(),
                    redis: None,
                    kafka: None,
                    redis_cluster: None,
                    docker: Some(stack),
                })
            }
        }
    }

    /// The provider [`Provider::choose`] picks, started off the async runtime,
    /// saying which one it is.
    pub async fn start_chosen(topology: RedisTopology) -> anyhow::Result<Self> {
        let provider = Provider::choose()?;
        eprintln!("starting {provider:?} infra (Redis {topology:?}, Kafka) ...");
        tokio::task::spawn_blocking(move || Infra::start(provider, topology)).await?
    }

    /// The URL of every Redis that holds keys, for SCAN with a plain
    /// client: the Redis itself, or every master of the cluster.
    pub fn redis_masters(&self) -> anyhow::Result<Vec<String>> {
        match self.redis_topology {
            RedisTopology::Single => Ok(vec![self.redis_url.clone()]),
            RedisTopology::Cluster => local::cluster_masters(&self.redis_url),
        }
    }

    /// One stack per process (per test binary): started on first use.
    pub fn shared() -> &'static Infra {
        static SHARED: OnceLock<Result<Infra, String>> = OnceLock::new();
        let result = SHARED.get_or_init(|| {
            // The test binaries run on one Redis; the cluster tests start
            // clusters of their own.
            Provider::choose()
                .and_then(|provider| Infra::start(provider, RedisTopology::Single))
                .map_err(|e| format!("{e:#}"))
        });
        match result {
            Ok(infra) => infra,
            Err(e) => panic!("the test infrastructure did not start: {e}"),
        }
    }

    /// Process ids of the local Redis (every node of a local cluster) and
    /// Kafka, for CPU accounting; empty or `None` when not local.
    pub fn pids(&self) -> (Vec<u32>, Option<u32>) {
        let mut redis: Vec<u32> = self
            .redis
            .as_ref()
            .and_then(|r| r.lock().ok()?.pid())
            .into_iter()
            .collect();
        if let Some(cluster) = &self.redis_cluster {
            if let Ok(mut cluster) = cluster.lock() {
                redis.extend(cluster.nodes.iter_mut().filter_map(|node| node.pid()));
            }
        }
        let kafka = self.kafka.as_ref().and_then(|k| k.lock().ok()?.pid());
        (redis, kafka)
    }

    /// kill -9 of the local Redis (or its container) and a restart with its
    /// AOF; on a local cluster, kill -9 of the master of `namespace`'s first
    /// shard, its replica promoted, and the old master back as the new one's
    /// replica.
    pub fn restart_redis(&self, namespace: &str) -> anyhow::Result<()> {
        if let Some(docker) = &self.docker {
            return docker.restart_redis();
        }
        if let Some(cluster) = &self.redis_cluster {
            let key = first_shard_key(namespace);
            return cluster.lock().expect("cluster lock").fail_over(&key);
        }
        let redis = self
            .redis
            .as_ref()
            .context("redis faults need the local provider")?;
        redis.lock().expect("redis lock").restart()
    }

    /// On a local cluster: kill -9 of the master of `namespace`'s first
    /// shard, not restarted (see [`LocalRedisCluster::lose_master`]).
    pub fn lose_redis_master(&self, namespace: &str) -> anyhow::Result<()> {
        let cluster = self
            .redis_cluster
            .as_ref()
            .context("losing a master needs a local Redis Cluster")?;
        cluster
            .lock()
            .expect("cluster lock")
            .lose_master(&first_shard_key(namespace))
    }

    /// On a local cluster: every lost node started again, as a replica.
    pub fn heal_redis(&self) -> anyhow::Result<()> {
        match &self.redis_cluster {
            Some(cluster) => cluster.lock().expect("cluster lock").heal(),
            None => Ok(()),
        }
    }

    /// On a local cluster: moves `slots` slots, keys and all, from the
    /// master of `namespace`'s first shard to another master.
    pub fn reshard(&self, namespace: &str, slots: u32) -> anyhow::Result<()> {
        let cluster = self
            .redis_cluster
            .as_ref()
            .context("a reshard needs a local Redis Cluster")?;
        cluster
            .lock()
            .expect("cluster lock")
            .reshard(&first_shard_key(namespace), slots)
    }

    /// For a test binary's cluster runs: a local Redis Cluster beside the
    /// shared Kafka of [`Infra::shared`] (a Kafka restart restarts that one).
    pub fn shared_cluster() -> &'static Infra {
        static SHARED: OnceLock<Result<Infra, String>> = OnceLock::new();
        let result = SHARED.get_or_init(|| {
            let shared = Infra::shared();
            let kafka_brokers = shared.kafka_brokers.clone();
            let kafka = shared.kafka.clone();
            LocalRedisCluster::start(3, 2, "always")
                .map(|cluster| Infra {
                    provider: Provider::Local,
                    redis_topology: RedisTopology::Cluster,
                    redis_url: cluster.urls().join(","),
                    kafka_brokers,
                    redis: None,
                    kafka,
                    redis_cluster: Some(Mutex::new(cluster)),
                    docker: None,
                })
                .map_err(|e| format!("{e:#}"))
        });
        match result {
            Ok(infra) => infra,
            Err(e) => panic!("the test cluster did not start: {e}"),
        }
    }

    /// kill -9 of the local Kafka and a restart on the same log dir.
    pub fn restart_kafka(&self) -> anyhow::Result<()> {
        let kafka = self
            .kafka
            .as_ref()
            .context("kafka faults need the local provider")?;
        kafka.lock().expect("kafka lock").restart()
    }
}

/// A key of `namespace`'s first shard on a cluster: where the cluster
/// faults (a master's failover, a reshard) aim.
fn first_shard_key(namespace: &str) -> String {
    txengine::store::Layout::new(namespace, RedisTopology::Cluster).seq(0)
}
