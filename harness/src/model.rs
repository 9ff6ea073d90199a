//! A plain model of the apply rules, in the order `lua/atomic_update.lua`,
//! `lua/saga_step.lua`, `lua/hold.lua` and `lua/postings.lua` check them. The invariants replay whole runs
//! through it, and a differential test feeds it and the real script the same
//! random sequences.

use std::collections::HashMap;

use txengine::limits::MAX_MINOR_UNITS;

use crate::workload::{AccountSpec, Kind, Leg, SentTx};

/// Balances, money sagas took out of an account and have not settled,
/// money holds keep (`pending`), the holds, and each account's asset and
/// bounds (an account without a spec has the default ones).
#[derive(Debug, Clone, Default)]
pub struct Books {
    pub balances: HashMap<String, i64>,
    pub specs: HashMap<String, AccountSpec>,
    pub held: HashMap<String, u64>,
    pub pending: HashMap<String, u64>,
    /// Room postings between slots reserved to come in, by account.
    pub incoming: HashMap<String, u64>,
    /// What each slot's reserve of postings between slots keeps, by
    /// transaction and the slot's first account.
    pub reservations: HashMap<(String, String), Vec<Reach>>,
    /// Each hold by id: its amount, and whether it is still active.
    pub holds: HashMap<String, (u64, bool)>,
    /// The hold the last step ended and how (`captured`, `voided`, ...):
    /// a capture or void ends its hold in the same script, just before its
    /// own outcome, so the step right after an end is the one that ended it.
    pub just_ended: Option<(String, String)>,
    /// The index of the posting that failed the last postings transaction
    /// decided (None after any other step, or one applied).
    pub failed_posting: Option<u16>,
}

impl Books {
    pub fn new(balances: HashMap<String, u64>) -> Self {
        Self {
            balances: balances
                .into_iter()
                .map(|(account, balance)| (account, balance as i64))
                .collect(),
            ..Self::default()
        }
    }

    /// The same books, with the accounts' assets and bounds.
    pub fn with_specs(self, specs: HashMap<String, AccountSpec>) -> Self {
        Self { specs, ..self }
    }

    fn spec(&self, account: &str) -> AccountSpec {
        self.specs.get(account).cloned().unwrap_or_default()
    }

    fn held(&self, account: &str) -> u64 {
        self.held.get(account).copied().unwrap_or(0)
    }

    fn pending(&self, account: &str) -> u64 {
        self.pending.get(account).copied().unwrap_or(0)
    }

    /// Whether `amount` may leave `account`, whose balance is `balance`:
    /// what holds do not keep, down to its `min_balance`.
    fn may_pay(&self, account: &str, balance: i64, amount: u64) -> bool {
        balance - self.pending(account) as i64 - amount as i64 >= self.spec(account).min_balance
    }

    /// A posting's checks of its payer, in one script's order: it exists
    /// (its balance in `balances`, as the postings before left it), holds
    /// the asset the posting names, and may pay. Its balance and asset, or
    /// why not.
    fn payer_check(
        &self,
        balances: &HashMap<String, i64>,
        leg: &Leg,
    ) -> Result<(i64, String), &'static str> {
        let source = *balances.get(&leg.from).ok_or("unknown_account")?;
        let asset = self.spec(&leg.from).asset;
        if leg.asset.as_ref().is_some_and(|named| *named != asset) {
            return Err("asset_mismatch");
        }
        if !self.may_pay(&leg.from, source, leg.amount) {
            return Err("insufficient_funds");
        }
        Ok((source, asset))
    }

    /// Whether the step just before ended `hold` as `state`.
    fn ended_just_now(&self, hold: &str, states: &[&str]) -> bool {
        self.just_ended
            .as_ref()
            .is_some_and(|(id, state)| id == hold && states.contains(&state.as_str()))
    }

    /// Why a capture or void of `hold` cannot go, if it cannot.
    fn hold_refusal(&self, hold: &str) -> Option<&'static str> {
        match self.holds.get(hold) {
            None => Some("unknown_hold"),
            Some((_, false)) => Some("hold_not_active"),
            Some((_, true)) => None,
        }
    }

    /// Decides one step; only the step right after an end may be the one
    /// that made it, so the end is forgotten after it.
    fn after_one_step<T>(&mut self, step: impl FnOnce(&mut Self) -> T) -> T {
        self.failed_posting = None;
        let decided = step(self);
        self.just_ended = None;
        decided
    }

    /// Why `amount` may not be credited to `account` (balance `balance`),
    /// money of `asset` (`None`: not checked): another asset, or past its
    /// `max_balance` counting what it may be refunded.
    fn credit_refusal(
        &self,
        account: &str,
        balance: i64,
        amount: u64,
        asset: Option<&str>,
    ) -> Option<&'static str> {
        let spec = self.spec(account);
        if asset.is_some_and(|asset| asset != spec.asset) {
            return Some("asset_mismatch");
        }
        let incoming = self.incoming.get(account).copied().unwrap_or(0);
        if balance + (self.held(account) + incoming) as i64 + amount as i64 <= spec.max_balance {
            return None;
        }
        Some(if spec.max_balance == MAX_MINOR_UNITS as i64 {
            "balance_overflow"
        } else {
            "max_balance_exceeded"
        })
    }
}

