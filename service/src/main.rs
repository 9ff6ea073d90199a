use clap::Parser;

/// mimalloc: the profile of the engine under load showed ~14% of its CPU in
/// glibc malloc/free (many small, short-lived allocations per request).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use txengine::{app, Config, Engine, Role};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    app::init_logging("info,rdkafka=warn");
    let config = Config::parse();
    if config.role == Role::Openapi {
        print!("{}", txengine::http::openapi_document());
        return Ok(());
    }
    let engine = Engine::start(&config).await?;
    engine.run_until(app::shutdown_signal()).await
}
