//! What runs measure and the probes that read Kafka, shared by the runners
//! (load, scenarios, stacks) and the judges (reports, invariants), so that
//! reading a result never depends on running load: the result types of a
//! run, the latency histogram, a consumer group's lag and drain, a topic's
//! size and records.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use anyhow::bail;
use hdrhistogram::Histogram;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde::Serialize;
use txengine::wire::Record;

/// Requests and latency within one second of a run.
#[derive(Debug, Clone, Serialize)]
pub struct SecondStats {
    pub second: usize,
    pub requests: usize,
    pub errors: usize,
    pub latency_ms_p50: f64,
    pub latency_ms_p99: f64,
}

/// What one run measured.
#[derive(Debug, Clone, Serialize)]
pub struct HttpResult {
    pub target: String,
    pub users: usize,
    pub seconds: usize,
    pub requests: usize,
    pub ok: usize,
    pub errors_by_kind: BTreeMap<String, usize>,
    /// Successful calls per second of the run.
    pub rps: f64,
    /// Transactions per request (1: `POST /transactions`; more: batches).
    pub batch: usize,
    /// Transactions accepted (or, for the bare limits, taken) per second:
    /// `rps` times the items of each request that were accepted.
    pub transactions_per_s: f64,
    pub latency_ms_p50: f64,
    /// `None` (null) where the generator does not give it (wrk prints
    /// 50/75/90/99, k6 no 90th by default).
    pub latency_ms_p90: Option<f64>,
    pub latency_ms_p95: Option<f64>,
    pub latency_ms_p99: f64,
    pub latency_ms_max: f64,
}

/// A histogram with 3 significant digits (0.1%), growing as needed: the
/// runs' latencies (µs) and the invariants' accept-to-applied times (ms).
pub fn precise_histogram() -> Histogram<u64> {
    Histogram::new(3).expect("3 significant digits is a valid precision")
}

/// Records not yet stored by `group` on `topic` (sum over partitions).
pub fn consumer_lag(brokers: &str, group: &str, topic: &str) -> anyhow::Result<i64> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()?;
    Ok(txengine::backlog::group_backlog(
        &consumer,
        topic,
        Duration::from_secs(5),
    )?)
}

/// Waits until the group has stored every record of the topic, printing
/// progress; returns how long it took.
pub async fn wait_drained(
    brokers: &str,
    group: &str,
    topic: &str,
    timeout: Duration,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let mut last_print = Instant::now();
    loop {
        let (b, g, t) = (brokers.to_owned(), group.to_owned(), topic.to_owned());
        // Right after a start the group coordinator may not be loaded yet
        // (NotCoordinator): that is "not known yet", not a failure.
        let lag = match tokio::task::spawn_blocking(move || consumer_lag(&b, &g, &t)).await? {
            Ok(lag) => lag,
            Err(e) if started.elapsed() < timeout => {
                tracing::debug!(error = %e, "lag not known yet");
                i64::MAX
            }
            Err(e) => return Err(e),
        };
        if lag == 0 {
            return Ok(started.elapsed());
        }
        anyhow::ensure!(
            started.elapsed() < timeout,
            "consumer lag still {lag} after {timeout:?}"
        );
        if last_print.elapsed() >= Duration::from_secs(2) {
            eprintln!(
                "  draining: lag {lag} records ({:.0}s)",
                started.elapsed().as_secs_f64()
            );
            last_print = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Records in `topic`, over every partition (high minus low watermarks).
pub fn topic_size(brokers: &str, topic: &str) -> anyhow::Result<i64> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()?;
    let timeout = Duration::from_secs(5);
    let metadata = consumer.fetch_metadata(Some(topic), timeout)?;
    let mut total = 0;
    for partition in metadata.topics().iter().flat_map(|t| t.partitions()) {
        let (low, high) = consumer.fetch_watermarks(topic, partition.id(), timeout)?;
        total += high - low;
    }
    Ok(total)
}

/// Every record of `topic`, read from the start of each partition to its
/// end as it was when asked.
pub fn read_topic(brokers: &str, topic: &str) -> anyhow::Result<Vec<OwnedMessage>> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set(
            "group.id",
            format!("reader-{}", uuid::Uuid::new_v4().simple()),
        )
        .set("enable.auto.commit", "false")
        .create()?;
    let timeout = Duration::from_secs(5);
    let metadata = consumer.fetch_metadata(Some(topic), timeout)?;
    let mut assignment = TopicPartitionList::new();
    let mut left: HashMap<i32, (i64, i64)> = HashMap::new();
    for partition in metadata.topics().iter().flat_map(|t| t.partitions()) {
        let (low, high) = consumer.fetch_watermarks(topic, partition.id(), timeout)?;
        if low < high {
            assignment.add_partition_offset(topic, partition.id(), Offset::Offset(low))?;
            left.insert(partition.id(), (low, high));
        }
    }
    consumer.assign(&assignment)?;
    let mut records = Vec::new();
    // A minute, and a second more for every 10,000 records (a backlog's
    // outcomes topic holds a million).
    let records_left: i64 = left.values().map(|(low, high)| high - low).sum();
    let allowed = Duration::from_secs(60 + records_left.max(0) as u64 / 10_000);
    let deadline = Instant::now() + allowed;
    while left.values().any(|(next, high)| next < high) {
        anyhow::ensure!(
            Instant::now() < deadline,
            "{topic} not read to its end in {allowed:?}"
        );
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(message)) => {
                if let Some((next, _)) = left.get_mut(&message.partition()) {
                    *next = message.offset() + 1;
                }
                records.push(message.detach());
            }
            // A broker that is down (a fault, until the run is healed) is
            // reported as it is tried; the others still serve the reads.
            Some(Err(KafkaError::MessageConsumption(
                RDKafkaErrorCode::BrokerTransportFailure | RDKafkaErrorCode::AllBrokersDown,
            ))) => {}
            Some(Err(e)) => bail!("reading {topic}: {e}"),
            None => {}
        }
    }
    Ok(records)
}

/// How many records of `topic` carry each transaction as the API publishes
/// it (saga steps and hold expiries, which the consumers' processes
/// publish, are not counted).
pub fn published_transactions(
    brokers: &str,
    topic: &str,
) -> anyhow::Result<HashMap<String, usize>> {
    let mut published = HashMap::new();
    for message in read_topic(brokers, topic)? {
        let Ok(record) = Record::decode(message.payload().unwrap_or_default()) else {
            continue;
        };
        let expiry = matches!(
            record.tx.movement,
            txengine::domain::Movement::Expire { .. }
        );
        if record.saga.is_none() && !expiry {
            *published.entry(record.tx.id.to_string()).or_insert(0) += 1;
        }
    }
    Ok(published)
}
