//! The Kafka record format: one type, one encode, one decode, versioned.
//! Producer, consumer and harness all go through here.

use serde::{Deserialize, Serialize};

use crate::domain::{
    AccountId, Asset, Balance, Metadata, Movement, Postings, RejectReason, Transaction, TxId,
};

/// The version of a transaction as the API publishes it.
pub const WIRE_VERSION: u32 = 1;
/// The version of a saga's follow-up step (a transfer between Redis Cluster
/// slots). Its own number, so a build that knows no sagas sends it to the
/// DLQ instead of taking it for a new transfer.
pub const SAGA_WIRE_VERSION: u32 = 2;
/// The version of a hold, its capture, void or expiry (and of a capture's
/// saga steps): its own number, so a build that knows no holds leaves the
/// partition waiting for one that does instead of refusing the record.
pub const HOLD_WIRE_VERSION: u32 = 3;
/// The version of a record whose transaction carries metadata (any kind,
/// any step): its own number, so a build that knows no metadata leaves the
/// partition waiting instead of applying it without (and recording another
/// fingerprint than the one its id is bound to).
pub const METADATA_WIRE_VERSION: u32 = 4;
/// The version of a record whose transaction names an asset (any kind or
/// step, with or without metadata): a build that does not know it must
/// not apply it unchecked.
pub const ASSET_WIRE_VERSION: u32 = 5;
/// The version of a postings transaction (with or without metadata; its
/// postings name their own assets): a build that knows no postings leaves
/// the partition waiting for one that does.
pub const POSTINGS_WIRE_VERSION: u32 = 6;
/// The version of a step of a postings transaction between Redis Cluster
/// slots (reserve, commit, cancel): a build that knows no such steps
/// leaves the partition waiting (a reservation holds money for it).
pub const POSTINGS_SAGA_WIRE_VERSION: u32 = 7;
/// The newest version this build reads and writes.
pub const NEWEST_WIRE_VERSION: u32 = POSTINGS_SAGA_WIRE_VERSION;

/// One transaction as it travels through Kafka, or one later step of its
/// saga. The record key is [`Record::key`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub tx: Transaction,
    /// Wall clock (ms since the Unix epoch) when the API accepted it; lets the
    /// consumer measure accept-to-applied latency.
    pub accepted_at_ms: u64,
    /// `None` for the transaction as accepted; for a transfer or postings
    /// between slots, the step of its saga that comes next.
    pub saga: Option<SagaStep>,
}

/// The steps of a saga after its debit, each published by the consumer that
/// did the step before (see `lua/saga_step.lua`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "step", rename_all = "lowercase")]
pub enum SagaStep {
    /// Credit the destination. `debited_balance_after` is the source's
    /// balance after the debit: the outcome's `balance_after`;
    /// `debited_asset` the source's asset, which the destination's must be
    /// (absent in a step of an earlier version: not checked).
    Credit {
        debited_balance_after: Balance,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        debited_asset: Option<Asset>,
    },
    /// End the hold on the source: a release if the credit happened, a
    /// refund if it was refused (`refused` says why).
    Settle {
        debited_balance_after: Balance,
        refused: Option<RejectReason>,
    },
    /// Postings between slots: reserve the moves of the accounts in the
    /// slot of `on`; `votes` are what the slots before it answered.
    Reserve { on: AccountId, votes: Votes },
    /// Every slot reserved: move the money in the slot of `on`. `assets`:
    /// each posting's asset (its `from`'s), for the outcome.
    Commit {
        on: AccountId,
        assets: Vec<Option<Asset>>,
    },
    /// A slot refused: give back what the slot of `on` reserved; `failed`
    /// is the posting that failed the transaction.
    Cancel {
        on: AccountId,
        failed: FailedPosting,
        assets: Vec<Option<Asset>>,
    },
}

