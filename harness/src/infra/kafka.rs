//! The local Apache Kafka: KRaft nodes, each a broker and a controller, as
//! child processes on free loopback ports with their logs in temp dirs. One
//! node, or a cluster of three whose topics keep three replicas, two of them
//! in sync for a write (`acks=all`), and never elect a replica that is not.
//! Any node can be killed (-9), stalled (SIGSTOP) or restarted on its log
//! dir, which is what the broker faults need.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use base64::Engine as _;
use nix::sys::signal::Signal;
use rdkafka::metadata::Metadata;
use rdkafka::producer::{BaseProducer, Producer};
use rdkafka::ClientConfig;
use tempfile::TempDir;

use super::local::{cache_dir, wait_until, LocalService};
use super::process::{free_port, Supervised};

/// The Kafka version the pinned descriptor (`harness/kafka/pom.xml`) resolves.
pub const KAFKA_VERSION: &str = "4.1.1";
/// The pinned Maven descriptor that resolves the broker's jars.
pub const KAFKA_POM: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/kafka/pom.xml");
/// Replicas of every topic on a cluster, and how many must have a write
/// before it is acknowledged (`acks=all`): one broker may be lost.
pub const CLUSTER_REPLICATION_FACTOR: i32 = 3;
pub const CLUSTER_MIN_INSYNC_REPLICAS: u32 = 2;
/// How long a broker that stopped heartbeating keeps its leaderships: the
/// controller fences it after this, and the partitions it led get new
/// leaders (Kafka's default is 9 s; see docs/faults.md for what it costs).
pub const BROKER_SESSION_TIMEOUT_MS: u64 = 4_000;
/// How long the cluster may take to have every replica back in sync.
const IN_SYNC_TIMEOUT: Duration = Duration::from_secs(120);

