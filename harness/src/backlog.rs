//! `harness backlog`: a backlog published straight into a topic, then one
//! consumer process timed until it has applied all of it; the invariants
//! (with the replay of every outcome) checked after.

use std::time::Duration;

use crate::infra::Infra;
use crate::invariants;
use crate::load::{self, LoadProfile};
use crate::report::cpu_time_us;
use crate::stack::{isolated_config, EngineProcess};
use crate::workload::{account_name, Ledger};
use txengine::config::RedisTopology;
use txengine::domain::{AccountId, Balance};
use txengine::store::{Store, StoreSettings};

/// Runs `harness backlog` (see the README's performance section).
pub async fn run_backlog(
    count: usize,
    accounts: usize,
    partitions: i32,
    topology: RedisTopology,
) -> anyhow::Result<()> {
    let infra = Infra::start_chosen(topology).await?;
    let profile = LoadProfile {
        accounts,
        ..LoadProfile::default()
    };
    let mut config = isolated_config(&infra, "backlog");
    config.partitions = partitions;
    txengine::publisher::ensure_topics(
        &infra.kafka_brokers,
        &[(&config.topic, config.partitions), (&config.dlq_topic, 1)],
        config.outcome_ttl_secs * 1000,
    )
    .await?;
    let store = Store::connect(StoreSettings {
        topology: infra.redis_topology,
        url: &infra.redis_url,
        namespace: &config.namespace,
        outcome_ttl_secs: config.outcome_ttl_secs,
        lease_ms: config.lease_ms,
        response_timeout: Duration::from_secs(5),
    })
    .await?;
    let mut ledger = Ledger::default();
    for i in 0..accounts {
        let account = account_name(i);
        store
            .set_balance(
                &AccountId::parse(&account)?,
                Balance::new(profile.start_balance)?,
            )
            .await?;
        ledger.start.insert(account, profile.start_balance);
    }
    eprintln!(
        "publishing a backlog of {count} transactions into {} partitions ...",
        partitions
    );
    ledger.accepted =
        load::publish_backlog(&infra.kafka_brokers, &config.topic, &profile, count).await?;

    eprintln!("starting a consumer (its own process) on the backlog ...");
    config.role = txengine::Role::Consumer;
    let exe = std::env::current_exe()?;
    let started = std::time::Instant::now();
    let consumer = EngineProcess::spawn_consumer(&exe, config.clone()).await?;
    let cpu_before = cpu_time_us(consumer.pid());
    let drained = load::wait_drained(
        &infra.kafka_brokers,
        &config.group,
        &config.topic,
        Duration::from_secs(1800),
    )
    .await?;
    let cpu = cpu_time_us(consumer.pid())
        .zip(cpu_before)
        .and_then(|(after, before)| after.checked_sub(before));
    let elapsed = started.elapsed().max(drained);
    let verdict = invariants::check(
        &infra.redis_url,
        infra.redis_topology,
        &config.namespace,
        &ledger,
    )
    .await?;
    consumer.terminate(Duration::from_secs(10));
    println!("backlog: {count} transactions over {accounts} accounts, {partitions} partitions, one consumer process");
    println!(
        "  drained in        {:.1} s (consumer start, group join and fetches included)",
        elapsed.as_secs_f64()
    );
    println!(
        "  apply rate        {:.0} tx/s",
        count as f64 / elapsed.as_secs_f64()
    );
    match cpu {
        Some(cpu) => println!(
            "  consumer CPU      {:.1} µs per transaction",
            cpu as f64 / count.max(1) as f64
        ),
        None => println!("  consumer CPU      not measured (the process was gone)"),
    }
    println!(
        "  outcomes          {} applied, {} rejected {:?}",
        verdict.applied, verdict.rejected, verdict.rejected_by_reason
    );
    println!(
        "  invariants        {}",
        if verdict.holds() {
            "all hold"
        } else {
            "BROKEN"
        }
    );
    for violation in verdict.violations.iter().take(20) {
        println!("  VIOLATION         {violation}");
    }
    drop(infra);
    anyhow::ensure!(
        verdict.holds(),
        "{} invariant violations",
        verdict.violations.len()
    );
    Ok(())
}
