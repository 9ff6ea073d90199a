//! Holds as the API and the expirer read them: the terms a hold's binding
//! names, where it stands, and which are past their deadline.

use super::layout::Layout;
use super::{Store, StoreError};
use crate::domain::{AccountId, Amount, Binding, HoldTerms, TxId};

/// A hold whose expirer's look is due: its account, id and amount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DueHold {
    pub account: AccountId,
    pub hold: TxId,
    pub amount: Amount,
}

/// Where a hold stands once it was applied (not rejected).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HoldPhase {
    Held,
    /// Captured to an account in another slot: its saga is under way.
    Capturing,
    Captured {
        amount: u64,
    },
    Voided,
    Expired,
}

impl HoldPhase {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Held => "held",
            Self::Capturing => "capturing",
            Self::Captured { .. } => "captured",
            Self::Voided => "voided",
            Self::Expired => "expired",
        }
    }
}

/// A hold as Redis keeps it (`{tag}:hold:<id>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HoldRecord {
    /// held, capturing, captured, voided, expired or rejected.
    pub state: String,
    pub amount: u64,
    pub to: Option<String>,
    /// When it expires, on Redis's clock (ms); none when rejected.
    pub deadline_ms: Option<u64>,
    /// Once ended: what its capture moved (0 if none), and when.
    pub captured: Option<u64>,
    pub ended_ms: Option<u64>,
    /// Once ended: its place in the slot's apply order.
    pub ended_seq: Option<u64>,
}

impl HoldRecord {
    /// Its phase, when it was applied (not rejected).
    pub fn phase(&self) -> Result<Option<HoldPhase>, StoreError> {
        Ok(match self.state.as_str() {
            "held" => Some(HoldPhase::Held),
            "capturing" => Some(HoldPhase::Capturing),
            "captured" => Some(HoldPhase::Captured {
                amount: self.captured.unwrap_or(0),
            }),
            "voided" => Some(HoldPhase::Voided),
            "expired" => Some(HoldPhase::Expired),
            "rejected" => None,
            other => return Err(StoreError::Unexpected(format!("a hold in state {other}"))),
        })
    }
}

impl Store {
    /// Hold `hold` of `account` as Redis keeps it; `None` when absent.
    pub async fn hold_record(
        &self,
        account: &AccountId,
        hold: &TxId,
    ) -> Result<Option<HoldRecord>, StoreError> {
        let mut conn = self.conn.clone();
        type Fields = (
            Option<String>,
            Option<u64>,
            Option<String>,
            Option<u64>,
            Option<u64>,
            Option<u64>,
            Option<u64>,
        );
        let (state, amount, to, deadline_ms, captured, ended_ms, ended_seq): Fields =
            redis::cmd("HMGET")
                .arg(self.layout.hold(account.as_str(), hold.as_str()))
                .arg(&[
                    "state",
                    "amount",
                    "to",
                    "deadline_ms",
                    "captured",
                    "ended_ms",
                    "ended_seq",
                ])
                .query_async(&mut conn)
                .await?;
        let Some(state) = state else {
            return Ok(None);
        };
        Ok(Some(HoldRecord {
            state,
            amount: amount.unwrap_or(0),
            to: to.filter(|to| !to.is_empty()),
            deadline_ms,
            captured,
            ended_ms,
            ended_seq,
        }))
    }

    /// Where hold `hold` of `account` stands; `None` when it is not there
    /// (rejected, or expired from Redis).
    pub async fn hold_phase(
        &self,
        account: &AccountId,
        hold: &TxId,
    ) -> Result<Option<HoldPhase>, StoreError> {
        match self.hold_record(account, hold).await? {
            Some(record) => record.phase(),
            None => Ok(None),
        }
    }

    /// The terms of each id's hold as its binding names them (`None`: the
    /// id is bound to no hold: never claimed, another kind, or expired),
    /// read in one pipeline per slot.
    pub async fn hold_terms(&self, holds: &[TxId]) -> Result<Vec<Option<HoldTerms>>, StoreError> {
        let commands = holds
            .iter()
            .map(|hold| {
                let mut cmd = redis::cmd("HGET");
                cmd.arg(self.tx_key(hold)).arg("fp");
                (self.layout.shard_of(hold.as_str()), cmd)
            })
            .collect();
        let fingerprints: Vec<Option<String>> = self.conn.run_by_slot(commands).await?;
        Ok(fingerprints
            .iter()
            .map(|fp| fp.as_deref().and_then(Binding::hold_terms_of))
            .collect())
    }
}

