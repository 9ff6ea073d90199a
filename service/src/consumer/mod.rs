//! The consumer side: reads the topic in a group, applies records to Redis in
//! pipelined batches, and stores each offset only after its outcome is in
//! Redis (the rust-rdkafka at-least-once pattern). The processed flag inside
//! the apply script turns every redelivery into a no-op.
//!
//! - [`context`]: librdkafka's callbacks (metrics, commits, rebalances).
//! - [`health`]: what holds the consumer back, for `/ready`.
//! - [`paused`]: which partitions are held on which record (the bookkeeping).
//! - [`pausing`]: pausing, retrying and resuming them.
//! - [`publish`]: the saga steps, outcome events and poison records the
//!   consumer publishes.

mod context;
mod health;
mod paused;
mod pausing;
mod publish;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::producer::FutureProducer;
use rdkafka::topic_partition_list::TopicPartitionList;
use rdkafka::ClientConfig;
use tokio::sync::watch;
use tokio::time::Instant;

pub use context::LagReporter;
use context::Partition;
use health::Cause;
pub use health::{ConsumerHealth, Stall};
use paused::{offsets_to_store, Paused};
pub use publish::DLQ_REASON_HEADER;

use crate::domain::{Movement, Outcome};
use crate::events::{EventStatus, OutcomeEvent};
use crate::publisher::producer_config;
use crate::store::{Progress, Store, StoreError};
use crate::wire::{now_ms, DecodeError, Record};

/// Longest a batch waits to fill after its first record.
const BATCH_LINGER: Duration = Duration::from_millis(2);
/// Backoff bounds while Redis cannot apply a batch.
const RETRY_MIN: Duration = Duration::from_millis(50);
/// The DLQ reason of a record whose id was applied with another body.
pub const MISMATCH_REASON: &str = "its id was applied with another body; this one was not applied";
const RETRY_MAX: Duration = Duration::from_secs(2);

pub struct ConsumerSettings<'a> {
    pub brokers: &'a str,
    pub group: &'a str,
    pub topic: &'a str,
    pub dlq_topic: &'a str,
    /// Where each final outcome is published as an event (`None`: nowhere).
    pub outcomes_topic: Option<&'a str>,
    pub batch_size: usize,
    /// Replicas that must hold a batch's writes before its offsets are
    /// stored (0: none).
    pub wait_replicas: u32,
    /// Longest a single `WAIT` blocks.
    pub wait_timeout: Duration,
}

/// Waits out `backoff` and doubles it (up to [`RETRY_MAX`]), unless shutdown
/// comes first: then false.
async fn back_off(backoff: &mut Duration, shutdown: &watch::Receiver<bool>) -> bool {
    let mut shutdown = shutdown.clone();
    tokio::select! {
        _ = tokio::time::sleep(*backoff) => {}
        _ = shutdown.wait_for(|stopped| *stopped) => return false,
    }
    *backoff = (*backoff * 2).min(RETRY_MAX);
    let stopped = *shutdown.borrow();
    !stopped
}

pub struct TxConsumer {
    consumer: StreamConsumer<LagReporter>,
    /// Publishes poison records to the DLQ and a saga's next steps to the topic.
    producer: FutureProducer,
    topic: String,
    dlq_topic: String,
    outcomes_topic: Option<String>,
    store: Store,
    batch_size: usize,
    wait_replicas: u32,
    wait_timeout: Duration,
    health: ConsumerHealth,
    /// Partitions rebalances moved since the loop last looked.
    moved: Arc<Mutex<Vec<Partition>>>,
}

