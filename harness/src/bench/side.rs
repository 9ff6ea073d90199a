//! The runs `harness load` makes beside the measured engine: what each is
//! (a [`Kind`] constant, what the report says of it and its ratios), when
//! the flags ask for it and how it is run. A new comparison is a constant,
//! a variant and its arm here; the report renders every one the same way.

use std::time::Duration;

use super::run::{drain, Engine};
use super::{
    drive_http, measure_bare_http, measure_redis_script, run_beside, run_side_engine, Beside,
    Generator, HttpRun, SideEngine,
};
use crate::infra::Infra;
use crate::load::LoadProfile;
use crate::report::SideMeasurement;
use crate::report::{cpu_readings, CpuPerRequest, Direction, Figure, Kind, RatioSpec};
use crate::stack::EngineProcess;
use crate::workload::{Ledger, Mix};

const BARE_HTTP: Kind = Kind {
    name: "bare_http",
    what: "an axum handler in a process of its own that only answers 202 (its CPU counted as the engine's; Kafka and Redis idle): the most an HTTP service does here with this generator",
    ratios: &[RatioSpec {
        name: "engine_vs_bare_http",
        meaning: "engine transactions/s / the bare 202 handler's",
        figure: Figure::TransactionsPerS,
        direction: Direction::EngineOverSide,
    }],
};

const REDIS_SCRIPT: Kind = Kind {
    name: "redis_script",
    what: "the same users calling the apply script on Redis directly (goose only): the most the apply step does",
    ratios: &[RatioSpec {
        name: "engine_vs_redis_script",
        meaning: "engine transactions/s / the apply script's, called directly",
        figure: Figure::TransactionsPerS,
        direction: Direction::EngineOverSide,
    }],
};

const WITHOUT_HISTORY_EVENTS: Kind = Kind {
    name: "without_history_events",
    what: "a second engine (its own namespace and topics, warmed up) that writes no history and publishes no outcome events, run before the measured one",
    ratios: &[RatioSpec {
        name: "engine_vs_without_history_events",
        meaning: "engine transactions/s / the engine's without history and outcome events: what they cost",
        figure: Figure::TransactionsPerS,
        direction: Direction::EngineOverSide,
    }],
};

const ON_THREE_KAFKA_NODES: Kind = Kind {
    name: "on_three_kafka_nodes",
    what: "a second engine (its own namespace and topics, warmed up) whose topics are on three Kafka brokers (replication factor 3, min.insync.replicas 2; Kafka CPU summed over the three), run before the measured one",
    ratios: &[RatioSpec {
        name: "three_kafka_nodes_vs_engine",
        meaning: "transactions/s on three Kafka brokers / the engine's on one: what replication costs",
        figure: Figure::TransactionsPerS,
        direction: Direction::SideOverEngine,
    }],
};

const LIMITER_OFF: Kind = Kind {
    name: "limiter_off",
    what: "the same load through an API process with --rate-limit off (API keys still checked; the engine's consumer applies it, its engine CPU is both processes'), before the measured run",
    ratios: &[RatioSpec {
        name: "engine_vs_limiter_off",
        meaning: "engine RPS / the same with the rate limiter off: what the limiter costs",
        figure: Figure::Rps,
        direction: Direction::EngineOverSide,
    }],
};

const SINGLE_REQUESTS: Kind = Kind {
    name: "engine_single",
    what: "the same engine driven with single requests (batch 1), before the measured batch run",
    ratios: &[RatioSpec {
        name: "engine_batch_vs_single",
        meaning: "engine transactions/s in batches / with single requests",
        figure: Figure::TransactionsPerS,
        direction: Direction::EngineOverSide,
    }],
};

const PLAIN_DEBITS: Kind = Kind {
    name: "plain_debits",
    what: "the same engine driven with plain debits, before the measured run of holds and their captures (two transactions a turn, each one request)",
    ratios: &[
        RatioSpec {
            name: "holds_vs_debits",
            meaning: "hold-then-capture transactions/s / plain debits'",
            figure: Figure::TransactionsPerS,
            direction: Direction::EngineOverSide,
        },
        RatioSpec {
            name: "holds_vs_debits_engine_cpu",
            meaning: "the engine's CPU per transaction, hold-then-capture / plain debits",
            figure: Figure::EngineCpuUs,
            direction: Direction::EngineOverSide,
        },
    ],
};

