//! What holds the consumer back, as `/ready` and the metrics show it.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// Something that keeps offsets from moving: a record the consumer cannot
/// apply (its partition is paused until it applies), or a wait that holds
/// every partition (replicas behind, Kafka not taking a saga's next steps
/// or a poison record).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct Stall {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    /// The transaction id of the record; empty when what holds the
    /// partition is not one record (replicas behind with a batch's writes).
    pub id: String,
    /// What went wrong, without the record's accounts or amounts (those
    /// are in the log).
    pub error: String,
    /// When it began (ms since the epoch): kept while the same cause holds.
    pub since_ms: u64,
}

impl Stall {
    /// A stall at `message`'s position.
    pub(super) fn at(message: &rdkafka::message::OwnedMessage, id: &str, error: String) -> Self {
        use rdkafka::Message;
        Self {
            topic: message.topic().to_owned(),
            partition: message.partition(),
            offset: message.offset(),
            id: id.to_owned(),
            error,
            since_ms: crate::wire::now_ms(),
        }
    }
}

/// Why the consumer is held, one entry each.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Cause {
    /// One partition, paused on a record.
    Partition(String, i32),
    /// Replicas do not have the batch's writes yet (`WAIT`).
    Replicas,
    /// Kafka does not take the next steps of sagas.
    NextSteps,
    /// Kafka does not take a poison record into the DLQ.
    DeadLetter,
    /// Kafka does not take the outcome events.
    OutcomeEvents,
}

/// The consumer's health as `/ready` shows it; shared with the HTTP side.
#[derive(Clone, Default)]
pub struct ConsumerHealth(Arc<Mutex<BTreeMap<Cause, Stall>>>);

impl ConsumerHealth {
    /// The first thing the consumer is held by, if any (partitions first).
    pub fn stall(&self) -> Option<Stall> {
        self.0.lock().expect("health lock").values().next().cloned()
    }

    /// Everything it is held by.
    pub fn stalls(&self) -> Vec<Stall> {
        self.0
            .lock()
            .expect("health lock")
            .values()
            .cloned()
            .collect()
    }

    /// Shows `stall` for `cause`; true if it was not shown already as is.
    pub(super) fn set(&self, cause: Cause, mut stall: Stall) -> bool {
        let mut stalls = self.0.lock().expect("health lock");
        if let Some(shown) = stalls.get(&cause) {
            stall.since_ms = shown.since_ms;
        }
        let new = stalls.get(&cause) != Some(&stall);
        stalls.insert(cause, stall);
        Self::publish(&stalls);
        new
    }

    /// Ends the stall of `cause`; true if there was one.
    pub(super) fn clear(&self, cause: &Cause) -> bool {
        let mut stalls = self.0.lock().expect("health lock");
        let was = stalls.remove(cause).is_some();
        Self::publish(&stalls);
        was
    }

    fn publish(stalls: &BTreeMap<Cause, Stall>) {
        let partitions = stalls
            .keys()
            .filter(|cause| matches!(cause, Cause::Partition(..)))
            .count();
        metrics::gauge!("txengine_consumer_stalled").set(if stalls.is_empty() { 0.0 } else { 1.0 });
        metrics::gauge!("txengine_consumer_stalled_partitions").set(partitions as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stall(partition: i32, error: &str) -> Stall {
        Stall {
            topic: "t".into(),
            partition,
            offset: 1,
            id: String::new(),
            error: error.into(),
            since_ms: 7,
        }
    }

    #[test]
    fn each_cause_is_shown_until_cleared_partitions_first() {
        let health = ConsumerHealth::default();
        assert!(health.set(Cause::Replicas, stall(0, "replicas")));
        assert!(
            !health.set(Cause::Replicas, stall(0, "replicas")),
            "shown already"
        );
        assert!(health.set(Cause::Partition("t".into(), 3), stall(3, "refused")));
        assert_eq!(health.stall().unwrap().error, "refused");
        assert_eq!(health.stalls().len(), 2);
        assert!(health.clear(&Cause::Partition("t".into(), 3)));
        assert!(!health.clear(&Cause::Partition("t".into(), 3)));
        assert_eq!(health.stall().unwrap().error, "replicas");
        assert!(health.clear(&Cause::Replicas));
        assert_eq!(health.stall(), None);
    }

    /// A stall shown again (each retry of the held record) keeps the time
    /// it began; once cleared, the next one begins anew.
    #[test]
    fn a_stall_keeps_when_it_began_until_cleared() {
        let health = ConsumerHealth::default();
        health.set(Cause::Replicas, stall(0, "replicas"));
        let later = Stall {
            since_ms: 99,
            ..stall(0, "replicas")
        };
        assert!(!health.set(Cause::Replicas, later.clone()), "shown already");
        assert_eq!(health.stall().unwrap().since_ms, 7);
        health.clear(&Cause::Replicas);
        health.set(Cause::Replicas, later);
        assert_eq!(health.stall().unwrap().since_ms, 99);
    }
}
