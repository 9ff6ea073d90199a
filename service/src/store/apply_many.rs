//! A slot's applies in one script call: `lua/apply_many.lua` runs each
//! record's apply script (`atomic_update`, `saga_step` or `hold`) in order,
//! up to [`CALLS_PER_SCRIPT`] of a slot's records in one `EVALSHA`, every
//! slot at once. One call for many records instead of one each: a call
//! costs Redis several microseconds of its own, and within one call the
//! order needs no key; a slot's next call is sent once the one before it
//! answered, so the order holds between calls too.

use std::collections::BTreeMap;

use redis::{Cmd, Value};

use super::{evalsha, Store, StoreError};

/// The apply scripts `lua/apply_many.lua` runs, by the name it calls them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ApplyScript {
    /// `lua/atomic_update.lua`: a debit, credit or transfer in one slot.
    AtomicUpdate,
    /// `lua/saga_step.lua`: one step of a saga between slots.
    SagaStep,
    /// `lua/hold.lua`: a hold, or a capture, void or expiry of one.
    Hold,
}

impl ApplyScript {
    fn name(self) -> &'static str {
        match self {
            ApplyScript::AtomicUpdate => "atomic_update",
            ApplyScript::SagaStep => "saga_step",
            ApplyScript::Hold => "hold",
        }
    }
}

impl Store {
    /// Runs the calls, in order within each slot: a slot's calls in
    /// `apply_many` calls of at most [`CALLS_PER_SCRIPT`], one after the
    /// other, every slot at once. A call that answered NOSCRIPT (Redis lost
    /// its scripts: nothing of it ran) is run again once the scripts are
    /// loaded; any other error fails the whole (the caller retries it, and
    /// the flags make what was applied a repeat). One reply per call, in
    /// order.
    pub(super) async fn run_by_slot(
        &self,
        calls: &[StepCall],
    ) -> Result<Vec<StepAnswer>, StoreError> {
        let mut slots: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
        for (i, call) in calls.iter().enumerate() {
            slots.entry(call.shard).or_default().push(i);
        }
        let mut replies: Vec<Option<StepAnswer>> = calls.iter().map(|_| None).collect();
        let mut reloads = 0;
        loop {
            // Each slot's next chunk: its first calls not answered yet.
            let chunks: Vec<(u32, &[usize])> = slots
                .iter()
                .filter_map(|(&shard, indices)| {
                    let done = indices
                        .iter()
                        .take_while(|&&i| replies[i].is_some())
                        .count();
                    let rest = &indices[done..];
                    (!rest.is_empty()).then(|| (shard, &rest[..rest.len().min(CALLS_PER_SCRIPT)]))
                })
                .collect();
            if chunks.is_empty() {
                break;
            }
            let commands = chunks
                .iter()
                .map(|&(shard, chunk)| (shard, self.apply_many(chunk.iter().map(|&i| &calls[i]))))
                .collect();
            let answers = self.conn.run_by_slot_ignoring_errors(commands).await;
            let mut lost_scripts = false;
            for ((_, chunk), answer) in chunks.into_iter().zip(answers) {
                match answer.and_then(read_replies) {
                    Ok(answers) if answers.len() == chunk.len() => {
                        for (&i, reply) in chunk.iter().zip(answers) {
                            replies[i] = Some(reply);
                        }
                    }
                    Ok(answers) => {
                        return Err(StoreError::Unexpected(format!(
                            "apply_many answered {} replies for {} calls",
                            answers.len(),
                            chunk.len()
                        )))
                    }
                    Err(StoreError::Redis(e)) if e.code() == Some("NOSCRIPT") => {
                        lost_scripts = true;
                    }
                    Err(e) => return Err(e),
                }
            }
            if lost_scripts {
                reloads += 1;
                if reloads > MAX_RELOADS {
                    return Err(StoreError::Unexpected(format!(
                        "redis lost its scripts {reloads} times in one batch of applies"
                    )));
                }
                tracing::warn!("redis lost its scripts (restart?); loading them again");
                self.load_scripts().await?;
            }
        }
        Ok(replies.into_iter().flatten().collect())
    }

    /// `EVALSHA` of `lua/apply_many.lua` for `calls` (all in one slot):
    /// every call's KEYS one after the other; the number of calls, then for
    /// each its script's name, its counts of KEYS and ARGV, and its ARGV.
    fn apply_many<'a>(&self, calls: impl Iterator<Item = &'a StepCall> + Clone) -> Cmd {
        let keys: Vec<String> = calls
            .clone()
            .flat_map(|call| call.keys.iter().cloned())
            .collect();
        let mut cmd = evalsha(&self.scripts.apply_many, &keys);
        cmd.arg(calls.clone().count());
        for call in calls {
            cmd.arg(call.script.name())
                .arg(call.keys.len())
                .arg(call.args.args_iter().count());
            for arg in call.args.args_iter() {
                if let redis::Arg::Simple(bytes) = arg {
                    cmd.arg(bytes);
                }
            }
        }
        cmd
    }
}

/// The most records one `apply_many` call applies: enough that a call's own
/// cost is shared by many, few enough that Redis is not held for long (100
/// debits take it about 1.5 ms in `scripts/script-cost`; a backlog of 2,400
/// records applied in one call held it 93 ms under load).
pub(super) const CALLS_PER_SCRIPT: usize = 100;

/// Times the scripts are loaded again for one batch of applies before the
/// store gives up (the caller then retries the whole, with backoff).
const MAX_RELOADS: usize = 3;

/// One apply script's call: its slot, its script, and its KEYS and ARGV in
/// the order of the script's header (its contract in `store/calls.rs` wrote
/// them).
pub(super) struct StepCall {
    shard: u32,
    script: ApplyScript,
    keys: Vec<String>,
    args: Cmd,
}

impl StepCall {
    /// The call of `script` in `shard` with its contract's KEYS and ARGV
    /// (`store/calls.rs`).
    pub(super) fn new(shard: u32, script: ApplyScript, (keys, args): (Vec<String>, Cmd)) -> Self {
        Self {
            shard,
            script,
            keys,
            args,
        }
    }
}

/// A step script's reply: `(state, reason, balance_after, duplicate,
/// history entries written, asset)` (the asset: a saga debit's, else
/// empty).
pub(super) type StepAnswer = (String, String, String, i64, u64, String);

/// Reads an `apply_many` call's replies, one per call it ran.
fn read_replies(value: Value) -> Result<Vec<StepAnswer>, StoreError> {
    redis::from_redis_value(value).map_err(|e| StoreError::Unexpected(e.to_string()))
}
