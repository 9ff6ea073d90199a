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

use crate::domain::{Transaction, TxId, TxStatus};
use crate::keys::{KeyId, RateLimit};
use crate::publisher::{PublishError, Publisher};
use crate::store::{Acceptance, Claim, RateVerdict, Store, StoreError};
use crate::wire::{now_ms, Record};

pub use crate::limits::MAX_BACKGROUND_RELEASES;

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
    #[error("kafka did not acknowledge the transaction")]
    Kafka(#[source] rdkafka::error::KafkaError),
    /// Published, but the id was bound to another body meanwhile (its record
    /// expired during the publish); the record is not acknowledged as ours.
    #[error("transaction {0} was bound to another body while it was published")]
    BindingLost(TxId),
    #[error("internal error: {0}")]
    Internal(String),
}

/// Claims, publishes and accepts transactions.
#[derive(Clone)]
pub struct Admission {
    store: Store,
    publisher: Publisher,
    background_releases: Arc<Semaphore>,
    max_background_releases: usize,
}

impl Admission {
    pub fn new(store: Store, publisher: Publisher, max_background_releases: usize) -> Self {
        Self {
            store,
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

    /// Releases retried in the background right now.
    pub fn background_releases(&self) -> usize {
        self.max_background_releases - self.background_releases.available_permits()
    }

    async fn run(
        &self,
        tx: Transaction,
        limit: Option<(KeyId, RateLimit)>,
    ) -> (Result<TxStatus, Refused>, Option<RateVerdict>) {
        let token = Store::lease_token();
        let limit = limit.as_ref().map(|(key, limit)| (key, *limit));
        let (claim, rate) = match self.store.claim_within_limit(&tx, &token, limit).await {
            Ok(answer) => answer,
            Err(e) => {
                // The claim may still land once a stalled Redis wakes up; end
                // its lease, or the client's retry meets 409 until it runs out.
                self.release_in_background(tx.id, token);
                return (Err(Refused::Redis(e)), None);
            }
        };
        let refused = match claim {
            Claim::Claimed => return (self.publish_and_accept(tx, token).await, rate),
            Claim::Conflict => Refused::Conflict(tx.id),
            Claim::InFlight => Refused::InFlight(tx.id),
            Claim::RateLimited => Refused::RateLimited,
            Claim::Known(status) => return (Ok(status), rate),
        };
        (Err(refused), rate)
    }

    /// Publishes a claimed transaction and accepts it.
    async fn publish_and_accept(
        &self,
        tx: Transaction,
        token: String,
    ) -> Result<TxStatus, Refused> {
        let record = Record {
            tx,
            accepted_at_ms: now_ms(),
            saga: None,
        };
        if let Err(e) = self.publisher.publish(&record).await {
            // The binding stays (the record may still land); only the lease
            // ends, so the retry of this same body is not a 409.
            if let Err(release_error) = self.store.release(&record.tx.id, &token).await {
                tracing::warn!(error = %release_error, id = %record.tx.id, "could not release a lease; it runs out by itself");
            }
            metrics::counter!("txengine_publish_refused_total").increment(1);
            return Err(match e {
                PublishError::QueueFull => Refused::QueueFull,
                PublishError::Kafka(e) => Refused::Kafka(e),
            });
        }
        let id = &record.tx.id;
        match self.store.accept(&record.tx, &token).await {
            Ok(Acceptance::Accepted) => {}
            Ok(Acceptance::NotOwner) => {
                // The lease ran out during the publish and another request
                // of the same body holds it; the record is the bound body.
                tracing::info!(%id, "accepted after the lease ran out; another request holds it");
            }
            Ok(Acceptance::Conflict) => {
                tracing::error!(%id, "the id was bound to another body during the publish");
                return Err(Refused::BindingLost(record.tx.id));
            }
            Err(e) => {
                // Kafka has the record, so it will be applied: still a 202.
                // Until a consumer settles it, GET answers 404.
                tracing::warn!(error = %e, %id, "accepted but could not mark it");
            }
        }
        Ok(TxStatus::Pending)
    }

    /// Ends a lease whose claim's fate is unknown, retrying while Redis does
    /// not answer, for as long as the lease would have lasted; a bounded
    /// number at once.
    fn release_in_background(&self, id: TxId, token: String) {
        let Ok(permit) = self.background_releases.clone().try_acquire_owned() else {
            metrics::counter!("txengine_release_skipped_total").increment(1);
            tracing::warn!(%id, "too many releases in the background; this lease runs out by itself");
            return;
        };
        let store = self.store.clone();
        tokio::spawn(async move {
            let give_up = Instant::now() + store.lease();
            let mut pause = Duration::from_millis(100);
            while let Err(e) = store.release(&id, &token).await {
                if Instant::now() + pause > give_up {
                    tracing::warn!(error = %e, %id, "could not release a lease; it runs out by itself");
                    break;
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(2));
            }
            drop(permit);
        });
    }
}
