//! The harness's command line: `up` starts the embedded stack, `load` and
//! `backlog` measure it ([`harness::bench`], [`harness::backlog`]), `engine`
//! and `bare` are the child processes those runs start.

use clap::{Parser, Subcommand};

/// mimalloc: the profile of the engine under load showed ~14% of its CPU in
/// glibc malloc/free (many small, short-lived allocations per request).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use harness::bench::{run_load, Generator};
use harness::infra::Infra;
use harness::load::LoadProfile;
use harness::stack::{isolated_config, Stack};
use harness::workload::Transfers;
use txengine::config::RedisTopology;

#[derive(Parser)]
#[command(
    name = "harness",
    about = "Run, fault and load-test txengine on real Redis and Kafka"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start Redis, Kafka, a consumer and the API; print their addresses;
    /// stop everything on SIGINT/SIGTERM.
    Up {
        /// Port for the API (0: any free port).
        #[arg(long, default_value_t = 8080)]
        port: u16,
        /// One Redis, or a local Redis Cluster (3 masters with 2 replicas each).
        #[arg(long, value_enum, default_value = "single")]
        redis_topology: RedisTopology,
        /// Kafka brokers: 1, or 3 (local or docker provider) whose topics keep 3
        /// replicas, 2 of them in sync for every write.
        #[arg(long, env = "TXENGINE_KAFKA_NODES", default_value_t = 1, value_parser = kafka_nodes)]
        kafka_nodes: usize,
    },
    /// Start the embedded stack, drive it with goose, wait for the consumers
    /// to drain the topic, check the invariants, measure the bare limits with
    /// the same generator, and write a report under reports/.
    Load {
        /// Concurrent users.
        #[arg(long, default_value_t = 200)]
        users: usize,
        /// Seconds of load, for the engine and for each bare limit.
        #[arg(long, default_value_t = 20)]
        seconds: usize,
        /// Accounts the mix spreads over.
        #[arg(long, default_value_t = 1000)]
        accounts: usize,
        /// Name of the run in the report file names.
        #[arg(long, default_value = "default")]
        scenario: String,
        /// Where reports go.
        #[arg(long, default_value = "reports")]
        report_dir: std::path::PathBuf,
        /// The load generator: goose (users, per-second timeline, ledger) or
        /// wrk (lean, for peak capacity).
        #[arg(long, value_enum, default_value = "goose")]
        generator: Generator,
        /// Seconds of unmeasured load on the engine before the measured run.
        #[arg(long, default_value_t = 5)]
        warmup_seconds: usize,
        /// Skip the bare limits (engine only).
        #[arg(long)]
        no_limits: bool,
        /// One Redis, or a local Redis Cluster (3 masters with 2 replicas each).
        #[arg(long, value_enum, default_value = "single")]
        redis_topology: RedisTopology,
        /// Kafka brokers: 1, or 3 (local or docker provider) whose topics keep 3
        /// replicas, 2 of them in sync for every write.
        #[arg(long, env = "TXENGINE_KAFKA_NODES", default_value_t = 1, value_parser = kafka_nodes)]
        kafka_nodes: usize,
        /// Transfers to any account, or each to a partner account in its
        /// source's slot (goose only): on a cluster, sagas or one script.
        #[arg(long, value_enum, default_value = "as-drawn")]
        transfers: Transfers,
        /// Transactions per request: above 1, every request is a POST
        /// /transactions/batch of this many (and the Redis limit applies
        /// this many a call), and the same engine is also measured with
        /// single requests in the same run, side by side.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=txengine::limits::MAX_BATCH_ITEMS as u64))]
        batch: u64,
        /// Two-phase (goose, single requests): each user posts a hold and
        /// then its capture, and the same engine is also measured with
        /// plain debits in the same run, side by side.
        #[arg(long)]
        holds: bool,
        /// Also drive an engine that writes no history and publishes no
        /// outcome events (its own namespace and topics) with the same load
        /// in the same run: what history and events cost per transaction.
        #[arg(long)]
        compare_history_events: bool,
        /// Also drive an engine whose topics are on a Kafka of three
        /// brokers (started beside, the same Redis) with the same load in
        /// the same run: what replication costs per transaction.
        #[arg(long, conflicts_with = "kafka_nodes")]
        compare_kafka_nodes: bool,
    },
    /// Publish a backlog of transactions straight into a topic, then start a
    /// consumer and measure how fast it applies them; checks the invariants.
    Backlog {
        /// Transactions in the backlog.
        #[arg(long, default_value_t = 1_000_000)]
        count: usize,
        /// Accounts the mix spreads over.
        #[arg(long, default_value_t = 1000)]
        accounts: usize,
        /// Partitions of the topic (consumers apply partitions in parallel).
        #[arg(long, default_value_t = 8)]
        partitions: i32,
        /// One Redis, or a local Redis Cluster (3 masters with 2 replicas each).
        #[arg(long, value_enum, default_value = "single")]
        redis_topology: RedisTopology,
        /// Kafka brokers: 1, or 3 (local or docker provider) whose topics keep 3
        /// replicas, 2 of them in sync for every write.
        #[arg(long, env = "TXENGINE_KAFKA_NODES", default_value_t = 1, value_parser = kafka_nodes)]
        kafka_nodes: usize,
        /// Run three backlogs side by side instead: one Redis, the cluster
        /// with transfers between slots (sagas), the cluster with transfers
        /// within a slot; writes reports/<time>-backlog-topologies.{json,md}.
        #[arg(long, conflicts_with = "redis_topology")]
        compare_topologies: bool,
    },
    /// Run one scenario file (faults under load, judged by the invariants)
    /// on a Redis or a local Redis Cluster; exits non-zero if it fails.
    Scenario {
        /// The scenario file, e.g. scenarios/saga-crash.toml.
        file: std::path::PathBuf,
        /// One Redis, or a local Redis Cluster (3 masters with 2 replicas each).
        #[arg(long, value_enum, default_value = "single")]
        redis_topology: RedisTopology,
        /// Kafka brokers: 1, or 3 (local or docker provider) whose topics keep 3
        /// replicas, 2 of them in sync for every write.
        #[arg(long, env = "TXENGINE_KAFKA_NODES", default_value_t = 1, value_parser = kafka_nodes)]
        kafka_nodes: usize,
    },
    /// Serve the bare HTTP limit: an axum handler that only answers 202.
    #[command(hide = true)]
    Bare {
        #[arg(long)]
        listen: std::net::SocketAddr,
    },
    /// Run the engine (the same flags as `txengine`); used as a child process.
    #[command(hide = true)]
    Engine {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let default_filter = match cli.command {
        Command::Engine { .. } => "info,rdkafka=warn",
        _ => "warn,harness=info,txengine=info",
    };
    txengine::app::init_logging(default_filter);
    let runtime = tokio::runtime::Runtime::new()?;
    match cli.command {
        Command::Up {
            port,
            redis_topology,
            kafka_nodes,
        } => runtime.block_on(up(port, redis_topology, kafka_nodes)),
        Command::Load {
            users,
            seconds,
            accounts,
            scenario,
            report_dir,
            no_limits,
            warmup_seconds,
            generator,
            redis_topology,
            kafka_nodes,
            transfers,
            batch,
            holds,
            compare_history_events,
            compare_kafka_nodes,
        } => {
            anyhow::ensure!(
                transfers == Transfers::AsDrawn || generator == Generator::Goose,
                "--transfers within-slot needs goose (wrk's script draws its own transfers)"
            );
            anyhow::ensure!(
                !holds || (generator == Generator::Goose && batch == 1),
                "--holds needs goose and single requests (a capture follows its hold's answer)"
            );
            // The shard of a name does not depend on the namespace.
            let layout = txengine::store::Layout::new("", redis_topology);
            let profile = LoadProfile {
                users,
                seconds,
                accounts,
                partners: (transfers == Transfers::WithinSlot)
                    .then(|| harness::workload::partners(&layout, accounts)),
                batch: batch as usize,
                holds,
                ..LoadProfile::default()
            };
            runtime.block_on(run_load(
                profile,
                &scenario,
                &report_dir,
                harness::bench::Beside {
                    limits: !no_limits,
                    history_events_off: compare_history_events,
                    three_kafka_nodes: compare_kafka_nodes,
                },
                warmup_seconds,
                generator,
                redis_topology,
                kafka_nodes,
            ))
        }
        Command::Backlog {
            count,
            accounts,
            partitions,
            kafka_nodes,
            compare_topologies: true,
            ..
        } => runtime.block_on(harness::backlog::compare_topologies(
            count,
            accounts,
            partitions,
            kafka_nodes,
        )),
        Command::Backlog {
            count,
            accounts,
            partitions,
            redis_topology,
            kafka_nodes,
            compare_topologies: false,
        } => runtime.block_on(harness::backlog::run_backlog(
            count,
            accounts,
            partitions,
            redis_topology,
            kafka_nodes,
        )),
        Command::Scenario {
            file,
            redis_topology,
            kafka_nodes,
        } => runtime.block_on(run_scenario(&file, redis_topology, kafka_nodes)),
        Command::Bare { listen } => runtime.block_on(harness::bare::serve(listen)),
        Command::Engine { args } => {
            let config = <txengine::Config as clap::Parser>::parse_from(
                std::iter::once("txengine".to_owned()).chain(args),
            );
            runtime.block_on(async {
                let engine = txengine::Engine::start(&config).await?;
                engine.run_until(txengine::app::shutdown_signal()).await
            })
        }
    }
}

