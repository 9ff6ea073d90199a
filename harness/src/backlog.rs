//! `harness backlog`: a backlog published straight into a topic, then one
//! consumer process timed until it has applied all of it; the invariants
//! (with the replay of every outcome and saga step) checked after.
//!
//! `--compare-topologies` does it three times in one run, with the same
//! count, accounts and partitions: one Redis; a Redis Cluster where
//! transfers go between slots (sagas); the cluster with every transfer
//! within one slot. It reports CPU per transaction per process (the
//! consumer, Redis summed over its nodes, Kafka) and writes
//! `reports/<time>-backlog-topologies.{json,md}`.

use std::time::Duration;

use serde::Serialize;
use txengine::config::RedisTopology;
use txengine::domain::{AccountId, Balance};
use txengine::store::{Store, StoreSettings};

use crate::infra::Infra;
use crate::invariants;
use crate::load::{self, LoadProfile};
use crate::report::{cpu_time_sum_us, cpu_time_us, file_stamp, Machine};
use crate::stack::{isolated_config, EngineProcess};
use crate::workload::{account_name, partners, Ledger, Transfers};

/// What one backlog run measured.
#[derive(Debug, Clone, Serialize)]
pub struct BacklogRun {
    pub topology: RedisTopology,
    pub transfers: Transfers,
    pub count: usize,
    pub drained_s: f64,
    pub apply_rate_tx_per_s: f64,
    /// CPU per transaction of the backlog, µs; null when a process was gone.
    pub consumer_cpu_us: Option<f64>,
    /// Summed over every Redis process (6 on the cluster: masters and replicas).
    pub redis_cpu_us: Option<f64>,
    pub redis_processes: usize,
    pub kafka_cpu_us: Option<f64>,
    pub applied: usize,
    pub rejected: usize,
    pub sagas: usize,
    pub invariants_hold: bool,
    /// `harness backlog` on one topology: the apply script called directly
    /// by 200 goose users (one transaction per call, unpipelined) right
    /// after the drain, on the same Redis; null with --compare-topologies.
    pub direct_script: Option<crate::report::BareRun>,
    /// `apply_rate_tx_per_s` / the direct script's calls per second.
    pub apply_rate_vs_direct_script: Option<f64>,
}

/// Runs `harness backlog` on one topology and prints what it measured.
pub async fn run_backlog(
    count: usize,
    accounts: usize,
    partitions: i32,
    topology: RedisTopology,
    kafka_nodes: usize,
) -> anyhow::Result<()> {
    let started_at = crate::bench::time_now_rfc3339();
    let infra = Infra::start_chosen(topology, kafka_nodes).await?;
    let mut run = backlog_once(&infra, count, accounts, partitions, Transfers::AsDrawn).await?;
    // The bare limit of the same Redis, same machine, same run: what the
    // consumer's batching and pipelining buy over calling the script.
    let direct = LoadProfile {
        accounts,
        seconds: 10,
        ..LoadProfile::default()
    };
    let direct = crate::bench::measure_redis_script(&infra, &direct).await?;
    run.apply_rate_vs_direct_script = Some(run.apply_rate_tx_per_s / direct.result.rps);
    run.direct_script = Some(direct);
    drop(infra);
    print_run(&run, accounts, partitions);
    let command = format!(
        "cargo run --release -p harness -- backlog --count {count} --accounts {accounts} --partitions {partitions} --redis-topology {}",
        topology.name()
    );
    let report = serde_json::json!({
        "kind": "backlog",
        "started_at": started_at,
        "command": command,
        "machine": Machine::describe(),
        "run": run,
    });
    let stamp = file_stamp(&started_at);
    let path = std::path::Path::new("reports").join(format!("{stamp}-backlog.json"));
    std::fs::create_dir_all("reports")?;
    std::fs::write(&path, serde_json::to_string_pretty(&report)? + "\n")?;
    eprintln!("report: {}", path.display());
    anyhow::ensure!(run.invariants_hold, "invariant violations (listed above)");
    Ok(())
}

