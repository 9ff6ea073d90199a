//! The harness's command line: `up` starts the embedded stack, `load` and
//! `backlog` measure it ([`harness::bench`], [`harness::backlog`]), `engine`
//! and `bare` are the child processes those runs start.

use clap::{Parser, Subcommand};

/// mimalloc: the profile of the engine under load showed ~14% of its CPU in
/// glibc malloc/free (many small, short-lived allocations per request).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use harness::bench::LoadArgs;
use harness::infra::{Infra, TopologyArgs};
use harness::stack::{isolated_config, Stack};
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
        #[command(flatten)]
        topology: TopologyArgs,
    },
    /// Start the embedded stack, drive it with goose, wait for the consumers
    /// to drain the topic, check the invariants, measure the bare limits with
    /// the same generator, and write a report under reports/.
    Load(LoadArgs),
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
        #[command(flatten)]
        topology: TopologyArgs,
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
        #[command(flatten)]
        topology: TopologyArgs,
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
        Command::Up { port, topology } => runtime.block_on(up(port, topology)),
        Command::Load(args) => runtime.block_on(args.run()),
        Command::Backlog {
            count,
            accounts,
            partitions,
            topology,
            compare_topologies: true,
        } => runtime.block_on(harness::backlog::compare_topologies(
            count,
            accounts,
            partitions,
            topology.kafka_nodes,
        )),
        Command::Backlog {
            count,
            accounts,
            partitions,
            topology,
            compare_topologies: false,
        } => runtime.block_on(harness::backlog::run_backlog(
            count,
            accounts,
            partitions,
            topology.redis_topology,
            topology.kafka_nodes,
        )),
        Command::Scenario { file, topology } => runtime.block_on(run_scenario(&file, topology)),
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

async fn up(port: u16, topology: TopologyArgs) -> anyhow::Result<()> {
    let infra = Infra::start_chosen(topology.redis_topology, topology.kafka_nodes).await?;
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
    // On stderr: stdout stays lines of NAME=value for the shell.
    eprintln!(
        "the console: {}/console (sign in with the API key and the admin token above)",
        stack.url
    );
    txengine::app::shutdown_signal().await;
    eprintln!("stopping ...");
    stack.stop().await?;
    drop(infra);
    Ok(())
}

/// `harness scenario`: one file, on the chosen topology, with a verdict.
async fn run_scenario(file: &std::path::Path, topology: TopologyArgs) -> anyhow::Result<()> {
    let TopologyArgs {
        redis_topology: topology,
        kafka_nodes,
    } = topology;
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