/// What the slots of a postings transaction answered so far, carried from
/// each slot's reserve to the next (see `store::posting_steps`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Votes {
    /// The refusal that comes first in posting order so far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused: Option<Refusal>,
    /// Each posting's `from`'s asset, then its `to`'s, as the slots so far
    /// found them.
    pub assets: Vec<SeenAsset>,
}

/// A posting refused by one slot's check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    pub posting: u16,
    pub check: Check,
    pub reason: RejectReason,
}

/// Which check of a posting refused it, in the order one script checks
/// them: its `from` (exists, the asset it names, funds), the two accounts'
/// assets match, its `to` (exists, the asset it names, room). A missing
/// `to` comes before the assets in one script, but never meets them: an
/// account that does not exist has no asset to compare.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Check {
    From,
    Assets,
    To,
}

/// An account's asset as a slot's reserve found it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SeenAsset {
    /// The account is in a slot that has not answered yet.
    Unseen,
    /// The account does not exist.
    Missing,
    Of(Asset),
}

/// The posting that failed a postings transaction, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailedPosting {
    pub posting: u16,
    pub reason: RejectReason,
}

/// The steps of a saga between slots, as `lua/saga_step.lua` names them:
/// debit the source, credit the destination, then release the source's hold
/// of the money (credited) or refund it (the credit was refused); and as
/// `lua/posting_step.lua` names them: reserve, then commit or cancel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepKind {
    Debit,
    Credit,
    Release,
    Refund,
    Reserve,
    Commit,
    Cancel,
}

impl StepKind {
    /// Its name (the script's ARGV[1], and the metric's label).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Debit => "debit",
            Self::Credit => "credit",
            Self::Release => "release",
            Self::Refund => "refund",
            Self::Reserve => "reserve",
            Self::Commit => "commit",
            Self::Cancel => "cancel",
        }
    }

    /// The name of its processed flag: a release and a refund share one
    /// (a saga settles once, one way or the other), as do a commit and a
    /// cancel.
    pub fn flag(self) -> &'static str {
        match self {
            Self::Release | Self::Refund | Self::Commit | Self::Cancel => "settle",
            step => step.as_str(),
        }
    }
}

impl SagaStep {
    /// The step this record runs.
    pub fn kind(&self) -> StepKind {
        match self {
            Self::Credit { .. } => StepKind::Credit,
            Self::Settle { refused: None, .. } => StepKind::Release,
            Self::Settle { .. } => StepKind::Refund,
            Self::Reserve { .. } => StepKind::Reserve,
            Self::Commit { .. } => StepKind::Commit,
            Self::Cancel { .. } => StepKind::Cancel,
        }
    }

    /// Whether a step of postings between slots fits `postings`: it runs
    /// on one of their accounts, and its assets and posting indices are
    /// theirs (any other step: true).
    fn fits(&self, postings: &Postings) -> bool {
        let n = postings.len();
        let theirs = |on: &AccountId| postings.accounts().contains(&on);
        let index = |posting: u16| usize::from(posting) < n;
        match self {
            Self::Reserve { on, votes } => {
                theirs(on)
                    && votes.assets.len() == 2 * n
                    && votes.refused.is_none_or(|refusal| index(refusal.posting))
            }
            Self::Commit { on, assets } => theirs(on) && assets.len() == n,
            Self::Cancel { on, failed, assets } => {
                theirs(on) && assets.len() == n && index(failed.posting)
            }
            Self::Credit { .. } | Self::Settle { .. } => true,
        }
    }

    /// True for a step of postings between slots.
    pub fn of_postings(&self) -> bool {
        matches!(
            self,
            Self::Reserve { .. } | Self::Commit { .. } | Self::Cancel { .. }
        )
    }
}

impl Record {
    /// The account whose slot the record's step runs in: the Kafka key, so
    /// one account's steps are applied in order.
    pub fn key(&self) -> &AccountId {
        match (&self.saga, self.tx.movement.credited()) {
            (Some(SagaStep::Credit { .. }), Some(to)) => to,
            (
                Some(
                    SagaStep::Reserve { on, .. }
                    | SagaStep::Commit { on, .. }
                    | SagaStep::Cancel { on, .. },
                ),
                _,
            ) => on,
            _ => self.tx.movement.account(),
        }
    }
}

