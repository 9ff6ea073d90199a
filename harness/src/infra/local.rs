//! The `local` provider: Debian's `redis-server` (one, or a Redis Cluster)
//! as child processes on free loopback ports, with data in temp dirs; Kafka's
//! nodes are in [`super::kafka`]. Each can be killed (-9) and restarted on
//! the same port and data dir, which is what the crash scenarios need.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tempfile::TempDir;

use super::process::{free_port, log_tail, Supervised};

/// How long a service may take to answer after it is started.
const START_TIMEOUT: Duration = Duration::from_secs(90);

/// Where downloaded jars are kept between runs: `$TXENGINE_CACHE_DIR`, else
/// `$XDG_CACHE_HOME/txengine`, else `~/.cache/txengine`.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("TXENGINE_CACHE_DIR") {
        return dir.into();
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("txengine")
}

pub(super) fn wait_until(
    what: &str,
    mut ready: impl FnMut() -> bool,
    log: &Path,
) -> anyhow::Result<()> {
    let started = Instant::now();
    while started.elapsed() < START_TIMEOUT {
        if ready() {
            tracing::info!(
                what,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "ready"
            );
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!(
        "{what} not ready after {START_TIMEOUT:?}; log tail:\n{}",
        log_tail(log, 30)
    )
}

/// A local service process that can be killed with -9 and started again on
/// the same ports and data dir (Redis replays its AOF, Kafka its log).
pub trait LocalService {
    fn process(&mut self) -> &mut Option<Supervised>;
    /// Starts the process and waits until it answers.
    fn launch(&mut self) -> anyhow::Result<()>;

    fn pid(&mut self) -> Option<u32> {
        self.process().as_ref().and_then(Supervised::pid)
    }

    /// kill -9: no shutdown, no final flush.
    fn kill(&mut self) {
        if let Some(mut p) = self.process().take() {
            p.kill();
        }
    }

    fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        self.launch()
    }
}

/// A `redis-server` with AOF on, in its own temp dir.
pub struct LocalRedis {
    process: Option<Supervised>,
    port: u16,
    /// AOF fsync policy: `always` or `everysec` (see docs/design.md, Redis durability).
    appendfsync: String,
    /// A node of a Redis Cluster (its `nodes.conf` lives in `dir`): the
    /// port of its cluster bus, picked free like `port` (Redis's default,
    /// `port + 10000`, may be taken: a test run failed on it).
    cluster_node: Option<u16>,
    dir: TempDir,
}

impl LocalRedis {
    pub fn start(appendfsync: &str) -> anyhow::Result<Self> {
        Self::start_node(appendfsync, false)
    }

    fn start_node(appendfsync: &str, cluster_node: bool) -> anyhow::Result<Self> {
        let mut redis = Self {
            process: None,
            port: free_port()?,
            appendfsync: appendfsync.to_owned(),
            cluster_node: if cluster_node {
                Some(free_port()?)
            } else {
                None
            },
            dir: tempfile::Builder::new()
                .prefix("txengine-redis-")
                .tempdir()?,
        };
        super::process::remove_at_exit(redis.dir.path());
        redis.launch()?;
        Ok(redis)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// `127.0.0.1:<port>`.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

/// A Redis Cluster of Debian redis-servers on loopback ports: `masters`
/// masters with `replicas` replicas each, joined by `redis-cli --cluster create`,
/// with a short node timeout (1 s) so that a replica takes over a dead
/// master within seconds. Every node is killed when this is dropped.
pub struct LocalRedisCluster {
    pub nodes: Vec<LocalRedis>,
    /// How many replicas each master has when the cluster is whole.
    replicas: usize,
}

/// A cluster node's timeout: how long a master may be unreachable before
/// its replica is promoted.
pub const CLUSTER_NODE_TIMEOUT_MS: u64 = 1_000;

impl LocalRedisCluster {
    pub fn start(masters: usize, replicas: usize, appendfsync: &str) -> anyhow::Result<Self> {
        anyhow::ensure!(masters >= 3, "Redis Cluster needs at least 3 masters");
        anyhow::ensure!(replicas >= 1, "every master needs a replica");
        let nodes = (0..masters * (1 + replicas))
            .map(|_| LocalRedis::start_node(appendfsync, true))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let cluster = Self { nodes, replicas };
        let output = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(cluster.nodes.iter().map(LocalRedis::address))
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .output()
            .context("running redis-cli --cluster create")?;
        anyhow::ensure!(
            output.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        cluster.wait_healthy()?;
        // A replica copies its master's data after the cluster forms; until
        // then WAIT counts it out.
        let log = cluster.nodes[0].dir.path().join("redis.log");
        wait_until(
            "redis cluster replicas",
            || {
                cluster
                    .nodes
                    .iter()
                    .filter(|node| role_of(&node.url()).as_deref() == Some("master"))
                    .all(|master| replicas_online(&master.url()) >= replicas)
            },
            &log,
        )?;
        Ok(cluster)
    }

    /// Seed URLs of every node, for a cluster client.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(LocalRedis::url).collect()
    }

    /// Waits until every live node reports `cluster_state:ok` and all 16384
    /// slots are served.
    pub fn wait_healthy(&self) -> anyhow::Result<()> {
        let log = self.nodes[0].dir.path().join("redis.log");
        wait_until(
            "redis cluster",
            || self.live_nodes().all(|node| cluster_ok(&node.url())),
            &log,
        )
    }

    fn live_nodes(&self) -> impl Iterator<Item = &LocalRedis> {
        self.nodes.iter().filter(|node| node.process.is_some())
    }

    /// The slot of `key`, as a live node computes it (`CLUSTER KEYSLOT`).
    pub fn slot_of(&self, key: &str) -> anyhow::Result<u16> {
        let node = self.live_nodes().next().context("no live node")?;
        let client = redis::Client::open(node.url())?;
        let mut conn = client.get_connection_with_timeout(Duration::from_secs(1))?;
        Ok(redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(key)
            .query(&mut conn)?)
    }

    /// The node serving `slot` as master now (as a live node sees the
    /// cluster), by index into `nodes`.
    pub fn master_of(&self, slot: u16) -> anyhow::Result<usize> {
        let node = self.live_nodes().next().context("no live node")?;
        let address = master_address(&node.url(), slot)?;
        self.nodes
            .iter()
            .position(|n| n.address() == address)
            .with_context(|| format!("{address} is not one of ours"))
    }
}

/// The `host:port` of the master serving `slot`, as the node at `url` sees
/// the cluster (`CLUSTER NODES`).
fn master_address(url: &str, slot: u16) -> anyhow::Result<String> {
    let client = redis::Client::open(url)?;
    let mut conn = client.get_connection_with_timeout(Duration::from_secs(1))?;
    let table: String = redis::cmd("CLUSTER").arg("NODES").query(&mut conn)?;
    // <id> <ip:port@cport> <flags> <master> <ping> <pong> <epoch> <link> <slot ranges>...
    for line in table.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (Some(address), Some(flags)) = (fields.get(1), fields.get(2)) else {
            continue;
        };
        if !flags.contains("master") || flags.contains("fail") {
            continue;
        }
        let serves = fields.iter().skip(8).any(|range| {
            let (start, end) = range.split_once('-').unwrap_or((range, range));
            matches!((start.parse::<u16>(), end.parse::<u16>()), (Ok(a), Ok(b)) if (a..=b).contains(&slot))
        });
        if serves {
            return Ok(address.split('@').next().unwrap_or_default().to_owned());
        }
    }
    anyhow::bail!("no live master serves slot {slot}:\n{table}")
}

/// The URLs of every live master, asking the first seed of `seeds` (comma
/// separated) that answers.
pub fn cluster_masters(seeds: &str) -> anyhow::Result<Vec<String>> {
    let mut last_error = None;
    for seed in seeds.split(',').map(str::trim) {
        let table = redis::Client::open(seed)
            .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(1)))
            .and_then(|mut c| redis::cmd("CLUSTER").arg("NODES").query::<String>(&mut c));
        match table {
            Ok(table) => {
                return Ok(table
                    .lines()
                    .filter_map(|line| {
                        let fields: Vec<&str> = line.split_whitespace().collect();
                        let flags = fields.get(2)?;
                        let serves_slots = fields.len() > 8;
                        (flags.contains("master") && !flags.contains("fail") && serves_slots).then(
                            || {
                                format!(
                                    "redis://{}",
                                    fields[1].split('@').next().unwrap_or_default()
                                )
                            },
                        )
                    })
                    .collect())
            }
            Err(e) => last_error = Some(e.into()),
        }
    }
    Err(last_error.unwrap_or_else(|| anyhow::anyhow!("no seed in {seeds:?}")))
}

