//! Load reports: JSON (stable, versioned schema, see `reports/README.md`),
//! Markdown for people, and an SVG chart of RPS and latency over time.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Serialize;

use crate::measure::{HttpResult, SecondStats};

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

impl CpuPerRequest {
    /// "engine 12 µs, Kafka 3 µs, ..." for the report.
    fn describe(&self) -> String {
        format!(
            "engine {} µs, Kafka {} µs, Redis {} µs, load generator {} µs",
            or_not_measured(self.engine_us, 0),
            or_not_measured(self.kafka_us, 0),
            or_not_measured(self.redis_us, 0),
            or_not_measured(self.load_generator_us, 0)
        )
    }
}

/// CPU time so far (µs) of the engine's processes, Kafka, Redis's
/// processes and the load generator (with its children), in the order
/// [`CpuPerRequest::between`] takes; a process missing: `None`.
pub fn cpu_readings(
    engine: &[u32],
    kafka: &[u32],
    redis: &[u32],
    generator: Option<u32>,
) -> [Option<u64>; 4] {
    [
        cpu_time_sum_us(engine),
        cpu_time_sum_us(kafka),
        cpu_time_sum_us(redis),
        cpu_time_with_children_us(generator),
    ]
}

/// `20261128T114110` from an RFC 3339 start time: report file names.
pub fn file_stamp(started_at: &str) -> String {
    started_at
        .replace([':', '-'], "")
        .chars()
        .take(15)
        .collect()
}

/// The paragraph of a side engine's run: its rate, p99 and invariants, the
/// ratio, and CPU per request of each process beside the measured engine's.
fn side_engine_paragraph(
    md: &mut String,
    what: &str,
    side: &SideEngineRun,
    engine_cpu: &CpuPerRequest,
    (ratio_name, ratio): (&str, Option<f64>),
    pair: &str,
) {
    let us = |c: &CpuPerRequest, of: fn(&CpuPerRequest) -> Option<f64>| or_not_measured(of(c), 1);
    let other = &side.cpu_per_request;
    let _ = writeln!(
        md,
        "\n{what}, in the same run: {:.0} transactions/s, p99 {:.1} ms (its invariants: {}). {ratio_name}: **{}** transactions/s. \
         CPU per accepted request {pair}: engine {} vs {} µs, Redis {} vs {} µs, Kafka {} vs {} µs.",
        side.result.transactions_per_s,
        side.result.latency_ms_p99,
        match side.invariants_hold {
            Some(true) => "hold",
            Some(false) => "BROKEN",
            None => "not checked (wrk)",
        },
        or_not_measured(ratio, 2),
        us(engine_cpu, |c| c.engine_us),
        us(other, |c| c.engine_us),
        us(engine_cpu, |c| c.redis_us),
        us(other, |c| c.redis_us),
        us(engine_cpu, |c| c.kafka_us),
        us(other, |c| c.kafka_us),
    );
}

/// A figure with `decimals`, or "n/a" where it was not measured.
fn or_not_measured(value: Option<f64>, decimals: usize) -> String {
    value.map_or_else(|| "n/a".to_owned(), |v| format!("{v:.decimals$}"))
}

/// User + system CPU time of a process so far, in microseconds; `None` if
/// there is no such process (never started, or gone).
pub fn cpu_time_us(pid: Option<u32>) -> Option<u64> {
    process_cpu_us(pid, false)
}

/// The CPU time of several processes together (every node of a Redis
/// Cluster); `None` when there are none or one is gone.
pub fn cpu_time_sum_us(pids: &[u32]) -> Option<u64> {
    if pids.is_empty() {
        return None;
    }
    pids.iter().map(|pid| cpu_time_us(Some(*pid))).sum()
}

/// As [`cpu_time_us`], plus the children it has waited for (a finished wrk).
pub fn cpu_time_with_children_us(pid: Option<u32>) -> Option<u64> {
    process_cpu_us(pid, true)
}

fn process_cpu_us(pid: Option<u32>, with_children: bool) -> Option<u64> {
    let stat = procfs::process::Process::new(pid? as i32)
        .ok()?
        .stat()
        .ok()?;
    let mut ticks = stat.utime + stat.stime;
    if with_children {
        ticks += u64::try_from(stat.cutime + stat.cstime).ok()?;
    }
    Some(ticks * 1_000_000 / procfs::ticks_per_second())
}

