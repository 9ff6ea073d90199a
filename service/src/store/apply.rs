//! The consumer's side: each record's step applied by its script (a
//! slot's records in one call), its reply read into where the transaction stands,
//! and outcomes decided in another slot written to their tx record.

use redis::Cmd;

use crate::domain::Balance;

use super::accounts::parse_balance;
use super::apply_many::{ApplyScript, StepAnswer, StepCall};
use super::calls::{
    AccountKeys, AtomicUpdateCall, CreditedKeys, FlagArgs, HoldCall, PostingsCall, SagaStepCall,
};
use super::outcomes::parse_status;
use super::posting_steps::numbered_postings;
use super::Layout;
use super::{evalsha, Store, StoreError};
use crate::domain::{
    AccountId, Asset, Movement, Outcome, RejectReason, Transaction, TxId, TxStatus,
};
use crate::wire::{Record, SagaStep, StepKind};

/// One applied transaction as the apply script reported it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    pub outcome: Outcome,
    /// True when an earlier apply had settled the id; nothing changed.
    pub duplicate: bool,
}

/// A transaction whose outcome was decided in another slot than its tx
/// record's: the outcome, the asset of the account it ended on, and a
/// postings transaction's assets (see [`Store::finish`]).
pub type EndedElsewhere<'a> = (
    &'a Transaction,
    Outcome,
    Option<&'a Asset>,
    &'a [Option<Asset>],
);

/// Where the saga of a record stands once its step is applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// The transaction's outcome is decided. `recorded` is false when its tx
    /// record is in another slot: [`Store::finish`] writes it there. `asset`
    /// is the asset of the account it ended on (`None`: no such account).
    Ended {
        applied: Applied,
        recorded: bool,
        asset: Option<Asset>,
        /// A postings transaction's: each posting's asset (its `from`'s;
        /// `None` where that account does not exist). Empty otherwise.
        posting_assets: Vec<Option<Asset>>,
    },
    /// The saga goes on with this record, to be published.
    Next(Record),
    /// The id was applied with another body: nothing changed, and this
    /// record is never answered the other's outcome (it goes to the DLQ).
    Mismatch,
    /// An expiry was looked at: `expired` when the hold is expired (ended
    /// by this record now, or `duplicate`: before, by its earlier delivery
    /// or a late capture or void); false when the hold ended otherwise or
    /// is not due (nothing changed).
    Expiry { expired: bool, duplicate: bool },
}

impl Store {
    /// Applies transactions that end in one script (debits, credits,
    /// transfers within a slot), in order. Safe to call again with the same
    /// batch: the processed flag inside the script turns a repeat into a
    /// no-op that returns the first outcome.
    pub async fn apply_batch(&self, batch: &[Transaction]) -> Result<Vec<Applied>, StoreError> {
        let records: Vec<Record> = batch
            .iter()
            .map(|tx| Record {
                tx: tx.clone(),
                accepted_at_ms: 0,
                saga: None,
            })
            .collect();
        self.apply_records(&records)
            .await?
            .into_iter()
            .zip(batch)
            .map(|(progress, tx)| match progress {
                Progress::Ended { applied, .. } => Ok(applied),
                Progress::Mismatch => Err(StoreError::Unexpected(format!(
                    "{} was applied with another body",
                    tx.id
                ))),
                Progress::Next(_) | Progress::Expiry { .. } => Err(StoreError::Unexpected(
                    "apply_batch takes transactions that end in one script".into(),
                )),
            })
            .collect()
    }

    /// Applies each record's step, one script each, a slot's in one call
    /// (all slots at once, in order within a slot), and says where each
    /// transaction stands. Safe to call again with the same records: every
    /// step's flag turns a repeat into a no-op that answers as the first.
    pub async fn apply_records(&self, records: &[Record]) -> Result<Vec<Progress>, StoreError> {
        if records.is_empty() {
            return Ok(Vec::new());
        }
        let now_ms = crate::wire::now_ms();
        let calls = records
            .iter()
            .map(|record| self.step_command(record, now_ms))
            .collect::<Result<Vec<_>, _>>()?;
        let replies = self.run_by_slot(&calls).await?;
        let entries: u64 = replies.iter().map(|reply| reply.4).sum();
        metrics::counter!("txengine_history_entries_total").increment(entries);
        records
            .iter()
            .zip(replies)
            .map(|(record, reply)| self.progress(record, reply))
            .collect()
    }

