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

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rand::SeedableRng;
use std::collections::HashMap;

use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use reqwest::StatusCode;
use serde::Deserialize;
use txengine::domain::MAX_MINOR_UNITS;
use txengine::Role;

use crate::client::ApiClient;
use crate::infra::Infra;
use crate::invariants;
use crate::measure::{published_transactions, topic_size, wait_drained};
use crate::stack::{isolated_config, EngineProcess};
use crate::workload::{Kind, Ledger, Mix, SentTx};

/// One scenario file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    /// What it proves, for the scenario table of docs/faults.md.
    pub description: String,
    /// Runs on a Redis Cluster only (its faults need one).
    #[serde(default)]
    pub cluster_only: bool,
    pub accounts: Accounts,
    pub mix: Mix,
    pub load: Load,
    #[serde(default)]
    pub faults: Vec<Fault>,
    #[serde(default)]
    pub expect: Expect,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Accounts {
    pub count: usize,
    /// Starting balance of each account, minor units.
    pub balance: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Load {
    /// Clients sending at once.
    pub concurrency: usize,
    /// Transactions in all.
    pub count: usize,
    /// Consumer processes in the group at the start.
    #[serde(default = "one")]
    pub consumers: usize,
    /// Partitions of the topic.
    #[serde(default = "four")]
    pub partitions: i32,
    /// Pause of each client between two transactions (ms), to spread the
    /// load over the faults.
    #[serde(default)]
    pub pause_ms: u64,
    /// The clients' API key's rate limit (requests per second); far above
    /// the load when absent.
    pub rate_per_s: Option<u64>,
    /// The clients' key's burst; `rate_per_s` when absent.
    pub burst: Option<u64>,
}

fn one() -> usize {
    1
}

fn four() -> i32 {
    4
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fault {
    /// Fires once this share (0..=100 %) of the transactions has been sent.
    pub at_percent: u32,
    pub kind: FaultKind,
    /// Records to publish (`poison`), or slots to move (`reshard`).
    pub count: Option<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    /// kill -9 of one consumer process, and a new one in its place.
    KillConsumer,
    /// kill -9 of the API process, and a new one on the same port.
    RestartApi,
    /// kill -9 of Redis and a restart on its AOF.
    RestartRedis,
    /// kill -9 of the Kafka broker and a restart on its log dir.
    RestartKafka,
    /// One more consumer joins the group (rebalance).
    AddConsumer,
    /// One consumer leaves the group gracefully (rebalance).
    RemoveConsumer,
    /// `count` undecodable records published into the topic.
    Poison,
    /// On a Redis Cluster only: kill -9 of a master, never restarted (a
    /// machine lost); its replica takes over and the other replica follows
    /// it, so the ledger goes on. The node is started again, as a replica,
    /// once the scenario is judged.
    LoseRedisMaster,
    /// On a Redis Cluster only: `count` slots (default 2000) move, keys
    /// and all, from one master to another while the load goes on.
    Reshard,
    /// The admin revokes the clients' API key: from then on (give or take
    /// the API's key cache, at most 1 s) every request is refused with 401.
    RevokeKey,
}

/// Checks beyond the invariants, each optional.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    pub applied: Option<usize>,
    pub rejected: Option<usize>,
    /// Records in the DLQ topic.
    pub dlq: Option<usize>,
    /// POST every accepted transaction again (same id, same body): no money moves.
    #[serde(default)]
    pub duplicate_posts: bool,
    /// Re-consume the whole topic from offset 0 in a new group: no money moves.
    #[serde(default)]
    pub replay_topic: bool,
    /// At least this many requests refused with 401 (a revoked key).
    pub min_unauthorized: Option<usize>,
    /// At least this many requests refused with 429 (over the key's rate).
    pub min_rate_limited: Option<usize>,
    /// The topic holds each accepted transaction once and nothing for a
    /// refused request, by id (saga steps aside: the saga invariants count
    /// them); for runs without faults that can publish a record twice.
    #[serde(default)]
    pub topic_holds_accepted: bool,
}

impl Scenario {
    /// Reads and validates a scenario file; errors name the file and field.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("scenario file {}", path.display()))
    }

    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let scenario: Scenario = toml::from_str(text)?;
        scenario.validate()?;
        Ok(scenario)
    }

    fn validate(&self) -> anyhow::Result<()> {
        let m = &self.mix;
        m.validate().map_err(|e| anyhow::anyhow!("mix: {e}"))?;
        if self.accounts.count == 0 || (m.transfer > 0 && self.accounts.count < 2) {
            bail!("accounts.count: need at least 1 account, and 2 for transfers");
        }
        if self.accounts.balance > MAX_MINOR_UNITS {
            bail!("accounts.balance: must be at most 2^53-1");
        }
        if self.load.burst.is_some() && self.load.rate_per_s.is_none() {
            bail!("load.burst: needs load.rate_per_s");
        }
        if self.load.concurrency == 0
            || self.load.count == 0
            || self.load.consumers == 0
            || self.load.partitions < 1
        {
            bail!("load: concurrency, count, consumers and partitions must be at least 1");
        }
        for (i, f) in self.faults.iter().enumerate() {
            if f.at_percent > 100 {
                bail!(
                    "faults[{i}].at_percent: must be 0..=100, got {}",
                    f.at_percent
                );
            }
            match (f.kind, f.count) {
                (FaultKind::Poison, None) => bail!("faults[{i}].count: poison needs a count"),
                (FaultKind::Poison | FaultKind::Reshard, Some(_)) | (_, None) => {}
                (kind, Some(_)) => {
                    bail!("faults[{i}].count: only poison and reshard take a count, not {kind:?}")
                }
            }
        }
        Ok(())
    }

    /// The `i`-th transaction of the run: a pure function of the seed and `i`.
    fn transaction(&self, run: &str, i: usize) -> SentTx {
        let mut rng = rand::rngs::StdRng::seed_from_u64(i as u64 ^ 0x5eed);
        self.mix
            .draw(format!("{run}-{i}"), self.accounts.count, &mut rng)
    }

    /// What follows the `i`-th transaction once it was accepted, when it is
    /// a hold: its capture, its void, or nothing (a pure function of `i`).
    fn end_of_hold(&self, hold: &SentTx, i: usize) -> Option<SentTx> {
        if !matches!(hold.kind, Kind::Hold { .. }) {
            return None;
        }
        let mut rng = rand::rngs::StdRng::seed_from_u64(i as u64 ^ 0xe4d);
        Mix::end_of(hold, &mut rng)
    }
}

