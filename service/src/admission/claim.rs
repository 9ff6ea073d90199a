//! The claim step: a request's transactions counted against its key's rate
//! limit and claimed, each under a lease token of its own, with the claims
//! of the other requests waiting at that moment (one script call on one
//! Redis), and made on the replicas before anything is published. A claim
//! whose fate is unknown (Redis did not answer) has its lease released in
//! the background, or the client's retry would meet 409 until it ran out.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

use super::AdmissionSettings;
use crate::domain::{Transaction, TxId};
use crate::gather::Gatherer;
use crate::keys::{KeyId, RateLimit};
use crate::store::{Claim, ClaimRequest, RateVerdict, RequestClaims, Store, StoreError};

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

/// A request's transactions, each with its lease token.
type Items = Arc<[(Transaction, String)]>;

/// One request's claims as the gatherer holds them: its key's limit, if
/// counted, and its transactions.
type Work = (Option<(KeyId, RateLimit)>, Items);

/// A request's transactions, each with its lease token and what its claim
/// found (after an error the claim may still have been made: its release is
/// under way), and what the key's limit said.
pub(super) struct Claimed {
    pub items: Items,
    pub claims: Vec<Result<Claim, StoreError>>,
    pub rate: Option<RateVerdict>,
}

/// Claims requests' transactions, gathered.
#[derive(Clone)]
pub(super) struct Claims {
    store: Store,
    gathered: Gatherer<Work, RequestClaims>,
    background_releases: Arc<Semaphore>,
    max_background_releases: usize,
}

impl Claims {
    pub(super) fn new(store: &Store, settings: AdmissionSettings) -> Self {
        let claiming = store.clone();
        let replication = settings.replication;
        let size: fn(&Work) -> usize = |(_, items)| items.len();
        Self {
            gathered: Gatherer::start("txengine_claims_gathered", size, move |works: Vec<Work>| {
                let store = claiming.clone();
                async move {
                    let requests: Vec<ClaimRequest> = works
                        .iter()
                        .map(|(limit, items)| ClaimRequest {
                            limit: limit.as_ref().map(|(key, limit)| (key, *limit)),
                            items: &items[..],
                        })
                        .collect();
                    let mut answers = store.claim_requests(&requests).await;
                    replicate_claims(&store, replication, &works, &mut answers).await;
                    answers.into_iter().map(Ok).collect()
                }
            }),
            store: store.clone(),
            background_releases: Arc::new(Semaphore::new(settings.max_background_releases)),
            max_background_releases: settings.max_background_releases,
        }
    }

    /// Claims `txs` (in order, each under a fresh lease token), counted
    /// against `limit` first when given.
    pub(super) async fn claim(
        &self,
        limit: Option<(KeyId, RateLimit)>,
        txs: Vec<Transaction>,
    ) -> Claimed {
        let items: Items = txs
            .into_iter()
            .map(|tx| (tx, Store::lease_token()))
            .collect();
        let claimed = match self.gathered.run((limit, items.clone())).await {
            Ok(answer) => Claimed {
                items,
                claims: answer.claims,
                rate: answer.rate,
            },
            // The gathered call stopped: every claim's fate is unknown.
            Err(e) => Claimed {
                claims: items.iter().map(|_| Err(e.clone())).collect(),
                items,
                rate: None,
            },
        };
        let unknown: Vec<(TxId, String)> = claimed
            .items
            .iter()
            .zip(&claimed.claims)
            .filter(|(_, claim)| claim.is_err())
            .map(|((tx, token), _)| (tx.id.clone(), token.clone()))
            .collect();
        if !unknown.is_empty() {
            self.release_in_background(unknown);
        }
        claimed
    }

    /// Releases retried in the background right now.
    pub(super) fn background_releases(&self) -> usize {
        self.max_background_releases - self.background_releases.available_permits()
    }

    /// Ends the leases of claims whose fate is unknown (one request's),
    /// retrying while Redis does not answer, for as long as a lease would
    /// have lasted; a bounded number of requests at once.
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

/// Waits until the replicas hold the claims just made; if they do not in
/// time, each such claim becomes the error, so it is released and answered
/// 503, never published.
async fn replicate_claims(
    store: &Store,
    replication: ClaimReplication,
    works: &[Work],
    answers: &mut [RequestClaims],
) {
    let made = |claim: &Result<Claim, StoreError>| matches!(claim, Ok(Claim::Claimed));
    let ids: Vec<&TxId> = works
        .iter()
        .zip(answers.iter())
        .flat_map(|((_, items), answer)| items.iter().zip(&answer.claims))
        .filter(|(_, claim)| made(claim))
        .map(|((tx, _), _)| &tx.id)
        .collect();
    if ids.is_empty() || replication.replicas == 0 {
        return;
    }
    let Err(e) = store
        .replicated(ids, replication.replicas, replication.timeout)
        .await
    else {
        return;
    };
    metrics::counter!("txengine_claim_replica_wait_short_total").increment(1);
    tracing::warn!(error = %e, "claims not on the replicas in time; not published");
    for claim in answers
        .iter_mut()
        .flat_map(|answer| answer.claims.iter_mut())
    {
        if made(claim) {
            *claim = Err(e.clone());
        }
    }
}
