//! Balances: read, and set by the admin (leaving room for money in flight).

use super::{Store, StoreError};
use crate::domain::{AccountId, Balance};

/// An account's money: its balance, and what its active holds keep of
/// it (at most the balance); `available` is what may leave it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Funds {
    pub balance: Balance,
    pub pending: u64,
}

impl Funds {
    pub fn available(self) -> u64 {
        self.balance.minor_units() - self.pending
    }
}

/// What the admin setter did.
#[must_use = "a refused set wrote nothing"]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BalanceSet {
    /// Set; the account's active holds keep `pending` of it.
    Set { pending: u64 },
    /// Refused: `held` minor units are in flight out of the account, and
    /// the balance plus them would pass 2^53-1.
    NoRoom { held: u64 },
    /// Refused: the account's active holds keep `pending`, more than the
    /// balance asked for.
    BelowPending { pending: u64 },
}

impl BalanceSet {
    /// `Ok(pending)` when the balance was set, else the rule it broke.
    pub fn ensure_set(self) -> Result<u64, crate::domain::RuleError> {
        match self {
            Self::Set { pending } => Ok(pending),
            Self::NoRoom { held } => Err(crate::domain::RuleError::NoRoomForHeld { held }),
            Self::BelowPending { pending } => {
                Err(crate::domain::RuleError::BelowPending { pending })
            }
        }
    }
}

impl Store {
    pub async fn balance(&self, account: &AccountId) -> Result<Option<Balance>, StoreError> {
        Ok(self.funds(account).await?.map(|funds| funds.balance))
    }

    /// The account's balance and what its active holds keep, read at once
    /// (one record); `None` for an unknown account.
    pub async fn funds(&self, account: &AccountId) -> Result<Option<Funds>, StoreError> {
        let mut conn = self.conn.clone();
        let (balance, pending): (Option<u64>, Option<u64>) = redis::cmd("HMGET")
            .arg(self.account_key(account))
            .arg("balance")
            .arg("pending")
            .query_async(&mut conn)
            .await?;
        let Some(balance) = balance else {
            return Ok(None);
        };
        let balance = Balance::new(balance).map_err(|e| StoreError::Unexpected(e.to_string()))?;
        let pending = pending.unwrap_or(0);
        if pending > balance.minor_units() {
            return Err(StoreError::Unexpected(format!(
                "{account}: pending {pending} above the balance {}",
                balance.minor_units()
            )));
        }
        Ok(Some(Funds { balance, pending }))
    }

    /// Sets `account`'s balance (the admin setter), unless the balance and
    /// the money in flight out of the account (sagas may refund it) would
    /// pass 2^53-1: then nothing is written.
    pub async fn set_balance(
        &self,
        account: &AccountId,
        balance: Balance,
    ) -> Result<BalanceSet, StoreError> {
        let (set, held, pending): (i64, String, String) = self
            .with_scripts(|| {
                let mut conn = self.conn.clone();
                let mut invocation = self.scripts.set_balance.key(self.account_key(account));
                invocation
                    .key(self.layout.history(account.as_str()))
                    .arg(balance.minor_units())
                    .arg(self.history_keep_ms);
                async move { invocation.invoke_async(&mut conn).await }
            })
            .await?;
        let unexpected =
            || StoreError::Unexpected(format!("set_balance answered {set} {held} {pending}"));
        let held = held.parse().map_err(|_| unexpected())?;
        let pending = pending.parse().map_err(|_| unexpected())?;
        match set {
            1 => Ok(BalanceSet::Set { pending }),
            0 => Ok(BalanceSet::NoRoom { held }),
            2 => Ok(BalanceSet::BelowPending { pending }),
            _ => Err(unexpected()),
        }
    }
}

pub(super) fn parse_balance(raw: &str) -> Option<Balance> {
    raw.parse::<u64>().ok().and_then(|b| Balance::new(b).ok())
}
