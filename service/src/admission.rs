//! Admission of one transaction: claim its id, publish it to Kafka, then
//! accept it or release the lease. The rules, in one place:
//!
//! - An id is bound to the first body that claims it for as long as outcomes
//!   are kept, whether or not that publish succeeds (a publish that timed
//!   out may still land in Kafka). Another body is refused (422), always.
//! - The lease only keeps two requests of the same body from publishing at
//!   once (409). A failed publish releases it at once, so the client's retry
//!   of the same body can go ahead; the apply script's processed flag catches
//!   a record that landed twice.
//! - Accepting checks that this request still holds the lease (one script).
//! - The work runs to the end in a task of its own even if the caller goes
//!   away: a request dropped halfway would leave its lease to block retries.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

use crate::backlog::Backlog;
use crate::domain::{Transaction, TxId, TxStatus};
use crate::gather::Gatherer;
use crate::keys::{KeyId, RateLimit};
use crate::publisher::{PublishError, Publisher};
use crate::store::{Acceptance, Claim, LimitedClaim, RateVerdict, Store, StoreError};
use crate::wire::{now_ms, Record};

/// Why a transaction was not admitted. Nothing was published, except for
/// [`Refused::Kafka`] (the record may still land) and
/// [`Refused::BindingLost`] (it did land).
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    #[error("transaction {0} exists with another body; nothing was published")]
    Conflict(TxId),
    #[error("transaction {0} is in flight; retry shortly")]
    InFlight(TxId),
    /// The key is over its rate limit (the caller has the verdict).
    #[error("the API key is over its rate limit")]
    RateLimited,
    #[error("redis is unavailable")]
    Redis(#[source] StoreError),
    #[error("too many transactions are waiting for kafka")]
    QueueFull,
    /// The consumers are too far behind: nothing new is taken until they
    /// catch up (a 202's outcome would go stale).
    #[error("the consumers are {0} records behind; retry shortly")]
    Backlog(u64),
    #[error("kafka did not acknowledge the transaction")]
    Kafka(#[source] rdkafka::error::KafkaError),
    /// Published, but the id was bound to another body meanwhile (its record
    /// expired during the publish); the record is not acknowledged as ours.
    #[error("transaction {0} was bound to another body while it was published")]
    BindingLost(TxId),
    #[error("internal error: {0}")]
    Internal(String),
}

/// A single request's claim as the claim gatherer holds it (owned).
type OwnedClaim = (Transaction, String, Option<(KeyId, RateLimit)>);

/// How many Redis replicas must hold a claim before its record is
/// published (`WAIT`), and how long to wait: a master that fails over after
/// a claim its replica never got would forget the id's binding, and a later
/// request with another body would bind it too and get a 202 as well.
#[derive(Debug, Clone, Copy)]
pub struct ClaimReplication {
    pub replicas: u32,
    pub timeout: Duration,
}

impl ClaimReplication {
    /// No replicas waited for (one Redis without replicas).
    pub const NONE: Self = Self {
        replicas: 0,
        timeout: Duration::ZERO,
    };
}

/// Claims, publishes and accepts transactions.
#[derive(Clone)]
pub struct Admission {
    store: Store,
    replication: ClaimReplication,
    /// Over its bound, nothing new is taken (503).
    backlog: Backlog,
    publisher: Publisher,
    /// Single requests' claims (each with its key's limit), gathered.
    claims: Gatherer<OwnedClaim, (Claim, Option<RateVerdict>)>,
    /// Single requests' accepts, gathered.
    accepts: Gatherer<(Transaction, String), Acceptance>,
    background_releases: Arc<Semaphore>,
    max_background_releases: usize,
}

impl Admission {
    pub fn new(
        store: Store,
        publisher: Publisher,
        replication: ClaimReplication,
        backlog: Backlog,
        max_background_releases: usize,
    ) -> Self {
        let claiming = store.clone();
        let accepting = store.clone();
        Self {
            claims: Gatherer::start("txengine_claims_gathered", move |items: Vec<OwnedClaim>| {
                let store = claiming.clone();
                async move {
                    let items: Vec<LimitedClaim> = items
                        .iter()
                        .map(|(tx, token, limit)| {
                            (tx, token.as_str(), limit.as_ref().map(|(key, l)| (key, *l)))
                        })
                        .collect();
                    let mut answers = store.claim_within_limits(&items).await;
                    let ids: Vec<&TxId> = items.iter().map(|(tx, _, _)| &tx.id).collect();
                    replicate_claims(&store, replication, &ids, &mut answers, |answer| {
                        matches!(answer, (Claim::Claimed, _))
                    })
                    .await;
                    answers
                }
            }),
            accepts: Gatherer::start(
                "txengine_accepts_gathered",
                move |items: Vec<(Transaction, String)>| {
                    let store = accepting.clone();
                    async move {
                        let items: Vec<(&Transaction, &str)> = items
                            .iter()
                            .map(|(tx, token)| (tx, token.as_str()))
                            .collect();
                        store.accept_batch(&items).await
                    }
                },
            ),
            store,
            replication,
            backlog,
            publisher,
            background_releases: Arc::new(Semaphore::new(max_background_releases)),
            max_background_releases,
        }
    }

    /// Admits `tx`, counted against its key's rate `limit` first (if any):
    /// `Pending` once Kafka acknowledged it (202), or where the same body
    /// accepted before stands now; with what the limit said, if it was asked.
    pub async fn admit(
        &self,
        tx: Transaction,
        limit: Option<(KeyId, RateLimit)>,
    ) -> (Result<TxStatus, Refused>, Option<RateVerdict>) {
        let admission = self.clone();
        tokio::spawn(async move { admission.run(tx, limit).await })
            .await
            .unwrap_or_else(|e| (Err(Refused::Internal(e.to_string())), None))
    }

    /// Admits the transactions of a batch (an id given twice only with
    /// different bodies: claimed in order, the later one a conflict), each
    /// as [`Admission::admit`] admits one and counted against the key's
    /// rate `limit` as one request: the first ones the limit lets go are
    /// claimed (one script call per slot), published together and
    /// accepted (one call per slot); one answer per item, in order.
    pub async fn admit_batch(
        &self,
        txs: Vec<Transaction>,
        limit: Option<(KeyId, RateLimit)>,
    ) -> (Vec<Result<TxStatus, Refused>>, Option<RateVerdict>) {
        if txs.is_empty() {
            // Nothing to count or claim: no write at all.
            return (Vec::new(), None);
        }
        let admission = self.clone();
        let count = txs.len();
        tokio::spawn(async move { admission.run_batch(txs, limit).await })
            .await
            .unwrap_or_else(|e| {
                let answers = (0..count)
                    .map(|_| Err(Refused::Internal(e.to_string())))
                    .collect();
                (answers, None)
            })
    }

    async fn run_batch(
        &self,
        txs: Vec<Transaction>,
        limit: Option<(KeyId, RateLimit)>,
    ) -> (Vec<Result<TxStatus, Refused>>, Option<RateVerdict>) {
        if let Some(Refused::Backlog(records)) = self.shed(txs.len()) {
            return (
                txs.iter().map(|_| Err(Refused::Backlog(records))).collect(),
                None,
            );
        }
        let mut granted = txs.len();
        let mut rate = None;
        if let Some((key, limit)) = &limit {
            match self.store.spend_many(key, *limit, txs.len() as u64).await {
                Ok(verdict) => {
                    granted = (verdict.granted as usize).min(txs.len());
                    rate = Some(verdict);
                }
                Err(e) => return (unavailable(&e, txs.len()), None),
            }
        }
        let mut txs = txs;
        let limited = txs.split_off(granted);
        let mut answers: Vec<Option<Result<TxStatus, Refused>>> = Vec::new();
        let mut claimed = Vec::new();
        let mut claimed_at = Vec::new();
        let mut unknown = Vec::new();
        for (index, (tx, token, claim)) in self.claim_each(txs).await.into_iter().enumerate() {
            answers.push(match claim {
                Ok(Claim::Claimed) => {
                    claimed.push((tx, token));
                    claimed_at.push(index);
                    None
                }
                Ok(Claim::Conflict) => Some(Err(Refused::Conflict(tx.id))),
                Ok(Claim::InFlight) => Some(Err(Refused::InFlight(tx.id))),
                Ok(Claim::RateLimited) => Some(Err(Refused::RateLimited)),
                Ok(Claim::Known(status)) => Some(Ok(status)),
                Err(e) => {
                    // The claim may still land once a stalled Redis wakes up.
                    unknown.push((tx.id, token));
                    Some(Err(Refused::Redis(e)))
                }
            });
        }
        if !unknown.is_empty() {
            self.release_in_background(unknown);
        }
        for (index, answer) in claimed_at
            .into_iter()
            .zip(self.publish_and_accept(claimed).await)
        {
            answers[index] = Some(answer);
        }
        let mut answers: Vec<_> = answers
            .into_iter()
            .map(|answer| answer.expect("every item answered"))
            .collect();
        answers.extend(limited.iter().map(|_| Err(Refused::RateLimited)));
        (answers, rate)
    }

    /// Claims each of `txs` under a lease token of its own (one call per
    /// slot), the claims made on the replicas before this answers: each
    /// transaction with its token and what its claim found.
    async fn claim_each(
        &self,
        txs: Vec<Transaction>,
    ) -> Vec<(Transaction, String, Result<Claim, StoreError>)> {
        let tokens: Vec<String> = txs.iter().map(|_| Store::lease_token()).collect();
        let items: Vec<(&Transaction, &str)> = txs
            .iter()
            .zip(&tokens)
            .map(|(tx, token)| (tx, token.as_str()))
            .collect();
        let mut claims = self.store.claim_batch(&items).await;
        drop(items);
        let ids: Vec<&TxId> = txs.iter().map(|tx| &tx.id).collect();
        replicate_claims(&self.store, self.replication, &ids, &mut claims, |claim| {
            *claim == Claim::Claimed
        })
        .await;
        drop(ids);
        txs.into_iter()
            .zip(tokens)
            .zip(claims)
            .map(|((tx, token), claim)| (tx, token, claim))
            .collect()
    }

    /// [`Refused::Backlog`] while the consumers are over the backlog bound
    /// (before the rate limit or any claim: nothing is written), counting
    /// the `items` shed.
    fn shed(&self, items: usize) -> Option<Refused> {
        if !self.backlog.is_over() {
            return None;
        }
        metrics::counter!("txengine_shed_total").increment(items as u64);
        Some(Refused::Backlog(self.backlog.records().unwrap_or_default()))
    }

    /// Releases retried in the background right now.
    pub fn background_releases(&self) -> usize {
        self.max_background_releases - self.background_releases.available_permits()
    }

    async fn run(
        &self,
        tx: Transaction,
        limit: Option<(KeyId, RateLimit)>,
    ) -> (Result<TxStatus, Refused>, Option<RateVerdict>) {
        if let Some(refused) = self.shed(1) {
            return (Err(refused), None);
        }
        let token = Store::lease_token();
        // Claimed with the claims of other requests waiting now (one call).
        let claimed = self.claims.run((tx.clone(), token.clone(), limit)).await;
        let (claim, rate) = match claimed {
            Ok(answer) => answer,
            Err(e) => {
                // The claim may still land once a stalled Redis wakes up; end
                // its lease, or the client's retry meets 409 until it runs out.
                self.release_in_background(vec![(tx.id, token)]);
                return (Err(Refused::Redis(e)), None);
            }
        };
        let refused = match claim {
            Claim::Claimed => {
                let mut answers = self.publish_and_accept(vec![(tx, token)]).await;
                return (answers.pop().expect("one answer"), rate);
            }
            Claim::Conflict => Refused::Conflict(tx.id),
            Claim::InFlight => Refused::InFlight(tx.id),
            Claim::RateLimited => Refused::RateLimited,
            Claim::Known(status) => return (Ok(status), rate),
        };
        (Err(refused), rate)
    }

    /// Publishes claimed transactions (each under its lease token)
    /// together and accepts those Kafka acknowledged, in one script call
    /// per slot: one answer per item, in order.
    async fn publish_and_accept(
        &self,
        claimed: Vec<(Transaction, String)>,
    ) -> Vec<Result<TxStatus, Refused>> {
        let accepted_at_ms = now_ms();
        let (records, tokens): (Vec<Record>, Vec<String>) = claimed
            .into_iter()
            .map(|(tx, token)| {
                let record = Record {
                    tx,
                    accepted_at_ms,
                    saga: None,
                };
                (record, token)
            })
            .unzip();
        let published = self.publisher.publish_batch(&records).await;
        let mut answers: Vec<Option<Result<TxStatus, Refused>>> = Vec::new();
        let mut failed = Vec::new();
        for (index, outcome) in published.into_iter().enumerate() {
            answers.push(match outcome {
                Ok(()) => None,
                Err(e) => {
                    failed.push(index);
                    metrics::counter!("txengine_publish_refused_total").increment(1);
                    Some(Err(match e {
                        PublishError::QueueFull => Refused::QueueFull,
                        PublishError::Kafka(e) => Refused::Kafka(e),
                    }))
                }
            });
        }
        // The binding stays (a record may still land); only the lease ends,
        // so the retry of this same body is not a 409.
        let releases = failed.iter().map(|&index| {
            let (id, token) = (&records[index].tx.id, &tokens[index]);
            async move {
                if let Err(e) = self.store.release(id, token).await {
                    tracing::warn!(error = %e, %id, "could not release a lease; it runs out by itself");
                }
            }
        });
        futures_util::future::join_all(releases).await;

        let delivered: Vec<usize> = (0..records.len())
            .filter(|&index| answers[index].is_none())
            .collect();
        let to_accept: Vec<(&Transaction, &str)> = delivered
            .iter()
            .map(|&index| (&records[index].tx, tokens[index].as_str()))
            .collect();
        for (&index, answer) in delivered.iter().zip(self.accept(&to_accept).await) {
            answers[index] = Some(answer);
        }
        answers
            .into_iter()
            .map(|answer| answer.expect("every item answered"))
            .collect()
    }

    /// Marks published transactions accepted (each under its lease token):
    /// one answer each, in order. One request's accept joins those of other
    /// requests (one call); a batch's are one call already.
    async fn accept(&self, published: &[(&Transaction, &str)]) -> Vec<Result<TxStatus, Refused>> {
        let acceptances = match published {
            [(tx, token)] => vec![self.accepts.run(((*tx).clone(), (*token).to_owned())).await],
            _ => self.store.accept_batch(published).await,
        };
        published
            .iter()
            .zip(acceptances)
            .map(|((tx, _), acceptance)| {
                let id = &tx.id;
                match acceptance {
                    Ok(Acceptance::Accepted) => Ok(TxStatus::Pending),
                    Ok(Acceptance::NotOwner) => {
                        // The lease ran out during the publish and another request
                        // of the same body holds it; the record is the bound body.
                        tracing::info!(%id, "accepted after the lease ran out; another request holds it");
                        Ok(TxStatus::Pending)
                    }
                    Ok(Acceptance::Conflict) => {
                        tracing::error!(%id, "the id was bound to another body during the publish");
                        Err(Refused::BindingLost(id.clone()))
                    }
                    Err(e) => {
                        // Kafka has the record, so it will be applied: still a 202.
                        // Until a consumer settles it, GET answers 404.
                        tracing::warn!(error = %e, %id, "accepted but could not mark it");
                        Ok(TxStatus::Pending)
                    }
                }
            })
            .collect()
    }

    /// Ends the leases of claims whose fate is unknown (one request's, or a
    /// batch's), retrying while Redis does not answer, for as long as a
    /// lease would have lasted; a bounded number of requests at once.
    fn release_in_background(&self, leases: Vec<(TxId, String)>) {
        let Ok(permit) = self.background_releases.clone().try_acquire_owned() else {
            metrics::counter!("txengine_release_skipped_total").increment(leases.len() as u64);
            tracing::warn!(
                leases = leases.len(),
                "too many releases in the background; these leases run out by themselves"
            );
            return;
        };
        let store = self.store.clone();
        tokio::spawn(async move {
            let give_up = Instant::now() + store.lease();
            for (id, token) in &leases {
                // Past the lease's end every lease left has run out.
                if Instant::now() > give_up {
                    break;
                }
                let mut pause = Duration::from_millis(100);
                while let Err(e) = store.release(id, token).await {
                    if Instant::now() + pause > give_up {
                        tracing::warn!(error = %e, %id, "could not release a lease; it runs out by itself");
                        break;
                    }
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(2));
                }
            }
            drop(permit);
        });
    }
}

