//! Admission: the one path every money request takes, a single request
//! being a batch of one. A handler decodes the request and hands its items
//! and the API key here; each item then goes through, in order:
//!
//! - [`request`]: completed into a transaction (a hold's timeout under this
//!   server's limits; a capture's or void's hold terms, read at once);
//! - policy: the key's scope, then the backlog bound (nothing is taken while
//!   the consumers are too far behind), then the key's rate limit, counted
//!   with the claim;
//! - [`claim`]: claimed, the claims of concurrent requests gathered into one
//!   call, made on the replicas before anything is published;
//! - [`publish`]: published to Kafka together, then accepted.
//!
//! One answer per item comes back, and what the rate limit said. The rules
//! of an id, in one place:
//!
//! - An id is bound to the first body that claims it for as long as outcomes
//!   are kept, whether or not that publish succeeds (a publish that timed
//!   out may still land in Kafka). Another body is refused (422), always.
//! - The lease only keeps two requests of the same body from publishing at
//!   once (409). A failed publish releases it at once, so the client's retry
//!   of the same body can go ahead; the apply script's processed flag catches
//!   a record that landed twice.
//! - Accepting checks that this request still holds the lease (one script).
//! - The same id and body twice in one request is one transaction, answered
//!   twice; another body under an id is claimed after it in the same call,
//!   so each copy is answered as it would be sent right after those before.
//! - The work runs to the end in a task of its own even if the caller goes
//!   away: a request dropped halfway would leave its lease to block retries.

mod claim;
mod publish;
mod request;

pub use claim::ClaimReplication;
pub use request::{HoldTimeouts, Posted};

use std::collections::HashMap;
use std::sync::Arc;

use crate::backlog::Backlog;
use crate::domain::{AccountId, HoldTerms, RuleError, Transaction, TxId, TxStatus};
use crate::keys::{ApiKey, KeyId, RateLimit};
use crate::publisher::Publisher;
use crate::store::{Claim, RateVerdict, Store, StoreError};

/// Why an item was not admitted. Nothing was published, except for
/// [`Refused::Kafka`] (the record may still land) and
/// [`Refused::BindingLost`] (it did land).
#[derive(Debug, Clone, thiserror::Error)]
pub enum Refused {
    /// Not a transaction: a rule is broken (nothing was done).
    #[error("{0}")]
    Invalid(RuleError),
    /// The key's scope does not match the account (nothing was done).
    #[error("API key {key} may not touch account {account}")]
    Forbidden { key: KeyId, account: AccountId },
    /// The hold a capture or void ends could not be read (nothing was done).
    #[error("the hold could not be read: {}", .0.summary())]
    HoldUnreadable(StoreError),
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

impl Refused {
    /// Whether the answer names the transaction's id for the retry: not
    /// when the request could not be completed (invalid, out of the key's
    /// scope, its hold unreadable), so nothing of it was claimed.
    pub fn names_the_id(&self) -> bool {
        !matches!(
            self,
            Self::Invalid(_) | Self::Forbidden { .. } | Self::HoldUnreadable(_)
        )
    }
}

/// One item's answer: where it stands (`Pending` once Kafka acknowledged it,
/// or where the same body accepted before stands now), or why it was refused.
pub type Answer = Result<TxStatus, Refused>;

/// What admission said about a request.
#[derive(Debug)]
pub struct Admitted {
    /// One per item, in the request's order.
    pub answers: Vec<Answer>,
    /// The key's limit and what it said (`None`: the key has no limit, or
    /// nothing was counted).
    pub quota: Option<(RateLimit, RateVerdict)>,
}

/// How admission runs on this server.
#[derive(Debug, Clone, Copy)]
pub struct AdmissionSettings {
    pub replication: ClaimReplication,
    pub hold_timeouts: HoldTimeouts,
    /// False with `--rate-limit off`: no key's limit is counted.
    pub enforce_rate_limits: bool,
    /// Most releases retried in the background at once.
    pub max_background_releases: usize,
}

/// Completes, checks, claims, publishes and accepts the items of requests.
#[derive(Clone)]
pub struct Admission {
    store: Store,
    settings: AdmissionSettings,
    /// Over its bound, nothing new is taken (503).
    backlog: Backlog,
    claims: claim::Claims,
    publish: publish::Publish,
}

impl Admission {
    pub fn new(
        store: Store,
        publisher: Publisher,
        backlog: Backlog,
        settings: AdmissionSettings,
    ) -> Self {
        Self {
            claims: claim::Claims::new(&store, settings),
            publish: publish::Publish::new(&store, publisher),
            store,
            settings,
            backlog,
        }
    }

    /// The rate limit counted for `key`'s requests, if any: its own, unless
    /// the server does not enforce limits. Reads are counted by it too.
    pub fn limit_of(&self, key: &ApiKey) -> Option<RateLimit> {
        key.limit.filter(|_| self.settings.enforce_rate_limits)
    }

    /// Admits the items of one request sent with `key`, counted against the
    /// key's rate limit as one request of as many items as it has distinct
    /// transactions: one answer per item, in order.
    pub async fn admit(&self, key: Arc<ApiKey>, items: Vec<Posted>) -> Admitted {
        let admission = self.clone();
        let count = items.len();
        tokio::spawn(async move { admission.run(&key, items).await })
            .await
            .unwrap_or_else(|e| Admitted {
                answers: (0..count)
                    .map(|_| Err(Refused::Internal(e.to_string())))
                    .collect(),
                quota: None,
            })
    }