const PLAIN_TRANSFERS: Kind = Kind {
    name: "plain_transfers",
    what: "the same engine driven with plain transfers only, before the measured run of half postings, half transfers (each one request)",
    ratios: &[
        RatioSpec {
            name: "postings_mix_vs_transfers",
            meaning: "transactions/s of half postings, half transfers / plain transfers'",
            figure: Figure::TransactionsPerS,
            direction: Direction::EngineOverSide,
        },
        RatioSpec {
            name: "postings_mix_vs_transfers_engine_cpu",
            meaning: "the engine's CPU per transaction, half postings / plain transfers",
            figure: Figure::EngineCpuUs,
            direction: Direction::EngineOverSide,
        },
    ],
};

/// A side run done: what it is and what it measured (set against the
/// measured run when the report is made).
pub(super) struct Done {
    pub kind: &'static Kind,
    pub measured: SideMeasurement,
    /// The tag of its ids when it ran on the engine under test: wrk keeps
    /// no ledger, the engine's is rebuilt from Redis by these tags.
    pub tag_on_engine: Option<&'static str>,
}

/// The runs on something of their own the flags ask for, one after the
/// other, before the engine under test starts.
pub(super) async fn run_alone(
    infra: &Infra,
    exe: &std::path::Path,
    profile: &LoadProfile,
    (generator, warmup_seconds): (Generator, usize),
    beside: Beside,
) -> anyhow::Result<Vec<Done>> {
    let mut done = Vec::new();
    for side in Alone::asked(beside, generator) {
        done.push(
            side.run(infra, exe, profile, generator, warmup_seconds)
                .await?,
        );
    }
    Ok(done)
}

/// The runs on the engine under test the flags ask for, one after the
/// other; their transactions go into `earlier`.
pub(super) async fn run_on_engine(
    engine: &Engine<'_>,
    exe: &std::path::Path,
    profile: &LoadProfile,
    beside: Beside,
    earlier: &mut Ledger,
) -> anyhow::Result<Vec<Done>> {
    let mut done = Vec::new();
    for side in OnEngine::asked(beside, profile) {
        done.push(side.run(engine, exe, profile, earlier).await?);
    }
    Ok(done)
}

/// Side runs on something of their own (a bare server, Redis alone, a
/// second engine), before the engine under test starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Alone {
    BareHttp,
    /// wrk speaks only HTTP: measured with goose runs only.
    RedisScript,
    WithoutHistoryEvents,
    OnThreeKafkaNodes,
}

impl Alone {
    /// The ones the flags ask for, in the order they run.
    fn asked(beside: Beside, generator: Generator) -> Vec<Self> {
        [
            (beside.limits, Self::BareHttp),
            (
                beside.limits && generator == Generator::Goose,
                Self::RedisScript,
            ),
            (beside.history_events_off, Self::WithoutHistoryEvents),
            (beside.three_kafka_nodes, Self::OnThreeKafkaNodes),
        ]
        .into_iter()
        .filter_map(|(asked, run)| asked.then_some(run))
        .collect()
    }

    /// Runs it on its own, drained (or stopped) before the next.
    async fn run(
        self,
        infra: &Infra,
        exe: &std::path::Path,
        profile: &LoadProfile,
        generator: Generator,
        warmup_seconds: usize,
    ) -> anyhow::Result<Done> {
        let (kind, measured) = match self {
            Self::BareHttp => (
                &BARE_HTTP,
                measure_bare_http(generator, profile).await?.into(),
            ),
            Self::RedisScript => (
                &REDIS_SCRIPT,
                measure_redis_script(infra, profile).await?.into(),
            ),
            Self::WithoutHistoryEvents => {
                let side = SideEngine::WithoutHistoryEvents;
                let run = run_side_engine(infra, exe, profile, generator, warmup_seconds, side);
                (&WITHOUT_HISTORY_EVENTS, run.await?)
            }
            Self::OnThreeKafkaNodes => {
                let three = tokio::task::block_in_place(|| infra.beside_own_kafka(3))?;
                let side = SideEngine::OnThreeKafkaNodes;
                let run = run_side_engine(&three, exe, profile, generator, warmup_seconds, side);
                let run = run.await?;
                // Its brokers stop before the measured run.
                drop(three);
                (&ON_THREE_KAFKA_NODES, run)
            }
        };
        let tag_on_engine = None;
        Ok(Done {
            kind,
            measured,
            tag_on_engine,
        })
    }
}