/// Waits until the replicas hold the claims just made (those of `ids` whose
/// answer is one, by `claimed`); if they do not in time, each such claim
/// becomes the error, so it is released and answered 503, never published.
async fn replicate_claims<T>(
    store: &Store,
    replication: ClaimReplication,
    ids: &[&TxId],
    answers: &mut [Result<T, StoreError>],
    claimed: impl Fn(&T) -> bool,
) {
    let made: Vec<&TxId> = ids
        .iter()
        .zip(answers.iter())
        .filter(|(_, answer)| answer.as_ref().is_ok_and(&claimed))
        .map(|(id, _)| *id)
        .collect();
    if made.is_empty() || replication.replicas == 0 {
        return;
    }
    let Err(e) = store
        .replicated(made, replication.replicas, replication.timeout)
        .await
    else {
        return;
    };
    metrics::counter!("txengine_claim_replica_wait_short_total").increment(1);
    tracing::warn!(error = %e, "claims not on the replicas in time; not published");
    for answer in answers.iter_mut() {
        if answer.as_ref().is_ok_and(&claimed) {
            *answer = Err(e.clone());
        }
    }
}

/// `count` answers of Redis being unavailable.
fn unavailable(e: &StoreError, count: usize) -> Vec<Result<TxStatus, Refused>> {
    (0..count).map(|_| Err(Refused::Redis(e.clone()))).collect()
}
