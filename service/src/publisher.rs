//! The Kafka producer side: idempotent, acks=all, with a bounded number of
//! publishes in flight (topics: [`crate::topics`]).

use std::sync::Arc;
use std::time::Duration;

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::ClientConfig;
use tokio::sync::Semaphore;

use crate::wire::Record;

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// Too many publishes are waiting for the broker; the caller should retry.
    #[error("the producer queue is full")]
    QueueFull,
    /// The broker did not acknowledge the record (down, timed out, refused).
    #[error("kafka did not acknowledge the record: {0}")]
    Kafka(#[from] KafkaError),
}

/// Publishes records and answers only once the broker has them.
#[derive(Clone)]
pub struct Publisher {
    producer: FutureProducer,
    topic: Arc<str>,
    in_flight: Arc<Semaphore>,
    max_in_flight: usize,
}

/// What every producer of the engine sets (the API's and the consumer's,
/// for sagas' next steps, the DLQ and outcome events): idempotent, so that
/// retries cannot duplicate or reorder a record within a partition, and
/// `acks=all`, so a record is acknowledged only once every in-sync replica
/// has it; a record not acknowledged within `message_timeout` fails.
pub fn producer_config(brokers: &str, message_timeout: Duration) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set(
            "message.timeout.ms",
            message_timeout.as_millis().to_string(),
        );
    config
}

pub struct PublisherSettings<'a> {
    pub brokers: &'a str,
    pub topic: &'a str,
    pub max_in_flight: usize,
    pub publish_timeout: Duration,
    pub linger: Duration,
}

impl Publisher {
    pub fn new(settings: PublisherSettings<'_>) -> Result<Self, KafkaError> {
        let producer: FutureProducer = producer_config(settings.brokers, settings.publish_timeout)
            .set("linger.ms", settings.linger.as_millis().to_string())
            .set("batch.num.messages", "10000")
            .set("compression.type", "none")
            // librdkafka's own queue is larger than our bound, so our
            // semaphore, not librdkafka, decides when to answer 503.
            .set(
                "queue.buffering.max.messages",
                (settings.max_in_flight * 2).max(1000).to_string(),
            )
            .create()?;
        Ok(Self {
            producer,
            topic: settings.topic.into(),
            in_flight: Arc::new(Semaphore::new(settings.max_in_flight)),
            max_in_flight: settings.max_in_flight,
        })
    }

    /// Publishes one record keyed by its checked account and waits for the
    /// broker's acknowledgement.
    pub async fn publish(&self, record: &Record) -> Result<(), PublishError> {
        let mut answers = self.publish_batch(std::slice::from_ref(record)).await;
        answers.pop().expect("one answer per record")
    }

    /// Publishes records together (each keyed by its checked account;
    /// librdkafka packs them into few produce requests) and waits for every
    /// acknowledgement: one answer per record, in order. Each takes a place
    /// in the in-flight bound; one past it is refused
    /// [`PublishError::QueueFull`] and never sent.
    pub async fn publish_batch(&self, records: &[Record]) -> Vec<Result<(), PublishError>> {
        let deliveries: Vec<_> = records
            .iter()
            .map(|record| {
                let sent = self
                    .in_flight
                    .clone()
                    .try_acquire_owned()
                    .map_err(|_| PublishError::QueueFull)
                    .and_then(|permit| {
                        let payload = record.encode();
                        let key = record.key().as_str();
                        self.producer
                            .send_result(FutureRecord::to(&self.topic).key(key).payload(&payload))
                            .map(|delivery| (permit, delivery))
                            .map_err(|(e, _)| refusal(e))
                    });
                async move {
                    let (permit, delivery) = sent?;
                    let delivered = delivery.await;
                    drop(permit);
                    match delivered {
                        Ok(Ok(_)) => Ok(()),
                        Ok(Err((e, _))) => Err(refusal(e)),
                        Err(_) => Err(PublishError::Kafka(KafkaError::Canceled)),
                    }
                }
            })
            .collect();
        metrics::gauge!("txengine_producer_in_flight").set(self.in_flight_count() as f64);
        let answers = futures_util::future::join_all(deliveries).await;
        metrics::gauge!("txengine_producer_in_flight").set(self.in_flight_count() as f64);
        answers
    }

    pub fn in_flight_count(&self) -> usize {
        self.max_in_flight - self.in_flight.available_permits()
    }

    /// True if a broker answers a metadata request for our topic in time.
    pub async fn ready(&self) -> bool {
        let producer = self.producer.clone();
        let topic = self.topic.clone();
        tokio::task::spawn_blocking(move || {
            producer
                .client()
                .fetch_metadata(Some(&topic), Duration::from_secs(1))
                .map(|m| m.topics().iter().any(|t| t.error().is_none()))
                .unwrap_or(false)
        })
        .await
        .unwrap_or(false)
    }

    /// Waits for every queued record to be delivered (shutdown).
    pub fn flush(&self, timeout: Duration) {
        if let Err(e) = self.producer.flush(timeout) {
            tracing::warn!(error = %e, "producer flush did not finish");
        }
    }
}

/// A full librdkafka queue is the caller's to retry (503), like our bound.
fn refusal(e: KafkaError) -> PublishError {
    match e {
        KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull) => PublishError::QueueFull,
        e => PublishError::Kafka(e),
    }
}
