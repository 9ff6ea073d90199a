//! The load runner: goose drives `POST /transactions` with fresh unique ids
//! and a realistic mix over many accounts, then the runner waits until the
//! consumers drained the topic and checks the invariants.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::Context;
use goose::config::{GooseConfiguration, GooseDefault, GooseDefaultType};
use goose::prelude::*;
use rand::Rng;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde_json::json;

use crate::invariants::{Kind, Ledger, SentTx};

/// The shape of a load run.
#[derive(Debug, Clone)]
pub struct LoadProfile {
    pub users: usize,
    pub seconds: usize,
    pub accounts: usize,
    pub start_balance: u64,
    /// Percent of transfers, debits and credits (the rest).
    pub transfer_percent: u32,
    pub debit_percent: u32,
}

impl Default for LoadProfile {
    /// The seed's k6 profile: 200 users for 20 s; 1,000 accounts.
    fn default() -> Self {
        Self {
            users: 200,
            seconds: 20,
            accounts: 1000,
            start_balance: 1_000_000,
            transfer_percent: 60,
            debit_percent: 25,
        }
    }
}

/// Shared by every goose user of one run.
struct RunState {
    profile: LoadProfile,
    run_tag: String,
    next_id: AtomicU64,
    /// Whether to keep the ledger (not for the bare 202 handler).
    record: bool,
    accepted: Mutex<Vec<SentTx>>,
    refused: Mutex<Vec<String>>,
}

impl RunState {
    fn account(&self, index: usize) -> String {
        format!("acct-{index}")
    }

    fn next_tx(&self) -> SentTx {
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut rng = rand::rng();
        let from = rng.random_range(0..self.profile.accounts);
        let roll = rng.random_range(0..100);
        let kind = if roll < self.profile.transfer_percent {
            Kind::Transfer
        } else if roll < self.profile.transfer_percent + self.profile.debit_percent {
            Kind::Debit
        } else {
            Kind::Credit
        };
        let to = (kind == Kind::Transfer).then(|| {
            let offset = rng.random_range(1..self.profile.accounts.max(2));
            self.account((from + offset) % self.profile.accounts)
        });
        SentTx {
            id: format!("{}-{n}", self.run_tag),
            kind,
            account: self.account(from),
            to,
            amount: rng.random_range(1..=1000),
        }
    }
}

/// The run goose users read at start (goose transactions are plain fns).
fn current_run() -> &'static Mutex<Option<Arc<RunState>>> {
    static CURRENT: OnceLock<Mutex<Option<Arc<RunState>>>> = OnceLock::new();
    CURRENT.get_or_init(|| Mutex::new(None))
}

async fn join_run(user: &mut GooseUser) -> TransactionResult {
    let state = current_run()
        .lock()
        .expect("run lock")
        .clone()
        .expect("a run is set");
    user.set_session_data(state);
    Ok(())
}

async fn post_transaction(user: &mut GooseUser) -> TransactionResult {
    let state = user.get_session_data_unchecked::<Arc<RunState>>().clone();
    let tx = state.next_tx();
    let body = json!({"id": tx.id, "type": tx.kind.as_str(), "account": tx.account, "to": tx.to, "amount": tx.amount});
    let mut goose = user.post_json("/transactions", &body).await?;
    let status = goose.response.as_ref().map(|r| r.status().as_u16()).ok();
    match status {
        Some(200 | 202) => {
            if state.record {
                state.accepted.lock().expect("ledger lock").push(tx);
            }
        }
        other => {
            if state.record {
                state.refused.lock().expect("ledger lock").push(tx.id);
            }
            let tag = format!("status {other:?}");
            return user.set_failure(&tag, &mut goose.request, None, None);
        }
    }
    Ok(())
}

/// What goose measured for one target.
#[derive(Debug, Clone, serde::Serialize)]
pub struct HttpResult {
    pub target: String,
    pub users: usize,
    pub seconds: usize,
    pub requests: usize,
    pub ok: usize,
    pub errors_by_kind: BTreeMap<String, usize>,
    pub rps: f64,
    pub latency_ms_p50: f64,
    pub latency_ms_p95: f64,
    pub latency_ms_p99: f64,
    pub latency_ms_max: f64,
}

