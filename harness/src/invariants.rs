//! Invariants checked after a run, read straight from Redis:
//! - every accepted transaction has exactly one outcome (applied or rejected);
//! - every account's balance equals its start plus the applied movements
//!   (so money is conserved: transfers move it, credits and debits are counted);
//! - no balance is below 0 or above 2^53-1;
//! - no outcome exists for a refused request;
//! - every outcome (applied with its `balance_after`, or rejected with its
//!   reason) is what a plain model gives when the log is replayed from the
//!   starting balances in the order the outcomes were decided (`seq`), and
//!   no outcome exists that the log does not explain (no gap in `seq`).

use std::collections::HashMap;

use anyhow::Context;
use txengine::domain::MAX_MINOR_UNITS;
use txengine::store::keys;

use crate::workload::{Kind, Ledger, SentTx};

#[derive(Debug, Default)]
pub struct Verdict {
    pub accepted: usize,
    pub applied: usize,
    pub rejected: usize,
    pub rejected_by_reason: HashMap<String, usize>,
    pub start_total: u128,
    pub end_total: u128,
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

/// Reads outcomes and balances from Redis (keys under `namespace`) and checks
/// the ledger against them. Only a failure to read is an `Err`.
pub async fn check(redis_url: &str, namespace: &str, ledger: &Ledger) -> anyhow::Result<Verdict> {
    let client = redis::Client::open(redis_url)?;
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .context("redis")?;
    let tx_key = |id: &str| keys::tx(namespace, id);
    let bal_key = |account: &str| keys::balance(namespace, account);

    let mut verdict = Verdict {
        accepted: ledger.accepted.len(),
        ..Verdict::default()
    };
    let mut expected: HashMap<&str, i128> = ledger
        .start
        .iter()
        .map(|(a, b)| (a.as_str(), *b as i128))
        .collect();

    let mut accept_to_applied_ms = crate::load::precise_histogram();
    for chunk in ledger.uncertain.chunks(2000) {
        let mut pipe = redis::pipe();
        for tx in chunk {
            pipe.cmd("HGET").arg(tx_key(&tx.id)).arg("state");
        }
        let states: Vec<Option<String>> = pipe.query_async(&mut conn).await?;
        for (tx, state) in chunk.iter().zip(states) {
            if state.as_deref() == Some("applied") {
                apply_to(&mut expected, tx);
            }
        }
    }
    for chunk in ledger.accepted.chunks(2000) {
        let mut pipe = redis::pipe();
        for tx in chunk {
            pipe.cmd("HMGET")
                .arg(tx_key(&tx.id))
                .arg("state")
                .arg("reason")
                .arg("applied_at_ms");
        }
        type Row = (Option<String>, Option<String>, Option<u64>);
        let states: Vec<Row> = pipe.query_async(&mut conn).await?;
        for (tx, (state, reason, applied_at_ms)) in chunk.iter().zip(states) {
            if let Some(applied) = applied_at_ms {
                verdict.last_applied_at_ms = verdict.last_applied_at_ms.max(applied);
                verdict.settled_at_ms.push(applied);
                if tx.accepted_at_ms > 0 {
                    accept_to_applied_ms
                        .saturating_record(applied.saturating_sub(tx.accepted_at_ms));
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
    }

    let percentile = |quantile| {
        (!accept_to_applied_ms.is_empty())
            .then(|| accept_to_applied_ms.value_at_quantile(quantile) as f64)
    };
    verdict.accept_to_applied_ms_p50 = percentile(0.50);
    verdict.accept_to_applied_ms_p99 = percentile(0.99);

    for chunk in ledger.refused.chunks(2000) {
        let mut pipe = redis::pipe();
        for id in chunk {
            pipe.cmd("HGET").arg(tx_key(id)).arg("state");
        }
        let states: Vec<Option<String>> = pipe.query_async(&mut conn).await?;
        for (id, state) in chunk.iter().zip(states) {
            if let Some(state @ ("applied" | "rejected" | "pending")) = state.as_deref() {
                verdict
                    .violations
                    .push(format!("refused request {id} has state {state}"));
            }
        }
    }

    verdict
        .violations
        .extend(replay_in_apply_order(&mut conn, namespace, ledger).await?);

    let accounts: Vec<&str> = expected.keys().copied().collect();
    for chunk in accounts.chunks(2000) {
        let keys: Vec<String> = chunk.iter().map(|a| bal_key(a)).collect();
        let balances: Vec<Option<String>> =
            redis::cmd("MGET").arg(&keys).query_async(&mut conn).await?;
        for (account, balance) in chunk.iter().zip(balances) {
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
    }
    Ok(verdict)
}

/// Moves `tx`'s amount in the expected balances.
fn apply_to<'a>(expected: &mut HashMap<&'a str, i128>, tx: &'a SentTx) {
    let amount = tx.amount as i128;
    match tx.kind {
        Kind::Debit => *expected.entry(&tx.account).or_default() -= amount,
        Kind::Credit => *expected.entry(&tx.account).or_default() += amount,
        Kind::Transfer => {
            *expected.entry(&tx.account).or_default() -= amount;
            *expected
                .entry(tx.to.as_deref().unwrap_or_default())
                .or_default() += amount;
        }
    }
}

/// One settled transaction as Redis recorded it.
struct Recorded<'a> {
    tx: &'a SentTx,
    seq: u64,
    state: String,
    reason: String,
    balance_after: Option<u64>,
}

/// Replays every settled transaction of the ledger in apply order with a
/// plain model of the rules and returns where Redis disagrees with it.
async fn replay_in_apply_order(
    conn: &mut redis::aio::MultiplexedConnection,
    namespace: &str,
    ledger: &Ledger,
) -> anyhow::Result<Vec<String>> {
    let mut recorded = Vec::new();
    let all: Vec<&SentTx> = ledger.accepted.iter().chain(&ledger.uncertain).collect();
    for chunk in all.chunks(2000) {
        let mut pipe = redis::pipe();
        for tx in chunk {
            pipe.cmd("HMGET")
                .arg(keys::tx(namespace, &tx.id))
                .arg("seq")
                .arg("state")
                .arg("reason")
                .arg("balance_after");
        }
        // balance_after is "" on a rejection.
        type Row = (Option<u64>, Option<String>, Option<String>, Option<String>);
        let rows: Vec<Row> = pipe.query_async(conn).await?;
        for (tx, (seq, state, reason, balance_after)) in chunk.iter().zip(rows) {
            if let (Some(seq), Some(state)) = (seq, state) {
                let reason = reason.unwrap_or_default();
                let balance_after = balance_after.and_then(|b| b.parse().ok());
                recorded.push(Recorded {
                    tx,
                    seq,
                    state,
                    reason,
                    balance_after,
                });
            }
        }
    }
    recorded.sort_by_key(|r| r.seq);
    let mut violations = Vec::new();
    let decided: Option<u64> = redis::cmd("GET")
        .arg(keys::seq(namespace))
        .query_async(conn)
        .await?;
    if decided.unwrap_or(0) != recorded.len() as u64 {
        violations.push(format!(
            "{} outcomes were decided in this namespace, but the log explains {}",
            decided.unwrap_or(0),
            recorded.len()
        ));
        return Ok(violations);
    }
    let mut balances: HashMap<String, u64> = ledger.start.clone();
    for r in &recorded {
        let tx = r.tx;
        let model = crate::model::decide(&mut balances, tx);
        let agrees = match model {
            Ok(after) => r.state == "applied" && r.balance_after == Some(after),
            Err(reason) => r.state == "rejected" && r.reason == reason,
        };
        if !agrees {
            violations.push(format!(
                "{} (seq {}, {} {} -> {:?} {}): recorded {} {} balance_after {:?}, a replay in apply order gives {:?}",
                tx.id, r.seq, tx.kind.as_str(), tx.account, tx.to, tx.amount, r.state, r.reason, r.balance_after, model
            ));
            if violations.len() >= 50 {
                break;
            }
        }
    }
    Ok(violations)
}
