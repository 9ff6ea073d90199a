//! Infra providers behind one interface: where Redis and Kafka come from.
//!
//! - `local` (default): spawns `redis-server` ([`local`]) and KRaft Apache
//!   Kafka nodes ([`kafka`]) on free loopback ports; supports kill -9,
//!   SIGSTOP and restart for faults.
//! - `docker`: testcontainers ([`docker`]), picked when a Docker API answers
//!   (Docker, or Podman's: `scripts/install-containers`); Redis restarts too;
//!   one Kafka broker or three (on the host's network).
//! - `external`: `TXENGINE_REDIS_URL` and `TXENGINE_KAFKA_BROKERS` from the env.
//!
//! `TXENGINE_INFRA=local|docker|external` forces one; unset, `external` is
//! used if both addresses are set, else `docker` if a daemon answers, else `local`.
//! `TXENGINE_REDIS_APPENDFSYNC` (`always` by default, or `everysec`) sets the
//! local Redis's AOF fsync policy. The Redis topology (one Redis or, with
//! the local provider, a Redis Cluster of 3 masters with 2 replicas each) is the
//! caller's choice (`harness up|load|backlog --redis-topology`), and so is
//! Kafka's: one broker, or with the local or docker provider three
//! (`--kafka-nodes 3`, or `TXENGINE_KAFKA_NODES=3` for the test binaries),
//! whose topics keep 3 replicas with `min.insync.replicas=2`.

pub mod docker;
pub mod kafka;
pub mod local;
pub mod process;

use std::sync::{Arc, Mutex, OnceLock};

use anyhow::{bail, Context};

pub use kafka::{LocalKafka, LocalKafkaCluster};
pub use local::{LocalRedis, LocalRedisCluster, LocalService};
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
    pub redis: Option<Arc<Mutex<LocalRedis>>>,
    /// Kafka brokers: 1, or 3 replicating every topic.
    pub kafka_nodes: usize,
    /// The local Kafka, for kill/restart faults (local provider only).
    pub kafka: Option<Arc<Mutex<LocalKafkaCluster>>>,
    /// The local Redis Cluster, when that is the topology (local provider only).
    pub redis_cluster: Option<Arc<Mutex<LocalRedisCluster>>>,
    /// The containers (docker provider only), for Redis restarts.
    pub docker: Option<docker::DockerStack>,
}

