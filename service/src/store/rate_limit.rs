//! The per-key GCRA rate limit (`lua/rate_limit.lua`).

use std::time::Duration;

use super::{Store, StoreError};
use crate::keys::{KeyId, RateLimit};

/// What the rate limit script said about one request of a key (or the
/// items of one batch, each counted as a request).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateVerdict {
    /// The request may go ahead (and was counted): at least one was granted.
    pub allowed: bool,
    /// How many of those asked for may go ahead (the first ones), counted.
    pub granted: u64,
    /// Requests the key may still send right now.
    pub remaining: u64,
    /// When some were refused: how long until one more may come.
    pub retry_after: Duration,
    /// How long until the whole burst is available again.
    pub reset: Duration,
}

impl RateVerdict {
    /// rate_limit.lua's `{allowed, remaining, retry_after_us, reset_us}`.
    pub(super) fn from_script(
        (granted, remaining, retry_after_us, reset_us): (u64, u64, u64, u64),
    ) -> Self {
        Self {
            allowed: granted > 0,
            granted,
            remaining,
            retry_after: Duration::from_micros(retry_after_us),
            reset: Duration::from_micros(reset_us),
        }
    }
}

impl Store {
    /// Counts one request of key `id` against `limit` (GCRA, one script on
    /// Redis's clock), unless it is over the limit.
    pub async fn spend(&self, id: &KeyId, limit: RateLimit) -> Result<RateVerdict, StoreError> {
        self.spend_many(id, limit, 1).await
    }

    /// Counts `count` requests of key `id` at once (a batch's items): as
    /// many as the limit lets go now, the first ones; none are counted when
    /// none may go.
    pub async fn spend_many(
        &self,
        id: &KeyId,
        limit: RateLimit,
        count: u64,
    ) -> Result<RateVerdict, StoreError> {
        let answer: (u64, u64, u64, u64) = self
            .with_scripts(|| {
                let mut conn = self.conn.clone();
                let mut invocation = self.scripts.rate_limit.key(self.layout.rate(id.as_str()));
                invocation
                    .arg(limit.interval_us())
                    .arg(limit.burst)
                    .arg(count);
                async move { invocation.invoke_async(&mut conn).await }
            })
            .await?;
        Ok(RateVerdict::from_script(answer))
    }
}
