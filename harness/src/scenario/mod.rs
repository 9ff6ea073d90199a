//! Correctness scenarios: declarative files in `scenarios/` (TOML), run
//! against real processes with real faults, judged by invariants.
//!
//! A run: an API process and `consumers` consumer processes (children, so
//! they can be killed with -9), `accounts` funded through the admin setter,
//! `concurrency` clients sending `count` transactions of the `mix`, retrying
//! each on 409/503/connection errors with the same id as a real client would;
//! `faults` fire when a given share of the transactions has been sent. Then
//! everything is brought back, the group's lag must reach 0, and the
//! invariants of [`crate::invariants`] plus the scenario's `expect` must hold.

mod answers;
mod file;

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use reqwest::StatusCode;
use txengine::Role;

use crate::infra::Infra;
use crate::invariants;
use crate::measure::{published_transactions, topic_size, wait_drained};
use crate::stack::{isolated_config, EngineProcess};
use crate::workload::Ledger;
use answers::{
    answered_within, check_refusals, send_until_answered, Answer, Attempt, ClientResults,
};
pub use answers::{publication_failures, Availability};
pub use file::{Expect, Fault, FaultKind, Scenario};

/// What a run found.
#[derive(Debug)]
pub struct Outcome {
    pub verdict: invariants::Verdict,
    pub elapsed: Duration,
    /// Problems beyond the invariants (expectations, replays, lag).
    pub failures: Vec<String>,
    pub availability: Availability,
}

impl Outcome {
    pub fn passed(&self) -> bool {
        self.verdict.holds() && self.failures.is_empty()
    }

    /// One line: what ran where, how long, what the ledger and the clients saw.
    pub fn summary(&self, name: &str, infra: &Infra) -> String {
        let v = &self.verdict;
        format!(
            "scenario {name} (Redis {:?}, {} Kafka broker{}): {:.1} s, {} accepted, {} applied, {} rejected, {} sagas, holds {:?}; {} answers of 503, longest stretch without an accept {:.1} s",
            infra.redis_topology,
            infra.kafka_nodes,
            if infra.kafka_nodes == 1 { "" } else { "s" },
            self.elapsed.as_secs_f64(),
            v.accepted,
            v.applied,
            v.rejected,
            v.sagas,
            v.hold_ends,
            self.availability.unavailable_answers,
            self.availability.longest_without_accept.as_secs_f64()
        )
    }

    /// Everything that went wrong, for a test failure message.
    pub fn explain(&self) -> String {
        let mut lines: Vec<String> = self.verdict.violations.iter().take(30).cloned().collect();
        lines.extend(self.failures.iter().cloned());
        lines.join("\n")
    }
}

/// The processes of one run.
struct Topology {
    exe: std::path::PathBuf,
    config: txengine::Config,
    api: Option<EngineProcess>,
    consumers: Vec<EngineProcess>,
}

impl Topology {
    async fn restart_api(&mut self) -> anyhow::Result<()> {
        if let Some(api) = self.api.take() {
            api.kill();
        }
        let mut config = self.config.clone();
        config.role = Role::Api;
        self.api = Some(EngineProcess::spawn(&self.exe, config).await?);
        Ok(())
    }

    async fn add_consumer(&mut self) -> anyhow::Result<()> {
        self.consumers
            .push(EngineProcess::spawn_consumer(&self.exe, self.config.clone()).await?);
        Ok(())
    }
}

