//! `harness load`: the engine under a load generator (goose or wrk) on real
//! Redis and Kafka, the bare limits measured in the same run with the same
//! generator, the drain, the invariants, and the report.
//!
//! - this file: the generators, and how a run beside the engine is made
//!   (the bare limits, the same engine with another load, a second engine).
//! - [`side`]: which runs beside the engine there are, when each runs,
//!   and what the report says of it.
//! - [`args`]: `harness load`'s flags.
//! - [`run`]: `harness load` from start to report, one step a function.
//! - [`lag`]: the consumer group's lag sampled during the run.

mod args;
mod lag;
mod run;
mod side;

pub use args::LoadArgs;
pub use run::run_load;

use std::time::Duration;

use crate::infra::process::Supervised;
use crate::infra::Infra;
use crate::invariants;
use crate::load::{self, LoadProfile, Target};
use crate::measure::{wait_drained, HttpResult, SecondStats};
use crate::report::{cpu_readings, BareRun, CpuPerRequest, SideMeasurement};
use crate::stack::{isolated_config, EngineProcess};
use crate::workload::{account_name, Ledger};
use txengine::domain::{AccountId, Balance};
use txengine::store::{Store, StoreSettings};

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Generator {
    Goose,
    Wrk,
}

impl Generator {
    pub fn name(self) -> &'static str {
        match self {
            Self::Goose => "goose",
            Self::Wrk => "wrk",
        }
    }
}

/// What one generator run against an HTTP target gave.
struct HttpRun {
    result: HttpResult,
    timeline: Vec<SecondStats>,
    /// goose keeps the ledger; for wrk it is rebuilt from Redis afterwards.
    ledger: Ledger,
}

/// The same engine driven with `side` (`name` and `run` tag its ids)
/// before the measured run, then drained so the measured run starts on an
/// empty topic: its result and ledger, and the CPU per accepted request.
#[allow(clippy::too_many_arguments)]
async fn run_beside(
    infra: &Infra,
    config: &txengine::config::Config,
    engine: &EngineProcess,
    api_key: &str,
    generator: Generator,
    what: &str,
    (name, run): (&str, &str),
    side: &LoadProfile,
) -> anyhow::Result<(HttpRun, CpuPerRequest)> {
    eprintln!(
        "the same engine with {what} ({}, {} users for {} s) ...",
        generator.name(),
        side.users,
        side.seconds
    );
    let (redis_pids, kafka_pids) = infra.pids();
    let engines: Vec<u32> = engine.pid().into_iter().collect();
    let cpu = || cpu_readings(&engines, &kafka_pids, &redis_pids, Some(std::process::id()));
    let before = cpu();
    let driven = drive_http(generator, &engine.url, api_key, name, run, side).await?;
    let cpu_per_request = CpuPerRequest::between(before, cpu(), driven.result.ok);
    wait_drained(
        &infra.kafka_brokers,
        &config.group,
        &config.topic,
        Duration::from_secs(300),
    )
    .await?;
    Ok((driven, cpu_per_request))
}

/// Drives `url` with the chosen generator; `run` tags the ids (wrk).
async fn drive_http(
    generator: Generator,
    url: &str,
    api_key: &str,
    name: &str,
    run: &str,
    profile: &LoadProfile,
) -> anyhow::Result<HttpRun> {
    match generator {
        Generator::Goose => {
            let driven = load::drive(
                Target::Http {
                    base_url: url.to_owned(),
                    api_key: api_key.to_owned(),
                },
                name,
                profile,
            )
            .await?;
            Ok(HttpRun {
                result: driven.result,
                timeline: driven.timeline,
                ledger: driven.ledger,
            })
        }
        Generator::Wrk => {
            let (url, api_key, name, run, profile) = (
                url.to_owned(),
                api_key.to_owned(),
                name.to_owned(),
                run.to_owned(),
                profile.clone(),
            );
            let result = tokio::task::spawn_blocking(move || {
                crate::wrk::drive(&url, &api_key, &name, &run, &profile)
            })
            .await??;
            Ok(HttpRun {
                result,
                timeline: Vec::new(),
                ledger: Ledger::default(),
            })
        }
    }
}