/// Ends hold `hold` (of `account`) in the books, as its record says it
/// ended (`state`); `Err` when the books had it not active.
pub fn end_hold(books: &mut Books, hold: &str, account: &str, state: &str) -> Result<(), String> {
    let Some((amount, active)) = books.holds.get_mut(hold) else {
        return Err(format!("hold {hold} ended ({state}) but never began"));
    };
    if !*active {
        return Err(format!("hold {hold} ended ({state}) twice"));
    }
    *active = false;
    let amount = *amount;
    let pending = books.pending(account);
    if pending < amount {
        return Err(format!(
            "hold {hold} released {amount}, pending was {pending}"
        ));
    }
    books.pending.insert(account.to_owned(), pending - amount);
    books.just_ended = Some((hold.to_owned(), state.to_owned()));
    Ok(())
}

/// How far postings take an account down and up from where it starts:
/// (account, down, up), what a reserve keeps.
pub type Reach = (String, u64, u64);

/// One step of a saga (see `lua/saga_step.lua`), or of postings between
/// slots (`lua/posting_step.lua`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SagaStep {
    Debit,
    Credit,
    Release,
    Refund,
    Reserve,
    Commit,
    Cancel,
}

impl SagaStep {
    /// The state a step records when it moves money (`Ok`), and when it is
    /// refused (`Err`).
    pub fn states(self) -> (&'static str, &'static str) {
        match self {
            Self::Debit => ("debited", "rejected"),
            Self::Credit => ("credited", "refused"),
            Self::Release => ("released", "-"),
            Self::Refund => ("refunded", "-"),
            Self::Reserve => ("reserved", "refused"),
            Self::Commit => ("committed", "-"),
            Self::Cancel => ("cancelled", "-"),
        }
    }
}

/// Decides `tx` in one script against `books` and, when it applies, moves
/// the money. `Ok(balance_after)` of the checked account, or `Err(reason)`.
pub fn decide(books: &mut Books, tx: &SentTx) -> Result<i64, &'static str> {
    books.after_one_step(|books| decide_after(books, tx))
}

fn decide_after(books: &mut Books, tx: &SentTx) -> Result<i64, &'static str> {
    let hold = tx.hold.as_deref().unwrap_or_default();
    match tx.kind {
        Kind::Hold { .. } => decide_hold(books, tx),
        Kind::Void => {
            if books.ended_just_now(hold, &["voided"]) {
                return Ok(books.balances.get(&tx.account).copied().unwrap_or(0));
            }
            Err(books.hold_refusal(hold).unwrap_or("active_hold_not_voided"))
        }
        Kind::Capture => decide_capture(books, tx, hold),
        Kind::Credit | Kind::Debit | Kind::Transfer => decide_movement(books, tx),
        Kind::Postings => decide_postings(books, tx).map_err(|(index, reason)| {
            books.failed_posting = Some(index as u16);
            reason
        }),
    }
}

/// Postings, in order, each against the balances the ones before it left;
/// all move, or none (`Err` with the index of the first that failed).
/// `Ok` is the first `from`'s balance after all of them.
fn decide_postings(books: &mut Books, tx: &SentTx) -> Result<i64, (usize, &'static str)> {
    let mut balances = books.balances.clone();
    for (index, leg) in tx.legs.iter().enumerate() {
        let refused = |reason| (index, reason);
        let (source, asset) = books.payer_check(&balances, leg).map_err(refused)?;
        let destination = *balances.get(&leg.to).ok_or(refused("unknown_account"))?;
        if let Some(reason) = books.credit_refusal(&leg.to, destination, leg.amount, Some(&asset)) {
            return Err(refused(reason));
        }
        balances.insert(leg.from.clone(), source - leg.amount as i64);
        balances.insert(leg.to.clone(), destination + leg.amount as i64);
    }
    books.balances = balances;
    Ok(books.balances.get(&tx.account).copied().unwrap_or(0))
}

/// A hold: the account's `pending` rises by its amount if it is available.
fn decide_hold(books: &mut Books, tx: &SentTx) -> Result<i64, &'static str> {
    let Some(source) = books.balances.get(&tx.account).copied() else {
        books.holds.insert(tx.id.clone(), (tx.amount, false));
        return Err("unknown_account");
    };
    if !books.may_pay(&tx.account, source, tx.amount) {
        books.holds.insert(tx.id.clone(), (tx.amount, false));
        return Err("insufficient_funds");
    }
    let pending = books.pending(&tx.account);
    books
        .pending
        .insert(tx.account.clone(), pending + tx.amount);
    books.holds.insert(tx.id.clone(), (tx.amount, true));
    Ok(source)
}

