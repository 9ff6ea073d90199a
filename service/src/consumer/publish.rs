//! What the consumer itself publishes: the next steps of sagas (to the
//! topic), the outcome events (to the outcomes topic) and poison records
//! (to the DLQ). All are retried until Kafka has them, since no offset may
//! move past them before; while Kafka refuses, the stall shows in `/ready`.

use std::time::Duration;

use rdkafka::message::{Header, Message, OwnedHeaders, OwnedMessage};
use rdkafka::producer::FutureRecord;
use rdkafka::util::Timeout;
use tokio::sync::watch;

use super::health::{Cause, Stall};
use super::{back_off, TxConsumer, RETRY_MIN};
use crate::events::OutcomeEvent;
use crate::wire::Record;

/// Header carrying why a record went to the DLQ.
pub const DLQ_REASON_HEADER: &str = "txengine-dlq-reason";

impl TxConsumer {
    /// Publishes the next steps of sagas to the topic, keyed by the account
    /// each runs on, and waits until the broker has them all (acks=all);
    /// retried until it does or shutdown comes (false). `at` is the first
    /// record of the batch, for `/ready`.
    pub(super) async fn publish_steps(
        &self,
        steps: &[&Record],
        at: &OwnedMessage,
        shutdown: &watch::Receiver<bool>,
    ) -> bool {
        let records: Vec<(String, Vec<u8>)> = steps
            .iter()
            .map(|record| (record.key().as_str().to_owned(), record.encode()))
            .collect();
        let sent = self
            .publish_all(
                &self.topic,
                &records,
                Cause::NextSteps,
                "the next steps of sagas",
                at,
                shutdown,
            )
            .await;
        if sent {
            for record in steps {
                let step = record
                    .saga
                    .as_ref()
                    .map_or("none", |step| step.kind().as_str());
                metrics::counter!("txengine_saga_steps_published_total", "step" => step)
                    .increment(1);
            }
        }
        sent
    }

    /// Publishes the batch's outcome events to the outcomes topic, keyed by
    /// account, and waits until the broker has them all; as
    /// [`TxConsumer::publish_steps`]. A repeat (a redelivered batch, or a
    /// retry after some landed) publishes an event again: readers
    /// deduplicate by `(id, status)`.
    pub(super) async fn publish_events(
        &self,
        events: &[OutcomeEvent],
        at: &OwnedMessage,
        shutdown: &watch::Receiver<bool>,
    ) -> bool {
        let Some(topic) = &self.outcomes_topic else {
            return true;
        };
        let records: Vec<(String, Vec<u8>)> = events
            .iter()
            .map(|event| (event.key().as_str().to_owned(), event.encode()))
            .collect();
        let sent = self
            .publish_all(
                topic,
                &records,
                Cause::OutcomeEvents,
                "the outcome events",
                at,
                shutdown,
            )
            .await;
        if sent {
            for event in events {
                metrics::counter!("txengine_outcome_events_total", "status" => event.status.as_str())
                    .increment(1);
            }
        }
        sent
    }

    /// Sends `(key, payload)` records to `topic` and waits until the broker
    /// has them all (acks=all); retried until it does or shutdown comes
    /// (false). `cause` and `what` name the stall in `/ready`; `at` is the
    /// first record of the batch.
    async fn publish_all(
        &self,
        topic: &str,
        records: &[(String, Vec<u8>)],
        cause: Cause,
        what: &str,
        at: &OwnedMessage,
        shutdown: &watch::Receiver<bool>,
    ) -> bool {
        if records.is_empty() {
            return true;
        }
        let mut backoff = RETRY_MIN;
        loop {
            let sends = records.iter().map(|(key, payload)| async move {
                self.producer
                    .send(
                        FutureRecord::to(topic).key(key).payload(payload),
                        Timeout::After(Duration::from_secs(5)),
                    )
                    .await
                    .map_err(|(e, _)| e)
            });
            let failed = futures_util::future::join_all(sends)
                .await
                .into_iter()
                .filter_map(Result::err)
                .next();
            let Some(error) = failed else {
                if self.health.clear(&cause) {
                    tracing::info!(topic, "kafka took {what}; going on");
                }
                return true;
            };
            // The ones that did land are published again: saga steps are
            // idempotent, and events are deduplicated by their readers.
            let stall = Stall::at(at, "", format!("kafka does not take {what}: {error}"));
            if self.health.set(cause.clone(), stall) {
                metrics::counter!("txengine_consumer_stalls_total").increment(1);
            }
            tracing::warn!(error = %error, topic, records = records.len(), retry_in_ms = backoff.as_millis() as u64, "publishing {what} failed; retrying");
            if !back_off(&mut backoff, shutdown).await {
                return false;
            }
        }
    }

    /// Sends an undecodable record to the DLQ, retrying until the broker has
    /// it (its offset must not be stored before that) or shutdown comes
    /// (false: the record is read again by the next owner of its partition).
    pub(super) async fn dead_letter(
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
        let mut backoff = RETRY_MIN;
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
                    if self.health.clear(&Cause::DeadLetter) {
                        tracing::info!("the DLQ took the poison record; going on");
                    }
                    return true;
                }
                Err((e, _)) => {
                    let stall = Stall::at(
                        message,
                        "",
                        format!("kafka does not take a poison record into the DLQ: {e}"),
                    );
                    if self.health.set(Cause::DeadLetter, stall) {
                        metrics::counter!("txengine_consumer_stalls_total").increment(1);
                    }
                    tracing::error!(error = %e, retry_in_ms = backoff.as_millis() as u64, "DLQ publish failed; retrying");
                    if !back_off(&mut backoff, shutdown).await {
                        return false;
                    }
                }
            }
        }
    }
}
