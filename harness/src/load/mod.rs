//! The load runner: goose drives a target with fresh unique ids and a
//! realistic mix over many accounts, timing every call itself so that the
//! engine, the bare HTTP limit and the bare Redis limit are measured the same
//! way; then it waits until the consumers drained the topic.
//!
//! - this module: the profile and target of a run, the state its goose
//!   users share, and [`drive`], which runs goose and sums the run up;
//! - [`send`]: what each goose user sends, and how its answers are read;
//! - [`publish`]: a backlog published straight into Kafka.

mod publish;
mod send;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::Context;
use goose::config::{GooseConfiguration, GooseDefault, GooseDefaultType};
use goose::prelude::*;
use hdrhistogram::Histogram;
use txengine::store::Store;

use crate::measure::{precise_histogram, HttpResult, SecondStats};
use crate::workload::{Ledger, Mix, SentTx};
pub use publish::publish_backlog;
use send::send_transaction;
pub use send::SHED;

/// The shape of a load run.
#[derive(Debug, Clone)]
pub struct LoadProfile {
    pub users: usize,
    pub seconds: usize,
    pub accounts: usize,
    pub start_balance: u64,
    pub mix: Mix,
    /// When set, every transfer goes to its source's partner (see
    /// [`crate::workload::Transfers::WithinSlot`]); the partners are funded too.
    pub partners: Option<std::sync::Arc<HashMap<String, String>>>,
    /// Transactions per request: 1 posts `POST /transactions`; more post
    /// `POST /transactions/batch` with that many items (and the Redis
    /// limit applies that many per call).
    pub batch: usize,
    /// Each user posts a hold, then its capture (all of it, to the drawn
    /// transfer's `to` when there is one): two transactions a turn.
    pub holds: bool,
}

/// How long the load's holds last: far past a run, so each ends by its
/// capture, never by expiry.
pub const LOAD_HOLD_TIMEOUT_S: u32 = 3_600;

impl Default for LoadProfile {
    /// The seed's k6 profile: 200 users for 20 s; 1,000 accounts.
    fn default() -> Self {
        Self {
            users: 200,
            seconds: 20,
            accounts: 1000,
            start_balance: 1_000_000,
            mix: Mix::LOAD,
            partners: None,
            batch: 1,
            holds: false,
        }
    }
}

/// What goose users drive.
#[derive(Clone)]
pub enum Target {
    /// `POST {base_url}/transactions` with `api_key` as the bearer token.
    Http { base_url: String, api_key: String },
    /// The apply script called directly, one transaction per call; the
    /// multiplexed connection pipelines the users' concurrent calls.
    RedisScript { store: Box<Store> },
}

/// One second of a run: its answered requests' latencies, and its failed
/// requests.
struct Bucket {
    latencies_us: Histogram<u64>,
    errors: usize,
}

impl Default for Bucket {
    /// A second with nothing in it yet.
    fn default() -> Self {
        Self {
            latencies_us: precise_histogram(),
            errors: 0,
        }
    }
}

/// Shared by every goose user of one run.
struct RunState {
    target: Target,
    profile: LoadProfile,
    run_tag: String,
    next_id: AtomicU64,
    /// Transactions accepted (HTTP) or applied (the Redis limit).
    transactions_ok: AtomicU64,
    started: Instant,
    buckets: Mutex<Vec<Bucket>>,
    errors_by_kind: Mutex<BTreeMap<String, usize>>,
    accepted: Mutex<Vec<SentTx>>,
    refused: Mutex<Vec<String>>,
    /// Answered 5xx, timed out or lost with its connection: the engine's
    /// handler runs on in a task of its own and a publish that timed out may
    /// still land, so each may still be applied (at most once).
    unanswered: Mutex<Vec<SentTx>>,
    /// Sent and not yet answered. What is left here when goose stops (a
    /// user stopped mid-request) may still be applied: the ledger keeps it
    /// as uncertain.
    in_flight: Mutex<HashMap<String, SentTx>>,
}

