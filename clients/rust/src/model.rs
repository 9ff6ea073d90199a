//! What the API takes and answers, as types. Amounts and balances are
//! integers of minor units of the account's asset (`USD/2`: cents).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Your own data kept with a transaction or an account: flat strings.
pub type Metadata = BTreeMap<String, String>;

/// A transaction to submit. Its id is made here (a UUIDv7) when it is
/// built, before any try, so that every retry is the same transaction.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NewTransaction {
    pub id: String,
    #[serde(flatten)]
    pub movement: Movement,
    /// The asset every account it touches must hold.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub asset: Option<String>,
    #[serde(skip_serializing_if = "Metadata::is_empty")]
    pub metadata: Metadata,
}

/// What a transaction moves.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Movement {
    Debit {
        account: String,
        amount: u64,
    },
    Credit {
        account: String,
        amount: u64,
    },
    Transfer {
        account: String,
        to: String,
        amount: u64,
    },
    /// Reserves `amount` of `account` until a capture, a void or its timeout.
    Hold {
        account: String,
        amount: u64,
        #[serde(skip_serializing_if = "Option::is_none")]
        to: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        timeout_s: Option<u64>,
    },
    /// Moves all of a hold (or `amount` of it; the rest is released).
    Capture {
        hold: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        amount: Option<u64>,
    },
    Void {
        hold: String,
    },
    /// Several movements, in order, all or none.
    Postings {
        postings: Vec<Posting>,
    },
}

/// One movement of a postings transaction.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Posting {
    pub from: String,
    pub to: String,
    pub amount: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub asset: Option<String>,
}

impl Posting {
    pub fn new(from: impl Into<String>, to: impl Into<String>, amount: u64) -> Self {
        Self {
            from: from.into(),
            to: to.into(),
            amount,
            asset: None,
        }
    }
}

impl NewTransaction {
    /// A transaction of `movement` with a new UUIDv7 id.
    pub fn new(movement: Movement) -> Self {
        Self {
            id: uuid::Uuid::now_v7().to_string(),
            movement,
            asset: None,
            metadata: Metadata::new(),
        }
    }

    pub fn debit(account: impl Into<String>, amount: u64) -> Self {
        Self::new(Movement::Debit {
            account: account.into(),
            amount,
        })
    }

    pub fn credit(account: impl Into<String>, amount: u64) -> Self {
        Self::new(Movement::Credit {
            account: account.into(),
            amount,
        })
    }

    pub fn transfer(from: impl Into<String>, to: impl Into<String>, amount: u64) -> Self {
        Self::new(Movement::Transfer {
            account: from.into(),
            to: to.into(),
            amount,
        })
    }

    /// A hold of `amount` of `account`, for the server's default time and
    /// captured to nowhere (a debit) unless [`Self::hold_for`] says more.
    pub fn hold(account: impl Into<String>, amount: u64) -> Self {
        Self::new(Movement::Hold {
            account: account.into(),
            amount,
            to: None,
            timeout_s: None,
        })
    }

    /// A hold whose capture goes to `to` (when given) and which expires
    /// after `timeout_s` (when given).
    pub fn hold_for(
        account: impl Into<String>,
        amount: u64,
        to: Option<String>,
        timeout_s: Option<u64>,
    ) -> Self {
        Self::new(Movement::Hold {
            account: account.into(),
            amount,
            to,
            timeout_s,
        })
    }

    /// Captures `amount` of `hold` (all of it when `None`).
    pub fn capture(hold: impl Into<String>, amount: Option<u64>) -> Self {
        Self::new(Movement::Capture {
            hold: hold.into(),
            amount,
        })
    }

    pub fn void(hold: impl Into<String>) -> Self {
        Self::new(Movement::Void { hold: hold.into() })
    }

    pub fn postings(postings: Vec<Posting>) -> Self {
        Self::new(Movement::Postings { postings })
    }

    /// The same transaction under your own id (an order number, say).
    pub fn with_id(mut self, id: impl Into<String>) -> Self {
        self.id = id.into();
        self
    }

    pub fn with_asset(mut self, asset: impl Into<String>) -> Self {
        self.asset = Some(asset.into());
        self
    }

    pub fn with_metadata(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.metadata.insert(key.into(), value.into());
        self
    }
}

/// Where a transaction stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Accepted (the broker has it); no consumer has applied it yet.
    Pending,
    Applied,
    /// Refused at apply time (see `reason`): final, nothing moved.
    Rejected,
    /// A hold, applied: its money is reserved.
    Held,
    /// A hold whose capture to another Redis Cluster slot is under way.
    Capturing,
    Captured,
    Voided,
    Expired,
    /// A status this client does not know (a newer server).
    #[serde(other)]
    Unknown,
}

