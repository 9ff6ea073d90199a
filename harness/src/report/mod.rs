//! Load reports: JSON (stable, versioned schema, see `reports/README.md`),
//! Markdown for people, and an SVG chart of RPS and latency over time.
//!
//! - this module: the report's types, machine facts and the JSON written
//!   beside the other two;
//! - [`markdown`]: the Markdown report, one writer per paragraph or table;
//! - [`chart`]: the SVG chart (plotters);
//! - [`resources`]: CPU time and resident memory of processes, from /proc.

mod chart;
mod markdown;
mod resources;

use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Serialize;

use crate::measure::{HttpResult, SecondStats};
pub use resources::{
    cpu_readings, cpu_time_sum_us, cpu_time_us, cpu_time_with_children_us, rss_kib,
};

/// Bumped whenever a field changes meaning or goes away.
pub const SCHEMA_VERSION: u32 = 7;

#[derive(Debug, Clone, Default, Serialize)]
pub struct Machine {
    pub cores: usize,
    pub memory_gib: f64,
    pub cpu_model: String,
    pub kernel: String,
    pub rustc: String,
    pub redis_server: String,
    pub kafka: String,
    pub java: String,
}

impl Machine {
    /// This machine's cores, memory, CPU, kernel and tool versions: what a
    /// report's figures depend on.
    pub fn describe() -> Self {
        let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
        let memory_kib: f64 = read("/proc/meminfo")
            .lines()
            .find(|l| l.starts_with("MemTotal:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        let cpu_model = read("/proc/cpuinfo")
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split(':').nth(1))
            .map(|s| s.trim().to_owned())
            .unwrap_or_default();
        let first_line = |program: &str, args: &[&str]| {
            Command::new(program)
                .args(args)
                .output()
                .map(|o| {
                    let text = if o.stdout.is_empty() {
                        o.stderr
                    } else {
                        o.stdout
                    };
                    String::from_utf8_lossy(&text)
                        .lines()
                        .next()
                        .unwrap_or("")
                        .trim()
                        .to_owned()
                })
                .unwrap_or_else(|_| "not found".to_owned())
        };
        Self {
            cores: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(0),
            memory_gib: (memory_kib / 1024.0 / 1024.0 * 10.0).round() / 10.0,
            cpu_model,
            kernel: read("/proc/sys/kernel/osrelease").trim().to_owned(),
            rustc: first_line("rustc", &["--version"]),
            redis_server: first_line("redis-server", &["--version"]),
            kafka: format!(
                "Apache Kafka {} (KRaft; one node, or three with --kafka-nodes 3)",
                crate::infra::kafka::KAFKA_VERSION
            ),
            java: first_line("java", &["-version"]),
        }
    }
}

/// What the consumers did with the load.
#[derive(Debug, Clone, Serialize)]
pub struct PipelineResult {
    /// Seconds from the end of the load until the group's lag was 0.
    pub drain_seconds: f64,
    /// Transactions applied per second, from the first 202 to the drain.
    pub apply_rate_tx_per_s: f64,
    /// From the client's 202 to the apply time the consumer recorded;
    /// `None` when the generator keeps no timestamps (wrk).
    pub accept_to_applied_ms_p50: Option<f64>,
    pub accept_to_applied_ms_p99: Option<f64>,
    /// Peak resident memory of the engine process.
    /// `None` (null) when the engine process was gone before it was read.
    pub service_peak_rss_mib: Option<f64>,
}

/// CPU time each process spent per accepted request during the engine run
/// (user + system, from /proc): where the machine's two cores went.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CpuPerRequest {
    /// `None` (null) when the process was not there to be measured.
    pub engine_us: Option<f64>,
    pub kafka_us: Option<f64>,
    pub redis_us: Option<f64>,
    pub load_generator_us: Option<f64>,
}

