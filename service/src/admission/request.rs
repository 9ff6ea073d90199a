//! A request as decoded ([`Posted`]), completed into the transaction
//! admission takes: a hold's timeout under this server's limits, and a
//! capture's or void's hold, whose terms (account, `to`, amount) its binding
//! names.

use crate::domain::{
    AccountId, Amount, Asset, HoldTerms, Metadata, Movement, RuleError, Transaction, TxId,
};
use crate::keys::ApiKey;

/// A request as decoded, before admission: ready, or a hold whose timeout
/// this server's limits judge, or a capture or void whose hold's terms
/// (account, `to`, amount) are looked up first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Posted {
    Ready(Transaction),
    Hold {
        id: TxId,
        account: AccountId,
        to: Option<AccountId>,
        amount: Amount,
        timeout_s: Option<u64>,
        metadata: Metadata,
        asset: Option<Asset>,
    },
    /// `capture`: `Some(amount)` (`Some(None)`: all of it); `None`: a void.
    EndsHold {
        id: TxId,
        hold: TxId,
        capture: Option<Option<Amount>>,
        metadata: Metadata,
        asset: Option<Asset>,
    },
}

/// How long holds last on this server: a hold naming no timeout gets
/// `default_s` (lowered to `max_s`); one naming more than `max_s` is 422.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HoldTimeouts {
    pub default_s: u32,
    pub max_s: u32,
}

impl Posted {
    pub fn id(&self) -> &TxId {
        match self {
            Self::Ready(tx) => &tx.id,
            Self::Hold { id, .. } | Self::EndsHold { id, .. } => id,
        }
    }

    /// The hold whose terms a capture or void needs.
    pub fn ended_hold(&self) -> Option<&TxId> {
        match self {
            Self::EndsHold { hold, .. } => Some(hold),
            _ => None,
        }
    }

    /// The transaction this request is, under this server's hold
    /// timeouts and, for a capture or void, the terms of its hold as its
    /// binding names them (`None`: no hold of that id is known).
    pub fn complete(
        self,
        timeouts: HoldTimeouts,
        terms: Option<HoldTerms>,
    ) -> Result<Transaction, RuleError> {
        let id = self.id().clone();
        let (movement, metadata, asset) = match self {
            Self::Ready(tx) => return Ok(tx),
            Self::Hold {
                account,
                to,
                amount,
                timeout_s,
                metadata,
                asset,
                ..
            } => {
                let timeout_s = match timeout_s {
                    None => timeouts.default_s.min(timeouts.max_s),
                    Some(t) if (1..=u64::from(timeouts.max_s)).contains(&t) => t as u32,
                    Some(_) => {
                        return Err(RuleError::HoldTimeoutOutOfRange {
                            max: u64::from(timeouts.max_s),
                        })
                    }
                };
                let hold = Movement::Hold {
                    account,
                    to,
                    amount,
                    timeout_s,
                };
                (hold, metadata, asset)
            }
            Self::EndsHold {
                hold,
                capture,
                metadata,
                asset,
                ..
            } => {
                let terms = terms.ok_or_else(|| RuleError::UnknownHold(hold.to_string()))?;
                let ends = match capture {
                    Some(amount) => Movement::Capture {
                        hold,
                        account: terms.account,
                        to: terms.to,
                        amount: amount.unwrap_or(terms.amount),
                    },
                    None => Movement::Void {
                        hold,
                        account: terms.account,
                        amount: terms.amount,
                    },
                };
                (ends, metadata, asset)
            }
        };
        Ok(Transaction {
            id,
            movement,
            metadata,
            asset,
        })
    }
}

