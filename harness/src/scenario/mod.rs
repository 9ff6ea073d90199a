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
mod faults;
mod file;
mod judge;

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use txengine::Role;

use crate::client::{ApiClient, NewKey};
use crate::infra::Infra;
use crate::invariants;
use crate::measure::wait_drained;
use crate::stack::{isolated_config, EngineProcess};
use crate::workload::Ledger;
use answers::{check_refusals, send_until_answered, Answer, Attempt, ClientResults};
pub use answers::{publication_failures, Availability};
use faults::{check_faults_fit, inject};
pub use file::{Expect, Fault, FaultKind, Scenario};
use judge::{check_none_accepted_without_quorum, check_replays, judge_ledger};

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
    /// Whether the run holds: the invariants and every other check.
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
    /// Kills the API process (if any) and starts a new one on the same
    /// port, as an operator's restart after a crash would.
    async fn restart_api(&mut self) -> anyhow::Result<()> {
        if let Some(api) = self.api.take() {
            api.kill();
        }
        let mut config = self.config.clone();
        config.role = Role::Api;
        self.api = Some(EngineProcess::spawn(&self.exe, config).await?);
        Ok(())
    }

    /// One more consumer process in the group, which rebalances it.
    async fn add_consumer(&mut self) -> anyhow::Result<()> {
        self.consumers
            .push(EngineProcess::spawn_consumer(&self.exe, self.config.clone()).await?);
        Ok(())
    }
}

/// How the run reaches the API: the admin, the clients' key and a client
/// sending it, and the balances the accounts started with (for the ledger).
struct Access {
    admin: ApiClient,
    key: NewKey,
    api: ApiClient,
    /// The accounts as made: their start balances, assets and bounds.
    opened: Ledger,
}

/// The clients sending the scenario's transactions, and what they share.
struct ClientLoad {
    /// Transactions taken so far: each client takes the next index.
    sent: Arc<AtomicUsize>,
    results: Arc<Mutex<ClientResults>>,
    attempts: Arc<Mutex<Vec<Attempt>>>,
    clients: tokio::task::JoinSet<anyhow::Result<()>>,
}

impl ClientLoad {
    /// Waits for every client to finish, so that a client's error ends the
    /// run before it is judged.
    async fn wait_for_clients(&mut self) -> anyhow::Result<()> {
        while let Some(joined) = self.clients.join_next().await {
            joined??;
        }
        Ok(())
    }

    /// What the clients were answered and every attempt, taken out once
    /// they are done, for the judging.
    fn take_answers(&self) -> (ClientResults, Vec<Attempt>) {
        let results = std::mem::take(&mut *self.results.lock().expect("results lock"));
        let attempts = std::mem::take(&mut *self.attempts.lock().expect("attempts lock"));
        (results, attempts)
    }
}

/// What the faults left for the judging.
#[derive(Default)]
struct FaultTimeline {
    /// When the clients' key was revoked.
    revoked_at: Option<Instant>,
    /// Stretches when too few brokers were up to take a write.
    without_quorum: Vec<(Instant, Instant)>,
}

/// Runs one scenario on `infra`. `exe` is the harness binary (it runs the
/// engine processes). Only a failure to run is an `Err`; broken invariants
/// are in the returned [`Outcome`].
pub async fn run(scenario: &Scenario, infra: &Infra, exe: &Path) -> anyhow::Result<Outcome> {
    let started = Instant::now();
    check_faults_fit(scenario, infra)?;
    // A broker lost for good by an earlier run that failed comes back.
    tokio::task::block_in_place(|| infra.heal_kafka())?;
    let mut topology = start_engine(scenario, infra, exe).await?;
    let access = open_access(scenario, &topology).await?;

    // Clients and faults run side by side.
    let mut load = start_clients(scenario, &access.api);
    let timeline = run_fault_timeline(scenario, infra, &mut topology, &access, &mut load).await?;
    load.wait_for_clients().await?;
    let mut failures = Vec::new();
    drain_after_faults(infra, &mut topology, &mut failures).await?;

    let (results, attempts) = load.take_answers();
    let availability = Availability::of(&attempts);
    check_refusals(scenario, &results, timeline.revoked_at, &mut failures);
    if scenario.expect.none_accepted_without_quorum {
        check_none_accepted_without_quorum(&attempts, &timeline.without_quorum, &mut failures);
    }
    let (verdict, ledger) = judge_ledger(
        scenario,
        infra,
        &topology.config,
        results,
        access.opened,
        &mut failures,
    )
    .await?;
    check_replays(
        scenario,
        infra,
        &topology,
        &access.admin,
        &ledger,
        &mut failures,
    )
    .await?;

    stop_and_heal(&mut topology, infra)?;
    Ok(Outcome {
        verdict,
        elapsed: started.elapsed(),
        failures,
        availability,
    })
}

