//! Invariants checked after a run, read straight from Redis (one Redis or a
//! cluster, where keys spread over slots):
//! - every accepted transaction has exactly one outcome (applied or rejected);
//! - every account's balance equals its start plus the applied movements
//!   (so money is conserved: transfers move it, credits and debits are counted);
//! - no balance is below 0 or above 2^53-1;
//! - no outcome exists for a refused request;
//! - every saga (a transfer between slots) ended: debited, then credited and
//!   released, or refused and refunded; a refund only where the credit was
//!   refused; its outcome is what its steps say; no money is left in flight
//!   or held;
//! - every hold ended once, as what ended it says (one applied capture of
//!   at most its amount, one void, or its expiry), none is left held long
//!   past its deadline, and each account's `pending` is the sum of its
//!   active holds and at most its balance;
//! - every outcome and saga step (applied with its `balance_after`, or
//!   rejected with its reason) is what a plain model gives when the log is
//!   replayed from the starting balances in the order each slot decided them
//!   (`seq`), and no step exists that the log does not explain (no gap in
//!   any slot's `seq`, so no step was applied twice);
//! - each account's history replays to its balance: every entry's
//!   `balance_after` is the sum of the deltas before it and its own, from 0,
//!   and no transaction is in one history twice with one status;
//! - the outcomes topic holds exactly these outcomes, each once after
//!   deduplication (see [`events`]).

mod events;

use std::collections::{HashMap, HashSet};

use anyhow::Context;

use redis::{Cmd, FromRedisValue};
use txengine::limits::MAX_MINOR_UNITS;
use txengine::store::{Connection, HistoryEntry, Layout};

use crate::infra::Infra;
use crate::model::{Books, SagaStep};
use crate::workload::{Kind, Ledger, SentTx};

#[derive(Debug, Default)]
pub struct Verdict {
    pub accepted: usize,
    pub applied: usize,
    pub rejected: usize,
    pub rejected_by_reason: HashMap<String, usize>,
    pub start_total: u128,
    pub end_total: u128,
    /// Transfers between slots among the accepted (0 on one Redis).
    pub sagas: usize,
    /// Money debited by sagas and neither credited nor refunded at the end.
    pub in_flight: u128,
    /// The holds of the ledger by how they stand: held, captured, voided,
    /// expired, rejected.
    pub hold_ends: std::collections::BTreeMap<String, usize>,
    /// From the client's 2xx to the apply (Redis clock), over tracked transactions.
    /// `None` when no accepted transaction carried a client timestamp.
    pub accept_to_applied_ms_p50: Option<f64>,
    pub accept_to_applied_ms_p99: Option<f64>,
    /// Latest apply time seen (ms since the epoch), for apply rates.
    pub last_applied_at_ms: u64,
    /// When each accepted transaction's outcome was decided (the
    /// consumer's clock), for apply rates over a window.
    pub settled_at_ms: Vec<u64>,
    /// Human-readable descriptions of every broken invariant (empty: all held).
    pub violations: Vec<String>,
}

impl Verdict {
    pub fn holds(&self) -> bool {
        self.violations.is_empty()
    }
}

/// Reads Redis with the engine's own connection type, in pipelines per slot.
struct Reader {
    conn: Connection,
    layout: Layout,
}

impl Reader {
    /// Runs `commands` (each with the shard it goes to), in chunks.
    async fn query<T: FromRedisValue>(&self, commands: Vec<(u32, Cmd)>) -> anyhow::Result<Vec<T>> {
        let mut answers = Vec::with_capacity(commands.len());
        let mut commands = commands.into_iter();
        loop {
            let chunk: Vec<(u32, Cmd)> = commands.by_ref().take(5000).collect();
            if chunk.is_empty() {
                return Ok(answers);
            }
            answers.extend(self.conn.run_by_slot(chunk).await?);
        }
    }

    /// HMGET of `key`, which lives in `owner`'s shard (an account or an id).
    fn hmget(&self, owner: &str, key: String, fields: &[&str]) -> (u32, Cmd) {
        let mut cmd = redis::cmd("HMGET");
        cmd.arg(key).arg(fields);
        (self.layout.shard_of(owner), cmd)
    }

