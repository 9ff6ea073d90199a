//! `harness load` from start to report: the bare limits, the runs beside
//! the engine, the measured run, the drain, Redis's time per script, the
//! invariants and the report, one step a function.

use std::time::Duration;

use anyhow::Context;

use super::lag::{pipeline_timeline, LagSampler};
use super::side::{run_alone, run_on_engine, Done};
use super::{drive_http, fund, time_now_rfc3339, Beside, Generator, HttpRun};
use crate::infra::Infra;
use crate::invariants::{self, Verdict};
use crate::load::LoadProfile;
use crate::measure::wait_drained;
use crate::report::{
    cpu_readings, rss_kib, Comparison, CpuPerRequest, InvariantResult, Machine, PipelineResult,
    Ratios, Report,
};
use crate::script_sample::{ScriptCost, ScriptSampler};
use crate::stack::{isolated_config, EngineProcess};
use crate::workload::{Ledger, SentTx};
use txengine::config::{Config, RedisTopology};

/// Seconds of the sample that reads each script's cost from Redis's slow log.
const REDIS_SAMPLE_SECONDS: usize = 3;

/// The engine under test and what it needs to be driven.
pub(super) struct Engine<'a> {
    pub infra: &'a Infra,
    pub config: Config,
    pub process: EngineProcess,
    pub api_key: String,
    pub generator: Generator,
}

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
    let exe = std::env::current_exe().context("locating the harness binary")?;
    let mut runs = run_alone(&infra, &exe, &profile, (generator, warmup_seconds), beside).await?;
    let (engine, start) = start_engine(&infra, &exe, &profile, generator).await?;
    let mut earlier = warm_up(&engine, &profile, warmup_seconds).await?;
    runs.extend(run_on_engine(&engine, &exe, &profile, beside, &mut earlier).await?);
    let (mut measured, lag) = measure(&engine, &profile).await?;
    // The measured run's postings, as a share of its transactions/s (the
    // script sample after it adds transactions of its own to the ledger).
    let postings_share = {
        let accepted = &measured.run.ledger.accepted;
        let postings = accepted
            .iter()
            .filter(|tx| tx.kind == crate::workload::Kind::Postings)
            .count();
        postings as f64 / accepted.len().max(1) as f64
    };
    let mut ledger = Ledger {
        start,
        ..std::mem::take(&mut measured.run.ledger)
    };
    // Earlier runs' transactions count for the invariants, not for the
    // latencies.
    ledger
        .accepted
        .extend(earlier.accepted.into_iter().map(|tx| SentTx {
            accepted_at_ms: 0,
            ..tx
        }));
    ledger.refused.extend(earlier.refused);
    ledger.uncertain.extend(earlier.uncertain);
    eprintln!("waiting for the consumers to drain the topic ...");
    let drain = drain(&engine, Duration::from_secs(900)).await?;
    let (scripts, missing) = sample_script_costs(&engine, &profile, &mut ledger).await?;
    if generator == Generator::Wrk {
        rebuild_wrk_ledger(&engine, &profile, &runs, &measured.run, &mut ledger).await?;
    }
    let lag_samples = lag.stop().await;
    let verdict = invariants::check(&infra, &engine.config, &ledger).await?;
    let rss = engine
        .process
        .pid()
        .and_then(rss_kib)
        .map(|(_, peak)| peak as f64 / 1024.0);
    engine.process.terminate(Duration::from_secs(10));
    let mut pipeline = pipeline_result(&verdict, measured.started_ms, drain, rss);
    if profile.mix.postings > 0 {
        pipeline.postings_per_s = Some(postings_share * measured.run.result.transactions_per_s);
        pipeline.postings_legs = Some(profile.mix.postings_legs);
    }
    let report = Report {
        redis_scripts: scripts,
        redis_scripts_missing: missing,
        pipeline_timeline: pipeline_timeline(
            &verdict.settled_at_ms,
            measured.started_ms,
            &lag_samples,
        ),
        ..report_of(
            (scenario, generator, command, started_at),
            measured,
            runs,
            pipeline,
            &verdict,
        )
    };
    finish(report, report_dir, &verdict)
}

/// The engine under test, started as a child process, with a key of its
/// own and the profile's accounts funded: the start balances.
async fn start_engine<'a>(
    infra: &'a Infra,
    exe: &std::path::Path,
    profile: &LoadProfile,
    generator: Generator,
) -> anyhow::Result<(Engine<'a>, std::collections::HashMap<String, u64>)> {
    let mut config = isolated_config(infra, "load");
    config.listen = format!("127.0.0.1:{}", crate::infra::process::free_port()?).parse()?;
    eprintln!("starting the engine (api + consumer) as a child process ...");
    let process = EngineProcess::spawn(exe, config.clone()).await?;
    let api = process.api()?.with_new_key().await?;
    let api_key = api.api_key.clone().expect("a key was just made");
    let start = fund(&api, profile).await?;
    let engine = Engine {
        infra,
        config,
        process,
        api_key,
        generator,
    };
    Ok((engine, start))
}

