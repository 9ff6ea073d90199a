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
    /// The transaction's accounts in this slot, in order of first mention;
    /// the steps run for the first.
    pub(super) accounts: Vec<String>,
    pub(super) reserve: Flag,
    pub(super) settle: Flag,
}

impl PostingSlot {
    /// The account the slot's steps run for (their flags are in its slot).
    pub(super) fn owner(&self) -> &str {
        &self.accounts[0]
    }
}

/// A postings transaction's accounts by slot, when they are in more than
/// one (see `slots_of`).
fn posting_slots(layout: &Layout, tx: &SentTx) -> Option<Vec<Vec<String>>> {
    if tx.kind != Kind::Postings {
        return None;
    }
    let tx = tx.transaction().ok()?;
    let slots = slots_of(layout, tx.movement.postings()?);
    (slots.len() > 1).then(|| {
        slots
            .iter()
            .map(|group| group.iter().map(ToString::to_string).collect())
            .collect()
    })
}

/// One recorded step (see [`Steps::recorded`]).
pub(super) type Recorded<'a> = (&'a str, Option<SagaStep>, &'a Flag, &'a [String]);

impl Steps {
    /// Every recorded step: the shard-owning account, the step (None for
    /// a one-script apply), its flag, and for a step of postings between
    /// slots the transaction's accounts in its slot (else none).
    pub(super) fn recorded<'a>(&'a self, tx: &'a SentTx) -> Vec<Recorded<'a>> {
        let to = tx.to.as_deref().unwrap_or_default();
        let all = match self {
            Steps::Apply(flag) => vec![(tx.account.as_str(), None, flag, &[][..])],
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
                    (tx.account.as_str(), Some(SagaStep::Debit), debit, &[][..]),
                    (to, Some(SagaStep::Credit), credit, &[]),
                    (tx.account.as_str(), Some(settle_step), settle, &[]),
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
                    let here = &slot.accounts[..];
                    [
                        (slot.owner(), Some(SagaStep::Reserve), &slot.reserve, here),
                        (slot.owner(), Some(settle_step), &slot.settle, here),
                    ]
                })
                .collect(),
        };
        all.into_iter()
            .filter(|(_, _, flag, _)| flag.seq.is_some())
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
    let slots: Vec<Option<Vec<Vec<String>>>> =
        all.iter().map(|tx| posting_slots(layout, tx)).collect();
    for (tx, slots) in all.iter().zip(&slots) {
        if let Some(slots) = slots {
            for owner in slots.iter().map(|accounts| &accounts[0]) {
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
            if let Some(slots) = slots {
                let slots = slots
                    .into_iter()
                    .map(|accounts| PostingSlot {
                        accounts,
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
