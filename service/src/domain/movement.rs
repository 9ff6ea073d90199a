//! The kinds of movement, movements, and transactions.

use serde::{Deserialize, Serialize};

use super::{AccountId, Amount, Asset, Metadata, Postings, RuleError, TxId};

/// The kind of a movement: what a request's `type` names (all but
/// `expire`, which only the engine makes), and the first part of its
/// binding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Debit,
    Credit,
    Transfer,
    Hold,
    Capture,
    Void,
    Expire,
    Postings,
}

impl Kind {
    pub const ALL: [Self; 8] = [
        Self::Debit,
        Self::Credit,
        Self::Transfer,
        Self::Hold,
        Self::Capture,
        Self::Void,
        Self::Expire,
        Self::Postings,
    ];

    /// Its name in requests, bindings, records and histories.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Debit => "debit",
            Self::Credit => "credit",
            Self::Transfer => "transfer",
            Self::Hold => "hold",
            Self::Capture => "capture",
            Self::Void => "void",
            Self::Expire => "expire",
            Self::Postings => "postings",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.as_str() == raw)
    }

    /// The kind a request's `type` names: any but `expire`.
    pub fn posted(raw: &str) -> Result<Self, RuleError> {
        match Self::parse(raw) {
            Some(Self::Expire) | None => Err(RuleError::UnknownKind(raw.to_owned())),
            Some(kind) => Ok(kind),
        }
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a transaction does to balances.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Movement {
    /// Take `amount` from `account`; refused if the balance is short.
    Debit { account: AccountId, amount: Amount },
    /// Add `amount` to `account`; refused if the balance would pass 2^53-1.
    Credit { account: AccountId, amount: Amount },
    /// Move `amount` from `account` to `to`, both in one atomic step.
    Transfer {
        account: AccountId,
        to: AccountId,
        amount: Amount,
    },
    /// Reserve `amount` of `account` (for `to`, when given) for at most
    /// `timeout_s` from its apply: no balance changes, the account's
    /// `pending` rises, and what may leave it is `balance - pending`.
    Hold {
        account: AccountId,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        to: Option<AccountId>,
        amount: Amount,
        timeout_s: u32,
    },
    /// End hold `hold` by moving `amount` (at most what it holds) out of
    /// its account, to its `to` when it has one; the rest is released.
    /// `account` and `to` are the hold's, as its binding names them.
    Capture {
        hold: TxId,
        account: AccountId,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        to: Option<AccountId>,
        amount: Amount,
    },
    /// End hold `hold` by releasing all of it (`amount`, the hold's).
    Void {
        hold: TxId,
        account: AccountId,
        amount: Amount,
    },
    /// The engine's void of a hold past its deadline (made by the expirer,
    /// never posted): nothing happens unless the hold is still held and due.
    Expire {
        hold: TxId,
        account: AccountId,
        amount: Amount,
    },
    /// Move each posting's amount from its `from` to its `to`, in order,
    /// all or none (see [`Postings`]).
    Postings { postings: Postings },
}

/// A hold as its binding names it: what a capture or void of it needs to
/// be routed, checked and keyed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HoldTerms {
    pub account: AccountId,
    pub to: Option<AccountId>,
    pub amount: Amount,
}

impl Movement {
    /// Builds a movement from its parts, enforcing which parts each kind needs.
    /// A debit, credit or transfer (the other kinds have parts of their
    /// own: built as they are).
    pub fn new(
        kind: Kind,
        account: AccountId,
        to: Option<AccountId>,
        amount: Amount,
    ) -> Result<Self, RuleError> {
        match kind {
            Kind::Debit | Kind::Credit if to.is_some() => Err(RuleError::ToNotAllowed),
            Kind::Debit => Ok(Self::Debit { account, amount }),
            Kind::Credit => Ok(Self::Credit { account, amount }),
            Kind::Transfer => match to {
                None => Err(RuleError::Missing("to")),
                Some(to) if to == account => Err(RuleError::TransferToSelf),
                Some(to) => Ok(Self::Transfer {
                    account,
                    to,
                    amount,
                }),
            },
            other => Err(RuleError::UnknownKind(other.as_str().to_owned())),
        }
    }

    pub fn kind(&self) -> Kind {
        match self {
            Self::Debit { .. } => Kind::Debit,
            Self::Credit { .. } => Kind::Credit,
            Self::Transfer { .. } => Kind::Transfer,
            Self::Hold { .. } => Kind::Hold,
            Self::Capture { .. } => Kind::Capture,
            Self::Void { .. } => Kind::Void,
            Self::Expire { .. } => Kind::Expire,
            Self::Postings { .. } => Kind::Postings,
        }
    }

    /// True for the kinds that begin or end a hold (records of the hold
    /// wire version).
    pub fn is_of_a_hold(&self) -> bool {
        matches!(
            self,
            Self::Hold { .. } | Self::Capture { .. } | Self::Void { .. } | Self::Expire { .. }
        )
    }