    /// HMGET of `fields` of transaction `id`'s record.
    fn tx_fields(&self, id: &str, fields: &[&str]) -> (u32, Cmd) {
        self.hmget(id, self.layout.tx(id), fields)
    }

    /// The `state` of transaction `id`'s record.
    fn tx_state(&self, id: &str) -> (u32, Cmd) {
        let mut cmd = redis::cmd("HGET");
        cmd.arg(self.layout.tx(id)).arg("state");
        (self.layout.shard_of(id), cmd)
    }

    fn get(&self, owner: &str, key: String) -> (u32, Cmd) {
        let mut cmd = redis::cmd("GET");
        cmd.arg(key);
        (self.layout.shard_of(owner), cmd)
    }
}

/// Reads outcomes, balances and histories from `infra`'s Redis (keys under
/// the engine's namespace) and checks the ledger against them. Only a
/// failure to read is an `Err`.
pub async fn check(
    infra: &Infra,
    engine: &txengine::config::Config,
    ledger: &Ledger,
) -> anyhow::Result<Verdict> {
    let namespace = engine.namespace.as_str();
    let topology = infra.redis_topology;
    let conn = Connection::open(
        &infra.redis_url,
        topology,
        std::time::Duration::from_secs(10),
    )
    .await
    .context("redis")?;
    let reader = Reader {
        conn,
        layout: Layout::new(namespace, topology),
    };
    let layout = &reader.layout;

    let mut verdict = Verdict {
        accepted: ledger.accepted.len(),
        ..Verdict::default()
    };
    let mut expected: HashMap<&str, i128> = ledger
        .start
        .iter()
        .map(|(a, b)| (a.as_str(), *b as i128))
        .collect();

    let mut accept_to_applied_ms = crate::measure::precise_histogram();
    let states: Vec<Option<String>> = reader
        .query(
            ledger
                .uncertain
                .iter()
                .map(|tx| reader.tx_state(&tx.id))
                .collect(),
        )
        .await?;
    for (tx, state) in ledger.uncertain.iter().zip(states) {
        if state.as_deref() == Some("applied") {
            apply_to(&mut expected, tx);
        }
    }
    type Row = (Option<String>, Option<String>, Option<u64>);
    let rows: Vec<Row> = reader
        .query(
            ledger
                .accepted
                .iter()
                .map(|tx| reader.tx_fields(&tx.id, &["state", "reason", "applied_at_ms"]))
                .collect(),
        )
        .await?;
    for (tx, (state, reason, applied_at_ms)) in ledger.accepted.iter().zip(rows) {
        if let Some(applied) = applied_at_ms {
            verdict.last_applied_at_ms = verdict.last_applied_at_ms.max(applied);
            verdict.settled_at_ms.push(applied);
            if tx.accepted_at_ms > 0 {
                accept_to_applied_ms.saturating_record(applied.saturating_sub(tx.accepted_at_ms));
            }
        }
        match state.as_deref() {
            Some("applied") => {
                verdict.applied += 1;
                apply_to(&mut expected, tx);
            }
            Some("rejected") => {
                verdict.rejected += 1;
                *verdict
                    .rejected_by_reason
                    .entry(reason.unwrap_or_default())
                    .or_default() += 1;
            }
            other => verdict.violations.push(format!(
                "accepted {} {} {}->{:?} {} has no outcome (state {other:?})",
                tx.id,
                tx.kind.as_str(),
                tx.account,
                tx.to,
                tx.amount
            )),
        }
    }

    let percentile = |quantile| {
        (!accept_to_applied_ms.is_empty())
            .then(|| accept_to_applied_ms.value_at_quantile(quantile) as f64)
    };
    verdict.accept_to_applied_ms_p50 = percentile(0.50);
    verdict.accept_to_applied_ms_p99 = percentile(0.99);

    let states: Vec<Option<String>> = reader
        .query(
            ledger
                .refused
                .iter()
                .map(|id| reader.tx_state(id))
                .collect(),
        )
        .await?;
    for (id, state) in ledger.refused.iter().zip(states) {
        if let Some(state @ ("applied" | "rejected" | "pending")) = state.as_deref() {
            verdict
                .violations
                .push(format!("refused request {id} has state {state}"));
        }
    }

    let steps = read_steps(&reader, ledger).await?;
    check_sagas(&reader, ledger, &steps, &mut verdict).await?;
    let holds = read_holds(&reader, ledger).await?;
    check_holds(&reader, ledger, &holds, &mut verdict).await?;
    verdict
        .violations
        .extend(replay_in_apply_order(&reader, ledger, &steps, &holds).await?);

    let accounts: Vec<&str> = expected.keys().copied().collect();
    let mut history_balances = Vec::new();
    let balances: Vec<Option<String>> = reader
        .query(
            accounts
                .iter()
                .map(|a| reader.get(a, layout.balance(a)))
                .collect(),
        )
        .await?;
    for (account, balance) in accounts.iter().zip(balances) {
        let want = expected[account];
        let start = ledger.start.get(*account).copied();
        verdict.start_total += start.unwrap_or(0) as u128;
        match balance.as_deref().map(str::parse::<i128>) {
            None if start.is_none() && want == 0 => {}
            None => verdict.violations.push(format!(
                "account {account} is missing; expected balance {want}"
            )),
            Some(Err(_)) => verdict
                .violations
                .push(format!("account {account} holds a non-integer {balance:?}")),
            Some(Ok(have)) => {
                if engine.history_retention_secs() > 0 {
                    history_balances.push((*account, have));
                }
                verdict.end_total += have.max(0) as u128;
                if have < 0 || have > MAX_MINOR_UNITS as i128 {
                    verdict.violations.push(format!(
                        "account {account} balance {have} is out of 0..=2^53-1"
                    ));
                }
                if have != want {
                    let involved: Vec<&str> = ledger
                        .accepted
                        .iter()
                        .filter(|t| t.account == *account || t.to.as_deref() == Some(*account))
                        .take(20)
                        .map(|t| t.id.as_str())
                        .collect();
                    verdict.violations.push(format!(
                        "account {account}: balance {have}, expected {want} from start {start:?} and the log; \
                         transactions involved (first 20): {involved:?}"
                    ));
                }
            }
        }
    }
    check_histories(&reader, &history_balances, &mut verdict).await?;
    if engine.outcome_events {
        verdict.violations.extend(
            events::check_outcome_events(
                &reader,
                &engine.kafka_brokers,
                &engine.outcomes_topic,
                ledger,
            )
            .await?,
        );
    }
    Ok(verdict)
}