impl TxConsumer {
    pub fn new(
        settings: ConsumerSettings<'_>,
        store: Store,
        health: ConsumerHealth,
    ) -> Result<Self, KafkaError> {
        let context = LagReporter::default();
        let moved = context.moved();
        let consumer: StreamConsumer<LagReporter> = ClientConfig::new()
            .set("bootstrap.servers", settings.brokers)
            .set("group.id", settings.group)
            .set("auto.offset.reset", "earliest")
            // Commit only offsets we stored, i.e. records whose outcome is in Redis.
            .set("enable.auto.commit", "true")
            .set("auto.commit.interval.ms", "500")
            .set("enable.auto.offset.store", "false")
            .set("session.timeout.ms", "10000")
            .set("heartbeat.interval.ms", "1000")
            .set("enable.partition.eof", "false")
            // Fewer, fuller fetches: the broker answers once 64 KiB are ready
            // or 10 ms passed. Saves broker CPU under load; adds <= 10 ms idle.
            .set("fetch.min.bytes", "65536")
            .set("fetch.wait.max.ms", "10")
            .set("statistics.interval.ms", "5000")
            .create_with_context(context)?;
        consumer.subscribe(&[settings.topic])?;
        let producer: FutureProducer =
            producer_config(settings.brokers, Duration::from_secs(10)).create()?;
        Ok(Self {
            consumer,
            producer,
            topic: settings.topic.to_owned(),
            dlq_topic: settings.dlq_topic.to_owned(),
            outcomes_topic: settings.outcomes_topic.map(str::to_owned),
            store,
            batch_size: settings.batch_size,
            wait_replicas: settings.wait_replicas,
            wait_timeout: settings.wait_timeout,
            health,
            moved,
        })
    }