/// What a run found.
#[derive(Debug)]
pub struct Outcome {
    pub verdict: invariants::Verdict,
    pub elapsed: Duration,
    /// Problems beyond the invariants (expectations, replays, lag).
    pub failures: Vec<String>,
}

impl Outcome {
    pub fn passed(&self) -> bool {
        self.verdict.holds() && self.failures.is_empty()
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
            FaultKind::RestartKafka => infra.kafka.is_none(),
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
    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..scenario.load.concurrency {
        let (scenario, api, sent, results, run_tag) = (
            scenario.clone(),
            api.clone(),
            sent.clone(),
            results.clone(),
            run_tag.clone(),
        );
        clients.spawn(async move {
            loop {
                let i = sent.fetch_add(1, Ordering::SeqCst);
                if i >= scenario.load.count {
                    return anyhow::Ok(());
                }
                let tx = scenario.transaction(&run_tag, i);
                let verdict = send_until_answered(&api, &tx).await?;
                let end = matches!(verdict, Answer::Accepted)
                    .then(|| scenario.end_of_hold(&tx, i))
                    .flatten();
                results.lock().expect("results lock").record(tx, verdict);
                if let Some(end) = end {
                    let verdict = send_until_answered(&api, &end).await?;
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
            inject(fault, &mut topology, infra).await?;
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
    check_refusals(scenario, &results, revoked_at, &mut failures);
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
    // A master lost for good comes back (as a replica) for the next run.
    tokio::task::block_in_place(|| infra.heal_redis())?;
    Ok(Outcome {
        verdict,
        elapsed: started.elapsed(),
        failures,
    })
}

async fn inject(fault: &Fault, topology: &mut Topology, infra: &Infra) -> anyhow::Result<()> {
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
    Ok(())
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

/// What the topic says against the answers the clients got: every
/// accepted transaction published once, and nothing for a refused request.
pub fn publication_failures(
    published: &HashMap<String, usize>,
    accepted: &[&str],
    refused: &[String],
) -> Vec<String> {
    let mut failures = Vec::new();
    let leaked: Vec<&str> = refused
        .iter()
        .filter(|id| published.contains_key(id.as_str()))
        .map(String::as_str)
        .collect();
    if !leaked.is_empty() {
        failures.push(format!(
            "{} refused requests were published anyway: {}",
            leaked.len(),
            leaked
                .iter()
                .take(10)
                .copied()
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    let not_once: Vec<String> = accepted
        .iter()
        .filter_map(|id| match published.get(*id).copied().unwrap_or(0) {
            1 => None,
            n => Some(format!("{id} ({n} records)")),
        })
        .collect();
    if !not_once.is_empty() {
        failures.push(format!(
            "{} accepted transactions are not in the topic exactly once: {}",
            not_once.len(),
            not_once
                .iter()
                .take(10)
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    failures
}

/// The 401s and 429s the scenario expects, and after a revocation no
/// transaction accepted later than the key cache allows (1 s).
fn check_refusals(
    scenario: &Scenario,
    results: &ClientResults,
    revoked_at: Option<Instant>,
    failures: &mut Vec<String>,
) {
    let count = |status: StatusCode| {
        results
            .refused_by_status
            .get(&status.as_u16())
            .copied()
            .unwrap_or(0)
    };
    for (least, status) in [
        (scenario.expect.min_unauthorized, StatusCode::UNAUTHORIZED),
        (
            scenario.expect.min_rate_limited,
            StatusCode::TOO_MANY_REQUESTS,
        ),
    ] {
        if let Some(least) = least {
            if count(status) < least {
                failures.push(format!(
                    "{} requests refused with {status}, expected at least {least} (refusals: {:?})",
                    count(status),
                    results.refused_by_status
                ));
            }
        }
    }
    if let Some(revoked_at) = revoked_at {
        let bound = revoked_at + Duration::from_millis(txengine::config::MAX_KEY_CACHE_MS);
        let late = results.accepted_at.iter().filter(|at| **at > bound).count();
        if late > 0 {
            failures.push(format!(
                "{late} transactions accepted more than 1 s after their key was revoked"
            ));
        }
    }
}

/// How a client's attempts at one transaction ended.
enum Answer {
    Accepted,
    Refused(StatusCode),
    /// No answer ever came (the API stayed unreachable): it may or may not
    /// have been published.
    Unknown,
}

#[derive(Default)]
struct ClientResults {
    accepted: Vec<SentTx>,
    /// When each accepted transaction's answer came.
    accepted_at: Vec<Instant>,
    refused: Vec<String>,
    refused_by_status: std::collections::BTreeMap<u16, usize>,
    uncertain: Vec<SentTx>,
}

impl ClientResults {
    fn record(&mut self, tx: SentTx, answer: Answer) {
        match answer {
            Answer::Accepted => {
                self.accepted.push(tx);
                self.accepted_at.push(Instant::now());
            }
            Answer::Refused(status) => {
                *self.refused_by_status.entry(status.as_u16()).or_default() += 1;
                self.refused.push(tx.id);
            }
            Answer::Unknown => self.uncertain.push(tx),
        }
    }
}

/// Sends one transaction like a careful client: the same id again after a
/// 409, a 503 or a lost connection, for up to a minute. An answer that is
/// not JSON is an error, not a retry.
async fn send_until_answered(api: &ApiClient, tx: &SentTx) -> anyhow::Result<Answer> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        match api.post(&tx.request_body()).await {
            Ok((StatusCode::OK | StatusCode::ACCEPTED, _)) => return Ok(Answer::Accepted),
            Ok((StatusCode::CONFLICT | StatusCode::SERVICE_UNAVAILABLE, _)) => {}
            Ok((status, _)) => return Ok(Answer::Refused(status)),
            Err(e) if e.downcast_ref::<reqwest::Error>().is_some() => {}
            Err(e) => return Err(e.context(format!("POST of {}", tx.id))),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(Answer::Unknown)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publication_is_judged_by_id_not_by_count() {
        let published: HashMap<String, usize> = [("a".to_owned(), 1), ("b".to_owned(), 1)]
            .into_iter()
            .collect();
        assert!(publication_failures(&published, &["a", "b"], &["c".into()]).is_empty());
        let leak = publication_failures(&published, &["a"], &["b".into()]);
        assert_eq!(leak, ["1 refused requests were published anyway: b"]);
        let twice: HashMap<String, usize> = [("a".to_owned(), 2)].into_iter().collect();
        let failures = publication_failures(&twice, &["a", "b"], &[]);
        assert!(failures[0].contains("a (2 records)") && failures[0].contains("b (0 records)"));
    }

    const VALID: &str = r#"
name = "t"
description = "d"
[accounts]
count = 2
balance = 100
[mix]
transfer = 100
amount_min = 1
amount_max = 10
[load]
concurrency = 2
count = 10
[[faults]]
at_percent = 50
kind = "kill_consumer"
[[faults]]
at_percent = 60
kind = "poison"
count = 3
"#;

    #[test]
    fn a_valid_file_parses() {
        let s = Scenario::parse(VALID).unwrap();
        assert_eq!(s.faults.len(), 2);
        assert_eq!(
            (s.faults[1].kind, s.faults[1].count),
            (FaultKind::Poison, Some(3))
        );
        assert_eq!(s.load.consumers, 1);
    }

    fn error_of(text: &str) -> String {
        format!("{:#}", Scenario::parse(text).unwrap_err())
    }

    #[test]
    fn bad_files_get_errors_naming_the_field() {
        assert!(error_of(&VALID.replace("count = 10", "count = \"ten\"")).contains("count"));
        assert!(
            error_of(&VALID.replace("balance = 100", "balance = 100\nlimit = 3")).contains("limit")
        );
        assert!(error_of(&VALID.replace("transfer = 100", "transfer = 90")).contains("mix"));
        assert!(error_of(&VALID.replace("amount_min = 1", "amount_min = 0")).contains("amount_min"));
        assert!(
            error_of(&VALID.replace("kind = \"kill_consumer\"", "kind = \"explode\""))
                .contains("explode")
        );
        assert!(
            error_of(&VALID.replace("at_percent = 50", "at_percent = 150"))
                .contains("faults[0].at_percent")
        );
        assert!(error_of(&VALID.replace("count = 3\n", "")).contains("faults[1].count"));
        let burst_alone = VALID.replace("concurrency = 2", "concurrency = 2\nburst = 5");
        assert!(error_of(&burst_alone).contains("load.burst"));
        assert!(
            error_of(&VALID.replace("[load]\nconcurrency = 2\n", "[load]\n"))
                .contains("concurrency")
        );
        assert!(error_of(&VALID.replace("count = 2\n", "count = 1\n")).contains("accounts.count"));
    }

    #[test]
    fn transactions_are_a_pure_function_of_the_index() {
        let s = Scenario::parse(VALID).unwrap();
        let a = s.transaction("run", 7);
        let b = s.transaction("run", 7);
        assert_eq!(
            (a.id, a.account, a.to, a.amount),
            (b.id, b.account, b.to, b.amount)
        );
    }
}
