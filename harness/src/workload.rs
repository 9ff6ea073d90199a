//! What a run sends and what it got back, shared by every runner (goose,
//! wrk, scenarios), the invariants and the model: account names, the mix of
//! movements, the transactions sent, and the ledger of answers.

use std::collections::HashMap;

use rand::Rng;
use serde::Deserialize;
use txengine::limits::MAX_MINOR_UNITS;

/// The name of account number `index`: `acct-<index>`.
pub fn account_name(index: usize) -> String {
    format!("acct-{index}")
}

/// An account's asset and bounds, as a run makes it (`PUT /accounts`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountSpec {
    pub asset: String,
    pub min_balance: i64,
    pub max_balance: i64,
}

/// What an account made without a spec has: the engine's default asset
/// (`--default-asset`, `XXX`), no overdraft, no cap but 2^53-1.
impl Default for AccountSpec {
    fn default() -> Self {
        Self {
            asset: "XXX".into(),
            min_balance: 0,
            max_balance: MAX_MINOR_UNITS as i64,
        }
    }
}

/// The scenarios' two assets.
pub const ASSETS: [&str; 2] = ["USD/2", "EUR/2"];

impl AccountSpec {
    /// Account number `index` of a scenario whose accounts hold `balance`
    /// each, and the balance it starts with. Of every four: a plain one;
    /// one with an overdraft down to `-balance`, starting at 0 (so debits
    /// take it below 0 and meet its floor); one capped at `balance` plus a
    /// tenth (credits meet the cap); and one of the second asset (transfers
    /// between it and the others are `asset_mismatch`).
    pub fn of_scenario(index: usize, balance: u64) -> (Self, u64) {
        let signed = balance as i64;
        let plain = Self {
            asset: ASSETS[0].into(),
            ..Self::default()
        };
        match index % 4 {
            1 => (
                Self {
                    min_balance: -signed,
                    ..plain
                },
                0,
            ),
            2 => (
                Self {
                    max_balance: signed + signed / 10,
                    ..plain
                },
                balance,
            ),
            3 => (
                Self {
                    asset: ASSETS[1].into(),
                    ..plain
                },
                balance,
            ),
            _ => (plain, balance),
        }
    }

    /// The body of `PUT /accounts/{account}` that makes it.
    pub fn request_body(&self) -> serde_json::Value {
        serde_json::json!({
            "asset": self.asset,
            "min_balance": self.min_balance,
            "max_balance": self.max_balance,
        })
    }
}

/// How a run's transfers pick their destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Transfers {
    /// Any other account (on a cluster, nearly always another slot: a saga).
    #[default]
    AsDrawn,
    /// The source's partner: an account named to share its slot, so a
    /// transfer is one script on a cluster too.
    WithinSlot,
}

/// The first `<account>.p<k>` that shares `account`'s slot in `layout`.
pub fn partner_in_slot(layout: &txengine::store::Layout, account: &str) -> String {
    (0..)
        .map(|k| format!("{account}.p{k}"))
        .find(|name| layout.same_slot(name, account))
        .expect("some name lands in the slot")
}

/// Each of accounts `0..accounts` with its partner in `layout`.
pub fn partners(
    layout: &txengine::store::Layout,
    accounts: usize,
) -> std::sync::Arc<HashMap<String, String>> {
    std::sync::Arc::new(
        (0..accounts)
            .map(account_name)
            .map(|a| {
                let partner = partner_in_slot(layout, &a);
                (a, partner)
            })
            .collect(),
    )
}

/// Percentages of each kind of movement (summing to 100) and the range
/// amounts are drawn from. Scenario files have one as `[mix]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mix {
    #[serde(default)]
    pub transfer: u32,
    #[serde(default)]
    pub debit: u32,
    #[serde(default)]
    pub credit: u32,
    /// Holds; each accepted one is followed by its capture (of part or all
    /// of it), its void, or nothing (left to expire), drawn per hold.
    #[serde(default)]
    pub hold: u32,
    /// The holds' `timeout_s`: short, so that some expire during a run.
    #[serde(default = "default_hold_timeout_s")]
    pub hold_timeout_s: u32,
    /// Postings transactions: a chain of `postings_legs` postings (a to b,
    /// b to c, ...) over drawn accounts, all or none.
    #[serde(default)]
    pub postings: u32,
    #[serde(default = "default_postings_legs")]
    pub postings_legs: u32,
    pub amount_min: u64,
    pub amount_max: u64,
}

