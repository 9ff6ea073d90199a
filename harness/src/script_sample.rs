//! Redis's own time per Lua script, sampled from its slow log while a load
//! runs: every command is logged (`slowlog-log-slower-than 0`), and the log
//! is read and emptied in one transaction every [`DRAIN_EVERY`], so no read
//! is larger than what a fraction of a second of load logs and no entry is
//! lost between a read and its reset. The log's length stays bounded
//! ([`MAX_LOG_LEN`]); entries a full log dropped before a drain (the ids it
//! skipped) are counted and reported, never guessed.

use std::collections::BTreeMap;
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Value};
use serde::Serialize;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How often the log is read and emptied.
const DRAIN_EVERY: Duration = Duration::from_millis(200);
/// The slow log's length while sampling: about 100,000 commands a second
/// between two drains before any is dropped.
const MAX_LOG_LEN: u64 = 20_000;
/// How long one command of the sampler may take (a drain of a full log).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

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

/// Calls, keys and µs of each script seen so far, and the log entries
/// dropped before they could be read.
#[derive(Default)]
struct Sums {
    by_script: BTreeMap<&'static str, (u64, u64, u64)>,
    dropped: u64,
}

/// A sample in progress: [`ScriptSampler::start`], drive the load, then
/// [`ScriptSampler::finish`].
pub struct ScriptSampler {
    connections: Vec<MultiplexedConnection>,
    stop: watch::Sender<bool>,
    task: JoinHandle<anyhow::Result<Sums>>,
}

impl ScriptSampler {
    /// Logs every command on each of `redis_urls` (emptied first) and reads
    /// the logs in the background; `hashes` name the scripts (name, SHA1).
    pub async fn start(
        redis_urls: &[String],
        hashes: Vec<(&'static str, String)>,
    ) -> anyhow::Result<Self> {
        let mut connections = Vec::new();
        for url in redis_urls {
            let config = AsyncConnectionConfig::new()
                .set_connection_timeout(Some(Duration::from_secs(5)))
                .set_response_timeout(Some(COMMAND_TIMEOUT));
            let client = redis::Client::open(url.as_str())?;
            connections.push(
                client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await?,
            );
        }
        for conn in &mut connections {
            set_log(conn, true).await?;
        }
        let (stop, mut stopped) = watch::channel(false);
        let mut drained = connections.clone();
        let task = tokio::spawn(async move {
            let mut sums = Sums::default();
            let mut last_ids = vec![None; drained.len()];
            loop {
                let stop = tokio::time::timeout(DRAIN_EVERY, stopped.changed())
                    .await
                    .is_ok();
                for (conn, last_id) in drained.iter_mut().zip(&mut last_ids) {
                    drain(conn, &hashes, last_id, &mut sums).await?;
                }
                if stop {
                    return Ok(sums);
                }
            }
        });
        Ok(Self {
            connections,
            stop,
            task,
        })
    }

    /// Stops logging every command (the log back to Redis's defaults) and
    /// answers the cost of each script over `transactions`, most costly
    /// first, and how many log entries were dropped unread.
    pub async fn finish(mut self, transactions: u64) -> anyhow::Result<(Vec<ScriptCost>, u64)> {
        let _ = self.stop.send(true);
        let sums = self.task.await?;
        for conn in &mut self.connections {
            set_log(conn, false).await?;
        }
        let sums = sums?;
        let mut costs: Vec<ScriptCost> = sums
            .by_script
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
        Ok((costs, sums.dropped))
    }
}

/// Every command in the slow log (`on`), or Redis's defaults again (over
/// 10 ms, 128 entries); the log emptied either way.
async fn set_log(conn: &mut MultiplexedConnection, on: bool) -> anyhow::Result<()> {
    redis::cmd("SLOWLOG")
        .arg("RESET")
        .query_async::<()>(conn)
        .await?;
    redis::cmd("CONFIG")
        .arg("SET")
        .arg("slowlog-max-len")
        .arg(if on { MAX_LOG_LEN } else { 128 })
        .arg("slowlog-log-slower-than")
        .arg(if on { 0 } else { 10_000 })
        .query_async::<()>(conn)
        .await?;
    Ok(())
}

/// Reads and empties one node's log in one transaction, adding its EVALSHA
/// calls to `sums`; `last_id` is the newest entry id read before, to count
/// the entries the log dropped in between.
async fn drain(
    conn: &mut MultiplexedConnection,
    hashes: &[(&'static str, String)],
    last_id: &mut Option<i64>,
    sums: &mut Sums,
) -> anyhow::Result<()> {
    let (entries,): (Vec<Value>,) = redis::pipe()
        .atomic()
        .cmd("SLOWLOG")
        .arg("GET")
        .arg(-1)
        .cmd("SLOWLOG")
        .arg("RESET")
        .ignore()
        .query_async(conn)
        .await?;
    let text = |value: &Value| match value {
        Value::BulkString(bytes) => String::from_utf8_lossy(bytes).into_owned(),
        Value::SimpleString(text) => text.clone(),
        _ => String::new(),
    };
    // Newest first.
    let mut ids = entries.iter().filter_map(|entry| match entry {
        Value::Array(fields) => match fields.first() {
            Some(Value::Int(id)) => Some(*id),
            _ => None,
        },
        _ => None,
    });
    let (newest, oldest) = (ids.clone().next(), ids.next_back());
    // Only a full log drops entries (ids also go to the drain's own
    // commands, which the reset empties unread).
    let full = entries.len() as u64 >= MAX_LOG_LEN;
    if let (true, Some(before), Some(oldest)) = (full, *last_id, oldest) {
        sums.dropped += (oldest - before - 1).max(0) as u64;
    }
    *last_id = newest.or(*last_id);
    for entry in &entries {
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
            let sum = sums.by_script.entry(name).or_default();
            *sum = (sum.0 + 1, sum.1 + keys, sum.2 + *us as u64);
        }
    }
    Ok(())
}
