//! End-to-end tests of the engine against real Redis and real Kafka.
//!
//! One test binary, so Kafka and Redis start once ([`Infra::shared`]); each
//! test gets its own engine with its own topics, group and key namespace.

mod accounts;
mod api;
mod apply;
mod batch;
mod clients;
mod cluster;
mod console;
mod contract;
mod differential;
mod events;
mod history;
mod holds;
mod keys;
mod limits;
mod memory;
mod migrate;
mod observability;
mod pipeline;
mod postings;
mod saga;

use std::sync::Once;

use std::time::Duration;

use harness::infra::Infra;
use harness::stack::Stack;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use reqwest::StatusCode;
use txengine::store::{Store, StoreSettings};

/// Where `scripts/install-deps` keeps the test tools it installs (the
/// venvs of schemathesis and of the Python client's suite):
/// `$XDG_DATA_HOME/txengine`, or `~/.local/share/txengine`.
pub fn installed_tools_dir() -> Option<std::path::PathBuf> {
    let data_home = std::env::var_os("XDG_DATA_HOME")
        .map(std::path::PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|home| std::path::Path::new(&home).join(".local/share"))
        })?;
    Some(data_home.join("txengine"))
}

/// Runs a suite of another language against a live engine: `program` with
/// `args` in `dir`, with `env`. Fails when the suite fails or skips any test
/// (node --test's `# skipped N`, pytest's `N skipped`), and shows its output.
pub fn run_suite(
    suite: &str,
    dir: &std::path::Path,
    program: &std::path::Path,
    args: &[&str],
    env: &[(&str, String)],
) -> anyhow::Result<()> {
    use anyhow::Context;
    let started = std::time::Instant::now();
    let output = std::process::Command::new(program)
        .args(args)
        .current_dir(dir)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .with_context(|| {
            format!(
                "{suite} suite: {} did not start; run scripts/install-deps",
                program.display()
            )
        })?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    anyhow::ensure!(
        output.status.success(),
        "{suite} suite failed ({}):\n{text}",
        output.status
    );
    let skipped = text
        .lines()
        .any(|line| match line.strip_prefix("# skipped ") {
            Some(count) => count != "0",
            None => line.contains(" passed") && line.contains(" skipped"),
        });
    anyhow::ensure!(!skipped, "{suite} suite skipped tests:\n{text}");
    eprintln!(
        "{suite} suite: passed in {:.1} s\n{}",
        started.elapsed().as_secs_f64(),
        text.lines().rev().take(3).collect::<Vec<_>>().join("\n")
    );
    Ok(())
}

/// The shared infra, plus test logging (RUST_LOG) set up once.
pub fn infra() -> &'static Infra {
    static LOGGING: Once = Once::new();
    LOGGING.call_once(|| {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    });
    Infra::shared()
}

/// The shared infra of a topology: one Redis, or the Redis Cluster.
pub fn infra_of(topology: txengine::store::RedisTopology) -> &'static Infra {
    match topology {
        txengine::store::RedisTopology::Single => infra(),
        txengine::store::RedisTopology::Cluster => Infra::shared_cluster(),
    }
}

/// Each item's answer of a store call that answers per item, every one
/// expected to be Ok (the test fails naming the first error).
pub fn each_ok<T>(answers: Vec<Result<T, txengine::store::StoreError>>) -> Vec<T> {
    answers.into_iter().map(Result::unwrap).collect()
}

/// Claims `items` (each transaction under its token) as one request
/// without a rate limit: one answer per item.
pub async fn claim_unlimited(
    store: &Store,
    items: &[(txengine::domain::Transaction, String)],
) -> Vec<Result<txengine::store::Claim, txengine::store::StoreError>> {
    let request = txengine::store::ClaimRequest { limit: None, items };
    let mut answers = store.claim_requests(&[request]).await;
    answers.pop().expect("one answer per request").claims
}

/// Admission as tests drive it directly, around `store` and `publisher`:
/// no replicas waited for, no backlog bound, rate limits enforced.
pub fn admission_of(
    store: Store,
    publisher: txengine::publisher::Publisher,
    max_background_releases: usize,
) -> txengine::admission::Admission {
    use txengine::admission::{Admission, AdmissionSettings, ClaimReplication, HoldTimeouts};
    let settings = AdmissionSettings {
        replication: ClaimReplication::NONE,
        hold_timeouts: HoldTimeouts {
            default_s: 60,
            max_s: 60,
        },
        enforce_rate_limits: true,
        max_background_releases,
    };
    Admission::new(
        store,
        publisher,
        txengine::backlog::Backlog::unwatched(),
        settings,
    )
}

/// A key that may touch every account, without a rate limit.
pub fn any_account_key() -> std::sync::Arc<txengine::keys::ApiKey> {
    let (id, _) = txengine::keys::generate();
    std::sync::Arc::new(txengine::keys::ApiKey {
        id,
        secret_hash: String::new(),
        scope: txengine::keys::Scope::parse(&["*"]).unwrap(),
        limit: None,
        created_at_ms: 0,
    })
}

/// A store of its own on `namespace` of the Redis at `url`.
pub async fn isolated_store(namespace: &str, url: &str) -> Store {
    store_of(txengine::config::RedisTopology::Single, namespace, url).await
}

/// A store of its own on `namespace` of the `infra`'s Redis (one, or a
/// cluster).
pub async fn isolated_store_on(infra: &Infra, namespace: &str) -> Store {
    store_of(infra.redis_topology, namespace, &infra.redis_url).await
}

async fn store_of(topology: txengine::config::RedisTopology, namespace: &str, url: &str) -> Store {
    Store::connect(StoreSettings {
        topology,
        url,
        namespace,
        outcome_ttl_secs: 60,
        history_keep_secs: 60,
        lease_ms: 30_000,
        // As patient as the others' stores: on a busy machine one fsync of
        // the shared Redis can take longer than half a second (a CI run
        // failed on a 500 ms timeout). Tests of a timeout set their own.
        response_timeout: Duration::from_secs(5),
        default_asset: Default::default(),
    })
    .await
    .unwrap()
}

/// Makes `account`'s record hold a list, so the apply script fails on
/// it (WRONGTYPE), and posts debit `id` on it: a record Redis refuses.
pub async fn post_on_broken_account(s: &Stack, id: &str, account: &str) {
    redis_command(s, redis::cmd("RPUSH").arg(account_key(s, account)).arg("x")).await;
    let (status, body) = s
        .post(&serde_json::json!({"id": id, "account": account, "amount": 1}))
        .await
        .unwrap();
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
}

/// Publishes `payload` keyed by `key` into the stack's topic, as a foreign
/// producer would (a poison record, a newer build's record, a leak); says
/// where it landed (partition, offset).
pub async fn publish_raw(s: &Stack, key: &str, payload: &[u8]) -> (i32, i64) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &s.config.kafka_brokers)
        .create()
        .unwrap();
    let delivery = producer
        .send(
            FutureRecord::to(&s.config.topic).key(key).payload(payload),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    (delivery.partition, delivery.offset)
}

/// Replaces the broken record of `account` by a real balance.
pub async fn repair_account(s: &Stack, account: &str, balance: u64) {
    redis_command(s, redis::cmd("DEL").arg(account_key(s, account))).await;
    s.set_balance(account, balance).await.unwrap();
}

fn account_key(s: &Stack, account: &str) -> String {
    txengine::store::Layout::new(&s.config.namespace, s.config.redis_topology).account(account)
}

async fn redis_command(s: &Stack, command: &redis::Cmd) {
    let client = redis::Client::open(s.config.redis_url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = command.query_async(&mut conn).await.unwrap();
}
