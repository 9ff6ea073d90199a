//! The Markdown report, for people: one writer per paragraph or table,
//! called in the order they appear.

use std::fmt::Write as _;

use super::{CpuPerRequest, Report};

impl Report {
    /// The report as Markdown, linking the chart `svg_name`.
    pub fn markdown(&self, svg_name: &str) -> String {
        let mut md = String::new();
        self.write_heading(&mut md);
        self.write_runs_table(&mut md);
        self.write_ratios(&mut md);
        self.write_pipeline(&mut md);
        self.write_cpu_per_request(&mut md);
        self.write_comparisons(&mut md);
        self.write_cpu_vs_load_generator(&mut md);
        self.write_redis_scripts(&mut md);
        self.write_invariants(&mut md);
        let _ = writeln!(md, "\n![RPS and latency over time]({svg_name})");
        md
    }

    /// The title, the command, the start time and the machine, then what
    /// the latencies are: what a reader needs before the figures.
    fn write_heading(&self, md: &mut String) {
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
    }

    /// One row per run (the measured engine, then each run beside it), so
    /// the runs can be read side by side.
    fn write_runs_table(&self, md: &mut String) {
        let _ = writeln!(md, "| target | users | s | batch | requests | ok | RPS | tx/s | p50 ms | p90 ms | p95 ms | p99 ms | max ms | errors |");
        let _ = writeln!(
            md,
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"
        );
        let beside = self.comparisons.iter().map(|c| &c.side.result);
        for run in std::iter::once(&self.engine).chain(beside) {
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
    }

    /// Every ratio of every run beside the engine: the headline figures.
    fn write_ratios(&self, md: &mut String) {
        let ratios = self
            .comparisons
            .iter()
            .flat_map(|c| c.ratios.iter().map(move |r| (c.name, r)));
        let mut ratios = ratios.peekable();
        if ratios.peek().is_none() {
            return;
        }
        let _ = writeln!(md, "\n| against | ratio | value | meaning |");
        let _ = writeln!(md, "| --- | --- | ---: | --- |");
        for (name, ratio) in ratios {
            let _ = writeln!(
                md,
                "| {name} | {} | **{}** | {} |",
                ratio.name,
                or_not_measured(ratio.value, 2),
                ratio.meaning
            );
        }
    }

    /// What the consumers did with the load: drain, apply rate, accept to
    /// applied, and the engine's peak memory.
    fn write_pipeline(&self, md: &mut String) {
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
        if let (Some(per_s), Some(legs)) = (p.postings_per_s, p.postings_legs) {
            let _ = writeln!(
                md,
                "\nPostings: {per_s:.0} postings transactions/s of {legs} legs each accepted in the measured run ({:.0} legs/s), beside the plain transfers of the mix (tx/s counts both).",
                per_s * f64::from(legs)
            );
        }
    }

    /// Where the CPU went per accepted request in the measured run.
    fn write_cpu_per_request(&self, md: &mut String) {
        let _ = writeln!(
            md,
            "\nCPU per accepted request during the engine run: {}.",
            self.cpu_per_request.describe()
        );
    }

    /// What each run beside the engine is, its CPU per request beside the
    /// measured run's, and its own invariants: one row each.
    fn write_comparisons(&self, md: &mut String) {
        if self.comparisons.is_empty() {
            return;
        }
        let _ = writeln!(
            md,
            "\nThe runs beside the measured one, in the same run with the same generator, users and seconds:\n"
        );
        let _ = writeln!(md, "| run | what it is | CPU per accepted request µs: engine / Kafka / Redis / load generator | its own invariants |");
        let _ = writeln!(md, "| --- | --- | --- | --- |");
        let engine = &self.cpu_per_request;
        // Not "engine": scripts/thread-cpu greps the runs table's row by it.
        let measured = (
            "measured",
            "the engine run under test",
            engine,
            Some(self.invariants.holds),
        );
        let beside = self.comparisons.iter().map(|c| {
            let side = &c.side;
            (c.name, c.what, &side.cpu_per_request, side.invariants_hold)
        });
        for (name, what, cpu, holds) in std::iter::once(measured).chain(beside) {
            let holds = match holds {
                Some(true) => "hold",
                Some(false) => "BROKEN",
                // In the measured run's, or moves no money, or wrk.
                None => "not checked on its own",
            };
            let _ = writeln!(md, "| {name} | {what} | {} | {holds} |", cpu.figures());
        }
    }

    /// The CPU per accepted request as a multiple of the load generator's,
    /// where the machine's speed cancels out.
    fn write_cpu_vs_load_generator(&self, md: &mut String) {
        let r = &self.ratios;
        if let Some(engine) = r.engine_cpu_vs_load_generator {
            let _ = writeln!(
                md,
                "\nCPU per accepted request as a multiple of the load generator's: engine **{engine:.2}**, Kafka {}, Redis {}.",
                or_not_measured(r.kafka_cpu_vs_load_generator, 2),
                or_not_measured(r.redis_cpu_vs_load_generator, 2)
            );
        }
    }

    /// Redis's time per Lua script from the slow-log sample, or why it is
    /// missing.
    fn write_redis_scripts(&self, md: &mut String) {
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
    }

    /// Whether the invariants hold, the counts and money behind them, and
    /// each violation found.
    fn write_invariants(&self, md: &mut String) {
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
    }
}

impl CpuPerRequest {
    /// "12.0 / 3.1 / n/a / 20.2" for a table whose header names the processes.
    fn figures(&self) -> String {
        [
            self.engine_us,
            self.kafka_us,
            self.redis_us,
            self.load_generator_us,
        ]
        .map(|us| or_not_measured(us, 1))
        .join(" / ")
    }

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

/// A figure with `decimals`, or "n/a" where it was not measured.
fn or_not_measured(value: Option<f64>, decimals: usize) -> String {
    value.map_or_else(|| "n/a".to_owned(), |v| format!("{v:.decimals$}"))
}

#[cfg(test)]
mod tests {
    use crate::report::comparison::tests::{cpu, result};
    use crate::report::comparison::Ratio;
    use crate::report::tests::wrk_report;
    use crate::report::{Comparison, SideMeasurement};

