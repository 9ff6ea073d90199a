//! A pipeline of apply calls run in order within each slot: each apply
//! script runs as the body of `lua/in_order.lua`, which skips a call when
//! the call before it in its pipeline did not run to the end; the store
//! runs what was skipped again, from the first call that did not run.

use std::collections::BTreeMap;

use redis::{Arg, Cmd, Script, Value};

use super::{evalsha, Store, StoreError};

impl Store {
    /// Runs the calls, in order within each slot, one pipeline per slot
    /// (all slots at once), each guarded by `lua/in_order.lua`: a call
    /// after one that did not run is skipped. What was skipped or failed on
    /// NOSCRIPT is run again, from the first call of its slot that did not
    /// run (the scripts loaded first), never before calls already applied;
    /// any other error fails the whole (the caller retries it, and the
    /// flags make what was applied a repeat). One reply per call, in order.
    pub(super) async fn run_in_order(
        &self,
        calls: &[StepCall<'_>],
    ) -> Result<Vec<StepAnswer>, StoreError> {
        let mut replies: Vec<Option<StepAnswer>> = calls.iter().map(|_| None).collect();
        for _ in 0..MAX_IN_ORDER_ROUNDS {
            let token = Store::lease_token();
            let waiting: Vec<usize> = (0..calls.len()).filter(|&i| replies[i].is_none()).collect();
            // Each slot's count of calls, then each call's place among them.
            let mut counts: BTreeMap<u32, i64> = BTreeMap::new();
            for &i in &waiting {
                *counts.entry(calls[i].shard).or_default() += 1;
            }
            let mut places: BTreeMap<u32, i64> = BTreeMap::new();
            let commands = waiting
                .iter()
                .map(|&i| {
                    let call = &calls[i];
                    let place = places.entry(call.shard).or_default();
                    *place += 1;
                    // The last of its slot: negative (it writes no order key).
                    let place = match *place == counts[&call.shard] {
                        true => -*place,
                        false => *place,
                    };
                    let order_key = self.layout.order(call.shard, &token);
                    (call.shard, call.command(&order_key, place))
                })
                .collect();
            let answers = self.conn.run_by_slot_ignoring_errors(commands).await;
            // The first call of each slot that did not run, and why.
            let mut stopped: BTreeMap<u32, Option<StoreError>> = BTreeMap::new();
            for (&i, answer) in waiting.iter().zip(answers) {
                let shard = calls[i].shard;
                if stopped.contains_key(&shard) {
                    continue;
                }
                match answer.and_then(read_step) {
                    Ok(Some(reply)) => replies[i] = Some(reply),
                    Ok(None) => {
                        stopped.insert(shard, None);
                    }
                    Err(e) => {
                        stopped.insert(shard, Some(e));
                    }
                }
            }
            let mut errors = stopped.into_values().flatten();
            let noscript =
                |e: &StoreError| matches!(e, StoreError::Redis(e) if e.code() == Some("NOSCRIPT"));
            match errors.find(|e| !noscript(e)) {
                Some(e) => return Err(e),
                None if replies.iter().all(Option::is_some) => break,
                None => {
                    tracing::warn!("redis lost its scripts (restart?); loading them again");
                    self.load_scripts().await?;
                }
            }
        }
        replies
            .into_iter()
            .map(|reply| {
                reply.ok_or_else(|| {
                    StoreError::Unexpected(format!(
                        "applies did not all run in {MAX_IN_ORDER_ROUNDS} rounds"
                    ))
                })
            })
            .collect()
    }
}

/// Rounds of a pipeline of applies run again after NOSCRIPT before the
/// store gives up (the caller then retries the whole, with backoff).
const MAX_IN_ORDER_ROUNDS: usize = 3;

/// One apply script's call, before its place in a pipeline is known.
pub(super) struct StepCall<'a> {
    shard: u32,
    script: &'a Script,
    /// Its KEYS and ARGV, in the order of the script's header (its
    /// contract in `store/calls.rs` wrote them).
    keys: Vec<String>,
    args: Cmd,
}

impl<'a> StepCall<'a> {
    /// The call of `script` in `shard` with its contract's KEYS and ARGV
    /// (`store/calls.rs`).
    pub(super) fn new(shard: u32, script: &'a Script, (keys, args): (Vec<String>, Cmd)) -> Self {
        Self {
            shard,
            script,
            keys,
            args,
        }
    }

    /// `EVALSHA` with the pipeline's order key after the call's KEYS and
    /// its `place` after its ARGV (`lua/in_order.lua`; negative for the
    /// last call of its pipeline).
    fn command(&self, order_key: &str, place: i64) -> Cmd {
        let mut keys = self.keys.clone();
        keys.push(order_key.to_owned());
        let mut cmd = evalsha(self.script, &keys);
        for arg in self.args.args_iter() {
            if let Arg::Simple(bytes) = arg {
                cmd.arg(bytes);
            }
        }
        cmd.arg(place);
        cmd
    }
}

/// A step script's reply: `(state, reason, balance_after, duplicate,
/// history entries written, asset)` (the asset: a saga debit's, else
/// empty).
pub(super) type StepAnswer = (String, String, String, i64, u64, String);

/// Reads a call's answer: its reply, or `None` when it was skipped
/// (`lua/in_order.lua`: a call before it did not run).
fn read_step(value: Value) -> Result<Option<StepAnswer>, StoreError> {
    let reply: StepAnswer =
        redis::from_redis_value(value).map_err(|e| StoreError::Unexpected(e.to_string()))?;
    Ok((reply.0 != "skipped").then_some(reply))
}
