//! The runs `harness load` makes beside the measured engine, as data: each
//! a [`Comparison`] with a stable name, a line saying what it is, what it
//! measured and its ratios against the engine. The report holds a list of
//! them and renders each the same way, so a new comparison is a new entry
//! (a [`Kind`] and the code that runs it), not a new field and paragraph.

use serde::Serialize;

use super::CpuPerRequest;
use crate::measure::HttpResult;

/// What a kind of side run is, fixed at compile time: one constant per
/// comparison, where it is run.
#[derive(Debug)]
pub struct Kind {
    /// Stable, snake_case: readers of the JSON find the run by it.
    pub name: &'static str,
    /// One line for the report; no `|` (it goes in a Markdown table).
    pub what: &'static str,
    pub ratios: &'static [RatioSpec],
}

/// A ratio a side run yields against the measured engine run.
#[derive(Debug)]
pub struct RatioSpec {
    /// Stable, snake_case (the names of `ratios.*` before schema 8).
    pub name: &'static str,
    /// What it divides by what, for the report.
    pub meaning: &'static str,
    pub figure: Figure,
    pub direction: Direction,
}

/// The figure of each run a ratio divides.
#[derive(Debug, Clone, Copy)]
pub enum Figure {
    TransactionsPerS,
    /// Requests answered 2xx per second (a batch is one).
    Rps,
    /// The engine process's CPU per accepted request.
    EngineCpuUs,
}

/// Which run's figure is on top.
#[derive(Debug, Clone, Copy)]
pub enum Direction {
    EngineOverSide,
    /// For costs read as "the side run gets this much of the engine's".
    SideOverEngine,
}

impl Figure {
    fn of(self, result: &HttpResult, cpu: &CpuPerRequest) -> Option<f64> {
        match self {
            Self::TransactionsPerS => Some(result.transactions_per_s),
            Self::Rps => Some(result.rps),
            Self::EngineCpuUs => cpu.engine_us,
        }
    }
}

/// What a side run measured, before it is set against the engine's run.
#[derive(Debug, Clone, Serialize)]
pub struct SideMeasurement {
    pub result: HttpResult,
    pub cpu_per_request: CpuPerRequest,
    /// Its own ledger's invariants; `None` when not checked on their own
    /// (a bare limit moves no money; a run on the measured engine is in its
    /// invariants; wrk keeps no ledger).
    pub invariants_hold: Option<bool>,
}

/// One ratio of a comparison, as the report gives it.
#[derive(Debug, Clone, Serialize)]
pub struct Ratio {
    pub name: &'static str,
    /// `None` (null) when either figure was not measured or the divisor is 0.
    pub value: Option<f64>,
    pub meaning: &'static str,
}

/// A side run and its ratios against the measured engine run.
#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    pub name: &'static str,
    pub what: &'static str,
    #[serde(flatten)]
    pub side: SideMeasurement,
    pub ratios: Vec<Ratio>,
}

impl Comparison {
    /// `side`, a run of `kind`, against the engine's result and CPU.
    pub fn new(
        kind: &Kind,
        side: SideMeasurement,
        engine: &HttpResult,
        engine_cpu: &CpuPerRequest,
    ) -> Self {
        let ratios = kind
            .ratios
            .iter()
            .map(|spec| {
                let engine = spec.figure.of(engine, engine_cpu);
                let other = spec.figure.of(&side.result, &side.cpu_per_request);
                let (top, bottom) = match spec.direction {
                    Direction::EngineOverSide => (engine, other),
                    Direction::SideOverEngine => (other, engine),
                };
                Ratio {
                    name: spec.name,
                    value: divide(top, bottom),
                    meaning: spec.meaning,
                }
            })
            .collect();
        Self {
            name: kind.name,
            what: kind.what,
            side,
            ratios,
        }
    }
}