impl RunState {
    /// A run's state from its start; `name` tags its transaction ids, which
    /// a fresh suffix keeps unique across runs.
    fn new(target: Target, profile: &LoadProfile, name: &str) -> Self {
        Self {
            target,
            profile: profile.clone(),
            run_tag: format!("{name}-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]),
            next_id: AtomicU64::new(0),
            transactions_ok: AtomicU64::new(0),
            started: Instant::now(),
            buckets: Mutex::new(Vec::new()),
            errors_by_kind: Mutex::new(BTreeMap::new()),
            accepted: Mutex::new(Vec::new()),
            refused: Mutex::new(Vec::new()),
            unanswered: Mutex::new(Vec::new()),
            in_flight: Mutex::new(HashMap::new()),
        }
    }

    /// The next transaction of the mix, with an id no one has used, its
    /// transfer sent to the source's partner when the run has partners.
    fn next_tx(&self) -> SentTx {
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        let id = format!("{}-{n}", self.run_tag);
        let mut tx = self
            .profile
            .mix
            .draw(id, self.profile.accounts.max(2), &mut rand::rng());
        if let (Some(partners), Some(_)) = (&self.profile.partners, &tx.to) {
            tx.to = partners.get(&tx.account).cloned();
        }
        if let (Some(partners), false) = (&self.profile.partners, tx.legs.is_empty()) {
            // Postings within the slot: between the account and its
            // partner, back and forth.
            if let Some(partner) = partners.get(&tx.account) {
                let pair = [tx.account.clone(), partner.clone()];
                for (i, leg) in tx.legs.iter_mut().enumerate() {
                    leg.from = pair[i % 2].clone();
                    leg.to = pair[(i + 1) % 2].clone();
                }
            }
        }
        tx
    }

    /// Counts an error that is not a whole request's (an item of a batch).
    fn count_error(&self, kind: String) {
        *self
            .errors_by_kind
            .lock()
            .expect("errors lock")
            .entry(kind)
            .or_default() += 1;
    }

    /// Counts one request begun at `began` in its second: its latency when
    /// it was answered, else an error of its kind.
    fn record(&self, began: Instant, error: Option<String>) {
        let second = began.duration_since(self.started).as_secs() as usize;
        let latency_us = began.elapsed().as_micros().min(u64::MAX as u128) as u64;
        {
            let mut buckets = self.buckets.lock().expect("buckets lock");
            if buckets.len() <= second {
                buckets.resize_with(second + 1, Bucket::default);
            }
            match error {
                None => buckets[second]
                    .latencies_us
                    .record(latency_us)
                    .expect("an auto-resizing histogram takes any value"),
                Some(_) => buckets[second].errors += 1,
            }
        }
        if let Some(kind) = error {
            self.count_error(kind);
        }
    }
}

/// `tx` as the engine's transaction, for the records the Redis limit and
/// the backlog carry.
fn to_domain(tx: &SentTx) -> anyhow::Result<txengine::domain::Transaction> {
    tx.transaction()
}

/// The run goose users join at start (goose transactions are plain fns).
fn current_run() -> &'static Mutex<Option<Arc<RunState>>> {
    static CURRENT: OnceLock<Mutex<Option<Arc<RunState>>>> = OnceLock::new();
    CURRENT.get_or_init(|| Mutex::new(None))
}

/// The goose transaction each user runs first: takes the current run as
/// its session.
async fn join_run(user: &mut GooseUser) -> TransactionResult {
    let state = current_run()
        .lock()
        .expect("run lock")
        .clone()
        .expect("a run is set");
    user.set_session_data(state);
    Ok(())
}

/// The `quantile` (0..=1) of a histogram of microseconds, in ms (0 if empty).
fn quantile_ms(latencies_us: &Histogram<u64>, quantile: f64) -> f64 {
    latencies_us.value_at_quantile(quantile) as f64 / 1000.0
}

/// The outcome of one driven run.
pub struct Driven {
    pub result: HttpResult,
    pub timeline: Vec<SecondStats>,
    /// Accepted and refused requests (HTTP targets).
    pub ledger: Ledger,
}

/// Drives `target` with goose under `profile`, printing a progress line
/// every 5 s.
pub async fn drive(target: Target, name: &str, profile: &LoadProfile) -> anyhow::Result<Driven> {
    let state = Arc::new(RunState::new(target.clone(), profile, name));
    *current_run().lock().expect("run lock") = Some(state.clone());
    let progress = tokio::spawn(report_progress(
        state.clone(),
        name.to_owned(),
        profile.seconds,
    ));
    run_goose(&goose_host(&target), profile).await?;
    progress.abort();
    *current_run().lock().expect("run lock") = None;
    let run_seconds = state.started.elapsed().as_secs_f64();

    let (timeline, all) = timeline_and_latencies(&state);
    let result = http_result(&state, name, profile, run_seconds, &timeline, &all);
    let ledger = take_ledger(&state);
    Ok(Driven {
        result,
        timeline,
        ledger,
    })
}

/// The host goose is given: the target's base URL; goose needs one even
/// for the Redis limit, which makes no HTTP calls.
fn goose_host(target: &Target) -> String {
    match target {
        Target::Http { base_url, .. } => base_url.clone(),
        // goose needs a host; this target makes no HTTP calls.
        Target::RedisScript { .. } => "http://127.0.0.1:9".to_owned(),
    }
}