fn default_hold_timeout_s() -> u32 {
    2
}

fn default_postings_legs() -> u32 {
    3
}

impl Mix {
    /// The load runs' mix, goose and wrk alike (`harness/wrk/post.lua` has
    /// the same numbers; a test runs it against [`crate::wrk::movement_for`]).
    pub const LOAD: Mix = Mix {
        transfer: 60,
        debit: 25,
        credit: 15,
        hold: 0,
        hold_timeout_s: 2,
        postings: 0,
        postings_legs: 3,
        amount_min: 1,
        amount_max: 1000,
    };

    /// `harness load --postings <legs>`: half postings of `legs` legs,
    /// half plain transfers, amounts as the load's.
    pub fn postings_beside_transfers(legs: u32) -> Mix {
        Mix {
            transfer: 50,
            debit: 0,
            credit: 0,
            postings: 50,
            postings_legs: legs,
            ..Mix::LOAD
        }
    }

    /// Plain transfers only, amounts as `self`'s.
    pub fn transfers_only(&self) -> Mix {
        Mix {
            transfer: 100,
            debit: 0,
            credit: 0,
            hold: 0,
            postings: 0,
            ..*self
        }
    }

    /// The kind for a `roll` in 0..100: transfers first, then debits, then
    /// credits, then postings, then holds.
    pub fn kind(&self, roll: u32) -> Kind {
        debug_assert!(roll < 100, "a roll is a percentage");
        if roll < self.transfer {
            Kind::Transfer
        } else if roll < self.transfer + self.debit {
            Kind::Debit
        } else if roll < self.transfer + self.debit + self.credit {
            Kind::Credit
        } else if roll < self.transfer + self.debit + self.credit + self.postings {
            Kind::Postings
        } else {
            Kind::Hold {
                timeout_s: self.hold_timeout_s,
            }
        }
    }

    /// What follows accepted hold `hold`, drawn with `rng`: its capture (of
    /// part or all of it), its void, or nothing (it expires).
    pub fn end_of(hold: &SentTx, rng: &mut impl Rng) -> Option<SentTx> {
        let (kind, amount) = match rng.random_range(0..100) {
            0..45 => (Kind::Capture, rng.random_range(1..=hold.amount)),
            45..75 => (Kind::Void, hold.amount),
            _ => return None,
        };
        Some(SentTx {
            id: format!("{}-end", hold.id),
            kind,
            account: hold.account.clone(),
            to: hold.to.clone(),
            amount,
            accepted_at_ms: 0,
            hold: Some(hold.id.clone()),
            legs: Vec::new(),
        })
    }

    /// A chain of `postings_legs` postings from account `from` (each to
    /// another account than its own `from`, the next leg paying on from
    /// there), amounts drawn with `rng`.
    fn draw_legs(&self, from: usize, accounts: usize, rng: &mut impl Rng) -> Vec<Leg> {
        let mut at = from;
        (0..self.postings_legs)
            .map(|_| {
                let next = (at + rng.random_range(1..accounts)) % accounts;
                let leg = Leg {
                    from: account_name(at),
                    to: account_name(next),
                    amount: rng.random_range(self.amount_min..=self.amount_max),
                    asset: None,
                };
                at = next;
                leg
            })
            .collect()
    }

    /// A transaction `id` over accounts `0..accounts`, drawn with `rng`; a
    /// transfer never goes to its own source.
    pub fn draw(&self, id: String, accounts: usize, rng: &mut impl Rng) -> SentTx {
        let kind = self.kind(rng.random_range(0..100));
        let from = rng.random_range(0..accounts);
        let pays_another = match kind {
            Kind::Transfer => true,
            Kind::Hold { .. } => rng.random_bool(0.5),
            _ => false,
        };
        let to =
            pays_another.then(|| account_name((from + rng.random_range(1..accounts)) % accounts));
        let legs = match kind {
            Kind::Postings => self.draw_legs(from, accounts, rng),
            _ => Vec::new(),
        };
        let amount = match kind {
            Kind::Postings => legs.iter().map(|leg| leg.amount).sum(),
            _ => rng.random_range(self.amount_min..=self.amount_max),
        };
        SentTx {
            id,
            kind,
            account: account_name(from),
            to,
            amount,
            accepted_at_ms: 0,
            hold: None,
            legs,
        }
    }

