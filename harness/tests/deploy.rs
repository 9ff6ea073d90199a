//! Static promises of the Docker files (`.ci/run` also builds and runs them
//! on Podman: `harness/tests/compose.rs`): the image builds the binary the
//! tests use, the dashboard only asks for metrics the service emits, and
//! every image is one the local build makes.

use std::path::PathBuf;
use std::process::Command;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The Dockerfile's Rust is the Rust the tests are built with, and it
/// builds the same package with the same profile and the lock file.
#[test]
fn dockerfile_builds_what_the_tests_use() {
    let dockerfile = read("Dockerfile");
    let pinned = dockerfile
        .lines()
        .find_map(|l| l.strip_prefix("ARG RUST_VERSION="))
        .expect("ARG RUST_VERSION in the Dockerfile");
    let rustc = Command::new("rustc")
        .arg("--version")
        .output()
        .expect("rustc");
    let rustc = String::from_utf8_lossy(&rustc.stdout);
    assert!(
        rustc.starts_with(&format!("rustc {pinned} ")),
        "Dockerfile pins Rust {pinned}, tests run on {rustc}"
    );
    assert!(dockerfile.contains("cargo build --release --locked -p txengine"));
    assert!(
        dockerfile.contains("USER 10001"),
        "the runtime image runs as non-root"
    );
}

/// Every `.rs` file under `dir`, concatenated.
fn rust_sources(dir: &std::path::Path) -> String {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .map(|path| {
            if path.is_dir() {
                rust_sources(&path)
            } else if path.extension().is_some_and(|e| e == "rs") {
                std::fs::read_to_string(&path).unwrap()
            } else {
                String::new()
            }
        })
        .collect()
}

/// Every metric a dashboard query names is one the service emits.
#[test]
fn dashboard_queries_only_emitted_metrics() {
    let dashboard: serde_json::Value =
        serde_json::from_str(&read("deploy/grafana/dashboards/txengine.json")).unwrap();
    let source = rust_sources(&repo().join("service/src"));
    let panels = dashboard["panels"].as_array().expect("panels");
    assert!(panels.len() >= 4);
    for panel in panels {
        assert_eq!(
            panel["datasource"]["uid"], "prometheus",
            "panel {}",
            panel["title"]
        );
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"].as_str().expect("expr");
            for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                if !word.starts_with("txengine_") {
                    continue;
                }
                let base = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| word.strip_suffix(s))
                    .unwrap_or(word);
                assert!(
                    source.contains(&format!("\"{base}\"")),
                    "dashboard asks for {word}, which the service never emits"
                );
            }
        }
    }
}

/// Prometheus scrapes the ports the compose file gives the API and consumers.
#[test]
fn prometheus_scrapes_the_compose_ports() {
    let prometheus = read("deploy/prometheus.yml");
    let compose = read("docker-compose.yml");
    assert!(prometheus.contains("api:8080") && compose.contains("TXENGINE_LISTEN: 0.0.0.0:8080"));
    assert!(
        prometheus.contains("port: 9100")
            && compose.contains("TXENGINE_METRICS_LISTEN: 0.0.0.0:9100")
    );
}

/// Compose, the docker provider and the local image build
/// (`scripts/install-containers`) name the same images, so the images built
/// here are the ones both container paths ask for.
#[test]
fn compose_the_docker_provider_and_the_local_build_name_the_same_images() {
    use harness::infra::docker::{KAFKA_IMAGE, REDIS_IMAGE};
    let compose = read("docker-compose.yml")
        + &read("docker-compose.cluster.yml")
        + &read("docker-compose.kafka-cluster.yml");
    let script = read("scripts/install-containers");
    for (name, tag) in [REDIS_IMAGE, KAFKA_IMAGE] {
        assert!(
            compose.contains(&format!("image: {name}:{tag}")),
            "compose asks for another {name} than {tag}"
        );
    }
    let images: Vec<&str> = compose
        .lines()
        .filter_map(|l| l.trim().strip_prefix("image: "))
        .collect();
    assert!(images.len() >= 6, "{images:?}");
    for image in images {
        // Grafana and k6 have no Debian package: they are not built here.
        if image.starts_with("grafana/") {
            continue;
        }
        let local = if image.contains('/') {
            format!("docker.io/{image}")
        } else {
            format!("docker.io/library/{image}")
        };
        let built = script.contains(&local)
            || (image == "txengine:local" && script.contains("localhost/txengine:local"));
        assert!(
            built,
            "scripts/install-containers does not build {image} ({local})"
        );
    }
}

/// Compose's kafka-init creates the topics with the segment.ms and
/// retention.ms the engine would choose for its default outcome TTL on a
/// broker with Kafka's default retention check: the engine refuses a topic
/// that keeps records longer than their flags.
#[test]
fn compose_topics_keep_records_shorter_than_their_flags() {
    let ttl_ms = txengine::Config::defaults().outcome_ttl_secs * 1000;
    let wanted = txengine::topics::Retention::for_ttl(ttl_ms, 300_000).unwrap();
    let settings = format!(
        "--config cleanup.policy=delete --config segment.ms={} --config retention.ms={}",
        wanted.segment_ms, wanted.retention_ms
    );
    for file in ["docker-compose.yml", "docker-compose.kafka-cluster.yml"] {
        assert_eq!(
            read(file).matches(&settings).count(),
            2,
            "{file}: both topics with {settings}"
        );
    }
    // On three brokers, each topic keeps 3 replicas with 2 in sync.
    let three = read("docker-compose.kafka-cluster.yml");
    assert_eq!(
        three
            .matches("--replication-factor 3 --config min.insync.replicas=2")
            .count(),
        2
    );
}