    /// A comparison as the report holds it, with one ratio of `value`.
    fn comparison(name: &'static str, value: Option<f64>, holds: Option<bool>) -> Comparison {
        Comparison {
            name,
            what: "what it is",
            side: SideMeasurement {
                result: result(&format!("{name}-target"), 5.0, 5.0),
                cpu_per_request: cpu(if value.is_some() { Some(12.34) } else { None }),
                invariants_hold: holds,
            },
            ratios: vec![Ratio {
                name: "engine_vs_it",
                value,
                meaning: "engine / it",
            }],
        }
    }

    /// Each comparison gets its row in the runs table, its ratios in the
    /// ratio table and its row in the comparisons table, from one loop
    /// each; a figure not measured reads "n/a", the others stay.
    #[test]
    fn every_comparison_is_rendered_and_a_missing_figure_reads_n_a() {
        let mut report = wrk_report();
        report.comparisons = vec![
            comparison("first", Some(0.456), Some(false)),
            comparison("second", None, None),
        ];
        let md = report.markdown("chart.svg");
        for target in ["| engine |", "| first-target |", "| second-target |"] {
            assert!(md.contains(target), "no row {target} in:\n{md}");
        }
        assert!(
            md.contains("| first | engine_vs_it | **0.46** | engine / it |"),
            "{md}"
        );
        assert!(
            md.contains("| second | engine_vs_it | **n/a** | engine / it |"),
            "{md}"
        );
        assert!(
            md.contains("| first | what it is | 12.3 / 5.0 / n/a / 20.0 | BROKEN |"),
            "{md}"
        );
        assert!(
            md.contains(
                "| second | what it is | n/a / 5.0 / n/a / 20.0 | not checked on its own |"
            ),
            "{md}"
        );
        assert!(
            md.contains("| measured | the engine run under test |"),
            "{md}"
        );
    }

    /// Without runs beside the engine (`--no-limits`), neither table is
    /// written: no empty table in the report.
    #[test]
    fn no_comparison_writes_no_table_for_them() {
        let md = wrk_report().markdown("chart.svg");
        assert!(!md.contains("| against | ratio |"), "{md}");
        assert!(!md.contains("runs beside the measured one"), "{md}");
        assert!(md.contains("| engine |"), "{md}");
    }
}
