//! The consumer side: reads the topic in a group, applies records to Redis in
//! pipelined batches, and stores each offset only after its outcome is in
//! Redis (the rust-rdkafka at-least-once pattern). The processed flag inside
//! the apply script turns every redelivery into a no-op.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use std::sync::{Arc, Mutex};

use rdkafka::client::ClientContext;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::message::{Header, Message, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::TopicPartitionList;
use rdkafka::util::Timeout;
use rdkafka::ClientConfig;
use tokio::sync::watch;

use crate::domain::Outcome;
use crate::store::{Progress, Store, StoreError};
use crate::wire::{now_ms, Record, SagaStep};

/// Longest a batch waits to fill after its first record.
const BATCH_LINGER: Duration = Duration::from_millis(2);
/// Backoff bounds while Redis cannot apply a batch.
const RETRY_MIN: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_secs(2);
/// Header carrying why a record went to the DLQ.
pub const DLQ_REASON_HEADER: &str = "txengine-dlq-reason";

pub struct ConsumerSettings<'a> {
    pub brokers: &'a str,
    pub group: &'a str,
    pub topic: &'a str,
    pub dlq_topic: &'a str,
    pub batch_size: usize,
    /// Replicas that must hold a batch's writes before its offsets are
    /// stored (0: none).
    pub wait_replicas: u32,
    /// Longest a single `WAIT` blocks.
    pub wait_timeout: Duration,
}

/// Publishes librdkafka's statistics as metrics: lag per assigned partition
/// (records not yet stored by this consumer) and rebalances.
pub struct LagReporter;

impl ClientContext for LagReporter {
    fn stats(&self, statistics: Statistics) {
        for (topic, stats) in &statistics.topics {
            for (partition, p) in &stats.partitions {
                // -1 is librdkafka's internal "UA" partition; lag < 0 is unknown.
                if *partition < 0 || !p.desired || p.consumer_lag_stored < 0 {
                    continue;
                }
                metrics::gauge!("txengine_consumer_lag", "topic" => topic.clone(), "partition" => partition.to_string())
                    .set(p.consumer_lag_stored as f64);
            }
        }
        if let Some(group) = &statistics.cgrp {
            metrics::gauge!("txengine_consumer_rebalances").set(group.rebalance_cnt as f64);
            metrics::gauge!("txengine_consumer_assigned_partitions")
                .set(group.assignment_size as f64);
        }
    }
}

impl ConsumerContext for LagReporter {
    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(partitions) => {
                tracing::info!(partitions = %partition_list(partitions), "partitions assigned")
            }
            Rebalance::Revoke(partitions) => {
                tracing::info!(partitions = %partition_list(partitions), "partitions revoked")
            }
            Rebalance::Error(e) => tracing::warn!(error = %e, "rebalance failed"),
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        match result {
            Ok(()) => tracing::debug!(offsets = %partition_list(offsets), "offsets committed"),
            // Nothing was stored since the last commit: nothing to do.
            Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
            Err(e) => {
                tracing::warn!(error = %e, offsets = %partition_list(offsets), "offset commit failed")
            }
        }
    }
}

/// `topic/partition@offset, ...` for the logs.
fn partition_list(list: &TopicPartitionList) -> String {
    list.elements()
        .iter()
        .map(|e| match e.offset().to_raw() {
            Some(offset) if offset >= 0 => format!("{}/{}@{offset}", e.topic(), e.partition()),
            _ => format!("{}/{}", e.topic(), e.partition()),
        })
        .collect::<Vec<_>>()
        .join(", ")
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

/// A record the consumer cannot apply (Redis answers it with an error), so
/// its partition does not move: shown by `/ready` until it applies.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct Stall {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    /// The transaction id of the record; empty when what holds the
    /// partition is not one record (replicas behind with a batch's writes).
    pub id: String,
    /// What went wrong, without the record's accounts or amounts (those
    /// are in the log): `/ready` answers anyone who asks.
    pub error: String,
}

/// The consumer's health as `/ready` shows it; shared with the HTTP side.
#[derive(Clone, Default)]
pub struct ConsumerHealth(Arc<Mutex<Option<Stall>>>);

impl ConsumerHealth {
    /// The record the consumer is stuck on, if any.
    pub fn stall(&self) -> Option<Stall> {
        self.0.lock().expect("health lock").clone()
    }

    fn set(&self, stall: Option<Stall>) {
        metrics::gauge!("txengine_consumer_stalled").set(if stall.is_some() { 1.0 } else { 0.0 });
        *self.0.lock().expect("health lock") = stall;
    }
}

