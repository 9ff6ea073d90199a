//! The `docker` provider: Redis and Apache Kafka (KRaft) in containers via
//! testcontainers, on a Docker daemon or on Podman's Docker API
//! (`scripts/install-containers` serves one and builds the images here).
//!
//! A Kafka of three brokers runs on the host's network instead, each node on
//! loopback ports of its own, so the brokers and the clients use the same
//! addresses.
//!
//! Podman needs ports bound to 127.0.0.1 with a port chosen up front (it
//! reports no host port for publish-all ports, and a 0.0.0.0 binding never
//! matches); Docker takes the same. Clients connect to 127.0.0.1, never to
//! the host testcontainers reports (the bridge gateway inside a container).

use std::collections::HashMap;
use std::path::Path;
use std::sync::mpsc;

use testcontainers::bollard::models::PortBinding;
use testcontainers::core::{IntoContainerPort, WaitFor};
use testcontainers::runners::AsyncRunner;
use testcontainers::{ContainerAsync, ContainerRequest, GenericImage, ImageExt};

use super::kafka::{
    free_node_ports, quorum_voters, replication_of, NodePorts, BROKER_SESSION_TIMEOUT_MS,
};
use super::process::free_port;

/// Pinned images, the same as `docker-compose.yml`.
pub const REDIS_IMAGE: (&str, &str) = ("redis", "7.0.15");
pub const KAFKA_IMAGE: (&str, &str) = ("apache/kafka", super::kafka::KAFKA_VERSION);
/// Every container this provider starts carries this label (its value: the
/// process id), so a leftover one can be found.
pub const LABEL: &str = "txengine.harness";

/// The Docker API's unix socket: `DOCKER_HOST` if it names one, else Docker's.
fn socket() -> Option<String> {
    match std::env::var("DOCKER_HOST") {
        Ok(host) => host.strip_prefix("unix://").map(str::to_owned),
        Err(_) => Some("/var/run/docker.sock".to_owned()),
    }
}

/// True if a Docker API socket accepts a connection.
pub fn daemon_answers() -> bool {
    socket().is_some_and(|socket| {
        Path::new(&socket).exists() && std::os::unix::net::UnixStream::connect(&socket).is_ok()
    })
}

/// Publishes `container_port` on 127.0.0.1:`host_port` only.
fn on_loopback(
    request: ContainerRequest<GenericImage>,
    host_port: u16,
    container_port: u16,
) -> ContainerRequest<GenericImage> {
    request
        .with_mapped_port(host_port, container_port.tcp())
        .with_label(LABEL, std::process::id().to_string())
        .with_host_config_modifier(move |config| {
            let binding = PortBinding {
                host_ip: Some("127.0.0.1".to_owned()),
                host_port: Some(host_port.to_string()),
            };
            config.port_bindings = Some(HashMap::from([(
                format!("{container_port}/tcp"),
                Some(vec![binding]),
            )]));
        })
}

/// Redis with its AOF fsynced on every write, on 127.0.0.1:`host_port`
/// (chosen up front, so it stays the same across a restart).
pub fn redis_request(host_port: u16) -> ContainerRequest<GenericImage> {
    let image = GenericImage::new(REDIS_IMAGE.0, REDIS_IMAGE.1)
        .with_exposed_port(6379.tcp())
        .with_wait_for(WaitFor::message_on_stdout("Ready to accept connections"));
    on_loopback(
        image.with_cmd([
            "redis-server",
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
        ]),
        host_port,
        6379,
    )
}

/// Kafka must advertise the host port clients use, so the port is chosen
/// before the container starts and mapped 1:1.
pub fn kafka_request(host_port: u16) -> ContainerRequest<GenericImage> {
    let env = [
        ("KAFKA_NODE_ID", "1".to_owned()),
        ("KAFKA_PROCESS_ROLES", "broker,controller".to_owned()),
        (
            "KAFKA_LISTENERS",
            "PLAINTEXT://:9092,CONTROLLER://:9093".to_owned(),
        ),
        (
            "KAFKA_ADVERTISED_LISTENERS",
            format!("PLAINTEXT://127.0.0.1:{host_port}"),
        ),
        ("KAFKA_CONTROLLER_LISTENER_NAMES", "CONTROLLER".to_owned()),
        (
            "KAFKA_LISTENER_SECURITY_PROTOCOL_MAP",
            "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT".to_owned(),
        ),
        (
            "KAFKA_CONTROLLER_QUORUM_VOTERS",
            "1@localhost:9093".to_owned(),
        ),
        ("KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR", "1".to_owned()),
        (
            "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR",
            "1".to_owned(),
        ),
        ("KAFKA_TRANSACTION_STATE_LOG_MIN_ISR", "1".to_owned()),
        ("KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS", "0".to_owned()),
        // As the local broker: due segments deleted within a second.
        ("KAFKA_LOG_RETENTION_CHECK_INTERVAL_MS", "1000".to_owned()),
        ("KAFKA_LOG_INITIAL_TASK_DELAY_MS", "1000".to_owned()),
        ("KAFKA_AUTO_CREATE_TOPICS_ENABLE", "false".to_owned()),
    ];
    let image = GenericImage::new(KAFKA_IMAGE.0, KAFKA_IMAGE.1)
        .with_exposed_port(9092.tcp())
        .with_wait_for(WaitFor::message_on_stdout("Kafka Server started"));
    env.into_iter().fold(
        on_loopback(image.into(), host_port, 9092),
        |request, (k, v)| request.with_env_var(k, v),
    )
}

