//! Accepts of concurrent single requests, gathered into one script call.
//! Each request hands its accept to one gatherer task, which takes every
//! accept waiting at that moment (no timer: it never waits for more) into
//! one `accept_batch` call per slot, at most [`MAX_GATHERED_ACCEPTS`] of
//! them, with at most [`MAX_ACCEPT_CALLS_IN_FLIGHT`] calls at once. Alone,
//! an accept goes at once, by itself; under load the accepts that come
//! while calls are in flight go together in the next one. Each accept is
//! checked and written exactly as alone (accept.lua, per id).

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::domain::Transaction;
use crate::store::{Acceptance, Store, StoreError};

pub use crate::limits::{MAX_ACCEPT_CALLS_IN_FLIGHT, MAX_GATHERED_ACCEPTS};

struct Waiting {
    tx: Transaction,
    token: String,
    answer: oneshot::Sender<Result<Acceptance, StoreError>>,
}

/// Hands accepts to the gatherer task; cheap to clone.
#[derive(Clone)]
pub struct AcceptGatherer {
    waiting: mpsc::UnboundedSender<Waiting>,
}

impl AcceptGatherer {
    /// Starts the gatherer task on the current tokio runtime; it ends once
    /// every handle is dropped.
    pub fn start(store: Store) -> Self {
        let (waiting, mut queue) = mpsc::unbounded_channel::<Waiting>();
        let calls = Arc::new(Semaphore::new(MAX_ACCEPT_CALLS_IN_FLIGHT));
        tokio::spawn(async move {
            while let Some(first) = queue.recv().await {
                // A place for the call first: what comes while every call
                // is in flight waits here and goes in this one.
                let Ok(place) = calls.clone().acquire_owned().await else {
                    return;
                };
                let mut gathered = vec![first];
                while gathered.len() < MAX_GATHERED_ACCEPTS {
                    match queue.try_recv() {
                        Ok(next) => gathered.push(next),
                        Err(_) => break,
                    }
                }
                metrics::histogram!("txengine_accepts_gathered").record(gathered.len() as f64);
                let store = store.clone();
                tokio::spawn(async move {
                    let items: Vec<(&Transaction, &str)> = gathered
                        .iter()
                        .map(|waiting| (&waiting.tx, waiting.token.as_str()))
                        .collect();
                    let answers = store.accept_batch(&items).await;
                    drop(items);
                    match answers {
                        Ok(answers) => {
                            for (waiting, answer) in gathered.into_iter().zip(answers) {
                                let _ = waiting.answer.send(Ok(answer));
                            }
                        }
                        Err(e) => {
                            for waiting in gathered {
                                let _ = waiting.answer.send(Err(e.clone()));
                            }
                        }
                    }
                    drop(place);
                });
            }
        });
        Self { waiting }
    }

    /// Accepts `tx` under its lease `token`, as [`Store::accept`] does,
    /// in the gatherer's next call.
    pub async fn accept(&self, tx: Transaction, token: String) -> Result<Acceptance, StoreError> {
        let (answer, answered) = oneshot::channel();
        let stopped = || StoreError::Unexpected("the accept gatherer stopped".into());
        self.waiting
            .send(Waiting { tx, token, answer })
            .map_err(|_| stopped())?;
        answered.await.map_err(|_| stopped())?
    }
}
