//! A slot's applies in few script calls: `lua/apply_many.lua` runs up to
//! [`CALLS_PER_SCRIPT`] records' apply scripts (`atomic_update`,
//! `saga_step`, `hold`, `postings` or `posting_step`) in order in one `EVALSHA`, a slot's calls in one
//! pipeline, every slot at once. One call for many records instead of one
//! each: a call costs Redis several microseconds of its own. Each call of a
//! pipeline runs only if the one before it ran to the end (its order key),
//! so a slot's records never apply out of order.

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
    /// `lua/postings.lua`: a postings transaction whose accounts share a slot.
    Postings,
    /// `lua/posting_step.lua`: one slot's step of a postings transaction
    /// between slots.
    PostingStep,
}

impl ApplyScript {
    fn name(self) -> &'static str {
        match self {
            ApplyScript::AtomicUpdate => "atomic_update",
            ApplyScript::SagaStep => "saga_step",
            ApplyScript::Hold => "hold",
            ApplyScript::Postings => "postings",
            ApplyScript::PostingStep => "posting_step",
        }
    }
}

impl Store {
    /// Runs the calls, in order within each slot: a slot's calls in
    /// `apply_many` calls of at most [`CALLS_PER_SCRIPT`], one pipeline per
    /// slot (all slots at once). A script call after one that did not run
    /// is skipped; what was skipped or failed on NOSCRIPT is run again, from
    /// the first call of its slot that did not run (the scripts loaded
    /// first), never before records already applied; any other error fails
    /// the whole (the caller retries it, and the flags make what was
    /// applied a repeat). One reply per call, in order.
    pub(super) async fn run_by_slot(
        &self,
        calls: &[StepCall],
    ) -> Result<Vec<StepAnswer>, StoreError> {
        let mut slots: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
        for (i, call) in calls.iter().enumerate() {
            slots.entry(call.shard).or_default().push(i);
        }
        let mut replies: Vec<Option<StepAnswer>> = calls.iter().map(|_| None).collect();
        for _ in 0..MAX_ROUNDS {
            let (chunks, commands): (Vec<_>, Vec<_>) = self
                .round(calls, &slots, &replies)
                .into_iter()
                .map(|(shard, chunk, command)| ((shard, chunk), (shard, command)))
                .unzip();
            if commands.is_empty() {
                break;
            }
            let answers = self.conn.run_by_slot_ignoring_errors(commands).await;
            let stopped = file_answers(chunks, answers, &mut replies)?;
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
                        "applies did not all run in {MAX_ROUNDS} rounds"
                    ))
                })
            })
            .collect()
    }

    /// One round's script calls: each slot's records not answered yet (from
    /// the first unanswered one on) in calls of [`CALLS_PER_SCRIPT`], each
    /// at its place under the round's own order key (the last of a slot's
    /// negative), with the indices of the records it carries.
    fn round<'s>(
        &self,
        calls: &[StepCall],
        slots: &'s BTreeMap<u32, Vec<usize>>,
        replies: &[Option<StepAnswer>],
    ) -> Vec<(u32, &'s [usize], Cmd)> {
        let token = Store::lease_token();
        let mut round = Vec::new();
        for (&shard, indices) in slots {
            let done = indices
                .iter()
                .take_while(|&&i| replies[i].is_some())
                .count();
            let waiting: Vec<&[usize]> = indices[done..].chunks(CALLS_PER_SCRIPT).collect();
            let order_key = self.layout.order(shard, &token);
            for (n, chunk) in waiting.iter().enumerate() {
                let place = match n + 1 == waiting.len() {
                    true => -(n as i64 + 1),
                    false => n as i64 + 1,
                };
                let records = chunk.iter().map(|&i| &calls[i]);
                round.push((shard, *chunk, self.apply_many(&order_key, place, records)));
            }
        }
        round
    }

    /// `EVALSHA` of `lua/apply_many.lua` for `calls` (all in one slot), at
    /// `place` under `order_key`: the order key, then every call's KEYS one
    /// after the other; the place, the number of calls, then for each its
    /// script's name, its counts of KEYS and ARGV, and its ARGV.
    fn apply_many<'a>(
        &self,
        order_key: &str,
        place: i64,
        calls: impl Iterator<Item = &'a StepCall> + Clone,
    ) -> Cmd {
        let keys: Vec<String> = std::iter::once(order_key.to_owned())
            .chain(calls.clone().flat_map(|call| call.keys.iter().cloned()))
            .collect();
        let mut cmd = evalsha(&self.scripts.apply_many, &keys);
        cmd.arg(place).arg(calls.clone().count());
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

/// Rounds of a batch's applies run again after NOSCRIPT before the store
/// gives up (the caller then retries the whole, with backoff).
const MAX_ROUNDS: usize = 3;

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
/// history entries written, asset)` (the asset of the account the step
/// ran for; empty when there is no such account).
pub(super) type StepAnswer = (String, String, String, i64, u64, String, String, String);

/// Files each script call's replies under the records it carried, slot by
/// slot in order, and answers the first call of each slot that did not run
/// and why (`None`: skipped, a call before it did not run); the calls
/// after it in its slot are not read (they were skipped).
fn file_answers(
    chunks: Vec<(u32, &[usize])>,
    answers: Vec<Result<Value, StoreError>>,
    replies: &mut [Option<StepAnswer>],
) -> Result<BTreeMap<u32, Option<StoreError>>, StoreError> {
    let mut stopped: BTreeMap<u32, Option<StoreError>> = BTreeMap::new();
    for ((shard, chunk), answer) in chunks.into_iter().zip(answers) {
        if stopped.contains_key(&shard) {
            continue;
        }
        match answer.and_then(read_replies) {
            Ok(Some(answers)) if answers.len() == chunk.len() => {
                for (&i, reply) in chunk.iter().zip(answers) {
                    replies[i] = Some(reply);
                }
            }
            Ok(Some(answers)) => {
                return Err(StoreError::Unexpected(format!(
                    "apply_many answered {} replies for {} records",
                    answers.len(),
                    chunk.len()
                )))
            }
            Ok(None) => {
                stopped.insert(shard, None);
            }
            Err(e) => {
                stopped.insert(shard, Some(e));
            }
        }
    }
    Ok(stopped)
}

/// Reads an `apply_many` call's replies, one per record, or `None` when it
/// was skipped (a call before it in its pipeline did not run).
fn read_replies(value: Value) -> Result<Option<Vec<StepAnswer>>, StoreError> {
    let skipped = match &value {
        Value::SimpleString(text) => text == "skipped",
        Value::BulkString(bytes) => bytes == b"skipped",
        _ => false,
    };
    if skipped {
        return Ok(None);
    }
    redis::from_redis_value(value)
        .map(Some)
        .map_err(|e| StoreError::Unexpected(e.to_string()))
}
