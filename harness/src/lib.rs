//! # harness
//!
//! Proves txengine right and fast against real Redis and real Kafka.
//!
//! # Layout
//! - [`infra`]: where Redis and Kafka come from (`local`, `docker`, `external`),
//!   child processes that cannot outlive the harness, kill/restart faults.
//! - [`stack`]: an engine (API + consumers) on top of an infra, isolated by
//!   topic, group and key namespace; in process or as a child process.
//! - [`client`]: the one HTTP client for the engine's API.
//! - [`bench`]: `harness load`: the engine against the bare limits, one report.
//! - [`backlog`]: `harness backlog`: how fast one consumer drains a backlog.
//! - [`bare`]: the bare HTTP limit (an axum handler that only answers 202).
//! - [`load`]: the goose load runner.
//! - [`measure`]: what runs measure (result types, histograms) and the Kafka
//!   probes (consumer lag and drain, a topic's records), for runners and judges.
//! - [`script_sample`]: Redis's time per Lua script, from its slow log
//!   read in bounded pieces while a load runs.
//! - [`wrk`]: the lean peak-capacity generator (Debian's wrk) and its output.
//! - [`scenario`]: `scenarios/*.toml`: faults under load, judged by invariants.
//! - [`report`]: JSON, Markdown and SVG load reports with machine facts.
//! - [`model`]: the apply rules as plain Rust, to check the script against.
//! - [`invariants`]: what must hold after any run, read from Redis.
//! - [`workload`]: what runs send and get back: accounts, the mix, the ledger.

pub mod backlog;
pub mod bare;
pub mod bench;
pub mod client;
pub mod infra;
pub mod invariants;
pub mod load;
pub mod measure;
pub mod model;
pub mod report;
pub mod scenario;
pub mod script_sample;
pub mod stack;
pub mod workload;
pub mod wrk;
