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

/// The claims of one request (a single one, or a batch's distinct
/// transactions): each transaction under its lease token, counted first
/// against its key's rate limit as one request of `items.len()` when the
/// key has one.
#[derive(Debug, Clone, Copy)]
pub struct ClaimRequest<'a> {
    pub limit: Option<(&'a KeyId, RateLimit)>,
    pub items: &'a [(Transaction, String)],
}

/// What came of one request's claims.
#[derive(Debug)]
pub struct RequestClaims {
    /// What its key's limit said (`None`: no limit, or it could not be
    /// counted: then every item holds the error).
    pub rate: Option<RateVerdict>,
    /// One per item, in order: [`Claim::RateLimited`] past what the limit
    /// let go (nothing claimed). After an error the claim may still have
    /// been made: release its token.
    pub claims: Vec<Result<Claim, StoreError>>,
}

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
        let (verdict, reason, balance_after, posting): (String, String, String, String) = self
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
        parse_claim(&verdict, &reason, &balance_after, &posting)
    }

    /// Claims the items of `requests` (one request, or those gathered into
    /// one call), each request counted against its key's limit first: the
    /// items its limit lets go (the first ones) are claimed, each exactly as
    /// if claimed alone, in order (an id given twice is claimed in order, the
    /// second finding the first's lease or binding). On one Redis this is one
    /// script call (one round trip); on a cluster a key's rate is in another
    /// slot than its transactions, so the keys are counted first (one call
    /// per key), then what they let go is claimed (one call per slot). One
    /// answer per request, in order.
    pub async fn claim_requests(&self, requests: &[ClaimRequest<'_>]) -> Vec<RequestClaims> {
        if requests.iter().all(|request| request.items.is_empty()) {
            // Nothing to count or claim: no write at all.
            return requests
                .iter()
                .map(|_| RequestClaims {
                    rate: None,
                    claims: Vec::new(),
                })
                .collect();
        }
        if self.topology == RedisTopology::Cluster {
            return self.count_then_claim(requests).await;
        }
        type Answer = (
            Vec<(String, String, String, String)>,
            Vec<(u64, u64, u64, u64)>,
        );
        let answer: Result<Answer, StoreError> = self
            .with_scripts(|| {
                let mut keys = Vec::new();
                for request in requests {
                    if let Some((key, _)) = request.limit {
                        keys.push(self.layout.rate(key.as_str()));
                    }
                    keys.extend(request.items.iter().map(|(tx, _)| self.tx_key(&tx.id)));
                }
                let mut cmd = evalsha(&self.scripts.claim_batch, &keys);
                cmd.arg(self.lease_ms).arg(self.outcome_ttl_secs);
                for request in requests {
                    let (interval, burst) = request
                        .limit
                        .map_or((0, 0), |(_, limit)| (limit.interval_us(), limit.burst));
                    cmd.arg(interval).arg(burst).arg(request.items.len());
                    for (tx, token) in request.items {
                        cmd.arg(tx.fingerprint()).arg(token);
                    }
                }
                let mut conn = self.conn.clone();
                async move { cmd.query_async::<Answer>(&mut conn).await }
            })
            .await;
        let items: usize = requests.iter().map(|request| request.items.len()).sum();
        let (claims, rates) = match answer {
            Ok((claims, rates)) if claims.len() == items && rates.len() == requests.len() => {
                (claims, rates)
            }
            Ok((claims, rates)) => {
                let e = StoreError::Unexpected(format!(
                    "claim_batch had {} claims and {} rates for {items} items of {} requests",
                    claims.len(),
                    rates.len(),
                    requests.len()
                ));
                return failed(requests, &e);
            }
            Err(e) => return failed(requests, &e),
        };
        each_request(requests, claims, rates)
    }

    /// [`Store::claim_requests`] on a cluster: each key counted once for
    /// all the items of its requests (the first ones go; each request told
    /// what it would have been told alone), then one claim call per slot
    /// for the items their keys let go. A key that could not be counted
    /// fails its own requests only, a slot that could not be claimed its
    /// own items.
    async fn count_then_claim(&self, requests: &[ClaimRequest<'_>]) -> Vec<RequestClaims> {
        let mut by_key: BTreeMap<&KeyId, (RateLimit, Vec<usize>)> = BTreeMap::new();
        for (index, request) in requests.iter().enumerate() {
            if let Some((key, limit)) = request.limit {
                by_key
                    .entry(key)
                    .or_insert((limit, Vec::new()))
                    .1
                    .push(index);
            }
        }
        let counts = by_key.iter().map(|(key, (limit, indices))| {
            let items = indices.iter().map(|&i| requests[i].items.len() as u64);
            self.spend_many(key, *limit, items.sum())
        });
        let verdicts = futures_util::future::join_all(counts).await;
        // Each request's rate verdict, or why its key could not be counted.
        let mut rates: Vec<Result<Option<RateVerdict>, StoreError>> =
            requests.iter().map(|_| Ok(None)).collect();
        for ((limit, indices), verdict) in by_key.values().zip(verdicts) {
            let mut before = 0;
            for &index in indices {
                let count = requests[index].items.len() as u64;
                rates[index] = match &verdict {
                    Ok(verdict) => Ok(Some(share(verdict, before, count, limit))),
                    Err(e) => Err(e.clone()),
                };
                before += count;
            }
        }
        // The items each request's limit let go (the first ones), claimed.
        let granted: Vec<usize> = requests
            .iter()
            .zip(&rates)
            .map(|(request, rate)| match rate {
                Ok(None) => request.items.len(),
                Ok(Some(rate)) => rate.granted as usize,
                Err(_) => 0,
            })
            .collect();
        let to_claim: Vec<(&Transaction, &str)> = requests
            .iter()
            .zip(&granted)
            .flat_map(|(request, &n)| request.items[..n].iter())
            .map(|(tx, token)| (tx, token.as_str()))
            .collect();
        let mut claims = self.claim_each(&to_claim).await.into_iter();
        requests
            .iter()
            .zip(rates)
            .zip(granted)
            .map(|((request, rate), n)| match rate {
                Err(e) => RequestClaims {
                    rate: None,
                    claims: request.items.iter().map(|_| Err(e.clone())).collect(),
                },
                Ok(rate) => RequestClaims {
                    rate,
                    claims: claims
                        .by_ref()
                        .take(n)
                        .chain((n..request.items.len()).map(|_| Ok(Claim::RateLimited)))
                        .collect(),
                },
            })
            .collect()
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
    /// Claims each of `items` under its own token, as one request without
    /// a limit, in one script call per slot (the slots at once). One answer
    /// per item, in order.
    async fn claim_each(&self, items: &[(&Transaction, &str)]) -> Vec<Result<Claim, StoreError>> {
        let head = |count: usize| vec![self.lease_ms, self.outcome_ttl_secs, 0, 0, count as u64];
        // The answer is {claims, rates}: the slot's claims are the first.
        let claims_of = |answer: Vec<Value>| match answer.into_iter().next() {
            Some(Value::Array(claims)) => claims,
            _ => Vec::new(),
        };
        self.per_slot(
            &self.scripts.claim_batch,
            items,
            head,
            |(tx, token), cmd| {
                cmd.arg(tx.fingerprint()).arg(*token);
            },
            claims_of,
        )
        .await
        .into_iter()
        .map(|answer| {
            let (verdict, reason, balance_after, posting): (String, String, String, String) =
                answer?;
            parse_claim(&verdict, &reason, &balance_after, &posting)
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
            |_| Vec::new(),
            |(tx, token), cmd| {
                cmd.arg(tx.fingerprint()).arg(*token);
            },
            |answers| answers,
        )
        .await
        .into_iter()
        .map(|answer: Result<String, StoreError>| parse_acceptance(&answer?))
        .collect()
    }

    /// Runs `script` once for each slot the items' tx records are in: its
    /// KEYS the records of that slot's items, its ARGV `head` (of how many
    /// items the slot has), then each item's (`per_item`), in order. Of the
    /// script's answer, `answers_of` takes one value per key; they come back
    /// in the items' order, each item with its slot's error if that slot's
    /// call failed. Slots that lost the scripts (NOSCRIPT) are run again
    /// once they are loaded.
    async fn per_slot<T: redis::FromRedisValue>(
        &self,
        script: &Script,
        items: &[(&Transaction, &str)],
        head: impl Fn(usize) -> Vec<u64>,
        per_item: impl Fn(&(&Transaction, &str), &mut Cmd),
        answers_of: impl Fn(Vec<Value>) -> Vec<Value>,
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
                    cmd.arg(head(indices.len()));
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
            .map(|((_, indices), answer)| (indices, answer.map(&answers_of)));
        spread(items.len(), groups, "batch script")
    }
}

/// What a request of `count` items, counted together with others of its
/// key after `before` items of theirs, would have been told alone, from the
/// `verdict` on all of them: GCRA counts one interval an item, so a request
/// counted earlier saw one more left for each item granted after it, and a
/// reset one interval sooner; a request granted whole has no retry advice.
fn share(verdict: &RateVerdict, before: u64, count: u64, limit: &RateLimit) -> RateVerdict {
    let granted = count.min(verdict.granted.saturating_sub(before));
    if granted == 0 {
        return RateVerdict {
            allowed: false,
            granted: 0,
            ..*verdict
        };
    }
    let later = verdict.granted - before - granted;
    RateVerdict {
        allowed: true,
        granted,
        remaining: verdict.remaining + later,
        retry_after: match granted < count {
            true => verdict.retry_after,
            false => Duration::ZERO,
        },
        reset: verdict
            .reset
            .saturating_sub(Duration::from_micros(later * limit.interval_us())),
    }
}

/// claim_batch.lua's answer, one per request: its rate verdict (when it
/// has a limit) and its items' claims.
fn each_request(
    requests: &[ClaimRequest<'_>],
    claims: Vec<(String, String, String, String)>,
    rates: Vec<(u64, u64, u64, u64)>,
) -> Vec<RequestClaims> {
    let mut claims = claims.into_iter();
    requests
        .iter()
        .zip(rates)
        .map(|(request, rate)| RequestClaims {
            rate: request.limit.map(|_| RateVerdict::from_script(rate)),
            claims: claims
                .by_ref()
                .take(request.items.len())
                .map(|(verdict, reason, balance_after, posting)| {
                    parse_claim(&verdict, &reason, &balance_after, &posting)
                })
                .collect(),
        })
        .collect()
}

/// Every item of every request failed with `e`.
fn failed(requests: &[ClaimRequest<'_>], e: &StoreError) -> Vec<RequestClaims> {
    requests
        .iter()
        .map(|request| RequestClaims {
            rate: None,
            claims: request.items.iter().map(|_| Err(e.clone())).collect(),
        })
        .collect()
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

/// claim.lua's answer (`limited`: claim_batch.lua's, past what the rate
/// limit let go).
pub(super) fn parse_claim(
    verdict: &str,
    reason: &str,
    balance_after: &str,
    posting: &str,
) -> Result<Claim, StoreError> {
    Ok(match verdict {
        "claimed" => Claim::Claimed,
        "conflict" => Claim::Conflict,
        "leased" => Claim::InFlight,
        "limited" => Claim::RateLimited,
        state => Claim::Known(parse_status(state, reason, balance_after, posting)?),
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
                let verdict = share(&together, position, 1, &limit);
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
        assert_eq!(share(&together, 0, 1, &limit).retry_after, Duration::ZERO);
        assert_eq!(
            share(&together, 3, 1, &limit).retry_after,
            Duration::from_millis(100)
        );
        assert_eq!(share(&together, 3, 1, &limit).granted, 0);
    }

    /// Requests of several items (a batch) counted together: the first
    /// granted whole, the next in part (with the retry advice), the last
    /// refused; granted items add up to the verdict's.
    #[test]
    fn requests_of_many_items_share_what_was_granted_in_order() {
        let limit = RateLimit {
            rate_per_s: 10,
            burst: 10,
        };
        let together = RateVerdict {
            allowed: true,
            granted: 4,
            remaining: 0,
            retry_after: Duration::from_millis(100),
            reset: Duration::from_millis(1_000),
        };
        let whole = share(&together, 0, 2, &limit);
        assert_eq!((whole.granted, whole.remaining), (2, 2));
        assert_eq!(whole.reset, Duration::from_millis(800));
        assert_eq!(whole.retry_after, Duration::ZERO);
        let part = share(&together, 2, 3, &limit);
        assert_eq!((part.allowed, part.granted, part.remaining), (true, 2, 0));
        assert_eq!(part.retry_after, Duration::from_millis(100));
        let none = share(&together, 5, 1, &limit);
        assert_eq!((none.allowed, none.granted), (false, 0));
    }

    #[test]
    fn claim_answers_parse_or_are_refused() {
        assert_eq!(parse_claim("claimed", "", "", "").unwrap(), Claim::Claimed);
        assert_eq!(
            parse_claim("conflict", "", "", "").unwrap(),
            Claim::Conflict
        );
        assert_eq!(parse_claim("leased", "", "", "").unwrap(), Claim::InFlight);
        assert_eq!(
            parse_claim("limited", "", "", "").unwrap(),
            Claim::RateLimited
        );
        assert_eq!(
            parse_claim("pending", "", "", "").unwrap(),
            Claim::Known(TxStatus::Pending)
        );
        assert_eq!(
            parse_claim("applied", "", "12", "").unwrap(),
            Claim::Known(TxStatus::Settled(Outcome::Applied {
                balance_after: Balance::new(12).unwrap()
            }))
        );
        assert_eq!(
            parse_claim("rejected", "balance_overflow", "", "").unwrap(),
            Claim::Known(TxStatus::Settled(Outcome::rejected(
                RejectReason::BalanceOverflow
            )))
        );
        assert_eq!(
            parse_claim("rejected", "asset_mismatch", "", "2").unwrap(),
            Claim::Known(TxStatus::Settled(Outcome::Rejected {
                reason: RejectReason::AssetMismatch,
                posting: Some(2),
            }))
        );
        assert!(parse_claim("applied", "", "", "").is_err());
        assert!(parse_claim("whatever", "", "", "").is_err());
    }
}
