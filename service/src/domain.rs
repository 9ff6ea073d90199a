//! Domain types: ids, amounts, transaction kinds and outcomes.
//!
//! Parse, don't validate: every type here can only hold a valid value, so the
//! HTTP layer, the Kafka codec and the Redis store never re-check the rules.
//! This module knows nothing of axum, rdkafka or redis.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::limits::{MAX_ID_LEN, MAX_MINOR_UNITS};
use crate::limits::{
    MAX_METADATA_KEYS, MAX_METADATA_KEY_CHARS, MAX_METADATA_VALUE_CHARS, MAX_RATE,
    MAX_SCOPE_PATTERNS,
};
pub use crate::metadata::Metadata;

/// Why a request was refused before anything was published or written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    #[error("{field} must be 1..={MAX_ID_LEN} characters of [A-Za-z0-9_.:-]")]
    BadId { field: &'static str },
    #[error("{field} must be an integer in 1..={MAX_MINOR_UNITS}")]
    AmountOutOfRange { field: &'static str },
    #[error("balance must be an integer in 0..={MAX_MINOR_UNITS}")]
    BalanceOutOfRange,
    #[error("{held} minor units are in flight out of this account (a transfer that may be refunded): the balance must be at most {MAX_MINOR_UNITS} minus that")]
    NoRoomForHeld { held: u64 },
    #[error("`{0}` is required")]
    Missing(&'static str),
    #[error("`to` is only allowed for a transfer")]
    ToNotAllowed,
    #[error("`to` must differ from `account`")]
    TransferToSelf,
    #[error("unknown type `{0}`: expected debit, credit, transfer, hold, capture or void")]
    UnknownKind(String),
    #[error("`{field}` is not a field of a {kind}")]
    NotAField {
        field: &'static str,
        kind: &'static str,
    },
    #[error("timeout_s must be an integer in 1..={max} (this server's longest hold)")]
    HoldTimeoutOutOfRange { max: u64 },
    #[error("no hold `{0}` is known: never accepted, not a hold, or ended so long ago that its record expired")]
    UnknownHold(String),
    #[error(
        "the balance may not be below {pending}, the money held on the account (active holds)"
    )]
    BelowPending { pending: u64 },
    #[error("metadata has at most {MAX_METADATA_KEYS} keys")]
    MetadataKeys,
    #[error("metadata key `{key}` must be 1..={MAX_METADATA_KEY_CHARS} characters")]
    MetadataKey { key: String },
    #[error("metadata value of `{key}` must be at most {MAX_METADATA_VALUE_CHARS} characters")]
    MetadataValue { key: String },
    #[error("the `id` field and the Idempotency-Key header differ")]
    IdMismatch,
    #[error("a key id is 16 lowercase hex digits")]
    BadKeyId,
    #[error("`{pattern}` is not an account pattern: an account id, a prefix of one followed by `*`, or `*`")]
    BadScope { pattern: String },
    #[error("`accounts` needs 1..={} patterns", MAX_SCOPE_PATTERNS)]
    ScopeSize,
    #[error("{field} must be an integer in 1..={}", MAX_RATE)]
    LimitOutOfRange { field: &'static str },
}

fn is_valid_id(raw: &str) -> bool {
    !raw.is_empty()
        && raw.len() <= MAX_ID_LEN
        && raw
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'))
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $field:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// Parses a raw id, refusing anything outside the id alphabet.
            pub fn parse(raw: &str) -> Result<Self, RuleError> {
                if is_valid_id(raw) {
                    Ok(Self(raw.to_owned()))
                } else {
                    Err(RuleError::BadId { field: $field })
                }
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let raw = String::deserialize(d)?;
                Self::parse(&raw).map_err(serde::de::Error::custom)
            }
        }
    };
}

id_type!(
    /// An account id: 1..64 chars of `[A-Za-z0-9_.:-]`.
    AccountId,
    "account"
);
id_type!(
    /// A transaction id: 1..64 chars of `[A-Za-z0-9_.:-]`; the idempotency key.
    TxId,
    "id"
);

impl TxId {
    /// A fresh server-made id (UUIDv7: time-ordered, unique).
    pub fn generate() -> Self {
        Self(uuid::Uuid::now_v7().to_string())
    }
}

/// An amount of money in minor units, 1 ..= 2^53-1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct Amount(u64);

impl Amount {
    pub fn new(minor_units: u64) -> Result<Self, RuleError> {
        if (1..=MAX_MINOR_UNITS).contains(&minor_units) {
            Ok(Self(minor_units))
        } else {
            Err(RuleError::AmountOutOfRange { field: "amount" })
        }
    }

    pub fn minor_units(self) -> u64 {
        self.0
    }
}

