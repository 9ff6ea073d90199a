//! Where a transaction stands, read from its tx record.

use super::{Store, StoreError};
use crate::domain::{Asset, TxId, TxStatus};

impl Store {
    /// Where an id stands; `None` if unknown or only claimed (not yet accepted).
    pub async fn status(&self, id: &TxId) -> Result<Option<TxStatus>, StoreError> {
        Ok(self.lookup(id).await?.map(|(status, _, _)| status))
    }

    /// Where an id stands, the fingerprint of the body it is bound to
    /// (which names its accounts) and, once settled, the asset of the
    /// account it settled on; `None` if unknown or only claimed.
    pub async fn lookup(
        &self,
        id: &TxId,
    ) -> Result<Option<(TxStatus, String, Option<Asset>)>, StoreError> {
        let mut conn = self.conn.clone();
        type Fields = (
            Option<String>,
            Option<String>,
            Option<String>,
            Option<String>,
            Option<String>,
            Option<String>,
            Option<String>,
        );
        let (state, reason, balance_after, accepted, fingerprint, asset, posting): Fields =
            redis::cmd("HMGET")
                .arg(self.tx_key(id))
                .arg("state")
                .arg("reason")
                .arg("balance_after")
                .arg("accepted")
                .arg("fp")
                .arg("asset")
                .arg("posting")
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
        let asset = match asset.as_deref() {
            None | Some("") => None,
            Some(asset) => Some(Asset::parse(asset).map_err(|_| {
                StoreError::Unexpected(format!("{id}: asset {asset} in its record"))
            })?),
        };
        Ok(Some((status, fingerprint.unwrap_or_default(), asset)))
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
