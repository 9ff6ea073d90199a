//! Accounts: the asset they hold and the bounds their balance keeps.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::{Balance, Metadata, RuleError};

/// What an account holds: `USD/2`, `BTC/8`, `POINTS`. A code of 1..=16
/// characters (an uppercase letter, then uppercase letters, digits or
/// `_`), and optionally `/` with 1 or 2 digits: how many minor units make
/// one major unit, for clients that show amounts.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct Asset(String);

impl Asset {
    pub fn parse(raw: &str) -> Result<Self, RuleError> {
        let (code, scale) = match raw.split_once('/') {
            Some((code, scale)) => (code, Some(scale)),
            None => (raw, None),
        };
        let code_ok = code.len() <= 16
            && code.bytes().next().is_some_and(|b| b.is_ascii_uppercase())
            && code
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
        let scale_ok = scale
            .is_none_or(|s| (1..=2).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_digit()));
        if code_ok && scale_ok {
            Ok(Self(raw.to_owned()))
        } else {
            Err(RuleError::BadAsset)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The default asset unless configured: ISO 4217's `XXX`, "no currency".
impl Default for Asset {
    fn default() -> Self {
        Self("XXX".to_owned())
    }
}

impl fmt::Display for Asset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Asset {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Self::parse(&String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

impl std::str::FromStr for Asset {
    type Err = RuleError;

    fn from_str(raw: &str) -> Result<Self, RuleError> {
        Self::parse(raw)
    }
}

/// The range an account's balance keeps: `min` (below 0: an overdraft or
/// credit line down to it) ..= `max` (a cap), `min <= max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    min: Balance,
    max: Balance,
}

impl Bounds {
    /// An account's bounds unless it names others: no overdraft, no cap
    /// but 2^53-1.
    pub const DEFAULT: Self = Self {
        min: Balance::ZERO,
        max: Balance::MAX,
    };

    pub fn new(min: Balance, max: Balance) -> Result<Self, RuleError> {
        if min <= max {
            Ok(Self { min, max })
        } else {
            Err(RuleError::BoundsCrossed { min, max })
        }
    }

    pub fn min(self) -> Balance {
        self.min
    }

    pub fn max(self) -> Balance {
        self.max
    }
}

/// An account as the store keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub asset: Asset,
    pub bounds: Bounds,
    pub balance: Balance,
    /// What its active holds keep of it.
    pub pending: u64,
    /// Money in flight out of it that a saga may refund.
    pub held: u64,
    pub metadata: Metadata,
    /// When it was made (or moved to the key layout that records this), in
    /// ms since the epoch.
    pub created_ms: u64,
}

impl Account {
    /// What may still leave the account: `balance - pending - min_balance`,
    /// never more than 2^53-1 (so every JSON client reads it exactly).
    pub fn available(&self) -> u64 {
        let room = i128::from(self.balance.minor_units())
            - i128::from(self.pending)
            - i128::from(self.bounds.min().minor_units());
        room.clamp(0, i128::from(crate::limits::MAX_MINOR_UNITS)) as u64
    }
}

/// What `PUT /accounts/{account}` asks: each field given replaces the
/// account's (or its default, when the account is made).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AccountChange {
    pub asset: Option<Asset>,
    pub min_balance: Option<Balance>,
    pub max_balance: Option<Balance>,
    pub metadata: Option<Metadata>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assets_follow_the_pattern() {
        for good in [
            "USD/2",
            "BTC/8",
            "POINTS",
            "A",
            "X_1/0",
            "ABCDEFGHIJKLMNOP/99",
        ] {
            assert!(Asset::parse(good).is_ok(), "{good} should be an asset");
        }
        for bad in [
            "",
            "usd",
            "1USD",
            "_X",
            "USD/",
            "USD/123",
            "USD/a",
            "USD/2/2",
            "ABCDEFGHIJKLMNOPQ",
            "US D",
            "USD-2",
            "/2",
        ] {
            assert!(Asset::parse(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn bounds_keep_min_at_most_max() {
        let b = |n| Balance::new(n).unwrap();
        assert!(Bounds::new(b(-5), b(-5)).is_ok());
        assert_eq!(
            Bounds::new(b(1), b(0)),
            Err(RuleError::BoundsCrossed {
                min: b(1),
                max: b(0)
            })
        );
    }

    #[test]
    fn available_counts_pending_and_the_overdraft_and_stays_exact_for_json() {
        let account = |balance, pending, min| Account {
            asset: Asset::parse("USD/2").unwrap(),
            bounds: Bounds::new(Balance::new(min).unwrap(), Balance::MAX).unwrap(),
            balance: Balance::new(balance).unwrap(),
            pending,
            held: 0,
            metadata: Metadata::default(),
            created_ms: 0,
        };
        assert_eq!(account(10, 3, 0).available(), 7);
        assert_eq!(account(-10, 3, -100).available(), 87);
        let max = crate::limits::MAX_MINOR_UNITS as i64;
        assert_eq!(account(max, 0, -max).available(), max as u64);
    }
}
