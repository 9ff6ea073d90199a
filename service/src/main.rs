use clap::Parser;
use txengine::{app, Config, Engine};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,rdkafka=warn".into()),
        )
        .init();
    let config = Config::parse();
    let engine = Engine::start(&config).await?;
    engine.run_until(app::shutdown_signal()).await
}