pub struct TxConsumer {
    consumer: StreamConsumer<LagReporter>,
    /// Publishes poison records to the DLQ and a saga's next steps to the topic.
    producer: FutureProducer,
    topic: String,
    dlq_topic: String,
    store: Store,
    batch_size: usize,
    wait_replicas: u32,
    wait_timeout: Duration,
    health: ConsumerHealth,
}

impl TxConsumer {
    pub fn new(
        settings: ConsumerSettings<'_>,
        store: Store,
        health: ConsumerHealth,
    ) -> Result<Self, KafkaError> {
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
            .create_with_context(LagReporter)?;
        consumer.subscribe(&[settings.topic])?;
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", settings.brokers)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("message.timeout.ms", "10000")
            .create()?;
        Ok(Self {
            consumer,
            producer,
            topic: settings.topic.to_owned(),
            dlq_topic: settings.dlq_topic.to_owned(),
            store,
            batch_size: settings.batch_size,
            wait_replicas: settings.wait_replicas,
            wait_timeout: settings.wait_timeout,
            health,
        })
    }

    /// Applies records until `shutdown` turns true, then commits what it
    /// stored and returns. A batch in progress is finished first.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
        tracing::info!(dlq = %self.dlq_topic, batch_size = self.batch_size, "consumer started");
        while !*shutdown.borrow() {
            let first = tokio::select! {
                _ = shutdown.changed() => break,
                message = self.consumer.recv() => message,
            };
            let mut batch = Vec::with_capacity(self.batch_size);
            match first {
                Ok(m) => batch.push(m.detach()),
                Err(e) => {
                    tracing::warn!(error = %e, "kafka receive failed");
                    tokio::time::sleep(RETRY_MIN).await;
                    continue;
                }
            }
            let deadline = tokio::time::Instant::now() + BATCH_LINGER;
            while batch.len() < self.batch_size {
                match tokio::time::timeout_at(deadline, self.consumer.recv()).await {
                    Ok(Ok(m)) => batch.push(m.detach()),
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, "kafka receive failed");
                        break;
                    }
                    Err(_) => break,
                }
            }
            if !self.process(&batch, &shutdown).await {
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
    /// of it, publish the next steps of sagas, then store the offsets. A
    /// crash anywhere in between redelivers the batch, and every step of it
    /// is a no-op the second time that answers as the first, so the same
    /// next steps are published again (and are no-ops in turn). A next step
    /// is published only once its step's writes are on the replicas: a
    /// failover cannot lose a debit whose credit is on its way.
    async fn process(&self, batch: &[OwnedMessage], shutdown: &watch::Receiver<bool>) -> bool {
        let started = Instant::now();
        let mut records: Vec<Record> = Vec::with_capacity(batch.len());
        // The message each decoded record came from, for the logs.
        let mut sources: Vec<&OwnedMessage> = Vec::with_capacity(batch.len());
        for message in batch {
            match Record::decode(message.payload().unwrap_or_default()) {
                Ok(record) => {
                    records.push(record);
                    sources.push(message);
                }
                Err(e) => {
                    if !self.dead_letter(message, &e.to_string(), shutdown).await {
                        return false;
                    }
                }
            }
        }
        // A short WAIT applies the batch again before it waits again: the
        // writes may have died with a master that failed over, and the
        // promoted replica's WAIT (on a new connection) would not cover
        // them. Where they survived, the flags make the second apply a no-op.
        let mut wait_backoff = RETRY_MIN;
        let progress = loop {
            let Some(progress) = self.apply_until_done(&records, &sources, shutdown).await else {
                return false;
            };
            if records.is_empty() {
                break progress;
            }
            match self
                .replicas_have_writes(&sources, &mut wait_backoff, shutdown)
                .await
            {
                Some(true) => break progress,
                Some(false) => continue,
                None => return false,
            }
        };
        debug_assert_eq!(progress.len(), records.len(), "one progress per record");
        let next_steps: Vec<&Record> = progress
            .iter()
            .filter_map(|p| match p {
                Progress::Next(record) => Some(record),
                Progress::Ended { .. } => None,
            })
            .collect();
        if !self.publish_steps(&next_steps, shutdown).await {
            return false;
        }
        let now_ms = now_ms();
        for (record, progress) in records.iter().zip(&progress) {
            let Progress::Ended { applied, .. } = progress else {
                continue;
            };
            let label = match applied.outcome {
                Outcome::Applied { .. } => "applied",
                Outcome::Rejected { reason } => reason.as_str(),
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
        metrics::histogram!("txengine_apply_batch_size").record(batch.len() as f64);
        metrics::histogram!("txengine_apply_batch_seconds").record(started.elapsed().as_secs_f64());
        self.store_offsets(batch);
        true
    }

    /// Applies the records' steps and writes the outcomes decided in another
    /// slot into their tx records. Both are idempotent, so a retry repeats
    /// the whole.
    async fn apply_and_record(&self, records: &[Record]) -> Result<Vec<Progress>, StoreError> {
        let progress = self.store.apply_records(records).await?;
        let unrecorded: Vec<_> = records
            .iter()
            .zip(&progress)
            .filter_map(|(record, p)| match p {
                Progress::Ended {
                    applied,
                    recorded: false,
                } => Some((&record.tx, applied.outcome)),
                _ => None,
            })
            .collect();
        self.store.finish(&unrecorded).await?;
        Ok(progress)
    }

    /// Publishes the next steps of sagas to the topic, keyed by the account
    /// each runs on, and waits until the broker has them all (acks=all);
    /// retried until it does or shutdown comes (false).
    async fn publish_steps(&self, steps: &[&Record], shutdown: &watch::Receiver<bool>) -> bool {
        let mut backoff = RETRY_MIN;
        loop {
            let sends = steps.iter().map(|record| {
                let payload = record.encode();
                let key = record.key().as_str().to_owned();
                async move {
                    self.producer
                        .send(
                            FutureRecord::to(&self.topic).key(&key).payload(&payload),
                            Timeout::After(Duration::from_secs(5)),
                        )
                        .await
                        .map_err(|(e, _)| e)
                }
            });
            let failed = futures_util::future::join_all(sends)
                .await
                .into_iter()
                .filter_map(Result::err)
                .next();
            let Some(error) = failed else {
                for record in steps {
                    let step = match record.saga {
                        Some(SagaStep::Credit { .. }) => "credit",
                        Some(SagaStep::Settle { refused: None, .. }) => "release",
                        Some(SagaStep::Settle { .. }) => "refund",
                        None => "none",
                    };
                    metrics::counter!("txengine_saga_steps_published_total", "step" => step)
                        .increment(1);
                }
                return true;
            };
            // The ones that did land are published again: their steps are
            // idempotent, so that changes nothing.
            tracing::warn!(error = %error, steps = steps.len(), retry_in_ms = backoff.as_millis() as u64, "publishing the next saga steps failed; retrying");
            if !back_off(&mut backoff, shutdown).await {
                return false;
            }
        }
    }

    /// Applies `records` in one pipelined call per slot, retrying with
    /// backoff until it works or shutdown comes (`None`): no offset may move
    /// past a record that is not applied. When Redis answers with an error
    /// rather than not answering, the record it fails on is found, logged at
    /// error level and shown by `/ready` while the retries go on.
    async fn apply_until_done(
        &self,
        records: &[Record],
        sources: &[&OwnedMessage],
        shutdown: &watch::Receiver<bool>,
    ) -> Option<Vec<Progress>> {
        debug_assert_eq!(records.len(), sources.len());
        let mut backoff = RETRY_MIN;
        loop {
            let error = match self.apply_and_record(records).await {
                Ok(progress) => {
                    // A record's stall ends here; a wait for replicas, in
                    // replicas_have_writes.
                    if self
                        .health
                        .stall()
                        .is_some_and(|stall| !stall.id.is_empty())
                    {
                        tracing::info!("the stalled record is applied; going on");
                        self.health.set(None);
                    }
                    return Some(progress);
                }
                Err(e) => e,
            };
            metrics::counter!("txengine_redis_errors_total", "op" => "apply").increment(1);
            if error.is_unreachable() {
                tracing::warn!(error = %error, retry_in_ms = backoff.as_millis() as u64, "redis unreachable; retrying the batch");
            } else {
                self.report_stall(records, sources, &error).await;
            }
            if !back_off(&mut backoff, shutdown).await {
                return None;
            }
        }
    }

    /// Asks whether the batch's writes are on `wait_replicas` replicas
    /// (`WAIT`), so that a master failing over after its offsets are stored
    /// loses nothing. `Some(true)`: they are. `Some(false)`: too few
    /// acknowledged (shown by `/ready`), and `backoff` was waited out.
    /// `None`: shutdown came first.
    async fn replicas_have_writes(
        &self,
        sources: &[&OwnedMessage],
        backoff: &mut Duration,
        shutdown: &watch::Receiver<bool>,
    ) -> Option<bool> {
        if self.wait_replicas == 0 {
            return Some(true);
        }
        let error = match self
            .store
            .wait_replicas(self.wait_replicas, self.wait_timeout)
            .await
        {
            Ok(acknowledged) if acknowledged >= self.wait_replicas => {
                if self.health.stall().is_some() {
                    tracing::info!("the replicas caught up; going on");
                    self.health.set(None);
                }
                return Some(true);
            }
            Ok(acknowledged) => format!(
                "the batch's writes reached {acknowledged} of {} replicas within {} ms",
                self.wait_replicas,
                self.wait_timeout.as_millis()
            ),
            Err(e) => format!("WAIT failed: {e}"),
        };
        metrics::counter!("txengine_replica_wait_short_total").increment(1);
        if let Some(first) = sources.first() {
            let stall = Stall {
                topic: first.topic().to_owned(),
                partition: first.partition(),
                offset: first.offset(),
                id: String::new(),
                error,
            };
            if self.health.stall().as_ref() != Some(&stall) {
                tracing::warn!(error = %stall.error, "offsets held back until the replicas have the writes; the batch is applied again first");
            }
            self.health.set(Some(stall));
        }
        back_off(backoff, shutdown).await.then_some(false)
    }

    /// Finds the record a batch fails on by applying its records one at a
    /// time, in order (those before it are applied, which the processed flag
    /// makes safe to repeat), and reports it.
    async fn report_stall(
        &self,
        records: &[Record],
        sources: &[&OwnedMessage],
        batch_error: &StoreError,
    ) {
        let mut culprit = None;
        for (record, message) in records.iter().zip(sources) {
            if let Err(e) = self.apply_and_record(std::slice::from_ref(record)).await {
                culprit = Some((record, *message, e));
                break;
            }
        }
        let (record, message, error) = match &culprit {
            Some((record, message, e)) => (*record, *message, e),
            // It passed one at a time: report the batch's first record.
            None => match (records.first(), sources.first()) {
                (Some(record), Some(message)) => (record, *message, batch_error),
                _ => return,
            },
        };
        let tx = &record.tx;
        let stall = Stall {
            topic: message.topic().to_owned(),
            partition: message.partition(),
            offset: message.offset(),
            id: tx.id.to_string(),
            error: error.summary(),
        };
        if self.health.stall().as_ref() != Some(&stall) {
            metrics::counter!("txengine_consumer_stalls_total").increment(1);
            tracing::error!(
                topic = %stall.topic,
                partition = stall.partition,
                offset = stall.offset,
                id = %stall.id,
                kind = tx.movement.kind(),
                account = %tx.movement.account(),
                amount = tx.movement.amount().minor_units(),
                error = %error,
                "redis refuses to apply this record; its partition is stalled until it applies (see /ready)"
            );
        }
        self.health.set(Some(stall));
    }

    /// Stores, per partition, the offset after the last record of the batch:
    /// every earlier record of that partition is applied by now.
    fn store_offsets(&self, batch: &[OwnedMessage]) {
        let mut last: BTreeMap<(&str, i32), i64> = BTreeMap::new();
        for m in batch {
            let entry = last.entry((m.topic(), m.partition())).or_insert(m.offset());
            *entry = (*entry).max(m.offset());
        }
        for ((topic, partition), offset) in last {
            // Fails only if the partition was revoked meanwhile; its new owner
            // re-applies from the last commit and the flags make that a no-op.
            if let Err(e) = self.consumer.store_offset(topic, partition, offset) {
                tracing::info!(topic, partition, offset, error = %e, "offset not stored (revoked?)");
            }
        }
    }

    /// Sends an undecodable record to the DLQ, retrying until the broker has
    /// it (its offset must not be stored before that) or shutdown comes
    /// (false: the record is read again by the next owner of its partition).
    async fn dead_letter(
        &self,
        message: &OwnedMessage,
        reason: &str,
        shutdown: &watch::Receiver<bool>,
    ) -> bool {
        tracing::warn!(
            partition = message.partition(),
            offset = message.offset(),
            reason,
            "poison record to DLQ"
        );
        let origin = format!(
            "{}/{}/{}",
            message.topic(),
            message.partition(),
            message.offset()
        );
        loop {
            let headers = OwnedHeaders::new()
                .insert(Header {
                    key: DLQ_REASON_HEADER,
                    value: Some(reason),
                })
                .insert(Header {
                    key: "txengine-origin",
                    value: Some(&origin),
                });
            let mut record = FutureRecord::to(&self.dlq_topic).headers(headers);
            if let Some(payload) = message.payload() {
                record = record.payload(payload);
            }
            if let Some(key) = message.key() {
                record = record.key(key);
            }
            match self
                .producer
                .send(record, Timeout::After(Duration::from_secs(1)))
                .await
            {
                Ok(_) => {
                    metrics::counter!("txengine_dlq_total").increment(1);
                    return true;
                }
                Err((e, _)) => {
                    tracing::error!(error = %e, "DLQ publish failed; retrying");
                    // Every wait RETRY_MAX: the backoff starts at its cap.
                    let mut backoff = RETRY_MAX;
                    if !back_off(&mut backoff, shutdown).await {
                        return false;
                    }
                }
            }
        }
    }
}