/// Node `node_id` (1-based) of a Kafka of three in containers on the
/// host's network (so the brokers reach each other and clients reach them
/// at the same 127.0.0.1 addresses, as the local provider's nodes): topics
/// with 3 replicas, 2 in sync for a write, unclean election off.
pub fn kafka_node_request(node_id: usize, all: &[NodePorts]) -> ContainerRequest<GenericImage> {
    let me = all[node_id - 1];
    let (replicas, min_insync) = replication_of(all.len());
    let (replicas, min_insync) = (replicas.to_string(), min_insync.to_string());
    let env = [
        ("KAFKA_NODE_ID", node_id.to_string()),
        ("KAFKA_PROCESS_ROLES", "broker,controller".to_owned()),
        (
            "KAFKA_LISTENERS",
            format!(
                "PLAINTEXT://127.0.0.1:{},CONTROLLER://127.0.0.1:{}",
                me.broker, me.controller
            ),
        ),
        (
            "KAFKA_ADVERTISED_LISTENERS",
            format!("PLAINTEXT://127.0.0.1:{}", me.broker),
        ),
        ("KAFKA_CONTROLLER_LISTENER_NAMES", "CONTROLLER".to_owned()),
        (
            "KAFKA_LISTENER_SECURITY_PROTOCOL_MAP",
            "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT".to_owned(),
        ),
        ("KAFKA_CONTROLLER_QUORUM_VOTERS", quorum_voters(all)),
        ("KAFKA_DEFAULT_REPLICATION_FACTOR", replicas.clone()),
        ("KAFKA_MIN_INSYNC_REPLICAS", min_insync.clone()),
        ("KAFKA_UNCLEAN_LEADER_ELECTION_ENABLE", "false".to_owned()),
        // Fenced after 4 s without a heartbeat, as the local nodes.
        (
            "KAFKA_BROKER_SESSION_TIMEOUT_MS",
            BROKER_SESSION_TIMEOUT_MS.to_string(),
        ),
        (
            "KAFKA_BROKER_HEARTBEAT_INTERVAL_MS",
            (BROKER_SESSION_TIMEOUT_MS / 4).to_string(),
        ),
        ("KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR", replicas.clone()),
        ("KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR", replicas),
        ("KAFKA_TRANSACTION_STATE_LOG_MIN_ISR", min_insync),
        ("KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS", "0".to_owned()),
        ("KAFKA_LOG_RETENTION_CHECK_INTERVAL_MS", "1000".to_owned()),
        ("KAFKA_LOG_INITIAL_TASK_DELAY_MS", "1000".to_owned()),
        ("KAFKA_AUTO_CREATE_TOPICS_ENABLE", "false".to_owned()),
        // Three JVMs share the cores and memory of one.
        ("KAFKA_HEAP_OPTS", "-Xms256m -Xmx384m".to_owned()),
    ];
    let image = GenericImage::new(KAFKA_IMAGE.0, KAFKA_IMAGE.1)
        .with_wait_for(WaitFor::message_on_stdout("Kafka Server started"));
    let request = image
        .with_label(LABEL, std::process::id().to_string())
        .with_host_config_modifier(|config| config.network_mode = Some("host".to_owned()));
    env.into_iter()
        .fold(request, |request, (k, v)| request.with_env_var(k, v))
}

/// What the containers' thread is asked to do.
enum Request {
    /// kill -9 of Redis (stop with no grace) and a start on its AOF.
    RestartRedis(mpsc::Sender<anyhow::Result<()>>),
}

/// Redis and Kafka in containers, run on a thread and runtime of their own
/// (tests come and go on runtimes of theirs). Dropping it removes them; a
/// process that ends without dropping it (the shared test infra is a
/// static) has them removed by a watcher once it is gone.
pub struct DockerStack {
    pub redis_url: String,
    pub kafka_brokers: String,
    requests: mpsc::Sender<Request>,
}

struct Containers {
    redis: ContainerAsync<GenericImage>,
    kafka: Vec<ContainerAsync<GenericImage>>,
}