    /// Applies records until `shutdown` turns true, then commits what it
    /// stored and returns. A batch in progress is finished first.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
        tracing::info!(dlq = %self.dlq_topic, batch_size = self.batch_size, "consumer started");
        let mut paused = Paused::default();
        while !*shutdown.borrow() {
            // Wake for a paused record's next try even when nothing comes.
            let retry_at = paused.next_retry();
            let first = tokio::select! {
                _ = shutdown.changed() => break,
                message = self.consumer.recv() => Some(message),
                _ = tokio::time::sleep_until(retry_at.unwrap_or_else(Instant::now)), if retry_at.is_some() => None,
            };
            let mut batch = Vec::with_capacity(self.batch_size);
            match first {
                Some(Ok(m)) => batch.push(m.detach()),
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "kafka receive failed");
                    tokio::time::sleep(RETRY_MIN).await;
                    continue;
                }
                None => {}
            }
            let deadline = Instant::now() + BATCH_LINGER;
            while !batch.is_empty() && batch.len() < self.batch_size {
                match tokio::time::timeout_at(deadline, self.consumer.recv()).await {
                    Ok(Ok(m)) => batch.push(m.detach()),
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, "kafka receive failed");
                        break;
                    }
                    Err(_) => break,
                }
            }
            // Rebalances run inside recv, before the messages they concern.
            self.forget_moved(&mut paused);
            batch.retain(|message| !paused.holds(message));
            if !batch.is_empty() && !self.process(&batch, &mut paused, &shutdown).await {
                break;
            }
            if !self.retry_paused(&mut paused, &shutdown).await {
                break;
            }
        }
        match self.consumer.commit_consumer_state(CommitMode::Sync) {
            // Nothing stored since the last commit: nothing to do.
            Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
            Err(e) => {
                tracing::warn!(error = %e, "final offset commit failed; the next owner re-applies from the last commit (no-ops)")
            }
        }
        tracing::info!("consumer stopped");
        Ok(())
    }

    /// Applies one batch and stores its offsets. Returns false if shutdown
    /// came first (the offsets of the batch are not stored).
    ///
    /// In order: apply every record's step (and write the outcomes decided
    /// in another slot than their tx record), wait until replicas have all
    /// of it, publish the next steps of sagas and the outcome events, then
    /// store the offsets. A
    /// crash anywhere in between redelivers the batch, and every step of it
    /// is a no-op the second time that answers as the first, so the same
    /// next steps are published again (and are no-ops in turn). A next step
    /// is published only once its step's writes are on the replicas: a
    /// failover cannot lose a debit whose credit is on its way.
    ///
    /// A record Redis refuses, or one of a newer wire version, pauses its
    /// own partition (see [`paused`]); the rest of the batch goes on.
    async fn process(
        &self,
        batch: &[OwnedMessage],
        paused: &mut Paused,
        shutdown: &watch::Receiver<bool>,
    ) -> bool {
        let started = std::time::Instant::now();
        let mut records: Vec<Record> = Vec::with_capacity(batch.len());
        // The message each decoded record came from.
        let mut sources: Vec<&OwnedMessage> = Vec::with_capacity(batch.len());
        // Messages whose work is done: applied, or in the DLQ.
        let mut done: Vec<&OwnedMessage> = Vec::with_capacity(batch.len());
        for message in batch {
            if paused.holds(message) {
                continue;
            }
            match Record::decode(message.payload().unwrap_or_default()) {
                Ok(record) => {
                    records.push(record);
                    sources.push(message);
                }
                Err(e @ DecodeError::NewerVersion(_)) => {
                    self.pause(paused, message, None, e.to_string(), e.to_string());
                }
                Err(e) => {
                    if !self.dead_letter(message, &e.to_string(), shutdown).await {
                        return false;
                    }
                    done.push(message);
                }
            }
        }
        // A short WAIT applies the batch again before it waits again: the
        // writes may have died with a master that failed over, and the
        // promoted replica's WAIT (on a new connection) would not cover
        // them. Where they survived, the flags make the second apply a no-op.
        let mut live: Vec<usize> = (0..records.len()).collect();
        let mut wait_backoff = RETRY_MIN;
        let applied = loop {
            let Some(applied) = self
                .apply_pausing_culprits(&records, &sources, &live, paused, shutdown)
                .await
            else {
                return false;
            };
            let Some(first) = applied.first().map(|(i, _)| sources[*i]) else {
                break applied;
            };
            match self
                .replicas_have_writes(first, &mut wait_backoff, shutdown)
                .await
            {
                Some(true) => break applied,
                Some(false) => live = applied.iter().map(|(i, _)| *i).collect(),
                None => return false,
            }
        };
        if !self
            .publish_what_follows(&records, &sources, &applied, shutdown)
            .await
        {
            return false;
        }
        count_outcomes(applied.iter().map(|(i, p)| (&records[*i], p)));
        done.extend(applied.iter().map(|(i, _)| sources[*i]));
        metrics::histogram!("txengine_apply_batch_size").record(batch.len() as f64);
        metrics::histogram!("txengine_apply_batch_seconds").record(started.elapsed().as_secs_f64());
        self.store_offsets(&offsets_to_store(batch, &done));
        true
    }

    /// What follows the apply of a batch, before its offsets are stored:
    /// the next steps of sagas and the outcome events published, and each
    /// record whose id was applied with another body sent to the DLQ.
    /// False when shutdown came first.
    async fn publish_what_follows(
        &self,
        records: &[Record],
        sources: &[&OwnedMessage],
        applied: &[(usize, Progress)],
        shutdown: &watch::Receiver<bool>,
    ) -> bool {
        let next_steps = next_steps(applied.iter().map(|(_, p)| p));
        if let Some((first, _)) = applied.first() {
            if !self
                .publish_steps(&next_steps, sources[*first], shutdown)
                .await
            {
                return false;
            }
            let events = outcome_events(applied.iter().map(|(i, p)| (&records[*i], p)));
            if !self
                .publish_events(&events, sources[*first], shutdown)
                .await
            {
                return false;
            }
        }
        for (i, _) in applied.iter().filter(|(_, p)| *p == Progress::Mismatch) {
            let id = &records[*i].tx.id;
            metrics::counter!("txengine_body_mismatch_total").increment(1);
            tracing::error!(%id, "a record whose body is not the one its id was applied with; to the DLQ");
            if !self
                .dead_letter(sources[*i], MISMATCH_REASON, shutdown)
                .await
            {
                return false;
            }
        }
        true
    }

    /// Applies the records at `live` in one pipelined call per slot,
    /// retrying with backoff while Redis does not answer, or shutdown comes
    /// (`None`): no offset may move past a record that is not applied. When
    /// Redis answers with an error instead, the records are applied one at a
    /// time, once, to find those it refuses: each pauses its partition (and
    /// the records after it in that partition wait with it). Returns the
    /// records applied (their index) and where each stands.
    async fn apply_pausing_culprits(
        &self,
        records: &[Record],
        sources: &[&OwnedMessage],
        live: &[usize],
        paused: &mut Paused,
        shutdown: &watch::Receiver<bool>,
    ) -> Option<Vec<(usize, Progress)>> {
        let mut backoff = RETRY_MIN;
        loop {
            let result = if live.len() == records.len() {
                self.apply_and_record(records).await
            } else {
                let subset: Vec<Record> = live.iter().map(|i| records[*i].clone()).collect();
                self.apply_and_record(&subset).await
            };
            let error = match result {
                Ok(progress) => return Some(live.iter().copied().zip(progress).collect()),
                Err(e) if e.is_unreachable() => e,
                Err(_) => match self.apply_one_by_one(records, sources, live, paused).await {
                    Ok(applied) => return Some(applied),
                    Err(e) => e,
                },
            };
            metrics::counter!("txengine_redis_errors_total", "op" => "apply").increment(1);
            tracing::warn!(error = %error, retry_in_ms = backoff.as_millis() as u64, "redis unreachable; retrying the batch");
            if !back_off(&mut backoff, shutdown).await {
                return None;
            }
        }
    }

    /// Applies the records at `live` one at a time, in order, pausing the
    /// partition of each one Redis refuses. Stops with the error if Redis
    /// stops answering (the whole batch is tried again).
    async fn apply_one_by_one(
        &self,
        records: &[Record],
        sources: &[&OwnedMessage],
        live: &[usize],
        paused: &mut Paused,
    ) -> Result<Vec<(usize, Progress)>, StoreError> {
        let mut applied = Vec::with_capacity(live.len());
        for &i in live {
            if paused.holds(sources[i]) {
                continue;
            }
            match self
                .apply_and_record(std::slice::from_ref(&records[i]))
                .await
            {
                Ok(mut progress) => applied.push((i, progress.remove(0))),
                Err(e) if e.is_unreachable() => return Err(e),
                Err(e) => {
                    metrics::counter!("txengine_redis_errors_total", "op" => "apply").increment(1);
                    self.pause(
                        paused,
                        sources[i],
                        Some(records[i].clone()),
                        e.summary(),
                        e.to_string(),
                    );
                }
            }
        }
        Ok(applied)
    }

    /// Applies the records' steps and writes the outcomes decided in another
    /// slot into their tx records. Both are idempotent, so a retry repeats
    /// the whole. One progress per record, or an error.
    async fn apply_and_record(&self, records: &[Record]) -> Result<Vec<Progress>, StoreError> {
        let progress = self.store.apply_records(records).await?;
        if progress.len() != records.len() {
            return Err(StoreError::Unexpected(format!(
                "{} answers for {} records",
                progress.len(),
                records.len()
            )));
        }
        let unrecorded: Vec<_> = records
            .iter()
            .zip(&progress)
            .filter_map(|(record, p)| match p {
                Progress::Ended {
                    applied,
                    recorded: false,
                    asset,
                    posting_assets,
                } => Some((
                    &record.tx,
                    applied.outcome,
                    asset.as_ref(),
                    posting_assets.as_slice(),
                )),
                _ => None,
            })
            .collect();
        self.store.finish(&unrecorded).await?;
        Ok(progress)
    }

    /// Asks whether the batch's writes are on `wait_replicas` replicas
    /// (`WAIT`), so that a master failing over after its offsets are stored
    /// loses nothing. `Some(true)`: they are. `Some(false)`: too few
    /// acknowledged (shown by `/ready`), and `backoff` was waited out.
    /// `None`: shutdown came first.
    async fn replicas_have_writes(
        &self,
        first: &OwnedMessage,
        backoff: &mut Duration,
        shutdown: &watch::Receiver<bool>,
    ) -> Option<bool> {
        if self.wait_replicas == 0 {
            return Some(true);
        }
        let Err((error, _)) = self.writes_on_replicas().await else {
            if self.health.clear(&Cause::Replicas) {
                tracing::info!("the replicas caught up; going on");
            }
            return Some(true);
        };
        metrics::counter!("txengine_replica_wait_short_total").increment(1);
        if self
            .health
            .set(Cause::Replicas, Stall::at(first, "", error))
        {
            tracing::warn!("offsets held back until the replicas have the writes; the batch is applied again first");
        }
        back_off(backoff, shutdown).await.then_some(false)
    }

    /// One `WAIT`: `Ok` when `wait_replicas` replicas hold every write made
    /// through this consumer's connection so far, else what fell short: a
    /// summary for `/ready` and the detail for the log.
    async fn writes_on_replicas(&self) -> Result<(), (String, String)> {
        match self
            .store
            .wait_replicas(self.wait_replicas, self.wait_timeout)
            .await
        {
            Ok(acknowledged) if acknowledged >= self.wait_replicas => Ok(()),
            Ok(acknowledged) => {
                let short = format!(
                    "the writes reached {acknowledged} of {} replicas within {} ms",
                    self.wait_replicas,
                    self.wait_timeout.as_millis()
                );
                Err((short.clone(), short))
            }
            Err(e) => Err((format!("WAIT failed: {}", e.summary()), e.to_string())),
        }
    }

    /// Stores, per partition, the offset after the given record: every
    /// earlier record of that partition is applied by now.
    fn store_offsets(&self, offsets: &std::collections::BTreeMap<Partition, i64>) {
        for ((topic, partition), offset) in offsets {
            // Fails only if the partition was revoked meanwhile; its new owner
            // re-applies from the last commit and the flags make that a no-op.
            if let Err(e) = self.consumer.store_offset(topic, *partition, *offset) {
                tracing::info!(topic, partition, offset, error = %e, "offset not stored (revoked?)");
            }
        }
    }
}

