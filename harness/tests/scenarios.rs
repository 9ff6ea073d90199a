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
/// file can be left out.
#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_holds(#[files("../scenarios/*.toml")] file: PathBuf) {
    let scenario = Scenario::load(&file).unwrap();
    let name = &scenario.name;
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
