//! Holding a partition on one record while the others go on: the pause
//! (in Kafka, in `/ready`, in the log), the retries of a paused record, and
//! the resume once it applies (a seek past it), or the forgetting of it
//! when a rebalance moves the partition.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::consumer::Consumer;
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::topic_partition_list::Offset;
use tokio::sync::watch;
use tokio::time::Instant;

use super::health::{Cause, Stall};
use super::paused::{partition_of, Paused, PausedOn};
use super::{
    count_outcomes, next_steps, one_partition, outcome_events, TxConsumer, RETRY_MAX, RETRY_MIN,
};
use crate::store::Progress;
use crate::wire::Record;

impl TxConsumer {
    /// Holds `message`'s partition on it: paused in Kafka (the others go
    /// on), shown by `/ready` (`summary`, no account or amount) and logged
    /// at error level (`detail`). `record` is what to try again; `None` for
    /// a record this build cannot read.
    pub(super) fn pause(
        &self,
        paused: &mut Paused,
        message: &OwnedMessage,
        record: Option<Record>,
        summary: String,
        detail: String,
    ) {
        if paused.holds(message) {
            // Held already, on an earlier record: that one goes first.
            return;
        }
        let (topic, partition) = partition_of(message);
        if let Err(e) = self.consumer.pause(&one_partition(&topic, partition)) {
            // Its messages are skipped all the same, and read again from
            // the paused record once it resumes (a seek).
            tracing::warn!(error = %e, topic, partition, "could not pause the partition");
        }
        let id = record
            .as_ref()
            .map(|r| r.tx.id.to_string())
            .unwrap_or_default();
        let stall = Stall::at(message, &id, summary);
        if self
            .health
            .set(Cause::Partition(topic.clone(), partition), stall)
        {
            metrics::counter!("txengine_consumer_stalls_total").increment(1);
        }
        match &record {
            Some(record) => tracing::error!(
                topic,
                partition,
                offset = message.offset(),
                id = %record.tx.id,
                kind = record.tx.movement.kind().as_str(),
                account = %record.tx.movement.account(),
                amount = record.tx.movement.amount().map(|amount| amount.minor_units()),
                error = %detail,
                "redis refuses to apply this record; its partition is paused until it applies (see /ready), the others go on"
            ),
            None => tracing::error!(
                topic,
                partition,
                offset = message.offset(),
                error = %detail,
                "a record this build cannot read; its partition is paused until a build that reads it takes the partition (see /ready), the others go on"
            ),
        }
        paused.insert(PausedOn {
            message: message.clone(),
            record,
            retry_at: Instant::now() + RETRY_MIN,
            backoff: RETRY_MIN,
        });
    }

    /// Tries again each paused record that is due. One that applies has its
    /// writes waited on, its next step published and its offset stored;
    /// then its partition is read again from the record after it (a seek,
    /// since messages skipped while paused were never applied) and resumed.
    pub(super) async fn retry_paused(
        &self,
        paused: &mut Paused,
        shutdown: &watch::Receiver<bool>,
    ) -> bool {
        for partition in paused.due(Instant::now()) {
            let Some(on) = paused.get_mut(&partition) else {
                continue;
            };
            let Some(record) = on.record.clone() else {
                continue;
            };
            let problem = match self.apply_and_record(std::slice::from_ref(&record)).await {
                Ok(progress) => match self
                    .settle_paused(&record, &on.message, &progress, shutdown)
                    .await
                {
                    Ok(()) => None,
                    Err(None) => return false,
                    Err(Some(problem)) => Some(problem),
                },
                Err(e) => Some((e.summary(), e.to_string())),
            };
            let Some((summary, detail)) = problem else {
                paused.remove(&partition);
                self.health
                    .clear(&Cause::Partition(partition.0.clone(), partition.1));
                tracing::info!(topic = %partition.0, partition = partition.1, "the paused record is applied; its partition goes on");
                continue;
            };
            on.backoff = (on.backoff * 2).min(RETRY_MAX);
            on.retry_at = Instant::now() + on.backoff;
            let stall = Stall::at(&on.message, record.tx.id.as_str(), summary);
            if self
                .health
                .set(Cause::Partition(partition.0.clone(), partition.1), stall)
            {
                tracing::warn!(topic = %partition.0, partition = partition.1, error = %detail, "the paused record still does not apply");
            }
        }
        true
    }

    /// After a paused record applied: its writes on the replicas, its next
    /// step and its outcome event in Kafka, its offset stored, the partition sought to the record
    /// after it and resumed. `Err(None)`: shutdown came; `Err(Some(..))`:
    /// not yet (try again later: every step of it is idempotent).
    async fn settle_paused(
        &self,
        record: &Record,
        message: &OwnedMessage,
        progress: &[Progress],
        shutdown: &watch::Receiver<bool>,
    ) -> Result<(), Option<(String, String)>> {
        // The same text for `/ready` and for the log.
        let problem = |text: String| Err(Some((text.clone(), text)));
        if self.wait_replicas > 0 {
            self.writes_on_replicas().await.map_err(Some)?;
        }
        if !self
            .publish_steps(&next_steps(progress.iter()), message, shutdown)
            .await
        {
            return Err(None);
        }
        let events = outcome_events(progress.iter().map(|p| (record, p)));
        if !self.publish_events(&events, message, shutdown).await {
            return Err(None);
        }
        count_outcomes(progress.iter().map(|p| (record, p)));
        let (topic, partition) = partition_of(message);
        self.store_offsets(&BTreeMap::from([(
            (topic.clone(), partition),
            message.offset(),
        )]));
        // Records behind a long pause may have been deleted by retention
        // before they were applied: then going on would skip them. Stop
        // here, loudly, for someone to look (the topic's retention is also
        // how far the consumers may fall behind).
        let first_kept = self
            .consumer
            .fetch_watermarks(&topic, partition, Duration::from_secs(5))
            .map(|(low, _)| low);
        if let Ok(low) = first_kept {
            if low > message.offset() + 1 {
                let text = format!(
                    "offsets {}..{low} were deleted by the topic's retention before they were applied",
                    message.offset() + 1
                );
                tracing::error!(topic, partition, "{text}");
                return problem(text);
            }
        }
        let resume_at = Offset::Offset(message.offset() + 1);
        if let Err(e) = self
            .consumer
            .seek(&topic, partition, resume_at, Duration::from_secs(5))
        {
            return problem(format!(
                "could not seek the partition past the paused record: {e}"
            ));
        }
        if let Err(e) = self.consumer.resume(&one_partition(&topic, partition)) {
            return problem(format!("could not resume the partition: {e}"));
        }
        Ok(())
    }

    /// Forgets the paused partitions a rebalance moved: their new owner (or
    /// this consumer, given them again) reads them from the last commit.
    pub(super) fn forget_moved(&self, paused: &mut Paused) {
        let moved = std::mem::take(&mut *self.moved.lock().expect("rebalance lock"));
        if paused.is_empty() {
            return;
        }
        for (topic, partition) in moved {
            let key = (topic.clone(), partition);
            if paused.remove(&key).is_none() {
                continue;
            }
            self.health
                .clear(&Cause::Partition(topic.clone(), partition));
            // Given back to this consumer, it must not stay paused.
            let _ = self.consumer.resume(&one_partition(&topic, partition));
            tracing::info!(
                topic,
                partition,
                "a paused partition moved in a rebalance; it is read again from its last commit"
            );
        }
    }
}
