//! Every saga (a transfer between slots) ended: debited, then credited and
//! released, or refused and refunded; a refund only where the credit was
//! refused; its outcome is what its steps say; no money is left in flight
//! or held. Every postings transaction between slots ended too: each slot
//! reserved or refused, then all committed or all cancelled, as the
//! outcome says; nothing is left reserved.

use std::collections::HashSet;

use super::steps::{Flag, PostingSlot, Steps};
use super::{Reader, Verdict};
use crate::workload::{Ledger, SentTx};

/// One saga: its transaction and the flags of its debit, credit and settle.
type Saga<'a> = (&'a SentTx, &'a Flag, &'a Flag, &'a Flag);

/// A transaction's record as a saga's outcome: state, reason, balance_after.
type Outcome = (Option<String>, Option<String>, Option<String>);

/// Every saga ended, a refund only after a refused credit, each outcome is
/// what its steps say, and nothing is in flight or held.
pub(super) async fn check_sagas(
    reader: &Reader,
    ledger: &Ledger,
    steps: &[(&SentTx, Steps)],
    verdict: &mut Verdict,
) -> anyhow::Result<()> {
    let sagas = sagas_of(steps);
    let outcomes: Vec<Outcome> = reader
        .query(
            sagas
                .iter()
                .map(|(tx, ..)| reader.tx_fields(&tx.id, &["state", "reason", "balance_after"]))
                .collect(),
        )
        .await?;
    let accepted: HashSet<&str> = ledger.accepted.iter().map(|t| t.id.as_str()).collect();
    for (saga, outcome) in sagas.iter().zip(outcomes) {
        let counted = accepted.contains(saga.0.id.as_str());
        check_saga(saga, outcome, counted, verdict);
    }
    check_posting_sagas(reader, ledger, steps, verdict).await?;
    check_nothing_held(reader, ledger, verdict).await
}