impl LocalRedisCluster {
    /// kill -9 of the master serving `key`; waits until its replica took
    /// over, then starts the old master again, which rejoins as the new
    /// master's replica, and waits until it is in sync.
    pub fn fail_over(&mut self, key: &str) -> anyhow::Result<()> {
        let slot = self.slot_of(key)?;
        let master = self.master_of(slot)?;
        self.lose_master(key)?;
        let log = self.nodes[master].dir.path().join("redis.log");
        self.nodes[master].launch()?;
        let promoted = self.master_of(slot)?;
        let url = self.nodes[promoted].url();
        wait_until(
            "the old master back as a replica",
            || replicas_online(&url) >= 1,
            &log,
        )
    }

    /// kill -9 of the master serving `key`, not started again (a machine
    /// lost); waits until a replica took over. What follows is the
    /// engine's to cope with: with two replicas a master, the other one
    /// follows the promoted one and `WAIT 1` answers again.
    /// [`LocalRedisCluster::heal`] brings the lost node back later.
    pub fn lose_master(&mut self, key: &str) -> anyhow::Result<()> {
        let slot = self.slot_of(key)?;
        let master = self.master_of(slot)?;
        self.nodes[master].kill();
        let log = self.nodes[master].dir.path().join("redis.log");
        wait_until(
            "a replica to take over",
            || self.master_of(slot).is_ok_and(|node| node != master),
            &log,
        )
    }

