//! Each account's history, as the money scripts write it (`log` in
//! `lua/money.lua`): a stream in the account's slot whose ids are Redis's
//! clock at the apply, read newest first by page, and the balance at a
//! point in time.

use redis::Value;

use super::{Store, StoreError};
use crate::domain::{AccountId, Kind};

/// One entry of an account's history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryEntry {
    /// Where it is in the history (the stream id `<ms>-<n>`): a page's
    /// cursor, and its time.
    pub position: String,
    pub at_ms: u64,
    /// The transaction; none for an admin balance set.
    pub id: Option<String>,
    pub kind: EntryKind,
    pub amount: i64,
    /// This account's signed change (0 when nothing moved).
    pub delta: i64,
    pub counterparty: Option<String>,
    pub status: EntryStatus,
    pub reason: Option<String>,
    pub balance_after: i64,
    /// The hold a hold's entry, or its capture's, void's or expiry's, is of.
    pub hold: Option<String>,
    /// A postings transaction's entry: the index of its posting.
    pub posting: Option<u16>,
    /// The transaction's metadata, canonical JSON.
    pub metadata: Option<String>,
}

/// What an entry is of: a movement, or an admin's balance set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EntryKind {
    Movement(Kind),
    Set,
}

impl EntryKind {
    /// Its name in the stream and the API: the movement's kind, or `set`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Movement(kind) => kind.as_str(),
            Self::Set => "set",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "set" => Some(Self::Set),
            kind => Kind::parse(kind).map(Self::Movement),
        }
    }
}

/// What an entry records of its transaction on this account.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EntryStatus {
    /// Its outcome (a balance set is `applied`).
    Applied,
    Rejected,
    /// A saga's step: the source `debited`, the destination `credited`,
    /// the source's hold of it `released` or `refunded`.
    Debited,
    Credited,
    Released,
    Refunded,
    /// A hold's change: `held`, `capturing` (its capture's saga under way),
    /// `captured`, `voided`, `expired`.
    Held,
    Capturing,
    Captured,
    Voided,
    Expired,
}

impl EntryStatus {
    const ALL: [Self; 11] = [
        Self::Applied,
        Self::Rejected,
        Self::Debited,
        Self::Credited,
        Self::Released,
        Self::Refunded,
        Self::Held,
        Self::Capturing,
        Self::Captured,
        Self::Voided,
        Self::Expired,
    ];

    /// Its name in the stream (the scripts write it) and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Applied => "applied",
            Self::Rejected => "rejected",
            Self::Debited => "debited",
            Self::Credited => "credited",
            Self::Released => "released",
            Self::Refunded => "refunded",
            Self::Held => "held",
            Self::Capturing => "capturing",
            Self::Captured => "captured",
            Self::Voided => "voided",
            Self::Expired => "expired",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|status| status.as_str() == raw)
    }
}

impl std::fmt::Display for EntryKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::fmt::Display for EntryStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which entries a page holds: newest first, older than `before` (a
/// position), at or after `since_ms`, before `until_ms`.
#[derive(Debug, Clone, Default)]
pub struct HistoryQuery {
    pub before: Option<String>,
    pub since_ms: Option<u64>,
    pub until_ms: Option<u64>,
    pub limit: usize,
}

/// An account's balance at a time, from its history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BalanceAt {
    /// The balance after the last entry at or before the time.
    Known { balance: i64, since_ms: u64 },
    /// No entry that early, and none was ever trimmed: the account did not
    /// exist yet (or has no history).
    Unknown,
    /// Earlier than the history goes back: its oldest entry is this.
    BeforeRetention { oldest_ms: u64 },
}

/// A position in a history (`<ms>-<n>`, both below 2^64), as a cursor
/// must be before it reaches Redis.
pub fn is_position(text: &str) -> bool {
    parse_position(text).is_some()
}