/// `top / bottom`, or `None` when either is missing or `bottom` is not
/// above 0 (JSON has no infinity).
fn divide(top: Option<f64>, bottom: Option<f64>) -> Option<f64> {
    let bottom = bottom.filter(|b| *b > 0.0)?;
    Some(top? / bottom)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A result of `tx_per_s` transactions/s at `rps` requests/s.
    pub(crate) fn result(target: &str, rps: f64, tx_per_s: f64) -> HttpResult {
        HttpResult {
            target: target.into(),
            users: 10,
            seconds: 3,
            requests: 30,
            ok: 30,
            errors_by_kind: Default::default(),
            rps,
            batch: 1,
            transactions_per_s: tx_per_s,
            latency_ms_p50: 1.0,
            latency_ms_p90: Some(2.0),
            latency_ms_p95: None,
            latency_ms_p99: 3.0,
            latency_ms_max: 4.0,
        }
    }

    pub(crate) fn cpu(engine_us: Option<f64>) -> CpuPerRequest {
        CpuPerRequest {
            engine_us,
            kafka_us: Some(5.0),
            redis_us: None,
            load_generator_us: Some(20.0),
        }
    }

    const KIND: Kind = Kind {
        name: "test_side",
        what: "a side run for the tests",
        ratios: &[
            RatioSpec {
                name: "engine_vs_side",
                meaning: "engine tx/s / side tx/s",
                figure: Figure::TransactionsPerS,
                direction: Direction::EngineOverSide,
            },
            RatioSpec {
                name: "side_vs_engine_rps",
                meaning: "side RPS / engine RPS",
                figure: Figure::Rps,
                direction: Direction::SideOverEngine,
            },
            RatioSpec {
                name: "engine_cpu",
                meaning: "engine CPU / side engine CPU",
                figure: Figure::EngineCpuUs,
                direction: Direction::EngineOverSide,
            },
        ],
    };

    fn side(result: HttpResult, cpu: CpuPerRequest) -> SideMeasurement {
        SideMeasurement {
            result,
            cpu_per_request: cpu,
            invariants_hold: None,
        }
    }

    /// Each ratio divides its own figure, in its own direction, and keeps
    /// its name and meaning in the order the kind lists them.
    #[test]
    fn ratios_divide_their_figure_in_their_direction() {
        let engine = result("engine", 100.0, 400.0);
        let other = side(result("side", 50.0, 100.0), cpu(Some(10.0)));
        let c = Comparison::new(&KIND, other, &engine, &cpu(Some(30.0)));
        let got: Vec<_> = c.ratios.iter().map(|r| (r.name, r.value)).collect();
        assert_eq!(
            got,
            [
                ("engine_vs_side", Some(4.0)),
                ("side_vs_engine_rps", Some(0.5)),
                ("engine_cpu", Some(3.0)),
            ]
        );
        assert_eq!((c.name, c.what), (KIND.name, KIND.what));
        assert_eq!(c.ratios[1].meaning, "side RPS / engine RPS");
    }

    /// A figure not measured, or a divisor of 0, gives no ratio (null),
    /// never infinity or NaN; the other ratios stay.
    #[test]
    fn a_missing_figure_or_a_zero_divisor_gives_no_ratio() {
        let engine = result("engine", 100.0, 400.0);
        let other = side(result("side", 0.0, 0.0), cpu(None));
        let c = Comparison::new(&KIND, other, &engine, &cpu(Some(30.0)));
        let values: Vec<_> = c.ratios.iter().map(|r| r.value).collect();
        assert_eq!(values, [None, Some(0.0), None]);
        let json = serde_json::to_value(&c).unwrap();
        assert!(json["ratios"][0]["value"].is_null());
    }

    /// The JSON entry: name, what, the side run's result, CPU and
    /// invariants beside them, and the ratios as a list.
    #[test]
    fn a_comparison_serializes_as_one_flat_entry() {
        let engine = result("engine", 100.0, 400.0);
        let mut other = side(result("side", 50.0, 100.0), cpu(Some(10.0)));
        other.invariants_hold = Some(true);
        let json =
            serde_json::to_value(Comparison::new(&KIND, other, &engine, &cpu(None))).unwrap();
        assert_eq!(json["name"], "test_side");
        assert_eq!(json["result"]["target"], "side");
        assert_eq!(json["cpu_per_request"]["engine_us"], 10.0);
        assert_eq!(json["invariants_hold"], true);
        assert_eq!(json["ratios"][0]["name"], "engine_vs_side");
        assert_eq!(json["ratios"][0]["value"], 4.0);
    }
}
