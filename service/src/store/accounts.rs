//! Accounts: read whole, made or changed by the admin (bounds, metadata),
//! and their balance set by the admin (within the bounds, leaving room for
//! money in flight).

use super::{Store, StoreError};
use crate::domain::{Account, AccountChange, AccountId, Asset, Balance, Bounds, RuleError};
use crate::metadata::Metadata;

/// What the admin setter did.
#[must_use = "a refused set wrote nothing"]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BalanceSet {
    /// Set: the account as it stands now (its active holds keep its
    /// `pending`).
    Set(Account),
    /// Refused: `held` minor units are in flight out of the account, and
    /// the balance plus them would pass its `max`.
    NoRoom { held: u64, max: Balance },
    /// Refused: the account's active holds keep `pending`, and the balance
    /// minus them would be below its `min`.
    BelowPending { pending: u64, min: Balance },
}

impl BalanceSet {
    /// `Ok(account)` when the balance was set, else the rule it broke.
    pub fn ensure_set(self) -> Result<Account, RuleError> {
        match self {
            Self::Set(account) => Ok(account),
            Self::NoRoom { held, max } => Err(RuleError::NoRoomForHeld { held, max }),
            Self::BelowPending { pending, min } => Err(RuleError::BelowPending { pending, min }),
        }
    }
}

/// What `PUT /accounts/{account}` did with the account it answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccountPut {
    Created,
    Updated,
    /// It was as asked already: nothing written.
    Unchanged,
}

fn unexpected(what: &str, detail: impl std::fmt::Debug) -> StoreError {
    StoreError::Unexpected(format!("{what}: {detail:?}"))
}

pub(super) fn parse_balance(raw: &str) -> Option<Balance> {
    Balance::new(raw.parse().ok()?).ok()
}

/// An account from its record's fields, as `put_account.lua` and
/// `set_balance.lua` answer them (balance, pending, held, asset, min, max,
/// meta, created).
fn account_from(fields: &[String]) -> Option<Account> {
    let [balance, pending, held, asset, min, max, meta, created] = fields else {
        return None;
    };
    let metadata = match meta.as_str() {
        "" => Metadata::default(),
        json => serde_json::from_str(json).ok()?,
    };
    Some(Account {
        asset: Asset::parse(asset).ok()?,
        bounds: Bounds::new(parse_balance(min)?, parse_balance(max)?).ok()?,
        balance: parse_balance(balance)?,
        pending: pending.parse().ok()?,
        held: held.parse().ok()?,
        metadata,
        created_ms: created.parse().ok()?,
    })
}

impl Store {
    pub async fn balance(&self, account: &AccountId) -> Result<Option<Balance>, StoreError> {
        Ok(self.account(account).await?.map(|account| account.balance))
    }

    /// The account, read at once (one record); `None` for an unknown one.
    pub async fn account(&self, account: &AccountId) -> Result<Option<Account>, StoreError> {
        let mut conn = self.conn.clone();
        let fields: Vec<Option<String>> = redis::cmd("HMGET")
            .arg(self.account_key(account))
            .arg(&[
                "balance", "pending", "held", "asset", "min", "max", "meta", "created",
            ])
            .query_async(&mut conn)
            .await?;
        if fields[0].is_none() {
            return Ok(None);
        }
        // What a record leaves out: no pending, nothing held, the default
        // bounds, no metadata.
        let max = Balance::MAX.to_string();
        let defaults = ["", "0", "0", "", "0", max.as_str(), "", "0"];
        let fields: Vec<String> = fields
            .into_iter()
            .zip(defaults)
            .map(|(field, default)| field.unwrap_or_else(|| default.to_owned()))
            .collect();
        let found = account_from(&fields).ok_or_else(|| unexpected(account.as_str(), &fields))?;
        if found.balance.minor_units() - (found.pending as i64) < found.bounds.min().minor_units() {
            return Err(unexpected(
                "an account whose holds keep more than it may pay",
                (account, &fields),
            ));
        }
        Ok(Some(found))
    }