/// Each account's history replays to its balance: from 0 (a scenario runs
/// well within the retention, so nothing was trimmed), every entry's
/// `balance_after` is the sum of the deltas so far, and the last is the
/// balance now; no transaction has two entries of one status in it.
async fn check_histories(
    reader: &Reader,
    balances: &[(&str, i128)],
    verdict: &mut Verdict,
) -> anyhow::Result<()> {
    type Entry = (String, Vec<String>);
    let histories: Vec<Vec<Entry>> = reader
        .query(
            balances
                .iter()
                .map(|(account, _)| {
                    let mut cmd = redis::cmd("XRANGE");
                    cmd.arg(reader.layout.history(account)).arg("-").arg("+");
                    (reader.layout.shard_of(account), cmd)
                })
                .collect(),
        )
        .await?;
    for ((account, balance), history) in balances.iter().zip(histories) {
        let entries = history.len();
        let mut replayed: i128 = 0;
        let mut seen = HashSet::new();
        for (position, fields) in history {
            let entry = match HistoryEntry::parse(position, &fields) {
                Ok(entry) => entry,
                Err(e) => {
                    verdict
                        .violations
                        .push(format!("account {account}: a history entry unread: {e}"));
                    break;
                }
            };
            replayed += i128::from(entry.delta);
            if i128::from(entry.balance_after) != replayed {
                verdict.violations.push(format!(
                    "account {account}: history entry {} ({} {} {}) says balance_after {}, \
                     its entries replay to {replayed}",
                    entry.position,
                    entry.id.as_deref().unwrap_or_default(),
                    entry.kind,
                    entry.status,
                    entry.balance_after
                ));
                break;
            }
            if let Some(id) = &entry.id {
                if !seen.insert((id.clone(), entry.status.clone())) {
                    verdict.violations.push(format!(
                        "account {account}: {id} is in its history twice as {}",
                        entry.status
                    ));
                }
            }
        }
        if replayed != *balance {
            verdict.violations.push(format!(
                "account {account}: its {entries} history entries replay to {replayed}, its balance is {balance}"
            ));
        }
    }
    Ok(())
}