/// Side runs on the engine under test, after its warm-up, each drained
/// before the next and the measured run; their transactions count for its
/// invariants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OnEngine {
    LimiterOff,
    SingleRequests,
    PlainDebits,
    PlainTransfers,
}

impl OnEngine {
    /// The ones the flags ask for, in the order they run.
    fn asked(beside: Beside, profile: &LoadProfile) -> Vec<Self> {
        [
            (beside.limits, Self::LimiterOff),
            (profile.batch > 1, Self::SingleRequests),
            (profile.holds, Self::PlainDebits),
            (profile.mix.postings > 0, Self::PlainTransfers),
        ]
        .into_iter()
        .filter_map(|(asked, run)| asked.then_some(run))
        .collect()
    }

    /// Its run's name, and the tag of its ids (wrk's ledger is rebuilt by it).
    fn names(self) -> (&'static str, &'static str) {
        match self {
            Self::LimiterOff => ("engine-limiter-off", "nolimit"),
            Self::SingleRequests => ("engine-single", "single"),
            Self::PlainDebits => ("engine-debits", "debits"),
            Self::PlainTransfers => ("engine-transfers", "transfers"),
        }
    }

    /// Runs it on `engine`; its transactions go into `earlier`.
    async fn run(
        self,
        engine: &Engine<'_>,
        exe: &std::path::Path,
        profile: &LoadProfile,
        earlier: &mut Ledger,
    ) -> anyhow::Result<Done> {
        let beside = |what, side| {
            let (infra, config, process) = (engine.infra, &engine.config, &engine.process);
            let (key, generator, names) = (engine.api_key.as_str(), engine.generator, self.names());
            async move { run_beside(infra, config, process, key, generator, what, names, &side).await }
        };
        let (kind, (run, cpu_per_request)) = match self {
            Self::LimiterOff => (&LIMITER_OFF, limiter_off(engine, exe, profile, self).await?),
            Self::SingleRequests => {
                let single = LoadProfile {
                    batch: 1,
                    ..profile.clone()
                };
                (&SINGLE_REQUESTS, beside("single requests", single).await?)
            }
            Self::PlainDebits => (
                &PLAIN_DEBITS,
                beside("plain debits", plain_debits(profile)).await?,
            ),
            Self::PlainTransfers => {
                let transfers = LoadProfile {
                    mix: profile.mix.transfers_only(),
                    ..profile.clone()
                };
                (
                    &PLAIN_TRANSFERS,
                    beside("plain transfers", transfers).await?,
                )
            }
        };
        earlier.absorb(run.ledger);
        let measured = SideMeasurement {
            result: run.result,
            cpu_per_request,
            invariants_hold: None,
        };
        let tag_on_engine = Some(self.names().1);
        Ok(Done {
            kind,
            measured,
            tag_on_engine,
        })
    }
}

/// The profile with every transaction a debit (no holds): what holds are
/// set against.
fn plain_debits(profile: &LoadProfile) -> LoadProfile {
    let mix = Mix {
        debit: 100,
        transfer: 0,
        credit: 0,
        hold: 0,
        ..Mix::LOAD
    };
    LoadProfile {
        holds: false,
        mix,
        ..profile.clone()
    }
}