/// The wall clock in ms since the Unix epoch: the unit of `accepted_at_ms`
/// and of the `applied_at_ms` an apply records.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("not a valid record: {0}")]
    Malformed(#[from] serde_json::Error),
    #[error(
        "unsupported record version {0} (this build reads {WIRE_VERSION} to {NEWEST_WIRE_VERSION})"
    )]
    UnsupportedVersion(u32),
    /// Written by a newer build: not malformed, only not understood here.
    /// Its partition waits for a build that reads it (never the DLQ: the
    /// transaction was accepted, or a saga holds money for it).
    #[error("record version {0} is newer than this build reads ({NEWEST_WIRE_VERSION}); a newer build must apply it")]
    NewerVersion(u32),
    #[error(
        "a saga step must be a transfer in version {SAGA_WIRE_VERSION} (only a step may be), a capture to an account in version {HOLD_WIRE_VERSION}, or postings in version {POSTINGS_SAGA_WIRE_VERSION}"
    )]
    NotASagaStep,
    #[error("holds, captures, voids and expiries are version {HOLD_WIRE_VERSION}, and only they (or {METADATA_WIRE_VERSION} with metadata)")]
    NotAHold,
    #[error("a record carries metadata exactly when it is version {METADATA_WIRE_VERSION} (or {ASSET_WIRE_VERSION}, which may)")]
    NotMetadata,
    #[error("a record names an asset exactly when it is version {ASSET_WIRE_VERSION}")]
    NotAsset,
    #[error("postings are version {POSTINGS_WIRE_VERSION} (or {POSTINGS_SAGA_WIRE_VERSION}: a step between slots), and only they")]
    NotPostings,
    #[error("a step of postings between slots must run on one of their accounts and carry an asset and a posting index for each of their postings")]
    NotItsPostings,
    #[error("record breaks a rule: {0}")]
    Invalid(#[from] crate::domain::RuleError),
}

#[derive(Serialize, Deserialize)]
struct RecordV1 {
    v: u32,
    id: TxId,
    #[serde(flatten)]
    movement: Movement,
    accepted_at_ms: u64,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    saga: Option<SagaStep>,
    #[serde(default, skip_serializing_if = "Metadata::is_empty")]
    metadata: Metadata,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    asset: Option<Asset>,
}

/// Only the version field, read first so an unknown version is named as such.
#[derive(Deserialize)]
struct VersionOnly {
    v: u32,
}

impl Record {
    pub fn encode(&self) -> Vec<u8> {
        let v1 = RecordV1 {
            v: self.version(),
            id: self.tx.id.clone(),
            movement: self.tx.movement.clone(),
            accepted_at_ms: self.accepted_at_ms,
            saga: self.saga.clone(),
            metadata: self.tx.metadata.clone(),
            asset: self.tx.asset.clone(),
        };
        serde_json::to_vec(&v1).expect("a record always serialises")
    }

