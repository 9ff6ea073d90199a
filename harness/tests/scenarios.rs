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
/// file can be left out; files marked `cluster_only` are skipped here.
#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_holds(#[files("../scenarios/*.toml")] file: PathBuf) {
    if Scenario::load(&file).unwrap().cluster_only {
        eprintln!(
            "{}: cluster only, see scenario_holds_on_a_cluster",
            file.display()
        );
        return;
    }
    run_and_judge(&file, Infra::shared()).await;
}

/// The scenarios that run on the cluster in every `cargo test`: the ones
/// about the cluster, its sagas and its failover. `TXENGINE_SCENARIOS=all`
/// runs every file on it (the whole matrix; README, "Correctness under faults").
const ON_THE_CLUSTER_BY_DEFAULT: &[&str] = &[
    "race",
    "duplicate-replay",
    "bank",
    "saga-crash",
    "master-failover",
    "reshard",
];

/// The same files on a local Redis Cluster (3 masters + 3 replicas, the
/// engine with `--redis-wait-replicas 1`, accounts spread over slots, so
/// most transfers are sagas); a Redis restart there is a kill -9 of a
/// master, its replica promoted, the old master back as a replica.
#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_holds_on_a_cluster(#[files("../scenarios/*.toml")] file: PathBuf) {
    let name = file.file_stem().unwrap().to_string_lossy().into_owned();
    let all = std::env::var("TXENGINE_SCENARIOS").is_ok_and(|v| v == "all");
    if !all && !ON_THE_CLUSTER_BY_DEFAULT.contains(&name.as_str()) {
        eprintln!("{name}: on the cluster only with TXENGINE_SCENARIOS=all");
        return;
    }
    let infra = tokio::task::spawn_blocking(Infra::shared_cluster)
        .await
        .unwrap();
    run_and_judge(&file, infra).await;
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
    eprintln!(
        "scenario {name} ({:?}): {:.1} s, {} accepted, {} applied, {} rejected, {} sagas",
        infra.redis_topology,
        outcome.elapsed.as_secs_f64(),
        outcome.verdict.accepted,
        outcome.verdict.applied,
        outcome.verdict.rejected,
        outcome.verdict.sagas
    );
    assert!(
        outcome.passed(),
        "scenario {name} ({:?}) failed:\n{}",
        infra.redis_topology,
        outcome.explain()
    );
}