/// Moves `tx`'s amount in the expected balances.
fn apply_to<'a>(expected: &mut HashMap<&'a str, i128>, tx: &'a SentTx) {
    let amount = tx.amount as i128;
    match tx.kind {
        Kind::Debit => *expected.entry(&tx.account).or_default() -= amount,
        Kind::Credit => *expected.entry(&tx.account).or_default() += amount,
        Kind::Transfer | Kind::Capture => {
            *expected.entry(&tx.account).or_default() -= amount;
            if let Some(to) = tx.to.as_deref() {
                *expected.entry(to).or_default() += amount;
            }
        }
        // A hold moves no balance; a void releases it.
        Kind::Hold { .. } | Kind::Void => {}
    }
}

/// What one flag (an apply's, or a saga step's) recorded.
#[derive(Debug, Clone, Default)]
struct Flag {
    seq: Option<u64>,
    state: Option<String>,
    reason: String,
    balance_after: Option<u64>,
}

/// The flags of one transaction: one apply, or the steps of its saga.
enum Steps {
    Apply(Flag),
    Saga {
        debit: Flag,
        credit: Flag,
        settle: Flag,
    },
}

impl Steps {
    /// Every recorded step: the shard-owning account, the step (None for
    /// a one-script apply) and its flag.
    fn recorded<'a>(&'a self, tx: &'a SentTx) -> Vec<(&'a str, Option<SagaStep>, &'a Flag)> {
        let to = tx.to.as_deref().unwrap_or_default();
        let all = match self {
            Steps::Apply(flag) => vec![(tx.account.as_str(), None, flag)],
            Steps::Saga {
                debit,
                credit,
                settle,
            } => {
                let settle_step = if settle.state.as_deref() == Some("refunded") {
                    SagaStep::Refund
                } else {
                    SagaStep::Release
                };
                vec![
                    (tx.account.as_str(), Some(SagaStep::Debit), debit),
                    (to, Some(SagaStep::Credit), credit),
                    (tx.account.as_str(), Some(settle_step), settle),
                ]
            }
        };
        all.into_iter()
            .filter(|(_, _, f)| f.seq.is_some())
            .collect()
    }
}

/// Reads the flags of every transaction of the ledger that may have been
/// applied (accepted and uncertain), in ledger order.
async fn read_steps<'l>(
    reader: &Reader,
    ledger: &'l Ledger,
) -> anyhow::Result<Vec<(&'l SentTx, Steps)>> {
    let layout = &reader.layout;
    let all: Vec<&SentTx> = ledger.accepted.iter().chain(&ledger.uncertain).collect();
    const FIELDS: [&str; 4] = ["seq", "state", "reason", "balance_after"];
    let mut commands = Vec::new();
    for tx in &all {
        match tx.credited() {
            Some(to) if !layout.same_slot(&tx.account, to) => {
                commands.push(reader.hmget(
                    &tx.account,
                    layout.step(&tx.account, &tx.id, "debit"),
                    &FIELDS,
                ));
                commands.push(reader.hmget(to, layout.step(to, &tx.id, "credit"), &FIELDS));
                commands.push(reader.hmget(
                    &tx.account,
                    layout.step(&tx.account, &tx.id, "settle"),
                    &FIELDS,
                ));
            }
            _ => commands.push(reader.hmget(
                &tx.account,
                layout.apply_flag(&tx.id, &tx.account),
                &FIELDS,
            )),
        }
    }
    // balance_after is "" on a rejection.
    type Row = (Option<u64>, Option<String>, Option<String>, Option<String>);
    let rows: Vec<Row> = reader.query(commands).await?;
    let mut flags = rows
        .into_iter()
        .map(|(seq, state, reason, balance_after)| Flag {
            seq,
            state,
            reason: reason.unwrap_or_default(),
            balance_after: balance_after.and_then(|b| b.parse().ok()),
        });
    let mut next = || flags.next().unwrap_or_default();
    Ok(all
        .into_iter()
        .map(|tx| {
            let steps = match tx.credited() {
                Some(to) if !layout.same_slot(&tx.account, to) => Steps::Saga {
                    debit: next(),
                    credit: next(),
                    settle: next(),
                },
                _ => Steps::Apply(next()),
            };
            (tx, steps)
        })
        .collect())
}

