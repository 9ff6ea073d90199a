//! The compose stack for real: `docker-compose up` of Redis, Kafka, the
//! topics, the API, two consumers and Prometheus (Grafana and k6 have no
//! image here), then a smoke test through it: accounts funded, transactions
//! posted and applied, consumers scaled to three and still applying,
//! Prometheus scraping the API and the consumers and a dashboard query
//! answering, and `down -v` leaving no container, network or volume.
//!
//! And the Redis Cluster override: nine Redis containers (3 masters with 2
//! replicas each) joined by the
//! one-shot `redis-cli --cluster create`, the engine on them, transfers
//! between slots (sagas) applied.
//!
//! And the Kafka cluster override: three KRaft brokers, the topics with 3
//! replicas and `min.insync.replicas=2`; one broker killed, and the stack
//! still accepts and applies.
//!
//! Needs a Docker API (Docker, or Podman's: `scripts/install-containers`
//! serves one and builds the images), so all are ignored by `cargo test`;
//! `.ci/run` runs them one after the other (each publishes port 8080) with
//! `cargo test -p harness --test compose -- --ignored --test-threads 1`.

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use harness::client::ApiClient;
use reqwest::StatusCode;
use serde_json::{json, Value};

/// The compose project of each test (its containers', networks' and
/// volumes' label), and its compose files.
struct Stack {
    project: &'static str,
    files: &'static [&'static str],
}

const ONE_REDIS: Stack = Stack {
    project: "txengine-compose-test",
    files: &["docker-compose.yml"],
};
const CLUSTER: Stack = Stack {
    project: "txengine-compose-cluster-test",
    files: &["docker-compose.yml", "docker-compose.cluster.yml"],
};
const THREE_BROKERS: Stack = Stack {
    project: "txengine-compose-kafka-cluster-test",
    files: &["docker-compose.yml", "docker-compose.kafka-cluster.yml"],
};
const ADMIN_TOKEN: &str = "compose-test-admin-token";

fn root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `docker-compose -p <project> -f <files> <args>` in the repository;
/// panics with its output if it fails.
fn compose(stack: &Stack, args: &[&str]) -> String {
    let (ok, text) = try_compose(stack, args);
    assert!(ok, "docker-compose {args:?}:\n{text}");
    text
}