/// Runs goose to the end: every user joins the run, then sends
/// transactions for `profile.seconds`; all users start at once, and goose
/// prints nothing (the runner times every call itself).
async fn run_goose(host: &str, profile: &LoadProfile) -> anyhow::Result<()> {
    let attack = GooseAttack::initialize_with_config(GooseConfiguration::default())?
        .register_scenario(
            scenario!("Transactions")
                .register_transaction(transaction!(join_run).set_on_start())
                .register_transaction(transaction!(send_transaction).set_name("transaction")),
        )
        .set_default(GooseDefault::Host, host)?
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
    attack.execute().await.context("goose run")?;
    Ok(())
}

/// The run's seconds (requests, errors, p50 and p99 of each), and every
/// answered request's latency in one histogram for the run's quantiles.
fn timeline_and_latencies(state: &RunState) -> (Vec<SecondStats>, Histogram<u64>) {
    let buckets = std::mem::take(&mut *state.buckets.lock().expect("buckets lock"));
    let mut all = precise_histogram();
    let mut timeline = Vec::with_capacity(buckets.len());
    for (second, bucket) in buckets.into_iter().enumerate() {
        let ok = bucket.latencies_us.len() as usize;
        timeline.push(SecondStats {
            second,
            requests: ok + bucket.errors,
            errors: bucket.errors,
            latency_ms_p50: quantile_ms(&bucket.latencies_us, 0.50),
            latency_ms_p99: quantile_ms(&bucket.latencies_us, 0.99),
        });
        all.add(&bucket.latencies_us)
            .expect("auto-resizing histograms of the same precision add");
    }
    (timeline, all)
}

/// What the generator saw over the whole run: requests, errors by kind,
/// rates and latency quantiles.
fn http_result(
    state: &RunState,
    name: &str,
    profile: &LoadProfile,
    run_seconds: f64,
    timeline: &[SecondStats],
    all: &Histogram<u64>,
) -> HttpResult {
    let ok = all.len() as usize;
    let errors_by_kind = std::mem::take(&mut *state.errors_by_kind.lock().expect("errors lock"));
    // Requests that failed (the errors by kind also count batch items).
    let failed: usize = timeline.iter().map(|second| second.errors).sum();
    HttpResult {
        target: name.to_owned(),
        users: profile.users,
        seconds: run_seconds.round() as usize,
        requests: ok + failed,
        ok,
        errors_by_kind,
        rps: ok as f64 / run_seconds,
        batch: profile.batch,
        transactions_per_s: state.transactions_ok.load(Ordering::Relaxed) as f64 / run_seconds,
        latency_ms_p50: quantile_ms(all, 0.50),
        latency_ms_p90: Some(quantile_ms(all, 0.90)),
        latency_ms_p95: Some(quantile_ms(all, 0.95)),
        latency_ms_p99: quantile_ms(all, 0.99),
        latency_ms_max: all.max() as f64 / 1000.0,
    }
}

/// The run's ledger: accepted and refused transactions, and the uncertain
/// ones (still in flight when goose stopped, or never answered).
fn take_ledger(state: &RunState) -> Ledger {
    Ledger {
        start: HashMap::new(),
        accounts: HashMap::new(),
        accepted: std::mem::take(&mut *state.accepted.lock().expect("ledger lock")),
        refused: std::mem::take(&mut *state.refused.lock().expect("ledger lock")),
        uncertain: std::mem::take(&mut *state.in_flight.lock().expect("in-flight lock"))
            .into_values()
            .chain(std::mem::take(
                &mut *state.unanswered.lock().expect("ledger lock"),
            ))
            .collect(),
    }
}

/// One line every 5 s while goose runs: requests so far and the rate.
async fn report_progress(state: Arc<RunState>, name: String, seconds: usize) {
    let mut last = 0;
    loop {
        tokio::time::sleep(Duration::from_secs(5)).await;
        let sent = state.next_id.load(Ordering::Relaxed);
        eprintln!(
            "  [{name}] {:>3.0}s/{seconds}s  {sent} calls  ({:.0}/s over the last 5 s)",
            state.started.elapsed().as_secs_f64(),
            (sent - last) as f64 / 5.0
        );
        last = sent;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The histogram grows to whatever it is given (a saturating record
    /// into a fresh auto-resizing histogram once clamped every latency to
    /// 2 µs), and reads back within its 0.1% precision.
    #[test]
    fn latencies_read_back_at_their_quantiles() {
        let mut latencies_us = precise_histogram();
        for us in 1..=10_000u64 {
            latencies_us.record(us * 10).unwrap();
        }
        let close = |ms: f64, expected: f64| (ms - expected).abs() <= expected * 0.002;
        assert!(close(quantile_ms(&latencies_us, 0.50), 50.0));
        assert!(close(quantile_ms(&latencies_us, 0.99), 99.0));
        assert!(close(latencies_us.max() as f64 / 1000.0, 100.0));
        assert_eq!(quantile_ms(&precise_histogram(), 0.99), 0.0);
    }
}
