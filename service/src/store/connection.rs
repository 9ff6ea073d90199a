//! One Redis or a Redis Cluster behind one connection type, a cluster
//! connection that is replaced when it keeps failing, and pipelines split
//! by slot.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use redis::{Cmd, Pipeline, RedisFuture, Value};

use super::{RedisTopology, StoreError};

/// One page of a SCAN for `pattern` from `cursor`.
fn scan_page(cursor: u64, pattern: &str) -> Cmd {
    let mut cmd = redis::cmd("SCAN");
    cmd.arg(cursor)
        .arg("MATCH")
        .arg(pattern)
        .arg("COUNT")
        .arg(1_000);
    cmd
}

/// Slots of a Redis Cluster.
const CLUSTER_SLOTS: u32 = 16_384;

/// The address of each master `CLUSTER NODES` lists (a master only
/// suspected down, `fail?`, still serves its slots), refused unless they
/// serve every slot between them: a SCAN of them then sees every key.
fn masters(nodes: &str) -> Result<Vec<(String, u16)>, StoreError> {
    let mut masters = Vec::new();
    let mut covered = 0;
    for line in nodes.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let (Some(address), Some(flags)) = (fields.get(1), fields.get(2)) else {
            continue;
        };
        let flags: Vec<&str> = flags.split(',').collect();
        if !flags.contains(&"master") || flags.contains(&"fail") {
            continue;
        }
        let unexpected = || StoreError::Unexpected(format!("CLUSTER NODES line {line}"));
        // Slots: `first-last` or one number; `[slot->-node]` marks a migration.
        for range in fields.iter().skip(8).filter(|r| !r.starts_with('[')) {
            let (first, last) = range.split_once('-').unwrap_or((range, range));
            let first: u32 = first.parse().map_err(|_| unexpected())?;
            let last: u32 = last.parse().map_err(|_| unexpected())?;
            covered += last + 1 - first;
        }
        // `host:port@cluster-bus-port`
        let (host, port) = address
            .split('@')
            .next()
            .and_then(|a| a.rsplit_once(':'))
            .ok_or_else(unexpected)?;
        masters.push((host.to_owned(), port.parse().map_err(|_| unexpected())?));
    }
    if covered != CLUSTER_SLOTS {
        return Err(StoreError::Unexpected(format!(
            "the reachable masters serve {covered} of {CLUSTER_SLOTS} slots: a scan would miss keys (try again once the cluster is whole)"
        )));
    }
    Ok(masters)
}

/// True for an error that says Redis could not be reached, did not answer
/// in time, or is moving (a cluster's redirect or state the client could
/// not follow: MOVED to a node it cannot reach, TRYAGAIN, CLUSTERDOWN):
/// worth retrying as is.
pub(super) fn is_transient(e: &redis::RedisError) -> bool {
    e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || matches!(
            e.code(),
            Some(
                "MOVED"
                    | "ASK"
                    | "TRYAGAIN"
                    | "CLUSTERDOWN"
                    | "MASTERDOWN"
                    | "LOADING"
                    | "READONLY"
            )
        )
}

/// A connection to one Redis, or to a Redis Cluster (which routes each
/// command by its keys' slot and follows MOVED, ASK and TRYAGAIN).
#[derive(Clone)]
pub enum Connection {
    Single(ConnectionManager),
    Cluster(Cluster),
}

/// A cluster connection that can be replaced by a fresh one: redis-rs's
/// cluster connection can keep timing out on a node that was killed and
/// came back (seen after two failovers of one shard: every command to that
/// shard timed out for minutes, while a new connection worked at once).
#[derive(Clone)]
pub struct Cluster {
    client: Arc<redis::cluster::ClusterClient>,
    current: Arc<Mutex<ClusterConnection>>,
    /// Commands in a row that found the cluster unreachable.
    failures: Arc<AtomicU32>,
    /// True while a fresh connection is being made.
    reconnecting: Arc<AtomicBool>,
}

/// Unreachable answers in a row after which a cluster connection is
/// replaced.
const CLUSTER_FAILURES_BEFORE_RECONNECT: u32 = 3;