impl Infra {
    pub fn start(
        provider: Provider,
        topology: RedisTopology,
        kafka_nodes: usize,
    ) -> anyhow::Result<Self> {
        match provider {
            Provider::Local => Self::start_local(topology, kafka_nodes),
            Provider::External => Ok(Self {
                provider,
                redis_topology: topology,
                redis_url: std::env::var("TXENGINE_REDIS_URL").context("TXENGINE_REDIS_URL")?,
                kafka_brokers: std::env::var("TXENGINE_KAFKA_BROKERS")
                    .context("TXENGINE_KAFKA_BROKERS")?,
                kafka_nodes,
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
                let stack = docker::DockerStack::start(kafka_nodes)?;
                Ok(Self {
                    provider,
                    redis_topology: topology,
                    redis_url: stack.redis_url.clone(),
                    kafka_brokers: stack.kafka_brokers.clone(),
                    kafka_nodes,
                    redis: None,
                    kafka: None,
                    redis_cluster: None,
                    docker: Some(stack),
                })
            }
        }
    }

    /// Redis (one, or a cluster of 3 masters with 2 replicas each) and
    /// Kafka as child processes of this one.
    fn start_local(topology: RedisTopology, kafka_nodes: usize) -> anyhow::Result<Self> {
        // `TXENGINE_REDIS_APPENDFSYNC=everysec` measures the looser policy.
        let fsync = std::env::var("TXENGINE_REDIS_APPENDFSYNC").unwrap_or_else(|_| "always".into());
        let kafka = LocalKafkaCluster::start(kafka_nodes)?;
        let kafka_brokers = kafka.brokers();
        let kafka = Some(Arc::new(Mutex::new(kafka)));
        let (redis_url, redis, redis_cluster) = match topology {
            RedisTopology::Single => {
                let redis = LocalRedis::start(&fsync)?;
                (redis.url(), Some(Arc::new(Mutex::new(redis))), None)
            }
            RedisTopology::Cluster => {
                // Two replicas a master: a master lost for good leaves its
                // shard a master and a replica (WAIT 1).
                let cluster = LocalRedisCluster::start(3, 2, &fsync)?;
                let url = cluster.urls().join(",");
                (url, None, Some(Arc::new(Mutex::new(cluster))))
            }
        };
        Ok(Self {
            provider: Provider::Local,
            redis_topology: topology,
            redis_url,
            kafka_brokers,
            kafka_nodes,
            redis,
            kafka,
            redis_cluster,
            docker: None,
        })
    }

    /// The provider [`Provider::choose`] picks, started off the async runtime,
    /// saying which one it is.
    pub async fn start_chosen(topology: RedisTopology, kafka_nodes: usize) -> anyhow::Result<Self> {
        let provider = Provider::choose()?;
        eprintln!(
            "starting {provider:?} infra (Redis {topology:?}, Kafka of {kafka_nodes} node{}) ...",
            if kafka_nodes == 1 { "" } else { "s" }
        );
        tokio::task::spawn_blocking(move || Infra::start(provider, topology, kafka_nodes)).await?
    }

    /// Replicas the engine's topics get on this Kafka, and how many must
    /// be in sync for a write (`acks=all`).
    pub fn topic_replication(&self) -> (i32, u32) {
        kafka::replication_of(self.kafka_nodes)
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
                .and_then(|provider| {
                    Infra::start(provider, RedisTopology::Single, kafka_nodes_of_env()?)
                })
                .map_err(|e| format!("{e:#}"))
        });
        match result {
            Ok(infra) => infra,
            Err(e) => panic!("the test infrastructure did not start: {e}"),
        }
    }

    /// Process ids of the local Redis (every node of a local cluster) and
    /// Kafka (every node), for CPU accounting; empty when not local.
    pub fn pids(&self) -> (Vec<u32>, Vec<u32>) {
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
        let kafka = match &self.kafka {
            Some(kafka) => kafka.lock().expect("kafka lock").pids(),
            None => Vec::new(),
        };
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
                    kafka_nodes: shared.kafka_nodes,
                    redis: None,
                    kafka,
                    redis_cluster: Some(Arc::new(Mutex::new(cluster))),
                    docker: None,
                })
                .map_err(|e| format!("{e:#}"))
        });
        match result {
            Ok(infra) => infra,
            Err(e) => panic!("the test cluster did not start: {e}"),
        }
    }

    /// The local Kafka, for its faults.
    pub fn local_kafka(&self) -> anyhow::Result<std::sync::MutexGuard<'_, LocalKafkaCluster>> {
        let kafka = self
            .kafka
            .as_ref()
            .context("kafka faults need the local provider")?;
        Ok(kafka.lock().expect("kafka lock"))
    }

    /// For the test binaries' runs on a Kafka cluster: [`Infra::shared`]'s
    /// Redis beside three Kafka nodes (`shared` itself when it has them).
    pub fn shared_three_brokers() -> &'static Infra {
        static SHARED: OnceLock<Result<Infra, String>> = OnceLock::new();
        let shared = Infra::shared();
        if shared.kafka_nodes == 3 {
            return shared;
        }
        let result =
            SHARED.get_or_init(|| shared.beside_own_kafka(3).map_err(|e| format!("{e:#}")));
        match result {
            Ok(infra) => infra,
            Err(e) => panic!("the test Kafka cluster did not start: {e}"),
        }
    }

    /// The Redis Cluster of [`Infra::shared_cluster`] beside the Kafka
    /// nodes of [`Infra::shared_three_brokers`]: the whole stack distributed.
    pub fn shared_cluster_three_brokers() -> &'static Infra {
        static SHARED: OnceLock<Infra> = OnceLock::new();
        let cluster = Infra::shared_cluster();
        if cluster.kafka_nodes == 3 {
            return cluster;
        }
        SHARED.get_or_init(|| {
            let kafka = Infra::shared_three_brokers();
            Infra {
                provider: Provider::Local,
                redis_topology: RedisTopology::Cluster,
                redis_url: cluster.redis_url.clone(),
                kafka_brokers: kafka.kafka_brokers.clone(),
                kafka_nodes: 3,
                redis: None,
                kafka: kafka.kafka.clone(),
                redis_cluster: cluster.redis_cluster.clone(),
                docker: None,
            }
        })
    }

    /// This infra's Redis beside a local Kafka of its own of `nodes` nodes,
    /// stopped when the returned infra is dropped (a side-by-side run).
    pub fn beside_own_kafka(&self, nodes: usize) -> anyhow::Result<Infra> {
        anyhow::ensure!(
            self.provider == Provider::Local,
            "a Kafka beside needs the local provider (TXENGINE_INFRA=local)"
        );
        let kafka = LocalKafkaCluster::start(nodes)?;
        Ok(Infra {
            provider: Provider::Local,
            redis_topology: self.redis_topology,
            redis_url: self.redis_url.clone(),
            kafka_brokers: kafka.brokers(),
            kafka_nodes: nodes,
            redis: self.redis.clone(),
            kafka: Some(Arc::new(Mutex::new(kafka))),
            redis_cluster: self.redis_cluster.clone(),
            docker: None,
        })
    }

    /// Every Kafka broker a fault left down started again (none: nothing).
    pub fn heal_kafka(&self) -> anyhow::Result<()> {
        match &self.kafka {
            Some(kafka) => kafka.lock().expect("kafka lock").heal(),
            None => Ok(()),
        }
    }

    /// kill -9 of the local Kafka (on a cluster, of the node that leads the
    /// most partitions) and a restart on the same log dir.
    pub fn restart_kafka(&self) -> anyhow::Result<()> {
        self.local_kafka()?.restart_busiest_leader()
    }
}

