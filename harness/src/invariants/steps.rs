//! The flags that applies and saga steps leave in Redis (`seq`, state,
//! reason, `balance_after`), read once per run for [`super::sagas`] and
//! [`super::replay`].

use txengine::store::posting_steps::slots_of;
use txengine::store::Layout;

use super::Reader;
use crate::model::SagaStep;
use crate::workload::{Kind, Ledger, SentTx};

/// What one flag (an apply's, or a saga step's) recorded.
#[derive(Debug, Clone, Default)]
pub(super) struct Flag {
    pub(super) seq: Option<u64>,
    pub(super) state: Option<String>,
    pub(super) reason: String,
    pub(super) balance_after: Option<i64>,
    /// A rejected postings transaction's failed posting.
    pub(super) posting: Option<u16>,
}

/// The flags of one transaction: one apply, or the steps of its saga.
pub(super) enum Steps {
    Apply(Flag),
    Saga {
        debit: Flag,
        credit: Flag,
        settle: Flag,
    },
    /// Postings between slots: in each slot (named by its first account),
    /// the reserve's flag and the commit's or cancel's.
    Postings(Vec<PostingSlot>),
}

/// One slot's steps of postings between slots.
pub(super) struct PostingSlot {
    pub(super) owner: String,
    pub(super) reserve: Flag,
    pub(super) settle: Flag,
}

/// The first account of each slot a postings transaction's accounts are
/// in, when they are in more than one (its steps run there).
pub(super) fn posting_slots(layout: &Layout, tx: &SentTx) -> Option<Vec<String>> {
    if tx.kind != Kind::Postings {
        return None;
    }
    let tx = tx.transaction().ok()?;
    let slots = slots_of(layout, tx.movement.postings()?);
    (slots.len() > 1).then(|| slots.iter().map(|group| group[0].to_string()).collect())
}

impl Steps {
    /// Every recorded step: the shard-owning account, the step (None for
    /// a one-script apply) and its flag.
    pub(super) fn recorded<'a>(
        &'a self,
        tx: &'a SentTx,
    ) -> Vec<(&'a str, Option<SagaStep>, &'a Flag)> {
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
            Steps::Postings(slots) => slots
                .iter()
                .flat_map(|slot| {
                    let settle_step = if slot.settle.state.as_deref() == Some("cancelled") {
                        SagaStep::Cancel
                    } else {
                        SagaStep::Commit
                    };
                    [
                        (slot.owner.as_str(), Some(SagaStep::Reserve), &slot.reserve),
                        (slot.owner.as_str(), Some(settle_step), &slot.settle),
                    ]
                })
                .collect(),
        };
        all.into_iter()
            .filter(|(_, _, f)| f.seq.is_some())
            .collect()
    }
}

/// Reads the flags of every transaction of the ledger that may have been
/// applied (accepted and uncertain), in ledger order.
pub(super) async fn read_steps<'l>(
    reader: &Reader,
    ledger: &'l Ledger,
) -> anyhow::Result<Vec<(&'l SentTx, Steps)>> {
    let layout = &reader.layout;
    let all: Vec<&SentTx> = ledger.accepted.iter().chain(&ledger.uncertain).collect();
    const FIELDS: [&str; 5] = ["seq", "state", "reason", "balance_after", "posting"];
    let mut commands = Vec::new();
    let slots: Vec<Option<Vec<String>>> = all.iter().map(|tx| posting_slots(layout, tx)).collect();
    for (tx, slots) in all.iter().zip(&slots) {
        if let Some(owners) = slots {
            for owner in owners {
                for step in ["reserve", "settle"] {
                    commands.push(reader.hmget(owner, layout.step(owner, &tx.id, step), &FIELDS));
                }
            }
            continue;
        }
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
    type Row = (
        Option<u64>,
        Option<String>,
        Option<String>,
        Option<String>,
        Option<String>,
    );
    let rows: Vec<Row> = reader.query(commands).await?;
    let mut flags = rows
        .into_iter()
        .map(|(seq, state, reason, balance_after, posting)| Flag {
            seq,
            state,
            reason: reason.unwrap_or_default(),
            balance_after: balance_after.and_then(|b| b.parse().ok()),
            posting: posting.and_then(|p| p.parse().ok()),
        });
    let mut next = || flags.next().unwrap_or_default();
    Ok(all
        .into_iter()
        .zip(slots)
        .map(|(tx, slots)| {
            if let Some(owners) = slots {
                let slots = owners
                    .into_iter()
                    .map(|owner| PostingSlot {
                        owner,
                        reserve: next(),
                        settle: next(),
                    })
                    .collect();
                return (tx, Steps::Postings(slots));
            }
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
