//! Load reports: JSON (stable, versioned schema, see `reports/README.md`),
//! Markdown for people, and an SVG chart of RPS and latency over time.
//!
//! - this module: the report's types, machine facts and the JSON written
//!   beside the other two;
//! - [`comparison`]: the runs beside the measured engine and their ratios,
//!   as a list of entries;
//! - [`markdown`]: the Markdown report, one writer per paragraph or table;
//! - [`chart`]: the SVG chart (plotters);
//! - [`resources`]: CPU time and resident memory of processes, from /proc.

mod chart;
mod comparison;
mod markdown;
mod resources;

use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Serialize;

use crate::measure::{HttpResult, SecondStats};
pub use comparison::{Comparison, Direction, Figure, Kind, RatioSpec, SideMeasurement};
pub use resources::{
    cpu_readings, cpu_time_sum_us, cpu_time_us, cpu_time_with_children_us, rss_kib,
};

/// Bumped whenever a field changes meaning or goes away.
pub const SCHEMA_VERSION: u32 = 8;

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
    /// With `--postings`: postings transactions accepted per second of the
    /// measured run, and their legs; `None` without.
    pub postings_per_s: Option<f64>,
    pub postings_legs: Option<u32>,
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
    pub money_start_total: i128,
    pub money_end_total: i128,
    /// The first 50 violations, if any.
    pub violations: Vec<String>,
}

/// A bare limit's run: what the generator saw, and the CPU per request of
/// the bare server (in `engine_us`: the axum 202 handler's process) or of
/// Redis (the apply script), and of the generator. `harness backlog`'s
/// report holds one as it is.
#[derive(Debug, Clone, Serialize)]
pub struct BareRun {
    #[serde(flatten)]
    pub result: HttpResult,
    pub cpu_per_request: CpuPerRequest,
}

impl From<BareRun> for SideMeasurement {
    /// A bare limit moves no money: no invariants of its own.
    fn from(bare: BareRun) -> Self {
        Self {
            result: bare.result,
            cpu_per_request: bare.cpu_per_request,
            invariants_hold: None,
        }
    }
}

/// The engine run's CPU against its own load generator's (the ratios
/// between runs are in each [`Comparison`]).
#[derive(Debug, Clone, Serialize)]
pub struct Ratios {
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

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub schema_version: u32,
    pub scenario: String,
    pub generator: String,
    pub command: String,
    pub started_at: String,
    pub machine: Machine,
    pub engine: HttpResult,
    /// The runs beside the measured one that the flags asked for, in the
    /// order they ran, each with its ratios against it.
    pub comparisons: Vec<Comparison>,
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
pub(crate) mod tests {
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

    /// A wrk run's report: no per-second latencies, a pipeline timeline.
    pub(crate) fn wrk_report() -> Report {
        let run = HttpResult {
            target: "engine".into(),
            users: 1,
            seconds: 3,
            requests: 30,
            ok: 30,
            errors_by_kind: Default::default(),
            rps: 10.0,
            batch: 1,
            transactions_per_s: 10.0,
            latency_ms_p50: 1.0,
            latency_ms_p90: Some(2.0),
            latency_ms_p95: None,
            latency_ms_p99: 3.0,
            latency_ms_max: 4.0,
        };
        Report {
            schema_version: SCHEMA_VERSION,
            scenario: "test".into(),
            generator: "wrk".into(),
            command: "test".into(),
            started_at: "2026-01-01T00:00:00Z".into(),
            machine: Machine::default(),
            engine: run,
            comparisons: Vec::new(),
            ratios: Ratios {
                engine_cpu_vs_load_generator: None,
                kafka_cpu_vs_load_generator: None,
                redis_cpu_vs_load_generator: None,
            },
            pipeline: PipelineResult {
                drain_seconds: 0.1,
                apply_rate_tx_per_s: 10.0,
                accept_to_applied_ms_p50: None,
                accept_to_applied_ms_p99: None,
                postings_per_s: None,
                postings_legs: None,
                service_peak_rss_mib: None,
            },
            cpu_per_request: CpuPerRequest::default(),
            redis_scripts: Vec::new(),
            redis_scripts_missing: None,
            invariants: InvariantResult {
                holds: true,
                accepted: 30,
                applied: 30,
                rejected: 0,
                rejected_by_reason: Default::default(),
                money_start_total: 0,
                money_end_total: 0,
                violations: Vec::new(),
            },
            timeline: Vec::new(),
            pipeline_timeline: (0..3)
                .map(|second| PipelineSecond {
                    second,
                    applied: 10,
                    consumer_lag: Some(5 - second as i64),
                })
                .collect(),
        }
    }
}