/// The directory of Kafka's jars, resolved from Maven Central by the pinned
/// descriptor on first use. Safe to call from several processes at once.
pub fn kafka_libs() -> anyhow::Result<PathBuf> {
    let dir = cache_dir().join(format!("kafka-{KAFKA_VERSION}"));
    let libs = dir.join("libs");
    let complete = dir.join(".complete");
    if complete.exists() {
        return Ok(libs);
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let lock = std::fs::File::create(dir.join(".lock"))?;
    // Released when `lock` is closed.
    lock.lock()
        .with_context(|| format!("locking {}", dir.display()))?;
    if complete.exists() {
        return Ok(libs);
    }
    eprintln!(
        "resolving Apache Kafka {KAFKA_VERSION} jars from Maven Central into {} ...",
        libs.display()
    );
    let output = Command::new("mvn")
        .args(["-q", "-B", "-f", KAFKA_POM, "dependency:copy-dependencies"])
        .arg(format!("-DoutputDirectory={}", libs.display()))
        .arg("-DincludeScope=runtime")
        .output()
        .context("running mvn (install Maven: scripts/install-deps)")?;
    if !output.status.success() {
        bail!(
            "mvn could not resolve Kafka's jars:\n{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    std::fs::write(&complete, KAFKA_VERSION)?;
    Ok(libs)
}

/// The loopback ports of one KRaft node.
#[derive(Debug, Clone, Copy)]
pub struct NodePorts {
    pub broker: u16,
    pub controller: u16,
}

/// Free loopback ports for the nodes of a Kafka of `count` (1 or 3; `what`
/// names the Kafka in the error).
pub fn free_node_ports(count: usize, what: &str) -> anyhow::Result<Vec<NodePorts>> {
    anyhow::ensure!(
        count == 1 || count == CLUSTER_REPLICATION_FACTOR as usize,
        "{what} has 1 or {CLUSTER_REPLICATION_FACTOR} nodes, not {count}"
    );
    (0..count)
        .map(|_| {
            Ok(NodePorts {
                broker: free_port()?,
                controller: free_port()?,
            })
        })
        .collect()
}

/// `controller.quorum.voters`: every node, by its 1-based id, at its
/// controller port.
pub fn quorum_voters(all: &[NodePorts]) -> String {
    let voters: Vec<String> = all
        .iter()
        .enumerate()
        .map(|(i, p)| format!("{}@127.0.0.1:{}", i + 1, p.controller))
        .collect();
    voters.join(",")
}

/// Replicas a topic gets on a Kafka of `nodes`, and how many must have a
/// write before it is acknowledged (`acks=all`).
pub fn replication_of(nodes: usize) -> (i32, u32) {
    if nodes == 1 {
        (1, 1)
    } else {
        (CLUSTER_REPLICATION_FACTOR, CLUSTER_MIN_INSYNC_REPLICAS)
    }
}

/// One KRaft node, broker and controller: a cluster of its own, or one node
/// of a [`LocalKafkaCluster`].
pub struct LocalKafka {
    process: Option<Supervised>,
    node_id: i32,
    ports: NodePorts,
    heap_mib: u32,
    libs: PathBuf,
    dir: TempDir,
}

impl LocalKafka {
    /// A single-node Kafka, started and answering.
    pub fn start() -> anyhow::Result<Self> {
        let mut cluster = LocalKafkaCluster::start(1)?;
        Ok(cluster.nodes.pop().expect("a cluster of one"))
    }

    /// Node `node_id` (1-based) of the nodes at `all`: its properties
    /// written and its storage formatted for `cluster_id`, not started.
    fn prepare(
        node_id: i32,
        all: &[NodePorts],
        cluster_id: &str,
        heap_mib: u32,
    ) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("txengine-kafka-")
            .tempdir()?;
        super::process::remove_at_exit(dir.path());
        let data = dir.path().join("data");
        std::fs::write(
            dir.path().join("server.properties"),
            server_properties(node_id, all, &data),
        )?;
        std::fs::write(
            dir.path().join("log4j.properties"),
            log4j_properties(&dir.path().join("kafka.log")),
        )?;
        let node = Self {
            process: None,
            node_id,
            ports: all[(node_id - 1) as usize],
            heap_mib,
            libs: kafka_libs()?,
            dir,
        };
        node.format_storage(cluster_id)?;
        Ok(node)
    }

    fn java(&self) -> Command {
        let mut command = Command::new("java");
        command
            .args([
                "-Xms256m".to_owned(),
                format!("-Xmx{}m", self.heap_mib),
                "-XX:+UseG1GC".to_owned(),
                "-XX:MaxGCPauseMillis=20".to_owned(),
                // C1 only: on 2 shared cores the C2 compiler was still the
                // broker's busiest thread 40 s into a load run; without it the
                // broker used 30-36 instead of 60-69 us of CPU per request.
                "-XX:TieredStopAtLevel=1".to_owned(),
            ])
            // Extra JVM flags for experiments (later flags win), e.g.
            // TXENGINE_KAFKA_JVM_OPTS="-XX:TieredStopAtLevel=4" brings C2 back.
            .args(
                std::env::var("TXENGINE_KAFKA_JVM_OPTS")
                    .unwrap_or_default()
                    .split_whitespace(),
            )
            .arg(format!(
                "-Dlog4j.configuration=file:{}",
                self.dir.path().join("log4j.properties").display()
            ))
            .arg("-cp")
            .arg(format!("{}/*", self.libs.display()));
        command
    }

    fn format_storage(&self, cluster_id: &str) -> anyhow::Result<()> {
        let output = self
            .java()
            .args(["kafka.tools.StorageTool", "format", "-t", cluster_id, "-c"])
            .arg(self.dir.path().join("server.properties"))
            .output()
            .context("running java (install a JDK 17+: scripts/install-deps)")?;
        if !output.status.success() {
            bail!(
                "formatting Kafka storage failed:\n{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(())
    }

    /// Starts the process without waiting for it: the nodes of a cluster
    /// only answer once a majority of them runs.
    fn spawn(&mut self) -> anyhow::Result<()> {
        let mut command = self.java();
        command
            .arg("kafka.Kafka")
            .arg(self.dir.path().join("server.properties"));
        let log = self.dir.path().join("kafka.stdout.log");
        self.process = Some(Supervised::spawn("kafka", command, &log)?);
        Ok(())
    }

    /// Waits until this node answers metadata that lists it as a broker.
    fn wait_ready(&mut self) -> anyhow::Result<()> {
        let address = self.brokers();
        let node_id = self.node_id;
        let kafka_log = self.dir.path().join("kafka.log");
        let stdout_log = self.dir.path().join("kafka.stdout.log");
        let process = self.process.as_mut().context("the node was not spawned")?;
        wait_until(
            "kafka",
            || {
                process.is_running()
                    && metadata_from(&address)
                        .is_ok_and(|m| m.brokers().iter().any(|b| b.id() == node_id))
            },
            if kafka_log.exists() {
                &kafka_log
            } else {
                &stdout_log
            },
        )
    }

    /// This node's broker address.
    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.ports.broker)
    }

    /// Its process runs (a stalled one too).
    fn is_running(&mut self) -> bool {
        self.process.as_mut().is_some_and(Supervised::is_running)
    }

    /// SIGSTOP or SIGCONT of the node's process.
    fn signal(&self, signal: Signal) {
        if let Some(process) = &self.process {
            process.signal(signal);
        }
    }
}

impl LocalService for LocalKafka {
    fn process(&mut self) -> &mut Option<Supervised> {
        &mut self.process
    }

    fn launch(&mut self) -> anyhow::Result<()> {
        self.spawn()?;
        self.wait_ready()
    }
}

/// Metadata of every topic, from the brokers at `bootstrap`.
fn metadata_from(bootstrap: &str) -> anyhow::Result<Metadata> {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("log_level", "0")
        .create()?;
    Ok(producer
        .client()
        .fetch_metadata(None, Duration::from_millis(1_000))?)
}

/// A Kafka of `nodes.len()` KRaft nodes (1, or 3 for a cluster), each a
/// broker and a voter of the controller quorum.
pub struct LocalKafkaCluster {
    pub nodes: Vec<LocalKafka>,
}

impl LocalKafkaCluster {
    /// `count` nodes (1 or 3), started and answering, each listing all.
    pub fn start(count: usize) -> anyhow::Result<Self> {
        let ports = free_node_ports(count, "a local Kafka")?;
        // Three JVMs share 2 cores and the memory of one.
        let heap_mib = if count == 1 { 768 } else { 384 };
        let cluster_id = new_cluster_id();
        let mut nodes = (1..=count as i32)
            .map(|id| LocalKafka::prepare(id, &ports, &cluster_id, heap_mib))
            .collect::<anyhow::Result<Vec<_>>>()?;
        for node in &mut nodes {
            node.spawn()?;
        }
        for node in &mut nodes {
            node.wait_ready()?;
        }
        let cluster = Self { nodes };
        let bootstrap = cluster.brokers();
        wait_until(
            "every kafka broker",
            || metadata_from(&bootstrap).is_ok_and(|m| m.brokers().len() == count),
            &cluster.nodes[0].dir.path().join("kafka.log"),
        )?;
        Ok(cluster)
    }

    /// Every node's broker address, comma separated.
    pub fn brokers(&self) -> String {
        let all: Vec<String> = self.nodes.iter().map(LocalKafka::brokers).collect();
        all.join(",")
    }

    pub fn pids(&mut self) -> Vec<u32> {
        self.nodes.iter_mut().filter_map(|n| n.pid()).collect()
    }

    /// The node that leads the most partitions (of every topic, the
    /// consumer offsets' too): the one whose loss moves the most.
    pub fn busiest_leader(&self) -> anyhow::Result<usize> {
        if self.nodes.len() == 1 {
            return Ok(0);
        }
        let metadata = metadata_from(&self.brokers())?;
        let mut led = vec![0usize; self.nodes.len()];
        for partition in metadata.topics().iter().flat_map(|t| t.partitions()) {
            if let Some(count) = usize::try_from(partition.leader() - 1)
                .ok()
                .and_then(|i| led.get_mut(i))
            {
                *count += 1;
            }
        }
        Ok((0..led.len()).max_by_key(|&i| led[i]).unwrap_or(0))
    }

    /// kill -9 of the busiest leader, started again on its log dir, and
    /// (on a cluster) every replica back in sync.
    pub fn restart_busiest_leader(&mut self) -> anyhow::Result<()> {
        let node = self.busiest_leader()?;
        eprintln!("  kafka: kill -9 of node {} and a restart", node + 1);
        self.nodes[node].restart()?;
        self.wait_in_sync()
    }

    /// The nodes whose process is not running (killed, or failed to start).
    pub fn down(&mut self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| !self.nodes[i].is_running())
            .collect()
    }

    /// kill -9 of `count` running nodes, the busiest leader first; not
    /// started again until [`Self::heal`].
    pub fn lose(&mut self, count: usize) -> anyhow::Result<()> {
        let down = self.down();
        anyhow::ensure!(
            count >= 1 && down.len() + count <= self.nodes.len(),
            "cannot lose {count} more of {} Kafka nodes ({} down already)",
            self.nodes.len(),
            down.len()
        );
        let first = self.busiest_leader()?;
        let order = (0..self.nodes.len()).map(|i| (first + i) % self.nodes.len());
        let doomed: Vec<usize> = order.filter(|i| !down.contains(i)).take(count).collect();
        for node in doomed {
            eprintln!("  kafka: kill -9 of node {}", node + 1);
            self.nodes[node].kill();
        }
        Ok(())
    }

    /// Every node that is down (lost, or one whose restart failed) started
    /// again, and every replica back in sync.
    pub fn heal(&mut self) -> anyhow::Result<()> {
        let down = self.down();
        if down.is_empty() {
            return Ok(());
        }
        for &node in &down {
            eprintln!("  kafka: node {} started again", node + 1);
            self.nodes[node].spawn()?;
        }
        for &node in &down {
            self.nodes[node].wait_ready()?;
        }
        self.wait_in_sync()
    }

    /// SIGSTOP of the busiest leader for `pause`, then SIGCONT: a broker
    /// that stops answering without closing a connection.
    pub fn stall(&mut self, pause: Duration) -> anyhow::Result<()> {
        let node = self.busiest_leader()?;
        eprintln!("  kafka: SIGSTOP of node {} for {pause:?}", node + 1);
        self.nodes[node].signal(Signal::SIGSTOP);
        std::thread::sleep(pause);
        self.nodes[node].signal(Signal::SIGCONT);
        self.wait_in_sync()
    }

    /// Each node in turn stopped (SIGTERM: a controlled shutdown that hands
    /// its leaderships over), started again, and waited for until every
    /// replica is back in sync, as an operator upgrading the cluster does.
    pub fn rolling_restart(&mut self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.down().is_empty(),
            "a rolling restart needs every Kafka node up"
        );
        for node in 0..self.nodes.len() {
            eprintln!("  kafka: rolling restart of node {}", node + 1);
            if let Some(mut process) = self.nodes[node].process.take() {
                process.terminate(Duration::from_secs(30));
            }
            self.nodes[node].launch()?;
            self.wait_in_sync()?;
        }
        Ok(())
    }

    /// Waits until every partition has every replica in sync, as each node
    /// sees it (a node just resumed from SIGSTOP still answers from what it
    /// knew before); a no-op on one node.
    pub fn wait_in_sync(&self) -> anyhow::Result<()> {
        if self.nodes.len() == 1 {
            return Ok(());
        }
        let started = Instant::now();
        let mut behind = String::new();
        let mut node = 0;
        while started.elapsed() < IN_SYNC_TIMEOUT {
            if node == self.nodes.len() {
                return Ok(());
            }
            match metadata_from(&self.nodes[node].brokers()) {
                Ok(metadata) => {
                    let lagging: Vec<String> = metadata
                        .topics()
                        .iter()
                        .flat_map(|t| t.partitions().iter().map(move |p| (t.name(), p)))
                        .filter(|(_, p)| p.isr().len() < p.replicas().len() || p.leader() < 0)
                        .map(|(topic, p)| format!("{topic}/{}", p.id()))
                        .collect();
                    if lagging.is_empty() {
                        node += 1;
                        continue;
                    }
                    behind = format!("node {}: {}", node + 1, lagging.join(", "));
                }
                Err(e) => behind = format!("node {}: {e:#}", node + 1),
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        bail!("Kafka replicas not in sync after {IN_SYNC_TIMEOUT:?}: {behind}")
    }
}

/// A new Kafka cluster id: a URL-safe base64 UUID; one starting with '-'
/// would be read by the storage tool as an option, so draw again.
fn new_cluster_id() -> String {
    std::iter::repeat_with(|| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(uuid::Uuid::new_v4().as_bytes())
    })
    .find(|id| !id.starts_with('-'))
    .expect("an endless supply of ids")
}

fn server_properties(node_id: i32, all: &[NodePorts], data: &Path) -> String {
    let me = all[(node_id - 1) as usize];
    let (replicas, min_insync) = replication_of(all.len());
    // A lone broker keeps Kafka's defaults: fencing it helps nobody.
    let liveness = if all.len() == 1 {
        String::new()
    } else {
        format!(
            "broker.session.timeout.ms={BROKER_SESSION_TIMEOUT_MS}\nbroker.heartbeat.interval.ms={}\n",
            BROKER_SESSION_TIMEOUT_MS / 4
        )
    };
    format!(
        "\
process.roles=broker,controller
node.id={node_id}
controller.quorum.voters={voters}
listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}
advertised.listeners=PLAINTEXT://127.0.0.1:{port}
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs={data}
num.partitions=1
default.replication.factor={replicas}
min.insync.replicas={min_insync}
unclean.leader.election.enable=false
{liveness}offsets.topic.replication.factor={replicas}
offsets.topic.num.partitions=4
transaction.state.log.replication.factor={replicas}
transaction.state.log.min.isr={min_insync}
share.coordinator.state.topic.replication.factor={replicas}
share.coordinator.state.topic.min.isr={min_insync}
group.initial.rebalance.delay.ms=0
# Due segments deleted within a second, from a second after the start, so
# a test can keep outcomes for seconds (the engine's topics keep records
# shorter than outcomes, counting the wait for a retention check).
log.retention.check.interval.ms=1000
log.initial.task.delay.ms=1000
auto.create.topics.enable=false
num.network.threads=1
num.io.threads=2
",
        voters = quorum_voters(all),
        port = me.broker,
        controller_port = me.controller,
        data = data.display()
    )
}