/// Drives `base_url` with goose; returns the measurements and the ledger.
pub async fn drive(
    base_url: &str,
    target: &str,
    profile: &LoadProfile,
    record: bool,
) -> anyhow::Result<(HttpResult, Ledger)> {
    let state = Arc::new(RunState {
        profile: profile.clone(),
        run_tag: format!("load-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]),
        next_id: AtomicU64::new(0),
        record,
        accepted: Mutex::new(Vec::new()),
        refused: Mutex::new(Vec::new()),
    });
    *current_run().lock().expect("run lock") = Some(state.clone());

    let progress = tokio::spawn(report_progress(
        state.clone(),
        target.to_owned(),
        profile.seconds,
    ));
    let attack = GooseAttack::initialize_with_config(GooseConfiguration::default())?
        .register_scenario(
            scenario!("PostTransactions")
                .register_transaction(transaction!(join_run).set_on_start())
                .register_transaction(
                    transaction!(post_transaction).set_name("POST /transactions"),
                ),
        )
        .set_default(GooseDefault::Host, base_url)?
        .set_default(GooseDefault::Users, profile.users)?
        .set_default(
            GooseDefault::IncreaseRate,
            profile.users.to_string().as_str(),
        )?
        .set_default(GooseDefault::RunTime, profile.seconds)?
        .set_default(GooseDefault::Quiet, 1)?
        .set_default(GooseDefault::NoPrintMetrics, true)?
        .set_default(GooseDefault::NoTelnet, true)?
        .set_default(GooseDefault::NoGzip, true)?;
    let metrics = attack.execute().await.context("goose run")?;
    progress.abort();
    *current_run().lock().expect("run lock") = None;

    let aggregate = metrics
        .requests
        .get("POST /transactions")
        .context("goose recorded no POST /transactions")?;
    let timing = &aggregate.raw_data;
    let mut errors_by_kind: BTreeMap<String, usize> = BTreeMap::new();
    for error in metrics.errors.values() {
        *errors_by_kind.entry(error.error.clone()).or_default() += error.occurrences;
    }
    let seconds = metrics.duration.max(1);
    let ms = |us: u64| us as f64 / 1000.0;
    let result = HttpResult {
        target: target.to_owned(),
        users: profile.users,
        seconds,
        requests: timing.counter,
        ok: aggregate.success_count,
        errors_by_kind,
        rps: timing.counter as f64 / seconds as f64,
        latency_ms_p50: ms(timing.percentile_us(0.50)),
        latency_ms_p95: ms(timing.percentile_us(0.95)),
        latency_ms_p99: ms(timing.percentile_us(0.99)),
        latency_ms_max: ms(timing.maximum_time_us),
    };
    let ledger = Ledger {
        start: HashMap::new(),
        accepted: std::mem::take(&mut *state.accepted.lock().expect("ledger lock")),
        refused: std::mem::take(&mut *state.refused.lock().expect("ledger lock")),
    };
    Ok((result, ledger))
}

/// One line every 5 s while goose runs: requests so far and the rate.
async fn report_progress(state: Arc<RunState>, target: String, seconds: usize) {
    let started = Instant::now();
    let mut last = 0;
    loop {
        tokio::time::sleep(Duration::from_secs(5)).await;
        let sent = state.next_id.load(Ordering::Relaxed);
        eprintln!(
            "  [{target}] {:>3.0}s/{seconds}s  {sent} requests  ({:.0} req/s over the last 5 s)",
            started.elapsed().as_secs_f64(),
            (sent - last) as f64 / 5.0
        );
        last = sent;
    }
}

/// Records not yet stored by `group` on `topic` (sum over partitions).
pub fn consumer_lag(brokers: &str, group: &str, topic: &str) -> anyhow::Result<i64> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()?;
    let timeout = Duration::from_secs(5);
    let metadata = consumer.fetch_metadata(Some(topic), timeout)?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    let mut tpl = TopicPartitionList::new();
    for p in &partitions {
        tpl.add_partition(topic, *p);
    }
    let committed = consumer.committed_offsets(tpl, timeout)?;
    let mut lag = 0;
    for p in partitions {
        let (low, high) = consumer.fetch_watermarks(topic, p, timeout)?;
        let done = match committed.find_partition(topic, p).map(|e| e.offset()) {
            Some(Offset::Offset(o)) => o,
            _ => low,
        };
        lag += (high - done).max(0);
    }
    Ok(lag)
}

/// Waits until the group has stored every record of the topic, printing
/// progress; returns how long it took.
pub async fn wait_drained(
    brokers: &str,
    group: &str,
    topic: &str,
    timeout: Duration,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let mut last_print = Instant::now();
    loop {
        let (b, g, t) = (brokers.to_owned(), group.to_owned(), topic.to_owned());
        let lag = tokio::task::spawn_blocking(move || consumer_lag(&b, &g, &t)).await??;
        if lag == 0 {
            return Ok(started.elapsed());
        }
        anyhow::ensure!(
            started.elapsed() < timeout,
            "consumer lag still {lag} after {timeout:?}"
        );
        if last_print.elapsed() >= Duration::from_secs(2) {
            eprintln!(
                "  draining: lag {lag} records ({:.0}s)",
                started.elapsed().as_secs_f64()
            );
            last_print = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
