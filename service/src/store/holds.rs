//! Holds as the API and the expirer read them: the terms a hold's binding
//! names, where it stands, and which are past their deadline.

use super::layout::Layout;
use super::{Store, StoreError};
use crate::domain::{AccountId, Amount, HoldTerms, TxId};

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

impl Store {
    /// Where hold `hold` of `account` stands; `None` when it is not there
    /// (rejected, or expired from Redis).
    pub async fn hold_phase(
        &self,
        account: &AccountId,
        hold: &TxId,
    ) -> Result<Option<HoldPhase>, StoreError> {
        let mut conn = self.conn.clone();
        let (state, captured): (Option<String>, Option<u64>) = redis::cmd("HMGET")
            .arg(self.layout.hold(account.as_str(), hold.as_str()))
            .arg("state")
            .arg("captured")
            .query_async(&mut conn)
            .await?;
        Ok(match state.as_deref() {
            Some("held") => Some(HoldPhase::Held),
            Some("capturing") => Some(HoldPhase::Capturing),
            Some("captured") => Some(HoldPhase::Captured {
                amount: captured.unwrap_or(0),
            }),
            Some("voided") => Some(HoldPhase::Voided),
            Some("expired") => Some(HoldPhase::Expired),
            Some("rejected") | None => None,
            Some(other) => {
                return Err(StoreError::Unexpected(format!(
                    "hold {hold} of {account} in state {other}"
                )))
            }
        })
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
            .map(|fp| fp.as_deref().and_then(HoldTerms::of_fingerprint))
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
        let shards = self.layout.shards();
        let commands = (0..shards)
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
        let due: Vec<(AccountId, TxId)> = members
            .iter()
            .flatten()
            .filter_map(|member| {
                let (account, hold) = member.split_once('|')?;
                Some((AccountId::parse(account).ok()?, TxId::parse(hold).ok()?))
            })
            .collect();
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
        Ok(due
            .into_iter()
            .zip(holds)
            .filter_map(|((account, hold), (state, amount))| {
                (state.as_deref() == Some("held")).then_some(())?;
                Some(DueHold {
                    account,
                    hold,
                    amount: Amount::new(amount?).ok()?,
                })
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
