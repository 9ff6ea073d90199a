//! A plain model of the apply rules, in the order `lua/atomic_update.lua`
//! and `lua/saga_step.lua` check them. The invariants replay whole runs
//! through it, and a differential test feeds it and the real script the same
//! random sequences.

use std::collections::HashMap;

use txengine::domain::MAX_MINOR_UNITS;

use crate::workload::{Kind, SentTx};

/// Balances, and money sagas took out of an account and have not settled.
#[derive(Debug, Clone, Default)]
pub struct Books {
    pub balances: HashMap<String, u64>,
    pub held: HashMap<String, u64>,
}

impl Books {
    pub fn new(balances: HashMap<String, u64>) -> Self {
        Self {
            balances,
            held: HashMap::new(),
        }
    }

    fn held(&self, account: &str) -> u64 {
        self.held.get(account).copied().unwrap_or(0)
    }

    /// Room to credit `account` without passing 2^53-1, keeping what it
    /// may be refunded.
    fn room(&self, account: &str, balance: u64) -> u64 {
        MAX_MINOR_UNITS - balance - self.held(account)
    }
}

/// One step of a saga (see `lua/saga_step.lua`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SagaStep {
    Debit,
    Credit,
    Release,
    Refund,
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
        }
    }
}

/// Decides `tx` in one script against `books` and, when it applies, moves
/// the money. `Ok(balance_after)` of the checked account, or `Err(reason)`.
pub fn decide(books: &mut Books, tx: &SentTx) -> Result<u64, &'static str> {
    let source = books
        .balances
        .get(&tx.account)
        .copied()
        .ok_or("unknown_account")?;
    match tx.kind {
        Kind::Credit => {
            if tx.amount > books.room(&tx.account, source) {
                return Err("balance_overflow");
            }
            books
                .balances
                .insert(tx.account.clone(), source + tx.amount);
            Ok(source + tx.amount)
        }
        Kind::Debit | Kind::Transfer => {
            if source < tx.amount {
                return Err("insufficient_funds");
            }
            if let Some(to) = tx.to.as_deref().filter(|_| tx.kind == Kind::Transfer) {
                let destination = books.balances.get(to).copied().ok_or("unknown_account")?;
                if tx.amount > books.room(to, destination) {
                    return Err("balance_overflow");
                }
                books
                    .balances
                    .insert(to.to_owned(), destination + tx.amount);
            }
            books
                .balances
                .insert(tx.account.clone(), source - tx.amount);
            Ok(source - tx.amount)
        }
    }
}

/// Decides one saga step of transfer `tx` against `books`, moving money as
/// the script does. `Ok(balance_after)` of the step's account, or
/// `Err(reason)` when a debit or a credit is refused.
pub fn decide_step(books: &mut Books, tx: &SentTx, step: SagaStep) -> Result<u64, &'static str> {
    let account = match step {
        SagaStep::Credit => tx.to.as_deref().unwrap_or_default(),
        _ => tx.account.as_str(),
    };
    let balance = books.balances.get(account).copied();
    let held = books.held(account);
    match step {
        SagaStep::Debit => {
            let balance = balance.ok_or("unknown_account")?;
            if balance < tx.amount {
                return Err("insufficient_funds");
            }
            books.held.insert(account.to_owned(), held + tx.amount);
            books
                .balances
                .insert(account.to_owned(), balance - tx.amount);
            Ok(balance - tx.amount)
        }
        SagaStep::Credit => {
            let balance = balance.ok_or("unknown_account")?;
            if tx.amount > books.room(account, balance) {
                return Err("balance_overflow");
            }
            books
                .balances
                .insert(account.to_owned(), balance + tx.amount);
            Ok(balance + tx.amount)
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
            books
                .balances
                .insert(account.to_owned(), balance + tx.amount);
            Ok(balance + tx.amount)
        }
    }
}
