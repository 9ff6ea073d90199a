//! Partitions held still on one record each: paused in Kafka so the other
//! partitions go on, their record retried until it applies (a record Redis
//! refuses), or kept until a newer build takes the partition (a record of a
//! newer wire version). No offset of a paused partition moves past its
//! record.

use std::collections::{BTreeMap, HashMap};
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
    /// True when `message`'s partition is paused: the message is read again
    /// from Kafka once the partition resumes, so it is skipped now.
    pub fn holds(&self, message: &OwnedMessage) -> bool {
        self.0.contains_key(&partition_of(message))
    }

    pub fn insert(&mut self, on: PausedOn) {
        self.0.insert(partition_of(&on.message), on);
    }

    pub fn remove(&mut self, partition: &Partition) -> Option<PausedOn> {
        self.0.remove(partition)
    }

    pub fn get_mut(&mut self, partition: &Partition) -> Option<&mut PausedOn> {
        self.0.get_mut(partition)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Partitions whose record is due for another try.
    pub fn due(&self, now: Instant) -> Vec<Partition> {
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
    pub fn next_retry(&self) -> Option<Instant> {
        self.0
            .values()
            .filter(|on| on.record.is_some())
            .map(|on| on.retry_at)
            .min()
    }
}

/// The offset to store per partition for the messages that are `done`
/// (applied, or sent to the DLQ): the last of them, but never the record
/// a partition is paused on or anything after it.
pub(super) fn offsets_to_store(
    done: &[&OwnedMessage],
    paused: &Paused,
) -> BTreeMap<Partition, i64> {
    let mut last: BTreeMap<Partition, i64> = BTreeMap::new();
    for message in done {
        let partition = partition_of(message);
        if let Some(on) = paused.0.get(&partition) {
            if message.offset() >= on.message.offset() {
                continue;
            }
        }
        let entry = last.entry(partition).or_insert(message.offset());
        *entry = (*entry).max(message.offset());
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
    fn no_offset_moves_to_or_past_a_paused_record() {
        let mut paused = Paused::default();
        paused.insert(PausedOn {
            message: message(1, 5),
            record: None,
            retry_at: Instant::now(),
            backoff: Duration::ZERO,
        });
        let done = [
            message(0, 7),
            message(0, 9),
            message(1, 3),
            message(1, 4),
            message(1, 6),
        ];
        let done: Vec<&OwnedMessage> = done.iter().collect();
        let offsets = offsets_to_store(&done, &paused);
        assert_eq!(offsets[&("t".to_owned(), 0)], 9);
        assert_eq!(offsets[&("t".to_owned(), 1)], 4, "not 5 or 6: 5 is paused");
        assert!(paused.holds(&message(1, 8)) && !paused.holds(&message(0, 8)));
        assert_eq!(
            paused.next_retry(),
            None,
            "nothing to retry in a newer record"
        );
        assert!(paused.due(Instant::now()).is_empty());
    }
}
