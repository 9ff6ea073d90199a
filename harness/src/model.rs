//! A plain model of the apply rules, in the order `lua/atomic_update.lua`
//! checks them. The invariants replay whole runs through it, and a
//! differential test feeds it and the real script the same random sequences.

use std::collections::HashMap;

use txengine::domain::MAX_MINOR_UNITS;

use crate::workload::{Kind, SentTx};

/// Decides `tx` against `balances` and, when it applies, moves the money.
/// `Ok(balance_after)` of the checked account, or `Err(reason)`.
pub fn decide(balances: &mut HashMap<String, u64>, tx: &SentTx) -> Result<u64, &'static str> {
    let max = MAX_MINOR_UNITS;
    let source = balances
        .get(&tx.account)
        .copied()
        .ok_or("unknown_account")?;
    match tx.kind {
        Kind::Credit => {
            if tx.amount > max - source {
                return Err("balance_overflow");
            }
            balances.insert(tx.account.clone(), source + tx.amount);
            Ok(source + tx.amount)
        }
        Kind::Debit | Kind::Transfer => {
            if source < tx.amount {
                return Err("insufficient_funds");
            }
            if let Some(to) = tx.to.as_deref().filter(|_| tx.kind == Kind::Transfer) {
                let destination = balances.get(to).copied().ok_or("unknown_account")?;
                if tx.amount > max - destination {
                    return Err("balance_overflow");
                }
                balances.insert(to.to_owned(), destination + tx.amount);
            }
            balances.insert(tx.account.clone(), source - tx.amount);
            Ok(source - tx.amount)
        }
    }
}