impl Cluster {
    fn current(&self) -> ClusterConnection {
        self.current
            .lock()
            .expect("cluster connection lock")
            .clone()
    }

    /// Counts unreachable answers; after a few in a row, connects afresh in
    /// a task of its own (a caller's future may be dropped at any await: a
    /// client that goes away, a timeout around the call).
    fn observe<T>(&self, result: &redis::RedisResult<T>) {
        let unreachable = result.as_ref().err().is_some_and(is_transient);
        if !unreachable {
            self.failures.store(0, Ordering::Relaxed);
            return;
        }
        if self.failures.fetch_add(1, Ordering::Relaxed) + 1 < CLUSTER_FAILURES_BEFORE_RECONNECT
            || self.reconnecting.swap(true, Ordering::AcqRel)
        {
            return;
        }
        let cluster = self.clone();
        tokio::spawn(async move {
            // redis-rs's connect can hang (redis-rs#1953): bound it.
            let fresh = tokio::time::timeout(
                Duration::from_secs(10),
                cluster.client.get_async_connection(),
            )
            .await;
            match fresh {
                Ok(Ok(fresh)) => {
                    tracing::warn!("redis cluster kept failing; connected afresh");
                    metrics::counter!("txengine_redis_cluster_reconnects_total").increment(1);
                    *cluster.current.lock().expect("cluster connection lock") = fresh;
                }
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "redis cluster kept failing; a fresh connection failed too")
                }
                Err(_) => tracing::warn!(
                    "redis cluster kept failing; a fresh connection did not come within 10 s"
                ),
            }
            cluster.failures.store(0, Ordering::Relaxed);
            cluster.reconnecting.store(false, Ordering::Release);
        });
    }
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(c) => c.req_packed_command(cmd),
            Self::Cluster(cluster) => Box::pin(async move {
                let result = cluster.current().req_packed_command(cmd).await;
                cluster.observe(&result);
                result
            }),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Cluster(cluster) => Box::pin(async move {
                let result = cluster
                    .current()
                    .req_packed_commands(pipeline, offset, count)
                    .await;
                cluster.observe(&result);
                result
            }),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(c) => c.get_db(),
            Self::Cluster(cluster) => cluster.current().get_db(),
        }
    }
}