impl CpuPerRequest {
    /// From CPU readings (µs; engine, Kafka, Redis, load generator) taken
    /// before and after a run that got `ok` requests through; a process
    /// missing at either reading is not measured.
    pub fn between(before: [Option<u64>; 4], after: [Option<u64>; 4], ok: usize) -> Self {
        let per_request = |i: usize| {
            let used = after[i]?.checked_sub(before[i]?)?;
            (ok > 0).then(|| used as f64 / ok as f64)
        };
        Self {
            engine_us: per_request(0),
            kafka_us: per_request(1),
            redis_us: per_request(2),
            load_generator_us: per_request(3),
        }
    }
}

/// `20261128T114110` from an RFC 3339 start time: report file names.
pub fn file_stamp(started_at: &str) -> String {
    started_at
        .replace([':', '-'], "")
        .chars()
        .take(15)
        .collect()
}

/// One second of the pipeline during and after a load run.
#[derive(Debug, Clone, Serialize)]
pub struct PipelineSecond {
    pub second: usize,
    /// Outcomes decided in this second (the consumer's clock).
    pub applied: usize,
    /// Records not yet committed by the consumer group; `None` when the
    /// broker did not answer in time.
    pub consumer_lag: Option<i64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct InvariantResult {
    pub holds: bool,
    pub accepted: usize,
    pub applied: usize,
    pub rejected: usize,
    pub rejected_by_reason: std::collections::BTreeMap<String, usize>,
    pub money_start_total: u128,
    pub money_end_total: u128,
    /// The first 50 violations, if any.
    pub violations: Vec<String>,
}

/// A bare limit's run: what the generator saw, and the CPU per request of
/// the bare server (in `engine_us`: the axum 202 handler's process) or of
/// Redis (the apply script), and of the generator.
#[derive(Debug, Clone, Serialize)]
pub struct BareRun {
    #[serde(flatten)]
    pub result: HttpResult,
    pub cpu_per_request: CpuPerRequest,
}

#[derive(Debug, Clone, Serialize)]
pub struct Ratios {
    /// Engine accepted transactions/s / bare axum 202 transactions/s, same
    /// generator, settings and batch size; `None` when the bare limits were
    /// not measured (`--no-limits`).
    pub engine_vs_bare_http: Option<f64>,
    /// Engine accepted transactions/s / Redis apply-script transactions/s.
    pub engine_vs_redis_script: Option<f64>,
    /// Engine accepted RPS / the same with the rate limiter off: what the
    /// limiter costs (API keys are checked in both).
    pub engine_vs_limiter_off: Option<f64>,
    /// With `--holds`: transactions/s of hold-then-capture over plain
    /// debits', and the engine's CPU per transaction of each, in the run.
    pub holds_vs_debits: Option<f64>,
    pub holds_vs_debits_engine_cpu: Option<f64>,
    /// Engine transactions/s in batches / with single requests, same run.
    pub engine_batch_vs_single: Option<f64>,
    /// With `--compare-history-events`: engine transactions/s / an
    /// engine's without history and outcome events, same run.
    pub engine_vs_without_history_events: Option<f64>,
    /// With `--compare-kafka-nodes`: transactions/s on three Kafka brokers
    /// / the engine's (on one), same run.
    pub three_kafka_nodes_vs_engine: Option<f64>,
    /// Engine CPU per accepted request / the load generator's CPU per
    /// request, in the engine run (the machine's speed cancels out).
    pub engine_cpu_vs_load_generator: Option<f64>,
    /// The same for Kafka's and Redis's CPU per accepted request.
    pub kafka_cpu_vs_load_generator: Option<f64>,
    pub redis_cpu_vs_load_generator: Option<f64>,
}

impl Ratios {
    /// The CPU ratios of `cpu` (the engine run) to its load generator.
    pub fn cpu_vs_load_generator(cpu: &CpuPerRequest) -> [Option<f64>; 3] {
        let ratio = |us: Option<f64>| Some(us? / cpu.load_generator_us.filter(|g| *g > 0.0)?);
        [
            ratio(cpu.engine_us),
            ratio(cpu.kafka_us),
            ratio(cpu.redis_us),
        ]
    }
}

/// The same load on the same engine with `--rate-limit off`, run right
/// after the measured one: what the limiter costs.
#[derive(Debug, Clone, Serialize)]
pub struct LimiterOff {
    pub result: HttpResult,
    /// The engine's share is both processes' (an API without the limiter,
    /// and the measured engine, whose consumer applies this run too).
    pub cpu_per_request: CpuPerRequest,
}

/// With `--holds`: the same engine driven with plain debits in the same
/// run (before the measured hold-then-capture run), for the cost of holds.
#[derive(Debug, Clone, Serialize)]
pub struct PlainDebits {
    pub result: HttpResult,
    pub cpu_per_request: CpuPerRequest,
}

/// The same load, in the same run, on a second engine set up otherwise
/// (`--compare-history-events`: no history and no outcome events;
/// `--compare-kafka-nodes`: its topics on three Kafka brokers).
#[derive(Debug, Clone, Serialize)]
pub struct SideEngineRun {
    pub result: HttpResult,
    pub cpu_per_request: CpuPerRequest,
    /// Its own invariants (`None` with wrk, which keeps no ledger).
    pub invariants_hold: Option<bool>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub schema_version: u32,
    pub scenario: String,
    pub generator: String,
    pub command: String,
    pub started_at: String,
    pub machine: Machine,
    pub engine: HttpResult,
    /// With `--batch` above 1: the same engine driven with single requests
    /// in the same run (before the measured batch run), for the ratio.
    pub engine_single: Option<HttpResult>,
    pub bare_http: Option<BareRun>,
    pub redis_script: Option<BareRun>,
    /// `None` with `--no-limits`.
    pub limiter_off: Option<LimiterOff>,
    /// With `--holds`: the measured run posts holds and their captures.
    pub plain_debits: Option<PlainDebits>,
    pub without_history_events: Option<SideEngineRun>,
    /// With `--compare-kafka-nodes`: the engine on three Kafka brokers.
    pub on_three_kafka_nodes: Option<SideEngineRun>,
    pub ratios: Ratios,
    pub pipeline: PipelineResult,
    pub cpu_per_request: CpuPerRequest,
    /// Redis's time in each Lua script, from a short sample after the
    /// measured run with every command in Redis's slow log.
    pub redis_scripts: Vec<crate::script_sample::ScriptCost>,
    /// Why the figures above are missing or incomplete (the sample failed,
    /// or the slow log dropped commands before they were read).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis_scripts_missing: Option<String>,
    pub invariants: InvariantResult,
    /// Per second of the engine run: requests answered and latency.
    pub timeline: Vec<SecondStats>,
    /// Per second from the start of the measured run until the drain ended:
    /// outcomes decided and the consumer group's lag.
    pub pipeline_timeline: Vec<PipelineSecond>,
}

impl Report {
    /// Writes `<dir>/<date>-<scenario>-<generator>.{json,md,svg}`; returns the JSON path.
    pub fn write(&self, dir: &Path) -> anyhow::Result<PathBuf> {
        std::fs::create_dir_all(dir)?;
        let stem = format!(
            "{}-{}-{}",
            file_stamp(&self.started_at),
            self.scenario,
            self.generator
        );
        let json = dir.join(format!("{stem}.json"));
        std::fs::write(&json, serde_json::to_string_pretty(self)? + "\n")?;
        std::fs::write(dir.join(format!("{stem}.svg")), self.svg())?;
        std::fs::write(
            dir.join(format!("{stem}.md")),
            self.markdown(&format!("{stem}.svg")),
        )?;
        Ok(json)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// CPU ratios are to the generator's CPU; none without it (or at 0).
    #[test]
    fn cpu_ratios_are_to_the_load_generator() {
        let cpu = CpuPerRequest {
            engine_us: Some(40.0),
            kafka_us: Some(10.0),
            redis_us: None,
            load_generator_us: Some(20.0),
        };
        assert_eq!(
            Ratios::cpu_vs_load_generator(&cpu),
            [Some(2.0), Some(0.5), None]
        );
        for generator in [None, Some(0.0)] {
            let cpu = CpuPerRequest {
                load_generator_us: generator,
                ..cpu.clone()
            };
            assert_eq!(Ratios::cpu_vs_load_generator(&cpu), [None, None, None]);
        }
    }
}
