//! Balances: read, and set by the admin (leaving room for money in flight).

use redis::AsyncCommands;

use super::{Store, StoreError};
use crate::domain::{AccountId, Balance};

/// What the admin setter did.
#[must_use = "a refused set wrote nothing"]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BalanceSet {
    Set,
    /// Refused: `held` minor units are in flight out of the account, and
    /// the balance plus them would pass 2^53-1.
    NoRoom {
        held: u64,
    },
}

impl BalanceSet {
    /// `Ok` when the balance was set, else the rule it broke.
    pub fn ensure_set(self) -> Result<(), crate::domain::RuleError> {
        match self {
            Self::Set => Ok(()),
            Self::NoRoom { held } => Err(crate::domain::RuleError::NoRoomForHeld { held }),
        }
    }
}

impl Store {
    pub async fn balance(&self, account: &AccountId) -> Result<Option<Balance>, StoreError> {
        let mut conn = self.conn.clone();
        let raw: Option<u64> = conn.get(self.balance_key(account)).await?;
        raw.map(|b| Balance::new(b).map_err(|e| StoreError::Unexpected(e.to_string())))
            .transpose()
    }

    /// Sets `account`'s balance (the admin setter), unless the balance and
    /// the money in flight out of the account (sagas may refund it) would
    /// pass 2^53-1: then nothing is written.
    pub async fn set_balance(
        &self,
        account: &AccountId,
        balance: Balance,
    ) -> Result<BalanceSet, StoreError> {
        let (set, held): (i64, String) = self
            .with_scripts(|| {
                let mut conn = self.conn.clone();
                let mut invocation = self.scripts.set_balance.key(self.balance_key(account));
                invocation
                    .key(self.layout.held(account.as_str()))
                    .arg(balance.minor_units());
                async move { invocation.invoke_async(&mut conn).await }
            })
            .await?;
        let held = held
            .parse()
            .map_err(|_| StoreError::Unexpected(format!("set_balance answered held={held}")))?;
        Ok(if set == 1 {
            BalanceSet::Set
        } else {
            BalanceSet::NoRoom { held }
        })
    }
}

pub(super) fn parse_balance(raw: &str) -> Option<Balance> {
    raw.parse::<u64>().ok().and_then(|b| Balance::new(b).ok())
}