    /// The hold a capture, void or expiry ends.
    pub fn ended_hold(&self) -> Option<&TxId> {
        match self {
            Self::Capture { hold, .. } | Self::Void { hold, .. } | Self::Expire { hold, .. } => {
                Some(hold)
            }
            _ => None,
        }
    }

    /// Where money lands in another account when this is applied: a
    /// transfer's or a capture's `to` (a saga when it is in another slot).
    pub fn credited(&self) -> Option<&AccountId> {
        match self {
            Self::Transfer { to, .. } => Some(to),
            Self::Capture { to, .. } => to.as_ref(),
            _ => None,
        }
    }

    /// The account whose balance is checked (a postings transaction's
    /// first `from`); the Kafka record key, so one account's transactions
    /// are applied in order.
    pub fn account(&self) -> &AccountId {
        match self {
            Self::Postings { postings } => postings.first_from(),
            Self::Debit { account, .. }
            | Self::Credit { account, .. }
            | Self::Transfer { account, .. }
            | Self::Hold { account, .. }
            | Self::Capture { account, .. }
            | Self::Void { account, .. }
            | Self::Expire { account, .. } => account,
        }
    }

    /// The other account named: a transfer's destination, a hold's (or
    /// its capture's) `to`.
    pub fn to(&self) -> Option<&AccountId> {
        match self {
            Self::Transfer { to, .. } => Some(to),
            Self::Hold { to, .. } | Self::Capture { to, .. } => to.as_ref(),
            _ => None,
        }
    }

    /// Every account money leaves (what an API key's scope must match):
    /// `account`, or each posting's `from`.
    pub fn sources(&self) -> Vec<&AccountId> {
        match self {
            Self::Postings { postings } => {
                let mut froms: Vec<&AccountId> = postings.iter().map(|p| &p.from).collect();
                froms.dedup();
                froms
            }
            other => vec![other.account()],
        }
    }

    /// The postings of a postings transaction.
    pub fn postings(&self) -> Option<&Postings> {
        match self {
            Self::Postings { postings } => Some(postings),
            _ => None,
        }
    }

    /// The amount moved; for a hold, void or expiry the amount held;
    /// `None` for postings (each has its own).
    pub fn amount(&self) -> Option<Amount> {
        Some(match self {
            Self::Postings { .. } => return None,
            Self::Debit { amount, .. }
            | Self::Credit { amount, .. }
            | Self::Transfer { amount, .. }
            | Self::Hold { amount, .. }
            | Self::Capture { amount, .. }
            | Self::Void { amount, .. }
            | Self::Expire { amount, .. } => *amount,
        })
    }
}

/// A validated transaction: an id, a movement, its metadata, and the asset
/// it names (every account it touches must hold it; `None`: not named).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transaction {
    pub id: TxId,
    pub movement: Movement,
    pub metadata: Metadata,
    pub asset: Option<Asset>,
}

impl Transaction {
    /// What the id is bound to, as text ([`super::Binding::encode`]): two
    /// requests with one id are the same request exactly when theirs are
    /// equal.
    pub fn fingerprint(&self) -> String {
        super::Binding::encode(&self.movement, &self.metadata, self.asset.as_ref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn movement_rules() {
        let a = AccountId::parse("a").unwrap();
        let b = AccountId::parse("b").unwrap();
        let one = Amount::new(1).unwrap();
        assert_eq!(
            Movement::new(Kind::Debit, a.clone(), Some(b.clone()), one),
            Err(RuleError::ToNotAllowed)
        );
        assert_eq!(
            Movement::new(Kind::Transfer, a.clone(), None, one),
            Err(RuleError::Missing("to"))
        );
        assert_eq!(
            Movement::new(Kind::Transfer, a.clone(), Some(a.clone()), one),
            Err(RuleError::TransferToSelf)
        );
        assert!(matches!(
            Movement::new(Kind::Hold, a.clone(), None, one),
            Err(RuleError::UnknownKind(_))
        ));
        let t = Movement::new(Kind::Transfer, a, Some(b), one).unwrap();
        assert_eq!(t.kind(), Kind::Transfer);
    }

    #[test]
    fn kinds_have_one_name_each_and_expire_is_never_posted() {
        for kind in Kind::ALL {
            assert_eq!(Kind::parse(kind.as_str()), Some(kind));
            let json = serde_json::to_string(&kind).unwrap();
            assert_eq!(json, format!("\"{kind}\""));
        }
        assert_eq!(Kind::posted("hold"), Ok(Kind::Hold));
        assert_eq!(
            Kind::posted("expire"),
            Err(RuleError::UnknownKind("expire".into()))
        );
        assert_eq!(
            Kind::posted("refund"),
            Err(RuleError::UnknownKind("refund".into()))
        );
    }
}