    /// The script call that applies `record`'s step, and the shard it runs in.
    fn step_command(&self, record: &Record, now_ms: u64) -> Result<StepCall, StoreError> {
        let tx = &record.tx;
        let account = tx.movement.account().as_str();
        let saga_step = |on: &str, step: StepKind, asset: Option<&Asset>| {
            let asset = asset.map(Asset::as_str).unwrap_or("");
            self.saga_command(tx, now_ms, on, step, asset)
        };
        Ok(match (&record.saga, tx.movement.credited()) {
            (None, _) if tx.movement.is_of_a_hold() => self.hold_command(record, now_ms),
            (None, _) if tx.movement.postings().is_some() => {
                if self.layout.in_one_slot(&tx.movement) {
                    self.postings_command(tx, now_ms)
                } else {
                    let first = tx.movement.account();
                    self.posting_step_command(tx, now_ms, first, StepKind::Reserve, None)
                }
            }
            (Some(step @ (SagaStep::Reserve { on, .. } | SagaStep::Commit { on, .. })), _) => {
                self.posting_step_command(tx, now_ms, on, step.kind(), None)
            }
            (Some(SagaStep::Cancel { on, failed, .. }), _) => {
                self.posting_step_command(tx, now_ms, on, StepKind::Cancel, Some(failed))
            }
            (None, _) if !self.layout.needs_saga(tx) => self.apply_command(tx, now_ms),
            (None, Some(_)) => saga_step(account, StepKind::Debit, tx.asset.as_ref()),
            (
                Some(SagaStep::Credit {
                    debited_asset: asset,
                    ..
                }),
                Some(to),
            ) => saga_step(
                to.as_str(),
                StepKind::Credit,
                asset.as_ref().or(tx.asset.as_ref()),
            ),
            (Some(step @ SagaStep::Settle { .. }), Some(_)) => {
                saga_step(account, step.kind(), None)
            }
            (Some(_), None) => {
                return Err(StoreError::Unexpected(format!(
                    "saga step of {}, which credits no other account",
                    tx.id
                )))
            }
            (None, None) => unreachable!("a movement without `to` never needs a saga"),
        })
    }

    /// The call of `lua/atomic_update.lua` for a transaction that ends in
    /// one script (its accounts in one slot).
    fn apply_command(&self, tx: &Transaction, now_ms: u64) -> StepCall {
        let layout = &self.layout;
        let account = tx.movement.account().as_str();
        let to = tx.movement.to().map(AccountId::as_str);
        let call = AtomicUpdateCall {
            account: AccountKeys::of(layout, account, layout.apply_flag(tx.id.as_str(), account)),
            to: to.map(|to| CreditedKeys::of(layout, to)),
            args: self.flag_args(tx, tx.movement.kind().as_str(), now_ms),
            to_name: to.unwrap_or(""),
            account_name: account,
            asset: tx.asset.as_ref().map_or("", Asset::as_str),
        };
        StepCall::new(
            layout.shard_of(account),
            ApplyScript::AtomicUpdate,
            call.write(),
        )
    }

    /// The call of `lua/postings.lua` for a postings transaction (its
    /// accounts in one slot, the first `from`'s).
    fn postings_command(&self, tx: &Transaction, now_ms: u64) -> StepCall {
        let layout = &self.layout;
        let (accounts, numbered) =
            numbered_postings(tx.movement.postings().expect("a postings transaction"));
        let first = accounts[0];
        let call = PostingsCall {
            first: AccountKeys::of(layout, first, layout.apply_flag(tx.id.as_str(), first)),
            others: accounts[1..]
                .iter()
                .map(|account| CreditedKeys::of(layout, account))
                .collect(),
            args: self.flag_args(tx, "postings", now_ms),
            postings: numbered,
            names: accounts,
        };
        StepCall::new(layout.shard_of(first), ApplyScript::Postings, call.write())
    }

    /// The call of `lua/saga_step.lua` for `step` of a saga between slots,
    /// on account `on`, under the step's own flag.
    fn saga_command(
        &self,
        tx: &Transaction,
        now_ms: u64,
        on: &str,
        step: StepKind,
        asset: &str,
    ) -> StepCall {
        let flag = step.flag();
        let layout = &self.layout;
        let counterparty = match tx.movement.to() {
            Some(to) if to.as_str() != on => to.as_str(),
            _ => tx.movement.account().as_str(),
        };
        let ended_hold = tx.movement.ended_hold().map(TxId::as_str);
        let call = SagaStepCall {
            account: AccountKeys::of(layout, on, layout.step(on, tx.id.as_str(), flag)),
            // A capture's saga ends its hold when it settles.
            hold: ended_hold
                .filter(|_| flag == "settle")
                .map(|hold| layout.hold(on, hold)),
            args: self.flag_args(tx, step.as_str(), now_ms),
            counterparty,
            kind: tx.movement.kind().as_str(),
            hold_id: ended_hold.unwrap_or(""),
            asset,
        };
        StepCall::new(layout.shard_of(on), ApplyScript::SagaStep, call.write())
    }