    /// Shares summing to 100 and a valid amount range.
    pub fn validate(&self) -> Result<(), String> {
        let sum = self.transfer + self.debit + self.credit + self.postings + self.hold;
        if sum != 100 {
            return Err(format!(
                "debit + credit + transfer + postings + hold must be 100, got {sum}"
            ));
        }
        let most = txengine::limits::MAX_POSTINGS as u32;
        if self.postings > 0 && !(1..=most).contains(&self.postings_legs) {
            return Err(format!("postings_legs must be in 1..={most}"));
        }
        if self.hold > 0 && self.hold_timeout_s == 0 {
            return Err("hold_timeout_s must be at least 1".into());
        }
        if !(1..=MAX_MINOR_UNITS).contains(&self.amount_min)
            || self.amount_min > self.amount_max
            || self.amount_max > MAX_MINOR_UNITS
        {
            return Err(format!(
                "need 1 <= amount_min <= amount_max <= 2^53-1, got {}..={}",
                self.amount_min, self.amount_max
            ));
        }
        Ok(())
    }
}

/// What a run sent and had accepted (202/200), with the kind of movement.
#[derive(Debug, Clone)]
pub struct SentTx {
    pub id: String,
    pub kind: Kind,
    pub account: String,
    pub to: Option<String>,
    pub amount: u64,
    /// When the client got its 2xx (ms since the epoch); 0 if not tracked.
    pub accepted_at_ms: u64,
    /// A capture's or void's hold (its id); `account`, `to` and, for a
    /// void, `amount` are the hold's.
    pub hold: Option<String>,
    /// A postings transaction's postings (`account` is the first `from`,
    /// `amount` what they move in all); empty for any other kind.
    pub legs: Vec<Leg>,
}

/// One posting of a postings transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leg {
    pub from: String,
    pub to: String,
    pub amount: u64,
    /// The asset the posting names (both accounts must hold it), if any.
    pub asset: Option<String>,
}

impl SentTx {
    /// The `POST /transactions` body that sends it.
    pub fn request_body(&self) -> serde_json::Value {
        let kind = self.kind.as_str();
        match self.kind {
            Kind::Capture => serde_json::json!({
                "id": self.id, "type": kind, "hold": self.hold, "amount": self.amount,
            }),
            Kind::Void => serde_json::json!({"id": self.id, "type": kind, "hold": self.hold}),
            Kind::Hold { timeout_s } => serde_json::json!({
                "id": self.id, "type": kind, "account": self.account, "to": self.to,
                "amount": self.amount, "timeout_s": timeout_s,
            }),
            Kind::Postings => serde_json::json!({
                "id": self.id, "type": kind,
                "postings": self.legs.iter().map(|leg| match &leg.asset {
                    Some(asset) => serde_json::json!({
                        "from": leg.from, "to": leg.to, "amount": leg.amount, "asset": asset,
                    }),
                    None => serde_json::json!({"from": leg.from, "to": leg.to, "amount": leg.amount}),
                }).collect::<Vec<_>>(),
            }),
            _ => serde_json::json!({
                "id": self.id,
                "type": kind,
                "account": self.account,
                "to": self.to,
                "amount": self.amount,
            }),
        }
    }

    /// The engine's transaction this is (no metadata, no asset named).
    pub fn transaction(&self) -> anyhow::Result<txengine::domain::Transaction> {
        use txengine::domain::{AccountId, Amount, Asset, Movement, Posting, Postings, TxId};
        let movement = match self.kind {
            Kind::Postings => Movement::Postings {
                postings: Postings::new(
                    self.legs
                        .iter()
                        .map(|leg| {
                            Posting::new(
                                AccountId::parse(&leg.from)?,
                                AccountId::parse(&leg.to)?,
                                Amount::new(leg.amount)?,
                                leg.asset.as_deref().map(Asset::parse).transpose()?,
                            )
                        })
                        .collect::<Result<_, _>>()?,
                )?,
            },
            kind => Movement::new(
                txengine::domain::Kind::parse(kind.as_str())
                    .ok_or_else(|| anyhow::anyhow!("{} is not a movement", kind.as_str()))?,
                AccountId::parse(&self.account)?,
                self.to.as_deref().map(AccountId::parse).transpose()?,
                Amount::new(self.amount)?,
            )?,
        };
        Ok(txengine::domain::Transaction {
            asset: None,
            metadata: Default::default(),
            id: TxId::parse(&self.id)?,
            movement,
        })
    }

