//! Wiring: builds the store, the publisher, the HTTP server and the consumer
//! from a `Config`, runs them, and stops them gracefully.

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::Context;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::config::{Config, Role};
use crate::consumer::{ConsumerHealth, ConsumerSettings, TxConsumer};
use crate::expirer::Expirer;
use crate::http::{self, ApiState};
use crate::publisher::{Publisher, PublisherSettings};
use crate::server::{serve_until_shutdown, ConnectionLimits};
use crate::store::{Store, StoreSettings};
use crate::topics::ensure_topics;

/// A running engine: its HTTP address (if it serves one) and its tasks.
pub struct Engine {
    /// Where the API listens, for role `api` and `all`.
    pub addr: Option<SocketAddr>,
    shutdown: watch::Sender<bool>,
    tasks: JoinSet<anyhow::Result<()>>,
}

/// The process-wide Prometheus recorder (a recorder can be installed once).
fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            // Real histograms (not summaries) for every `*_seconds` metric, so
            // dashboards can aggregate them over instances.
            const SECONDS_BUCKETS: &[f64] = &[
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ];
            PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)
                .expect("non-empty buckets")
                .install_recorder()
                .expect("no other metrics recorder is installed")
        })
        .clone()
}

/// The store `config` names, connected, checked (no eviction) and in this
/// build's key layout (earlier layouts moved, a newer one refused).
async fn connect_store(config: &Config) -> anyhow::Result<Store> {
    let store = Store::connect(StoreSettings {
        url: &config.redis_url,
        topology: config.redis_topology,
        namespace: &config.namespace,
        outcome_ttl_secs: config.outcome_ttl_secs,
        history_keep_secs: config.history_retention_secs(),
        lease_ms: config.lease_ms,
        response_timeout: Duration::from_millis(config.redis_timeout_ms),
        default_asset: config.default_asset.clone(),
    })
    .await
    .with_context(|| {
        format!(
            "connecting to redis at {}",
            crate::config::redacted_url(&config.redis_url)
        )
    })?;
    store.ensure_no_eviction().await?;
    store
        .migrate()
        .await
        .context("bringing Redis's data to this version's key layout")?;
    Ok(store)
}

/// Binds the API's listener and serves `state` in `tasks` until shutdown,
/// then flushes its producer; the address it listens on.
async fn spawn_api(
    config: &Config,
    state: std::sync::Arc<ApiState>,
    tasks: &mut JoinSet<anyhow::Result<()>>,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding {}", config.listen))?;
    let addr = listener.local_addr()?;
    let publisher = state.publisher.clone();
    let serving = serve_until_shutdown(
        listener,
        http::router(state),
        ConnectionLimits::from_config(config),
        shutdown,
    );
    tasks.spawn(async move {
        serving.await?;
        // In-flight requests have had their answers; nothing is left
        // in the producer queue, but flush in case.
        tokio::task::spawn_blocking(move || publisher.flush(Duration::from_secs(5))).await?;
        Ok(())
    });
    tracing::info!(%addr, "api listening");
    Ok(addr)
}

/// What the consumer of `config` reads, writes and waits for.
fn consumer_settings(config: &Config) -> ConsumerSettings<'_> {
    ConsumerSettings {
        brokers: &config.kafka_brokers,
        group: &config.group,
        topic: &config.topic,
        dlq_topic: &config.dlq_topic,
        outcomes_topic: config
            .outcome_events
            .then_some(config.outcomes_topic.as_str()),
        batch_size: config.batch_size,
        wait_replicas: config.wait_replicas(),
        wait_timeout: config.wait_timeout(),
    }
}

impl Engine {
    /// Connects to Redis and Kafka, creates the topics if missing, binds the
    /// listener and starts the roles of `config`.
    pub async fn start(config: &Config) -> anyhow::Result<Self> {
        anyhow::ensure!(
            config.role != Role::Openapi,
            "role openapi prints a document; it runs no engine"
        );
        config.validate()?;
        // Read once here, so a bad token file stops the start before anything.
        config.admin_token()?;
        let metrics = metrics_handle();
        ensure_topics(&config.topic_settings())
            .await
            .with_context(|| format!("checking the topics on {}", config.kafka_brokers))?;
        let store = connect_store(config).await?;

        let (shutdown, shutdown_rx) = watch::channel(false);
        let consumer_health = ConsumerHealth::default();
        let runs_consumer = matches!(config.role, Role::Consumer | Role::All);
        let mut tasks = JoinSet::new();
        let mut addr = None;

        // The API's records and the expirer's share one producer.
        let publisher = Publisher::new(PublisherSettings {
            brokers: &config.kafka_brokers,
            topic: &config.topic,
            max_in_flight: config.max_in_flight,
            publish_timeout: Duration::from_millis(config.publish_timeout_ms),
            linger: Duration::from_millis(config.linger_ms),
        })?;
        if matches!(config.role, Role::Api | Role::All) {
            let health = runs_consumer.then(|| consumer_health.clone());
            let state = ApiState::from_config(
                config,
                store.clone(),
                publisher.clone(),
                health,
                metrics.clone(),
            )?;
            addr = Some(spawn_api(config, state, &mut tasks, shutdown_rx.clone()).await?);
        }
        if let (Role::Consumer, Some(listen)) = (config.role, config.metrics_listen) {
            let listener = tokio::net::TcpListener::bind(listen)
                .await
                .with_context(|| format!("binding {listen}"))?;
            let router = http::metrics_router(metrics.clone(), consumer_health.clone());
            let serving = serve_until_shutdown(
                listener,
                router,
                ConnectionLimits::from_config(config),
                shutdown_rx.clone(),
            );
            tasks.spawn(async move { Ok(serving.await?) });
            tracing::info!(%listen, "consumer metrics listening");
        }
        if runs_consumer {
            let expirer = Expirer::new(
                store.clone(),
                publisher.clone(),
                Duration::from_millis(config.expire_scan_ms),
            );
            tasks.spawn(expirer.run(shutdown_rx.clone()));
            let consumer = TxConsumer::new(consumer_settings(config), store, consumer_health)?;
            tasks.spawn(consumer.run(shutdown_rx));
        }
        Ok(Self {
            addr,
            shutdown,
            tasks,
        })
    }

    /// Asks every role to stop, waits for in-flight work and returns the
    /// first error any role ended with.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        let _ = self.shutdown.send(true);
        let mut result = Ok(());
        while let Some(joined) = self.tasks.join_next().await {
            if let Err(e) = joined.map_err(anyhow::Error::from).and_then(|r| r) {
                tracing::error!(error = %e, "role ended with an error");
                result = result.and(Err(e));
            }
        }
        result
    }

    /// Runs until a role ends by itself (an error) or `signal` resolves,
    /// then stops gracefully.
    pub async fn run_until(
        mut self,
        signal: impl std::future::Future<Output = ()>,
    ) -> anyhow::Result<()> {
        tokio::select! {
            _ = signal => tracing::info!("shutting down"),
            Some(ended) = self.tasks.join_next() => {
                let _ = self.shutdown.send(true);
                ended??;
                anyhow::bail!("a role stopped by itself");
            }
        }
        self.stop().await
    }
}

/// Logs to stderr, filtered by `RUST_LOG` (else `default_filter`), with
/// colours only when stderr is a terminal: a log file or a collector gets
/// plain text.
pub fn init_logging(default_filter: &str) {
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| default_filter.into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