    /// Starts every node that was killed and not started again; each
    /// rejoins as a replica (of the master its shard has now), and waits
    /// until the cluster is healthy and every master has a replica in sync.
    pub fn heal(&mut self) -> anyhow::Result<()> {
        let mut healed = false;
        for node in &mut self.nodes {
            if node.process.is_none() {
                node.launch()?;
                healed = true;
            }
        }
        if !healed {
            return Ok(());
        }
        self.wait_healthy()?;
        let log = self.nodes[0].dir.path().join("redis.log");
        // The shape is the one the cluster was made with, never counted from
        // a poll: a node too busy to answer one poll in time must fail that
        // poll, not make every later one ask for more replicas than exist.
        let masters = self.nodes.len() / (1 + self.replicas);
        wait_until(
            "every master with all its replicas again",
            || {
                let found = self.masters();
                found.len() == masters
                    && found
                        .iter()
                        .all(|url| replicas_online(url) >= self.replicas)
            },
            &log,
        )
    }

    /// The URLs of the live masters.
    fn masters(&self) -> Vec<String> {
        self.live_nodes()
            .map(LocalRedis::url)
            .filter(|url| role_of(url).as_deref() == Some("master"))
            .collect()
    }

    /// Moves `slots` slots, with their keys, from the master serving `key`
    /// to another master, while clients go on (`redis-cli --cluster
    /// reshard`: each slot is MIGRATING/IMPORTING while its keys move, so
    /// scripts on it meet ASK and TRYAGAIN).
    pub fn reshard(&mut self, key: &str, slots: u32) -> anyhow::Result<()> {
        let from = self.master_of(self.slot_of(key)?)?;
        let to = self
            .live_nodes()
            .map(|n| n.url())
            .filter(|u| role_of(u).as_deref() == Some("master"))
            .find(|u| *u != self.nodes[from].url())
            .context("no other master")?;
        let id_of = |url: &str| -> anyhow::Result<String> {
            let client = redis::Client::open(url)?;
            let mut conn = client.get_connection_with_timeout(Duration::from_secs(1))?;
            Ok(redis::cmd("CLUSTER").arg("MYID").query(&mut conn)?)
        };
        // redis-cli refuses to reshard until every node agrees on the
        // configuration, which gossip spreads within about a second of the
        // last change (a failover, an earlier reshard).
        let started = std::time::Instant::now();
        loop {
            let output = Command::new("redis-cli")
                .arg("--cluster")
                .arg("reshard")
                .arg(self.nodes[from].address())
                .args(["--cluster-from", &id_of(&self.nodes[from].url())?])
                .args(["--cluster-to", &id_of(&to)?])
                .args(["--cluster-slots", &slots.to_string(), "--cluster-yes"])
                .output()
                .context("running redis-cli --cluster reshard")?;
            let stdout = String::from_utf8_lossy(&output.stdout);
            if output.status.success() {
                break;
            }
            anyhow::ensure!(
                stdout.contains("Nodes don't agree") && started.elapsed() < Duration::from_secs(30),
                "redis-cli --cluster reshard failed: {stdout}{}",
                String::from_utf8_lossy(&output.stderr)
            );
            std::thread::sleep(Duration::from_millis(500));
        }
        self.wait_healthy()
    }