/// The same load through an API process with the limiter off (the engine's
/// consumer applies it), drained before the measured run: what the limiter
/// costs, in this run. The engine CPU is both processes'.
async fn limiter_off(
    engine: &Engine<'_>,
    exe: &std::path::Path,
    profile: &LoadProfile,
    side: OnEngine,
) -> anyhow::Result<(HttpRun, CpuPerRequest)> {
    let mut off_config = engine.config.clone();
    off_config.role = txengine::Role::Api;
    off_config.rate_limit = txengine::config::RateLimitMode::Off;
    off_config.listen = format!("127.0.0.1:{}", crate::infra::process::free_port()?).parse()?;
    let off_api = EngineProcess::spawn(exe, off_config).await?;
    eprintln!(
        "the same load with the rate limiter off ({}, {} users for {} s) ...",
        engine.generator.name(),
        profile.users,
        profile.seconds
    );
    let (redis_pids, kafka_pids) = engine.infra.pids();
    let engines: Vec<u32> = engine
        .process
        .pid()
        .into_iter()
        .chain(off_api.pid())
        .collect();
    let cpu = || cpu_readings(&engines, &kafka_pids, &redis_pids, Some(std::process::id()));
    let before = cpu();
    let (url, key) = (&off_api.url, &engine.api_key);
    let (name, tag) = side.names();
    let off = drive_http(engine.generator, url, key, name, tag, profile).await?;
    let after = cpu();
    off_api.terminate(Duration::from_secs(10));
    drain(engine, Duration::from_secs(300)).await?;
    let cpu_per_request = CpuPerRequest::between(before, after, off.result.ok);
    Ok((off, cpu_per_request))
}

#[cfg(test)]
mod tests {
    use super::*;

    const KINDS: [&Kind; 7] = [
        &BARE_HTTP,
        &REDIS_SCRIPT,
        &WITHOUT_HISTORY_EVENTS,
        &ON_THREE_KAFKA_NODES,
        &LIMITER_OFF,
        &SINGLE_REQUESTS,
        &PLAIN_DEBITS,
    ];

    /// Readers find a comparison and a ratio by name, and the report puts
    /// each in a Markdown table: names unique and snake_case, no `|`.
    #[test]
    fn every_kind_has_a_unique_name_and_fits_a_table() {
        let mut names: Vec<&str> = KINDS.iter().map(|k| k.name).collect();
        names.extend(KINDS.iter().flat_map(|k| k.ratios.iter().map(|r| r.name)));
        let snake = |n: &str| n.chars().all(|c| c.is_ascii_lowercase() || c == '_');
        assert!(names.iter().all(|n| snake(n)), "{names:?}");
        let count = names.len();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), count, "a name is used twice");
        for kind in KINDS {
            assert!(!kind.ratios.is_empty(), "{} yields no ratio", kind.name);
            let texts = std::iter::once(kind.what).chain(kind.ratios.iter().map(|r| r.meaning));
            assert!(texts.clone().all(|t| !t.contains('|')), "{}", kind.name);
        }
    }

    /// The flags ask for the runs they name, in the order they run; the
    /// Redis script only with goose.
    #[test]
    fn the_flags_ask_for_their_runs() {
        let all = Beside {
            limits: true,
            history_events_off: true,
            three_kafka_nodes: true,
        };
        assert_eq!(
            Alone::asked(all, Generator::Wrk),
            [
                Alone::BareHttp,
                Alone::WithoutHistoryEvents,
                Alone::OnThreeKafkaNodes
            ]
        );
        assert_eq!(Alone::asked(all, Generator::Goose).len(), 4);
        let none = Beside {
            limits: false,
            history_events_off: false,
            three_kafka_nodes: false,
        };
        assert!(Alone::asked(none, Generator::Goose).is_empty());
        let profile = LoadProfile {
            batch: 10,
            ..LoadProfile::default()
        };
        assert_eq!(OnEngine::asked(none, &profile), [OnEngine::SingleRequests]);
        let holds = LoadProfile {
            holds: true,
            ..LoadProfile::default()
        };
        assert_eq!(
            OnEngine::asked(all, &holds),
            [OnEngine::LimiterOff, OnEngine::PlainDebits]
        );
    }
}
