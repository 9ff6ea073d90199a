//! How far the consumers are behind the API: the records of the topic that
//! the group has not stored yet, read from Kafka a few times a second. The
//! API sheds load (503, nothing claimed) while it is over its bound, so a
//! 202's outcome never goes stale without limit: a client would get its
//! 202 at once and its outcome many seconds later, and every balance read
//! in between would be that old.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaResult;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

/// How often the backlog is read.
const READ_EVERY: Duration = Duration::from_millis(250);
/// How long one read of Kafka may take.
const READ_TIMEOUT: Duration = Duration::from_secs(2);
/// `records` while the backlog is not known (Kafka not answering, or not
/// watched): nothing is shed on a guess.
const UNKNOWN: i64 = -1;

/// The records of `topic` past what `group` stored, over every partition
/// (a partition the group never stored counts from its first record).
/// `consumer` must have `group.id` set to `group`; it need not subscribe.
pub fn group_backlog(consumer: &BaseConsumer, topic: &str, timeout: Duration) -> KafkaResult<i64> {
    let metadata = consumer.fetch_metadata(Some(topic), timeout)?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    let mut list = TopicPartitionList::new();
    for partition in &partitions {
        list.add_partition(topic, *partition);
    }
    let committed = consumer.committed_offsets(list, timeout)?;
    let mut backlog = 0;
    for partition in partitions {
        let (low, high) = consumer.fetch_watermarks(topic, partition, timeout)?;
        let stored = match committed
            .find_partition(topic, partition)
            .map(|e| e.offset())
        {
            Some(Offset::Offset(offset)) => offset,
            _ => low,
        };
        backlog += (high - stored).max(0);
    }
    Ok(backlog)
}

/// The consumers' backlog as last read, and the bound the API keeps it
/// under. Cheap to clone; the reader stops once every clone is dropped.
#[derive(Clone)]
pub struct Backlog {
    records: Arc<AtomicI64>,
    /// Shed at or above this many records; 0: never.
    max_records: u64,
}

impl Backlog {
    /// Not watched: nothing is ever shed.
    pub fn unwatched() -> Self {
        Self {
            records: Arc::new(AtomicI64::new(UNKNOWN)),
            max_records: 0,
        }
    }

    /// Reads the backlog of `group` on `topic` in a thread of its own, a few
    /// times a second, for as long as a clone of the answer lives. A bound
    /// of 0 watches nothing.
    pub fn watch(brokers: &str, group: &str, topic: &str, max_records: u64) -> KafkaResult<Self> {
        let backlog = Self {
            max_records,
            ..Self::unwatched()
        };
        if max_records == 0 {
            return Ok(backlog);
        }
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .create()?;
        let records = Arc::downgrade(&backlog.records);
        let topic = topic.to_owned();
        std::thread::Builder::new()
            .name("txengine-backlog".into())
            .spawn(move || read_until_dropped(&consumer, &topic, &records))
            .map_err(|e| rdkafka::error::KafkaError::ClientCreation(e.to_string()))?;
        Ok(backlog)
    }

    /// The backlog as last read, in records; `None` when not known.
    pub fn records(&self) -> Option<u64> {
        u64::try_from(self.records.load(Ordering::Relaxed)).ok()
    }

    /// The bound (0: none).
    pub fn max_records(&self) -> u64 {
        self.max_records
    }

    /// True while the backlog is known and at or over its bound: the API
    /// takes nothing new until the consumers catch up.
    pub fn is_over(&self) -> bool {
        self.max_records > 0
            && self
                .records()
                .is_some_and(|records| records >= self.max_records)
    }
}

fn read_until_dropped(consumer: &BaseConsumer, topic: &str, records: &Weak<AtomicI64>) {
    loop {
        let read = group_backlog(consumer, topic, READ_TIMEOUT);
        let Some(records) = records.upgrade() else {
            return;
        };
        let value = match read {
            Ok(backlog) => {
                metrics::gauge!("txengine_backlog_records").set(backlog as f64);
                backlog
            }
            Err(e) => {
                tracing::debug!(error = %e, "the consumers' backlog could not be read");
                UNKNOWN
            }
        };
        records.store(value, Ordering::Relaxed);
        drop(records);
        std::thread::sleep(READ_EVERY);
    }
}
