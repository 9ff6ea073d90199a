//! Postings whose accounts are in several Redis Cluster slots: two phases
//! through Kafka, each step one call of `lua/posting_step.lua` in one slot.
//!
//! The slots reserve in turn, in order of first mention (the first `from`'s
//! first), and each one's vote travels in the record to the next, so the
//! last to reserve holds every vote and decides. Then each slot commits
//! (every slot reserved) or cancels (one refused), in the reverse order: the
//! chain ends in the first `from`'s slot, whose balance the outcome names.

use crate::domain::{AccountId, Asset, Outcome, Postings, RejectReason, Transaction};
use crate::wire::{Check, FailedPosting, Record, Refusal, SagaStep, SeenAsset, StepKind, Votes};

use super::apply::{Applied, Progress, StepReply};
use super::apply_many::{ApplyScript, StepCall};
use super::calls::{AccountKeys, CreditedKeys, PostingStepCall};
use super::{Layout, Store};

/// A postings transaction's accounts by slot: one group per slot, groups
/// and accounts in order of first mention.
pub fn slots_of<'p>(layout: &Layout, postings: &'p Postings) -> Vec<Vec<&'p AccountId>> {
    let mut groups: Vec<Vec<&AccountId>> = Vec::new();
    for account in postings.accounts() {
        match groups
            .iter_mut()
            .find(|group| layout.same_slot(group[0].as_str(), account.as_str()))
        {
            Some(group) => group.push(account),
            None => groups.push(vec![account]),
        }
    }
    groups
}

impl Store {
    /// The call of `lua/posting_step.lua` for `step` of postings between
    /// slots, in the slot of account `on`, under the step's own flag.
    pub(super) fn posting_step_command(
        &self,
        tx: &Transaction,
        now_ms: u64,
        on: &AccountId,
        step: StepKind,
        failed: Option<&FailedPosting>,
    ) -> StepCall {
        let layout = &self.layout;
        let (accounts, numbered) =
            numbered_postings(tx.movement.postings().expect("a postings transaction"));
        // This slot's accounts, by their numbers.
        let here: Vec<usize> = (1..=accounts.len())
            .filter(|&a| layout.same_slot(on.as_str(), accounts[a - 1]))
            .collect();
        let (id, first) = (tx.id.as_str(), accounts[here[0] - 1]);
        let call = PostingStepCall {
            first: AccountKeys::of(layout, first, layout.step(first, id, step.flag())),
            others: here[1..]
                .iter()
                .map(|&a| CreditedKeys::of(layout, accounts[a - 1]))
                .collect(),
            reserve_flag: (step != StepKind::Reserve).then(|| layout.step(first, id, "reserve")),
            args: self.flag_args(tx, step.as_str(), now_ms),
            here,
            postings: numbered,
            failed: failed.map(|failed| (failed.posting, failed.reason.as_str())),
            names: accounts,
        };
        StepCall::new(
            layout.shard_of(on.as_str()),
            ApplyScript::PostingStep,
            call.write(),
        )
    }

