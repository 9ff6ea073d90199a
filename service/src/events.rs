//! The outcomes topic's event: one type, one encode, one decode, versioned
//! like the transaction record. The consumer publishes one for each final
//! outcome it applies (and again for each redelivery of it: at least once),
//! keyed by the checked account; readers deduplicate by `(id, status)`.

use serde::{Deserialize, Serialize};

use crate::domain::{
    AccountId, Asset, Balance, Metadata, Movement, Outcome, RejectReason, Transaction, TxId,
};

/// The version of the event as this build writes it.
pub const EVENT_VERSION: u32 = 1;

/// What became of a transaction: its outcome, or for an engine's expiry of
/// a hold (id the hold's), that the hold expired.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "lowercase")]
pub enum EventStatus {
    /// The checked account's balance right after it.
    Applied { balance_after: Balance },
    /// `posting`: a postings transaction's first posting that failed.
    Rejected {
        reason: RejectReason,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        posting: Option<u16>,
    },
    /// The hold ended by its deadline (the expiry's own, or a late capture
    /// or void that found it due first).
    Expired,
}

impl EventStatus {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Applied { balance_after } => Outcome::Applied {
                balance_after: *balance_after,
            }
            .as_str(),
            Self::Rejected { reason, posting } => Outcome::Rejected {
                reason: *reason,
                posting: *posting,
            }
            .as_str(),
            Self::Expired => "expired",
        }
    }
}

impl From<Outcome> for EventStatus {
    fn from(outcome: Outcome) -> Self {
        match outcome {
            Outcome::Applied { balance_after } => Self::Applied { balance_after },
            Outcome::Rejected { reason, posting } => Self::Rejected { reason, posting },
        }
    }
}

