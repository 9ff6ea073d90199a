//! Every outcome and saga step (applied with its `balance_after`, or
//! rejected with its reason) is what a plain model gives when the log is
//! replayed from the starting balances in the order each slot decided them
//! (`seq`), and no step exists that the log does not explain (no gap in any
//! slot's `seq`, so no step was applied twice).

use std::collections::HashMap;

use txengine::store::Layout;

use super::holds::HoldRow;
use super::steps::{Flag, Steps};
use super::Reader;
use crate::model::{Books, SagaStep};
use crate::workload::{Ledger, SentTx};

/// What happened at one place in a slot's order: a step, with None for
/// one script, and its flag; or the end of a hold, as its record says.
enum Happened<'a> {
    /// The step, for a step of postings between slots the transaction's
    /// accounts in its slot, and its flag.
    Step(Option<SagaStep>, &'a [String], &'a Flag),
    End(&'a str),
}

/// One decision of a slot: its `seq`, its transaction and what happened.
type Event<'a> = (u64, &'a SentTx, Happened<'a>);

/// How many disagreements with the model to report before stopping.
const MAX_DISAGREEMENTS: usize = 50;

/// Replays every recorded step of the ledger, slot by slot in the order
/// each slot decided them, with a plain model of the rules, and returns
/// where Redis disagrees with it.
pub(super) async fn replay_in_apply_order(
    reader: &Reader,
    ledger: &Ledger,
    steps: &[(&SentTx, Steps)],
    holds: &[(&SentTx, Option<HoldRow>)],
) -> anyhow::Result<Vec<String>> {
    let by_shard = events_by_shard(&reader.layout, steps, holds);
    let violations = unexplained_seqs(reader, &by_shard).await?;
    if !violations.is_empty() {
        return Ok(violations);
    }
    Ok(replay_shards(ledger, by_shard))
}

/// Every recorded step and hold end of the ledger, by the shard that
/// decided it (unsorted).
fn events_by_shard<'a>(
    layout: &Layout,
    steps: &'a [(&'a SentTx, Steps)],
    holds: &'a [(&'a SentTx, Option<HoldRow>)],
) -> HashMap<u32, Vec<Event<'a>>> {
    let mut by_shard: HashMap<u32, Vec<Event>> = HashMap::new();
    for (tx, steps) in steps {
        for (owner, step, flag, here) in steps.recorded(tx) {
            let seq = flag.seq.unwrap_or_default();
            by_shard.entry(layout.shard_of(owner)).or_default().push((
                seq,
                tx,
                Happened::Step(step, here, flag),
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
    by_shard
}

/// Each shard's count of decisions (its `seq`) is the number of events the
/// log explains there: none is missing, none was decided twice.
async fn unexplained_seqs(
    reader: &Reader,
    by_shard: &HashMap<u32, Vec<Event<'_>>>,
) -> anyhow::Result<Vec<String>> {
    let layout = &reader.layout;
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
    Ok(violations)
}

/// Replays each shard's events in `seq` order (shards in order) on one
/// model of the books, and returns where the records disagree with it
/// (at most [`MAX_DISAGREEMENTS`] steps' worth).
fn replay_shards(ledger: &Ledger, by_shard: HashMap<u32, Vec<Event<'_>>>) -> Vec<String> {
    let mut violations = Vec::new();
    let mut books = Books::new(ledger.start.clone()).with_specs(ledger.accounts.clone());
    let mut shards: Vec<_> = by_shard.into_iter().collect();
    shards.sort_by_key(|(shard, _)| *shard);
    for (_, mut events) in shards {
        events.sort_by_key(|(seq, ..)| *seq);
        for (seq, tx, happened) in events {
            match happened {
                Happened::End(state) => {
                    if let Err(e) = crate::model::end_hold(&mut books, &tx.id, &tx.account, state) {
                        violations.push(format!("seq {seq}: {e}"));
                    }
                }
                Happened::Step(step, here, flag) => {
                    if let Some(disagreement) = replay_step(&mut books, seq, tx, step, here, flag) {
                        violations.push(disagreement);
                        if violations.len() >= MAX_DISAGREEMENTS {
                            return violations;
                        }
                    }
                }
            }
        }
    }
    violations
}

/// Decides one step (or one-script apply) on the model, and says how the
/// record of it disagrees, if it does.
fn replay_step(
    books: &mut Books,
    seq: u64,
    tx: &SentTx,
    step: Option<SagaStep>,
    here: &[String],
    flag: &Flag,
) -> Option<String> {
    let (model, ok_state, refused_state) = match step {
        None => (
            crate::model::decide(books, tx).map(Some),
            "applied",
            "rejected",
        ),
        Some(step @ (SagaStep::Reserve | SagaStep::Commit | SagaStep::Cancel)) => {
            let (ok, refused) = step.states();
            let model = crate::model::decide_posting_step(books, tx, step, here);
            (model, ok, refused)
        }
        Some(step) => {
            let (ok, refused) = step.states();
            (
                crate::model::decide_step(books, tx, step).map(Some),
                ok,
                refused,
            )
        }
    };
    let state = flag.state.as_deref().unwrap_or_default();
    let agrees = match model {
        Ok(after) => state == ok_state && flag.balance_after == after,
        Err(reason) => {
            state == refused_state && flag.reason == reason && flag.posting == books.failed_posting
        }
    };
    (!agrees).then(|| {
        format!(
            "{} {step:?} (seq {seq}, {} {} -> {:?} {} {:?}): recorded {state} {} balance_after {:?} posting {:?}, a replay in apply order gives {model:?} posting {:?}",
            tx.id, tx.kind.as_str(), tx.account, tx.to, tx.amount, tx.legs, flag.reason, flag.balance_after, flag.posting, books.failed_posting
        )
    })
}