    /// The call of `lua/hold.lua` for a hold, or a capture, void or expiry
    /// of one: in the slot of the hold's account.
    fn hold_command(&self, record: &Record, now_ms: u64) -> StepCall {
        let layout = &self.layout;
        let tx = &record.tx;
        let id = tx.id.as_str();
        let movement = &tx.movement;
        let account = movement.account().as_str();
        let hold = movement.ended_hold().unwrap_or(&tx.id).as_str();
        let shard = layout.shard_of(account);
        let (op, flag) = match movement {
            Movement::Capture { .. } if layout.needs_saga(tx) => {
                ("capture_out", layout.step(account, id, "debit"))
            }
            Movement::Expire { .. } => ("expire", layout.hold(account, hold)),
            _ => (movement.kind().as_str(), layout.apply_flag(id, account)),
        };
        let to = match (op, movement.credited()) {
            ("capture", Some(to)) => Some(CreditedKeys::of(layout, to.as_str())),
            _ => None,
        };
        let timeout_ms = match movement {
            Movement::Hold { timeout_s, .. } => u64::from(*timeout_s) * 1000,
            _ => 0,
        };
        let call = HoldCall {
            account: AccountKeys::of(layout, account, flag),
            hold: layout.hold(account, hold),
            holds_due: layout.holds_due(shard),
            to,
            args: self.flag_args(tx, op, now_ms),
            due_member: Layout::due_member(account, hold),
            timeout_ms,
            to_name: movement.to().map_or("", AccountId::as_str),
            hold_id: hold,
            account_name: account,
            asset: tx.asset.as_ref().map_or("", Asset::as_str),
        };
        StepCall::new(shard, ApplyScript::Hold, call.write())
    }

