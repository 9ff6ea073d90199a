//! Every scenario file in `scenarios/`, run against real processes with
//! real faults and judged by the invariants. One test binary: Redis and
//! Kafka start once; the scenarios run one at a time, since their faults
//! (a Redis or Kafka restart) hit the shared services.

use std::path::PathBuf;
use std::sync::OnceLock;

use harness::infra::Infra;
use harness::scenario::{self, Scenario};
use rstest::rstest;

/// Scenarios share Redis and Kafka and restart them: one at a time.
fn one_at_a_time() -> &'static tokio::sync::Mutex<()> {
    static LOCK: OnceLock<tokio::sync::Mutex<()>> = OnceLock::new();
    LOCK.get_or_init(|| tokio::sync::Mutex::new(()))
}

/// One case per file of `scenarios/`, found when this test is compiled
/// (`harness/build.rs` rebuilds it when a file is added or removed), so no
/// file can be left out, but the files marked `cluster_only` (excluded by
/// name here, checked by `cluster_only_scenarios_are_skipped_on_one_redis_by_name`)
/// and the `kafka-cluster-*` files (`kafka_cluster_only`), which run on
/// three brokers below.
#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_holds(
    #[files("../scenarios/*.toml")]
    #[exclude("/(reshard|master-lost|kafka-cluster-[a-z-]+)\\.toml$")]
    file: PathBuf,
) {
    run_and_judge(&file, Infra::shared()).await;
}

/// The files that only a Redis Cluster can run (their faults move slots).
/// Named in the test output as skipped on one Redis: this test's name.
const CLUSTER_ONLY: &[&str] = &["master-lost", "reshard"];

#[test]
fn cluster_only_scenarios_are_skipped_on_one_redis_by_name() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../scenarios");
    let mut marked: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "toml"))
        .filter(|path| Scenario::load(path).unwrap().cluster_only)
        .map(|path| path.file_stem().unwrap().to_string_lossy().into_owned())
        .collect();
    marked.sort();
    assert_eq!(
        marked, CLUSTER_ONLY,
        "cluster_only files and the names scenario_holds excludes must agree"
    );
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let named = path
                .file_stem()
                .unwrap()
                .to_string_lossy()
                .starts_with("kafka-cluster-");
            assert_eq!(
                Scenario::load(&path).unwrap().kafka_cluster_only,
                named,
                "{}: kafka_cluster_only files, and only they, are named kafka-cluster-*",
                path.display()
            );
        }
    }
    for name in CLUSTER_ONLY {
        println!("scenarios/{name}.toml: skipped on one Redis (cluster_only); runs in scenario_holds_on_a_cluster");
    }
}

/// Every file again on a local Redis Cluster (3 masters with 2 replicas each, the
/// engine with `--redis-wait-replicas 1`, accounts spread over slots, so
/// most transfers are sagas); a Redis restart there is a kill -9 of a
/// master, its replica promoted, the old master back as a replica. The
/// whole matrix runs in every `cargo test`: a file added later cannot skip
/// the cluster unseen.
#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_holds_on_a_cluster(
    #[files("../scenarios/*.toml")]
    #[exclude("/kafka-cluster-[a-z-]+\\.toml$")]
    file: PathBuf,
) {
    let infra = tokio::task::spawn_blocking(Infra::shared_cluster)
        .await
        .unwrap();
    run_and_judge(&file, infra).await;
}

/// The broker faults (`kafka-cluster-*`: a leader lost, two brokers lost,
/// a broker stalled, a rolling restart) on a local Kafka of three KRaft
/// nodes whose topics keep 3 replicas with `min.insync.replicas=2`, beside
/// one Redis. `TXENGINE_KAFKA_NODES=3` runs every other file on three
/// brokers too (docs/faults.md).
#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_holds_on_three_brokers(
    #[files("../scenarios/kafka-cluster-*.toml")] file: PathBuf,
) {
    let infra = tokio::task::spawn_blocking(Infra::shared_three_brokers)
        .await
        .unwrap();
    run_and_judge(&file, infra).await;
}

/// The same broker faults on the whole stack distributed: the Redis
/// Cluster and three Kafka brokers.
#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_holds_on_a_cluster_and_three_brokers(
    #[files("../scenarios/kafka-cluster-*.toml")] file: PathBuf,
) {
    let infra = tokio::task::spawn_blocking(Infra::shared_cluster_three_brokers)
        .await
        .unwrap();
    run_and_judge(&file, infra).await;
}

/// The bank with every fault, on the whole stack distributed: a Redis
/// master and the busiest Kafka leader killed in the same run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bank_holds_on_a_cluster_and_three_brokers() {
    let infra = tokio::task::spawn_blocking(Infra::shared_cluster_three_brokers)
        .await
        .unwrap();
    let file = concat!(env!("CARGO_MANIFEST_DIR"), "/../scenarios/bank.toml");
    run_and_judge(std::path::Path::new(file), infra).await;
}

async fn run_and_judge(file: &std::path::Path, infra: &'static Infra) {
    let scenario = Scenario::load(file).unwrap();
    let name = &scenario.name;
    let _turn = one_at_a_time().lock().await;
    let outcome = scenario::run(
        &scenario,
        infra,
        std::path::Path::new(env!("CARGO_BIN_EXE_harness")),
    )
    .await
    .unwrap();
    let summary = outcome.summary(name, infra);
    eprintln!("{summary}");
    assert!(
        outcome.passed(),
        "{summary}\nfailed:\n{}",
        outcome.explain()
    );
}
