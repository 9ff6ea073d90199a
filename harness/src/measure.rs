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
    let timeout = Duration::from_secs(5);
    let metadata = consumer.fetch_metadata(Some(topic), timeout)?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    let mut tpl = TopicPartitionList::new();
    for p in &partitions {
        tpl.add_partition(topic, *p);
    }
    let committed = consumer.committed_offsets(tpl, timeout)?;
    let mut lag = 0;
    for p in partitions {
        let (low, high) = consumer.fetch_watermarks(topic, p, timeout)?;
        let done = match committed.find_partition(topic, p).map(|e| e.offset()) {
            Some(Offset::Offset(o)) => o,
            _ => low,
        };
        lag += (high - done).max(0);
    }
    Ok(lag)
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

/// What one Lua script cost Redis in a sample, read from Redis's slow log
/// with every command logged: the time of each call as Redis measured it
/// (its own commands included; not the AOF's fsync, which Redis does once
/// per event loop for everything written in it).
#[derive(Debug, Clone, Serialize)]
pub struct ScriptCost {
    pub script: String,
    pub calls: u64,
    /// Keys per call on average (a batch script's items).
    pub keys_per_call: f64,
    pub us_per_call: f64,
    /// Of the sample's transactions: this script's µs for each one.
    pub us_per_transaction: f64,
}

/// Logs every command (or, `on` false, only those over 10 ms, Redis's
/// default) in the slow log of each of `redis_urls`, emptied first.
pub async fn log_every_command(redis_urls: &[String], on: bool) -> anyhow::Result<()> {
    for url in redis_urls {
        let client = redis::Client::open(url.as_str())?;
        let mut conn = client.get_multiplexed_async_connection().await?;
        let threshold = if on { "0" } else { "10000" };
        redis::cmd("CONFIG")
            .arg("SET")
            .arg("slowlog-max-len")
            .arg(if on { "500000" } else { "128" })
            .arg("slowlog-log-slower-than")
            .arg(threshold)
            .query_async::<()>(&mut conn)
            .await?;
        if on {
            redis::cmd("SLOWLOG")
                .arg("RESET")
                .query_async::<()>(&mut conn)
                .await?;
        }
    }
    Ok(())
}

/// The EVALSHA calls in the slow logs of `redis_urls`, summed by script
/// (`hashes`: name and SHA1 of each), over `transactions` accepted in the
/// sample; most costly first.
pub async fn script_costs(
    redis_urls: &[String],
    hashes: &[(&'static str, String)],
    transactions: u64,
) -> anyhow::Result<Vec<ScriptCost>> {
    use redis::Value;
    let text = |value: &Value| match value {
        Value::BulkString(bytes) => String::from_utf8_lossy(bytes).into_owned(),
        Value::SimpleString(text) => text.clone(),
        _ => String::new(),
    };
    // name -> (calls, keys, µs)
    let mut sums: BTreeMap<&'static str, (u64, u64, u64)> = BTreeMap::new();
    for url in redis_urls {
        let client = redis::Client::open(url.as_str())?;
        let mut conn = client.get_multiplexed_async_connection().await?;
        // Hundreds of thousands of entries take a while to send.
        conn.set_response_timeout(Duration::from_secs(120));
        let entries: Vec<Value> = redis::cmd("SLOWLOG")
            .arg("GET")
            .arg(-1)
            .query_async(&mut conn)
            .await?;
        for entry in entries {
            let Value::Array(fields) = entry else {
                continue;
            };
            let (Some(Value::Int(us)), Some(Value::Array(args))) = (fields.get(2), fields.get(3))
            else {
                continue;
            };
            if args.first().map(text).as_deref() != Some("EVALSHA") {
                continue;
            }
            let sha = args.get(1).map(text).unwrap_or_default();
            let keys: u64 = args
                .get(2)
                .map(text)
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            if let Some((name, _)) = hashes.iter().find(|(_, hash)| *hash == sha) {
                let sum = sums.entry(name).or_default();
                *sum = (sum.0 + 1, sum.1 + keys, sum.2 + *us as u64);
            }
        }
    }
    let mut costs: Vec<ScriptCost> = sums
        .into_iter()
        .map(|(name, (calls, keys, us))| ScriptCost {
            script: name.to_owned(),
            calls,
            keys_per_call: keys as f64 / calls as f64,
            us_per_call: us as f64 / calls as f64,
            us_per_transaction: us as f64 / transactions.max(1) as f64,
        })
        .collect();
    costs.sort_by(|a, b| b.us_per_transaction.total_cmp(&a.us_per_transaction));
    Ok(costs)
}