impl DockerStack {
    /// Redis and a Kafka of `kafka_nodes` (1 or 3) brokers.
    /// Kept whole: the thread that owns the containers, from their start
    /// through the faults asked of them to their removal, reads in one place.
    pub fn start(kafka_nodes: usize) -> anyhow::Result<Self> {
        let nodes = free_node_ports(kafka_nodes, "the docker provider's Kafka")?;
        let redis_port = free_port()?;
        let kafka_port = free_port()?;
        let kafka_brokers = if kafka_nodes == 1 {
            format!("127.0.0.1:{kafka_port}")
        } else {
            let all: Vec<String> = nodes
                .iter()
                .map(|n| format!("127.0.0.1:{}", n.broker))
                .collect();
            all.join(",")
        };
        let (ready, started) = mpsc::channel();
        let (requests, incoming) = mpsc::channel();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime for the containers");
            let containers = runtime.block_on(async {
                let redis = redis_request(redis_port).start().await?;
                remove_when_gone(redis.id());
                let kafka = if nodes.len() == 1 {
                    vec![kafka_request(kafka_port).start().await?]
                } else {
                    // Together: a node answers only once a majority runs.
                    let node = |id| kafka_node_request(id, &nodes).start();
                    let (one, two, three) = tokio::try_join!(node(1), node(2), node(3))?;
                    vec![one, two, three]
                };
                for broker in &kafka {
                    remove_when_gone(broker.id());
                }
                anyhow::Ok(Containers { redis, kafka })
            });
            let containers = match containers {
                Ok(containers) => containers,
                Err(e) => {
                    let _ = ready.send(Err(e));
                    return;
                }
            };
            let _ = ready.send(Ok(()));
            for request in incoming {
                match request {
                    Request::RestartRedis(reply) => {
                        let redis = &containers.redis;
                        let restarted = runtime.block_on(async {
                            redis.stop_with_timeout(Some(0)).await?;
                            redis.start().await?;
                            anyhow::Ok(())
                        });
                        let _ = reply.send(restarted);
                    }
                }
            }
            // The stack was dropped: remove the containers now.
            runtime.block_on(async {
                for broker in containers.kafka {
                    let _ = broker.rm().await;
                }
                let _ = containers.redis.rm().await;
            });
        });
        started.recv()??;
        Ok(Self {
            redis_url: format!("redis://127.0.0.1:{redis_port}"),
            kafka_brokers,
            requests,
        })
    }

    /// kill -9 of the Redis container and a start on its AOF (same port).
    pub fn restart_redis(&self) -> anyhow::Result<()> {
        let (reply, answer) = mpsc::channel();
        self.requests
            .send(Request::RestartRedis(reply))
            .map_err(|_| anyhow::anyhow!("the containers' thread is gone"))?;
        answer.recv()?
    }
}

/// Starts a detached watcher that removes container `id` (with its anonymous
/// volumes) through the Docker API once this process has ended.
fn remove_when_gone(id: &str) {
    let Some(socket) = socket() else {
        tracing::warn!(
            id,
            "DOCKER_HOST is not a unix socket: the container is left to Drop"
        );
        return;
    };
    let script = format!(
        "while kill -0 {pid} 2>/dev/null; do sleep 0.5; done; \
         curl -s -o /dev/null -X DELETE --unix-socket '{socket}' 'http://d/containers/{id}?force=true&v=true'",
        pid = std::process::id()
    );
    let spawned = std::process::Command::new("setsid")
        .args(["sh", "-c", &script])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn();
    if let Err(e) = spawned {
        tracing::warn!(id, error = %e, "no watcher for the container: remove it by hand if it stays");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use testcontainers::Image;

    #[test]
    fn kafka_advertises_the_mapped_host_port() {
        let request = kafka_request(49_999);
        let env: Vec<(String, String)> = request
            .env_vars()
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        assert!(env.contains(&(
            "KAFKA_ADVERTISED_LISTENERS".to_owned(),
            "PLAINTEXT://127.0.0.1:49999".to_owned()
        )));
        assert_eq!(request.image().tag(), crate::infra::kafka::KAFKA_VERSION);
        assert_eq!(redis_request(49_998).image().name(), "redis");
    }

    #[test]
    fn a_node_of_three_knows_every_voter_and_keeps_three_replicas() {
        let all: Vec<NodePorts> = (0..3)
            .map(|i| NodePorts {
                broker: 100 + i,
                controller: 200 + i,
            })
            .collect();
        let request = kafka_node_request(2, &all);
        let env: std::collections::HashMap<String, String> = request
            .env_vars()
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        assert_eq!(env["KAFKA_NODE_ID"], "2");
        assert_eq!(
            env["KAFKA_CONTROLLER_QUORUM_VOTERS"],
            "1@127.0.0.1:200,2@127.0.0.1:201,3@127.0.0.1:202"
        );
        assert_eq!(
            env["KAFKA_ADVERTISED_LISTENERS"],
            "PLAINTEXT://127.0.0.1:101"
        );
        assert_eq!(env["KAFKA_DEFAULT_REPLICATION_FACTOR"], "3");
        assert_eq!(env["KAFKA_MIN_INSYNC_REPLICAS"], "2");
        assert_eq!(env["KAFKA_UNCLEAN_LEADER_ELECTION_ENABLE"], "false");
    }
}