impl Connection {
    /// Connects to `url` (for a cluster, seed URLs separated by commas).
    pub async fn open(
        url: &str,
        topology: RedisTopology,
        response_timeout: Duration,
    ) -> Result<Self, StoreError> {
        Ok(match topology {
            RedisTopology::Single => {
                let client = redis::Client::open(url)?;
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(Duration::from_secs(2)))
                    .set_response_timeout(Some(response_timeout))
                    .set_number_of_retries(2)
                    .set_max_delay(Duration::from_millis(500));
                Self::Single(ConnectionManager::new_with_config(client, config).await?)
            }
            RedisTopology::Cluster => {
                let seeds: Vec<&str> = url.split(',').map(str::trim).collect();
                // redis-rs waits about 1.28 s before its first retry by
                // default; a slot migration or a failover should cost
                // tens of milliseconds a retry, not seconds.
                let client = ClusterClientBuilder::new(seeds)
                    .connection_timeout(Duration::from_secs(2))
                    .response_timeout(response_timeout)
                    .retries(8)
                    .min_retry_wait(20)
                    .max_retry_wait(500)
                    .build()?;
                let conn = client.get_async_connection().await?;
                Self::Cluster(Cluster {
                    client: Arc::new(client),
                    current: Arc::new(Mutex::new(conn)),
                    failures: Arc::new(AtomicU32::new(0)),
                    reconnecting: Arc::new(AtomicBool::new(false)),
                })
            }
        })
    }

    /// `WAIT replicas timeout` on the node that holds `key` (a cluster's
    /// master of its slot: redis-rs would otherwise ask every master and
    /// answer the smallest count, so one replica down anywhere would hold
    /// every write), or on the one Redis: how many replicas have every
    /// write made through this connection to that node.
    pub async fn wait_on(
        &self,
        key: &str,
        replicas: u32,
        timeout: Duration,
    ) -> Result<u32, StoreError> {
        let mut cmd = redis::cmd("WAIT");
        cmd.arg(replicas).arg(timeout.as_millis() as u64);
        let answer = match self {
            Self::Single(c) => cmd.query_async::<Value>(&mut c.clone()).await,
            Self::Cluster(cluster) => {
                let route = Route::with_key(key, SlotAddr::Master);
                let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(route));
                let result = cluster.current().route_command(cmd, routing).await;
                cluster.observe(&result);
                result
            }
        }?;
        redis::from_redis_value(answer)
            .map_err(|e| StoreError::Unexpected(format!("WAIT answered {e}")))
    }

    /// Every key that matches `pattern` (SCAN), on the one Redis or on
    /// each master of a cluster.
    pub async fn scan(&self, pattern: &str) -> Result<Vec<String>, StoreError> {
        let mut keys = Vec::new();
        match self {
            Self::Single(c) => {
                let mut conn = c.clone();
                let mut cursor = 0u64;
                loop {
                    let (next, page): (u64, Vec<String>) =
                        scan_page(cursor, pattern).query_async(&mut conn).await?;
                    keys.extend(page);
                    cursor = next;
                    if cursor == 0 {
                        return Ok(keys);
                    }
                }
            }
            Self::Cluster(cluster) => {
                let mut conn = cluster.current();
                let nodes: String = redis::cmd("CLUSTER")
                    .arg("NODES")
                    .query_async(&mut conn)
                    .await?;
                for (host, port) in masters(&nodes)? {
                    let mut cursor = 0u64;
                    loop {
                        let node = SingleNodeRoutingInfo::ByAddress {
                            host: host.clone(),
                            port,
                        };
                        let answer = conn
                            .route_command(
                                scan_page(cursor, pattern),
                                RoutingInfo::SingleNode(node),
                            )
                            .await?;
                        let (next, page): (u64, Vec<String>) = redis::from_redis_value(answer)
                            .map_err(|e| StoreError::Unexpected(format!("SCAN answered {e}")))?;
                        keys.extend(page);
                        cursor = next;
                        if cursor == 0 {
                            break;
                        }
                    }
                }
                Ok(keys)
            }
        }
    }

    /// Runs `commands`, one answer each, in order. A cluster pipeline must
    /// stay in one slot, so they go as one pipeline per slot (`slot_of`
    /// names it), all slots at once; on one Redis, as one pipeline. Any
    /// failure fails the whole: see [`Connection::run_by_slot_each`].
    pub async fn run_by_slot<T: redis::FromRedisValue>(
        &self,
        commands: Vec<(u32, Cmd)>,
    ) -> Result<Vec<T>, StoreError> {
        self.run_by_slot_each(commands).await.into_iter().collect()
    }

    /// As [`Connection::run_by_slot`], but every command's answer is read,
    /// Redis's error answers too (each its command's error), in order; a
    /// slot whose pipeline failed as a whole (its master lost, a timeout)
    /// fails each of its commands.
    pub async fn run_by_slot_ignoring_errors(
        &self,
        commands: Vec<(u32, Cmd)>,
    ) -> Vec<Result<Value, StoreError>> {
        let total = commands.len();
        let groups = self.run_pipelines(commands, true).await;
        spread::<Value>(total, groups, "pipeline")
            .into_iter()
            .map(|value| value.and_then(|v| v.extract_error().map_err(StoreError::from)))
            .collect()
    }

    /// Runs `commands` as one pipeline per slot, all at once: each
    /// pipeline's places among the commands and its values, or its error.
    async fn run_pipelines(
        &self,
        commands: Vec<(u32, Cmd)>,
        ignore_errors: bool,
    ) -> Vec<(Vec<usize>, Result<Vec<Value>, StoreError>)> {
        let runs = by_slot(commands, ignore_errors)
            .into_values()
            .map(|(indices, pipe)| {
                let mut conn = self.clone();
                async move {
                    let values: Result<Vec<Value>, _> = pipe.query_async(&mut conn).await;
                    (indices, values.map_err(StoreError::from))
                }
            });
        futures_util::future::join_all(runs).await
    }

    /// As [`Connection::run_by_slot`], but each command has its own result:
    /// a slot whose pipeline failed (its master lost, a timeout) fails its
    /// own commands only, and an answer that does not convert fails only
    /// its command.
    pub async fn run_by_slot_each<T: redis::FromRedisValue>(
        &self,
        commands: Vec<(u32, Cmd)>,
    ) -> Vec<Result<T, StoreError>> {
        let total = commands.len();
        spread(total, self.run_pipelines(commands, false).await, "pipeline")
    }
}