    /// ARGV[1..8] of every apply script (`lua/money.lua`'s layout): `what`
    /// (the kind, step or op) of `tx`, its flag's terms and its history's.
    pub(super) fn flag_args<'a>(
        &self,
        tx: &'a Transaction,
        what: &'a str,
        now_ms: u64,
    ) -> FlagArgs<'a> {
        FlagArgs {
            what,
            amount_minor: tx
                .movement
                .amount()
                .map_or(0, |amount| amount.minor_units()),
            fingerprint: tx.fingerprint(),
            outcome_ttl_secs: self.outcome_ttl_secs,
            now_ms,
            id: tx.id.as_str(),
            history_keep_ms: self.history_keep_ms,
            metadata: tx.metadata.to_json(),
        }
    }

    /// Reads a step's reply `(state, reason, balance_after, duplicate,
    /// entries, asset, posting, posting assets)`.
    /// One match, kept whole: it is the table of the saga's transitions
    /// (which reply each step may give, and what follows it), read at once.
    fn progress(
        &self,
        record: &Record,
        (state, reason, balance_after, duplicate, _, asset, posting, assets): StepAnswer,
    ) -> Result<Progress, StoreError> {
        let tx = &record.tx;
        let duplicate = duplicate == 1;
        let unexpected = || {
            StoreError::Unexpected(format!(
                "{} step {:?} answered state={state} reason={reason} balance_after={balance_after} asset={asset} posting={posting}",
                tx.id, record.saga
            ))
        };
        let reply = StepReply::parse(&state, &reason, &balance_after, &asset, &posting)
            .ok_or_else(unexpected)?;
        // Postings between slots, or a record of one of their steps (on
        // any topology: the step names itself).
        let between_slots = match &record.saga {
            Some(step) => step.of_postings(),
            None => !self.layout.in_one_slot(&tx.movement),
        };
        // Another body's flag: the record goes to the DLQ, unless it is a
        // later step of postings between slots, whose earlier slots hold
        // reservations only its chain gives back: that stops loudly.
        if reply == StepReply::Mismatch && !(between_slots && record.saga.is_some()) {
            return Ok(Progress::Mismatch);
        }
        if let Some(postings) = tx.movement.postings().filter(|_| between_slots) {
            return self
                .postings_progress(record, postings, reply, &posting, &assets, duplicate)
                .ok_or_else(unexpected);
        }
        let account_asset = parse_asset(&asset).ok_or_else(unexpected)?;
        let posting_assets = parse_assets(&assets).ok_or_else(unexpected)?;
        let ended = |outcome, recorded| {
            Ok(Progress::Ended {
                applied: Applied { outcome, duplicate },
                recorded,
                asset: account_asset.clone(),
                posting_assets: posting_assets.clone(),
            })
        };
        let next = |step| {
            Ok(Progress::Next(Record {
                saga: Some(step),
                ..record.clone()
            }))
        };
        let saga = self.layout.needs_saga(tx);
        match (&record.saga, reply) {
            (None, StepReply::Expiry { expired }) => Ok(Progress::Expiry { expired, duplicate }),
            (None, StepReply::Settled(outcome)) if !saga => {
                let account = tx.movement.account().as_str();
                ended(outcome, self.layout.same_slot(tx.id.as_str(), account))
            }
            // A saga's debit refused: it ends there.
            (None, StepReply::Settled(outcome @ Outcome::Rejected { .. })) => ended(outcome, false),
            (
                None,
                StepReply::Debited {
                    balance_after,
                    asset,
                },
            ) if saga => next(SagaStep::Credit {
                debited_balance_after: balance_after,
                debited_asset: asset,
            }),
            (
                Some(SagaStep::Credit {
                    debited_balance_after,
                    ..
                }),
                StepReply::Credited,
            ) => next(SagaStep::Settle {
                debited_balance_after: *debited_balance_after,
                refused: None,
            }),
            (
                Some(SagaStep::Credit {
                    debited_balance_after,
                    ..
                }),
                StepReply::Refused(reason),
            ) => next(SagaStep::Settle {
                debited_balance_after: *debited_balance_after,
                refused: Some(reason),
            }),
            (
                Some(SagaStep::Settle {
                    debited_balance_after,
                    refused: None,
                }),
                StepReply::Released,
            ) => ended(
                Outcome::Applied {
                    balance_after: *debited_balance_after,
                },
                false,
            ),
            (
                Some(SagaStep::Settle {
                    refused: Some(reason),
                    ..
                }),
                StepReply::Refunded,
            ) => ended(Outcome::rejected(*reason), false),
            _ => Err(unexpected()),
        }
    }

    /// Writes the outcomes of transactions whose outcome was decided in
    /// another slot than their tx record's, with the asset of the account
    /// each ended on (see `lua/finish.lua`); the first write wins, so a
    /// repeat is harmless.
    pub async fn finish(&self, ended: &[EndedElsewhere<'_>]) -> Result<(), StoreError> {
        if ended.is_empty() {
            return Ok(());
        }
        let now_ms = crate::wire::now_ms();
        let _: Vec<i64> = self
            .with_scripts(|| {
                let commands: Vec<(u32, Cmd)> = ended
                    .iter()
                    .map(|(tx, outcome, asset, posting_assets)| {
                        let (reason, balance_after, posting) = match outcome {
                            Outcome::Applied { balance_after } => {
                                ("", balance_after.minor_units().to_string(), String::new())
                            }
                            Outcome::Rejected { reason, posting } => (
                                reason.as_str(),
                                String::new(),
                                posting.map(|index| index.to_string()).unwrap_or_default(),
                            ),
                        };
                        let state = outcome.as_str();
                        let mut cmd = evalsha(&self.scripts.finish, &[self.tx_key(&tx.id)]);
                        cmd.arg(state)
                            .arg(reason)
                            .arg(balance_after)
                            .arg(now_ms)
                            .arg(tx.fingerprint())
                            .arg(self.outcome_ttl_secs)
                            .arg(asset.map_or("", |asset| asset.as_str()))
                            .arg(posting)
                            .arg(join_assets(posting_assets));
                        (self.layout.shard_of(tx.id.as_str()), cmd)
                    })
                    .collect();
                async move { self.conn.run_by_slot(commands).await }
            })
            .await?;
        Ok(())
    }
}

/// What a step's script answered (`state`, `reason`, `balance_after`),
/// parsed once: the apply script's outcome, or what a saga step did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum StepReply {
    /// A one-script apply's outcome, or a saga's refused debit.
    Settled(Outcome),
    /// A saga's debit took the money, of `asset`, and holds it (`None`:
    /// a debit of an earlier version, which did not say).
    Debited {
        balance_after: Balance,
        asset: Option<Asset>,
    },
    Credited,
    /// The credit was refused: a refund follows.
    Refused(RejectReason),
    Released,
    Refunded,
    /// A slot reserved its moves of postings between slots (a slot that
    /// refused answers `Refused`).
    Reserved,
    /// A slot committed them: `balance_after` is its first account's.
    Committed {
        balance_after: Balance,
    },
    /// A slot cancelled them.
    Cancelled,
    /// An expiry ended the hold (`true`), or found it ended or not due.
    Expiry {
        expired: bool,
    },
    /// The id's flag holds another body's outcome.
    Mismatch,
}

