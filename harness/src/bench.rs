//! `harness load`: the engine under a load generator (goose or wrk) on real
//! Redis and Kafka, the bare limits measured in the same run with the same
//! generator, the drain, the invariants, and the report.

use std::time::Duration;

use anyhow::Context;

use crate::infra::process::Supervised;
use crate::infra::Infra;
use crate::invariants;
use crate::load::{self, LoadProfile, Target};
use crate::measure::{consumer_lag, wait_drained, HttpResult, SecondStats};
use crate::report::{
    cpu_readings, rss_kib, BareRun, CpuPerRequest, InvariantResult, LimiterOff, Machine,
    PipelineResult, PipelineSecond, PlainDebits, Ratios, Report, SideEngineRun,
};
use crate::script_sample::ScriptSampler;
use crate::stack::{isolated_config, EngineProcess};
use crate::workload::{account_name, Ledger, Mix, SentTx};
use txengine::config::RedisTopology;
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
    })
    .await?;
    let partners = profile.partners.iter().flat_map(|p| p.values().cloned());
    for name in (0..profile.accounts).map(account_name).chain(partners) {
        store
            .set_balance(
                &AccountId::parse(&name)?,
                Balance::new(profile.start_balance)?,
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

/// The consumer group's lag, read once a second on a thread of its own
/// until stopped: `(second since start, lag)`, `None` where the broker did
/// not answer.
struct LagSampler {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    samples: tokio::task::JoinHandle<Vec<(usize, Option<i64>)>>,
}

impl LagSampler {
    fn start(brokers: &str, group: &str, topic: &str) -> Self {
        use std::sync::atomic::Ordering;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (brokers, group, topic) = (brokers.to_owned(), group.to_owned(), topic.to_owned());
        let stopped = stop.clone();
        let samples = tokio::task::spawn_blocking(move || {
            let started = std::time::Instant::now();
            let mut samples = Vec::new();
            while !stopped.load(Ordering::Relaxed) {
                let second = started.elapsed().as_secs() as usize;
                samples.push((second, consumer_lag(&brokers, &group, &topic).ok()));
                let next = Duration::from_secs(second as u64 + 1);
                std::thread::sleep(next.saturating_sub(started.elapsed()));
            }
            samples
        });
        Self { stop, samples }
    }

    async fn stop(mut self) -> Vec<(usize, Option<i64>)> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        (&mut self.samples).await.unwrap_or_default()
    }
}

impl Drop for LagSampler {
    /// A run that fails before `stop` must not leave the sampling thread
    /// running: the runtime would wait for it forever at exit.
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Outcomes decided per second since `start_ms`, beside the lag samples.
fn pipeline_timeline(
    settled_at_ms: &[u64],
    start_ms: u64,
    lag: &[(usize, Option<i64>)],
) -> Vec<PipelineSecond> {
    let mut applied: Vec<usize> = Vec::new();
    for at in settled_at_ms.iter().filter(|at| **at >= start_ms) {
        let second = ((at - start_ms) / 1000) as usize;
        if applied.len() <= second {
            applied.resize(second + 1, 0);
        }
        applied[second] += 1;
    }
    let seconds = applied
        .len()
        .max(lag.last().map_or(0, |(second, _)| second + 1));
    (0..seconds)
        .map(|second| PipelineSecond {
            second,
            applied: applied.get(second).copied().unwrap_or(0),
            consumer_lag: lag
                .iter()
                .find(|(s, _)| *s == second)
                .and_then(|(_, lag)| *lag),
        })
        .collect()
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
) -> anyhow::Result<SideEngineRun> {
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
    Ok(SideEngineRun {
        result: run.result,
        cpu_per_request,
        invariants_hold,
    })
}

/// Seconds of the sample that reads each script's cost from Redis's slow log.
const REDIS_SAMPLE_SECONDS: usize = 3;

/// Runs `harness load` (see the README's first command).
#[allow(clippy::too_many_arguments)]
pub async fn run_load(
    profile: LoadProfile,
    scenario: &str,
    report_dir: &std::path::Path,
    beside: Beside,
    warmup_seconds: usize,
    generator: Generator,
    topology: RedisTopology,
    kafka_nodes: usize,
) -> anyhow::Result<()> {
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let started_at = time_now_rfc3339();
    let infra = Infra::start_chosen(topology, kafka_nodes).await?;
    let limits = beside.limits;

    let bare_http = if limits {
        Some(measure_bare_http(generator, &profile).await?)
    } else {
        None
    };
    // wrk speaks only HTTP: the Redis limit is measured with goose runs.
    let redis_script = if limits && generator == Generator::Goose {
        Some(measure_redis_script(&infra, &profile).await?)
    } else {
        None
    };

    let mut config = isolated_config(&infra, "load");
    config.listen = format!("127.0.0.1:{}", crate::infra::process::free_port()?).parse()?;
    let exe = std::env::current_exe().context("locating the harness binary")?;
    let without_history_events = if beside.history_events_off {
        let side = SideEngine::WithoutHistoryEvents;
        Some(run_side_engine(&infra, &exe, &profile, generator, warmup_seconds, side).await?)
    } else {
        None
    };
    let on_three_kafka_nodes = if beside.three_kafka_nodes {
        let three = tokio::task::block_in_place(|| infra.beside_own_kafka(3))?;
        let side = SideEngine::OnThreeKafkaNodes;
        let run = run_side_engine(&three, &exe, &profile, generator, warmup_seconds, side).await?;
        // Its brokers stop before the measured run.
        drop(three);
        Some(run)
    } else {
        None
    };
    eprintln!("starting the engine (api + consumer) as a child process ...");
    let engine = EngineProcess::spawn(&exe, config.clone()).await?;
    eprintln!(
        "funding {} accounts with {} each ...",
        profile.accounts, profile.start_balance
    );
    let api = engine.api()?.with_new_key().await?;
    let api_key = api.api_key.clone().expect("a key was just made");
    let start = fund(&api, &profile).await?;

    eprintln!(
        "engine: {}, {} users for {} s against {} ...",
        generator.name(),
        profile.users,
        profile.seconds,
        engine.url
    );
    let mut warmup_ledger = Ledger::default();
    if warmup_seconds > 0 {
        // Not measured: lets the broker's JIT warm up and the consumer group
        // settle its assignment, as on a system that has been running.
        eprintln!("warm-up: {warmup_seconds} s of the same load, not measured ...");
        let warmup = LoadProfile {
            seconds: warmup_seconds,
            ..profile.clone()
        };
        warmup_ledger = drive_http(
            generator,
            &engine.url,
            &api_key,
            "warm-up",
            "warmup",
            &warmup,
        )
        .await?
        .ledger;
    }
    // The same load through an API process with the limiter off (the
    // engine's consumer applies it), drained before the measured run: what
    // the limiter costs, in this run.
    let limiter_off = if limits {
        let mut off_config = config.clone();
        off_config.role = txengine::Role::Api;
        off_config.rate_limit = txengine::config::RateLimitMode::Off;
        off_config.listen = format!("127.0.0.1:{}", crate::infra::process::free_port()?).parse()?;
        let off_api = EngineProcess::spawn(&exe, off_config).await?;
        eprintln!(
            "the same load with the rate limiter off ({}, {} users for {} s) ...",
            generator.name(),
            profile.users,
            profile.seconds
        );
        let (redis_pids, kafka_pids) = infra.pids();
        let (engine_pid, generator_pid) = (engine.pid(), Some(std::process::id()));
        let engines: Vec<u32> = engine_pid.into_iter().chain(off_api.pid()).collect();
        let cpu_off = || cpu_readings(&engines, &kafka_pids, &redis_pids, generator_pid);
        let before = cpu_off();
        let off = drive_http(
            generator,
            &off_api.url,
            &api_key,
            "engine-limiter-off",
            "nolimit",
            &profile,
        )
        .await?;
        let after = cpu_off();
        off_api.terminate(Duration::from_secs(10));
        let cpu_per_request = CpuPerRequest::between(before, after, off.result.ok);
        warmup_ledger.absorb(off.ledger);
        wait_drained(
            &infra.kafka_brokers,
            &config.group,
            &config.topic,
            Duration::from_secs(300),
        )
        .await?;
        Some(LimiterOff {
            result: off.result,
            cpu_per_request,
        })
    } else {
        None
    };
    // With batches: the same engine with single requests first, drained
    // before the measured batch run, so that one report has both.
    let engine_single = if profile.batch > 1 {
        let single = LoadProfile {
            batch: 1,
            ..profile.clone()
        };
        let (run, _) = run_beside(
            &infra,
            &config,
            &engine,
            &api_key,
            generator,
            "single requests",
            ("engine-single", "single"),
            &single,
        )
        .await?;
        warmup_ledger.absorb(run.ledger);
        Some(run.result)
    } else {
        None
    };
    // With holds: the same engine with plain debits first, likewise.
    let plain_debits = if profile.holds {
        let debits = LoadProfile {
            holds: false,
            mix: Mix {
                debit: 100,
                transfer: 0,
                credit: 0,
                hold: 0,
                ..Mix::LOAD
            },
            ..profile.clone()
        };
        let (run, cpu_per_request) = run_beside(
            &infra,
            &config,
            &engine,
            &api_key,
            generator,
            "plain debits",
            ("engine-debits", "debits"),
            &debits,
        )
        .await?;
        warmup_ledger.absorb(run.ledger);
        Some(PlainDebits {
            cpu_per_request,
            result: run.result,
        })
    } else {
        None
    };
    let load_started_ms = txengine::wire::now_ms();
    let lag_sampler = LagSampler::start(&infra.kafka_brokers, &config.group, &config.topic);
    let (redis_pids, kafka_pids) = infra.pids();
    let (engine_pid, generator_pid) = (engine.pid(), Some(std::process::id()));
    // The generator is this process (goose) or a child it waits for (wrk);
    // Redis is every node of a cluster.
    let engine_pids: Vec<u32> = engine_pid.into_iter().collect();
    let cpu_now = || cpu_readings(&engine_pids, &kafka_pids, &redis_pids, generator_pid);
    let cpu_before = cpu_now();
    let driven = drive_http(
        generator,
        &engine.url,
        &api_key,
        "engine",
        "engine",
        &profile,
    )
    .await?;
    let cpu_after = cpu_now();
    // None when a process was gone at either reading: not measured.
    let cpu_per_request = CpuPerRequest::between(cpu_before, cpu_after, driven.result.ok);
    let mut ledger = Ledger {
        start,
        ..driven.ledger
    };
    // Warm-up (and limiter-off) transactions count for the invariants, not
    // for the latencies.
    ledger
        .accepted
        .extend(warmup_ledger.accepted.into_iter().map(|tx| SentTx {
            accepted_at_ms: 0,
            ..tx
        }));
    ledger.refused.extend(warmup_ledger.refused);
    ledger.uncertain.extend(warmup_ledger.uncertain);

    eprintln!("waiting for the consumers to drain the topic ...");
    let drain = wait_drained(
        &infra.kafka_brokers,
        &config.group,
        &config.topic,
        Duration::from_secs(900),
    )
    .await?;
    // Redis's own work per transaction, script by script: a short sample
    // of the same load with every command in Redis's slow log (which costs
    // Redis time of its own, so it is not the measured run), then drained.
    // A sample that fails is reported missing; it never ends the run.
    let masters = infra.redis_masters()?;
    eprintln!(
        "Redis's work per script: {REDIS_SAMPLE_SECONDS} s of the same load with every command logged ..."
    );
    let sample = LoadProfile {
        seconds: REDIS_SAMPLE_SECONDS,
        ..profile.clone()
    };
    let sampler = ScriptSampler::start(&masters, txengine::store::Store::script_hashes()).await;
    let sampled = drive_http(
        generator,
        &engine.url,
        &api_key,
        "redis-sample",
        "costs",
        &sample,
    )
    .await;
    wait_drained(
        &infra.kafka_brokers,
        &config.group,
        &config.topic,
        Duration::from_secs(300),
    )
    .await?;
    let sampled = sampled?;
    let sampled_transactions = match generator {
        Generator::Goose => sampled.ledger.accepted.len(),
        Generator::Wrk => sampled.result.ok * profile.batch,
    };
    let redis_scripts = match sampler {
        Ok(sampler) => sampler.finish(sampled_transactions as u64).await,
        Err(e) => Err(e),
    };
    let (redis_scripts, redis_scripts_missing) = match redis_scripts {
        Ok((costs, 0)) => (costs, None),
        Ok((costs, dropped)) => {
            let note = format!("{dropped} commands were dropped from the slow log before it was read: the figures are low");
            eprintln!("warning: {note}");
            (costs, Some(note))
        }
        Err(e) => {
            eprintln!("warning: Redis's work per script was not measured: {e:#}");
            (Vec::new(), Some(format!("not measured: {e:#}")))
        }
    };
    ledger.absorb(sampled.ledger);

    if generator == Generator::Wrk {
        let layout = txengine::store::Layout::new(&config.namespace, infra.redis_topology);
        // wrk keeps no ledger: rebuild both runs' from the ids in Redis.
        let rebuild = |run: &'static str| {
            crate::wrk::ledger_from_redis(&masters, &layout, run, profile.accounts)
        };
        ledger.accepted.extend(rebuild("warmup").await?.accepted);
        if limiter_off.is_some() {
            ledger.accepted.extend(rebuild("nolimit").await?.accepted);
        }
        if engine_single.is_some() {
            ledger.accepted.extend(rebuild("single").await?.accepted);
        }
        ledger.accepted.extend(rebuild("costs").await?.accepted);
        let measured = rebuild("engine").await?.accepted;
        // Requests cut off at the end may have been accepted after wrk
        // stopped counting: more records than 2xx answers (times the
        // items of each) is expected, fewer is not: every item of a 2xx
        // batch that wrk counted was accepted.
        let counted = driven.result.ok * profile.batch;
        anyhow::ensure!(
            measured.len() >= counted,
            "wrk counted {counted} accepted transactions but Redis holds {}",
            measured.len()
        );
        ledger.accepted.extend(measured);
    }
    let lag_samples = lag_sampler.stop().await;
    let verdict = invariants::check(&infra, &config, &ledger).await?;
    let rss = engine
        .pid()
        .and_then(rss_kib)
        .map(|(_, peak)| peak as f64 / 1024.0);
    engine.terminate(Duration::from_secs(10));

    // Outcomes decided from the start of the measured run to the last one
    // (warm-up transactions applied in that window count: they were applied in it).
    let settled = verdict
        .settled_at_ms
        .iter()
        .filter(|at| **at >= load_started_ms)
        .count();
    let apply_seconds =
        (verdict.last_applied_at_ms.saturating_sub(load_started_ms) as f64 / 1000.0).max(0.001);
    let engine_result = driven.result;
    let cpu_vs_generator = Ratios::cpu_vs_load_generator(&cpu_per_request);
    let report = Report {
        schema_version: crate::report::SCHEMA_VERSION,
        scenario: scenario.to_owned(),
        generator: generator.name().to_owned(),
        command,
        started_at,
        machine: Machine::describe(),
        ratios: Ratios {
            engine_vs_bare_http: bare_http
                .as_ref()
                .map(|b| engine_result.transactions_per_s / b.result.transactions_per_s),
            engine_vs_redis_script: redis_script
                .as_ref()
                .map(|r| engine_result.transactions_per_s / r.result.transactions_per_s),
            engine_cpu_vs_load_generator: cpu_vs_generator[0],
            kafka_cpu_vs_load_generator: cpu_vs_generator[1],
            redis_cpu_vs_load_generator: cpu_vs_generator[2],
            engine_vs_limiter_off: limiter_off
                .as_ref()
                .map(|off| engine_result.rps / off.result.rps),
            holds_vs_debits: plain_debits
                .as_ref()
                .map(|d| engine_result.transactions_per_s / d.result.transactions_per_s),
            holds_vs_debits_engine_cpu: plain_debits
                .as_ref()
                .and_then(|d| Some(cpu_per_request.engine_us? / d.cpu_per_request.engine_us?)),
            engine_batch_vs_single: engine_single
                .as_ref()
                .map(|single| engine_result.transactions_per_s / single.transactions_per_s),
            engine_vs_without_history_events: without_history_events
                .as_ref()
                .map(|w| engine_result.transactions_per_s / w.result.transactions_per_s),
            three_kafka_nodes_vs_engine: on_three_kafka_nodes
                .as_ref()
                .map(|t| t.result.transactions_per_s / engine_result.transactions_per_s),
        },
        engine: engine_result,
        engine_single,
        bare_http,
        redis_script,
        limiter_off,
        plain_debits,
        without_history_events,
        on_three_kafka_nodes,
        pipeline: PipelineResult {
            drain_seconds: drain.as_secs_f64(),
            apply_rate_tx_per_s: settled as f64 / apply_seconds,
            accept_to_applied_ms_p50: verdict.accept_to_applied_ms_p50,
            accept_to_applied_ms_p99: verdict.accept_to_applied_ms_p99,
            service_peak_rss_mib: rss,
        },
        cpu_per_request,
        redis_scripts,
        redis_scripts_missing,
        invariants: InvariantResult {
            holds: verdict.holds(),
            accepted: verdict.accepted,
            applied: verdict.applied,
            rejected: verdict.rejected,
            rejected_by_reason: verdict.rejected_by_reason.clone().into_iter().collect(),
            money_start_total: verdict.start_total,
            money_end_total: verdict.end_total,
            violations: verdict.violations.iter().take(50).cloned().collect(),
        },
        timeline: driven.timeline,
        pipeline_timeline: pipeline_timeline(&verdict.settled_at_ms, load_started_ms, &lag_samples),
    };
    let json = report.write(report_dir)?;
    println!(
        "{}",
        report.markdown("(chart: see the .svg beside the report)")
    );
    println!("report: {}", json.display());
    drop(infra);
    anyhow::ensure!(
        verdict.holds(),
        "{} invariant violations",
        verdict.violations.len()
    );
    let errors: usize = report.engine.errors_by_kind.values().sum();
    anyhow::ensure!(
        errors == 0,
        "the engine answered {errors} requests with errors: {:?}",
        report.engine.errors_by_kind
    );
    Ok(())
}

/// Now as RFC 3339 UTC, from the `date` the machine has (no time crate needed).
pub(crate) fn time_now_rfc3339() -> String {
    std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%dT%H:%M:%SZ"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}
