//! The load runner: goose drives a target with fresh unique ids and a
//! realistic mix over many accounts, timing every call itself so that the
//! engine, the bare HTTP limit and the bare Redis limit are measured the same
//! way; then it waits until the consumers drained the topic.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::Context;
use goose::config::{GooseConfiguration, GooseDefault, GooseDefaultType};
use goose::prelude::*;
use hdrhistogram::Histogram;
use rdkafka::ClientConfig;
use txengine::domain::{AccountId, Amount, Movement, TxId};
use txengine::store::Store;

use crate::measure::{precise_histogram, HttpResult, SecondStats};
use crate::workload::{Kind, Ledger, Mix, SentTx};

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

struct Bucket {
    latencies_us: Histogram<u64>,
    errors: usize,
}

impl Default for Bucket {
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

fn to_domain(tx: &SentTx) -> anyhow::Result<txengine::domain::Transaction> {
    Ok(txengine::domain::Transaction {
        metadata: Default::default(),
        id: TxId::parse(&tx.id)?,
        movement: Movement::new(
            Some(tx.kind.as_str()),
            AccountId::parse(&tx.account)?,
            tx.to.as_deref().map(AccountId::parse).transpose()?,
            Amount::new(tx.amount)?,
        )?,
    })
}

/// The run goose users join at start (goose transactions are plain fns).
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

async fn send_transaction(user: &mut GooseUser) -> TransactionResult {
    let state = user.get_session_data_unchecked::<Arc<RunState>>().clone();
    if state.profile.batch > 1 {
        return send_batch(user, &state).await;
    }
    let tx = state.next_tx();
    let began = Instant::now();
    match &state.target {
        Target::Http { api_key, .. } => {
            if state.profile.holds {
                return send_hold_then_capture(user, &state, api_key, tx).await;
            }
            post_one(user, &state, api_key, tx).await?;
        }
        Target::RedisScript { store } => {
            // One script per call: on a cluster, a transfer between slots
            // runs its first step only (the debit of its saga).
            let record = txengine::wire::Record {
                tx: to_domain(&tx).expect("the runner makes valid transactions"),
                accepted_at_ms: 0,
                saga: None,
            };
            match store.apply_records(std::slice::from_ref(&record)).await {
                Ok(_) => {
                    state.record(began, None);
                    state.transactions_ok.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => state.record(began, Some(format!("redis: {e}"))),
            }
        }
    }
    Ok(())
}

/// Posts `tx` alone (`POST /transactions`) and reads the answer into the
/// ledger; `Ok(true)` when it was accepted.
async fn post_one(
    user: &mut GooseUser,
    state: &RunState,
    api_key: &str,
    mut tx: SentTx,
) -> Result<bool, Box<goose::prelude::TransactionError>> {
    let began = Instant::now();
    let body = tx.request_body();
    state
        .in_flight
        .lock()
        .expect("in-flight lock")
        .insert(tx.id.clone(), tx.clone());
    let builder = user
        .get_request_builder(&GooseMethod::Post, "/transactions")?
        .header("authorization", format!("Bearer {api_key}"))
        .json(&body);
    let request = GooseRequest::builder()
        .method(GooseMethod::Post)
        .path("/transactions")
        .set_request_builder(builder)
        .build();
    let sent = user.request(request).await;
    state
        .in_flight
        .lock()
        .expect("in-flight lock")
        .remove(&tx.id);
    let mut goose = sent?;
    let status = goose.response.as_ref().map(|r| r.status().as_u16());
    match status {
        Ok(200 | 202) => {
            state.record(began, None);
            state.transactions_ok.fetch_add(1, Ordering::Relaxed);
            tx.accepted_at_ms = txengine::wire::now_ms();
            state.accepted.lock().expect("ledger lock").push(tx);
            Ok(true)
        }
        Ok(code) if code < 500 => {
            let kind = format!("http {code}");
            state.record(began, Some(kind.clone()));
            state.refused.lock().expect("ledger lock").push(tx.id);
            user.set_failure(&kind, &mut goose.request, None, None)?;
            Ok(false)
        }
        other => {
            // A 503 after a publish timeout, a timeout or a lost
            // connection: the record may still land and be applied.
            let kind = match other {
                Ok(code) => format!("http {code}"),
                Err(e) if e.is_timeout() => "timeout".to_owned(),
                Err(_) => "connection".to_owned(),
            };
            state.record(began, Some(kind.clone()));
            state.unanswered.lock().expect("ledger lock").push(tx);
            user.set_failure(&kind, &mut goose.request, None, None)?;
            Ok(false)
        }
    }
}

/// A hold of the drawn transaction's amount (for its `to`, when it is a
/// transfer), then, once it is accepted, its capture of all of it.
async fn send_hold_then_capture(
    user: &mut GooseUser,
    state: &RunState,
    api_key: &str,
    drawn: SentTx,
) -> TransactionResult {
    let to = drawn.to.clone().filter(|_| drawn.kind == Kind::Transfer);
    let hold = SentTx {
        kind: Kind::Hold {
            timeout_s: LOAD_HOLD_TIMEOUT_S,
        },
        to: to.clone(),
        ..drawn
    };
    let capture = SentTx {
        id: format!("{}-c", hold.id),
        kind: Kind::Capture,
        account: hold.account.clone(),
        to,
        amount: hold.amount,
        accepted_at_ms: 0,
        hold: Some(hold.id.clone()),
    };
    if post_one(user, state, api_key, hold).await? {
        post_one(user, state, api_key, capture).await?;
    }
    Ok(())
}

/// One request of `batch` transactions: `POST /transactions/batch`, each
/// item's result read into the ledger; or, for the Redis limit, one call of
/// the apply script's pipeline with that many records.
async fn send_batch(user: &mut GooseUser, state: &RunState) -> TransactionResult {
    let mut txs: Vec<SentTx> = (0..state.profile.batch).map(|_| state.next_tx()).collect();
    let began = Instant::now();
    let api_key = match &state.target {
        Target::Http { api_key, .. } => api_key,
        Target::RedisScript { store } => {
            let records: Vec<txengine::wire::Record> = txs
                .iter()
                .map(|tx| txengine::wire::Record {
                    tx: to_domain(tx).expect("the runner makes valid transactions"),
                    accepted_at_ms: 0,
                    saga: None,
                })
                .collect();
            match store.apply_records(&records).await {
                Ok(_) => {
                    state.record(began, None);
                    state
                        .transactions_ok
                        .fetch_add(records.len() as u64, Ordering::Relaxed);
                }
                Err(e) => state.record(began, Some(format!("redis: {e}"))),
            }
            return Ok(());
        }
    };
    let items: Vec<serde_json::Value> = txs.iter().map(SentTx::request_body).collect();
    {
        let mut in_flight = state.in_flight.lock().expect("in-flight lock");
        for tx in &txs {
            in_flight.insert(tx.id.clone(), tx.clone());
        }
    }
    let builder = user
        .get_request_builder(&GooseMethod::Post, "/transactions/batch")?
        .header("authorization", format!("Bearer {api_key}"))
        .json(&serde_json::json!({ "transactions": items }));
    let request = GooseRequest::builder()
        .method(GooseMethod::Post)
        .path("/transactions/batch")
        .set_request_builder(builder)
        .build();
    let sent = user.request(request).await;
    let mut goose = sent?;
    let answer = match goose.response {
        Ok(response) if response.status() == 200 => response
            .json::<serde_json::Value>()
            .await
            .map_err(|e| e.to_string()),
        Ok(response) => Err(format!("http {}", response.status().as_u16())),
        Err(e) if e.is_timeout() => Err("timeout".to_owned()),
        Err(_) => Err("connection".to_owned()),
    };
    {
        let mut in_flight = state.in_flight.lock().expect("in-flight lock");
        for tx in &txs {
            in_flight.remove(&tx.id);
        }
    }
    let results = answer.and_then(|answer| match answer["results"].as_array() {
        Some(results) if results.len() == txs.len() => Ok(results.clone()),
        _ => Err("a batch answer without one result per item".to_owned()),
    });
    let results = match results {
        Ok(results) => results,
        Err(kind) => {
            state.record(began, Some(kind.clone()));
            // A 4xx refused the whole batch; anything else may still land.
            let refused = kind.starts_with("http 4");
            if refused {
                let mut ledger = state.refused.lock().expect("ledger lock");
                ledger.extend(txs.into_iter().map(|tx| tx.id));
            } else {
                state.unanswered.lock().expect("ledger lock").extend(txs);
            }
            return user.set_failure(&kind, &mut goose.request, None, None);
        }
    };
    state.record(began, None);
    let accepted_at_ms = txengine::wire::now_ms();
    for (tx, result) in txs.iter_mut().zip(&results) {
        match result["status"].as_str().unwrap_or_default() {
            "pending" | "applied" | "rejected" => {
                tx.accepted_at_ms = accepted_at_ms;
                state.transactions_ok.fetch_add(1, Ordering::Relaxed);
                state.accepted.lock().expect("ledger lock").push(tx.clone());
            }
            // May still land (a publish that failed), or in flight.
            status @ ("unavailable" | "in_flight") => {
                state.count_error(format!("item {status}"));
                state
                    .unanswered
                    .lock()
                    .expect("ledger lock")
                    .push(tx.clone());
            }
            status => {
                state.count_error(format!("item {status}"));
                state
                    .refused
                    .lock()
                    .expect("ledger lock")
                    .push(tx.id.clone());
            }
        }
    }
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
    let host = match &target {
        Target::Http { base_url, .. } => base_url.clone(),
        // goose needs a host; this target makes no HTTP calls.
        Target::RedisScript { .. } => "http://127.0.0.1:9".to_owned(),
    };
    let progress = tokio::spawn(report_progress(
        state.clone(),
        name.to_owned(),
        profile.seconds,
    ));
    let attack = GooseAttack::initialize_with_config(GooseConfiguration::default())?
        .register_scenario(
            scenario!("Transactions")
                .register_transaction(transaction!(join_run).set_on_start())
                .register_transaction(transaction!(send_transaction).set_name("transaction")),
        )
        .set_default(GooseDefault::Host, host.as_str())?
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
    progress.abort();
    *current_run().lock().expect("run lock") = None;
    let run_seconds = state.started.elapsed().as_secs_f64();

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
    let ok = all.len() as usize;
    let errors_by_kind = std::mem::take(&mut *state.errors_by_kind.lock().expect("errors lock"));
    // Requests that failed (the errors by kind also count batch items).
    let failed: usize = timeline.iter().map(|second| second.errors).sum();
    let result = HttpResult {
        target: name.to_owned(),
        users: profile.users,
        seconds: run_seconds.round() as usize,
        requests: ok + failed,
        ok,
        errors_by_kind,
        rps: ok as f64 / run_seconds,
        batch: profile.batch,
        transactions_per_s: state.transactions_ok.load(Ordering::Relaxed) as f64 / run_seconds,
        latency_ms_p50: quantile_ms(&all, 0.50),
        latency_ms_p90: Some(quantile_ms(&all, 0.90)),
        latency_ms_p95: Some(quantile_ms(&all, 0.95)),
        latency_ms_p99: quantile_ms(&all, 0.99),
        latency_ms_max: all.max() as f64 / 1000.0,
    };
    let ledger = Ledger {
        start: HashMap::new(),
        accepted: std::mem::take(&mut *state.accepted.lock().expect("ledger lock")),
        refused: std::mem::take(&mut *state.refused.lock().expect("ledger lock")),
        uncertain: std::mem::take(&mut *state.in_flight.lock().expect("in-flight lock"))
            .into_values()
            .chain(std::mem::take(
                &mut *state.unanswered.lock().expect("ledger lock"),
            ))
            .collect(),
    };
    Ok(Driven {
        result,
        timeline,
        ledger,
    })
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

/// Publishes `count` transactions of the load mix straight into `topic`, as
/// the API would have, and returns them: a backlog for the consumers.
pub async fn publish_backlog(
    brokers: &str,
    topic: &str,
    profile: &LoadProfile,
    count: usize,
) -> anyhow::Result<Vec<SentTx>> {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "20")
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.messages", "1000000")
        .create()?;
    let state = RunState::new(
        Target::Http {
            base_url: String::new(),
            api_key: String::new(),
        },
        profile,
        "backlog",
    );
    let mut sent = Vec::with_capacity(count);
    let mut deliveries = Vec::with_capacity(10_000);
    for i in 0..count {
        let tx = state.next_tx();
        let record = txengine::wire::Record {
            tx: to_domain(&tx)?,
            accepted_at_ms: txengine::wire::now_ms(),
            saga: None,
        };
        let payload = record.encode();
        let delivery = producer
            .send_result(FutureRecord::to(topic).key(&tx.account).payload(&payload))
            .map_err(|(e, _)| e)?;
        deliveries.push(delivery);
        sent.push(tx);
        if deliveries.len() == 10_000 || i + 1 == count {
            for delivery in deliveries.drain(..) {
                delivery.await?.map_err(|(e, _)| e)?;
            }
        }
        if (i + 1) % 200_000 == 0 {
            eprintln!("  published {} of {count}", i + 1);
        }
    }
    Ok(sent)
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
