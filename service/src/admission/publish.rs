//! The publish step: a request's claimed transactions published to Kafka
//! together (202 only once the broker has each, `acks=all`), then those it
//! acknowledged accepted, with the accepts of the other requests waiting at
//! that moment (one script call per slot). A publish that failed releases
//! its lease at once; its binding stays (the record may still land).

use super::{Answer, Refused};
use crate::domain::{Transaction, TxId, TxStatus};
use crate::gather::Gatherer;
use crate::publisher::{PublishError, Publisher};
use crate::store::{Acceptance, Store, StoreError};
use crate::wire::{now_ms, Record};

/// One request's published transactions, each with its lease token.
type Work = Vec<(Transaction, String)>;

/// Publishes and accepts requests' claimed transactions.
#[derive(Clone)]
pub(super) struct Publish {
    store: Store,
    publisher: Publisher,
    accepts: Gatherer<Work, Vec<Result<Acceptance, StoreError>>>,
}

impl Publish {
    pub(super) fn new(store: &Store, publisher: Publisher) -> Self {
        let accepting = store.clone();
        let size: fn(&Work) -> usize = Vec::len;
        Self {
            accepts: Gatherer::start(
                "txengine_accepts_gathered",
                size,
                move |works: Vec<Work>| {
                    let store = accepting.clone();
                    async move {
                        let items: Vec<(&Transaction, &str)> = works
                            .iter()
                            .flatten()
                            .map(|(tx, token)| (tx, token.as_str()))
                            .collect();
                        let mut acceptances = store.accept_batch(&items).await.into_iter();
                        works
                            .iter()
                            .map(|work| Ok(acceptances.by_ref().take(work.len()).collect()))
                            .collect()
                    }
                },
            ),
            store: store.clone(),
            publisher,
        }
    }

    /// Publishes claimed transactions (each under its lease token)
    /// together and accepts those Kafka acknowledged: one answer per item,
    /// in order.
    pub(super) async fn publish_and_accept(
        &self,
        claimed: Vec<(Transaction, String)>,
    ) -> Vec<Answer> {
        if claimed.is_empty() {
            return Vec::new();
        }
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
        let mut answers: Vec<Option<Answer>> = Vec::with_capacity(records.len());
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
        let failed_leases = failed
            .iter()
            .map(|&index| (&records[index].tx.id, &tokens[index]));
        self.release(failed_leases).await;

        // The ones Kafka acknowledged, by their place.
        let (delivered, to_accept): (Vec<(usize, TxId)>, Work) = records
            .into_iter()
            .zip(tokens)
            .enumerate()
            .filter(|(index, _)| answers[*index].is_none())
            .map(|(index, (record, token))| ((index, record.tx.id.clone()), (record.tx, token)))
            .unzip();
        let acceptances = match to_accept.is_empty() {
            true => Vec::new(),
            false => self
                .accepts
                .run(to_accept)
                .await
                .unwrap_or_else(|e| delivered.iter().map(|_| Err(e.clone())).collect()),
        };
        for ((index, id), acceptance) in delivered.iter().zip(acceptances) {
            answers[*index] = Some(accepted(id, acceptance));
        }
        answers
            .into_iter()
            .map(|answer| answer.expect("every item answered"))
            .collect()
    }
}

impl Publish {
    /// Ends the leases of publishes that failed. The binding stays (a record
    /// may still land); only the lease ends, so the retry of this same body
    /// is not a 409.
    async fn release(&self, leases: impl Iterator<Item = (&TxId, &String)>) {
        let releases = leases.map(|(id, token)| async move {
            if let Err(e) = self.store.release(id, token).await {
                tracing::warn!(error = %e, %id, "could not release a lease; it runs out by itself");
            }
        });
        futures_util::future::join_all(releases).await;
    }
}

/// The answer of a published transaction, from what its accept found.
fn accepted(id: &TxId, acceptance: Result<Acceptance, StoreError>) -> Answer {
    match acceptance {
        Ok(Acceptance::Accepted) => Ok(TxStatus::Pending),
        Ok(Acceptance::NotOwner) => {
            // The lease ran out during the publish and another request of
            // the same body holds it; the record is the bound body.
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
}
