//! The `docker` provider: Redis and Apache Kafka (KRaft) in containers via
//! testcontainers. Chosen only where a Docker daemon answers; this machine
//! has none, so here it is compiled and its container requests unit-tested.

use std::path::Path;

use testcontainers::core::{IntoContainerPort, WaitFor};
use testcontainers::runners::AsyncRunner;
use testcontainers::{ContainerAsync, ContainerRequest, GenericImage, ImageExt};

use super::process::free_port;

/// Pinned images, the same as `docker-compose.yml`.
pub const REDIS_IMAGE: (&str, &str) = ("redis", "7.2.5");
pub const KAFKA_IMAGE: (&str, &str) = ("apache/kafka", super::local::KAFKA_VERSION);

/// True if a Docker daemon socket accepts a connection.
pub fn daemon_answers() -> bool {
    let socket = std::env::var("DOCKER_HOST")
        .ok()
        .and_then(|h| h.strip_prefix("unix://").map(str::to_owned))
        .unwrap_or_else(|| "/var/run/docker.sock".to_owned());
    Path::new(&socket).exists() && std::os::unix::net::UnixStream::connect(&socket).is_ok()
}

pub fn redis_request() -> ContainerRequest<GenericImage> {
    GenericImage::new(REDIS_IMAGE.0, REDIS_IMAGE.1)
        .with_exposed_port(6379.tcp())
        .with_wait_for(WaitFor::message_on_stdout("Ready to accept connections"))
        .with_cmd([
            "redis-server",
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
        ])
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
        ("KAFKA_AUTO_CREATE_TOPICS_ENABLE", "false".to_owned()),
    ];
    let image = GenericImage::new(KAFKA_IMAGE.0, KAFKA_IMAGE.1)
        .with_exposed_port(9092.tcp())
        .with_wait_for(WaitFor::message_on_stdout("Kafka Server started"));
    env.into_iter().fold(
        image.with_mapped_port(host_port, 9092.tcp()),
        |request, (k, v)| request.with_env_var(k, v),
    )
}

/// Running containers; removed when dropped.
pub struct DockerStack {
    pub redis_url: String,
    pub kafka_brokers: String,
    _redis: ContainerAsync<GenericImage>,
    _kafka: ContainerAsync<GenericImage>,
}

impl DockerStack {
    pub async fn start() -> anyhow::Result<Self> {
        let redis = redis_request().start().await?;
        let redis_port = redis.get_host_port_ipv4(6379.tcp()).await?;
        let kafka_port = free_port()?;
        let kafka = kafka_request(kafka_port).start().await?;
        Ok(Self {
            redis_url: format!("redis://127.0.0.1:{redis_port}"),
            kafka_brokers: format!("127.0.0.1:{kafka_port}"),
            _redis: redis,
            _kafka: kafka,
        })
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
        assert_eq!(request.image().tag(), crate::infra::local::KAFKA_VERSION);
        assert_eq!(redis_request().image().name(), "redis");
    }
}