    /// Where the money goes when it is applied: a transfer's or a
    /// capture's `to` (a saga when that is in another slot).
    pub fn credited(&self) -> Option<&str> {
        match self.kind {
            Kind::Transfer | Kind::Capture => self.to.as_deref(),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Debit,
    Credit,
    Transfer,
    Hold { timeout_s: u32 },
    Capture,
    Void,
    Postings,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Postings => "postings",
            Self::Debit => "debit",
            Self::Credit => "credit",
            Self::Transfer => "transfer",
            Self::Hold { .. } => "hold",
            Self::Capture => "capture",
            Self::Void => "void",
        }
    }
}

/// The record of a run: starting balances, the accounts' assets and bounds
/// (an account not named has the default ones), accepted and refused
/// requests.
#[derive(Debug, Default, Clone)]
pub struct Ledger {
    pub start: HashMap<String, u64>,
    pub accounts: HashMap<String, AccountSpec>,
    pub accepted: Vec<SentTx>,
    /// Ids of requests that were answered with an error (4xx/5xx).
    pub refused: Vec<String>,
    /// Requests that never got an answer: each may or may not have been
    /// published, so each may have at most one outcome, counted if applied.
    pub uncertain: Vec<SentTx>,
}

impl Ledger {
    /// Takes in another run's accepted, refused and uncertain requests.
    pub fn absorb(&mut self, other: Ledger) {
        self.accepted.extend(other.accepted);
        self.refused.extend(other.refused);
        self.uncertain.extend(other.uncertain);
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

    #[test]
    fn draws_follow_the_mix() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut counts = HashMap::new();
        for i in 0..10_000 {
            let tx = Mix::LOAD.draw(i.to_string(), 5, &mut rng);
            assert!((1..=1000).contains(&tx.amount));
            assert_ne!(tx.to.as_deref(), Some(tx.account.as_str()));
            assert_eq!(tx.to.is_some(), tx.kind == Kind::Transfer);
            *counts.entry(tx.kind).or_insert(0) += 1;
        }
        let share = |kind| counts[&kind] as f64 / 10_000.0;
        assert!((share(Kind::Transfer) - 0.60).abs() < 0.03, "{counts:?}");
        assert!((share(Kind::Debit) - 0.25).abs() < 0.03, "{counts:?}");
    }

    #[test]
    fn postings_are_chains_of_their_legs() {
        let mix = Mix {
            transfer: 50,
            debit: 0,
            credit: 0,
            postings: 50,
            ..Mix::LOAD
        };
        let mut rng = rand::rngs::StdRng::seed_from_u64(9);
        let mut seen = 0;
        for i in 0..1_000 {
            let tx = mix.draw(i.to_string(), 4, &mut rng);
            if tx.kind != Kind::Postings {
                assert!(tx.legs.is_empty());
                continue;
            }
            seen += 1;
            assert_eq!(tx.legs.len(), 3);
            assert_eq!(tx.legs[0].from, tx.account);
            assert_eq!(tx.amount, tx.legs.iter().map(|leg| leg.amount).sum::<u64>());
            for pair in tx.legs.windows(2) {
                assert_eq!(pair[0].to, pair[1].from, "a chain");
            }
            assert!(tx.legs.iter().all(|leg| leg.from != leg.to));
            let body = tx.request_body();
            assert_eq!(body["postings"].as_array().map(Vec::len), Some(3), "{body}");
        }
        assert!((400..600).contains(&seen), "{seen}");
        let too_long = Mix {
            postings_legs: txengine::limits::MAX_POSTINGS as u32 + 1,
            ..mix
        };
        assert!(too_long.validate().unwrap_err().contains("postings_legs"));
    }

    #[test]
    fn mixes_that_cannot_work_are_refused() {
        assert_eq!(Mix::LOAD.validate(), Ok(()));
        let sum = Mix {
            credit: 10,
            ..Mix::LOAD
        };
        assert!(sum.validate().unwrap_err().contains("must be 100"));
        let zero = Mix {
            amount_min: 0,
            ..Mix::LOAD
        };
        assert!(zero.validate().is_err());
        let upside_down = Mix {
            amount_min: 5,
            amount_max: 4,
            ..Mix::LOAD
        };
        assert!(upside_down.validate().is_err());
    }
}