fn parse_position(text: &str) -> Option<(u64, u64)> {
    let (ms, n) = text.split_once('-')?;
    let part = |p: &str| {
        (!p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
            .then(|| p.parse::<u64>().ok())
            .flatten()
    };
    Some((part(ms)?, part(n)?))
}

/// The last position before `(ms, n)`, inclusive; none before `0-0`.
/// (Redis refuses an exclusive `(0-0`, so the bound is computed here.)
fn just_before((ms, n): (u64, u64)) -> Option<(u64, u64)> {
    match (ms, n) {
        (0, 0) => None,
        (ms, 0) => Some((ms - 1, u64::MAX)),
        (ms, n) => Some((ms, n - 1)),
    }
}

type RawEntry = (String, Vec<String>);

impl Store {
    /// `XRANGE` or `XREVRANGE` (`command`) of the stream `key` from `from`
    /// to `to`, at most `count` entries.
    async fn range(
        &self,
        command: &str,
        key: &str,
        (from, to): (&str, &str),
        count: usize,
    ) -> Result<Vec<RawEntry>, StoreError> {
        let mut conn = self.conn.clone();
        Ok(redis::cmd(command)
            .arg(key)
            .arg(from)
            .arg(to)
            .arg("COUNT")
            .arg(count)
            .query_async(&mut conn)
            .await?)
    }

    /// The position of the oldest entry of the stream `key`, if any.
    async fn oldest_position(&self, key: &str) -> Result<Option<(u64, u64)>, StoreError> {
        self.range("XRANGE", key, ("-", "+"), 1)
            .await?
            .first()
            .map(|(position, _)| {
                parse_position(position)
                    .ok_or_else(|| StoreError::Unexpected(format!("not a position: {position}")))
            })
            .transpose()
    }

    /// True when no history is written (`--history-retention-secs 0`).
    pub fn history_is_off(&self) -> bool {
        self.history_keep_ms == 0
    }

    /// How long history is kept (ms).
    pub fn history_keep_ms(&self) -> u64 {
        self.history_keep_ms
    }

    /// A page of `account`'s history, newest first.
    pub async fn history(
        &self,
        account: &AccountId,
        query: &HistoryQuery,
    ) -> Result<Vec<HistoryEntry>, StoreError> {
        // The newest position a page may hold: before the cursor, and
        // before `until`; nothing when that is before the first.
        let bounds = [
            query.before.as_deref().map(|before| {
                parse_position(before)
                    .ok_or_else(|| StoreError::Unexpected(format!("not a position: {before}")))
            }),
            query.until_ms.map(|until| Ok((until, 0))),
        ];
        let mut end = None;
        for bound in bounds.into_iter().flatten() {
            let bound = bound?;
            end = Some(end.map_or(bound, |end: (u64, u64)| end.min(bound)));
        }
        let end = match end {
            None => None,
            Some(bound) => match just_before(bound) {
                Some(end) => Some(end),
                None => return Ok(Vec::new()),
            },
        };
        let key = self.layout.history(account.as_str());
        // Redis 7.0's XREVRANGE scans the whole stream when nothing is at
        // or below its end: look at the oldest entry first.
        match self.oldest_position(&key).await? {
            None => return Ok(Vec::new()),
            Some(oldest) if end.is_some_and(|end| end < oldest) => return Ok(Vec::new()),
            Some(_) => {}
        }
        let end = end.map_or_else(|| "+".to_owned(), |(ms, n)| format!("{ms}-{n}"));
        let start = query
            .since_ms
            .map_or_else(|| "-".to_owned(), |since| format!("{since}-0"));
        self.range("XREVRANGE", &key, (&end, &start), query.limit)
            .await?
            .into_iter()
            .map(|(position, fields)| parse_entry(position, &fields))
            .collect()
    }

    /// `account`'s balance at `at_ms` (Redis's clock), from its history.
    pub async fn balance_at(
        &self,
        account: &AccountId,
        at_ms: u64,
    ) -> Result<BalanceAt, StoreError> {
        let key = self.layout.history(account.as_str());
        // The oldest entry first: XREVRANGE would scan the whole stream
        // for a time before it (see `history`).
        let Some(oldest) = self.oldest_position(&key).await? else {
            return Ok(BalanceAt::Unknown);
        };
        if at_ms >= oldest.0 {
            let last = self
                .range("XREVRANGE", &key, (&at_ms.to_string(), "-"), 1)
                .await?;
            if let Some((position, fields)) = last.into_iter().next() {
                let entry = parse_entry(position, &fields)?;
                return Ok(BalanceAt::Known {
                    balance: entry.balance_after,
                    since_ms: entry.at_ms,
                });
            }
        }
        let oldest_ms = oldest.0;
        let mut conn = self.conn.clone();
        let info: Value = redis::cmd("XINFO")
            .arg("STREAM")
            .arg(&key)
            .query_async(&mut conn)
            .await?;
        // Trimmed when fewer entries are left than were ever added (XTRIM
        // does not move `max-deleted-entry-id`; XDEL is never used).
        let number = |name: &[u8]| -> Option<i64> {
            let pairs: Vec<(&Value, &Value)> = match &info {
                Value::Array(items) => items
                    .chunks(2)
                    .filter_map(|p| Some((p.first()?, p.get(1)?)))
                    .collect(),
                Value::Map(items) => items.iter().map(|(k, v)| (k, v)).collect(),
                _ => Vec::new(),
            };
            pairs
                .into_iter()
                .find_map(|(key, value)| match (key, value) {
                    (Value::BulkString(key), Value::Int(n)) if key.as_slice() == name => Some(*n),
                    _ => None,
                })
        };
        let trimmed = match (number(b"entries-added"), number(b"length")) {
            (Some(added), Some(length)) => added > length,
            _ => {
                return Err(StoreError::Unexpected(
                    "XINFO STREAM without entries-added or length".into(),
                ))
            }
        };
        Ok(if trimmed {
            BalanceAt::BeforeRetention { oldest_ms }
        } else {
            BalanceAt::Unknown
        })
    }
}

fn position_ms(position: &str) -> Option<u64> {
    position.split_once('-')?.0.parse().ok()
}

impl HistoryEntry {
    /// Reads one stream entry as XRANGE answers it (its position, then
    /// field, value, ...); what the scripts wrote, or an error naming it.
    pub fn parse(position: String, fields: &[String]) -> Result<Self, StoreError> {
        parse_entry(position, fields)
    }
}

/// Reads one stream entry (field, value, ...) into a [`HistoryEntry`].
fn parse_entry(position: String, fields: &[String]) -> Result<HistoryEntry, StoreError> {
    let unexpected =
        || StoreError::Unexpected(format!("history entry {position} of an unexpected shape"));
    let get = |name: &str| -> Option<&str> {
        fields
            .chunks(2)
            .find(|pair| pair.len() == 2 && pair[0] == name)
            .map(|pair| pair[1].as_str())
    };
    let present = |name: &str| {
        get(name)
            .filter(|value| !value.is_empty())
            .map(str::to_owned)
    };
    let number = |name: &str| get(name).and_then(|value| value.parse::<i64>().ok());
    Ok(HistoryEntry {
        at_ms: position_ms(&position).ok_or_else(unexpected)?,
        id: present("id"),
        kind: get("type")
            .and_then(EntryKind::parse)
            .ok_or_else(unexpected)?,
        amount: number("amount").ok_or_else(unexpected)?,
        delta: get("delta")
            .and_then(|value| value.parse().ok())
            .ok_or_else(unexpected)?,
        counterparty: present("cp"),
        status: get("status")
            .and_then(EntryStatus::parse)
            .ok_or_else(unexpected)?,
        reason: present("reason"),
        balance_after: number("bal").ok_or_else(unexpected)?,
        hold: present("hold"),
        posting: match get("posting") {
            None => None,
            Some(index) => Some(index.parse().map_err(|_| unexpected())?),
        },
        metadata: present("meta"),
        position,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_position_is_two_runs_of_digits() {
        assert!(is_position("1733000000000-0"));
        assert!(is_position("1-12"));
        for bad in [
            "",
            "-",
            "1-",
            "-1",
            "1",
            "1-2-3",
            "a-1",
            "1-+",
            "(1-0",
            "123456789012345678901-0",
        ] {
            assert!(!is_position(bad), "{bad}");
        }
    }

    #[test]
    fn an_entry_reads_its_fields_and_refuses_a_broken_one() {
        let fields: Vec<String> = [
            "id", "t-1", "type", "transfer", "amount", "5", "delta", "-5", "cp", "b", "status",
            "applied", "reason", "", "bal", "95", "hold", "", "meta", "",
        ]
        .map(str::to_owned)
        .to_vec();
        let entry = parse_entry("1700000000123-4".into(), &fields).unwrap();
        assert_eq!(entry.at_ms, 1_700_000_000_123);
        assert_eq!(entry.id.as_deref(), Some("t-1"));
        assert_eq!(entry.delta, -5);
        assert_eq!(entry.counterparty.as_deref(), Some("b"));
        assert_eq!(entry.reason, None);
        assert_eq!(entry.balance_after, 95);
        assert_eq!(entry.kind, EntryKind::Movement(Kind::Transfer));
        assert_eq!(entry.status, EntryStatus::Applied);
        let mut broken = fields.clone();
        broken[15] = "x".into();
        assert!(parse_entry("1-0".into(), &broken).is_err());
        for (at, unknown) in [(3, "refund"), (11, "paid")] {
            let mut broken = fields.clone();
            broken[at] = unknown.into();
            assert!(parse_entry("1-0".into(), &broken).is_err(), "{unknown}");
        }
    }

    /// Each kind and status an entry may hold reads back from its name.
    #[test]
    fn entry_kinds_and_statuses_read_back_from_their_names() {
        for status in EntryStatus::ALL {
            assert_eq!(EntryStatus::parse(status.as_str()), Some(status));
        }
        assert_eq!(EntryKind::parse("set"), Some(EntryKind::Set));
        for kind in Kind::ALL {
            assert_eq!(
                EntryKind::parse(kind.as_str()),
                Some(EntryKind::Movement(kind))
            );
        }
    }
}