/// Every saga ended, a refund only after a refused credit, each outcome is
/// what its steps say, and nothing is in flight or held.
async fn check_sagas(
    reader: &Reader,
    ledger: &Ledger,
    steps: &[(&SentTx, Steps)],
    verdict: &mut Verdict,
) -> anyhow::Result<()> {
    let layout = &reader.layout;
    let sagas: Vec<(&SentTx, &Flag, &Flag, &Flag)> = steps
        .iter()
        .filter_map(|(tx, steps)| match steps {
            Steps::Saga {
                debit,
                credit,
                settle,
            } => Some((*tx, debit, credit, settle)),
            Steps::Apply(_) => None,
        })
        .collect();
    let outcomes: Vec<(Option<String>, Option<String>, Option<String>)> = reader
        .query(
            sagas
                .iter()
                .map(|(tx, ..)| reader.tx_fields(&tx.id, &["state", "reason", "balance_after"]))
                .collect(),
        )
        .await?;
    let accepted: std::collections::HashSet<&str> =
        ledger.accepted.iter().map(|t| t.id.as_str()).collect();
    for ((tx, debit_flag, credit_flag, settle), (state, reason, balance_after)) in
        sagas.iter().zip(outcomes)
    {
        if accepted.contains(tx.id.as_str()) {
            verdict.sagas += 1;
        }
        let (debit, credit, settle) = (
            debit_flag.state.as_deref(),
            credit_flag.state.as_deref(),
            settle.state.as_deref(),
        );
        let mut broken = |what: String| {
            verdict.violations.push(format!(
                "saga {} ({} -> {:?} {}): {what}; steps debit {debit:?} credit {credit:?} settle {settle:?}, outcome {state:?} {reason:?}",
                tx.id, tx.account, tx.to, tx.amount
            ))
        };
        let in_flight =
            debit == Some("debited") && credit != Some("credited") && settle != Some("refunded");
        if in_flight {
            verdict.in_flight += u128::from(tx.amount);
        }
        match (debit, credit, settle) {
            (None, None, None) => {}
            (Some("rejected"), None, None) => {
                if state.as_deref() != Some("rejected")
                    || reason.as_deref() != Some(debit_flag.reason.as_str())
                {
                    broken("a refused debit must end the saga as rejected with its reason".into());
                }
            }
            (Some("debited"), Some("credited"), Some("released")) => {
                if state.as_deref() != Some("applied")
                    || balance_after.as_deref().and_then(|b| b.parse().ok())
                        != debit_flag.balance_after
                {
                    broken("a released saga must be applied with the debit's balance_after".into());
                }
            }
            (Some("debited"), Some("refused"), Some("refunded")) => {
                if state.as_deref() != Some("rejected")
                    || reason.as_deref() != Some(credit_flag.reason.as_str())
                {
                    broken("a refunded saga must be rejected with the credit's reason".into());
                }
            }
            (Some("debited"), Some("credited"), None)
            | (Some("debited"), Some("refused"), None)
            | (Some("debited"), None, None) => broken("the saga did not end".into()),
            _ => {
                broken("these steps do not make a saga (a refund without a refused credit?)".into())
            }
        }
    }
    let accounts: Vec<&String> = ledger.start.keys().collect();
    let held: Vec<Option<u64>> = reader
        .query(
            accounts
                .iter()
                .map(|a| reader.get(a, layout.held(a)))
                .collect(),
        )
        .await?;
    for (account, held) in accounts.iter().zip(held) {
        if let Some(held) = held.filter(|h| *h != 0) {
            verdict.violations.push(format!(
                "account {account} still holds {held} for sagas that ended"
            ));
        }
    }
    Ok(())
}