/// `docker-compose ...`: whether it succeeded, and what it printed.
fn try_compose(stack: &Stack, args: &[&str]) -> (bool, String) {
    let mut command = Command::new("docker-compose");
    command.current_dir(root()).args(["-p", stack.project]);
    for file in stack.files {
        command.args(["-f", file]);
    }
    let output = command
        .args(args)
        .env("TXENGINE_ADMIN_TOKEN", ADMIN_TOKEN)
        .output()
        .expect("docker-compose runs (scripts/install-containers installs it)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

/// The project's containers, networks or volumes that Podman (or Docker)
/// still lists.
fn leftovers(stack: &Stack) -> Vec<String> {
    let cli = if which("podman") { "podman" } else { "docker" };
    let label = format!("label=com.docker.compose.project={}", stack.project);
    let mut left = Vec::new();
    for kind in [
        vec!["ps", "-a", "--filter", &label, "--format", "{{.Names}}"],
        vec!["network", "ls", "--filter", &label, "--format", "{{.Name}}"],
        vec!["volume", "ls", "--filter", &label, "--format", "{{.Name}}"],
    ] {
        let output = Command::new(cli).args(&kind).output().unwrap();
        left.extend(
            String::from_utf8_lossy(&output.stdout)
                .lines()
                .filter(|l| !l.is_empty())
                .map(|l| format!("{} {l}", kind[0])),
        );
    }
    left
}

fn which(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Podman runs healthchecks only from systemd timers, which this machine
/// does not have: run every healthcheck of the project every 2 s, so
/// `depends_on: service_healthy` sees them. (Docker runs them itself.)
fn run_healthchecks(stack: &Stack, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    let label = format!("label=com.docker.compose.project={}", stack.project);
    std::thread::spawn(move || {
        if !which("podman") {
            return;
        }
        while !stop.load(Ordering::Relaxed) {
            let ids = Command::new("podman")
                .args(["ps", "-q", "--filter", &label])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default();
            for id in ids.lines() {
                // Containers without a healthcheck answer an error: fine.
                let _ = Command::new("podman")
                    .args(["healthcheck", "run", id])
                    .output();
            }
            std::thread::sleep(Duration::from_secs(2));
        }
    })
}

async fn until<T>(what: &str, timeout: Duration, mut check: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "{what}: not after {timeout:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// POSTs each `(id, from, to, amount)` transfer until it is accepted (a
/// 503 is retried with the same id, as a client must: on a cluster just
/// formed, a claim is refused until its replica has synced), then waits
/// until every one is applied.
async fn transfer_and_wait_applied<'a>(
    api: &ApiClient,
    transfers: impl Iterator<Item = (String, &'a str, &'a str, u64)>,
    timeout: Duration,
) {
    let mut ids = Vec::new();
    for (id, from, to, amount) in transfers {
        let body =
            json!({"id": id, "type": "transfer", "account": from, "to": to, "amount": amount});
        until(
            "the transfer accepted",
            Duration::from_secs(60),
            async || {
                let (status, answer) = api.post(&body).await.unwrap();
                match status {
                    StatusCode::ACCEPTED | StatusCode::OK => Some(()),
                    StatusCode::SERVICE_UNAVAILABLE => None,
                    other => panic!("{other} {answer}"),
                }
            },
        )
        .await;
        ids.push(id);
    }
    let settled = api.wait_settled(&ids, timeout).await.unwrap();
    assert!(
        settled.values().all(|v| v["status"] == "applied"),
        "{settled:?}"
    );
}

/// A Prometheus instant query's result vector (empty while it does not answer).
async fn prometheus(http: &reqwest::Client, query: &str) -> Vec<Value> {
    let url =
        reqwest::Url::parse_with_params("http://127.0.0.1:9090/api/v1/query", [("query", query)])
            .unwrap();
    let Ok(response) = http.get(url).send().await else {
        return Vec::new();
    };
    let answer: Value = response.json().await.unwrap_or(Value::Null);
    answer["data"]["result"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs a Docker API and the images: scripts/install-containers, then --ignored"]
async fn the_compose_stack_runs_applies_scales_is_scraped_and_leaves_nothing() {
    let stack = &ONE_REDIS;
    let (api, running) = up(stack, &["api", "consumer", "prometheus"]).await;
    for account in ["alice", "bob"] {
        api.set_balance(account, 1_000).await.unwrap();
    }
    let transfers = (0..20).map(|n| (format!("compose-{n}"), "alice", "bob", 10));
    transfer_and_wait_applied(&api, transfers, Duration::from_secs(60)).await;
    assert_eq!(api.balance("alice").await.unwrap(), Some(800));
    assert_eq!(api.balance("bob").await.unwrap(), Some(1_200));

    // Three consumers; transactions still applied, every one once.
    compose(
        stack,
        &[
            "up",
            "-d",
            "--no-build",
            "--no-recreate",
            "--scale",
            "consumer=3",
            "consumer",
        ],
    );
    let consumers = compose(stack, &["ps", "-q", "consumer"]);
    assert_eq!(
        consumers.lines().filter(|l| !l.is_empty()).count(),
        3,
        "{consumers}"
    );
    let mut more = Vec::new();
    for n in 0..20 {
        let id = format!("compose-scaled-{n}");
        let body = json!({"id": id, "type": "debit", "account": "bob", "amount": 1});
        assert_eq!(api.post(&body).await.unwrap().0, StatusCode::ACCEPTED);
        more.push(id);
    }
    api.wait_settled(&more, Duration::from_secs(120))
        .await
        .unwrap();
    assert_eq!(api.balance("bob").await.unwrap(), Some(1_180));

    // Prometheus scrapes the API and the consumers; a dashboard query answers.
    let http = reqwest::Client::new();
    until(
        "prometheus scrapes the API and 3 consumers",
        Duration::from_secs(90),
        async || {
            let up = prometheus(&http, "up == 1").await;
            let jobs: Vec<&str> = up
                .iter()
                .filter_map(|s| s["metric"]["job"].as_str())
                .collect();
            let consumers = jobs.iter().filter(|j| **j == "txengine-consumer").count();
            (jobs.contains(&"txengine-api") && consumers == 3).then_some(())
        },
    )
    .await;
    until(
        "a dashboard query answers",
        Duration::from_secs(60),
        async || {
            let series = prometheus(
                &http,
                "sum by (route, status) (rate(txengine_http_requests_total[1m]))",
            )
            .await;
            (!series.is_empty()).then_some(())
        },
    )
    .await;

    running.down();
}

/// A stack that is up: torn down (`down -v`) when dropped, so a failed
/// test leaves nothing running (nor holding port 8080 for the next one).
struct Running {
    stack: &'static Stack,
    stop: Arc<AtomicBool>,
    healthchecks: Option<std::thread::JoinHandle<()>>,
    started: Instant,
}

impl Running {
    /// `down -v`, and nothing of the project may be left.
    fn down(mut self) {
        self.stop_healthchecks();
        compose(self.stack, &["down", "-v", "--remove-orphans"]);
        let left = leftovers(self.stack);
        assert!(left.is_empty(), "left behind by down -v: {left:?}");
        eprintln!(
            "{}: {:.0} s in all",
            self.stack.project,
            self.started.elapsed().as_secs_f64()
        );
    }

    fn stop_healthchecks(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.healthchecks.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if self.healthchecks.is_none() {
            return; // down() ran
        }
        self.stop_healthchecks();
        if std::thread::panicking() {
            // What the engine said is the first thing a failure needs.
            let (_, logs) = try_compose(
                self.stack,
                &["logs", "--no-color", "--tail", "40", "api", "consumer"],
            );
            eprintln!("{}: the last log lines:\n{logs}", self.stack.project);
        }
        // Never panic here: a second panic while unwinding aborts the tests.
        let (ok, text) = try_compose(self.stack, &["down", "-v", "--remove-orphans"]);
        if !ok {
            eprintln!("{}: down -v failed:\n{text}", self.stack.project);
        }
    }
}

/// `up -d` of `services` (their dependencies with them) with the
/// healthchecks running, until the API is ready; a client with a key.
async fn up(stack: &'static Stack, services: &[&str]) -> (ApiClient, Running) {
    // A stack left by an earlier, interrupted run.
    compose(stack, &["down", "-v", "--remove-orphans"]);
    let stop = Arc::new(AtomicBool::new(false));
    let running = Running {
        stack,
        stop: stop.clone(),
        healthchecks: Some(run_healthchecks(stack, stop)),
        started: Instant::now(),
    };
    let mut args = vec!["up", "-d", "--no-build"];
    args.extend(services);
    compose(stack, &args);
    eprintln!(
        "{}: up in {:.0} s",
        stack.project,
        running.started.elapsed().as_secs_f64()
    );
    let admin = ApiClient::new(
        "http://127.0.0.1:8080",
        ADMIN_TOKEN,
        Duration::from_secs(10),
    )
    .unwrap();
    until("the API is ready", Duration::from_secs(120), async || {
        let (status, _) = admin.get("/ready").await.ok()?;
        (status == StatusCode::OK).then_some(())
    })
    .await;
    (admin.with_new_key().await.unwrap(), running)
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs a Docker API and the images: scripts/install-containers, then --ignored"]
async fn the_cluster_override_forms_a_cluster_and_applies_sagas() {
    let stack = &CLUSTER;
    let (api, running) = up(stack, &["api", "consumer"]).await;
    // Transfers among 8 accounts: on a cluster most are between slots (sagas).
    let accounts: Vec<String> = (0..8).map(|i| format!("acct-{i}")).collect();
    for account in &accounts {
        api.set_balance(account, 1_000).await.unwrap();
    }
    let transfers = (0..40).map(|n| {
        let (from, to) = (&accounts[n % 8], &accounts[(n + 3) % 8]);
        (format!("cluster-{n}"), from.as_str(), to.as_str(), 7)
    });
    transfer_and_wait_applied(&api, transfers, Duration::from_secs(120)).await;
    let mut total = 0;
    for account in &accounts {
        total += api.balance(account).await.unwrap().unwrap();
    }
    assert_eq!(total, 8_000, "transfers move money, they do not make it");
    let info = compose(
        stack,
        &["exec", "-T", "redis-1", "redis-cli", "cluster", "info"],
    );
    assert!(
        info.contains("cluster_state:ok") && info.contains("cluster_known_nodes:9"),
        "{info}"
    );
    running.down();
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs a Docker API and the images: scripts/install-containers, then --ignored"]
async fn the_kafka_cluster_override_replicates_and_survives_a_broker_lost() {
    let stack = &THREE_BROKERS;
    let (api, running) = up(stack, &["api", "consumer"]).await;
    let described = compose(
        stack,
        &[
            "exec",
            "-T",
            "kafka",
            "/opt/kafka/bin/kafka-topics.sh",
            "--bootstrap-server",
            "kafka:9092",
            "--describe",
            "--topic",
            "transactions",
        ],
    );
    assert!(
        described.contains("ReplicationFactor: 3") && described.contains("min.insync.replicas=2"),
        "{described}"
    );
    for account in ["alice", "bob"] {
        api.set_balance(account, 1_000).await.unwrap();
    }
    let transfers = (0..20).map(|n| (format!("three-{n}"), "alice", "bob", 10));
    transfer_and_wait_applied(&api, transfers, Duration::from_secs(60)).await;

    // One broker lost: the partitions it led move to in-sync replicas; a
    // 503 meanwhile is retried with the same id, as a client would.
    compose(stack, &["kill", "kafka-3"]);
    let mut ids = Vec::new();
    for n in 0..20 {
        let id = format!("three-after-{n}");
        let body = json!({"id": id, "type": "debit", "account": "bob", "amount": 1});
        until(
            "a debit accepted on two brokers",
            Duration::from_secs(60),
            async || {
                let (status, _) = api.post(&body).await.ok()?;
                matches!(status, StatusCode::ACCEPTED | StatusCode::OK).then_some(())
            },
        )
        .await;
        ids.push(id);
    }
    let settled = api
        .wait_settled(&ids, Duration::from_secs(120))
        .await
        .unwrap();
    assert!(
        settled.values().all(|v| v["status"] == "applied"),
        "{settled:?}"
    );
    assert_eq!(api.balance("alice").await.unwrap(), Some(800));
    assert_eq!(api.balance("bob").await.unwrap(), Some(1_180));
    running.down();
}