impl Status {
    /// Whether the transaction itself has its outcome: not `pending`, and
    /// not a hold in the middle of its capture. A `held` hold is settled
    /// (a capture or void is a transaction of its own).
    pub fn is_settled(self) -> bool {
        !matches!(self, Status::Pending | Status::Capturing)
    }
}

/// A transaction as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Transaction {
    pub id: String,
    pub status: Status,
    /// What was asked (to a key that sees the source): the kind, and for
    /// all but postings the account, `to`, the amount; a capture's or
    /// void's `hold`.
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub account: Option<String>,
    pub to: Option<String>,
    pub amount: Option<u64>,
    pub hold: Option<String>,
    /// Why it was rejected: `insufficient_funds`, `unknown_account`, ...
    pub reason: Option<String>,
    pub balance_after: Option<i64>,
    pub asset: Option<String>,
    pub captured_amount: Option<u64>,
    /// A rejected postings transaction: the index of the posting that failed.
    pub posting: Option<u32>,
    pub postings: Option<Vec<Posting>>,
    pub metadata: Option<Metadata>,
}

/// Where one item of a batch stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ItemStatus {
    Pending,
    Applied,
    Rejected,
    /// The id is used by another transaction.
    Conflict,
    /// The same transaction is being accepted right now (retried).
    InFlight,
    /// The item breaks a rule (`reason` says which).
    Invalid,
    Forbidden,
    /// Over the key's rate (retried).
    RateLimited,
    /// Kafka or Redis could not take it (retried).
    Unavailable,
    #[serde(other)]
    Unknown,
}

impl ItemStatus {
    /// The statuses the client retries, with the same id, within its bound.
    pub fn is_retried(self) -> bool {
        matches!(
            self,
            ItemStatus::InFlight | ItemStatus::RateLimited | ItemStatus::Unavailable
        )
    }
}

/// One item's answer in a batch, in the request's order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ItemResult {
    pub id: Option<String>,
    pub status: ItemStatus,
    pub reason: Option<String>,
    pub balance_after: Option<i64>,
    pub posting: Option<u32>,
    pub retry_after_s: Option<u64>,
}

/// The fields of `PUT /accounts/{account}`: each one given replaces the
/// account's; left out, it keeps its value.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AccountSpec {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub asset: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_balance: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_balance: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Metadata>,
}

/// An account, its bounds and its money.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Account {
    pub account: String,
    pub asset: String,
    pub min_balance: i64,
    pub max_balance: i64,
    pub balance: i64,
    pub pending: i64,
    pub available: i64,
    pub created_at: String,
    pub metadata: Option<Metadata>,
}

/// An account's money now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Balance {
    pub account: String,
    pub asset: String,
    pub balance: i64,
    pub pending: i64,
    pub available: i64,
}

/// An account's balance at a time, from its history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BalanceAt {
    pub account: String,
    pub balance: i64,
    pub at: String,
    /// The time of the last change at or before `at`.
    pub since: String,
}

/// One entry of an account's history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub id: Option<String>,
    #[serde(rename = "type")]
    pub kind: String,
    pub amount: i64,
    pub delta: i64,
    pub status: String,
    pub balance_after: i64,
    pub at: String,
    pub counterparty: Option<String>,
    pub hold: Option<String>,
    pub posting: Option<u32>,
    pub reason: Option<String>,
    pub metadata: Option<Metadata>,
}

/// A page of history, newest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryPage {
    pub account: String,
    pub entries: Vec<Entry>,
    pub next_cursor: Option<String>,
}

/// Which part of a history to read.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HistoryQuery {
    /// Entries per page (the server's default when `None`).
    pub limit: Option<u32>,
    /// RFC 3339 times.
    pub since: Option<String>,
    pub until: Option<String>,
}

/// What a new key may do.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KeySpec {
    /// Account ids, prefixes ending in `*`, or `*`.
    pub accounts: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_per_s: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub burst: Option<u64>,
}

/// A key as listed: never its secret.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Key {
    pub id: String,
    pub accounts: Vec<String>,
    pub rate_per_s: Option<u64>,
    pub burst: Option<u64>,
    pub created_at_ms: u64,
}

/// A key just made, with the only copy of its secret.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CreatedKey {
    #[serde(flatten)]
    pub key: Key,
    pub secret: String,
}