/// Replays every recorded step of the ledger, slot by slot in the order
/// each slot decided them, with a plain model of the rules, and returns
/// where Redis disagrees with it.
async fn replay_in_apply_order(
    reader: &Reader,
    ledger: &Ledger,
    steps: &[(&SentTx, Steps)],
    holds: &[(&SentTx, Option<HoldRow>)],
) -> anyhow::Result<Vec<String>> {
    let layout = &reader.layout;
    // Per shard: (seq, transaction, what happened: a step, with None for
    // one script, and its flag; or the end of a hold, as its record says).
    enum Happened<'a> {
        Step(Option<SagaStep>, &'a Flag),
        End(&'a str),
    }
    type Event<'a> = (u64, &'a SentTx, Happened<'a>);
    let mut by_shard: HashMap<u32, Vec<Event>> = HashMap::new();
    for (tx, steps) in steps {
        for (owner, step, flag) in steps.recorded(tx) {
            let seq = flag.seq.unwrap_or_default();
            by_shard.entry(layout.shard_of(owner)).or_default().push((
                seq,
                tx,
                Happened::Step(step, flag),
            ));
        }
    }
    for (hold, row) in holds {
        if let Some(
            row @ HoldRow {
                ended_seq: Some(seq),
                ..
            },
        ) = row
        {
            by_shard
                .entry(layout.shard_of(&hold.account))
                .or_default()
                .push((*seq, hold, Happened::End(row.state.as_str())));
        }
    }
    let mut violations = Vec::new();
    let shards: Vec<u32> = (0..layout.shards()).collect();
    let decided: Vec<Option<u64>> = reader
        .query(
            shards
                .iter()
                .map(|shard| {
                    let mut cmd = redis::cmd("GET");
                    cmd.arg(layout.seq(*shard));
                    (*shard, cmd)
                })
                .collect(),
        )
        .await?;
    for (shard, decided) in shards.iter().zip(decided) {
        let explained = by_shard.get(shard).map_or(0, Vec::len) as u64;
        if decided.unwrap_or(0) != explained {
            violations.push(format!(
                "{} outcomes and saga steps were decided in {}, but the log explains {explained}",
                decided.unwrap_or(0),
                layout.tag(*shard)
            ));
        }
    }
    if !violations.is_empty() {
        return Ok(violations);
    }
    let mut books = Books::new(ledger.start.clone());
    let mut shards: Vec<_> = by_shard.into_iter().collect();
    shards.sort_by_key(|(shard, _)| *shard);
    for (_, mut events) in shards {
        events.sort_by_key(|(seq, ..)| *seq);
        for (seq, tx, happened) in events {
            let (step, flag) = match happened {
                Happened::Step(step, flag) => (step, flag),
                Happened::End(state) => {
                    if let Err(e) = crate::model::end_hold(&mut books, &tx.id, &tx.account, state) {
                        violations.push(format!("seq {seq}: {e}"));
                    }
                    continue;
                }
            };
            let (model, ok_state, refused_state) = match step {
                None => (crate::model::decide(&mut books, tx), "applied", "rejected"),
                Some(step) => {
                    let (ok, refused) = step.states();
                    (crate::model::decide_step(&mut books, tx, step), ok, refused)
                }
            };
            let state = flag.state.as_deref().unwrap_or_default();
            let agrees = match model {
                Ok(after) => state == ok_state && flag.balance_after == Some(after),
                Err(reason) => state == refused_state && flag.reason == reason,
            };
            if !agrees {
                violations.push(format!(
                    "{} {step:?} (seq {seq}, {} {} -> {:?} {}): recorded {state} {} balance_after {:?}, a replay in apply order gives {model:?}",
                    tx.id, tx.kind.as_str(), tx.account, tx.to, tx.amount, flag.reason, flag.balance_after
                ));
                if violations.len() >= 50 {
                    return Ok(violations);
                }
            }
        }
    }
    Ok(violations)
}

/// A hold as Redis keeps it (`{tag}:hold:<id>`).
#[derive(Debug, Clone)]
struct HoldRow {
    state: String,
    amount: u64,
    captured: Option<u64>,
    deadline_ms: Option<u64>,
    ended_ms: Option<u64>,
    ended_seq: Option<u64>,
}

/// The record of every hold of the ledger (accepted and uncertain), in
/// ledger order; `None` where Redis has none.
async fn read_holds<'l>(
    reader: &Reader,
    ledger: &'l Ledger,
) -> anyhow::Result<Vec<(&'l SentTx, Option<HoldRow>)>> {
    let layout = &reader.layout;
    let holds: Vec<&SentTx> = ledger
        .accepted
        .iter()
        .chain(&ledger.uncertain)
        .filter(|tx| matches!(tx.kind, Kind::Hold { .. }))
        .collect();
    type Row = (
        Option<String>,
        Option<u64>,
        Option<u64>,
        Option<u64>,
        Option<u64>,
        Option<u64>,
    );
    let rows: Vec<Row> = reader
        .query(
            holds
                .iter()
                .map(|tx| {
                    reader.hmget(
                        &tx.account,
                        layout.hold(&tx.account, &tx.id),
                        &[
                            "state",
                            "amount",
                            "captured",
                            "deadline_ms",
                            "ended_ms",
                            "ended_seq",
                        ],
                    )
                })
                .collect(),
        )
        .await?;
    Ok(holds
        .into_iter()
        .zip(rows)
        .map(
            |(tx, (state, amount, captured, deadline_ms, ended_ms, ended_seq))| {
                let row = state.map(|state| HoldRow {
                    state,
                    amount: amount.unwrap_or(0),
                    captured,
                    deadline_ms,
                    ended_ms,
                    ended_seq,
                });
                (tx, row)
            },
        )
        .collect())
}