/// A capture or void of a hold on an account the key may not touch is
/// refused as if no such hold existed: a 403 naming the account would tell
/// any key which holds exist, and whose they are.
pub(super) fn hidden_hold(key: &ApiKey, tx: Transaction) -> Result<Transaction, RuleError> {
    match tx.movement.ended_hold() {
        Some(hold) if key.scope.refuses(&tx.movement).is_some() => {
            Err(RuleError::UnknownHold(hold.to_string()))
        }
        _ => Ok(tx),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::{decode_transaction, RequestError};

    #[test]
    fn holds_captures_and_voids_take_their_own_fields_only() {
        let rule = |body: &str| match decode_transaction(body.as_bytes(), None) {
            Err(RequestError::Rule(rule)) => Some(rule),
            Ok(_) => None,
            Err(other) => panic!("{body}: {other:?}"),
        };
        let not = |field, kind| Some(RuleError::NotAField { field, kind });
        for (body, expected) in [
            (
                r#"{"type":"capture","hold":"h","account":"a"}"#,
                not("account", "capture"),
            ),
            (
                r#"{"type":"capture","hold":"h","to":"b"}"#,
                not("to", "capture"),
            ),
            (
                r#"{"type":"void","hold":"h","amount":1}"#,
                not("amount", "void"),
            ),
            (
                r#"{"type":"void","hold":"h","timeout_s":1}"#,
                not("timeout_s", "void"),
            ),
            (r#"{"type":"capture"}"#, Some(RuleError::Missing("hold"))),
            (
                r#"{"type":"void","hold":"a b"}"#,
                Some(RuleError::BadId { field: "hold" }),
            ),
            (
                r#"{"account":"a","amount":1,"hold":"h"}"#,
                not("hold", "debit"),
            ),
            (
                r#"{"type":"transfer","account":"a","to":"b","amount":1,"timeout_s":5}"#,
                not("timeout_s", "transfer"),
            ),
            (
                r#"{"type":"hold","account":"a","amount":1,"timeout_s":0}"#,
                None,
            ),
            (
                r#"{"type":"hold","account":"a","to":"a","amount":1}"#,
                Some(RuleError::TransferToSelf),
            ),
            (
                r#"{"type":"hold","account":"a"}"#,
                Some(RuleError::Missing("amount")),
            ),
            (
                r#"{"type":"expire","account":"a","amount":1}"#,
                Some(RuleError::UnknownKind("expire".into())),
            ),
            (r#"{"type":"hold","account":"a","amount":1}"#, None),
            (r#"{"type":"capture","hold":"h"}"#, None),
            (r#"{"type":"capture","hold":"h","amount":2}"#, None),
            (r#"{"type":"void","hold":"h"}"#, None),
        ] {
            assert_eq!(rule(body), expected, "{body}");
        }
        let timeouts = HoldTimeouts {
            default_s: 600,
            max_s: 60,
        };
        let posted = |body: &str| decode_transaction(body.as_bytes(), None).unwrap();
        let timeout_of = |body: &str| match posted(body).complete(timeouts, None) {
            Ok(Transaction {
                movement: Movement::Hold { timeout_s, .. },
                ..
            }) => Ok(timeout_s),
            other => Err(other.err()),
        };
        assert_eq!(
            timeout_of(r#"{"type":"hold","account":"a","amount":1}"#),
            Ok(60)
        );
        assert_eq!(
            timeout_of(r#"{"type":"hold","account":"a","amount":1,"timeout_s":60}"#),
            Ok(60)
        );
        for refused in ["61", "0", "1.5", "-1"] {
            assert_eq!(
                timeout_of(&format!(
                    r#"{{"type":"hold","account":"a","amount":1,"timeout_s":{refused}}}"#
                )),
                Err(Some(RuleError::HoldTimeoutOutOfRange { max: 60 })),
                "{refused}"
            );
        }
        let capture = posted(r#"{"id":"c","type":"capture","hold":"h"}"#);
        assert_eq!(
            capture.clone().complete(timeouts, None),
            Err(RuleError::UnknownHold("h".into()))
        );
        let terms = HoldTerms {
            account: AccountId::parse("a").unwrap(),
            to: None,
            amount: Amount::new(9).unwrap(),
        };
        let all = capture.complete(timeouts, Some(terms.clone())).unwrap();
        assert_eq!(all.fingerprint(), "capture|a||9|h", "all of it by default");
        let void = posted(r#"{"id":"v","type":"void","hold":"h"}"#);
        assert_eq!(
            void.complete(timeouts, Some(terms)).unwrap().fingerprint(),
            "void|a||9|h"
        );
    }
}