/// The records that carry sagas on: the next steps to publish.
fn next_steps<'a>(progress: impl Iterator<Item = &'a Progress>) -> Vec<&'a Record> {
    progress
        .filter_map(|p| match p {
            Progress::Next(record) => Some(record),
            Progress::Ended { .. } | Progress::Expiry { .. } | Progress::Mismatch => None,
        })
        .collect()
}

/// The events of the final outcomes among the steps applied: each
/// transaction that ended (first time or again: a redelivery publishes its
/// event again), and each expiry that found its hold expired (now, or
/// before: by this record's earlier delivery or by a late capture or void).
fn outcome_events<'a>(
    applied: impl Iterator<Item = (&'a Record, &'a Progress)>,
) -> Vec<OutcomeEvent> {
    let at_ms = now_ms();
    applied
        .filter_map(|(record, progress)| {
            let mut tx = record.tx.clone();
            let (status, asset) = match progress {
                Progress::Ended {
                    applied,
                    asset,
                    posting_assets,
                    ..
                } => {
                    // Each posting names the asset its money was of.
                    if let Movement::Postings { postings } = &mut tx.movement {
                        *postings = postings.with_assets(posting_assets);
                    }
                    (EventStatus::from(applied.outcome), asset.clone())
                }
                Progress::Expiry { expired: true, .. } => (EventStatus::Expired, None),
                Progress::Expiry { .. } | Progress::Next(_) | Progress::Mismatch => return None,
            };
            Some(OutcomeEvent {
                tx,
                status,
                asset,
                at_ms,
            })
        })
        .collect()
}