/// Runs one scenario on `infra`. `exe` is the harness binary (it runs the
/// engine processes). Only a failure to run is an `Err`; broken invariants
/// are in the returned [`Outcome`].
pub async fn run(scenario: &Scenario, infra: &Infra, exe: &Path) -> anyhow::Result<Outcome> {
    let started = Instant::now();
    for fault in &scenario.faults {
        let missing = match fault.kind {
            FaultKind::RestartRedis => {
                infra.redis.is_none() && infra.redis_cluster.is_none() && infra.docker.is_none()
            }
            FaultKind::RestartKafka
            | FaultKind::LoseKafkaBrokers
            | FaultKind::StallKafkaBroker
            | FaultKind::RollingRestartKafka => infra.kafka.is_none(),
            FaultKind::Reshard | FaultKind::LoseRedisMaster => infra.redis_cluster.is_none(),
            _ => false,
        };
        if missing {
            bail!(
                "scenario {} injects {:?}, which needs processes the harness started (TXENGINE_INFRA=local)",
                scenario.name,
                fault.kind
            );
        }
    }
    // Brokers lost for good add up, fault after fault: none may leave too
    // few for a write without a for_ms that brings them back.
    let mut lost_for_good = 0;
    let mut in_order = scenario.faults.clone();
    in_order.sort_by_key(|f| f.at_percent);
    for fault in in_order
        .iter()
        .filter(|f| f.kind == FaultKind::LoseKafkaBrokers)
    {
        if fault.for_ms.is_some() {
            continue;
        }
        lost_for_good += fault.count.unwrap_or(1);
        if without_quorum(infra, lost_for_good) {
            bail!(
                "scenario {}: losing {lost_for_good} of {} Kafka brokers for good leaves too few for a write; give the fault a for_ms",
                scenario.name,
                infra.kafka_nodes
            );
        }
    }
    anyhow::ensure!(
        !scenario.kafka_cluster_only || infra.kafka_nodes >= 3,
        "scenario {} runs on a Kafka of three brokers only (--kafka-nodes 3)",
        scenario.name
    );
    // A broker lost for good by an earlier run that failed comes back.
    tokio::task::block_in_place(|| infra.heal_kafka())?;
    let mut config = isolated_config(infra, &scenario.name);
    config.partitions = scenario.load.partitions;
    config.listen = format!("127.0.0.1:{}", crate::infra::process::free_port()?).parse()?;
    // Short leases, so a killed API's claims free up quickly for retries.
    config.lease_ms = 2_000;
    config.publish_timeout_ms = 3_000;
    let mut topology = Topology {
        exe: exe.to_owned(),
        config: config.clone(),
        api: None,
        consumers: Vec::new(),
    };
    topology.restart_api().await?;
    for _ in 0..scenario.load.consumers {
        topology.add_consumer().await?;
    }
    let admin = topology.api.as_ref().expect("started").api()?;
    let start = admin
        .fund_accounts(scenario.accounts.count, scenario.accounts.balance)
        .await?;
    // The clients' key: every account, at the scenario's rate or far above it.
    let key = match scenario.load.rate_per_s {
        Some(rate) => {
            admin
                .create_key(&["*"], Some(rate), scenario.load.burst)
                .await?
        }
        None => {
            let top = Some(crate::client::HARNESS_KEY_RATE);
            admin.create_key(&["*"], top, top).await?
        }
    };
    let api = admin.with_api_key(&key.secret)?;

    // Clients and faults run side by side.
    let run_tag = format!(
        "{}-{}",
        scenario.name,
        &uuid::Uuid::new_v4().simple().to_string()[..6]
    );
    let sent = Arc::new(AtomicUsize::new(0));
    let results = Arc::new(Mutex::new(ClientResults::default()));
    let attempts: Arc<Mutex<Vec<Attempt>>> = Arc::default();
    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..scenario.load.concurrency {
        let (scenario, api, sent, results, attempts, run_tag) = (
            scenario.clone(),
            api.clone(),
            sent.clone(),
            results.clone(),
            attempts.clone(),
            run_tag.clone(),
        );
        clients.spawn(async move {
            loop {
                let i = sent.fetch_add(1, Ordering::SeqCst);
                if i >= scenario.load.count {
                    return anyhow::Ok(());
                }
                let tx = scenario.transaction(&run_tag, i);
                let verdict = send_until_answered(&api, &tx, &attempts).await?;
                let end = matches!(verdict, Answer::Accepted)
                    .then(|| scenario.end_of_hold(&tx, i))
                    .flatten();
                results.lock().expect("results lock").record(tx, verdict);
                if let Some(end) = end {
                    let verdict = send_until_answered(&api, &end, &attempts).await?;
                    results.lock().expect("results lock").record(end, verdict);
                }
                if scenario.load.pause_ms > 0 {
                    tokio::time::sleep(Duration::from_millis(scenario.load.pause_ms)).await;
                }
            }
        });
    }
    let mut failures = Vec::new();
    let mut revoked_at = None;
    // Stretches when too few brokers were up to take a write.
    let mut without_quorum = Vec::new();
    let mut faults = scenario.faults.clone();
    faults.sort_by_key(|f| f.at_percent);
    for fault in &faults {
        let threshold = scenario.load.count * fault.at_percent as usize / 100;
        while sent.load(Ordering::SeqCst) < threshold {
            // Reap finished clients, so a client that failed ends the run
            // here instead of leaving the threshold unreachable.
            while let Some(joined) = clients.try_join_next() {
                joined.context("a client task failed")??;
            }
            anyhow::ensure!(
                !clients.is_empty(),
                "every client stopped before {}% was sent",
                fault.at_percent
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        eprintln!(
            "  [{}] fault at {}%: {:?}",
            scenario.name, fault.at_percent, fault.kind
        );
        if fault.kind == FaultKind::RevokeKey {
            admin.revoke_key(&key.id).await?;
            revoked_at = Some(Instant::now());
        } else {
            without_quorum.extend(inject(fault, &mut topology, infra).await?);
        }
    }
    while let Some(joined) = clients.join_next().await {
        joined??;
    }
    // Everything back: the API up (it is), at least one consumer.
    if topology.consumers.is_empty() {
        topology.add_consumer().await?;
    }
    let drain = wait_drained(
        &infra.kafka_brokers,
        &config.group,
        &config.topic,
        Duration::from_secs(180),
    )
    .await;
    if let Err(e) = drain {
        failures.push(format!("consumer lag did not return to 0: {e:#}"));
        // What the consumers were doing, to tell a stall from a slow drain.
        for (i, consumer) in topology.consumers.iter().enumerate() {
            failures.push(format!(
                "consumer {i}, last log lines:\n{}",
                consumer.log_tail(15)
            ));
        }
    }

    let results = std::mem::take(&mut *results.lock().expect("results lock"));
    let attempts = std::mem::take(&mut *attempts.lock().expect("attempts lock"));
    let availability = Availability::of(&attempts);
    check_refusals(scenario, &results, revoked_at, &mut failures);
    if scenario.expect.none_accepted_without_quorum {
        if without_quorum.is_empty() {
            failures.push("no fault left too few Kafka brokers for a write".into());
        }
        for &(from, to) in &without_quorum {
            let (accepted, unavailable) = answered_within(&attempts, from, to);
            if accepted > 0 {
                failures.push(format!(
                    "{accepted} requests got 202 while too few brokers were up to take a write"
                ));
            }
            if unavailable == 0 {
                failures.push("no request was refused with 503 while the brokers were down".into());
            }
        }
    }
    if scenario.expect.topic_holds_accepted {
        let published = published_transactions(&infra.kafka_brokers, &config.topic)?;
        let accepted: Vec<&str> = results.accepted.iter().map(|tx| tx.id.as_str()).collect();
        failures.extend(publication_failures(
            &published,
            &accepted,
            &results.refused,
        ));
    }
    let ledger = Ledger {
        start,
        accepted: results.accepted,
        refused: results.refused,
        uncertain: results.uncertain,
    };
    let verdict = invariants::check(infra, &config, &ledger).await?;
    check_expectations(scenario, &verdict, &mut failures);
    if let Some(dlq) = scenario.expect.dlq {
        let found = topic_size(&infra.kafka_brokers, &config.dlq_topic)?;
        if found != dlq as i64 {
            failures.push(format!("DLQ holds {found} records, expected {dlq}"));
        }
    }

    // Reads with a key of its own: the clients' may be revoked.
    let api = admin.with_new_key().await?;
    let before = api.balances(scenario.accounts.count).await?;
    if scenario.expect.duplicate_posts {
        for tx in &ledger.accepted {
            let (status, body) = api.post(&tx.request_body()).await?;
            if status != StatusCode::OK && status != StatusCode::ACCEPTED {
                failures.push(format!(
                    "duplicate POST of {} answered {status} {body}",
                    tx.id
                ));
            }
        }
        if let Err(e) = wait_drained(
            &infra.kafka_brokers,
            &config.group,
            &config.topic,
            Duration::from_secs(60),
        )
        .await
        {
            failures.push(format!("lag after duplicate POSTs: {e:#}"));
        }
    }
    if scenario.expect.replay_topic {
        let mut replay = config.clone();
        replay.group = format!("{}-replay", config.group);
        let consumer = EngineProcess::spawn_consumer(exe, replay.clone()).await?;
        if let Err(e) = wait_drained(
            &infra.kafka_brokers,
            &replay.group,
            &replay.topic,
            Duration::from_secs(120),
        )
        .await
        {
            failures.push(format!("replay group did not drain: {e:#}"));
        }
        consumer.terminate(Duration::from_secs(10));
    }
    let after = api.balances(scenario.accounts.count).await?;
    if (scenario.expect.duplicate_posts || scenario.expect.replay_topic) && before != after {
        let moved: Vec<String> = before
            .iter()
            .filter(|(a, b)| after.get(*a) != Some(b))
            .map(|(a, b)| format!("{a}: {b} -> {:?}", after.get(a)))
            .collect();
        failures.push(format!("replays moved money: {moved:?}"));
    }

    if let Some(api) = topology.api.take() {
        api.terminate(Duration::from_secs(10));
    }
    for consumer in topology.consumers.drain(..) {
        consumer.terminate(Duration::from_secs(10));
    }
    // A master lost for good comes back (as a replica) for the next run,
    // and so do lost brokers.
    tokio::task::block_in_place(|| infra.heal_redis())?;
    tokio::task::block_in_place(|| infra.heal_kafka())?;
    Ok(Outcome {
        verdict,
        elapsed: started.elapsed(),
        failures,
        availability,
    })
}

/// With `down` brokers down, fewer are up than a write needs in sync.
fn without_quorum(infra: &Infra, down: usize) -> bool {
    let (_, min_insync) = infra.topic_replication();
    infra.kafka_nodes.saturating_sub(down) < min_insync as usize
}

/// Injects `fault`; when it left too few brokers for a write, the stretch
/// (from when it took hold to when it was lifted).
async fn inject(
    fault: &Fault,
    topology: &mut Topology,
    infra: &Infra,
) -> anyhow::Result<Option<(Instant, Instant)>> {
    match fault.kind {
        FaultKind::KillConsumer => {
            if !topology.consumers.is_empty() {
                topology.consumers.remove(0).kill();
            }
            topology.add_consumer().await?;
        }
        FaultKind::RestartApi => topology.restart_api().await?,
        FaultKind::RestartRedis => {
            let namespace = topology.config.namespace.clone();
            tokio::task::block_in_place(|| infra.restart_redis(&namespace))?
        }
        FaultKind::RestartKafka => tokio::task::block_in_place(|| infra.restart_kafka())?,
        FaultKind::LoseKafkaBrokers => {
            let count = fault.count.unwrap_or(1);
            let down = tokio::task::block_in_place(|| {
                let mut kafka = infra.local_kafka()?;
                kafka.lose(count)?;
                anyhow::Ok(kafka.down().len())
            })?;
            let took_hold = Instant::now();
            if let Some(ms) = fault.for_ms {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                let lifted = Instant::now();
                tokio::task::block_in_place(|| infra.heal_kafka())?;
                if without_quorum(infra, down) {
                    return Ok(Some((took_hold, lifted)));
                }
            }
        }
        FaultKind::StallKafkaBroker => {
            let pause = Duration::from_millis(fault.for_ms.unwrap_or_default());
            tokio::task::block_in_place(|| infra.local_kafka()?.stall(pause))?
        }
        FaultKind::RollingRestartKafka => {
            tokio::task::block_in_place(|| infra.local_kafka()?.rolling_restart())?
        }
        FaultKind::RevokeKey => unreachable!("the runner revokes the key itself"),
        FaultKind::LoseRedisMaster => {
            let namespace = topology.config.namespace.clone();
            tokio::task::block_in_place(|| infra.lose_redis_master(&namespace))?
        }
        FaultKind::Reshard => {
            let namespace = topology.config.namespace.clone();
            let slots = fault.count.unwrap_or(2000) as u32;
            tokio::task::block_in_place(|| infra.reshard(&namespace, slots))?
        }
        FaultKind::AddConsumer => topology.add_consumer().await?,
        FaultKind::RemoveConsumer => {
            if topology.consumers.len() > 1 {
                topology
                    .consumers
                    .remove(0)
                    .terminate(Duration::from_secs(15));
            }
        }
        FaultKind::Poison => {
            let count = fault.count.unwrap_or(0);
            let producer: FutureProducer = ClientConfig::new()
                .set("bootstrap.servers", &infra.kafka_brokers)
                .create()?;
            for i in 0..count {
                let payload = format!("poison record {i}: not a transaction");
                producer
                    .send(
                        FutureRecord::to(&topology.config.topic)
                            .key("poison")
                            .payload(&payload),
                        Duration::from_secs(10),
                    )
                    .await
                    .map_err(|(e, _)| e)?;
            }
        }
    }
    Ok(None)
}

fn check_expectations(
    scenario: &Scenario,
    verdict: &invariants::Verdict,
    failures: &mut Vec<String>,
) {
    if let Some(applied) = scenario.expect.applied {
        if verdict.applied != applied {
            failures.push(format!(
                "{} applied, expected exactly {applied}",
                verdict.applied
            ));
        }
    }
    if let Some(rejected) = scenario.expect.rejected {
        if verdict.rejected != rejected {
            failures.push(format!(
                "{} rejected, expected exactly {rejected}",
                verdict.rejected
            ));
        }
    }
    let only_transfers = scenario.mix.transfer == 100;
    if only_transfers && verdict.start_total != verdict.end_total {
        failures.push(format!(
            "transfers only, yet the total moved from {} to {}",
            verdict.start_total, verdict.end_total
        ));
    }
}
