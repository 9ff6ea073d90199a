//! The API's side of an id: claim (bind it to its body, lease it while
//! the publish is in flight), accept once Kafka has it, or release.

use std::collections::BTreeMap;
use std::time::Duration;

use redis::{Cmd, Script, Value};

use super::connection::spread;
use super::outcomes::parse_status;
use super::rate_limit::RateVerdict;
use super::{evalsha, RedisTopology, Store, StoreError};
use crate::domain::{Transaction, TxId, TxStatus};
use crate::keys::{KeyId, RateLimit};

/// One single request's claim: its transaction, its lease token and, when
/// its key has one, the key's rate limit.
pub type LimitedClaim<'a> = (&'a Transaction, &'a str, Option<(&'a KeyId, RateLimit)>);

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
                    .arg(tx.fingerprint())
                    .arg(self.lease_ms)
                    .arg(token)
                    .arg(self.outcome_ttl_secs);
                async move { invocation.invoke_async(&mut conn).await }
            })
            .await?;
        parse_claim(&verdict, &reason, &balance_after)
    }

    /// Claims the transactions of concurrent single requests, each under
    /// its own token (an id given twice is claimed in order, the second
    /// then finding the first's lease) and counted against its key's
    /// `limit` first when it has one: each as if alone, [`Claim::RateLimited`]
    /// and nothing claimed or counted when its limit refuses it; with what
    /// its limit said. On one Redis in one script call (one round trip); on
    /// a cluster a key's rate is in another slot than the transactions, so
    /// the keys are counted first (one call per key), then what they let go
    /// is claimed (one call per slot). One answer per request, in order;
    /// after an error the claim may still have been made: release its token.
    pub async fn claim_within_limits(
        &self,
        items: &[LimitedClaim<'_>],
    ) -> Vec<Result<(Claim, Option<RateVerdict>), StoreError>> {
        if self.topology == RedisTopology::Cluster {
            return self.count_then_claim(items).await;
        }
        if items.is_empty() {
            return Vec::new();
        }
        type Answer = (String, String, String, u64, u64, u64, u64);
        let answers: Result<Vec<Answer>, StoreError> = self
            .with_scripts(|| {
                let mut keys = Vec::with_capacity(2 * items.len());
                for (tx, _, limit) in items {
                    let record = self.tx_key(&tx.id);
                    let rate = match limit {
                        Some((key, _)) => self.layout.rate(key.as_str()),
                        None => record.clone(),
                    };
                    keys.extend([record, rate]);
                }
                let mut cmd = evalsha(&self.scripts.rate_limit_then_claim, &keys);
                cmd.arg(self.lease_ms).arg(self.outcome_ttl_secs);
                for (tx, token, limit) in items {
                    cmd.arg(tx.fingerprint()).arg(*token);
                    match limit {
                        Some((_, limit)) => cmd.arg(limit.interval_us()).arg(limit.burst),
                        None => cmd.arg(0).arg(0),
                    };
                }
                let mut conn = self.conn.clone();
                async move { cmd.query_async::<Vec<Answer>>(&mut conn).await }
            })
            .await;
        let answers = match answers {
            Ok(answers) if answers.len() == items.len() => answers,
            Ok(answers) => {
                let e = StoreError::Unexpected(format!(
                    "rate_limit_then_claim had {} answers for {} claims",
                    answers.len(),
                    items.len()
                ));
                return items.iter().map(|_| Err(e.clone())).collect();
            }
            Err(e) => return items.iter().map(|_| Err(e.clone())).collect(),
        };
        items
            .iter()
            .zip(answers)
            .map(|((_, _, limit), answer)| {
                let (verdict, reason, balance_after, allowed, remaining, retry_us, reset_us) =
                    answer;
                let rate = limit
                    .map(|_| RateVerdict::from_script((allowed, remaining, retry_us, reset_us)));
                if rate.is_some_and(|rate| !rate.allowed) {
                    return Ok((Claim::RateLimited, rate));
                }
                Ok((parse_claim(&verdict, &reason, &balance_after)?, rate))
            })
            .collect()
    }

    /// [`Store::claim_within_limits`] on a cluster: each key counted once
    /// for all its requests (the first ones go; each told what it would
    /// have been told alone), then one claim call per slot for the requests
    /// their keys let go. A key that could not be counted fails its own
    /// requests only, a slot that could not be claimed in its own.
    async fn count_then_claim(
        &self,
        items: &[LimitedClaim<'_>],
    ) -> Vec<Result<(Claim, Option<RateVerdict>), StoreError>> {
        let mut by_key: BTreeMap<&KeyId, (RateLimit, Vec<usize>)> = BTreeMap::new();
        for (index, (_, _, limit)) in items.iter().enumerate() {
            if let Some((key, limit)) = limit {
                by_key
                    .entry(key)
                    .or_insert((*limit, Vec::new()))
                    .1
                    .push(index);
            }
        }
        let counts = by_key
            .iter()
            .map(|(key, (limit, indices))| self.spend_many(key, *limit, indices.len() as u64));
        let verdicts = futures_util::future::join_all(counts).await;
        // Each request's rate verdict, or why its key could not be counted.
        let mut rates: Vec<Result<Option<RateVerdict>, StoreError>> =
            (0..items.len()).map(|_| Ok(None)).collect();
        for ((limit, indices), verdict) in by_key.values().zip(verdicts) {
            for (position, &index) in indices.iter().enumerate() {
                rates[index] = match &verdict {
                    Ok(verdict) => Ok(Some(alone(verdict, position as u64, limit))),
                    Err(e) => Err(e.clone()),
                };
            }
        }
        let let_go: Vec<usize> = (0..items.len())
            .filter(|&index| matches!(&rates[index], Ok(rate) if rate.is_none_or(|r| r.allowed)))
            .collect();
        let to_claim: Vec<(&Transaction, &str)> = let_go
            .iter()
            .map(|&index| (items[index].0, items[index].1))
            .collect();
        let claims = self.claim_batch(&to_claim).await;
        let mut answers: Vec<Result<(Claim, Option<RateVerdict>), StoreError>> = rates
            .into_iter()
            .map(|rate| rate.map(|rate| (Claim::RateLimited, rate)))
            .collect();
        for (index, claim) in let_go.into_iter().zip(claims) {
            answers[index] = claim.and_then(|claim| {
                let rate = answers[index].as_ref().map_err(Clone::clone)?.1;
                Ok((claim, rate))
            });
        }
        answers
    }

    /// Marks an id as accepted once Kafka acknowledged its record, if the
    /// lease `token` is still this request's (one script: check and write).
    pub async fn accept(&self, tx: &Transaction, token: &str) -> Result<Acceptance, StoreError> {
        let verdict: String = self
            .with_scripts(|| {
                let mut conn = self.conn.clone();
                let mut invocation = self.scripts.accept.key(self.tx_key(&tx.id));
                invocation.arg(tx.fingerprint()).arg(token);
                async move { invocation.invoke_async(&mut conn).await }
            })
            .await?;
        parse_acceptance(&verdict)
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

impl Store {
    /// Claims every transaction of a batch under its own token, each as
    /// [`Store::claim`] claims one, in one script call per slot (the slots
    /// at once). One answer per item, in order; after an error (its slot's
    /// call failed) the claim may still have been made: release its token.
    pub async fn claim_batch(
        &self,
        items: &[(&Transaction, &str)],
    ) -> Vec<Result<Claim, StoreError>> {
        let common = [self.lease_ms, self.outcome_ttl_secs];
        self.per_slot(
            &self.scripts.claim_batch,
            items,
            &common,
            |(tx, token), cmd| {
                cmd.arg(tx.fingerprint()).arg(*token);
            },
        )
        .await
        .into_iter()
        .map(|answer| {
            let (verdict, reason, balance_after): (String, String, String) = answer?;
            parse_claim(&verdict, &reason, &balance_after)
        })
        .collect()
    }

    /// Accepts every published transaction of a batch, each as
    /// [`Store::accept`] accepts one, in one script call per slot. One
    /// answer per item, in order.
    pub async fn accept_batch(
        &self,
        items: &[(&Transaction, &str)],
    ) -> Vec<Result<Acceptance, StoreError>> {
        self.per_slot(
            &self.scripts.accept_batch,
            items,
            &[],
            |(tx, token), cmd| {
                cmd.arg(tx.fingerprint()).arg(*token);
            },
        )
        .await
        .into_iter()
        .map(|answer: Result<String, StoreError>| parse_acceptance(&answer?))
        .collect()
    }

    /// Runs `script` once for each slot the items' tx records are in: its
    /// KEYS the records of that slot's items, its ARGV the `common`
    /// arguments, then each item's (`per_item`), in order. The script
    /// answers one value per key; the answers come back in the items' order,
    /// each item with its slot's error if that slot's call failed. Slots
    /// that lost the scripts (NOSCRIPT) are run again once they are loaded.
    async fn per_slot<T: redis::FromRedisValue>(
        &self,
        script: &Script,
        items: &[(&Transaction, &str)],
        common: &[u64],
        per_item: impl Fn(&(&Transaction, &str), &mut Cmd),
    ) -> Vec<Result<T, StoreError>> {
        let mut slots: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
        for (index, (tx, _)) in items.iter().enumerate() {
            let shard = self.layout.shard_of(tx.id.as_str());
            slots.entry(shard).or_default().push(index);
        }
        let run = |slots: Vec<(u32, Vec<usize>)>| {
            let commands = slots
                .iter()
                .map(|(shard, indices)| {
                    let keys: Vec<String> = indices
                        .iter()
                        .map(|&i| self.tx_key(&items[i].0.id))
                        .collect();
                    let mut cmd = evalsha(script, &keys);
                    cmd.arg(common);
                    for &i in indices {
                        per_item(&items[i], &mut cmd);
                    }
                    (*shard, cmd)
                })
                .collect();
            async move {
                let answers = self.conn.run_by_slot_each::<Vec<Value>>(commands).await;
                slots.into_iter().zip(answers).collect::<Vec<_>>()
            }
        };
        let mut done = run(slots.into_iter().collect()).await;
        let lost = |answer: &Result<Vec<Value>, StoreError>| matches!(answer, Err(StoreError::Redis(e)) if e.code() == Some("NOSCRIPT"));
        if done.iter().any(|(_, answer)| lost(answer)) {
            tracing::warn!("redis lost its scripts (restart?); loading them again");
            match self.load_scripts().await {
                Ok(()) => {
                    let (again, kept): (Vec<_>, Vec<_>) =
                        done.into_iter().partition(|(_, answer)| lost(answer));
                    done = kept;
                    done.extend(run(again.into_iter().map(|(slot, _)| slot).collect()).await);
                }
                Err(e) => {
                    for (_, answer) in done.iter_mut().filter(|(_, answer)| lost(answer)) {
                        *answer = Err(e.clone());
                    }
                }
            }
        }
        let groups = done
            .into_iter()
            .map(|((_, indices), answer)| (indices, answer));
        spread(items.len(), groups, "batch script")
    }
}

/// What the `position`-th (from 0) of a key's requests counted together
/// would have been told alone, from the `verdict` on all of them: GCRA
/// counts one interval a request, so each earlier one saw one more left
/// and a reset one interval sooner; an allowed one has no retry advice.
fn alone(verdict: &RateVerdict, position: u64, limit: &RateLimit) -> RateVerdict {
    if position >= verdict.granted {
        return RateVerdict {
            allowed: false,
            granted: 0,
            ..*verdict
        };
    }
    let later = verdict.granted - 1 - position;
    RateVerdict {
        allowed: true,
        granted: 1,
        remaining: verdict.remaining + later,
        retry_after: Duration::ZERO,
        reset: verdict
            .reset
            .saturating_sub(Duration::from_micros(later * limit.interval_us())),
    }
}

/// accept.lua's answer.
fn parse_acceptance(verdict: &str) -> Result<Acceptance, StoreError> {
    match verdict {
        "accepted" => Ok(Acceptance::Accepted),
        "not_owner" => Ok(Acceptance::NotOwner),
        "conflict" => Ok(Acceptance::Conflict),
        other => Err(StoreError::Unexpected(format!("accept answered {other}"))),
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

    /// Three requests of a key of burst 10 counted together on a cluster
    /// are each told what they would have been told one after the other
    /// (9, 8, 7 left; resets one interval apart); past what was granted,
    /// refused with the verdict's retry advice.
    #[test]
    fn requests_counted_together_are_each_told_what_alone_would_say() {
        let limit = RateLimit {
            rate_per_s: 10,
            burst: 10,
        };
        let together = RateVerdict {
            allowed: true,
            granted: 3,
            remaining: 7,
            retry_after: Duration::from_millis(100),
            reset: Duration::from_millis(300),
        };
        let told: Vec<(bool, u64, u64)> = (0..4)
            .map(|position| {
                let verdict = alone(&together, position, &limit);
                (
                    verdict.allowed,
                    verdict.remaining,
                    verdict.reset.as_millis() as u64,
                )
            })
            .collect();
        assert_eq!(
            told,
            [
                (true, 9, 100),
                (true, 8, 200),
                (true, 7, 300),
                (false, 7, 300)
            ]
        );
        assert_eq!(alone(&together, 0, &limit).retry_after, Duration::ZERO);
        assert_eq!(
            alone(&together, 3, &limit).retry_after,
            Duration::from_millis(100)
        );
        assert_eq!(alone(&together, 3, &limit).granted, 0);
    }

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
