//! Invariants checked after a run, read straight from Redis (one Redis or a
//! cluster, where keys spread over slots):
//! - every accepted transaction has exactly one outcome (applied or rejected);
//! - every account's balance equals its start plus the applied movements
//!   (so money is conserved: transfers move it, credits and debits are counted),
//!   and per asset the balances add up to their start plus the asset's
//!   applied credits less its debits (no money crossed between assets);
//! - no balance is outside its account's bounds, and each account holds
//!   the asset it was made with;
//! - no outcome exists for a refused request;
//! - every saga (a transfer between slots) ended: debited, then credited and
//!   released, or refused and refunded; a refund only where the credit was
//!   refused; its outcome is what its steps say; no money is left in flight
//!   or held;
//! - every hold ended once, as what ended it says (one applied capture of
//!   at most its amount, one void, or its expiry), none is left held long
//!   past its deadline, and each account's `pending` is the sum of its
//!   active holds (no postings between slots keep any) and at most its
//!   balance;
//! - every outcome and saga step (applied with its `balance_after`, or
//!   rejected with its reason) is what a plain model gives when the log is
//!   replayed from the starting balances in the order each slot decided them
//!   (`seq`), and no step exists that the log does not explain (no gap in
//!   any slot's `seq`, so no step was applied twice);
//! - each account's history replays to its balance: every entry's
//!   `balance_after` is the sum of the deltas before it and its own, from 0,
//!   and no transaction is in one history twice with one status;
//! - the outcomes topic holds exactly these outcomes, each once after
//!   deduplication (see [`events`]).
//!
//! # Files
//! - `mod.rs`: [`check`], which runs every check in order, its [`Verdict`],
//!   and the reader they all read Redis with.
//! - `outcomes.rs`: one outcome per accepted transaction, none per refused
//!   request; counts, reasons and accept-to-apply times.
//! - `balances.rs`: the expected balances (start plus the applied log) and
//!   each account's balance against them, its bounds and asset, and the
//!   totals per asset.
//! - `steps.rs`: the flags that applies and saga steps leave, read once for
//!   the sagas and the replay.
//! - `sagas.rs`: every saga ended as its steps say; nothing in flight or held.
//! - `holds.rs`: every hold ended once, as what ended it says; `pending`.
//! - `replay.rs`: the log replayed per slot in `seq` order against the model.
//! - `histories.rs`: each account's history replays to its balance.
//! - `events.rs`: the outcomes topic against the outcomes in Redis.

mod balances;
mod events;
mod histories;
mod holds;
mod outcomes;
mod replay;
mod sagas;
mod steps;

use std::collections::HashMap;

use anyhow::Context;

use redis::{Cmd, FromRedisValue};
use txengine::store::{Connection, Layout};

use crate::infra::Infra;
use crate::workload::Ledger;
use balances::{check_balances, start_balances};
use histories::check_histories;
use holds::{check_holds, read_holds};
use outcomes::{apply_uncertain, check_accepted, check_refused};
use replay::replay_in_apply_order;
use sagas::check_sagas;
use steps::read_steps;

/// What [`check`] found: counts for the reports, and every broken invariant.
#[derive(Debug, Default)]
pub struct Verdict {
    pub accepted: usize,
    pub applied: usize,
    pub rejected: usize,
    pub rejected_by_reason: HashMap<String, usize>,
    pub start_total: i128,
    pub end_total: i128,
    /// Transfers between slots among the accepted (0 on one Redis).
    pub sagas: usize,
    /// Money debited by sagas and neither credited nor refunded at the end.
    pub in_flight: u128,
    /// The holds of the ledger by how they stand: held, captured, voided,
    /// expired, rejected.
    pub hold_ends: std::collections::BTreeMap<String, usize>,
    /// From the client's 2xx to the apply (Redis clock), over tracked transactions.
    /// `None` when no accepted transaction carried a client timestamp.
    pub accept_to_applied_ms_p50: Option<f64>,
    pub accept_to_applied_ms_p99: Option<f64>,
    /// Latest apply time seen (ms since the epoch), for apply rates.
    pub last_applied_at_ms: u64,
    /// When each accepted transaction's outcome was decided (the
    /// consumer's clock), for apply rates over a window.
    pub settled_at_ms: Vec<u64>,
    /// Human-readable descriptions of every broken invariant (empty: all held).
    pub violations: Vec<String>,
}