/// Runs the three backlogs of `--compare-topologies`, one after the other
/// in this process, prints them side by side and writes the report.
pub async fn compare_topologies(
    count: usize,
    accounts: usize,
    partitions: i32,
    kafka_nodes: usize,
) -> anyhow::Result<()> {
    let started_at = crate::bench::time_now_rfc3339();
    let mut runs = Vec::new();
    for (topology, transfers) in [
        (RedisTopology::Single, Transfers::AsDrawn),
        (RedisTopology::Cluster, Transfers::AsDrawn),
        (RedisTopology::Cluster, Transfers::WithinSlot),
    ] {
        eprintln!("== backlog on {topology:?}, transfers {transfers:?}");
        let infra = Infra::start_chosen(topology, kafka_nodes).await?;
        let run = backlog_once(&infra, count, accounts, partitions, transfers).await?;
        drop(infra);
        print_run(&run, accounts, partitions);
        runs.push(run);
    }
    let markdown = comparison_markdown(&runs, accounts, partitions);
    println!("\n{markdown}");
    let dir = std::path::Path::new("reports");
    std::fs::create_dir_all(dir)?;
    let stamp = file_stamp(&started_at);
    let stem = format!("{stamp}-backlog-topologies");
    let report = serde_json::json!({
        "kind": "backlog-topologies",
        "started_at": started_at,
        "command": format!("cargo run --release -p harness -- backlog --compare-topologies --count {count} --accounts {accounts} --partitions {partitions}"),
        "machine": Machine::describe(),
        "runs": runs,
    });
    std::fs::write(
        dir.join(format!("{stem}.json")),
        serde_json::to_string_pretty(&report)? + "\n",
    )?;
    std::fs::write(dir.join(format!("{stem}.md")), markdown)?;
    eprintln!("report: reports/{stem}.{{json,md}}");
    anyhow::ensure!(
        runs.iter().all(|r| r.invariants_hold),
        "invariant violations (listed above)"
    );
    Ok(())
}

/// One backlog: published straight into a topic of its own, drained by
/// one consumer process, timed, its CPU per transaction read, judged by
/// the invariants. Kept whole: each step is a line or two of the one
/// measurement, in the order it must happen.
async fn backlog_once(
    infra: &Infra,
    count: usize,
    accounts: usize,
    partitions: i32,
    transfers: Transfers,
) -> anyhow::Result<BacklogRun> {
    let mut config = isolated_config(infra, "backlog");
    config.partitions = partitions;
    let layout = txengine::store::Layout::new(&config.namespace, infra.redis_topology);
    let profile = LoadProfile {
        accounts,
        partners: (transfers == Transfers::WithinSlot).then(|| partners(&layout, accounts)),
        ..LoadProfile::default()
    };
    txengine::topics::ensure_topics(&config.topic_settings()).await?;
    let mut ledger = Ledger {
        start: fund_directly(infra, &config, &profile).await?,
        ..Ledger::default()
    };
    eprintln!("publishing a backlog of {count} transactions into {partitions} partitions ...");
    ledger.accepted =
        load::publish_backlog(&infra.kafka_brokers, &config.topic, &profile, count).await?;

    eprintln!("starting a consumer (its own process) on the backlog ...");
    config.role = txengine::Role::Consumer;
    let exe = std::env::current_exe()?;
    let (redis_pids, kafka_pids) = infra.pids();
    let started = std::time::Instant::now();
    let consumer = EngineProcess::spawn_consumer(&exe, config.clone()).await?;
    let cpu_now = || {
        [
            cpu_time_us(consumer.pid()),
            cpu_time_sum_us(&redis_pids),
            cpu_time_sum_us(&kafka_pids),
        ]
    };
    let cpu_before = cpu_now();
    let drained = crate::measure::wait_drained(
        &infra.kafka_brokers,
        &config.group,
        &config.topic,
        Duration::from_secs(1800),
    )
    .await?;
    let cpu_after = cpu_now();
    let elapsed = started.elapsed().max(drained);
    let per_tx = |i: usize| {
        let used = cpu_after[i]?.checked_sub(cpu_before[i]?)?;
        Some(used as f64 / count.max(1) as f64)
    };
    let verdict = invariants::check(infra, &config, &ledger).await?;
    consumer.terminate(Duration::from_secs(10));
    for violation in verdict.violations.iter().take(20) {
        println!("  VIOLATION         {violation}");
    }
    Ok(BacklogRun {
        topology: infra.redis_topology,
        transfers,
        count,
        drained_s: elapsed.as_secs_f64(),
        apply_rate_tx_per_s: count as f64 / elapsed.as_secs_f64(),
        consumer_cpu_us: per_tx(0),
        redis_cpu_us: per_tx(1),
        redis_processes: redis_pids.len(),
        kafka_cpu_us: per_tx(2),
        applied: verdict.applied,
        rejected: verdict.rejected,
        sagas: verdict.sagas,
        invariants_hold: verdict.holds(),
        direct_script: None,
        apply_rate_vs_direct_script: None,
    })
}