/// Resident memory of a process now, and at its peak (KiB); `None` if gone.
pub fn rss_kib(pid: u32) -> Option<(u64, u64)> {
    let status = procfs::process::Process::new(pid as i32)
        .ok()?
        .status()
        .ok()?;
    Some((status.vmrss?, status.vmhwm?))
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
        let _ = writeln!(
            md,
            "Latencies are per request (a batch's whole request when batch > 1).\n"
        );
        let _ = writeln!(md, "| target | users | s | batch | requests | ok | RPS | tx/s | p50 ms | p90 ms | p95 ms | p99 ms | max ms | errors |");
        let _ = writeln!(
            md,
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"
        );
        for run in [
            Some(&self.engine),
            self.engine_single.as_ref(),
            self.limiter_off.as_ref().map(|off| &off.result),
            self.without_history_events.as_ref().map(|w| &w.result),
            self.on_three_kafka_nodes.as_ref().map(|t| &t.result),
            self.bare_http.as_ref().map(|bare| &bare.result),
            self.redis_script.as_ref().map(|bare| &bare.result),
        ]
        .into_iter()
        .flatten()
        {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} | {:.0} | {:.0} | {:.2} | {} | {} | {:.2} | {:.2} | {:?} |",
                run.target,
                run.users,
                run.seconds,
                run.batch,
                run.requests,
                run.ok,
                run.rps,
                run.transactions_per_s,
                run.latency_ms_p50,
                or_not_measured(run.latency_ms_p90, 2),
                or_not_measured(run.latency_ms_p95, 2),
                run.latency_ms_p99,
                run.latency_ms_max,
                run.errors_by_kind
            );
        }
        if let Some(r) = self.ratios.engine_batch_vs_single {
            let _ = writeln!(
                md,
                "\nEngine transactions/s in batches of {} / with single requests: **{r:.2}**",
                self.engine.batch
            );
        }
        if let Some(r) = self.ratios.engine_vs_bare_http {
            let _ = writeln!(md, "\nEngine / bare HTTP 202: **{r:.2}**");
        }
        if let Some(r) = self.ratios.engine_vs_redis_script {
            let _ = writeln!(md, "Engine / Redis apply script: **{r:.2}**");
        }
        if let Some(r) = self.ratios.engine_vs_limiter_off {
            let _ = writeln!(
                md,
                "Engine / engine with the rate limiter off (every request still checks its API key): **{r:.2}**"
            );
        }
        let p = &self.pipeline;
        let accept_to_applied = match (p.accept_to_applied_ms_p50, p.accept_to_applied_ms_p99) {
            (Some(p50), Some(p99)) => format!("p50 {p50:.1} ms, p99 {p99:.1} ms"),
            _ => "not measured (no client timestamps)".to_owned(),
        };
        let _ = writeln!(
            md,
            "\nPipeline: drain {:.1} s after the load; apply rate {:.0} tx/s; accept to applied {accept_to_applied}; engine peak RSS {} MiB.",
            p.drain_seconds,
            p.apply_rate_tx_per_s,
            or_not_measured(p.service_peak_rss_mib, 0)
        );
        let _ = writeln!(
            md,
            "\nCPU per accepted request during the engine run: {}.",
            self.cpu_per_request.describe()
        );
        if let Some(off) = &self.limiter_off {
            let _ = writeln!(
                md,
                "With the rate limiter off: {}.",
                off.cpu_per_request.describe()
            );
        }
        if let Some(debits) = &self.plain_debits {
            let _ = writeln!(
                md,
                "\nHolds: the measured run posts a hold and then its capture (two transactions, each one request). \
                 Plain debits on the same engine, same users, in the same run: {:.0} transactions/s, p99 {:.1} ms; CPU per accepted request: {}. \
                 Hold-then-capture / plain debits: **{}** transactions/s, **{}** engine CPU per transaction.",
                debits.result.transactions_per_s,
                debits.result.latency_ms_p99,
                debits.cpu_per_request.describe(),
                or_not_measured(self.ratios.holds_vs_debits, 2),
                or_not_measured(self.ratios.holds_vs_debits_engine_cpu, 2),
            );
        }
        if let Some(without) = &self.without_history_events {
            side_engine_paragraph(
                &mut md,
                "History and outcome events: the same load on an engine that writes no history and publishes no outcome events",
                without,
                &self.cpu_per_request,
                ("Engine / that", self.ratios.engine_vs_without_history_events),
                "with and without",
            );
        }
        if let Some(three) = &self.on_three_kafka_nodes {
            side_engine_paragraph(
                &mut md,
                "Replication: the same load on an engine whose topics are on three Kafka brokers (replication factor 3, min.insync.replicas 2; Kafka CPU summed over the three)",
                three,
                &self.cpu_per_request,
                ("Three brokers / one", self.ratios.three_kafka_nodes_vs_engine),
                "on one broker and on three",
            );
        }
        // The bare runs' server (the 202 handler's process, or Redis) and generator.
        type ServerUs = fn(&CpuPerRequest) -> Option<f64>;
        let bare_runs: [(&Option<BareRun>, &str, ServerUs); 2] = [
            (
                &self.bare_http,
                "Bare HTTP 202, per request: the handler's process",
                |c| c.engine_us,
            ),
            (
                &self.redis_script,
                "Redis apply script, per call: Redis",
                |c| c.redis_us,
            ),
        ];
        for (run, what, server_us) in bare_runs {
            if let Some(bare) = run {
                let c = &bare.cpu_per_request;
                let _ = writeln!(
                    md,
                    "{what} {} µs, load generator {} µs.",
                    or_not_measured(server_us(c), 0),
                    or_not_measured(c.load_generator_us, 0)
                );
            }
        }
        let r = &self.ratios;
        if let Some(engine) = r.engine_cpu_vs_load_generator {
            let _ = writeln!(
                md,
                "CPU per accepted request as a multiple of the load generator's: engine **{engine:.2}**, Kafka {}, Redis {}.",
                or_not_measured(r.kafka_cpu_vs_load_generator, 2),
                or_not_measured(r.redis_cpu_vs_load_generator, 2)
            );
        }
        if !self.redis_scripts.is_empty() {
            let _ = writeln!(
                md,
                "\nRedis's time per script, from a short sample of the same load with every command in the slow log (scripts only; the AOF's fsync is not in it):\n"
            );
            let _ = writeln!(
                md,
                "| script | calls | keys per call | µs per call | µs per transaction |"
            );
            let _ = writeln!(md, "| --- | ---: | ---: | ---: | ---: |");
            for cost in &self.redis_scripts {
                let _ = writeln!(
                    md,
                    "| {} | {} | {:.1} | {:.1} | {:.1} |",
                    cost.script,
                    cost.calls,
                    cost.keys_per_call,
                    cost.us_per_call,
                    cost.us_per_transaction
                );
            }
            let total: f64 = self
                .redis_scripts
                .iter()
                .map(|c| c.us_per_transaction)
                .sum();
            let _ = writeln!(md, "\nIn all, {total:.1} µs of scripts per transaction.");
        }
        if let Some(missing) = &self.redis_scripts_missing {
            let _ = writeln!(md, "\nRedis's time per script: {missing}.");
        }
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

    /// Four panels over the seconds of the measured run: requests per
    /// second and latency p50/p99 (as the generator saw them; wrk gives no
    /// per-second data), then outcomes decided per second and consumer lag.
    pub fn svg(&self) -> String {
        let mut svg = String::new();
        if let Err(e) = self.draw(&mut svg) {
            return format!(
                r#"<svg xmlns="http://www.w3.org/2000/svg"><text y="20">chart failed: {e}</text></svg>"#
            );
        }
        svg
    }

    fn draw(&self, svg: &mut String) -> Result<(), Box<dyn std::error::Error + '_>> {
        use plotters::prelude::*;
        let root = SVGBackend::with_string(svg, (900, 1000)).into_drawing_area();
        root.fill(&WHITE)?;
        let panels = root.split_evenly((4, 1));
        let seconds = |values: usize| values.max(2) as f64;
        let generator = &self.generator;
        let t = &self.timeline;
        let p = &self.pipeline_timeline;
        let rps: Vec<(usize, f64)> = t.iter().map(|s| (s.second, s.requests as f64)).collect();
        let p50: Vec<(usize, f64)> = t.iter().map(|s| (s.second, s.latency_ms_p50)).collect();
        let p99: Vec<(usize, f64)> = t.iter().map(|s| (s.second, s.latency_ms_p99)).collect();
        let applied: Vec<(usize, f64)> = p.iter().map(|s| (s.second, s.applied as f64)).collect();
        let lag: Vec<(usize, f64)> = p
            .iter()
            .filter_map(|s| Some((s.second, s.consumer_lag? as f64)))
            .collect();
        type Line<'a> = (&'a str, RGBColor, Vec<(usize, f64)>);
        let charts: [(String, &str, Vec<Line>); 4] = [
            (
                format!("engine: requests per second ({generator})"),
                "requests / s",
                vec![("RPS", BLUE, rps)],
            ),
            (
                format!("engine: latency ({generator})"),
                "ms",
                vec![("p50", GREEN, p50), ("p99", RED, p99)],
            ),
            (
                "pipeline: outcomes decided per second".to_owned(),
                "transactions / s",
                vec![("applied or rejected", MAGENTA, applied)],
            ),
            (
                "pipeline: consumer group lag".to_owned(),
                "records",
                vec![("lag", BLACK, lag)],
            ),
        ];
        for (area, (title, unit, lines)) in panels.iter().zip(charts) {
            let points = lines.iter().map(|(_, _, v)| v.len()).max().unwrap_or(0);
            let x_max = seconds(
                lines
                    .iter()
                    .flat_map(|(_, _, v)| v.iter().map(|(x, _)| *x + 1))
                    .max()
                    .unwrap_or(0),
            );
            let y_max = lines
                .iter()
                .flat_map(|(_, _, v)| v.iter().map(|(_, y)| *y))
                .fold(1.0_f64, f64::max)
                * 1.1;
            let caption = if points == 0 {
                format!("{title}: not measured")
            } else {
                title
            };
            let mut chart = ChartBuilder::on(area)
                .caption(caption, ("sans-serif", 16))
                .margin(8)
                .x_label_area_size(32)
                .y_label_area_size(64)
                .build_cartesian_2d(0.0..x_max, 0.0..y_max)?;
            chart
                .configure_mesh()
                .x_desc("seconds since the measured run started")
                .y_desc(unit)
                .draw()?;
            for (name, color, values) in lines {
                chart
                    .draw_series(LineSeries::new(
                        values.into_iter().map(|(x, y)| (x as f64, y)),
                        color.stroke_width(2),
                    ))?
                    .label(name)
                    .legend(move |(x, y)| PathElement::new([(x, y), (x + 16, y)], color));
            }
            if points > 0 {
                chart
                    .configure_series_labels()
                    .background_style(WHITE.mix(0.8))
                    .border_style(BLACK)
                    .draw()?;
            }
        }
        root.present()?;
        Ok(())
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

    /// The chart is plotters' SVG with labelled time axes, and says "not
    /// measured" for a panel without data (wrk gives no per-second data).
    #[test]
    fn chart_labels_its_axes_and_what_was_not_measured() {
        let svg = wrk_report().svg();
        assert!(svg.starts_with("<svg"), "{}", &svg[..100.min(svg.len())]);
        assert!(svg.contains("seconds since the measured run started"));
        assert!(svg.contains("pipeline: consumer group lag"));
        assert!(svg.contains("engine: latency (wrk): not measured"));
        assert!(svg.contains("<polyline") || svg.contains("<path"));
    }

    /// A wrk run's report: no per-second latencies, a pipeline timeline.
    fn wrk_report() -> Report {
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
            bare_http: None,
            redis_script: None,
            engine_single: None,
            limiter_off: None,
            plain_debits: None,
            without_history_events: None,
            on_three_kafka_nodes: None,
            ratios: Ratios {
                engine_vs_bare_http: None,
                engine_vs_redis_script: None,
                engine_vs_limiter_off: None,
                holds_vs_debits: None,
                holds_vs_debits_engine_cpu: None,
                engine_batch_vs_single: None,
                engine_vs_without_history_events: None,
                three_kafka_nodes_vs_engine: None,
                engine_cpu_vs_load_generator: None,
                kafka_cpu_vs_load_generator: None,
                redis_cpu_vs_load_generator: None,
            },
            pipeline: PipelineResult {
                drain_seconds: 0.1,
                apply_rate_tx_per_s: 10.0,
                accept_to_applied_ms_p50: None,
                accept_to_applied_ms_p99: None,
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