/// Postings' assets as the scripts keep them: comma-separated, '' where
/// none.
fn join_assets(assets: &[Option<Asset>]) -> String {
    assets
        .iter()
        .map(|asset| asset.as_ref().map_or("", Asset::as_str))
        .collect::<Vec<_>>()
        .join(",")
}

/// A reply's assets of postings, comma-separated (`Some(vec![])` for '':
/// not postings), or `None` when one does not parse.
pub(super) fn parse_assets(assets: &str) -> Option<Vec<Option<Asset>>> {
    match assets {
        "" => Some(Vec::new()),
        assets => assets.split(',').map(parse_asset).collect(),
    }
}

/// A reply's asset: `Some(None)` for '' (none), `None` when it does not
/// parse.
pub(super) fn parse_asset(asset: &str) -> Option<Option<Asset>> {
    match asset {
        "" => Some(None),
        asset => Asset::parse(asset).ok().map(Some),
    }
}

impl StepReply {
    fn parse(
        state: &str,
        reason: &str,
        balance_after: &str,
        asset: &str,
        posting: &str,
    ) -> Option<Self> {
        Some(match state {
            "applied" | "rejected" => {
                match parse_status(state, reason, balance_after, posting).ok()? {
                    TxStatus::Settled(outcome) => Self::Settled(outcome),
                    TxStatus::Pending => return None,
                }
            }
            "debited" => Self::Debited {
                balance_after: parse_balance(balance_after)?,
                asset: parse_asset(asset)?,
            },
            "credited" => Self::Credited,
            "refused" => Self::Refused(RejectReason::parse(reason)?),
            "released" => Self::Released,
            "refunded" => Self::Refunded,
            "reserved" => Self::Reserved,
            "committed" => Self::Committed {
                balance_after: parse_balance(balance_after)?,
            },
            "cancelled" => Self::Cancelled,
            "expired" => Self::Expiry { expired: true },
            // The hold had ended: `reason` is how.
            "ended" => Self::Expiry {
                expired: reason == "expired",
            },
            "not_due" => Self::Expiry { expired: false },
            "mismatch" => Self::Mismatch,
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_parse_into_what_the_step_did_or_nothing() {
        let five = Balance::new(5).unwrap();
        for (reply, expected) in [
            (
                ("applied", "", "5", ""),
                Some(StepReply::Settled(Outcome::Applied {
                    balance_after: five,
                })),
            ),
            (
                ("rejected", "insufficient_funds", "", ""),
                Some(StepReply::Settled(Outcome::rejected(
                    RejectReason::InsufficientFunds,
                ))),
            ),
            (
                ("debited", "", "5", "USD/2"),
                Some(StepReply::Debited {
                    balance_after: five,
                    asset: Some(Asset::parse("USD/2").unwrap()),
                }),
            ),
            (("credited", "", "9", ""), Some(StepReply::Credited)),
            (
                ("refused", "unknown_account", "", ""),
                Some(StepReply::Refused(RejectReason::UnknownAccount)),
            ),
            (
                ("debited", "", "-5", ""),
                Some(StepReply::Debited {
                    balance_after: Balance::new(-5).unwrap(),
                    asset: None,
                }),
            ),
            (("released", "", "5", ""), Some(StepReply::Released)),
            (("refunded", "", "5", ""), Some(StepReply::Refunded)),
            (("mismatch", "", "", ""), Some(StepReply::Mismatch)),
            // Broken answers are nothing, never a guess.
            (("applied", "", "9007199254740992", ""), None),
            (("applied", "", "", ""), None),
            (("rejected", "bored", "", ""), None),
            (("refused", "", "", ""), None),
            (("debited", "", "-9007199254740992", ""), None),
            (("debited", "", "1.5", ""), None),
            (("debited", "", "5", "usd"), None),
            (("pending", "", "", ""), None),
            (("stolen", "", "1", ""), None),
        ] {
            let (state, reason, balance_after, asset) = reply;
            assert_eq!(
                StepReply::parse(state, reason, balance_after, asset, ""),
                expected,
                "{reply:?}"
            );
        }
    }
}
