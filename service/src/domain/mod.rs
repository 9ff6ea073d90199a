//! Domain types: ids, amounts, transaction kinds and outcomes.
//!
//! Parse, don't validate: every type here can only hold a valid value, so the
//! HTTP layer, the Kafka codec and the Redis store never re-check the rules.
//! This module knows nothing of axum, rdkafka or redis.
//!
//! - [`movement`]: the kinds of movement, movements, transactions;
//! - [`posting`]: the movements of a postings transaction;
//! - [`binding`]: what an id is bound to, one encode and one decode;
//! - [`outcome`]: outcomes, rejections, where a transaction stands, and
//!   their one text each.

mod account;
mod binding;
mod movement;
mod outcome;
mod posting;

pub use account::{Account, AccountChange, Asset, Bounds};
pub use binding::Binding;
pub use movement::{HoldTerms, Kind, Movement, Transaction};
pub use outcome::{Outcome, RejectReason, TxStatus};
pub use posting::{Posting, Postings};

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::limits::{MAX_ID_LEN, MAX_MINOR_UNITS, MAX_POSTINGS};
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
    #[error("balance must be an integer in -{MAX_MINOR_UNITS}..={MAX_MINOR_UNITS}")]
    BalanceOutOfRange,
    #[error("{field} must be an integer in -{MAX_MINOR_UNITS}..={MAX_MINOR_UNITS}")]
    BoundOutOfRange { field: &'static str },
    #[error("min_balance {min} is above max_balance {max}")]
    BoundsCrossed { min: Balance, max: Balance },
    #[error(
        "asset must match ^[A-Z][A-Z0-9_]{{0,15}}(/[0-9]{{1,2}})?$ (as in USD/2, BTC/8, POINTS)"
    )]
    BadAsset,
    #[error("the account's asset is {current}: an asset never changes once set")]
    AssetFixed { current: Asset },
    #[error("the balance must be at most max_balance {max} minus {held}, the money in flight out of the account (a transfer that may be refunded)")]
    NoRoomForHeld { held: u64, max: Balance },
    #[error("`{0}` is required")]
    Missing(&'static str),
    #[error("`to` is only allowed for a transfer")]
    ToNotAllowed,
    #[error("`to` must differ from `account`")]
    TransferToSelf,
    #[error("a posting's `to` must differ from its `from`")]
    PostingToSelf,
    #[error("postings[{index}]: {error}")]
    InPosting { index: usize, error: Box<RuleError> },
    #[error("`postings` needs 1..={MAX_POSTINGS} postings")]
    PostingsCount,
    #[error(
        "unknown type `{0}`: expected debit, credit, transfer, hold, capture, void or postings"
    )]
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
        "the balance may not be below min_balance {min} plus {pending}, the money held on the account (active holds)"
    )]
    BelowPending { pending: u64, min: Balance },
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

/// A balance in minor units, -(2^53-1) ..= 2^53-1 (below 0 only where the
/// account's `min_balance` lets it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct Balance(i64);

impl<'de> Deserialize<'de> for Balance {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Self::new(i64::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

impl Balance {
    pub const MIN: Self = Self(-(MAX_MINOR_UNITS as i64));
    pub const MAX: Self = Self(MAX_MINOR_UNITS as i64);
    pub const ZERO: Self = Self(0);

    pub fn new(minor_units: i64) -> Result<Self, RuleError> {
        if minor_units.unsigned_abs() <= MAX_MINOR_UNITS {
            Ok(Self(minor_units))
        } else {
            Err(RuleError::BalanceOutOfRange)
        }
    }

    pub fn minor_units(self) -> i64 {
        self.0
    }
}

impl fmt::Display for Balance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
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
        let max = MAX_MINOR_UNITS as i64;
        assert!(Balance::new(0).is_ok());
        assert!(Balance::new(-max).is_ok());
        assert!(Balance::new(max + 1).is_err());
        assert!(Balance::new(-max - 1).is_err());
    }
}