impl<'de> Deserialize<'de> for Amount {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Self::new(u64::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

/// A balance in minor units, 0 ..= 2^53-1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct Balance(u64);

impl<'de> Deserialize<'de> for Balance {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Self::new(u64::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

impl Balance {
    pub fn new(minor_units: u64) -> Result<Self, RuleError> {
        if minor_units <= MAX_MINOR_UNITS {
            Ok(Self(minor_units))
        } else {
            Err(RuleError::BalanceOutOfRange)
        }
    }

    pub fn minor_units(self) -> u64 {
        self.0
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
}

/// A hold as its binding (the fingerprint of its body) names it: what a
/// capture or void of it needs to be routed, checked and keyed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HoldTerms {
    pub account: AccountId,
    pub to: Option<AccountId>,
    pub amount: Amount,
}

impl HoldTerms {
    /// The terms of the hold a fingerprint binds, or `None` when it binds
    /// another kind of transaction.
    pub fn of_fingerprint(fingerprint: &str) -> Option<Self> {
        let mut parts = movement_part(fingerprint).split('|');
        if parts.next()? != "hold" {
            return None;
        }
        let account = AccountId::parse(parts.next()?).ok()?;
        let to = match parts.next()? {
            "" => None,
            to => Some(AccountId::parse(to).ok()?),
        };
        let amount = Amount::new(parts.next()?.parse().ok()?).ok()?;
        Some(Self {
            account,
            to,
            amount,
        })
    }
}

impl Movement {
    /// Builds a movement from its parts, enforcing which parts each kind needs.
    pub fn new(
        kind: Option<&str>,
        account: AccountId,
        to: Option<AccountId>,
        amount: Amount,
    ) -> Result<Self, RuleError> {
        match kind.unwrap_or("debit") {
            "debit" | "credit" if to.is_some() => Err(RuleError::ToNotAllowed),
            "debit" => Ok(Self::Debit { account, amount }),
            "credit" => Ok(Self::Credit { account, amount }),
            "transfer" => match to {
                None => Err(RuleError::Missing("to")),
                Some(to) if to == account => Err(RuleError::TransferToSelf),
                Some(to) => Ok(Self::Transfer {
                    account,
                    to,
                    amount,
                }),
            },
            other => Err(RuleError::UnknownKind(other.to_owned())),
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Self::Debit { .. } => "debit",
            Self::Credit { .. } => "credit",
            Self::Transfer { .. } => "transfer",
            Self::Hold { .. } => "hold",
            Self::Capture { .. } => "capture",
            Self::Void { .. } => "void",
            Self::Expire { .. } => "expire",
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

    /// The account whose balance is checked; the Kafka record key, so one
    /// account's transactions are applied in order.
    pub fn account(&self) -> &AccountId {
        match self {
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

    /// The amount moved; for a hold, void or expiry the amount held.
    pub fn amount(&self) -> Amount {
        match self {
            Self::Debit { amount, .. }
            | Self::Credit { amount, .. }
            | Self::Transfer { amount, .. }
            | Self::Hold { amount, .. }
            | Self::Capture { amount, .. }
            | Self::Void { amount, .. }
            | Self::Expire { amount, .. } => *amount,
        }
    }

    /// A canonical text of the movement. Two requests with one id are the
    /// same request exactly when their fingerprints are equal.
    /// `kind|account|to|amount`, then a hold's timeout or the id of the
    /// hold a capture or void ends.
    pub fn fingerprint(&self) -> String {
        let base = format!(
            "{}|{}|{}|{}",
            self.kind(),
            self.account(),
            self.to().map(AccountId::as_str).unwrap_or(""),
            self.amount().minor_units()
        );
        match self {
            Self::Hold { timeout_s, .. } => format!("{base}|{timeout_s}"),
            _ => match self.ended_hold() {
                Some(hold) => format!("{base}|{hold}"),
                None => base,
            },
        }
    }

    /// The accounts a [`Movement::fingerprint`] names: the checked account
    /// and, for a transfer, the destination.
    pub fn parties_of_fingerprint(fingerprint: &str) -> impl Iterator<Item = &str> {
        movement_part(fingerprint)
            .split('|')
            .skip(1)
            .take(2)
            .filter(|part| !part.is_empty())
    }
}

/// The movement's part of a [`Transaction::fingerprint`] (the text before
/// its metadata).
fn movement_part(fingerprint: &str) -> &str {
    fingerprint
        .split_once('\n')
        .map_or(fingerprint, |(movement, _)| movement)
}

/// A validated transaction: an id, a movement and its metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transaction {
    pub id: TxId,
    pub movement: Movement,
    pub metadata: Metadata,
}

impl Transaction {
    /// What the id is bound to: the movement's fingerprint and, when there
    /// is metadata, a newline and its canonical JSON (which escapes every
    /// newline, so the first one always ends the movement's part).
    pub fn fingerprint(&self) -> String {
        let movement = self.movement.fingerprint();
        if self.metadata.is_empty() {
            movement
        } else {
            format!("{movement}\n{}", self.metadata.to_json())
        }
    }
}

/// Why an apply was refused. Final, like an applied outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RejectReason {
    InsufficientFunds,
    UnknownAccount,
    BalanceOverflow,
    /// A capture or void of an id that is no hold the account knows (it
    /// was never applied).
    UnknownHold,
    /// A capture or void of a hold that ended (captured, voided, expired)
    /// or was rejected.
    HoldNotActive,
    /// A capture of more than the hold holds (the hold stays).
    ExceedsHold,
}

impl RejectReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InsufficientFunds => "insufficient_funds",
            Self::UnknownAccount => "unknown_account",
            Self::BalanceOverflow => "balance_overflow",
            Self::UnknownHold => "unknown_hold",
            Self::HoldNotActive => "hold_not_active",
            Self::ExceedsHold => "exceeds_hold",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        [
            Self::InsufficientFunds,
            Self::UnknownAccount,
            Self::BalanceOverflow,
            Self::UnknownHold,
            Self::HoldNotActive,
            Self::ExceedsHold,
        ]
        .into_iter()
        .find(|r| r.as_str() == raw)
    }
}

/// The final result of applying a transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Money moved; `balance_after` is the checked account's new balance.
    Applied {
        balance_after: Balance,
    },
    Rejected {
        reason: RejectReason,
    },
}

/// Where a transaction id stands, as read back by clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxStatus {
    /// Accepted by Kafka, not yet applied.
    Pending,
    Settled(Outcome),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_accept_the_alphabet_and_refuse_the_rest() {
        assert!(AccountId::parse("a-Z_0.9:x").is_ok());
        assert!(AccountId::parse(&"a".repeat(64)).is_ok());
        for bad in ["", " ", "a b", "é", "a/b", &"a".repeat(65)] {
            assert!(AccountId::parse(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn amount_bounds_are_one_to_two_pow_53_minus_one() {
        assert!(Amount::new(0).is_err());
        assert!(Amount::new(1).is_ok());
        assert!(Amount::new(MAX_MINOR_UNITS).is_ok());
        assert!(Amount::new(MAX_MINOR_UNITS + 1).is_err());
        assert!(Balance::new(0).is_ok());
        assert!(Balance::new(MAX_MINOR_UNITS + 1).is_err());
    }

    #[test]
    fn movement_rules() {
        let a = AccountId::parse("a").unwrap();
        let b = AccountId::parse("b").unwrap();
        let one = Amount::new(1).unwrap();
        assert_eq!(
            Movement::new(None, a.clone(), None, one).unwrap().kind(),
            "debit"
        );
        assert_eq!(
            Movement::new(Some("debit"), a.clone(), Some(b.clone()), one),
            Err(RuleError::ToNotAllowed)
        );
        assert_eq!(
            Movement::new(Some("transfer"), a.clone(), None, one),
            Err(RuleError::Missing("to"))
        );
        assert_eq!(
            Movement::new(Some("transfer"), a.clone(), Some(a.clone()), one),
            Err(RuleError::TransferToSelf)
        );
        assert!(matches!(
            Movement::new(Some("refund"), a.clone(), None, one),
            Err(RuleError::UnknownKind(_))
        ));
        let t = Movement::new(Some("transfer"), a, Some(b), one).unwrap();
        assert_eq!(t.fingerprint(), "transfer|a|b|1");
        let parties: Vec<_> = Movement::parties_of_fingerprint("transfer|a|b|1").collect();
        assert_eq!(parties, ["a", "b"]);
        let parties: Vec<_> = Movement::parties_of_fingerprint("debit|a||1").collect();
        assert_eq!(parties, ["a"]);
    }

    #[test]
    fn a_hold_s_fingerprint_names_its_terms_and_nothing_else_does() {
        let a = AccountId::parse("a").unwrap();
        let b = AccountId::parse("b").unwrap();
        let five = Amount::new(5).unwrap();
        let hold = Movement::Hold {
            account: a.clone(),
            to: Some(b.clone()),
            amount: five,
            timeout_s: 30,
        };
        assert_eq!(hold.fingerprint(), "hold|a|b|5|30");
        assert_eq!(
            HoldTerms::of_fingerprint(&hold.fingerprint()),
            Some(HoldTerms {
                account: a.clone(),
                to: Some(b.clone()),
                amount: five
            })
        );
        let alone = Movement::Hold {
            account: a.clone(),
            to: None,
            amount: five,
            timeout_s: 30,
        };
        assert_eq!(
            HoldTerms::of_fingerprint(&alone.fingerprint()).map(|t| t.to),
            Some(None)
        );
        let capture = Movement::Capture {
            hold: TxId::parse("h").unwrap(),
            account: a.clone(),
            to: Some(b),
            amount: five,
        };
        assert_eq!(capture.fingerprint(), "capture|a|b|5|h");
        for other in [
            "capture|a|b|5|h",
            "debit|a||5",
            "hold|a||x|1",
            "hold|a b||5|1",
            "",
        ] {
            assert_eq!(HoldTerms::of_fingerprint(other), None, "{other}");
        }
        let parties: Vec<_> = Movement::parties_of_fingerprint("hold|a||5|30").collect();
        assert_eq!(parties, ["a"]);
    }
}
