//! The API's side of an id: claim (bind it to its body, lease it while
//! the publish is in flight), accept once Kafka has it, or release.

use std::time::Duration;

use super::outcomes::parse_status;
use super::rate_limit::RateVerdict;
use super::{RedisTopology, Store, StoreError};
use crate::domain::{Transaction, TxId, TxStatus};
use crate::keys::{KeyId, RateLimit};

/// What the claim script found for an id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// This request holds the id's lease (under its token) and may publish.
    Claimed,
    /// The id is bound to a different body.
    Conflict,
    /// The same request is being published by another caller right now.
    InFlight,
    /// The same request was accepted before; this is where it stands.
    Known(TxStatus),
    /// The key is over its rate limit: nothing was claimed.
    RateLimited,
}

/// What the accept script did with a published record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acceptance {
    /// This request held the lease; the id is marked accepted.
    Accepted,
    /// The lease ran out and is another request's (of the same body, the
    /// binding being this body); nothing was changed.
    NotOwner,
    /// The id is bound to another body; nothing was changed.
    Conflict,
}

impl Store {
    /// How long a claim lasts unless released or accepted.
    pub fn lease(&self) -> Duration {
        Duration::from_millis(self.lease_ms)
    }

    /// A fresh lease token, naming one request's claim.
    pub fn lease_token() -> String {
        uuid::Uuid::new_v4().simple().to_string()
    }

    /// Claims `tx.id` for this request, under `token`, before it is
    /// published: binds the id to this body (for the outcome TTL) and takes
    /// its lease. After an error the claim may still have been made (the
    /// command can reach Redis after the wait for its answer ended): release
    /// `token` then.
    pub async fn claim(&self, tx: &Transaction, token: &str) -> Result<Claim, StoreError> {
        let (verdict, reason, balance_after): (String, String, String) = self
            .with_scripts(|| {
                let mut conn = self.conn.clone();
                let mut invocation = self.scripts.claim.key(self.tx_key(&tx.id));
                invocation
                    .arg(tx.movement.fingerprint())
                    .arg(self.lease_ms)
                    .arg(token)
                    .arg(self.outcome_ttl_secs);
                async move { invocation.invoke_async(&mut conn).await }
            })
            .await?;
        parse_claim(&verdict, &reason, &balance_after)
    }

    /// Counts the request against its key's `limit`, then claims `tx.id`
    /// as [`Store::claim`] does if the limit allows it ([`Claim::RateLimited`]
    /// and nothing claimed if not); no limit: only the claim. On one Redis
    /// in one script (one round trip); on a cluster the key's rate is in
    /// another slot, so in two calls, the limit first. After an error,
    /// release `token` as after a failed claim.
    pub async fn claim_within_limit(
        &self,
        tx: &Transaction,
        token: &str,
        limit: Option<(&KeyId, RateLimit)>,
    ) -> Result<(Claim, Option<RateVerdict>), StoreError> {
        let Some((key, limit)) = limit else {
            return Ok((self.claim(tx, token).await?, None));
        };
        if self.topology == RedisTopology::Cluster {
            let verdict = self.spend(key, limit).await?;
            if !verdict.allowed {
                return Ok((Claim::RateLimited, Some(verdict)));
            }
            return Ok((self.claim(tx, token).await?, Some(verdict)));
        }
        type Answer = (String, String, String, u8, u64, u64, u64);
        let (verdict, reason, balance_after, allowed, remaining, retry_after_us, reset_us): Answer =
            self.with_scripts(|| {
                let mut conn = self.conn.clone();
                let mut invocation = self.scripts.rate_limit_then_claim.key(self.tx_key(&tx.id));
                invocation
                    .key(self.layout.rate(key.as_str()))
                    .arg(tx.movement.fingerprint())
                    .arg(self.lease_ms)
                    .arg(token)
                    .arg(self.outcome_ttl_secs)
                    .arg(limit.interval_us())
                    .arg(limit.burst);
                async move { invocation.invoke_async(&mut conn).await }
            })
            .await?;
        let rate = RateVerdict::from_script((allowed, remaining, retry_after_us, reset_us));
        if !rate.allowed {
            return Ok((Claim::RateLimited, Some(rate)));
        }
        Ok((parse_claim(&verdict, &reason, &balance_after)?, Some(rate)))
    }

    /// Marks an id as accepted once Kafka acknowledged its record, if the
    /// lease `token` is still this request's (one script: check and write).
    pub async fn accept(&self, tx: &Transaction, token: &str) -> Result<Acceptance, StoreError> {
        let verdict: String = self
            .with_scripts(|| {
                let mut conn = self.conn.clone();
                let mut invocation = self.scripts.accept.key(self.tx_key(&tx.id));
                invocation.arg(tx.movement.fingerprint()).arg(token);
                async move { invocation.invoke_async(&mut conn).await }
            })
            .await?;
        match verdict.as_str() {
            "accepted" => Ok(Acceptance::Accepted),
            "not_owner" => Ok(Acceptance::NotOwner),
            "conflict" => Ok(Acceptance::Conflict),
            other => Err(StoreError::Unexpected(format!("accept answered {other}"))),
        }
    }

    /// Ends this request's lease after a failed publish (only if it is still
    /// this request's); the id stays bound to its body. True if it was.
    pub async fn release(&self, id: &TxId, token: &str) -> Result<bool, StoreError> {
        let released: i64 = self
            .with_scripts(|| {
                let mut conn = self.conn.clone();
                let mut invocation = self.scripts.release.key(self.tx_key(id));
                invocation.arg(token);
                async move { invocation.invoke_async(&mut conn).await }
            })
            .await?;
        Ok(released == 1)
    }
}

/// claim.lua's answer.
pub(super) fn parse_claim(
    verdict: &str,
    reason: &str,
    balance_after: &str,
) -> Result<Claim, StoreError> {
    Ok(match verdict {
        "claimed" => Claim::Claimed,
        "conflict" => Claim::Conflict,
        "leased" => Claim::InFlight,
        state => Claim::Known(parse_status(state, reason, balance_after)?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Balance, Outcome, RejectReason};

    #[test]
    fn claim_answers_parse_or_are_refused() {
        assert_eq!(parse_claim("claimed", "", "").unwrap(), Claim::Claimed);
        assert_eq!(parse_claim("conflict", "", "").unwrap(), Claim::Conflict);
        assert_eq!(parse_claim("leased", "", "").unwrap(), Claim::InFlight);
        assert_eq!(
            parse_claim("pending", "", "").unwrap(),
            Claim::Known(TxStatus::Pending)
        );
        assert_eq!(
            parse_claim("applied", "", "12").unwrap(),
            Claim::Known(TxStatus::Settled(Outcome::Applied {
                balance_after: Balance::new(12).unwrap()
            }))
        );
        assert_eq!(
            parse_claim("rejected", "balance_overflow", "").unwrap(),
            Claim::Known(TxStatus::Settled(Outcome::Rejected {
                reason: RejectReason::BalanceOverflow
            }))
        );
        assert!(parse_claim("applied", "", "").is_err());
        assert!(parse_claim("whatever", "", "").is_err());
    }
}