impl Store {
    /// The holds due for a look by `now_ms` (their deadline, or the time
    /// their published expiry was given), at most `most_per_slot` of each
    /// slot, with their amounts; holds ended meanwhile are left out.
    pub async fn due_holds(
        &self,
        now_ms: u64,
        most_per_slot: usize,
    ) -> Result<Vec<DueHold>, StoreError> {
        let due = self.due_members(now_ms, most_per_slot).await?;
        if due.is_empty() {
            return Ok(Vec::new());
        }
        let commands = due
            .iter()
            .map(|(account, hold)| {
                let mut cmd = redis::cmd("HMGET");
                cmd.arg(self.layout.hold(account.as_str(), hold.as_str()))
                    .arg("state")
                    .arg("amount");
                (self.layout.shard_of(account.as_str()), cmd)
            })
            .collect();
        let holds: Vec<(Option<String>, Option<u64>)> = self.conn.run_by_slot(commands).await?;
        // A member whose hold is gone (its record expired while it was
        // held: a consumer behind by more than the outcome TTL less the
        // hold's timeout) can never be expired; it leaves the set, loudly,
        // so it cannot crowd out the due ones.
        let gone: Vec<(u32, redis::Cmd)> = due
            .iter()
            .zip(&holds)
            .filter(|(_, (state, _))| state.is_none())
            .map(|((account, hold), _)| {
                tracing::error!(%account, %hold, "a due hold's record is gone: its pending amount stays until an operator releases it");
                let shard = self.layout.shard_of(account.as_str());
                let mut cmd = redis::cmd("ZREM");
                cmd.arg(self.layout.holds_due(shard))
                    .arg(Layout::due_member(account.as_str(), hold.as_str()));
                (shard, cmd)
            })
            .collect();
        if !gone.is_empty() {
            let _: Vec<i64> = self.conn.run_by_slot(gone).await?;
        }
        Ok(due
            .into_iter()
            .zip(holds)
            .filter_map(|((account, hold), (state, amount))| {
                // `expired`: a capture or void past the deadline expired it
                // and left it due, so that its expiry, applied, says so
                // (the outcome event) and removes the member.
                matches!(state.as_deref(), Some("held" | "expired")).then_some(())?;
                Some(DueHold {
                    account,
                    hold,
                    amount: Amount::new(amount?).ok()?,
                })
            })
            .collect())
    }

    /// The members of every slot's set of due holds whose time came by
    /// `now_ms`, at most `most_per_slot` of each: (account, hold).
    async fn due_members(
        &self,
        now_ms: u64,
        most_per_slot: usize,
    ) -> Result<Vec<(AccountId, TxId)>, StoreError> {
        let commands = (0..self.layout.shards())
            .map(|shard| {
                let mut cmd = redis::cmd("ZRANGEBYSCORE");
                cmd.arg(self.layout.holds_due(shard))
                    .arg("-inf")
                    .arg(now_ms)
                    .arg("LIMIT")
                    .arg(0)
                    .arg(most_per_slot);
                (shard, cmd)
            })
            .collect();
        let members: Vec<Vec<String>> = self.conn.run_by_slot(commands).await?;
        Ok(members
            .iter()
            .flatten()
            .filter_map(|member| {
                let (account, hold) = member.split_once('|')?;
                Some((AccountId::parse(account).ok()?, TxId::parse(hold).ok()?))
            })
            .collect())
    }

    /// Puts the next look at each hold off until `at_ms` (only where it is
    /// still due: an ended hold has left the set).
    pub async fn postpone_due(&self, holds: &[DueHold], at_ms: u64) -> Result<(), StoreError> {
        let commands = holds
            .iter()
            .map(|due| {
                let shard = self.layout.shard_of(due.account.as_str());
                let mut cmd = redis::cmd("ZADD");
                cmd.arg(self.layout.holds_due(shard))
                    .arg("XX")
                    .arg(at_ms)
                    .arg(Layout::due_member(due.account.as_str(), due.hold.as_str()));
                (shard, cmd)
            })
            .collect();
        let _: Vec<i64> = self.conn.run_by_slot(commands).await?;
        Ok(())
    }
}