impl Verdict {
    /// Whether every invariant held: no violation was found.
    pub fn holds(&self) -> bool {
        self.violations.is_empty()
    }
}

/// Reads Redis with the engine's own connection type, in pipelines per slot.
struct Reader {
    conn: Connection,
    layout: Layout,
}

impl Reader {
    /// Runs `commands` (each with the shard it goes to), in chunks.
    async fn query<T: FromRedisValue>(&self, commands: Vec<(u32, Cmd)>) -> anyhow::Result<Vec<T>> {
        self.query_by(commands, 5000).await
    }

    /// Runs `commands` `per_call` at a time: few for commands whose answers
    /// are large (a whole history), so no answer outlasts the timeout.
    async fn query_by<T: FromRedisValue>(
        &self,
        commands: Vec<(u32, Cmd)>,
        per_call: usize,
    ) -> anyhow::Result<Vec<T>> {
        let mut answers = Vec::with_capacity(commands.len());
        let mut commands = commands.into_iter();
        loop {
            let chunk: Vec<(u32, Cmd)> = commands.by_ref().take(per_call).collect();
            if chunk.is_empty() {
                return Ok(answers);
            }
            answers.extend(self.conn.run_by_slot(chunk).await?);
        }
    }

    /// HMGET of `key`, which lives in `owner`'s shard (an account or an id).
    fn hmget(&self, owner: &str, key: String, fields: &[&str]) -> (u32, Cmd) {
        let mut cmd = redis::cmd("HMGET");
        cmd.arg(key).arg(fields);
        (self.layout.shard_of(owner), cmd)
    }

    /// HMGET of `fields` of transaction `id`'s record.
    fn tx_fields(&self, id: &str, fields: &[&str]) -> (u32, Cmd) {
        self.hmget(id, self.layout.tx(id), fields)
    }

    /// The `state` of transaction `id`'s record.
    fn tx_state(&self, id: &str) -> (u32, Cmd) {
        let mut cmd = redis::cmd("HGET");
        cmd.arg(self.layout.tx(id)).arg("state");
        (self.layout.shard_of(id), cmd)
    }

    /// HMGET of `fields` of `account`'s record (balance, pending, held).
    fn account_fields(&self, account: &str, fields: &[&str]) -> (u32, Cmd) {
        self.hmget(account, self.layout.account(account), fields)
    }
}

/// Reads outcomes, balances and histories from `infra`'s Redis (keys under
/// the engine's namespace) and checks the ledger against them. Only a
/// failure to read is an `Err`.
pub async fn check(
    infra: &Infra,
    engine: &txengine::config::Config,
    ledger: &Ledger,
) -> anyhow::Result<Verdict> {
    let reader = open_reader(infra, engine.namespace.as_str()).await?;
    let mut verdict = Verdict {
        accepted: ledger.accepted.len(),
        ..Verdict::default()
    };
    let mut expected = start_balances(ledger);
    apply_uncertain(&reader, ledger, &mut expected).await?;
    check_accepted(&reader, ledger, &mut expected, &mut verdict).await?;
    check_refused(&reader, ledger, &mut verdict).await?;

    let steps = read_steps(&reader, ledger).await?;
    check_sagas(&reader, ledger, &steps, &mut verdict).await?;
    let holds = read_holds(&reader, ledger).await?;
    check_holds(&reader, ledger, &holds, &mut verdict).await?;
    verdict
        .violations
        .extend(replay_in_apply_order(&reader, ledger, &steps, &holds).await?);

    let history_balances = check_balances(&reader, engine, ledger, &expected, &mut verdict).await?;
    check_histories(&reader, &history_balances, &mut verdict).await?;
    if engine.outcome_events {
        verdict.violations.extend(
            events::check_outcome_events(
                &reader,
                &engine.kafka_brokers,
                &engine.outcomes_topic,
                ledger,
            )
            .await?,
        );
    }
    Ok(verdict)
}

/// Connects to `infra`'s Redis as the engine would, so that keys are found
/// where the engine put them (`namespace`, one Redis or a cluster's slots).
async fn open_reader(infra: &Infra, namespace: &str) -> anyhow::Result<Reader> {
    let topology = infra.redis_topology;
    let conn = Connection::open(
        &infra.redis_url,
        topology,
        std::time::Duration::from_secs(10),
    )
    .await
    .context("redis")?;
    Ok(Reader {
        conn,
        layout: Layout::new(namespace, topology),
    })
}