/// `topic`/`partition` alone, for pause, resume and the like.
fn one_partition(topic: &str, partition: i32) -> TopicPartitionList {
    let mut list = TopicPartitionList::new();
    list.add_partition(topic, partition);
    list
}

/// Counts the outcomes of the transactions that ended, and their
/// accept-to-applied latency (first applies only).
fn count_outcomes<'a>(ended: impl Iterator<Item = (&'a Record, &'a Progress)>) {
    let now_ms = now_ms();
    for (record, progress) in ended {
        if let Progress::Expiry { expired, duplicate } = progress {
            let expired = if *expired && !*duplicate {
                "true"
            } else {
                "false"
            };
            metrics::counter!("txengine_hold_expiries_total", "expired" => expired).increment(1);
            continue;
        }
        let Progress::Ended { applied, .. } = progress else {
            continue;
        };
        let label = match applied.outcome {
            Outcome::Rejected { reason, .. } => reason.as_str(),
            applied => applied.as_str(),
        };
        let duplicate = if applied.duplicate { "true" } else { "false" };
        metrics::counter!("txengine_apply_outcomes_total", "outcome" => label, "duplicate" => duplicate)
            .increment(1);
        if !applied.duplicate {
            let e2e_ms = now_ms.saturating_sub(record.accepted_at_ms);
            metrics::histogram!("txengine_accept_to_applied_seconds")
                .record(e2e_ms as f64 / 1000.0);
        }
    }
}
