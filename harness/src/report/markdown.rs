//! The Markdown report, for people: one writer per paragraph or table,
//! called in the order they appear.

use std::fmt::Write as _;

use super::{BareRun, CpuPerRequest, Report, SideEngineRun};

impl Report {
    /// The report as Markdown, linking the chart `svg_name`.
    pub fn markdown(&self, svg_name: &str) -> String {
        let mut md = String::new();
        self.write_heading(&mut md);
        self.write_runs_table(&mut md);
        self.write_ratios(&mut md);
        self.write_pipeline(&mut md);
        self.write_cpu_per_request(&mut md);
        self.write_holds_vs_plain_debits(&mut md);
        self.write_side_engines(&mut md);
        self.write_bare_runs_cpu(&mut md);
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

    /// One row per run (the measured engine, then each comparison and bare
    /// limit that ran), so the runs can be read side by side.
    fn write_runs_table(&self, md: &mut String) {
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
    }

    /// The engine's rate over each comparison's that ran: the headline
    /// figures.
    fn write_ratios(&self, md: &mut String) {
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
    }

    /// Where the CPU went per accepted request, with the limiter on and
    /// (when it ran) off.
    fn write_cpu_per_request(&self, md: &mut String) {
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
    }

    /// With `--holds`: what hold-then-capture costs against plain debits.
    fn write_holds_vs_plain_debits(&self, md: &mut String) {
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
    }

    /// The paragraphs of the side engines that ran (no history events,
    /// three Kafka brokers), beside the measured engine's.
    fn write_side_engines(&self, md: &mut String) {
        if let Some(without) = &self.without_history_events {
            side_engine_paragraph(
                md,
                "History and outcome events: the same load on an engine that writes no history and publishes no outcome events",
                without,
                &self.cpu_per_request,
                ("Engine / that", self.ratios.engine_vs_without_history_events),
                "with and without",
            );
        }
        if let Some(three) = &self.on_three_kafka_nodes {
            side_engine_paragraph(
                md,
                "Replication: the same load on an engine whose topics are on three Kafka brokers (replication factor 3, min.insync.replicas 2; Kafka CPU summed over the three)",
                three,
                &self.cpu_per_request,
                ("Three brokers / one", self.ratios.three_kafka_nodes_vs_engine),
                "on one broker and on three",
            );
        }
    }

    /// CPU per request of the bare limits' server and generator, for the
    /// engine's to be read against.
    fn write_bare_runs_cpu(&self, md: &mut String) {
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
    }

    /// The CPU per accepted request as a multiple of the load generator's,
    /// where the machine's speed cancels out.
    fn write_cpu_vs_load_generator(&self, md: &mut String) {
        let r = &self.ratios;
        if let Some(engine) = r.engine_cpu_vs_load_generator {
            let _ = writeln!(
                md,
                "CPU per accepted request as a multiple of the load generator's: engine **{engine:.2}**, Kafka {}, Redis {}.",
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
