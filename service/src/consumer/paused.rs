//! Partitions held still on one record each: paused in Kafka so the other
//! partitions go on, their record retried until it applies (a record Redis
//! refuses), or kept until a newer build takes the partition (a record of a
//! newer wire version). No offset of a paused partition moves past its
//! record.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use rdkafka::message::{Message, OwnedMessage};
use tokio::time::Instant;

use super::context::Partition;
use crate::wire::Record;

/// The record a partition is paused on.
pub(super) struct PausedOn {
    pub message: OwnedMessage,
    /// `None` for a record this build cannot read: nothing to retry.
    pub record: Option<Record>,
    pub retry_at: Instant,
    pub backoff: Duration,
}

/// The partitions this consumer holds paused.
#[derive(Default)]
pub(super) struct Paused(HashMap<Partition, PausedOn>);

pub(super) fn partition_of(message: &OwnedMessage) -> Partition {
    (message.topic().to_owned(), message.partition())
}

impl Paused {
    /// True when `message` is at or after the record its partition is
    /// paused on: it is read again from Kafka once the partition resumes,
    /// so it is skipped now. Records before it are not held.
    pub(super) fn holds(&self, message: &OwnedMessage) -> bool {
        self.0
            .get(&partition_of(message))
            .is_some_and(|on| message.offset() >= on.message.offset())
    }

    /// Pauses a partition on `on`, or on an earlier record than the one it
    /// was paused on (the later one is read again after the earlier).
    pub(super) fn insert(&mut self, on: PausedOn) {
        let partition = partition_of(&on.message);
        if self
            .0
            .get(&partition)
            .is_none_or(|paused| on.message.offset() < paused.message.offset())
        {
            self.0.insert(partition, on);
        }
    }

    pub(super) fn remove(&mut self, partition: &Partition) -> Option<PausedOn> {
        self.0.remove(partition)
    }

    pub(super) fn get_mut(&mut self, partition: &Partition) -> Option<&mut PausedOn> {
        self.0.get_mut(partition)
    }

    pub(super) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Partitions whose record is due for another try.
    pub(super) fn due(&self, now: Instant) -> Vec<Partition> {
        let mut due: Vec<Partition> = self
            .0
            .iter()
            .filter(|(_, on)| on.record.is_some() && on.retry_at <= now)
            .map(|(partition, _)| partition.clone())
            .collect();
        due.sort();
        due
    }

    /// When the next try is due, if any record can be tried again.
    pub(super) fn next_retry(&self) -> Option<Instant> {
        self.0
            .values()
            .filter(|on| on.record.is_some())
            .map(|on| on.retry_at)
            .min()
    }
}

/// The offset to store per partition: the last of the batch's messages
/// whose work is `done` (applied, or sent to the DLQ) with every message
/// of that partition before it in the batch done too. A message not done
/// (paused on, held behind a pause, skipped) stops its partition there.
pub(super) fn offsets_to_store(
    batch: &[OwnedMessage],
    done: &[&OwnedMessage],
) -> BTreeMap<Partition, i64> {
    let done: HashSet<(&str, i32, i64)> = done
        .iter()
        .map(|m| (m.topic(), m.partition(), m.offset()))
        .collect();
    let mut last: BTreeMap<Partition, i64> = BTreeMap::new();
    let mut blocked: HashSet<Partition> = HashSet::new();
    // A batch holds each partition's messages in offset order.
    for message in batch {
        let partition = partition_of(message);
        if blocked.contains(&partition) {
            continue;
        }
        if done.contains(&(message.topic(), message.partition(), message.offset())) {
            last.insert(partition, message.offset());
        } else {
            blocked.insert(partition);
        }
    }
    last
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::Timestamp;

    fn message(partition: i32, offset: i64) -> OwnedMessage {
        OwnedMessage::new(
            None,
            None,
            "t".into(),
            Timestamp::NotAvailable,
            partition,
            offset,
            None,
        )
    }

    #[test]
    fn no_offset_moves_past_a_message_whose_work_is_not_done() {
        let batch = [
            message(0, 7),
            message(1, 3),
            message(0, 9),
            message(1, 4),
            message(1, 5),
            message(1, 6),
        ];
        // 1/5 is paused on: not done; 1/6 is done (say, dead-lettered).
        let done: Vec<&OwnedMessage> = [0, 1, 2, 3, 5].iter().map(|i| &batch[*i]).collect();
        let offsets = offsets_to_store(&batch, &done);
        assert_eq!(offsets[&("t".to_owned(), 0)], 9);
        assert_eq!(
            offsets[&("t".to_owned(), 1)],
            4,
            "not 5 or 6: 5 is not done"
        );
        // Nothing done in a partition: nothing stored for it.
        let offsets = offsets_to_store(&batch, &done[..1]);
        assert_eq!(offsets.len(), 1);
    }

    #[test]
    fn a_pause_holds_its_record_and_what_follows_never_what_precedes() {
        let mut paused = Paused::default();
        let on = |offset| PausedOn {
            message: message(1, offset),
            record: None,
            retry_at: Instant::now(),
            backoff: Duration::ZERO,
        };
        paused.insert(on(5));
        assert!(paused.holds(&message(1, 5)) && paused.holds(&message(1, 8)));
        assert!(!paused.holds(&message(1, 3)), "before the paused record");
        assert!(!paused.holds(&message(0, 8)), "another partition");
        paused.insert(on(7));
        assert!(
            !paused.holds(&message(1, 3)) && paused.holds(&message(1, 5)),
            "the earlier pause stays"
        );
        paused.insert(on(2));
        assert!(
            paused.holds(&message(1, 3)),
            "an earlier culprit takes its place"
        );
        assert_eq!(
            paused.next_retry(),
            None,
            "nothing to retry in a newer record"
        );
        assert!(paused.due(Instant::now()).is_empty());
    }
}
