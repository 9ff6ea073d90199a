//! `harness up` starts the embedded stack; `harness load` drives it.

use clap::{Parser, Subcommand};
use harness::infra::{Infra, Provider};
use harness::stack::{isolated_config, Stack};

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
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,harness=info,txengine=info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Up { port } => up(port).await,
    }
}

async fn up(port: u16) -> anyhow::Result<()> {
    let provider = Provider::choose()?;
    eprintln!("starting {provider:?} infra (Redis, Kafka) ...");
    let infra = tokio::task::spawn_blocking(move || Infra::start(provider)).await??;
    let mut config = isolated_config(&infra, "up");
    config.listen = format!("127.0.0.1:{port}").parse()?;
    config.topic = "transactions".into();
    config.dlq_topic = "transactions.dlq".into();
    config.group = "txengine".into();
    config.namespace = "txe".into();
    let stack = Stack::start_with(config).await?;
    println!("TXENGINE_URL={}", stack.url);
    println!("TXENGINE_ADMIN_TOKEN={}", stack.admin_token);
    println!("TXENGINE_REDIS_URL={}", infra.redis_url);
    println!("TXENGINE_KAFKA_BROKERS={}", infra.kafka_brokers);
    txengine::app::shutdown_signal().await;
    eprintln!("stopping ...");
    stack.stop().await?;
    drop(infra);
    Ok(())
}