/// How long past its deadline a hold may still read `held` at the check:
/// the expirer's scan and the consumers' lag, with room for a busy machine.
const EXPIRY_GRACE_MS: u64 = 60_000;

/// Every hold ended once, as what ended it says: a captured hold by one
/// applied capture of at most its amount, a voided one by one applied void
/// (or a capture whose saga was refunded), an expired or held one by none;
/// a rejected hold holds nothing; no hold reads `held` long past its
/// deadline, none is left `capturing`; and each account's `pending` is the
/// sum of its active holds, at most its balance.
async fn check_holds(
    reader: &Reader,
    ledger: &Ledger,
    holds: &[(&SentTx, Option<HoldRow>)],
    verdict: &mut Verdict,
) -> anyhow::Result<()> {
    let layout = &reader.layout;
    let ends: Vec<&SentTx> = ledger
        .accepted
        .iter()
        .chain(&ledger.uncertain)
        .filter(|tx| matches!(tx.kind, Kind::Capture | Kind::Void))
        .collect();
    let states: Vec<(Option<String>, Option<String>)> = reader
        .query(
            ends.iter()
                .map(|tx| reader.tx_fields(&tx.id, &["state", "reason"]))
                .collect(),
        )
        .await?;
    // Per hold: the amounts of its applied captures, and its applied voids.
    let mut applied: HashMap<&str, (Vec<u64>, usize)> = HashMap::new();
    // Holds a capture's saga gave back (its credit refused): voided by it.
    let mut refunded: std::collections::HashSet<&str> = Default::default();
    for (tx, (state, reason)) in ends.iter().zip(states) {
        let hold = tx.hold.as_deref().unwrap_or_default();
        if state.as_deref() == Some("applied") {
            let entry = applied.entry(hold).or_default();
            match tx.kind {
                Kind::Capture => entry.0.push(tx.amount),
                _ => entry.1 += 1,
            }
        }
        let credit_refused = matches!(
            reason.as_deref(),
            Some("unknown_account" | "balance_overflow")
        );
        if tx.kind == Kind::Capture && state.as_deref() == Some("rejected") && credit_refused {
            refunded.insert(hold);
        }
    }
    let outcomes: Vec<Option<String>> = reader
        .query(
            holds
                .iter()
                .map(|(tx, _)| reader.tx_state(&tx.id))
                .collect(),
        )
        .await?;
    let now_ms = txengine::wire::now_ms();
    let mut pending_of: HashMap<&str, u64> = HashMap::new();
    for ((tx, row), outcome) in holds.iter().zip(outcomes) {
        let (captures, voids) = applied.remove(tx.id.as_str()).unwrap_or_default();
        let mut broken = |what: &str| {
            verdict.violations.push(format!(
                "hold {} ({} -> {:?} {}): {what}; record {row:?}, outcome {outcome:?}, applied captures {captures:?}, voids {voids}",
                tx.id, tx.account, tx.to, tx.amount
            ))
        };
        let Some(row) = row else {
            if outcome.is_some() {
                broken("its outcome is set but its record is gone");
            }
            continue;
        };
        *verdict.hold_ends.entry(row.state.clone()).or_default() += 1;
        if row.amount != tx.amount {
            broken("its record holds another amount");
        }
        match (outcome.as_deref(), row.state.as_str()) {
            (Some("rejected"), "rejected") => {
                if !captures.is_empty() || voids > 0 {
                    broken("a rejected hold was captured or voided");
                }
                continue;
            }
            (Some("applied"), _) => {}
            _ => {
                broken("its outcome and its record disagree");
                continue;
            }
        }
        match row.state.as_str() {
            "held" => {
                *pending_of.entry(tx.account.as_str()).or_default() += row.amount;
                if !captures.is_empty() || voids > 0 {
                    broken("still held after an applied capture or void");
                }
                if row
                    .deadline_ms
                    .is_none_or(|deadline| now_ms > deadline + EXPIRY_GRACE_MS)
                {
                    broken("still held long past its deadline");
                }
            }
            "captured" => {
                if captures.len() != 1
                    || voids > 0
                    || row.captured != Some(captures[0])
                    || captures[0] > row.amount
                {
                    broken("captured, but not by exactly one applied capture of what it records");
                }
            }
            "voided" => {
                let by_refund = voids == 0 && refunded.contains(tx.id.as_str());
                if !captures.is_empty() || !(voids == 1 || by_refund) {
                    broken("voided, but not by exactly one applied void (nor a refunded capture)");
                }
            }
            "expired" => {
                if !captures.is_empty() || voids > 0 {
                    broken("expired, but a capture or void applied");
                }
                if row
                    .ended_ms
                    .zip(row.deadline_ms)
                    .is_none_or(|(end, due)| end < due)
                {
                    broken("expired before its deadline");
                }
            }
            "capturing" => broken("its capture's saga did not end"),
            _ => broken("an unknown state"),
        }
        if row.state != "held" && row.ended_seq.is_none() {
            broken("ended without a place in its slot's order");
        }
    }
    for (hold, (captures, voids)) in applied {
        verdict.violations.push(format!(
            "captures {captures:?} and {voids} voids applied for {hold}, a hold the ledger does not know"
        ));
    }
    let accounts: Vec<&String> = ledger.start.keys().collect();
    let rows: Vec<(Option<u64>, Option<u64>)> = reader
        .query(
            accounts
                .iter()
                .map(|a| {
                    let mut cmd = redis::cmd("MGET");
                    cmd.arg(layout.pending(a)).arg(layout.balance(a));
                    (layout.shard_of(a), cmd)
                })
                .collect(),
        )
        .await?;
    for (account, (pending, balance)) in accounts.iter().zip(rows) {
        let pending = pending.unwrap_or(0);
        let active = pending_of.get(account.as_str()).copied().unwrap_or(0);
        if pending != active {
            verdict.violations.push(format!(
                "account {account}: pending {pending}, but its active holds keep {active}"
            ));
        }
        if pending > balance.unwrap_or(0) {
            verdict.violations.push(format!(
                "account {account}: pending {pending} above its balance {balance:?} (available below 0)"
            ));
        }
    }
    Ok(())
}