/// Not measured: lets the broker's JIT warm up and the consumer group
/// settle its assignment, as on a system that has been running.
async fn warm_up(
    engine: &Engine<'_>,
    profile: &LoadProfile,
    warmup_seconds: usize,
) -> anyhow::Result<Ledger> {
    eprintln!(
        "engine: {}, {} users for {} s against {} ...",
        engine.generator.name(),
        profile.users,
        profile.seconds,
        engine.process.url
    );
    if warmup_seconds == 0 {
        return Ok(Ledger::default());
    }
    eprintln!("warm-up: {warmup_seconds} s of the same load, not measured ...");
    let warmup = LoadProfile {
        seconds: warmup_seconds,
        ..profile.clone()
    };
    let url = &engine.process.url;
    let run = drive_http(
        engine.generator,
        url,
        &engine.api_key,
        "warm-up",
        "warmup",
        &warmup,
    );
    Ok(run.await?.ledger)
}

/// The measured run.
struct Measured {
    run: HttpRun,
    /// `None` when a process was gone at either reading: not measured.
    cpu_per_request: CpuPerRequest,
    started_ms: u64,
}

/// Drives the engine with the profile, its CPU measured, and the group's
/// lag sampled from the start (the sampler is stopped after the drain).
async fn measure(
    engine: &Engine<'_>,
    profile: &LoadProfile,
) -> anyhow::Result<(Measured, LagSampler)> {
    let started_ms = txengine::wire::now_ms();
    let config = &engine.config;
    let lag = LagSampler::start(&engine.infra.kafka_brokers, &config.group, &config.topic);
    let (redis_pids, kafka_pids) = engine.infra.pids();
    // The generator is this process (goose) or a child it waits for (wrk);
    // Redis is every node of a cluster.
    let engine_pids: Vec<u32> = engine.process.pid().into_iter().collect();
    let cpu = || {
        cpu_readings(
            &engine_pids,
            &kafka_pids,
            &redis_pids,
            Some(std::process::id()),
        )
    };
    let before = cpu();
    let (url, key) = (&engine.process.url, &engine.api_key);
    let run = drive_http(engine.generator, url, key, "engine", "engine", profile).await?;
    let cpu_per_request = CpuPerRequest::between(before, cpu(), run.result.ok);
    let measured = Measured {
        run,
        cpu_per_request,
        started_ms,
    };
    Ok((measured, lag))
}

/// Waits until the engine's consumers stored every record of its topic.
pub(super) async fn drain(engine: &Engine<'_>, timeout: Duration) -> anyhow::Result<Duration> {
    let (brokers, config) = (&engine.infra.kafka_brokers, &engine.config);
    wait_drained(brokers, &config.group, &config.topic, timeout).await
}

/// Redis's own work per transaction, script by script: a short sample of
/// the same load with every command in Redis's slow log (which costs Redis
/// time of its own, so it is not the measured run), then drained; its
/// transactions go into `ledger`. A sample that fails is reported missing
/// (the second value says why, or why the figures are low); it never ends
/// the run.
async fn sample_script_costs(
    engine: &Engine<'_>,
    profile: &LoadProfile,
    ledger: &mut Ledger,
) -> anyhow::Result<(Vec<ScriptCost>, Option<String>)> {
    let masters = engine.infra.redis_masters()?;
    eprintln!(
        "Redis's work per script: {REDIS_SAMPLE_SECONDS} s of the same load with every command logged ..."
    );
    let sample = LoadProfile {
        seconds: REDIS_SAMPLE_SECONDS,
        ..profile.clone()
    };
    let sampler = ScriptSampler::start(&masters, txengine::store::Store::script_hashes()).await;
    let (url, key) = (&engine.process.url, &engine.api_key);
    let sampled = drive_http(engine.generator, url, key, "redis-sample", "costs", &sample).await;
    drain(engine, Duration::from_secs(300)).await?;
    let sampled = sampled?;
    let transactions = match engine.generator {
        Generator::Goose => sampled.ledger.accepted.len(),
        Generator::Wrk => sampled.result.ok * profile.batch,
    };
    ledger.absorb(sampled.ledger);
    let costs = match sampler {
        Ok(sampler) => sampler.finish(transactions as u64).await,
        Err(e) => Err(e),
    };
    Ok(match costs {
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
    })
}

