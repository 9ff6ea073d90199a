//! Every hold ended once, as what ended it says (one applied capture of at
//! most its amount, one void, or its expiry), none is left held long past
//! its deadline, and each account's `pending` is the sum of its active
//! holds (every postings transaction has ended: none keeps a reservation)
//! and at most its balance.

use std::collections::{HashMap, HashSet};

use super::{Reader, Verdict};
use crate::workload::{Kind, Ledger, SentTx};

/// A hold as Redis keeps it (`{tag}:hold:<id>`).
#[derive(Debug, Clone)]
pub(super) struct HoldRow {
    pub(super) state: String,
    pub(super) amount: u64,
    pub(super) captured: Option<u64>,
    pub(super) deadline_ms: Option<u64>,
    pub(super) ended_ms: Option<u64>,
    pub(super) ended_seq: Option<u64>,
}

/// The record of every hold of the ledger (accepted and uncertain), in
/// ledger order; `None` where Redis has none.
pub(super) async fn read_holds<'l>(
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

/// What the captures and voids of the ledger did to their holds, by hold id.
#[derive(Default)]
struct HoldEnds<'l> {
    /// Per hold: the amounts of its applied captures, and its applied voids.
    applied: HashMap<&'l str, (Vec<u64>, usize)>,
    /// Holds a capture's saga gave back (its credit refused): voided by it.
    refunded: HashSet<&'l str>,
}

/// Every hold ended once, as what ended it says: a captured hold by one
/// applied capture of at most its amount, a voided one by one applied void
/// (or a capture whose saga was refunded), an expired or held one by none;
/// a rejected hold holds nothing; no hold reads `held` long past its
/// deadline, none is left `capturing`; and each account's `pending` is the
/// sum of its active holds, at most its balance.
pub(super) async fn check_holds(
    reader: &Reader,
    ledger: &Ledger,
    holds: &[(&SentTx, Option<HoldRow>)],
    verdict: &mut Verdict,
) -> anyhow::Result<()> {
    let mut ends = read_hold_ends(reader, ledger).await?;
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
        check_hold(
            tx,
            row,
            outcome,
            &mut ends,
            now_ms,
            &mut pending_of,
            verdict,
        );
    }
    for (hold, (captures, voids)) in ends.applied {
        verdict.violations.push(format!(
            "captures {captures:?} and {voids} voids applied for {hold}, a hold the ledger does not know"
        ));
    }
    check_pending(reader, ledger, &pending_of, verdict).await
}

/// Reads the outcome of every capture and void of the ledger (accepted and
/// uncertain) and gathers, per hold, what applied against it.
async fn read_hold_ends<'l>(reader: &Reader, ledger: &'l Ledger) -> anyhow::Result<HoldEnds<'l>> {
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
    let mut hold_ends = HoldEnds::default();
    for (tx, (state, reason)) in ends.into_iter().zip(states) {
        let hold = tx.hold.as_deref().unwrap_or_default();
        if state.as_deref() == Some("applied") {
            let entry = hold_ends.applied.entry(hold).or_default();
            match tx.kind {
                Kind::Capture => entry.0.push(tx.amount),
                _ => entry.1 += 1,
            }
        }
        let credit_refused = matches!(
            reason.as_deref(),
            Some(
                "unknown_account" | "balance_overflow" | "max_balance_exceeded" | "asset_mismatch"
            )
        );
        if tx.kind == Kind::Capture && state.as_deref() == Some("rejected") && credit_refused {
            hold_ends.refunded.insert(hold);
        }
    }
    Ok(hold_ends)
}

/// One hold's record agrees with its outcome and with what applied against
/// it (taken out of `ends`); an active one adds its amount to its
/// account's `pending_of`.
fn check_hold<'h>(
    tx: &'h SentTx,
    row: &Option<HoldRow>,
    outcome: Option<String>,
    ends: &mut HoldEnds<'_>,
    now_ms: u64,
    pending_of: &mut HashMap<&'h str, u64>,
    verdict: &mut Verdict,
) {
    let (captures, voids) = ends.applied.remove(tx.id.as_str()).unwrap_or_default();
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
        return;
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
            return;
        }
        (Some("applied"), _) => {}
        _ => {
            broken("its outcome and its record disagree");
            return;
        }
    }
    if row.state == "held" {
        *pending_of.entry(tx.account.as_str()).or_default() += row.amount;
    }
    let refunded = ends.refunded.contains(tx.id.as_str());
    for what in wrong_ends(row, &captures, voids, refunded, now_ms) {
        broken(what);
    }
}

/// What is wrong with how an applied hold stands, given its applied
/// `captures` and `voids` and whether a capture's saga gave it back
/// (`refunded`), in the order the checks run.
fn wrong_ends(
    row: &HoldRow,
    captures: &[u64],
    voids: usize,
    refunded: bool,
    now_ms: u64,
) -> Vec<&'static str> {
    let mut wrong = Vec::new();
    match row.state.as_str() {
        "held" => {
            if !captures.is_empty() || voids > 0 {
                wrong.push("still held after an applied capture or void");
            }
            if row
                .deadline_ms
                .is_none_or(|deadline| now_ms > deadline + EXPIRY_GRACE_MS)
            {
                wrong.push("still held long past its deadline");
            }
        }
        "captured" => {
            if captures.len() != 1
                || voids > 0
                || row.captured != Some(captures[0])
                || captures[0] > row.amount
            {
                wrong.push("captured, but not by exactly one applied capture of what it records");
            }
        }
        "voided" => {
            let by_refund = voids == 0 && refunded;
            if !captures.is_empty() || !(voids == 1 || by_refund) {
                wrong.push("voided, but not by exactly one applied void (nor a refunded capture)");
            }
        }
        "expired" => {
            if !captures.is_empty() || voids > 0 {
                wrong.push("expired, but a capture or void applied");
            }
            if row
                .ended_ms
                .zip(row.deadline_ms)
                .is_none_or(|(end, due)| end < due)
            {
                wrong.push("expired before its deadline");
            }
        }
        "capturing" => wrong.push("its capture's saga did not end"),
        _ => wrong.push("an unknown state"),
    }
    if row.state != "held" && row.ended_seq.is_none() {
        wrong.push("ended without a place in its slot's order");
    }
    wrong
}

/// Each account's `pending` is what its active holds keep (`pending_of`;
/// a reservation of postings between slots left behind breaks this),
/// and its balance less it is at least its `min_balance` (what may leave
/// it is never below 0).
async fn check_pending(
    reader: &Reader,
    ledger: &Ledger,
    pending_of: &HashMap<&str, u64>,
    verdict: &mut Verdict,
) -> anyhow::Result<()> {
    let accounts: Vec<&String> = ledger.start.keys().collect();
    let rows: Vec<(Option<u64>, Option<i64>)> = reader
        .query(
            accounts
                .iter()
                .map(|a| reader.account_fields(a, &["pending", "balance"]))
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
        let min = ledger
            .accounts
            .get(account.as_str())
            .cloned()
            .unwrap_or_default()
            .min_balance;
        if balance.unwrap_or(0) - (pending as i64) < min {
            verdict.violations.push(format!(
                "account {account}: pending {pending} leaves its balance {balance:?} below its min_balance {min} (available below 0)"
            ));
        }
    }
    Ok(())
}