/// A capture of `hold`: applied only when the hold ended captured just now
/// (its amount moved), else the refusal the script would give.
fn decide_capture(books: &mut Books, tx: &SentTx, hold: &str) -> Result<i64, &'static str> {
    let source = books.balances.get(&tx.account).copied().unwrap_or(0);
    if books.ended_just_now(hold, &["captured"]) {
        // As the script checks before it ends the hold: `to`
        // exists and has room, and the money is there.
        if let Some(to) = tx.to.as_deref() {
            let destination = room_for(books, tx, to)?;
            books
                .balances
                .insert(to.to_owned(), destination + tx.amount as i64);
        }
        let after = source - tx.amount as i64;
        if after < books.spec(&tx.account).min_balance {
            return Err("balance_below_hold");
        }
        books.balances.insert(tx.account.clone(), after);
        return Ok(after);
    }
    if let Some(refusal) = books.hold_refusal(hold) {
        return Err(refusal);
    }
    let held = books.holds[hold].0;
    if tx.amount > held {
        return Err("exceeds_hold");
    }
    if let Some(to) = tx.to.as_deref() {
        room_for(books, tx, to)?;
    }
    Err("active_hold_not_captured")
}

/// The balance of `to` when it exists, holds the asset of `tx`'s account
/// and has room for `tx`'s amount more.
fn room_for(books: &Books, tx: &SentTx, to: &str) -> Result<i64, &'static str> {
    let destination = books.balances.get(to).copied().ok_or("unknown_account")?;
    let asset = books.spec(&tx.account).asset;
    match books.credit_refusal(to, destination, tx.amount, Some(&asset)) {
        Some(refusal) => Err(refusal),
        None => Ok(destination),
    }
}

/// A credit, debit or transfer in one step.
fn decide_movement(books: &mut Books, tx: &SentTx) -> Result<i64, &'static str> {
    let source = books
        .balances
        .get(&tx.account)
        .copied()
        .ok_or("unknown_account")?;
    let amount = tx.amount as i64;
    if tx.kind == Kind::Credit {
        if let Some(refusal) = books.credit_refusal(&tx.account, source, tx.amount, None) {
            return Err(refusal);
        }
        books.balances.insert(tx.account.clone(), source + amount);
        return Ok(source + amount);
    }
    if !books.may_pay(&tx.account, source, tx.amount) {
        return Err("insufficient_funds");
    }
    if let Some(to) = tx.to.as_deref().filter(|_| tx.kind == Kind::Transfer) {
        let destination = room_for(books, tx, to)?;
        books.balances.insert(to.to_owned(), destination + amount);
    }
    books.balances.insert(tx.account.clone(), source - amount);
    Ok(source - amount)
}

/// Decides one saga step of transfer `tx` against `books`, moving money as
/// the script does. `Ok(balance_after)` of the step's account, or
/// `Err(reason)` when a debit or a credit is refused.
pub fn decide_step(books: &mut Books, tx: &SentTx, step: SagaStep) -> Result<i64, &'static str> {
    books.after_one_step(|books| decide_step_after(books, tx, step))
}

fn decide_step_after(books: &mut Books, tx: &SentTx, step: SagaStep) -> Result<i64, &'static str> {
    let account = match step {
        SagaStep::Credit => tx.to.as_deref().unwrap_or_default(),
        _ => tx.account.as_str(),
    };
    let balance = books.balances.get(account).copied();
    let held = books.held(account);
    let amount = tx.amount as i64;
    match step {
        SagaStep::Debit if tx.kind == Kind::Capture => {
            // A capture to another slot: its hold, ended just before (as
            // `capturing`, later `captured` or `voided`), pays the debit.
            let hold = tx.hold.as_deref().unwrap_or_default();
            if !books.ended_just_now(hold, &["capturing", "captured", "voided"]) {
                if let Some(refusal) = books.hold_refusal(hold) {
                    return Err(refusal);
                }
                if tx.amount > books.holds[hold].0 {
                    return Err("exceeds_hold");
                }
                return Err("active_hold_not_captured");
            }
            let after = balance.unwrap_or(0) - amount;
            if after < books.spec(account).min_balance {
                return Err("balance_below_hold");
            }
            books.held.insert(account.to_owned(), held + tx.amount);
            books.balances.insert(account.to_owned(), after);
            Ok(after)
        }
        SagaStep::Debit => {
            let balance = balance.ok_or("unknown_account")?;
            if !books.may_pay(account, balance, tx.amount) {
                return Err("insufficient_funds");
            }
            books.held.insert(account.to_owned(), held + tx.amount);
            books.balances.insert(account.to_owned(), balance - amount);
            Ok(balance - amount)
        }
        SagaStep::Credit => {
            let balance = balance.ok_or("unknown_account")?;
            // The money is of the source's asset, as its debit answered.
            let asset = books.spec(&tx.account).asset;
            if let Some(refusal) = books.credit_refusal(account, balance, tx.amount, Some(&asset)) {
                return Err(refusal);
            }
            books.balances.insert(account.to_owned(), balance + amount);
            Ok(balance + amount)
        }
        SagaStep::Release | SagaStep::Refund => {
            let balance = balance.unwrap_or(0);
            if held < tx.amount {
                return Err("held_too_little");
            }
            books.held.insert(account.to_owned(), held - tx.amount);
            if step == SagaStep::Release {
                return Ok(balance);
            }
            books.balances.insert(account.to_owned(), balance + amount);
            Ok(balance + amount)
        }
        SagaStep::Reserve | SagaStep::Commit | SagaStep::Cancel => Err("not_a_transfer_step"),
    }
}