/// Kafka nodes of the test binaries' infra: `TXENGINE_KAFKA_NODES`, 1
/// when unset (`3` runs every test and scenario on a Kafka cluster).
pub fn kafka_nodes_of_env() -> anyhow::Result<usize> {
    match std::env::var("TXENGINE_KAFKA_NODES").ok().as_deref() {
        None | Some("") | Some("1") => Ok(1),
        Some("3") => Ok(3),
        Some(other) => bail!("TXENGINE_KAFKA_NODES={other}: expected 1 or 3"),
    }
}

/// A key of `namespace`'s first shard on a cluster: where the cluster
/// faults (a master's failover, a reshard) aim.
fn first_shard_key(namespace: &str) -> String {
    txengine::store::Layout::new(namespace, RedisTopology::Cluster).seq(0)
}

/// Where a command runs: one Redis or a local Redis Cluster, one Kafka
/// broker or three (the flags every command of the harness takes).
#[derive(clap::Args, Debug, Clone, Copy)]
pub struct TopologyArgs {
    /// One Redis, or a local Redis Cluster (3 masters with 2 replicas each).
    #[arg(long, value_enum, default_value = "single")]
    pub redis_topology: RedisTopology,
    /// Kafka brokers: 1, or 3 (local or docker provider) whose topics keep 3
    /// replicas, 2 of them in sync for every write.
    #[arg(long, env = "TXENGINE_KAFKA_NODES", default_value_t = 1, value_parser = kafka_nodes)]
    pub kafka_nodes: usize,
}

/// `--kafka-nodes`: 1 or 3.
fn kafka_nodes(text: &str) -> Result<usize, String> {
    match text {
        "1" => Ok(1),
        "3" => Ok(3),
        _ => Err(format!("{text}: a local Kafka has 1 or 3 brokers")),
    }
}