    /// Makes `account` (balance 0; what `change` leaves out takes its
    /// default) or changes its bounds and metadata, unless a rule forbids
    /// it: then nothing is written, and the rule is the error.
    pub async fn put_account(
        &self,
        account: &AccountId,
        change: &AccountChange,
    ) -> Result<Result<(AccountPut, Account), RuleError>, StoreError> {
        let digits = |bound: Option<Balance>| bound.map(|b| b.to_string()).unwrap_or_default();
        let meta = match &change.metadata {
            Some(metadata) => metadata.to_json(),
            None => "-".to_owned(),
        };
        let texts: Vec<String> = self
            .with_scripts(|| {
                let mut conn = self.conn.clone();
                let mut invocation = self.scripts.put_account.key(self.account_key(account));
                invocation
                    .arg(change.asset.as_ref().map(Asset::as_str).unwrap_or(""))
                    .arg(digits(change.min_balance))
                    .arg(digits(change.max_balance))
                    .arg(&meta)
                    .arg(self.default_asset.as_str())
                    .arg(crate::wire::now_ms());
                async move { invocation.invoke_async(&mut conn).await }
            })
            .await?;
        let (head, fields) = texts.split_at(2.min(texts.len()));
        let found = account_from(fields).ok_or_else(|| unexpected("put_account", &texts))?;
        let refused = |rule| Ok(Err(rule));
        match head[0].as_str() {
            "created" => Ok(Ok((AccountPut::Created, found))),
            "updated" => Ok(Ok((AccountPut::Updated, found))),
            "unchanged" => Ok(Ok((AccountPut::Unchanged, found))),
            "asset" => refused(RuleError::AssetFixed {
                current: found.asset,
            }),
            "crossed" => refused(RuleError::BoundsCrossed {
                min: change.min_balance.unwrap_or(found.bounds.min()),
                max: change.max_balance.unwrap_or(found.bounds.max()),
            }),
            "below_min" => refused(RuleError::BelowPending {
                pending: found.pending,
                min: change.min_balance.unwrap_or(found.bounds.min()),
            }),
            "above_max" => refused(RuleError::NoRoomForHeld {
                held: found.held,
                max: change.max_balance.unwrap_or(found.bounds.max()),
            }),
            _ => Err(unexpected("put_account", &texts)),
        }
    }

    /// Sets `account`'s balance (the admin setter; a missing account is
    /// made with the default asset and bounds), unless the balance breaks
    /// the account's bounds counting its pending money and the money in
    /// flight out of it (sagas may refund it): then nothing is written.
    pub async fn set_balance(
        &self,
        account: &AccountId,
        balance: Balance,
    ) -> Result<BalanceSet, StoreError> {
        let texts: Vec<String> = self
            .with_scripts(|| {
                let mut conn = self.conn.clone();
                let mut invocation = self.scripts.set_balance.key(self.account_key(account));
                invocation
                    .key(self.layout.history(account.as_str()))
                    .arg(balance.minor_units())
                    .arg(self.history_keep_ms)
                    .arg(self.default_asset.as_str())
                    .arg(crate::wire::now_ms());
                async move { invocation.invoke_async(&mut conn).await }
            })
            .await?;
        let fail = || unexpected("set_balance", &texts);
        let (code, fields) = texts.split_first().ok_or_else(fail)?;
        let found = account_from(fields).ok_or_else(fail)?;
        match code.as_str() {
            "1" => Ok(BalanceSet::Set(found)),
            "0" => Ok(BalanceSet::NoRoom {
                held: found.held,
                max: found.bounds.max(),
            }),
            "2" => Ok(BalanceSet::BelowPending {
                pending: found.pending,
                min: found.bounds.min(),
            }),
            _ => Err(fail()),
        }
    }
}