/// The bare HTTP limit, in a child process like the engine.
async fn measure_bare_http(generator: Generator, profile: &LoadProfile) -> anyhow::Result<BareRun> {
    let exe = std::env::current_exe()?;
    let port = crate::infra::process::free_port()?;
    let dir = tempfile::Builder::new()
        .prefix("txengine-bare-")
        .tempdir()?;
    let mut command = std::process::Command::new(exe);
    command.args(["bare", "--listen", &format!("127.0.0.1:{port}")]);
    let mut server = Supervised::spawn("bare", command, &dir.path().join("bare.log"))?;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "bare server did not start: {}",
            server.log_tail(10)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "limit: bare axum 202 handler, {} users for {} s ...",
        profile.users, profile.seconds
    );
    let url = format!("http://127.0.0.1:{port}");
    // The bare handler checks nothing; it gets the same header as the engine.
    let (_, unchecked_key) = txengine::keys::generate();
    // The handler's process in the engine's place; Kafka and Redis idle.
    let server_pid: Vec<u32> = server.pid().into_iter().collect();
    let cpu_now = || cpu_readings(&server_pid, &[], &[], Some(std::process::id()));
    let before = cpu_now();
    let driven = drive_http(
        generator,
        &url,
        &unchecked_key,
        "bare-http-202",
        "bare",
        profile,
    )
    .await?;
    let after = cpu_now();
    server.terminate(Duration::from_secs(5));
    Ok(BareRun {
        cpu_per_request: CpuPerRequest::between(before, after, driven.result.ok),
        result: driven.result,
    })
}

/// The bare Redis limit: the apply script called directly by the same users.
pub(crate) async fn measure_redis_script(
    infra: &Infra,
    profile: &LoadProfile,
) -> anyhow::Result<BareRun> {
    let namespace = format!("limit-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let store = Store::connect(StoreSettings {
        topology: infra.redis_topology,
        url: &infra.redis_url,
        namespace: &namespace,
        outcome_ttl_secs: 3600,
        history_keep_secs: 3600,
        lease_ms: 30_000,
        response_timeout: Duration::from_secs(5),
        default_asset: Default::default(),
    })
    .await?;
    let partners = profile.partners.iter().flat_map(|p| p.values().cloned());
    for name in (0..profile.accounts).map(account_name).chain(partners) {
        store
            .set_balance(
                &AccountId::parse(&name)?,
                Balance::new(profile.start_balance as i64)?,
            )
            .await?
            .ensure_set()?;
    }
    eprintln!(
        "limit: Redis apply script directly, {} users for {} s ...",
        profile.users, profile.seconds
    );
    let (redis_pids, _) = infra.pids();
    let cpu_now = || cpu_readings(&[], &[], &redis_pids, Some(std::process::id()));
    let before = cpu_now();
    let result = load::drive(
        Target::RedisScript {
            store: Box::new(store),
        },
        "redis-apply-script",
        profile,
    )
    .await?
    .result;
    let after = cpu_now();
    Ok(BareRun {
        cpu_per_request: CpuPerRequest::between(before, after, result.ok),
        result,
    })
}

/// What `harness load` measures beside the engine, in the same run.
#[derive(Debug, Clone, Copy)]
pub struct Beside {
    /// The bare limits (an axum 202, the Redis script) and the limiter off.
    pub limits: bool,
    /// An engine that writes no history and publishes no outcome events.
    pub history_events_off: bool,
    /// An engine whose topics are on a Kafka of three brokers.
    pub three_kafka_nodes: bool,
}