    /// Releases retried in the background right now.
    pub fn background_releases(&self) -> usize {
        self.claims.background_releases()
    }

    async fn run(&self, key: &ApiKey, items: Vec<Posted>) -> Admitted {
        let checked = self.complete(key, items).await;
        let (places, distinct) = distinct(checked);
        let limit = self.limit_of(key);
        let (answers, verdict) = self.take(&key.id, limit, distinct).await;
        let answers = places
            .into_iter()
            .map(|place| place.and_then(|n| answers[n].clone()))
            .collect();
        Admitted {
            answers,
            quota: limit.zip(verdict),
        }
    }

    /// Each item made a transaction `key` may send: completed (the terms of
    /// the holds that captures and voids end read at once) and in scope.
    async fn complete(
        &self,
        key: &ApiKey,
        items: Vec<Posted>,
    ) -> Vec<Result<Transaction, Refused>> {
        let holds: Vec<TxId> = items
            .iter()
            .filter_map(|item| item.ended_hold().cloned())
            .collect();
        let mut terms: Result<std::vec::IntoIter<Option<HoldTerms>>, StoreError> =
            match holds.is_empty() {
                true => Ok(Vec::new().into_iter()),
                false => self.store.hold_terms(&holds).await.map(Vec::into_iter),
            };
        items
            .into_iter()
            .map(|item| {
                let terms = match (item.ended_hold(), &mut terms) {
                    (None, _) => None,
                    (Some(_), Ok(found)) => found.next().flatten(),
                    (Some(_), Err(e)) => return Err(Refused::HoldUnreadable(e.clone())),
                };
                let tx = item
                    .complete(self.settings.hold_timeouts, terms)
                    .and_then(|tx| request::hidden_hold(key, tx))
                    .map_err(Refused::Invalid)?;
                if let Some(account) = key.scope.refuses(&tx.movement) {
                    return Err(Refused::Forbidden {
                        key: key.id.clone(),
                        account: account.clone(),
                    });
                }
                Ok(tx)
            })
            .collect()
    }

    /// Takes a request's distinct transactions: shed while the backlog is
    /// over its bound (nothing written), else counted against `limit` and
    /// claimed (one gathered call), then those claimed published and
    /// accepted. One answer each, in order, and what the limit said.
    async fn take(
        &self,
        key: &KeyId,
        limit: Option<RateLimit>,
        txs: Vec<Transaction>,
    ) -> (Vec<Answer>, Option<RateVerdict>) {
        if txs.is_empty() {
            // Nothing to count or claim: no write at all.
            return (Vec::new(), None);
        }
        if let Some(refused) = self.shed(txs.len()) {
            return (txs.iter().map(|_| Err(refused.clone())).collect(), None);
        }
        let claimed = self
            .claims
            .claim(limit.map(|l| (key.clone(), l)), txs)
            .await;
        let limited = claimed
            .rate
            .map_or(0, |rate| claimed.items.len() - rate.granted as usize);
        if limited > 0 {
            metrics::counter!("txengine_rate_limited_total", "key" => key.as_str().to_owned())
                .increment(limited as u64);
        }
        let mut answers: Vec<Option<Answer>> = Vec::with_capacity(claimed.items.len());
        let mut to_publish = Vec::new();
        let mut publish_at = Vec::new();
        for (index, ((tx, token), claim)) in claimed.items.iter().zip(claimed.claims).enumerate() {
            answers.push(match claim {
                Ok(Claim::Claimed) => {
                    to_publish.push((tx.clone(), token.clone()));
                    publish_at.push(index);
                    None
                }
                Ok(Claim::Conflict) => Some(Err(Refused::Conflict(tx.id.clone()))),
                Ok(Claim::InFlight) => Some(Err(Refused::InFlight(tx.id.clone()))),
                Ok(Claim::RateLimited) => Some(Err(Refused::RateLimited)),
                Ok(Claim::Known(status)) => Some(Ok(status)),
                Err(e) => Some(Err(Refused::Redis(e))),
            });
        }
        for (index, answer) in publish_at
            .into_iter()
            .zip(self.publish.publish_and_accept(to_publish).await)
        {
            answers[index] = Some(answer);
        }
        let answers = answers
            .into_iter()
            .map(|answer| answer.expect("every item answered"))
            .collect();
        (answers, claimed.rate)
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
}

/// Where each item's answer comes from (its refusal, or the place of its
/// transaction among the distinct ones), and the distinct transactions: the
/// same id and body twice is one, answered twice; another body under an id
/// already seen is one more, after it.
fn distinct(
    checked: Vec<Result<Transaction, Refused>>,
) -> (Vec<Result<usize, Refused>>, Vec<Transaction>) {
    let mut places = Vec::with_capacity(checked.len());
    let mut txs: Vec<Transaction> = Vec::new();
    let mut seen: HashMap<(TxId, String), usize> = HashMap::new();
    for item in checked {
        places.push(item.map(|tx| {
            let same = (tx.id.clone(), tx.fingerprint());
            *seen.entry(same).or_insert_with(|| {
                txs.push(tx);
                txs.len() - 1
            })
        }));
    }
    (places, txs)
}
