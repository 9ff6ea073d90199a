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
/// name here, checked by `cluster_only_scenarios_are_skipped_on_one_redis_by_name`).
#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_holds(
    #[files("../scenarios/*.toml")]
    #[exclude("/(reshard|master-lost)\\.toml$")]
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
async fn scenario_holds_on_a_cluster(#[files("../scenarios/*.toml")] file: PathBuf) {
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
        "scenario {name} ({:?}): {:.1} s, {} accepted, {} applied, {} rejected, {} sagas, holds {:?}",
        infra.redis_topology,
        outcome.elapsed.as_secs_f64(),
        outcome.verdict.accepted,
        outcome.verdict.applied,
        outcome.verdict.rejected,
        outcome.verdict.sagas,
        outcome.verdict.hold_ends
    );
    assert!(
        outcome.passed(),
        "scenario {name} ({:?}) failed:\n{}",
        infra.redis_topology,
        outcome.explain()
    );
}