    /// The replica of the master at index `master`, by index into `nodes`.
    pub fn replica_of(&self, master: usize) -> anyhow::Result<usize> {
        let client = redis::Client::open(self.nodes[master].url())?;
        let mut conn = client.get_connection_with_timeout(Duration::from_secs(1))?;
        let master_id: String = redis::cmd("CLUSTER").arg("MYID").query(&mut conn)?;
        let replicas: String = redis::cmd("CLUSTER")
            .arg("REPLICAS")
            .arg(&master_id)
            .query::<Vec<String>>(&mut conn)?
            .join("\n");
        let address = replicas
            .split_whitespace()
            .nth(1)
            .and_then(|a| a.split('@').next())
            .with_context(|| format!("no replica of node {master}"))?;
        self.nodes
            .iter()
            .position(|n| n.address() == address)
            .with_context(|| format!("{address} is not one of ours"))
    }
}

/// `master` or `slave`, as the node at `url` says.
fn role_of(url: &str) -> Option<String> {
    let mut conn = redis::Client::open(url)
        .ok()?
        .get_connection_with_timeout(Duration::from_millis(300))
        .ok()?;
    let role: Vec<redis::Value> = redis::cmd("ROLE").query(&mut conn).ok()?;
    match role.first() {
        Some(redis::Value::BulkString(name)) => Some(String::from_utf8_lossy(name).into_owned()),
        _ => None,
    }
}

/// Replicas of the master at `url` that are in sync (`state=online`).
fn replicas_online(url: &str) -> usize {
    redis::Client::open(url)
        .and_then(|c| c.get_connection_with_timeout(Duration::from_millis(300)))
        .and_then(|mut c| {
            redis::cmd("INFO")
                .arg("replication")
                .query::<String>(&mut c)
        })
        .map(|info| info.matches("state=online").count())
        .unwrap_or(0)
}

/// `CLUSTER INFO` of the node at `url` says `cluster_state:ok` with every
/// slot assigned.
fn cluster_ok(url: &str) -> bool {
    let info = redis::Client::open(url)
        .and_then(|c| c.get_connection_with_timeout(Duration::from_millis(300)))
        .and_then(|mut c| redis::cmd("CLUSTER").arg("INFO").query::<String>(&mut c));
    info.is_ok_and(|info| {
        info.contains("cluster_state:ok") && info.contains("cluster_slots_ok:16384")
    })
}

impl LocalService for LocalRedis {
    fn process(&mut self) -> &mut Option<Supervised> {
        &mut self.process
    }

    fn launch(&mut self) -> anyhow::Result<()> {
        let mut command = Command::new("redis-server");
        command
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .arg("--dir")
            .arg(self.dir.path())
            .args(["--appendonly", "yes", "--appendfsync", &self.appendfsync])
            .args(["--save", "", "--daemonize", "no", "--protected-mode", "yes"]);
        if let Some(bus_port) = self.cluster_node {
            command
                .args(["--cluster-enabled", "yes"])
                .args(["--cluster-port", &bus_port.to_string()])
                .args(["--cluster-config-file", "nodes.conf"])
                .args([
                    "--cluster-node-timeout",
                    &CLUSTER_NODE_TIMEOUT_MS.to_string(),
                ]);
        }
        let log = self.dir.path().join("redis.log");
        self.process = Some(
            Supervised::spawn("redis-server", command, &log)
                .context("starting redis-server (install it: scripts/install-deps)")?,
        );
        let url = self.url();
        wait_until(
            "redis",
            || {
                redis::Client::open(url.as_str())
                    .and_then(|c| c.get_connection_with_timeout(Duration::from_millis(200)))
                    .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c))
                    .is_ok()
            },
            &log,
        )
    }
}