/// `--kafka-nodes`: 1 or 3.
fn kafka_nodes(text: &str) -> Result<usize, String> {
    match text {
        "1" => Ok(1),
        "3" => Ok(3),
        _ => Err(format!("{text}: a local Kafka has 1 or 3 brokers")),
    }
}

async fn up(port: u16, redis_topology: RedisTopology, kafka_nodes: usize) -> anyhow::Result<()> {
    let infra = Infra::start_chosen(redis_topology, kafka_nodes).await?;
    let mut config = isolated_config(&infra, "up");
    config.listen = format!("127.0.0.1:{port}").parse()?;
    config.topic = "transactions".into();
    config.dlq_topic = "transactions.dlq".into();
    config.outcomes_topic = "transactions.outcomes".into();
    config.group = "txengine".into();
    config.namespace = "txe".into();
    let stack = Stack::start_with(config).await?;
    println!("TXENGINE_URL={}", stack.url);
    println!("TXENGINE_ADMIN_TOKEN={}", stack.admin_token);
    // The stack's own key: every account, limited far above any load here.
    println!(
        "TXENGINE_API_KEY={}",
        stack.api_key.as_deref().expect("the stack makes a key")
    );
    println!("TXENGINE_REDIS_URL={}", infra.redis_url);
    println!("TXENGINE_REDIS_TOPOLOGY={}", infra.redis_topology.name());
    println!("TXENGINE_KAFKA_BROKERS={}", infra.kafka_brokers);
    let (replicas, min_insync) = infra.topic_replication();
    println!("TXENGINE_TOPIC_REPLICATION_FACTOR={replicas}");
    println!("TXENGINE_TOPIC_MIN_INSYNC_REPLICAS={min_insync}");
    txengine::app::shutdown_signal().await;
    eprintln!("stopping ...");
    stack.stop().await?;
    drop(infra);
    Ok(())
}

/// `harness scenario`: one file, on the chosen topology, with a verdict.
async fn run_scenario(
    file: &std::path::Path,
    topology: RedisTopology,
    kafka_nodes: usize,
) -> anyhow::Result<()> {
    let scenario = harness::scenario::Scenario::load(file)?;
    anyhow::ensure!(
        !scenario.cluster_only || topology == RedisTopology::Cluster,
        "{} runs on a Redis Cluster only: add --redis-topology cluster",
        scenario.name
    );
    anyhow::ensure!(
        !scenario.kafka_cluster_only || kafka_nodes == 3,
        "{} runs on a Kafka of three brokers only: add --kafka-nodes 3",
        scenario.name
    );
    let infra = Infra::start_chosen(topology, kafka_nodes).await?;
    let outcome = harness::scenario::run(&scenario, &infra, &std::env::current_exe()?).await?;
    println!("{}", outcome.summary(&scenario.name, &infra));
    anyhow::ensure!(outcome.passed(), "scenario failed:\n{}", outcome.explain());
    println!("every invariant holds");
    Ok(())
}
