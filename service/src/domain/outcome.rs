//! Outcomes, rejections and where a transaction stands, each with its one
//! text (what the store, the API, the events and the metrics say).

use serde::{Deserialize, Serialize};

use super::Balance;

/// Why an apply was refused. Final, like an applied outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RejectReason {
    /// Money out would take the balance, less what holds keep, below the
    /// account's `min_balance`.
    InsufficientFunds,
    UnknownAccount,
    /// Money in would take the balance past 2^53-1 (the default cap),
    /// counting what may be refunded to it.
    BalanceOverflow,
    /// Money in would take the balance past a `max_balance` the account
    /// was given, counting what may be refunded to it.
    MaxBalanceExceeded,
    /// Money between accounts of different assets.
    AssetMismatch,
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
            Self::MaxBalanceExceeded => "max_balance_exceeded",
            Self::AssetMismatch => "asset_mismatch",
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
            Self::MaxBalanceExceeded,
            Self::AssetMismatch,
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
    Applied { balance_after: Balance },
    /// Refused; `posting`: in a postings transaction, the 0-based index
    /// of the first posting that failed (nothing moved).
    Rejected {
        reason: RejectReason,
        posting: Option<u16>,
    },
}

/// Where a transaction id stands, as read back by clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxStatus {
    /// Accepted by Kafka, not yet applied.
    Pending,
    Settled(Outcome),
}

impl Outcome {
    /// A rejection of a transaction that is not postings.
    pub fn rejected(reason: RejectReason) -> Self {
        Self::Rejected {
            reason,
            posting: None,
        }
    }

    /// `applied` or `rejected`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Applied { .. } => "applied",
            Self::Rejected { .. } => "rejected",
        }
    }
}

impl TxStatus {
    /// `pending`, or its outcome's text.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Settled(outcome) => outcome.as_str(),
        }
    }

    /// The status the store keeps as `(state, reason, balance_after,
    /// posting)` (the text [`TxStatus::as_str`] gives, the reason of a
    /// rejection, the balance after an apply, the index of the posting
    /// that failed or ''); `None` for anything else.
    pub fn from_parts(
        state: &str,
        reason: &str,
        balance_after: &str,
        posting: &str,
    ) -> Option<Self> {
        Some(match state {
            "pending" => Self::Pending,
            "applied" if posting.is_empty() => Self::Settled(Outcome::Applied {
                balance_after: Balance::new(balance_after.parse().ok()?).ok()?,
            }),
            "rejected" => Self::Settled(Outcome::Rejected {
                reason: RejectReason::parse(reason)?,
                posting: match posting {
                    "" => None,
                    index => Some(index.parse().ok()?),
                },
            }),
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each status reads back from the text it writes; anything else is
    /// refused.
    #[test]
    fn a_status_reads_back_from_its_parts() {
        let applied = TxStatus::Settled(Outcome::Applied {
            balance_after: Balance::new(12).unwrap(),
        });
        let rejected = TxStatus::Settled(Outcome::rejected(RejectReason::ExceedsHold));
        let posting_failed = TxStatus::Settled(Outcome::Rejected {
            reason: RejectReason::InsufficientFunds,
            posting: Some(3),
        });
        assert_eq!(
            TxStatus::from_parts("pending", "", "", ""),
            Some(TxStatus::Pending)
        );
        assert_eq!(
            TxStatus::from_parts(applied.as_str(), "", "12", ""),
            Some(applied)
        );
        assert_eq!(
            TxStatus::from_parts(rejected.as_str(), "exceeds_hold", "", ""),
            Some(rejected)
        );
        assert_eq!(
            TxStatus::from_parts("rejected", "insufficient_funds", "", "3"),
            Some(posting_failed)
        );
        for (state, reason, balance, posting) in [
            ("applied", "", "", ""),
            ("applied", "", "9007199254740992", ""),
            ("applied", "", "12", "0"),
            ("rejected", "bored", "", ""),
            ("rejected", "insufficient_funds", "", "-1"),
            ("rejected", "insufficient_funds", "", "x"),
            ("held", "", "", ""),
        ] {
            assert_eq!(
                TxStatus::from_parts(state, reason, balance, posting),
                None,
                "{state}"
            );
        }
    }
}