fn log4j_properties(file: &Path) -> String {
    format!(
        "\
log4j.rootLogger=INFO, file
log4j.appender.file=org.apache.log4j.FileAppender
log4j.appender.file.File={}
log4j.appender.file.layout=org.apache.log4j.PatternLayout
log4j.appender.file.layout.ConversionPattern=[%d] %p %m (%c)%n
",
        file.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pinned_descriptor_names_the_version_we_expect() {
        let pom = std::fs::read_to_string(KAFKA_POM).unwrap();
        assert!(pom.contains("<artifactId>kafka_2.13</artifactId>"));
        assert!(
            pom.contains(&format!("<version>{KAFKA_VERSION}</version>")),
            "harness/kafka/pom.xml does not pin Kafka {KAFKA_VERSION}"
        );
    }

    #[test]
    fn a_cluster_node_knows_every_voter_and_keeps_three_replicas() {
        let all = [
            NodePorts {
                broker: 1,
                controller: 2,
            },
            NodePorts {
                broker: 3,
                controller: 4,
            },
            NodePorts {
                broker: 5,
                controller: 6,
            },
        ];
        let props = server_properties(2, &all, Path::new("/d"));
        assert!(props.contains("node.id=2\n"));
        assert!(
            props.contains("controller.quorum.voters=1@127.0.0.1:2,2@127.0.0.1:4,3@127.0.0.1:6\n")
        );
        assert!(props.contains("PLAINTEXT://127.0.0.1:3,CONTROLLER://127.0.0.1:4\n"));
        assert!(props.contains("default.replication.factor=3\n"));
        assert!(props.contains("min.insync.replicas=2\n"));
        assert!(props.contains("offsets.topic.replication.factor=3\n"));
        let alone = server_properties(1, &all[..1], Path::new("/d"));
        assert!(alone.contains("default.replication.factor=1\nmin.insync.replicas=1\n"));
    }
}
