//! The consumer's librdkafka context: lag and rebalance metrics, commit
//! logs, and the partitions a rebalance took or gave, for the loop to forget
//! what it held of them.

use std::sync::{Arc, Mutex};

use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::TopicPartitionList;

/// A topic and a partition of it.
pub(super) type Partition = (String, i32);

/// Publishes librdkafka's statistics as metrics (lag per assigned
/// partition, rebalances) and notes every partition a rebalance moved.
#[derive(Default)]
pub struct LagReporter {
    moved: Arc<Mutex<Vec<Partition>>>,
}

impl LagReporter {
    /// A handle on the partitions moved by rebalances since the last take.
    pub(super) fn moved(&self) -> Arc<Mutex<Vec<Partition>>> {
        self.moved.clone()
    }

    fn note_moved(&self, partitions: &TopicPartitionList) {
        let mut moved = self.moved.lock().expect("rebalance lock");
        moved.extend(
            partitions
                .elements()
                .iter()
                .map(|e| (e.topic().to_owned(), e.partition())),
        );
    }
}

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
                self.note_moved(partitions);
                tracing::info!(partitions = %partition_list(partitions), "partitions assigned")
            }
            Rebalance::Revoke(partitions) => {
                self.note_moved(partitions);
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