/// One slot's step of postings between slots (see `lua/posting_step.lua`),
/// `here` the transaction's accounts in that slot, in order of first
/// mention: `Ok` with the balance after of the first of them for a commit
/// (`None` for a reserve or cancel), or the reserve's refusal (its posting
/// in `failed_posting`).
pub fn decide_posting_step(
    books: &mut Books,
    tx: &SentTx,
    step: SagaStep,
    here: &[String],
) -> Result<Option<i64>, &'static str> {
    books.after_one_step(|books| {
        let key = (tx.id.clone(), here[0].clone());
        match step {
            SagaStep::Reserve => match check_postings_here(books, tx, here) {
                Ok(()) => {
                    let kept = reach(tx, here);
                    for (account, down, up) in &kept {
                        *books.pending.entry(account.clone()).or_default() += down;
                        *books.incoming.entry(account.clone()).or_default() += up;
                    }
                    books.reservations.insert(key, kept);
                    Ok(None)
                }
                Err((index, reason)) => {
                    books.failed_posting = Some(index as u16);
                    Err(reason)
                }
            },
            SagaStep::Commit | SagaStep::Cancel => {
                let kept = books.reservations.remove(&key);
                if step == SagaStep::Commit && kept.is_none() {
                    return Err("commit_without_reservation");
                }
                for (account, down, up) in kept.unwrap_or_default() {
                    *books.pending.entry(account.clone()).or_default() -= down;
                    *books.incoming.entry(account).or_default() -= up;
                }
                if step == SagaStep::Cancel {
                    return Ok(None);
                }
                for leg in &tx.legs {
                    let amount = leg.amount as i64;
                    if here.contains(&leg.from) {
                        *books.balances.entry(leg.from.clone()).or_default() -= amount;
                    }
                    if here.contains(&leg.to) {
                        *books.balances.entry(leg.to.clone()).or_default() += amount;
                    }
                }
                Ok(books.balances.get(&here[0]).copied())
            }
            _ => Err("not_a_postings_step"),
        }
    })
}

/// The postings' checks on the accounts in `here` only, in order, each
/// against the balances the postings before it left there; the first that
/// fails (its index) and why.
fn check_postings_here(
    books: &Books,
    tx: &SentTx,
    here: &[String],
) -> Result<(), (usize, &'static str)> {
    let mut balances = books.balances.clone();
    for (index, leg) in tx.legs.iter().enumerate() {
        let refused = |reason| (index, reason);
        if here.contains(&leg.from) {
            let (source, _) = books.payer_check(&balances, leg).map_err(refused)?;
            balances.insert(leg.from.clone(), source - leg.amount as i64);
        }
        if here.contains(&leg.to) {
            // Against the named asset only: the two sides' assets are
            // compared from every slot's answer.
            let destination = *balances.get(&leg.to).ok_or(refused("unknown_account"))?;
            if let Some(reason) =
                books.credit_refusal(&leg.to, destination, leg.amount, leg.asset.as_deref())
            {
                return Err(refused(reason));
            }
            balances.insert(leg.to.clone(), destination + leg.amount as i64);
        }
    }
    Ok(())
}

/// How far each account in `here` goes below and above where it starts as
/// the postings move it in order: (account, down, up).
fn reach(tx: &SentTx, here: &[String]) -> Vec<Reach> {
    here.iter()
        .map(|account| {
            let (mut now, mut down, mut up) = (0i64, 0i64, 0i64);
            for leg in &tx.legs {
                if leg.from == *account {
                    now -= leg.amount as i64;
                    down = down.max(-now);
                }
                if leg.to == *account {
                    now += leg.amount as i64;
                    up = up.max(now);
                }
            }
            (account.clone(), down as u64, up as u64)
        })
        .collect()
}
