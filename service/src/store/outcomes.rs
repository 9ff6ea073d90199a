//! Where a transaction stands, read from its tx record.

use super::apply::{parse_asset, parse_assets};
use super::{Store, StoreError};
use crate::domain::{Asset, TxId, TxStatus};

/// What a transaction's record says of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxRecord {
    pub status: TxStatus,
    /// The fingerprint of the body its id is bound to (which names its
    /// accounts).
    pub fingerprint: String,
    /// Once settled, the asset of the account it settled on.
    pub asset: Option<Asset>,
    /// Once a postings transaction settled: each posting's asset (its
    /// `from`'s; `None` where that account did not exist).
    pub posting_assets: Vec<Option<Asset>>,
}

impl Store {
    /// Where an id stands; `None` if unknown or only claimed (not yet accepted).
    pub async fn status(&self, id: &TxId) -> Result<Option<TxStatus>, StoreError> {
        Ok(self.lookup(id).await?.map(|record| record.status))
    }

    /// What the record of an id says; `None` if unknown or only claimed.
    pub async fn lookup(&self, id: &TxId) -> Result<Option<TxRecord>, StoreError> {
        let mut conn = self.conn.clone();
        type Fields = (
            Option<String>,
            Option<String>,
            Option<String>,
            Option<String>,
            Option<String>,
            Option<String>,
            Option<String>,
            Option<String>,
        );
        let (state, reason, balance_after, accepted, fingerprint, asset, posting, assets): Fields =
            redis::cmd("HMGET")
                .arg(self.tx_key(id))
                .arg("state")
                .arg("reason")
                .arg("balance_after")
                .arg("accepted")
                .arg("fp")
                .arg("asset")
                .arg("posting")
                .arg("assets")
                .query_async(&mut conn)
                .await?;
        let status = match (state.as_deref(), accepted) {
            (Some(state @ ("applied" | "rejected")), _) => parse_status(
                state,
                reason.as_deref().unwrap_or(""),
                balance_after.as_deref().unwrap_or(""),
                posting.as_deref().unwrap_or(""),
            )?,
            (_, Some(_)) => TxStatus::Pending,
            _ => return Ok(None),
        };
        let unexpected = |what: &str| StoreError::Unexpected(format!("{id}: {what} in its record"));
        let asset = asset.unwrap_or_default();
        let asset = parse_asset(&asset).ok_or_else(|| unexpected(&format!("asset {asset}")))?;
        let assets = assets.unwrap_or_default();
        let posting_assets =
            parse_assets(&assets).ok_or_else(|| unexpected(&format!("assets {assets}")))?;
        Ok(Some(TxRecord {
            status,
            fingerprint: fingerprint.unwrap_or_default(),
            asset,
            posting_assets,
        }))
    }
}

/// Turns the scripts' `(state, reason, balance_after, posting)` into a
/// status.
pub(super) fn parse_status(
    state: &str,
    reason: &str,
    balance_after: &str,
    posting: &str,
) -> Result<TxStatus, StoreError> {
    let unexpected = || {
        StoreError::Unexpected(format!(
            "state={state} reason={reason} balance_after={balance_after} posting={posting}"
        ))
    };
    TxStatus::from_parts(state, reason, balance_after, posting).ok_or_else(unexpected)
}