    /// The wire version this record is written in.
    fn version(&self) -> u32 {
        if self.tx.movement.postings().is_some() && self.saga.is_some() {
            POSTINGS_SAGA_WIRE_VERSION
        } else if self.tx.movement.postings().is_some() {
            POSTINGS_WIRE_VERSION
        } else if self.tx.asset.is_some() {
            ASSET_WIRE_VERSION
        } else if !self.tx.metadata.is_empty() {
            METADATA_WIRE_VERSION
        } else if self.tx.movement.is_of_a_hold() {
            HOLD_WIRE_VERSION
        } else if self.saga.is_some() {
            SAGA_WIRE_VERSION
        } else {
            WIRE_VERSION
        }
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let VersionOnly { v } = serde_json::from_slice(bytes)?;
        if v > NEWEST_WIRE_VERSION {
            return Err(DecodeError::NewerVersion(v));
        }
        if v < WIRE_VERSION {
            return Err(DecodeError::UnsupportedVersion(v));
        }
        let v1: RecordV1 = serde_json::from_slice(bytes)?;
        let movement = &v1.movement;
        if movement.to() == Some(movement.account()) {
            return Err(crate::domain::RuleError::TransferToSelf.into());
        }
        // Versions 6 (as accepted) and 7 (a step between slots) are
        // postings and only postings, with or without metadata, naming no
        // asset of their own (each posting may): the checks below refuse
        // the rest.
        let postings_version = v == POSTINGS_WIRE_VERSION || v == POSTINGS_SAGA_WIRE_VERSION;
        if postings_version != movement.postings().is_some() {
            return Err(DecodeError::NotPostings);
        }
        // Version 5 is any kind or step naming an asset, with or without
        // metadata; 4 any kind or step with metadata; 1 to 3 name the kind
        // (and step) without either.
        if (v == ASSET_WIRE_VERSION) != v1.asset.is_some() {
            return Err(DecodeError::NotAsset);
        }
        let with_metadata = v >= METADATA_WIRE_VERSION;
        if v == METADATA_WIRE_VERSION && v1.metadata.is_empty()
            || !with_metadata && !v1.metadata.is_empty()
        {
            return Err(DecodeError::NotMetadata);
        }
        if !with_metadata && (v == HOLD_WIRE_VERSION) != movement.is_of_a_hold() {
            return Err(DecodeError::NotAHold);
        }
        // A step only follows a transfer (in its own version) or a capture
        // to an account.
        let steps_ok = match (&v1.saga, movement) {
            (None, _) => v != SAGA_WIRE_VERSION && v != POSTINGS_SAGA_WIRE_VERSION,
            (Some(step), Movement::Postings { .. }) => {
                step.of_postings() && v == POSTINGS_SAGA_WIRE_VERSION
            }
            (Some(step), _) if step.of_postings() => false,
            (Some(_), Movement::Transfer { .. }) => v == SAGA_WIRE_VERSION || with_metadata,
            (Some(_), Movement::Capture { to: Some(_), .. }) => true,
            (Some(_), _) => false,
        };
        if !steps_ok {
            return Err(DecodeError::NotASagaStep);
        }
        if let (Some(step), Some(postings)) = (&v1.saga, movement.postings()) {
            if !step.fits(postings) {
                return Err(DecodeError::NotItsPostings);
            }
        }
        Ok(Self {
            tx: Transaction {
                id: v1.id,
                movement: v1.movement,
                metadata: v1.metadata,
                asset: v1.asset,
            },
            accepted_at_ms: v1.accepted_at_ms,
            saga: v1.saga,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Amount;

    /// A postings transaction travels in its own version, with or without
    /// metadata; that version carries nothing else, and nothing else it.
    #[test]
    fn postings_round_trip_in_their_own_version_and_only_there() {
        use crate::domain::{Posting, Postings};
        let (a, b) = (
            AccountId::parse("a").unwrap(),
            AccountId::parse("b").unwrap(),
        );
        let legs = Postings::new(vec![
            Posting::new(a.clone(), b.clone(), Amount::new(5).unwrap(), None).unwrap(),
            Posting::new(b, a, Amount::new(2).unwrap(), Asset::parse("EUR/2").ok()).unwrap(),
        ])
        .unwrap();
        let tagged: Metadata = serde_json::from_str(r#"{"k":"v"}"#).unwrap();
        for metadata in [Metadata::default(), tagged] {
            let record = Record {
                tx: Transaction {
                    asset: None,
                    metadata,
                    id: TxId::parse("p-1").unwrap(),
                    movement: Movement::Postings {
                        postings: legs.clone(),
                    },
                },
                accepted_at_ms: 42,
                saga: None,
            };
            let bytes = record.encode();
            let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
            assert_eq!(json["v"], POSTINGS_WIRE_VERSION);
            assert_eq!(Record::decode(&bytes).unwrap(), record);
            // Each step between slots, in its own version.
            let on = AccountId::parse("a").unwrap();
            let votes = Votes {
                refused: Some(Refusal {
                    posting: 1,
                    check: Check::To,
                    reason: RejectReason::UnknownAccount,
                }),
                assets: vec![
                    SeenAsset::Of(Asset::parse("USD/2").unwrap()),
                    SeenAsset::Missing,
                    SeenAsset::Unseen,
                    SeenAsset::Unseen,
                ],
            };
            let failed = FailedPosting {
                posting: 1,
                reason: RejectReason::UnknownAccount,
            };
            for step in [
                SagaStep::Reserve {
                    on: on.clone(),
                    votes,
                },
                SagaStep::Commit {
                    on: on.clone(),
                    assets: vec![Asset::parse("USD/2").ok(), None],
                },
                SagaStep::Cancel {
                    on: on.clone(),
                    failed,
                    assets: vec![None, None],
                },
            ] {
                let step_record = Record {
                    saga: Some(step),
                    ..record.clone()
                };
                let bytes = step_record.encode();
                let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
                assert_eq!(json["v"], POSTINGS_SAGA_WIRE_VERSION);
                assert_eq!(Record::decode(&bytes).unwrap(), step_record);
            }
        }
        for (text, why) in [
            (
                r#"{"v":7,"id":"p","type":"postings","postings":[{"from":"a","to":"b","amount":1}],"accepted_at_ms":1}"#,
                "postings as accepted in the version of their steps",
            ),
            (
                r#"{"v":6,"id":"p","type":"postings","postings":[{"from":"a","to":"b","amount":1}],"accepted_at_ms":1,"step":"commit","on":"a","assets":[null]}"#,
                "a step between slots in the version of postings as accepted",
            ),
            (
                r#"{"v":2,"id":"t","type":"transfer","account":"a","to":"b","amount":1,"accepted_at_ms":1,"step":"commit","on":"a","assets":[null]}"#,
                "a step of postings following a transfer",
            ),
            (
                r#"{"v":7,"id":"p","type":"postings","postings":[{"from":"a","to":"b","amount":1}],"accepted_at_ms":1,"step":"credit","debited_balance_after":1}"#,
                "a transfer's step following postings",
            ),
            (
                r#"{"v":7,"id":"p","type":"postings","postings":[{"from":"a","to":"b","amount":1}],"accepted_at_ms":1,"step":"commit","on":"z","assets":[null]}"#,
                "a step on an account not of the postings",
            ),
            (
                r#"{"v":7,"id":"p","type":"postings","postings":[{"from":"a","to":"b","amount":1}],"accepted_at_ms":1,"step":"commit","on":"a","assets":[null,null]}"#,
                "an asset for a posting there is not",
            ),
            (
                r#"{"v":7,"id":"p","type":"postings","postings":[{"from":"a","to":"b","amount":1}],"accepted_at_ms":1,"step":"reserve","on":"b","votes":{"assets":["unseen"]}}"#,
                "votes with one side of a posting",
            ),
            (
                r#"{"v":7,"id":"p","type":"postings","postings":[{"from":"a","to":"b","amount":1}],"accepted_at_ms":1,"step":"reserve","on":"b","votes":{"refused":{"posting":1,"check":"to","reason":"insufficient_funds"},"assets":["unseen","unseen"]}}"#,
                "a refusal of a posting there is not",
            ),
            (
                r#"{"v":7,"id":"p","type":"postings","postings":[{"from":"a","to":"b","amount":1}],"accepted_at_ms":1,"step":"cancel","on":"a","failed":{"posting":1,"reason":"insufficient_funds"},"assets":[null]}"#,
                "a cancel of a posting there is not",
            ),
            (
                r#"{"v":5,"id":"p","type":"postings","postings":[{"from":"a","to":"b","amount":1}],"accepted_at_ms":1,"asset":"USD/2"}"#,
                "postings in another version",
            ),
            (
                r#"{"v":6,"id":"d","type":"debit","account":"a","amount":1,"accepted_at_ms":1}"#,
                "a debit in the postings version",
            ),
            (
                r#"{"v":6,"id":"p","type":"postings","postings":[{"from":"a","to":"b","amount":1}],"accepted_at_ms":1,"asset":"USD/2"}"#,
                "postings naming one asset for all",
            ),
            (
                r#"{"v":6,"id":"p","type":"postings","postings":[{"from":"a","to":"b","amount":1}],"accepted_at_ms":1,"step":"credit","debited_balance_after":1}"#,
                "a saga step of postings",
            ),
            (
                r#"{"v":6,"id":"p","type":"postings","postings":[],"accepted_at_ms":1}"#,
                "no postings",
            ),
            (
                r#"{"v":6,"id":"p","type":"postings","postings":[{"from":"a","to":"a","amount":1}],"accepted_at_ms":1}"#,
                "a posting to itself",
            ),
        ] {
            assert!(Record::decode(text.as_bytes()).is_err(), "{why}");
        }
    }

    #[test]
    fn round_trip_each_kind() {
        let a = AccountId::parse("a").unwrap();
        let b = AccountId::parse("b").unwrap();
        let amount = Amount::new(crate::limits::MAX_MINOR_UNITS).unwrap();
        for movement in [
            Movement::Debit {
                account: a.clone(),
                amount,
            },
            Movement::Credit {
                account: a.clone(),
                amount,
            },
            Movement::Transfer {
                account: a.clone(),
                to: b.clone(),
                amount,
            },
        ] {
            let record = Record {
                tx: Transaction {
                    asset: None,
                    metadata: Default::default(),
                    id: TxId::parse("t-1").unwrap(),
                    movement,
                },
                accepted_at_ms: 42,
                saga: None,
            };
            assert_eq!(Record::decode(&record.encode()).unwrap(), record);
        }
    }

    #[test]
    fn holds_round_trip_in_their_own_version_and_only_there() {
        let a = AccountId::parse("a").unwrap();
        let b = AccountId::parse("b").unwrap();
        let hold = TxId::parse("h-1").unwrap();
        let amount = Amount::new(5).unwrap();
        let capture = Movement::Capture {
            hold: hold.clone(),
            account: a.clone(),
            to: Some(b.clone()),
            amount,
        };
        for (movement, saga) in [
            (
                Movement::Hold {
                    account: a.clone(),
                    to: None,
                    amount,
                    timeout_s: 60,
                },
                None,
            ),
            (
                Movement::Hold {
                    account: a.clone(),
                    to: Some(b.clone()),
                    amount,
                    timeout_s: 1,
                },
                None,
            ),
            (capture.clone(), None),
            (
                capture.clone(),
                Some(SagaStep::Credit {
                    debited_balance_after: Balance::new(3).unwrap(),
                    debited_asset: Some(Asset::parse("USD/2").unwrap()),
                }),
            ),
            (
                Movement::Void {
                    hold: hold.clone(),
                    account: a.clone(),
                    amount,
                },
                None,
            ),
            (
                Movement::Expire {
                    hold: hold.clone(),
                    account: a.clone(),
                    amount,
                },
                None,
            ),
        ] {
            let record = Record {
                tx: Transaction {
                    asset: None,
                    metadata: Default::default(),
                    id: TxId::parse("t-1").unwrap(),
                    movement,
                },
                accepted_at_ms: 9,
                saga,
            };
            let bytes = record.encode();
            assert!(
                bytes.starts_with(br#"{"v":3,"#),
                "{}",
                String::from_utf8_lossy(&bytes)
            );
            assert_eq!(Record::decode(&bytes).unwrap(), record);
        }
        let hold = r#""type":"hold","account":"a","amount":1,"timeout_s":5,"accepted_at_ms":1"#;
        let void = r#""type":"void","hold":"h","account":"a","amount":1,"accepted_at_ms":1"#;
        let debit = r#""type":"debit","account":"a","amount":1,"accepted_at_ms":1"#;
        let step = r#""step":"credit","debited_balance_after":1"#;
        for (bytes, ok) in [
            (format!(r#"{{"v":3,"id":"x",{hold}}}"#), true),
            (format!(r#"{{"v":1,"id":"x",{hold}}}"#), false),
            (format!(r#"{{"v":2,"id":"x",{void}}}"#), false),
            (format!(r#"{{"v":3,"id":"x",{debit}}}"#), false),
            (format!(r#"{{"v":3,"id":"x",{void},{step}}}"#), false),
            (format!(r#"{{"v":3,"id":"x",{hold},"to":"a"}}"#), false),
        ] {
            assert_eq!(Record::decode(bytes.as_bytes()).is_ok(), ok, "{bytes}");
        }
    }

    fn transfer() -> Transaction {
        Transaction {
            asset: None,
            metadata: Default::default(),
            id: TxId::parse("t-1").unwrap(),
            movement: Movement::Transfer {
                account: AccountId::parse("a").unwrap(),
                to: AccountId::parse("b").unwrap(),
                amount: Amount::new(5).unwrap(),
            },
        }
    }

    #[test]
    fn saga_steps_round_trip_in_their_own_version_keyed_by_their_account() {
        let after = Balance::new(7).unwrap();
        for (step, key) in [
            (
                SagaStep::Credit {
                    debited_balance_after: after,
                    debited_asset: None,
                },
                "b",
            ),
            (
                SagaStep::Credit {
                    debited_balance_after: Balance::new(-7).unwrap(),
                    debited_asset: Some(Asset::parse("EUR/2").unwrap()),
                },
                "b",
            ),
            (
                SagaStep::Settle {
                    debited_balance_after: after,
                    refused: None,
                },
                "a",
            ),
            (
                SagaStep::Settle {
                    debited_balance_after: after,
                    refused: Some(RejectReason::BalanceOverflow),
                },
                "a",
            ),
        ] {
            let record = Record {
                tx: transfer(),
                accepted_at_ms: 1,
                saga: Some(step),
            };
            let bytes = record.encode();
            assert!(
                bytes.starts_with(br#"{"v":2,"#),
                "{}",
                String::from_utf8_lossy(&bytes)
            );
            assert_eq!(Record::decode(&bytes).unwrap(), record);
            assert_eq!(record.key().as_str(), key);
        }
    }

    #[test]
    fn a_step_is_only_a_transfer_in_version_2() {
        let step = r#""step":"credit","debited_balance_after":1"#;
        let transfer = r#""type":"transfer","account":"a","to":"b","amount":1,"accepted_at_ms":1"#;
        let debit = r#""type":"debit","account":"a","amount":1,"accepted_at_ms":1"#;
        for (bytes, ok) in [
            (format!(r#"{{"v":2,"id":"x",{transfer},{step}}}"#), true),
            (format!(r#"{{"v":1,"id":"x",{transfer},{step}}}"#), false),
            (format!(r#"{{"v":2,"id":"x",{transfer}}}"#), false),
            (format!(r#"{{"v":2,"id":"x",{debit},{step}}}"#), false),
            (
                format!(
                    r#"{{"v":2,"id":"x",{transfer},"step":"credit","debited_balance_after":9007199254740992}}"#
                ),
                false,
            ),
        ] {
            assert_eq!(Record::decode(bytes.as_bytes()).is_ok(), ok, "{bytes}");
        }
    }

    #[test]
    fn metadata_travels_in_version_4_with_any_kind_and_step_and_only_there() {
        let metadata: Metadata =
            serde_json::from_str(r#"{"order":"o-1","note":"a|b\nc"}"#).unwrap();
        let hold = Movement::Hold {
            account: AccountId::parse("a").unwrap(),
            to: None,
            amount: Amount::new(5).unwrap(),
            timeout_s: 60,
        };
        let step = SagaStep::Credit {
            debited_balance_after: Balance::new(3).unwrap(),
            debited_asset: None,
        };
        for (movement, saga) in [
            (transfer().movement, None),
            (transfer().movement, Some(step)),
            (hold, None),
        ] {
            let record = Record {
                tx: Transaction {
                    asset: None,
                    id: TxId::parse("t-1").unwrap(),
                    movement,
                    metadata: metadata.clone(),
                },
                accepted_at_ms: 1,
                saga,
            };
            let bytes = record.encode();
            assert!(
                bytes.starts_with(br#"{"v":4,"#),
                "{}",
                String::from_utf8_lossy(&bytes)
            );
            assert_eq!(Record::decode(&bytes).unwrap(), record);
            // Naming an asset, with or without metadata: version 5.
            for metadata in [Metadata::default(), metadata.clone()] {
                let named = Record {
                    tx: Transaction {
                        asset: Some(Asset::parse("USD/2").unwrap()),
                        metadata,
                        ..record.tx.clone()
                    },
                    ..record.clone()
                };
                let bytes = named.encode();
                assert!(bytes.starts_with(br#"{"v":5,"#));
                assert_eq!(Record::decode(&bytes).unwrap(), named);
            }
        }
        let debit = r#""type":"debit","account":"a","amount":1,"accepted_at_ms":1"#;
        let too_many: String = (0..17).map(|i| format!(r#""k{i}":"v","#)).collect();
        for (bytes, ok) in [
            (
                format!(r#"{{"v":4,"id":"x",{debit},"metadata":{{"k":"v"}}}}"#),
                true,
            ),
            (format!(r#"{{"v":4,"id":"x",{debit}}}"#), false),
            (
                format!(r#"{{"v":4,"id":"x",{debit},"metadata":{{}}}}"#),
                false,
            ),
            (
                format!(r#"{{"v":1,"id":"x",{debit},"metadata":{{"k":"v"}}}}"#),
                false,
            ),
            (
                format!(r#"{{"v":4,"id":"x",{debit},"metadata":{{"k":1}}}}"#),
                false,
            ),
            // Version 5 names an asset, with or without metadata; no other
            // version names one.
            (
                format!(r#"{{"v":5,"id":"x",{debit},"asset":"USD/2"}}"#),
                true,
            ),
            (
                format!(r#"{{"v":5,"id":"x",{debit},"asset":"USD/2","metadata":{{"k":"v"}}}}"#),
                true,
            ),
            (format!(r#"{{"v":5,"id":"x",{debit}}}"#), false),
            (
                format!(r#"{{"v":4,"id":"x",{debit},"asset":"USD/2","metadata":{{"k":"v"}}}}"#),
                false,
            ),
            (
                format!(r#"{{"v":1,"id":"x",{debit},"asset":"USD/2"}}"#),
                false,
            ),
            (
                format!(r#"{{"v":5,"id":"x",{debit},"asset":"usd"}}"#),
                false,
            ),
            (
                format!(
                    r#"{{"v":4,"id":"x",{debit},"metadata":{{{}"k":"v"}}}}"#,
                    too_many
                ),
                false,
            ),
        ] {
            assert_eq!(Record::decode(bytes.as_bytes()).is_ok(), ok, "{bytes}");
        }
    }

    #[test]
    fn refuses_poison() {
        assert!(Record::decode(b"not json").is_err());
        assert!(matches!(
            Record::decode(br#"{"v":8}"#),
            Err(DecodeError::NewerVersion(8))
        ));
        assert!(matches!(
            Record::decode(br#"{"v":0,"id":"x"}"#),
            Err(DecodeError::UnsupportedVersion(0))
        ));
        // Valid shape, invalid values: the domain rules hold on decode too.
        let zero =
            br#"{"v":1,"id":"x","type":"debit","account":"a","amount":0,"accepted_at_ms":1}"#;
        assert!(Record::decode(zero).is_err());
        let bad_id =
            br#"{"v":1,"id":"a b","type":"debit","account":"a","amount":1,"accepted_at_ms":1}"#;
        assert!(Record::decode(bad_id).is_err());
    }
}