/// Funds the profile's accounts (and partners) through `api`: the start
/// balances of the ledger.
async fn fund(
    api: &crate::client::ApiClient,
    profile: &LoadProfile,
) -> anyhow::Result<std::collections::HashMap<String, u64>> {
    eprintln!(
        "funding {} accounts with {} each ...",
        profile.accounts, profile.start_balance
    );
    let mut start = api
        .fund_accounts(profile.accounts, profile.start_balance)
        .await?;
    for partner in profile.partners.iter().flat_map(|p| p.values()) {
        api.set_balance(partner, profile.start_balance).await?;
        start.insert(partner.clone(), profile.start_balance);
    }
    Ok(start)
}

/// How a second engine, driven before the measured one, differs from it.
#[derive(Debug, Clone, Copy)]
enum SideEngine {
    /// It writes no history (`--history-retention-secs 0`) and publishes
    /// no outcome events.
    WithoutHistoryEvents,
    /// Its topics are on the Kafka of the infra it is given (three brokers).
    OnThreeKafkaNodes,
}

impl SideEngine {
    /// Its namespace's prefix, what it is (for the log) and its run names.
    fn names(self) -> (&'static str, &'static str, (&'static str, &'static str)) {
        match self {
            Self::WithoutHistoryEvents => (
                "load-plain",
                "no history and no outcome events",
                ("engine-without-history-events", "plain"),
            ),
            Self::OnThreeKafkaNodes => (
                "load-three",
                "its topics on three Kafka brokers",
                ("engine-on-three-kafka-nodes", "three"),
            ),
        }
    }
}

/// The same load on a second engine (its own namespace, topics and group)
/// set up as `side` says, warmed up as the measured one is, run before it:
/// its result, CPU per request and invariants (goose keeps the ledger).
async fn run_side_engine(
    infra: &Infra,
    exe: &std::path::Path,
    profile: &LoadProfile,
    generator: Generator,
    warmup_seconds: usize,
    side: SideEngine,
) -> anyhow::Result<SideMeasurement> {
    let (prefix, what, names) = side.names();
    let mut config = isolated_config(infra, prefix);
    config.listen = format!("127.0.0.1:{}", crate::infra::process::free_port()?).parse()?;
    if let SideEngine::WithoutHistoryEvents = side {
        config.history_retention_secs = Some(0);
        config.outcome_events = false;
    }
    eprintln!("starting an engine with {what} ...");
    let engine = EngineProcess::spawn(exe, config.clone()).await?;
    let api = engine.api()?.with_new_key().await?;
    let api_key = api.api_key.clone().expect("a key was just made");
    let start = fund(&api, profile).await?;
    let mut ledger = Ledger::default();
    if warmup_seconds > 0 {
        let warmup = LoadProfile {
            seconds: warmup_seconds,
            ..profile.clone()
        };
        let url = &engine.url;
        let tag = format!("{}warm", names.1);
        ledger = drive_http(generator, url, &api_key, "warm-up", &tag, &warmup)
            .await?
            .ledger;
    }
    let (run, cpu_per_request) = run_beside(
        infra, &config, &engine, &api_key, generator, what, names, profile,
    )
    .await?;
    ledger.absorb(run.ledger);
    let invariants_hold = match generator {
        Generator::Goose => {
            let ledger = Ledger { start, ..ledger };
            let verdict = invariants::check(infra, &config, &ledger).await?;
            for violation in verdict.violations.iter().take(10) {
                eprintln!("  violated (the engine with {what}): {violation}");
            }
            Some(verdict.holds())
        }
        Generator::Wrk => None,
    };
    engine.terminate(Duration::from_secs(10));
    Ok(SideMeasurement {
        result: run.result,
        cpu_per_request,
        invariants_hold,
    })
}

/// Now as RFC 3339 UTC, from the `date` the machine has (no time crate needed).
pub(crate) fn time_now_rfc3339() -> String {
    std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%dT%H:%M:%SZ"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}
