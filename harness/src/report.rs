//! Load reports: JSON (stable, versioned schema, see `reports/README.md`),
//! Markdown for people, and an SVG chart of RPS and latency over time.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Serialize;

use crate::load::{HttpResult, SecondStats};

/// Bumped whenever a field changes meaning or goes away.
pub const SCHEMA_VERSION: u32 = 3;

#[derive(Debug, Clone, Serialize)]
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
                "Apache Kafka {} (KRaft, single node)",
                crate::infra::local::KAFKA_VERSION
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
    pub service_peak_rss_mib: f64,
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

/// A figure with `decimals`, or "n/a" where it was not measured.
fn or_not_measured(value: Option<f64>, decimals: usize) -> String {
    value.map_or_else(|| "n/a".to_owned(), |v| format!("{v:.decimals$}"))
}

/// User + system CPU time of a process so far, in microseconds.
/// `None` if there is no such process (never started, or gone).
pub fn cpu_time_us(pid: Option<u32>) -> Option<u64> {
    process_cpu_us(pid, &[11, 12])
}

/// As [`cpu_time_us`], plus the children it has waited for (a finished wrk).
pub fn cpu_time_with_children_us(pid: Option<u32>) -> Option<u64> {
    process_cpu_us(pid, &[11, 12, 13, 14])
}

/// Sums the given clock-tick fields of `/proc/<pid>/stat` (0 = the field after the name).
fn process_cpu_us(pid: Option<u32>, tick_fields: &[usize]) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", pid?)).ok()?;
    // Fields after the command name (which may hold spaces) start at ") ".
    let fields: Vec<&str> = stat
        .rsplit_once(") ")
        .map(|(_, rest)| rest.split(' ').collect())
        .unwrap_or_default();
    // SAFETY: sysconf has no preconditions.
    let ticks_per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    let ticks: u64 = tick_fields
        .iter()
        .filter_map(|i| fields.get(*i)?.parse::<u64>().ok())
        .sum();
    Some(ticks * 1_000_000 / ticks_per_second)
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

#[derive(Debug, Clone, Serialize)]
pub struct Ratios {
    /// Engine accepted RPS / bare axum 202 RPS, same generator and settings;
    /// `None` when the bare limits were not measured (`--no-limits`).
    pub engine_vs_bare_http: Option<f64>,
    /// Engine accepted RPS / Redis apply-script calls per second.
    pub engine_vs_redis_script: Option<f64>,
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
    pub bare_http: Option<HttpResult>,
    pub redis_script: Option<HttpResult>,
    pub ratios: Ratios,
    pub pipeline: PipelineResult,
    pub cpu_per_request: CpuPerRequest,
    pub invariants: InvariantResult,
    /// Per second of the engine run: requests answered and latency.
    pub timeline: Vec<SecondStats>,
}