/// Starts the engine of this run: a namespace, topic and port of its own,
/// short leases so that a killed API's claims free up quickly for retries,
/// an API process and `consumers` consumer processes.
async fn start_engine(scenario: &Scenario, infra: &Infra, exe: &Path) -> anyhow::Result<Topology> {
    let mut config = isolated_config(infra, &scenario.name);
    config.partitions = scenario.load.partitions;
    config.listen = format!("127.0.0.1:{}", crate::infra::process::free_port()?).parse()?;
    // Short leases, so a killed API's claims free up quickly for retries.
    config.lease_ms = 2_000;
    config.publish_timeout_ms = 3_000;
    let mut topology = Topology {
        exe: exe.to_owned(),
        config,
        api: None,
        consumers: Vec::new(),
    };
    topology.restart_api().await?;
    for _ in 0..scenario.load.consumers {
        topology.add_consumer().await?;
    }
    Ok(topology)
}

/// Makes the accounts (each with its asset and bounds, funded through the
/// admin setter) and the clients' key,
/// so that the clients send with a key the scenario may limit or revoke.
async fn open_access(scenario: &Scenario, topology: &Topology) -> anyhow::Result<Access> {
    let admin = topology.api.as_ref().expect("started").api()?;
    let opened = admin
        .open_accounts(scenario.accounts.count, scenario.accounts.balance)
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
    Ok(Access {
        admin,
        key,
        api,
        opened,
    })
}

/// Starts `concurrency` clients sharing the scenario's `count` transactions,
/// their ids tagged with this run so that they never clash with another's.
fn start_clients(scenario: &Scenario, api: &ApiClient) -> ClientLoad {
    let run_tag = format!(
        "{}-{}",
        scenario.name,
        &uuid::Uuid::new_v4().simple().to_string()[..6]
    );
    let mut load = ClientLoad {
        sent: Arc::new(AtomicUsize::new(0)),
        results: Arc::new(Mutex::new(ClientResults::default())),
        attempts: Arc::default(),
        clients: tokio::task::JoinSet::new(),
    };
    for _ in 0..scenario.load.concurrency {
        load.clients.spawn(send_transactions(
            scenario.clone(),
            api.clone(),
            load.sent.clone(),
            load.results.clone(),
            load.attempts.clone(),
            run_tag.clone(),
        ));
    }
    load
}

/// One client: takes the next transaction until `count` are taken, sends
/// each (and, once accepted, the end of its hold) until it is answered, as
/// a careful client would, and records the answers.
async fn send_transactions(
    scenario: Scenario,
    api: ApiClient,
    sent: Arc<AtomicUsize>,
    results: Arc<Mutex<ClientResults>>,
    attempts: Arc<Mutex<Vec<Attempt>>>,
    run_tag: String,
) -> anyhow::Result<()> {
    loop {
        let i = sent.fetch_add(1, Ordering::SeqCst);
        if i >= scenario.load.count {
            return Ok(());
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
}

/// Fires the faults in the order of their `at_percent`, each once that
/// share of the transactions has been sent, while the clients go on; the
/// revocation of the clients' key is the runner's own, the rest [`inject`].
async fn run_fault_timeline(
    scenario: &Scenario,
    infra: &Infra,
    topology: &mut Topology,
    access: &Access,
    load: &mut ClientLoad,
) -> anyhow::Result<FaultTimeline> {
    let mut timeline = FaultTimeline::default();
    let mut faults = scenario.faults.clone();
    faults.sort_by_key(|f| f.at_percent);
    for fault in &faults {
        wait_until_sent(scenario, fault, load).await?;
        eprintln!(
            "  [{}] fault at {}%: {:?}",
            scenario.name, fault.at_percent, fault.kind
        );
        if fault.kind == FaultKind::RevokeKey {
            access.admin.revoke_key(&access.key.id).await?;
            timeline.revoked_at = Some(Instant::now());
        } else {
            timeline
                .without_quorum
                .extend(inject(fault, topology, infra).await?);
        }
    }
    Ok(timeline)
}

/// Waits until `fault`'s share of the transactions has been sent, so that
/// it fires in the middle of the load and not before or after it.
async fn wait_until_sent(
    scenario: &Scenario,
    fault: &Fault,
    load: &mut ClientLoad,
) -> anyhow::Result<()> {
    let threshold = scenario.load.count * fault.at_percent as usize / 100;
    while load.sent.load(Ordering::SeqCst) < threshold {
        // Reap finished clients, so a client that failed ends the run
        // here instead of leaving the threshold unreachable.
        while let Some(joined) = load.clients.try_join_next() {
            joined.context("a client task failed")??;
        }
        anyhow::ensure!(
            !load.clients.is_empty(),
            "every client stopped before {}% was sent",
            fault.at_percent
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}

/// Brings everything back and waits for the group's lag to reach 0: the
/// ledger can only be judged once every accepted transaction was consumed.
async fn drain_after_faults(
    infra: &Infra,
    topology: &mut Topology,
    failures: &mut Vec<String>,
) -> anyhow::Result<()> {
    // Everything back: the API up (it is), at least one consumer.
    if topology.consumers.is_empty() {
        topology.add_consumer().await?;
    }
    let drain = wait_drained(
        &infra.kafka_brokers,
        &topology.config.group,
        &topology.config.topic,
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
    Ok(())
}

/// Stops the run's processes gracefully, and brings back what a fault lost
/// for good, so that the next run starts on a whole infrastructure.
fn stop_and_heal(topology: &mut Topology, infra: &Infra) -> anyhow::Result<()> {
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
    Ok(())
}
