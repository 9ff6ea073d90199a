//! An engine on top of an infra, isolated from every other engine on it by
//! its own topic, DLQ topic, consumer group and Redis key namespace, with a
//! small HTTP client for its API.

use std::time::{Duration, Instant};

use anyhow::Context;
use txengine::config::Secret;
use txengine::{Config, Engine, Role};
use txengine_client::{Method, StatusCode};

use crate::client::ApiClient;
use crate::infra::Infra;

/// A fresh configuration for an engine named `name` on `infra`: unique
/// topics, group and namespace, a random admin token, an ephemeral port.
pub fn isolated_config(infra: &Infra, name: &str) -> Config {
    let unique = format!("{name}-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let mut config = Config::defaults();
    config.role = Role::All;
    config.listen = "127.0.0.1:0".parse().expect("loopback address");
    config.redis_url = infra.redis_url.clone();
    config.redis_topology = infra.redis_topology;
    // On a cluster the default waits for a replica (Config::wait_replicas).
    config.kafka_brokers = infra.kafka_brokers.clone();
    (
        config.topic_replication_factor,
        config.topic_min_insync_replicas,
    ) = infra.topic_replication();
    config.topic = format!("tx-{unique}");
    config.dlq_topic = format!("tx-{unique}.dlq");
    config.outcomes_topic = format!("tx-{unique}.outcomes");
    config.group = format!("g-{unique}");
    config.namespace = unique;
    config.partitions = 4;
    config.admin_token = Some(Secret::new(uuid::Uuid::new_v4().simple().to_string()));
    config.admin_token_file = None;
    config
}

/// A running engine and a client for it with an API key of its own, scoped
/// to every account (the stack derefs to its [`ApiClient`]:
/// `stack.post(..)`, `stack.balance(..)`).
pub struct Stack {
    pub config: Config,
    /// The API's base URL.
    pub url: String,
    pub api: ApiClient,
    engine: Option<Engine>,
}

impl std::ops::Deref for Stack {
    type Target = ApiClient;

    fn deref(&self) -> &ApiClient {
        &self.api
    }
}

impl Stack {
    pub async fn start(infra: &Infra, name: &str) -> anyhow::Result<Self> {
        Self::start_with(isolated_config(infra, name)).await
    }

    pub async fn start_with(config: Config) -> anyhow::Result<Self> {
        let engine = Engine::start(&config).await?;
        let addr = engine.addr.context("the stack needs the api role")?;
        let url = format!("http://{addr}");
        let api = ApiClient::new(&url, admin_token(&config), Duration::from_secs(30))?
            .with_new_key()
            .await?;
        Ok(Self {
            api,
            url,
            engine: Some(engine),
            config,
        })
    }

    /// Waits until the engine's consumer group has stored an offset past
    /// every record of its topic (lag 0).
    pub async fn wait_drained(&self, timeout: Duration) -> anyhow::Result<Duration> {
        crate::measure::wait_drained(
            &self.config.kafka_brokers,
            &self.config.group,
            &self.config.topic,
            timeout,
        )
        .await
    }

    /// Stops the engine gracefully (drains in-flight work, commits offsets).
    pub async fn stop(mut self) -> anyhow::Result<()> {
        match self.engine.take() {
            Some(engine) => engine.stop().await,
            None => Ok(()),
        }
    }
}

/// The admin token of `config`, or "" if it has none.
pub fn admin_token(config: &Config) -> &str {
    config
        .admin_token
        .as_ref()
        .map(Secret::expose)
        .unwrap_or_default()
}

/// An engine in a child process (`harness engine ...`), so that it can be
/// killed with -9 and so that a load generator does not share its runtime.
pub struct EngineProcess {
    pub config: Config,
    /// The API's base URL; empty for a consumer-only process.
    pub url: String,
    process: crate::infra::process::Supervised,
    _log_dir: tempfile::TempDir,
}

impl EngineProcess {
    /// Starts `exe engine <flags of config>`; with an API role, waits for
    /// `/ready` (a consumer-only process serves no HTTP: its progress shows
    /// as consumer lag).
    /// `exe` is the harness binary (`std::env::current_exe()` from it,
    /// `env!("CARGO_BIN_EXE_harness")` from its tests).
    pub async fn spawn(exe: &std::path::Path, config: Config) -> anyhow::Result<Self> {
        Self::spawn_with_env(exe, config, &[]).await
    }

    /// [`EngineProcess::spawn`] with more environment variables (say
    /// `RUST_LOG`) for the child.
    pub async fn spawn_with_env(
        exe: &std::path::Path,
        config: Config,
        env: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let log_dir = tempfile::Builder::new()
            .prefix("txengine-engine-")
            .tempdir()?;
        let mut command = std::process::Command::new(exe);
        command
            .arg("engine")
            .args(config.to_args())
            .envs(env.iter().copied());
        if let Some(token) = &config.admin_token {
            command.env("TXENGINE_ADMIN_TOKEN", token.expose());
        }
        let log = log_dir.path().join("engine.log");
        let process = crate::infra::process::Supervised::spawn("engine", command, &log)?;
        let serves_http = config.role != Role::Consumer;
        let url = if serves_http {
            format!("http://{}", config.listen)
        } else {
            String::new()
        };
        let engine = Self {
            config,
            url,
            process,
            _log_dir: log_dir,
        };
        if serves_http {
            engine.wait_ready(Duration::from_secs(60)).await?;
        }
        Ok(engine)
    }

    /// A consumer-only engine process for `config`'s group.
    pub async fn spawn_consumer(exe: &std::path::Path, mut config: Config) -> anyhow::Result<Self> {
        config.role = Role::Consumer;
        Self::spawn(exe, config).await
    }

    async fn wait_ready(&self, timeout: Duration) -> anyhow::Result<()> {
        let client = txengine_client::Client::with_options(
            &self.url,
            None,
            Duration::from_secs(5),
            txengine_client::RetryPolicy::NEVER,
        )?;
        let deadline = Instant::now() + timeout;
        loop {
            let ready = client.send_raw(Method::GET, "/ready", None).await;
            if ready.is_ok_and(|answer| answer.status == StatusCode::OK) {
                return Ok(());
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "engine not ready after {timeout:?}; log tail:\n{}",
                self.process.log_tail(30)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.process.pid()
    }

    /// The last `lines` lines of the process's log (stdout and stderr).
    pub fn log_tail(&self, lines: usize) -> String {
        self.process.log_tail(lines)
    }

    /// SIGTERM and wait for the graceful stop (SIGKILL after `grace`).
    pub fn terminate(mut self, grace: Duration) {
        self.process.terminate(grace);
    }

    /// A client for this process's API, without an API key (see
    /// [`ApiClient::with_new_key`]).
    pub fn api(&self) -> anyhow::Result<ApiClient> {
        ApiClient::new(
            &self.url,
            admin_token(&self.config),
            Duration::from_secs(10),
        )
    }

    /// kill -9: no drain, no final commit.
    pub fn kill(mut self) {
        self.process.kill();
    }
}
