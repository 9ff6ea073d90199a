//! The expirer: finds holds past their deadline and publishes their expiry,
//! so that a hold nobody captures or voids still ends, through the same
//! pipeline (Kafka, then a consumer's script) as every record. Each
//! consumer process runs one; several are harmless: an expiry applied
//! twice, or of a hold that ended meanwhile, changes nothing.

use std::time::Duration;

use tokio::sync::watch;

use crate::domain::{Movement, Transaction};
use crate::publisher::Publisher;
use crate::store::{DueHold, Store};
use crate::wire::{now_ms, Record};

/// How long a published expiry is given to be applied before the expirer
/// publishes it again (a record lost to a crash before it reached Kafka,
/// or a consumer that is far behind: then the second is a no-op).
const REPUBLISH_AFTER: Duration = Duration::from_secs(30);

/// Most due holds one scan takes from each slot; the next scan takes more.
const MAX_DUE_PER_SLOT: usize = 1_000;

pub(crate) struct Expirer {
    store: Store,
    publisher: Publisher,
    scan: Duration,
}

impl Expirer {
    pub(crate) fn new(store: Store, publisher: Publisher, scan: Duration) -> Self {
        Self {
            store,
            publisher,
            scan,
        }
    }

    /// Scans every `scan` until shutdown; a scan that fails is logged and
    /// the next one tries again (a due hold stays due).
    pub(crate) async fn run(self, mut shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
        let mut tick = tokio::time::interval(self.scan);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.changed() => return Ok(()),
                _ = tick.tick() => {}
            }
            match self.expire_due().await {
                Ok(0) => {}
                Ok(published) => tracing::debug!(published, "hold expiries published"),
                Err(e) => {
                    tracing::warn!(error = %e, "hold expiry scan failed; the next one retries")
                }
            }
        }
    }

    /// Publishes the expiry of every hold due now, then puts each one
    /// published off by [`REPUBLISH_AFTER`]; how many were published.
    pub(crate) async fn expire_due(&self) -> anyhow::Result<usize> {
        let now = now_ms();
        let due = self.store.due_holds(now, MAX_DUE_PER_SLOT).await?;
        if due.is_empty() {
            return Ok(0);
        }
        let records: Vec<Record> = due
            .iter()
            .map(|hold| Record {
                tx: Transaction {
                    metadata: Default::default(),
                    asset: None,
                    id: hold.hold.clone(),
                    movement: Movement::Expire {
                        hold: hold.hold.clone(),
                        account: hold.account.clone(),
                        amount: hold.amount,
                    },
                },
                accepted_at_ms: now,
                saga: None,
            })
            .collect();
        let answers = self.publisher.publish_batch(&records).await;
        let published: Vec<DueHold> = due
            .into_iter()
            .zip(&answers)
            .filter(|(_, answer)| answer.is_ok())
            .map(|(hold, _)| hold)
            .collect();
        if let Some(Err(e)) = answers.iter().find(|answer| answer.is_err()) {
            tracing::warn!(error = %e, "a hold expiry was not published; the next scan retries");
        }
        let later = now + REPUBLISH_AFTER.as_millis() as u64;
        self.store.postpone_due(&published, later).await?;
        metrics::counter!("txengine_hold_expiries_published_total")
            .increment(published.len() as u64);
        Ok(published.len())
    }
}