impl Report {
    /// Writes `<dir>/<date>-<scenario>-<generator>.{json,md,svg}`; returns the JSON path.
    pub fn write(&self, dir: &Path) -> anyhow::Result<PathBuf> {
        std::fs::create_dir_all(dir)?;
        let stem = format!(
            "{}-{}-{}",
            self.started_at
                .replace([':', '-'], "")
                .chars()
                .take(15)
                .collect::<String>(),
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

    pub fn markdown(&self, svg_name: &str) -> String {
        let mut md = String::new();
        let m = &self.machine;
        let _ = writeln!(
            md,
            "# txengine load report: {} ({})\n",
            self.scenario, self.generator
        );
        let _ = writeln!(md, "- command: `{}`", self.command);
        let _ = writeln!(md, "- started: {}", self.started_at);
        let _ = writeln!(
            md,
            "- machine: {} cores, {} GiB, {}, Linux {}; {}; {}; {}\n",
            m.cores, m.memory_gib, m.cpu_model, m.kernel, m.rustc, m.redis_server, m.kafka
        );
        let _ = writeln!(md, "| target | users | s | requests | ok | RPS | p50 ms | p90 ms | p95 ms | p99 ms | max ms | errors |");
        let _ = writeln!(
            md,
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"
        );
        for run in [
            Some(&self.engine),
            self.bare_http.as_ref(),
            self.redis_script.as_ref(),
        ]
        .into_iter()
        .flatten()
        {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {:.0} | {:.2} | {} | {} | {:.2} | {:.2} | {:?} |",
                run.target,
                run.users,
                run.seconds,
                run.requests,
                run.ok,
                run.rps,
                run.latency_ms_p50,
                or_not_measured(run.latency_ms_p90, 2),
                or_not_measured(run.latency_ms_p95, 2),
                run.latency_ms_p99,
                run.latency_ms_max,
                run.errors_by_kind
            );
        }
        if let Some(r) = self.ratios.engine_vs_bare_http {
            let _ = writeln!(md, "\nEngine / bare HTTP 202: **{r:.2}**");
        }
        if let Some(r) = self.ratios.engine_vs_redis_script {
            let _ = writeln!(md, "Engine / Redis apply script: **{r:.2}**");
        }
        let p = &self.pipeline;
        let accept_to_applied = match (p.accept_to_applied_ms_p50, p.accept_to_applied_ms_p99) {
            (Some(p50), Some(p99)) => format!("p50 {p50:.1} ms, p99 {p99:.1} ms"),
            _ => "not measured (no client timestamps)".to_owned(),
        };
        let _ = writeln!(
            md,
            "\nPipeline: drain {:.1} s after the load; apply rate {:.0} tx/s; accept to applied {accept_to_applied}; engine peak RSS {:.0} MiB.",
            p.drain_seconds, p.apply_rate_tx_per_s, p.service_peak_rss_mib
        );
        let c = &self.cpu_per_request;
        let _ = writeln!(
            md,
            "\nCPU per accepted request during the engine run: engine {} µs, Kafka {} µs, Redis {} µs, load generator {} µs.",
            or_not_measured(c.engine_us, 0),
            or_not_measured(c.kafka_us, 0),
            or_not_measured(c.redis_us, 0),
            or_not_measured(c.load_generator_us, 0)
        );
        let i = &self.invariants;
        let _ = writeln!(
            md,
            "\nInvariants: **{}**. {} accepted, {} applied, {} rejected {:?}; money {} at start, {} at the end (credits and debits included).",
            if i.holds { "all hold" } else { "BROKEN" },
            i.accepted,
            i.applied,
            i.rejected,
            i.rejected_by_reason,
            i.money_start_total,
            i.money_end_total
        );
        for v in &i.violations {
            let _ = writeln!(md, "- {v}");
        }
        let _ = writeln!(md, "\n![RPS and latency over time]({svg_name})");
        md
    }

    /// Two stacked panels over the seconds of the engine run: RPS, and
    /// latency p50 / p99 (ms).
    pub fn svg(&self) -> String {
        let (width, panel, margin) = (800.0, 220.0, 50.0);
        let height = panel * 2.0 + margin * 3.0;
        let seconds = self.timeline.len().max(2) as f64;
        let x = |i: usize| margin + (width - 2.0 * margin) * i as f64 / (seconds - 1.0);
        let mut svg = format!(
            r##"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12"><rect width="100%" height="100%" fill="white"/>"##
        );
        let mut draw_panel = |top: f64, title: &str, series: &[(&str, &str, Vec<f64>)]| {
            let max = series
                .iter()
                .flat_map(|(_, _, v)| v.iter().copied())
                .fold(1.0_f64, f64::max)
                * 1.1;
            let y = |v: f64| top + panel - panel * v / max;
            let _ = write!(
                svg,
                r##"<text x="{margin}" y="{}" font-weight="bold">{title}</text><line x1="{margin}" y1="{}" x2="{}" y2="{}" stroke="#888"/><line x1="{margin}" y1="{top}" x2="{margin}" y2="{}" stroke="#888"/><text x="5" y="{}">{:.0}</text><text x="5" y="{}">0</text>"##,
                top - 8.0,
                top + panel,
                width - margin,
                top + panel,
                top + panel,
                top + 10.0,
                max,
                top + panel
            );
            for (k, (name, color, values)) in series.iter().enumerate() {
                let points: Vec<String> = values
                    .iter()
                    .enumerate()
                    .map(|(i, v)| format!("{:.1},{:.1}", x(i), y(*v)))
                    .collect();
                let _ = write!(
                    svg,
                    r##"<polyline fill="none" stroke="{color}" stroke-width="2" points="{}"/><text x="{}" y="{}" fill="{color}">{name}</text>"##,
                    points.join(" "),
                    width - margin - 120.0,
                    top + 14.0 + 14.0 * k as f64
                );
            }
        };
        let rps: Vec<f64> = self.timeline.iter().map(|s| s.requests as f64).collect();
        let p50: Vec<f64> = self.timeline.iter().map(|s| s.latency_ms_p50).collect();
        let p99: Vec<f64> = self.timeline.iter().map(|s| s.latency_ms_p99).collect();
        draw_panel(
            margin,
            "requests per second (engine)",
            &[("RPS", "#1f77b4", rps)],
        );
        draw_panel(
            margin * 2.0 + panel,
            "latency ms",
            &[("p50", "#2ca02c", p50), ("p99", "#d62728", p99)],
        );
        let _ = write!(
            svg,
            r##"<text x="{}" y="{}">seconds of load ({} s)</text></svg>"##,
            width / 2.0 - 60.0,
            height - 10.0,
            self.timeline.len()
        );
        svg
    }
}