/// Sets the profile's accounts (and partners) straight in Redis, no API
/// in between: the start balances of the ledger.
async fn fund_directly(
    infra: &Infra,
    config: &txengine::config::Config,
    profile: &LoadProfile,
) -> anyhow::Result<std::collections::HashMap<String, u64>> {
    let store = Store::connect(StoreSettings {
        topology: infra.redis_topology,
        url: &infra.redis_url,
        namespace: &config.namespace,
        outcome_ttl_secs: config.outcome_ttl_secs,
        history_keep_secs: config.history_retention_secs(),
        lease_ms: config.lease_ms,
        response_timeout: Duration::from_secs(5),
        default_asset: Default::default(),
    })
    .await?;
    let mut funded: Vec<String> = (0..profile.accounts).map(account_name).collect();
    if let Some(partners) = &profile.partners {
        funded.extend(partners.values().cloned());
    }
    let mut start = std::collections::HashMap::new();
    for account in funded {
        store
            .set_balance(
                &AccountId::parse(&account)?,
                Balance::new(profile.start_balance as i64)?,
            )
            .await?
            .ensure_set()?;
        start.insert(account, profile.start_balance);
    }
    Ok(start)
}

fn micros(value: Option<f64>) -> String {
    value.map_or_else(|| "not measured".to_owned(), |v| format!("{v:.1} µs"))
}

fn print_run(run: &BacklogRun, accounts: usize, partitions: i32) {
    println!(
        "backlog: {} transactions over {accounts} accounts, {partitions} partitions, one consumer process, {:?} Redis, transfers {:?}",
        run.count, run.topology, run.transfers
    );
    println!(
        "  drained in        {:.1} s (consumer start, group join and fetches included)",
        run.drained_s
    );
    println!("  apply rate        {:.0} tx/s", run.apply_rate_tx_per_s);
    if let (Some(direct), Some(ratio)) = (&run.direct_script, run.apply_rate_vs_direct_script) {
        println!(
            "  script directly   {:.0} calls/s ({} users, one transaction per call, Redis {} per call); backlog / direct: {ratio:.2}",
            direct.result.rps,
            direct.result.users,
            micros(direct.cpu_per_request.redis_us)
        );
    }
    println!(
        "  CPU per tx        consumer {}, Redis {} ({} processes), Kafka {}",
        micros(run.consumer_cpu_us),
        micros(run.redis_cpu_us),
        run.redis_processes,
        micros(run.kafka_cpu_us)
    );
    println!(
        "  outcomes          {} applied, {} rejected, {} sagas",
        run.applied, run.rejected, run.sagas
    );
    println!(
        "  invariants        {}",
        if run.invariants_hold {
            "all hold"
        } else {
            "BROKEN"
        }
    );
}

/// The side-by-side table, with what the measured CPU implies for more
/// Redis nodes.
fn comparison_markdown(runs: &[BacklogRun], accounts: usize, partitions: i32) -> String {
    let mut md = format!(
        "# Backlog on one Redis and on a Redis Cluster\n\n{} transactions over {accounts} accounts \
         (60% transfers, 25% debits, 15% credits), {partitions} partitions, one consumer process, \
         release build, one after the other in one run. CPU is per transaction of the backlog.\n\n\
         | Redis | transfers | apply rate | consumer CPU | Redis CPU (processes) | Kafka CPU | sagas | invariants |\n\
         | --- | --- | ---: | ---: | ---: | ---: | ---: | --- |\n",
        runs.first().map_or(0, |r| r.count)
    );
    for r in runs {
        md.push_str(&format!(
            "| {:?} | {:?} | {:.0} tx/s | {} | {} ({}) | {} | {} | {} |\n",
            r.topology,
            r.transfers,
            r.apply_rate_tx_per_s,
            micros(r.consumer_cpu_us),
            micros(r.redis_cpu_us),
            r.redis_processes,
            micros(r.kafka_cpu_us),
            r.sagas,
            if r.invariants_hold { "hold" } else { "BROKEN" }
        ));
    }
    md.push_str(
        "\nWhat the CPU implies: with Redis CPU T µs per transaction summed over all of the \
         cluster's processes, and transactions spread evenly over the masters, a master and its \
         replica spend T µs on each transaction they handle (a saga's three steps included). \
         With each pair on a core of its own, Redis alone caps the apply rate near \
         N x 1,000,000 / T for N masters:\n\n",
    );
    for r in runs.iter().filter(|r| r.topology == RedisTopology::Cluster) {
        if let (Some(redis), Some(consumer)) = (r.redis_cpu_us, r.consumer_cpu_us) {
            md.push_str(&format!(
                "- {:?} transfers: T = {redis:.1} µs: 3 / 6 / 12 masters cap near {:.0} / {:.0} / {:.0} tx/s; \
                 a consumer on one core caps near {:.0} tx/s (consumers scale with partitions).\n",
                r.transfers,
                3.0 * 1e6 / redis,
                6.0 * 1e6 / redis,
                12.0 * 1e6 / redis,
                1e6 / consumer
            ));
        }
    }
    md
}