/// wrk keeps no ledger: every run's accepted transactions are rebuilt from
/// the ids in Redis. Every item of a 2xx batch that wrk counted was
/// accepted; requests cut off at the end may have been accepted after wrk
/// stopped counting, so more records than that is expected, fewer is not.
async fn rebuild_wrk_ledger(
    engine: &Engine<'_>,
    profile: &LoadProfile,
    runs: &[Done],
    measured: &HttpRun,
    ledger: &mut Ledger,
) -> anyhow::Result<()> {
    let masters = engine.infra.redis_masters()?;
    let layout =
        txengine::store::Layout::new(&engine.config.namespace, engine.infra.redis_topology);
    let rebuild =
        |run: &'static str| crate::wrk::ledger_from_redis(&masters, &layout, run, profile.accounts);
    // The runs on this engine: the warm-up, the script sample and the
    // side runs on it.
    let tags = ["warmup", "costs"]
        .into_iter()
        .chain(runs.iter().filter_map(|side| side.tag_on_engine));
    for tag in tags {
        ledger.accepted.extend(rebuild(tag).await?.accepted);
    }
    let found = rebuild("engine").await?.accepted;
    let counted = measured.result.ok * profile.batch;
    anyhow::ensure!(
        found.len() >= counted,
        "wrk counted {counted} accepted transactions but Redis holds {}",
        found.len()
    );
    ledger.accepted.extend(found);
    Ok(())
}

/// The pipeline as the invariants saw it: outcomes decided from the start
/// of the measured run to the last one (warm-up transactions applied in
/// that window count: they were applied in it).
fn pipeline_result(
    verdict: &Verdict,
    started_ms: u64,
    drain: Duration,
    rss: Option<f64>,
) -> PipelineResult {
    let settled = verdict
        .settled_at_ms
        .iter()
        .filter(|at| **at >= started_ms)
        .count();
    let apply_seconds =
        (verdict.last_applied_at_ms.saturating_sub(started_ms) as f64 / 1000.0).max(0.001);
    PipelineResult {
        drain_seconds: drain.as_secs_f64(),
        apply_rate_tx_per_s: settled as f64 / apply_seconds,
        accept_to_applied_ms_p50: verdict.accept_to_applied_ms_p50,
        accept_to_applied_ms_p99: verdict.accept_to_applied_ms_p99,
        postings_per_s: None,
        postings_legs: None,
        service_peak_rss_mib: rss,
    }
}

/// The report of the run (without Redis's time per script and the
/// pipeline's timeline, which the caller adds).
fn report_of(
    (scenario, generator, command, started_at): (&str, Generator, String, String),
    measured: Measured,
    runs: Vec<Done>,
    pipeline: PipelineResult,
    verdict: &Verdict,
) -> Report {
    let engine = measured.run.result;
    let cpu = measured.cpu_per_request;
    let comparisons = runs
        .into_iter()
        .map(|done| Comparison::new(done.kind, done.measured, &engine, &cpu))
        .collect();
    let [engine_cpu, kafka_cpu, redis_cpu] = Ratios::cpu_vs_load_generator(&cpu);
    Report {
        schema_version: crate::report::SCHEMA_VERSION,
        scenario: scenario.to_owned(),
        generator: generator.name().to_owned(),
        command,
        started_at,
        machine: Machine::describe(),
        engine,
        comparisons,
        ratios: Ratios {
            engine_cpu_vs_load_generator: engine_cpu,
            kafka_cpu_vs_load_generator: kafka_cpu,
            redis_cpu_vs_load_generator: redis_cpu,
        },
        pipeline,
        cpu_per_request: cpu,
        redis_scripts: Vec::new(),
        redis_scripts_missing: None,
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
        timeline: measured.run.timeline,
        pipeline_timeline: Vec::new(),
    }
}

/// Writes the report, prints it, and fails the command when an invariant
/// broke or the engine answered errors. Shed requests (the engine's answer
/// to a load above what its consumers apply) are in the report, not errors.
fn finish(report: Report, report_dir: &std::path::Path, verdict: &Verdict) -> anyhow::Result<()> {
    let json = report.write(report_dir)?;
    println!(
        "{}",
        report.markdown("(chart: see the .svg beside the report)")
    );
    println!("report: {}", json.display());
    anyhow::ensure!(
        verdict.holds(),
        "{} invariant violations",
        verdict.violations.len()
    );
    let errors: usize = report
        .engine
        .errors_by_kind
        .iter()
        .filter(|(kind, _)| kind.as_str() != crate::load::SHED)
        .map(|(_, count)| count)
        .sum();
    anyhow::ensure!(
        errors == 0,
        "the engine answered {errors} requests with errors: {:?}",
        report.engine.errors_by_kind
    );
    Ok(())
}