/// One final outcome as the outcomes topic carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutcomeEvent {
    pub tx: Transaction,
    pub status: EventStatus,
    /// The asset of the account the transaction ended on (`None`: no such
    /// account, or an expiry); the event shows the one the transaction
    /// named in its place.
    pub asset: Option<Asset>,
    /// The consumer's wall clock (ms since the Unix epoch) when it applied
    /// the record it publishes this for (a redelivery's is later).
    pub at_ms: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum EventDecodeError {
    #[error("not a valid event: {0}")]
    Malformed(#[from] serde_json::Error),
    #[error("event version {0}; this build reads {EVENT_VERSION}")]
    UnknownVersion(u32),
}

#[derive(Serialize, Deserialize)]
struct EventV1 {
    v: u32,
    id: TxId,
    #[serde(flatten)]
    movement: Movement,
    #[serde(flatten)]
    status: EventStatus,
    #[serde(default, skip_serializing_if = "Metadata::is_empty")]
    metadata: Metadata,
    /// The asset of the money: of the account the transaction ended on,
    /// else the one it named, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    asset: Option<Asset>,
    at_ms: u64,
}

#[derive(Deserialize)]
struct VersionOnly {
    v: u32,
}

impl OutcomeEvent {
    /// The record key: the checked account, so one account's events are in
    /// order within a partition.
    pub fn key(&self) -> &AccountId {
        self.tx.movement.account()
    }

    pub fn encode(&self) -> Vec<u8> {
        let v1 = EventV1 {
            v: EVENT_VERSION,
            id: self.tx.id.clone(),
            movement: self.tx.movement.clone(),
            status: self.status,
            metadata: self.tx.metadata.clone(),
            asset: self.asset.clone().or_else(|| self.tx.asset.clone()),
            at_ms: self.at_ms,
        };
        serde_json::to_vec(&v1).expect("an event always serialises")
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, EventDecodeError> {
        let VersionOnly { v } = serde_json::from_slice(bytes)?;
        if v != EVENT_VERSION {
            return Err(EventDecodeError::UnknownVersion(v));
        }
        let v1: EventV1 = serde_json::from_slice(bytes)?;
        Ok(Self {
            tx: Transaction {
                id: v1.id,
                movement: v1.movement,
                metadata: v1.metadata,
                asset: None,
            },
            status: v1.status,
            asset: v1.asset,
            at_ms: v1.at_ms,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Amount;

    #[test]
    fn events_round_trip_and_name_their_status_and_version() {
        let a = AccountId::parse("a").unwrap();
        let metadata: Metadata = serde_json::from_str(r#"{"order":"o-1"}"#).unwrap();
        let transfer = Transaction {
            asset: None,
            id: TxId::parse("t-1").unwrap(),
            movement: Movement::Transfer {
                account: a.clone(),
                to: AccountId::parse("b").unwrap(),
                amount: Amount::new(5).unwrap(),
            },
            metadata,
        };
        let expire = Transaction {
            asset: None,
            id: TxId::parse("h-1").unwrap(),
            movement: Movement::Expire {
                hold: TxId::parse("h-1").unwrap(),
                account: a,
                amount: Amount::new(5).unwrap(),
            },
            metadata: Metadata::default(),
        };
        let usd = Some(Asset::parse("USD/2").unwrap());
        let postings = Transaction {
            asset: None,
            id: TxId::parse("p-1").unwrap(),
            movement: Movement::Postings {
                postings: crate::domain::Postings::new(vec![crate::domain::Posting::new(
                    AccountId::parse("a").unwrap(),
                    AccountId::parse("b").unwrap(),
                    Amount::new(5).unwrap(),
                    None,
                )
                .unwrap()])
                .unwrap(),
            },
            metadata: Metadata::default(),
        };
        for (tx, status, asset, text) in [
            (
                postings,
                EventStatus::Rejected {
                    reason: RejectReason::MaxBalanceExceeded,
                    posting: Some(0),
                },
                usd.clone(),
                r#""status":"rejected","reason":"max_balance_exceeded","posting":0"#,
            ),
            (
                transfer.clone(),
                EventStatus::Applied {
                    balance_after: Balance::new(7).unwrap(),
                },
                usd.clone(),
                r#""status":"applied","balance_after":7"#,
            ),
            (
                transfer,
                EventStatus::Rejected {
                    reason: RejectReason::InsufficientFunds,
                    posting: None,
                },
                usd,
                r#""status":"rejected","reason":"insufficient_funds""#,
            ),
            (expire, EventStatus::Expired, None, r#""status":"expired""#),
        ] {
            let event = OutcomeEvent {
                tx,
                status,
                asset,
                at_ms: 42,
            };
            let bytes = event.encode();
            let json = String::from_utf8_lossy(&bytes);
            assert!(json.starts_with(r#"{"v":1,"#), "{json}");
            assert!(json.contains(text), "{json}");
            let named = event.asset.as_ref().map(|a| format!(r#""asset":"{a}""#));
            assert_eq!(json.contains(r#""asset""#), named.is_some(), "{json}");
            assert!(named.is_none_or(|named| json.contains(&named)), "{json}");
            assert_eq!(OutcomeEvent::decode(&bytes).unwrap(), event);
            assert_eq!(event.key().as_str(), "a");
        }
        // No account to take it from (unknown_account): the asset the
        // transaction named.
        let named = OutcomeEvent {
            tx: Transaction {
                asset: Some(Asset::parse("EUR/2").unwrap()),
                id: TxId::parse("t-2").unwrap(),
                movement: Movement::Debit {
                    account: AccountId::parse("nobody").unwrap(),
                    amount: Amount::new(5).unwrap(),
                },
                metadata: Metadata::default(),
            },
            status: EventStatus::Rejected {
                reason: RejectReason::UnknownAccount,
                posting: None,
            },
            asset: None,
            at_ms: 42,
        };
        let json = String::from_utf8(named.encode()).unwrap();
        assert!(json.contains(r#""asset":"EUR/2""#), "{json}");
        assert!(matches!(
            OutcomeEvent::decode(br#"{"v":2}"#),
            Err(EventDecodeError::UnknownVersion(2))
        ));
        assert!(OutcomeEvent::decode(br#"{"v":1,"id":"x","status":"applied"}"#).is_err());
    }
}
