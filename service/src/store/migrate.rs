//! Data written by an earlier key layout, brought to this one when the
//! engine starts. The layout's version is kept in Redis; a store written by
//! a newer one is refused, never read wrongly.

use super::{Store, StoreError};

/// The key layout this build writes. 1: an account is three keys (`bal`,
/// `pending`, `held`); 2: one record, `{tag}:acct:<account>`; 3: the
/// record also holds the account's asset, bounds and creation time.
pub const LAYOUT_VERSION: u32 = 3;

impl Store {
    /// Brings the store to [`LAYOUT_VERSION`] and says how many accounts it
    /// moved or completed (an account without an asset gets the default
    /// asset). Each account moves in one script (idempotent), so engines
    /// starting at once, or a start cut short, are safe; the engines of an
    /// earlier version must be stopped first (they would write the old
    /// keys again). A store whose recorded layout is newer is refused.
    pub async fn migrate(&self) -> Result<usize, StoreError> {
        let mut conn = self.conn.clone();
        let version_key = self.layout.version();
        let found: Option<u32> = redis::cmd("GET")
            .arg(&version_key)
            .query_async(&mut conn)
            .await?;
        match found {
            Some(LAYOUT_VERSION) => return Ok(0),
            Some(newer) if newer > LAYOUT_VERSION => {
                return Err(StoreError::NewerLayout {
                    found: newer,
                    known: LAYOUT_VERSION,
                })
            }
            _ => {}
        }
        let mut accounts: Vec<String> = Vec::new();
        for (pattern, infix) in [
            (self.layout.legacy_balances(), ":bal:"),
            (self.layout.accounts(), ":acct:"),
        ] {
            let keys = self.conn.scan(&pattern).await?;
            accounts
                .extend(keys.iter().filter_map(|key| {
                    key.split_once(infix).map(|(_, account)| account.to_owned())
                }));
        }
        accounts.sort_unstable();
        accounts.dedup();
        let now_ms = crate::wire::now_ms();
        let mut moved = 0;
        // A thousand accounts a round trip, each its own script call (the
        // scripts were loaded when the store connected).
        for chunk in accounts.chunks(1_000) {
            let calls = chunk
                .iter()
                .map(|account| {
                    let [balance, pending, held] = self.layout.legacy_account(account);
                    let mut call = redis::cmd("EVALSHA");
                    call.arg(self.scripts.migrate_account.get_hash())
                        .arg(4)
                        .arg(balance)
                        .arg(pending)
                        .arg(held)
                        .arg(self.layout.account(account))
                        .arg(self.default_asset.as_str())
                        .arg(now_ms);
                    (self.layout.shard_of(account), call)
                })
                .collect();
            let answers: Vec<i64> = self.conn.run_by_slot(calls).await?;
            moved += answers.into_iter().sum::<i64>() as usize;
        }
        let _: () = redis::cmd("SET")
            .arg(&version_key)
            .arg(LAYOUT_VERSION)
            .query_async(&mut conn)
            .await?;
        if moved > 0 {
            tracing::info!(moved, "accounts brought to key layout {LAYOUT_VERSION}");
        }
        Ok(moved)
    }
}