/// `commands` as one pipeline per slot, each with the places of its
/// commands among them; `ignore_errors`: each command's error answer is
/// read as its own, not as the whole pipeline's.
fn by_slot(
    commands: Vec<(u32, Cmd)>,
    ignore_errors: bool,
) -> BTreeMap<u32, (Vec<usize>, Pipeline)> {
    let mut pipes: BTreeMap<u32, (Vec<usize>, Pipeline)> = BTreeMap::new();
    for (index, (slot, cmd)) in commands.into_iter().enumerate() {
        let (indices, pipe) = pipes.entry(slot).or_insert_with(|| {
            let mut pipe = redis::pipe();
            if ignore_errors {
                pipe.ignore_errors();
            }
            (Vec::new(), pipe)
        });
        indices.push(index);
        pipe.add_command(cmd);
    }
    pipes
}

/// Puts the answers of groups of commands (a pipeline, a script over many
/// keys) back in the places of their items, `total` of them: a group's
/// values go one to each of its `indices`, in order, each converted alone;
/// a group's error, or a wrong count of values, fails its own items only.
/// `what` names a group in that error.
pub(super) fn spread<T: redis::FromRedisValue>(
    total: usize,
    groups: impl IntoIterator<Item = (Vec<usize>, Result<Vec<Value>, StoreError>)>,
    what: &str,
) -> Vec<Result<T, StoreError>> {
    let mut answers: Vec<Option<Result<T, StoreError>>> = (0..total).map(|_| None).collect();
    for (indices, values) in groups {
        let values = values.and_then(|values| {
            if values.len() == indices.len() {
                Ok(values)
            } else {
                Err(StoreError::Unexpected(format!(
                    "a {what} had {} answers for {} items",
                    values.len(),
                    indices.len()
                )))
            }
        });
        match values {
            Ok(values) => {
                for (index, value) in indices.into_iter().zip(values) {
                    answers[index] = Some(
                        redis::from_redis_value(value)
                            .map_err(|e| StoreError::Unexpected(e.to_string())),
                    );
                }
            }
            Err(e) => {
                for index in indices {
                    answers[index] = Some(Err(e.clone()));
                }
            }
        }
    }
    answers
        .into_iter()
        .map(|answer| {
            answer.unwrap_or_else(|| Err(StoreError::Unexpected("an item had no answer".into())))
        })
        .collect()
}

#[cfg(test)]
mod masters_tests {
    use super::*;

    const NODES: &str = "\
a1 127.0.0.1:7000@17000 myself,master - 0 0 1 connected 0-5460
a2 127.0.0.1:7001@17001 master,fail? - 0 0 2 connected 5461-10922 [10923->-a3]
a3 127.0.0.1:7002@17002 master - 0 0 3 connected 10923-16383
r1 127.0.0.1:7003@17003 slave a1 0 0 1 connected";

    /// Every master that serves slots is scanned, one only suspected down
    /// too; replicas are not; a master lost (`fail`) leaves slots no scan
    /// would see, and is refused rather than scanned around.
    #[test]
    fn the_masters_are_scanned_only_when_they_serve_every_slot() {
        let ports: Vec<u16> = masters(NODES)
            .unwrap()
            .into_iter()
            .map(|(_, p)| p)
            .collect();
        assert_eq!(ports, [7000, 7001, 7002]);
        let lost = NODES.replace("master,fail?", "master,fail");
        let refused = masters(&lost).unwrap_err().to_string();
        assert!(refused.contains("10922 of 16384"), "{refused}");
    }
}