    /// Where postings between slots stand once one slot's step answered
    /// `reply` (see [`super::posting_steps`]): the next slot's reserve, the
    /// decision once the last slot reserved, then each slot's commit or
    /// cancel in the reverse order, the outcome after the first slot's.
    /// `posting` and `seen` are a reserve's refused posting and the assets
    /// it saw. `None` for an answer the step cannot give.
    pub(super) fn postings_progress(
        &self,
        record: &Record,
        postings: &Postings,
        reply: StepReply,
        posting: &str,
        seen: &str,
        duplicate: bool,
    ) -> Option<Progress> {
        let slots = slots_of(&self.layout, postings);
        let slot_of = |on: &AccountId| {
            slots
                .iter()
                .position(|group| self.layout.same_slot(group[0].as_str(), on.as_str()))
        };
        let next = |step| {
            Progress::Next(Record {
                saga: Some(step),
                ..record.clone()
            })
        };
        let (on, assets, outcome) = match (&record.saga, reply) {
            (
                None | Some(SagaStep::Reserve { .. }),
                reply @ (StepReply::Reserved | StepReply::Refused(_)),
            ) => {
                let (on, mut votes) = match &record.saga {
                    Some(SagaStep::Reserve { on, votes }) => (on, votes.clone()),
                    _ => (record.tx.movement.account(), Votes::none(postings)),
                };
                let index = slot_of(on)?;
                let refused = match reply {
                    StepReply::Refused(reason) => Some((posting.parse().ok()?, reason)),
                    _ => None,
                };
                votes.add(postings, &slots[index], refused, parse_seen(seen)?);
                return Some(next(votes.next_step(slots.get(index + 1), on)));
            }
            (Some(SagaStep::Commit { on, assets }), StepReply::Committed { balance_after }) => {
                (on, assets, Outcome::Applied { balance_after })
            }
            (Some(SagaStep::Cancel { on, failed, assets }), StepReply::Cancelled) => {
                let outcome = Outcome::Rejected {
                    reason: failed.reason,
                    posting: Some(failed.posting),
                };
                (on, assets, outcome)
            }
            _ => return None,
        };
        // The same step in the slot before, or the outcome after the first.
        Some(match slot_of(on)?.checked_sub(1) {
            Some(before) => {
                let mut step = record.saga.clone()?;
                if let SagaStep::Commit { on, .. } | SagaStep::Cancel { on, .. } = &mut step {
                    *on = slots[before][0].clone();
                }
                next(step)
            }
            None => Progress::Ended {
                applied: Applied { outcome, duplicate },
                recorded: false,
                asset: assets.first().cloned().flatten(),
                posting_assets: assets.clone(),
            },
        })
    }
}

/// A postings transaction as `lua/postings.lua` and `lua/posting_step.lua`
/// take it: its accounts once each, in order of first mention (the first
/// `from` first), and each posting by its accounts' numbers (1-based in
/// that list), its amount and the asset it names ('' : none).
type NumberedPostings<'a> = (Vec<&'a str>, Vec<(usize, usize, u64, &'a str)>);

pub(super) fn numbered_postings(postings: &Postings) -> NumberedPostings<'_> {
    let accounts: Vec<&str> = postings
        .accounts()
        .into_iter()
        .map(AccountId::as_str)
        .collect();
    let number = |account: &AccountId| {
        1 + accounts
            .iter()
            .position(|name| *name == account.as_str())
            .expect("every posting's accounts are listed")
    };
    let numbered = postings
        .iter()
        .map(|posting| {
            (
                number(&posting.from),
                number(&posting.to),
                posting.amount.minor_units(),
                posting.asset.as_ref().map_or("", Asset::as_str),
            )
        })
        .collect();
    (accounts, numbered)
}

impl Votes {
    /// No slot answered yet.
    pub fn none(postings: &Postings) -> Self {
        Self {
            refused: None,
            assets: vec![SeenAsset::Unseen; 2 * postings.len()],
        }
    }

    /// Adds the answer of the slot of `group`: the first posting it refused
    /// (its 0-based index) and why, if it refused one, and each posting's
    /// accounts' assets as it found them (`Unseen` where not its own).
    pub fn add(
        &mut self,
        postings: &Postings,
        group: &[&AccountId],
        refused: Option<(u16, RejectReason)>,
        seen: Vec<SeenAsset>,
    ) {
        if let Some((posting, reason)) = refused {
            let from = postings
                .iter()
                .nth(usize::from(posting))
                .map(|posting| &posting.from);
            // Which check refused it, from its reason: a slot checks the
            // two sides' assets against the asset the posting names only,
            // so a `to` without room may be refused where, in one script,
            // the assets would have refused it first.
            let owns_from = from.is_some_and(|from| group.contains(&from));
            let check = match reason {
                RejectReason::InsufficientFunds => Check::From,
                RejectReason::UnknownAccount | RejectReason::AssetMismatch if owns_from => {
                    Check::From
                }
                _ => Check::To,
            };
            self.keep_first(Refusal {
                posting,
                check,
                reason,
            });
        }
        for (mine, theirs) in self.assets.iter_mut().zip(seen) {
            if theirs != SeenAsset::Unseen {
                *mine = theirs;
            }
        }
    }

    /// The step after the reserve in the slot of `on`: the reserve in the
    /// next slot's (`next`, its accounts), or once every slot answered,
    /// the decision, in this same slot first.
    fn next_step(self, next: Option<&Vec<&AccountId>>, on: &AccountId) -> SagaStep {
        match (next, self.failed()) {
            (Some(group), _) => SagaStep::Reserve {
                on: group[0].clone(),
                votes: self,
            },
            (None, None) => SagaStep::Commit {
                on: on.clone(),
                assets: self.posting_assets(),
            },
            (None, Some(failed)) => SagaStep::Cancel {
                on: on.clone(),
                failed,
                assets: self.posting_assets(),
            },
        }
    }

