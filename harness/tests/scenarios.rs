//! Every scenario file in `scenarios/`, run against real processes with
//! real faults and judged by the invariants. One test binary: Redis and
//! Kafka start once; the scenarios run one at a time, since their faults
//! (a Redis or Kafka restart) hit the shared services.

use std::path::PathBuf;
use std::sync::OnceLock;

use harness::infra::Infra;
use harness::scenario::{self, Scenario};
use rstest::rstest;

fn scenarios_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scenarios")
}

/// Scenarios share Redis and Kafka and restart them: one at a time.
fn one_at_a_time() -> &'static tokio::sync::Mutex<()> {
    static LOCK: OnceLock<tokio::sync::Mutex<()>> = OnceLock::new();
    LOCK.get_or_init(|| tokio::sync::Mutex::new(()))
}

const LISTED: [&str; 9] = [
    "race",
    "duplicate-replay",
    "consumer-crash",
    "api-crash",
    "redis-crash",
    "kafka-crash",
    "rebalance",
    "poison",
    "bank",
];

#[rstest]
#[case::race("race")]
#[case::duplicate_replay("duplicate-replay")]
#[case::consumer_crash("consumer-crash")]
#[case::api_crash("api-crash")]
#[case::redis_crash("redis-crash")]
#[case::kafka_crash("kafka-crash")]
#[case::rebalance("rebalance")]
#[case::poison("poison")]
#[case::bank("bank")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_holds(#[case] name: &str) {
    let scenario = Scenario::load(&scenarios_dir().join(format!("{name}.toml"))).unwrap();
    let _turn = one_at_a_time().lock().await;
    let infra = Infra::shared();
    let outcome = scenario::run(
        &scenario,
        infra,
        std::path::Path::new(env!("CARGO_BIN_EXE_harness")),
    )
    .await
    .unwrap();
    eprintln!(
        "scenario {name}: {:.1} s, {} accepted, {} applied, {} rejected",
        outcome.elapsed.as_secs_f64(),
        outcome.verdict.accepted,
        outcome.verdict.applied,
        outcome.verdict.rejected
    );
    assert!(
        outcome.passed(),
        "scenario {name} failed:\n{}",
        outcome.explain()
    );
}

/// No scenario file is forgotten by the cases above, and every file parses.
#[test]
fn every_scenario_file_is_run_and_valid() {
    let mut found: Vec<String> = std::fs::read_dir(scenarios_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .map(|p| {
            Scenario::load(&p).unwrap();
            p.file_stem().unwrap().to_string_lossy().into_owned()
        })
        .collect();
    found.sort();
    let mut listed: Vec<String> = LISTED.iter().map(|s| s.to_string()).collect();
    listed.sort();
    assert_eq!(found, listed, "scenarios/ and the test cases differ");
}
