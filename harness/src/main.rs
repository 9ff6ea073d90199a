//! `harness up` starts the embedded stack; `harness load` drives it;
//! `harness engine` is the engine itself, run as a child process.

use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use harness::infra::{Infra, Provider};
use harness::invariants;
use harness::load::{self, LoadProfile};
use harness::stack::{isolated_config, EngineProcess, Stack};

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
    /// Start the embedded stack, drive it with goose, wait for the consumers
    /// to drain the topic, check the invariants and print a summary.
    Load {
        /// Concurrent users.
        #[arg(long, default_value_t = 200)]
        users: usize,
        /// Seconds of load.
        #[arg(long, default_value_t = 20)]
        seconds: usize,
        /// Accounts the mix spreads over.
        #[arg(long, default_value_t = 1000)]
        accounts: usize,
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
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| default_filter.into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = tokio::runtime::Runtime::new()?;
    match cli.command {
        Command::Up { port } => runtime.block_on(up(port)),
        Command::Load {
            users,
            seconds,
            accounts,
        } => runtime.block_on(run_load(LoadProfile {
            users,
            seconds,
            accounts,
            ..LoadProfile::default()
        })),
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

async fn start_infra() -> anyhow::Result<Infra> {
    let provider = Provider::choose()?;
    eprintln!("starting {provider:?} infra (Redis, Kafka) ...");
    tokio::task::spawn_blocking(move || Infra::start(provider)).await?
}

async fn up(port: u16) -> anyhow::Result<()> {
    let infra = start_infra().await?;
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

async fn run_load(profile: LoadProfile) -> anyhow::Result<()> {
    let infra = start_infra().await?;
    let mut config = isolated_config(&infra, "load");
    config.listen = format!("127.0.0.1:{}", harness::infra::process::free_port()?).parse()?;
    let exe = std::env::current_exe().context("locating the harness binary")?;
    eprintln!("starting the engine (api + consumer) as a child process ...");
    let engine = EngineProcess::spawn(&exe, config.clone()).await?;

    eprintln!(
        "funding {} accounts with {} each ...",
        profile.accounts, profile.start_balance
    );
    let stack_client = reqwest::Client::new();
    let mut ledger = invariants::Ledger::default();
    for i in 0..profile.accounts {
        let account = format!("acct-{i}");
        let response = stack_client
            .put(format!("{}/balance/{account}", engine.url))
            .bearer_auth(config.admin_token.as_deref().unwrap_or_default())
            .json(&serde_json::json!({ "balance": profile.start_balance }))
            .send()
            .await?;
        anyhow::ensure!(
            response.status().is_success(),
            "funding {account}: {}",
            response.status()
        );
        ledger.start.insert(account, profile.start_balance);
    }

    eprintln!(
        "goose: {} users for {} s against {} ...",
        profile.users, profile.seconds, engine.url
    );
    let (http, sent) = load::drive(&engine.url, "engine", &profile, true).await?;
    ledger.accepted = sent.accepted;
    ledger.refused = sent.refused;

    eprintln!("waiting for the consumers to drain the topic ...");
    let drain = load::wait_drained(
        &infra.kafka_brokers,
        &config.group,
        &config.topic,
        Duration::from_secs(600),
    )
    .await?;
    let verdict = invariants::check(&infra.redis_url, &config.namespace, &ledger).await?;
    engine.terminate(Duration::from_secs(10));

    println!();
    println!(
        "txengine load summary ({} users, {} s, {} accounts)",
        profile.users, http.seconds, profile.accounts
    );
    println!("  requests          {}", http.requests);
    println!("  accepted (2xx)    {}", http.ok);
    println!(
        "  accepted RPS      {:.0}",
        http.ok as f64 / http.seconds as f64
    );
    println!(
        "  latency ms        p50 {:.1}  p95 {:.1}  p99 {:.1}  max {:.1}",
        http.latency_ms_p50, http.latency_ms_p95, http.latency_ms_p99, http.latency_ms_max
    );
    println!("  errors            {:?}", http.errors_by_kind);
    println!("  drain after load  {:.1} s", drain.as_secs_f64());
    println!(
        "  outcomes          {} applied, {} rejected {:?}",
        verdict.applied, verdict.rejected, verdict.rejected_by_reason
    );
    println!(
        "  money             start {} end {}",
        verdict.start_total, verdict.end_total
    );
    if verdict.holds() {
        println!("  invariants        all hold");
        Ok(())
    } else {
        for violation in verdict.violations.iter().take(50) {
            println!("  VIOLATION         {violation}");
        }
        anyhow::bail!("{} invariant violations", verdict.violations.len())
    }
}