    fn keep_first(&mut self, refusal: Refusal) {
        let key = |r: &Refusal| (r.posting, r.check);
        if self.refused.is_none_or(|first| key(&refusal) < key(&first)) {
            self.refused = Some(refusal);
        }
    }

    /// Once every slot answered: the posting that fails the transaction
    /// (`None`: every one passes). A posting between two slots whose
    /// accounts hold different assets fails too, after its `to`'s
    /// existence and before its room, as one script checks them.
    pub fn failed(&self) -> Option<FailedPosting> {
        let mut votes = self.clone();
        for (index, sides) in self.assets.chunks(2).enumerate() {
            if let [SeenAsset::Of(from), SeenAsset::Of(to)] = sides {
                if from != to {
                    votes.keep_first(Refusal {
                        posting: index as u16,
                        check: Check::Assets,
                        reason: RejectReason::AssetMismatch,
                    });
                }
            }
        }
        votes.refused.map(|refusal| FailedPosting {
            posting: refusal.posting,
            reason: refusal.reason,
        })
    }

    /// Each posting's asset: its `from`'s (`None` where that does not
    /// exist or was not seen).
    pub fn posting_assets(&self) -> Vec<Option<Asset>> {
        self.assets
            .chunks(2)
            .map(|sides| match &sides[0] {
                SeenAsset::Of(asset) => Some(asset.clone()),
                SeenAsset::Unseen | SeenAsset::Missing => None,
            })
            .collect()
    }
}