/// The sagas among `steps` (transfers between slots), in ledger order.
fn sagas_of<'a>(steps: &'a [(&'a SentTx, Steps)]) -> Vec<Saga<'a>> {
    steps
        .iter()
        .filter_map(|(tx, steps)| match steps {
            Steps::Saga {
                debit,
                credit,
                settle,
            } => Some((*tx, debit, credit, settle)),
            Steps::Apply(_) | Steps::Postings(_) => None,
        })
        .collect()
}

/// One saga ended as its steps say, with the outcome they call for; counts
/// it (if `counted`: an accepted one) and the money it left in flight.
fn check_saga(saga: &Saga<'_>, outcome: Outcome, counted: bool, verdict: &mut Verdict) {
    let (tx, debit_flag, credit_flag, settle) = saga;
    let (state, reason, balance_after) = outcome;
    if counted {
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
                || balance_after.as_deref().and_then(|b| b.parse().ok()) != debit_flag.balance_after
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
        _ => broken("these steps do not make a saga (a refund without a refused credit?)".into()),
    }
}

/// Every postings transaction between slots ended as its steps say: every
/// slot answered its reserve, then all committed (each reserved; applied,
/// with the first slot's balance after) or all cancelled (rejected at a
/// posting no slot refused before, refused there by some slot or between
/// two assets).
async fn check_posting_sagas(
    reader: &Reader,
    ledger: &Ledger,
    steps: &[(&SentTx, Steps)],
    verdict: &mut Verdict,
) -> anyhow::Result<()> {
    let sagas: Vec<(&SentTx, &Vec<PostingSlot>)> = steps
        .iter()
        .filter_map(|(tx, steps)| match steps {
            Steps::Postings(slots) => Some((*tx, slots)),
            _ => None,
        })
        .collect();
    // balance_after and posting are "" where they do not apply.
    type Outcome = (
        Option<String>,
        Option<String>,
        Option<String>,
        Option<String>,
    );
    let outcomes: Vec<Outcome> = reader
        .query(
            sagas
                .iter()
                .map(|(tx, _)| {
                    reader.tx_fields(&tx.id, &["state", "reason", "balance_after", "posting"])
                })
                .collect(),
        )
        .await?;
    for ((tx, slots), (state, reason, balance_after, posting)) in sagas.into_iter().zip(outcomes) {
        if slots.iter().all(|slot| slot.reserve.state.is_none()) {
            continue; // never applied (an uncertain one that did not land)
        }
        verdict.sagas += 1;
        let outcome = PostingOutcome {
            state,
            reason,
            balance_after: balance_after.and_then(|b| b.parse().ok()),
            posting: posting.and_then(|p| p.parse().ok()),
        };
        if !posting_saga_fits(tx, slots, &outcome, ledger) {
            let states = |pick: fn(&PostingSlot) -> &Flag| -> Vec<(Option<&str>, &str)> {
                slots
                    .iter()
                    .map(|slot| (pick(slot).state.as_deref(), pick(slot).reason.as_str()))
                    .collect()
            };
            verdict.violations.push(format!(
                "postings {} between slots: reserves {:?}, settles {:?}, outcome {outcome:?}",
                tx.id,
                states(|slot| &slot.reserve),
                states(|slot| &slot.settle)
            ));
        }
    }
    Ok(())
}

/// A postings transaction's tx record.
#[derive(Debug)]
struct PostingOutcome {
    state: Option<String>,
    reason: Option<String>,
    balance_after: Option<i64>,
    posting: Option<u16>,
}

/// Whether postings between slots ended as their steps say: applied when
/// every slot reserved and committed, with the first slot's balance after;
/// else rejected, every slot cancelled, at the posting and for the reason a
/// single script would give: of the slots' refusals and the postings whose
/// two existing accounts hold different assets (as the `ledger` made
/// them), the lowest posting, and at one posting the check one script
/// makes first.
fn posting_saga_fits(
    tx: &SentTx,
    slots: &[PostingSlot],
    outcome: &PostingOutcome,
    ledger: &Ledger,
) -> bool {
    let asset_of = |account: &str| {
        ledger.start.contains_key(account).then(|| {
            ledger
                .accounts
                .get(account)
                .cloned()
                .unwrap_or_default()
                .asset
        })
    };
    let all = |pick: fn(&PostingSlot) -> &Flag, state: &str| {
        slots
            .iter()
            .all(|slot| pick(slot).state.as_deref() == Some(state))
    };
    // (posting, which check in one script's order, reason)
    let mut refusals: Vec<(u16, u8, &str)> = slots
        .iter()
        .filter(|slot| slot.reserve.state.as_deref() == Some("refused"))
        .filter_map(|slot| {
            let posting = slot.reserve.posting?;
            let leg = tx.legs.get(usize::from(posting))?;
            let reason = slot.reserve.reason.as_str();
            let payer_here = slot.accounts.contains(&leg.from);
            let check = match reason {
                "insufficient_funds" => 0,
                "unknown_account" | "asset_mismatch" if payer_here => 0,
                _ => 3,
            };
            Some((posting, check, reason))
        })
        .collect();
    for (index, leg) in tx.legs.iter().enumerate() {
        if let (Some(from), Some(to)) = (asset_of(&leg.from), asset_of(&leg.to)) {
            if from != to {
                refusals.push((index as u16, 2, "asset_mismatch"));
            }
        }
    }
    let first = refusals
        .into_iter()
        .min_by_key(|(posting, check, _)| (*posting, *check));
    match (outcome.state.as_deref(), first) {
        (Some("applied"), None) => {
            all(|slot| &slot.reserve, "reserved")
                && all(|slot| &slot.settle, "committed")
                && outcome.balance_after == slots[0].settle.balance_after
        }
        (Some("rejected"), Some((posting, _, reason))) => {
            all(|slot| &slot.settle, "cancelled")
                && outcome.posting == Some(posting)
                && outcome.reason.as_deref() == Some(reason)
        }
        _ => false,
    }
}

/// No account still holds money for sagas, all of which ended.
async fn check_nothing_held(
    reader: &Reader,
    ledger: &Ledger,
    verdict: &mut Verdict,
) -> anyhow::Result<()> {
    let accounts: Vec<&String> = ledger.start.keys().collect();
    let held: Vec<(Option<u64>, Option<u64>)> = reader
        .query(
            accounts
                .iter()
                .map(|a| reader.account_fields(a, &["held", "incoming"]))
                .collect(),
        )
        .await?;
    for (account, (held, incoming)) in accounts.iter().zip(held) {
        if let Some(held) = held.filter(|h| *h != 0) {
            verdict.violations.push(format!(
                "account {account} still holds {held} for sagas that ended"
            ));
        }
        if let Some(incoming) = incoming.filter(|i| *i != 0) {
            verdict.violations.push(format!(
                "account {account} still keeps room for {incoming} of postings that ended"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::{AccountSpec, Kind, Leg};

    fn flag(state: &str, reason: &str, balance_after: Option<i64>, posting: Option<u16>) -> Flag {
        Flag {
            seq: Some(1),
            state: Some(state.into()),
            reason: reason.into(),
            balance_after,
            posting,
        }
    }

    /// The slot of `a` and `z`, and the slot of `b`, `c` and `e`, with
    /// their flags.
    fn slots(a: (Flag, Flag), b: (Flag, Flag)) -> [PostingSlot; 2] {
        let slot = |accounts: &[&str], (reserve, settle): (Flag, Flag)| PostingSlot {
            accounts: accounts.iter().map(ToString::to_string).collect(),
            reserve,
            settle,
        };
        [slot(&["a", "z"], a), slot(&["b", "c", "e"], b)]
    }

    fn outcome(
        state: &str,
        reason: &str,
        balance_after: Option<i64>,
        posting: Option<u16>,
    ) -> PostingOutcome {
        PostingOutcome {
            state: Some(state.into()),
            reason: Some(reason.into()),
            balance_after,
            posting,
        }
    }

    /// The judge of postings between slots takes what the engine may
    /// leave, and names what it may not.
    #[test]
    fn postings_between_slots_must_end_as_their_steps_say() {
        let postings = |to: &str| SentTx {
            id: "p".into(),
            kind: Kind::Postings,
            account: "a".into(),
            to: None,
            amount: 10,
            accepted_at_ms: 0,
            hold: None,
            legs: [("a", "b"), ("b", to)]
                .map(|(from, to)| Leg {
                    from: from.into(),
                    to: to.into(),
                    amount: 5,
                    asset: None,
                })
                .to_vec(),
        };
        // e holds EUR, z does not exist, the others hold USD; slot "a"
        // holds a and z, slot "b" the others.
        let spec = |asset: &str| AccountSpec {
            asset: asset.into(),
            ..AccountSpec::default()
        };
        let ledger = Ledger {
            start: ["a", "b", "c", "e"].map(|a| (a.to_owned(), 100)).into(),
            accounts: [
                ("a", "USD/2"),
                ("b", "USD/2"),
                ("c", "USD/2"),
                ("e", "EUR/2"),
            ]
            .map(|(account, asset)| (account.to_owned(), spec(asset)))
            .into(),
            ..Ledger::default()
        };
        let fits = |to: &str, slots: &[PostingSlot], outcome: &PostingOutcome| {
            posting_saga_fits(&postings(to), slots, outcome, &ledger)
        };
        let reserved = || flag("reserved", "", None, None);
        let refused = |reason, posting| flag("refused", reason, None, Some(posting));
        let committed = |balance| flag("committed", "", Some(balance), None);
        let cancelled = || flag("cancelled", "", None, None);
        let rejected = |reason, posting| outcome("rejected", reason, None, Some(posting));

        let applied = slots((reserved(), committed(5)), (reserved(), committed(0)));
        assert!(fits("c", &applied, &outcome("applied", "", Some(5), None)));
        assert!(
            !fits("c", &applied, &outcome("applied", "", Some(7), None)),
            "another balance"
        );
        assert!(
            !fits("e", &applied, &outcome("applied", "", Some(5), None)),
            "USD to EUR"
        );
        let half = slots((reserved(), committed(5)), (reserved(), cancelled()));
        assert!(
            !fits("c", &half, &outcome("applied", "", Some(5), None)),
            "half committed"
        );

        let short_at_1 = slots(
            (reserved(), cancelled()),
            (refused("insufficient_funds", 1), cancelled()),
        );
        assert!(fits("c", &short_at_1, &rejected("insufficient_funds", 1)));
        assert!(
            !fits("c", &short_at_1, &rejected("unknown_account", 1)),
            "another reason"
        );
        assert!(
            !fits("c", &short_at_1, &rejected("insufficient_funds", 0)),
            "another posting"
        );
        // b's funds come before the assets of b (USD) and e (EUR).
        assert!(fits("e", &short_at_1, &rejected("insufficient_funds", 1)));
        let one_committed = slots(
            (reserved(), committed(5)),
            (refused("insufficient_funds", 1), cancelled()),
        );
        assert!(
            !fits("c", &one_committed, &rejected("insufficient_funds", 1)),
            "one committed"
        );

        // No slot refused, but posting 1 goes from USD to EUR.
        let all_reserved = slots((reserved(), cancelled()), (reserved(), cancelled()));
        assert!(fits("e", &all_reserved, &rejected("asset_mismatch", 1)));
        assert!(
            !fits("c", &all_reserved, &rejected("asset_mismatch", 1)),
            "one asset"
        );
        // The assets come before e's room; a missing payee has none.
        let full_at_1 = slots(
            (reserved(), cancelled()),
            (refused("max_balance_exceeded", 1), cancelled()),
        );
        assert!(fits("e", &full_at_1, &rejected("asset_mismatch", 1)));
        assert!(
            !fits("e", &full_at_1, &rejected("max_balance_exceeded", 1)),
            "the room first"
        );
        // b names an asset it does not hold, and a has no room: b's check
        // comes first.
        let both_at_1 = slots(
            (refused("max_balance_exceeded", 1), cancelled()),
            (refused("asset_mismatch", 1), cancelled()),
        );
        assert!(fits("a", &both_at_1, &rejected("asset_mismatch", 1)));
        assert!(
            !fits("a", &both_at_1, &rejected("max_balance_exceeded", 1)),
            "the payer's check first"
        );
        // z, in a's slot, is missing: a's refusal, not an asset.
        let missing_at_1 = slots(
            (refused("unknown_account", 1), cancelled()),
            (reserved(), cancelled()),
        );
        assert!(fits("z", &missing_at_1, &rejected("unknown_account", 1)));
        assert!(
            !fits("z", &missing_at_1, &rejected("asset_mismatch", 1)),
            "a missing account's asset"
        );
        // a refused at posting 0: nothing after it counts.
        let short_at_0 = slots(
            (refused("insufficient_funds", 0), cancelled()),
            (reserved(), cancelled()),
        );
        assert!(fits("e", &short_at_0, &rejected("insufficient_funds", 0)));
        assert!(
            !fits("e", &short_at_0, &rejected("asset_mismatch", 1)),
            "a refusal before it"
        );
    }
}