/// A reserve's `assets` reply: for each posting its `from`'s asset and its
/// `to`'s, comma-separated, '?' where not in the slot, '' where missing.
/// `None` when one does not parse.
pub(super) fn parse_seen(assets: &str) -> Option<Vec<SeenAsset>> {
    assets
        .split(',')
        .map(|asset| match asset {
            "?" => Some(SeenAsset::Unseen),
            "" => Some(SeenAsset::Missing),
            asset => Asset::parse(asset).ok().map(SeenAsset::Of),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Amount, Posting};

    fn account(name: &str) -> AccountId {
        AccountId::parse(name).unwrap()
    }

    fn postings(pairs: &[(&str, &str)]) -> Postings {
        Postings::new(
            pairs
                .iter()
                .map(|(from, to)| {
                    Posting::new(account(from), account(to), Amount::new(1).unwrap(), None).unwrap()
                })
                .collect(),
        )
        .unwrap()
    }

    fn usd() -> SeenAsset {
        SeenAsset::Of(Asset::parse("USD/2").unwrap())
    }

    fn eur() -> SeenAsset {
        SeenAsset::Of(Asset::parse("EUR/2").unwrap())
    }

    /// The lowest posting wins; at one posting, its `from`'s refusal wins
    /// over its `to`'s, assets that differ over a `to` without room, as one
    /// script checks them; a missing `to` has no asset to differ.
    #[test]
    fn the_first_refusal_in_one_scripts_order_fails_the_transaction() {
        let legs = postings(&[("a", "b"), ("b", "c")]);
        let (a, b, c) = (account("a"), account("b"), account("c"));
        let unseen = || SeenAsset::Unseen;
        let seen_by_b = vec![unseen(), usd(), usd(), unseen()];
        let failed = |posting, reason| Some(FailedPosting { posting, reason });

        let mut votes = Votes::none(&legs);
        votes.add(&legs, &[&b], None, seen_by_b.clone());
        votes.add(
            &legs,
            &[&a, &c],
            Some((1, RejectReason::MaxBalanceExceeded)),
            vec![eur(), unseen(), unseen(), usd()],
        );
        // a (EUR) pays b (USD): posting 0 fails on the assets.
        assert_eq!(votes.failed(), failed(0, RejectReason::AssetMismatch));

        let mut votes = Votes::none(&legs);
        votes.add(
            &legs,
            &[&a, &c],
            Some((0, RejectReason::InsufficientFunds)),
            vec![eur(), unseen(), unseen(), usd()],
        );
        votes.add(&legs, &[&b], None, seen_by_b.clone());
        // a's own refusal comes before the assets' at posting 0.
        assert_eq!(votes.failed(), failed(0, RejectReason::InsufficientFunds));

        let mut votes = Votes::none(&legs);
        votes.add(
            &legs,
            &[&b],
            Some((1, RejectReason::InsufficientFunds)),
            seen_by_b.clone(),
        );
        votes.add(
            &legs,
            &[&a, &c],
            Some((1, RejectReason::UnknownAccount)),
            vec![usd(), unseen(), unseen(), SeenAsset::Missing],
        );
        // At posting 1, b's funds (its `from`) come before c's existence.
        assert_eq!(votes.failed(), failed(1, RejectReason::InsufficientFunds));
        assert_eq!(
            votes.posting_assets(),
            vec![Some(Asset::parse("USD/2").unwrap()); 2]
        );

        let mut votes = Votes::none(&legs);
        votes.add(&legs, &[&b], None, vec![unseen(), eur(), eur(), unseen()]);
        votes.add(
            &legs,
            &[&a, &c],
            Some((1, RejectReason::MaxBalanceExceeded)),
            vec![eur(), unseen(), unseen(), usd()],
        );
        // At posting 1, the assets (b EUR, c USD) come before c's room.
        assert_eq!(votes.failed(), failed(1, RejectReason::AssetMismatch));

        let mut votes = Votes::none(&legs);
        votes.add(&legs, &[&b], None, vec![unseen(), eur(), eur(), unseen()]);
        votes.add(
            &legs,
            &[&a, &c],
            Some((1, RejectReason::UnknownAccount)),
            vec![eur(), unseen(), unseen(), SeenAsset::Missing],
        );
        // A missing `to`: no assets to compare.
        assert_eq!(votes.failed(), failed(1, RejectReason::UnknownAccount));

        // One slot holds both accounts of posting 1 (b EUR, c USD): it
        // refused c's room, but the assets come first.
        let mut votes = Votes::none(&legs);
        votes.add(
            &legs,
            &[&a],
            None,
            vec![usd(), unseen(), unseen(), unseen()],
        );
        votes.add(
            &legs,
            &[&b, &c],
            Some((1, RejectReason::MaxBalanceExceeded)),
            vec![unseen(), usd(), eur(), usd()],
        );
        assert_eq!(votes.failed(), failed(1, RejectReason::AssetMismatch));

        // c has no room for posting 1, and b does not hold the asset
        // posting 1 names: b's check comes first in one script, whichever
        // slot answered first.
        let mut votes = Votes::none(&legs);
        votes.add(
            &legs,
            &[&c],
            Some((1, RejectReason::MaxBalanceExceeded)),
            vec![unseen(), unseen(), unseen(), usd()],
        );
        votes.add(
            &legs,
            &[&b],
            Some((1, RejectReason::AssetMismatch)),
            seen_by_b.clone(),
        );
        assert_eq!(votes.failed(), failed(1, RejectReason::AssetMismatch));

        let mut votes = Votes::none(&legs);
        votes.add(&legs, &[&b], None, seen_by_b);
        votes.add(
            &legs,
            &[&a, &c],
            None,
            vec![usd(), unseen(), unseen(), usd()],
        );
        assert_eq!(votes.failed(), None);
    }

    #[test]
    fn accounts_group_by_slot_in_order_of_first_mention() {
        use crate::store::RedisTopology;
        let legs = postings(&[("a", "b"), ("b", "c"), ("c", "a")]);
        let single = Layout::new("ns", RedisTopology::Single);
        assert_eq!(slots_of(&single, &legs).len(), 1);
        let cluster = Layout::new("ns", RedisTopology::Cluster);
        let groups = slots_of(&cluster, &legs);
        assert_eq!(groups.concat().len(), 3);
        assert_eq!(groups[0][0], &account("a"));
        for group in &groups {
            assert!(group
                .iter()
                .all(|other| cluster.same_slot(group[0].as_str(), other.as_str())));
        }
    }

    #[test]
    fn a_reserves_assets_parse_or_nothing() {
        assert_eq!(
            parse_seen("?,,USD/2"),
            Some(vec![SeenAsset::Unseen, SeenAsset::Missing, usd()])
        );
        assert_eq!(parse_seen("usd"), None);
    }
}
