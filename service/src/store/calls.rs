//! The call contract of each script that applies records
//! (`lua/atomic_update.lua`, `lua/saga_step.lua`, `lua/hold.lua`,
//! `lua/postings.lua`, `lua/posting_step.lua`): its KEYS
//! and ARGV typed once, one field for each in the order the script's header
//! documents them, and written in that order by one method (`write`), so the
//! order lives here and in the header only. KEYS[1..4] and ARGV[1..8] are
//! `lua/money.lua`'s layout, the same in all three ([`AccountKeys`],
//! [`FlagArgs`]); each script's own keys and arguments follow them.

use redis::Cmd;

use super::Layout;

/// KEYS[1..4] of every apply script: the flag, the slot's order, then the
/// keys of the account the call runs for, at the same index in each script
/// so that `money.lua`'s checks can read them there.
pub(super) struct AccountKeys {
    /// KEYS[1]: the processed flag (for an expiry, the hold itself).
    pub flag: String,
    /// KEYS[2]: the slot's apply-order counter.
    pub seq: String,
    /// KEYS[3]: the account's record (balance, pending, held).
    pub account: String,
    /// KEYS[4]: the account's history.
    pub history: String,
}

impl AccountKeys {
    /// The keys of `account`, in its slot, under `flag`.
    pub(super) fn of(layout: &Layout, account: &str, flag: String) -> Self {
        Self {
            flag,
            seq: layout.seq(layout.shard_of(account)),
            account: layout.account(account),
            history: layout.history(account),
        }
    }

    fn write(self, keys: &mut Vec<String>) {
        keys.extend([self.flag, self.seq, self.account, self.history]);
    }
}

/// The keys of the other account a call credits in its own slot (a
/// transfer's or a capture's `to`): its record and its history.
pub(super) struct CreditedKeys {
    pub account: String,
    pub history: String,
}

impl CreditedKeys {
    pub(super) fn of(layout: &Layout, to: &str) -> Self {
        Self {
            account: layout.account(to),
            history: layout.history(to),
        }
    }

    fn write(self, keys: &mut Vec<String>) {
        keys.extend([self.account, self.history]);
    }
}

/// ARGV[1..8] of every apply script (`money.lua`'s `replayed`, `settle` and
/// `log_tx` read 3 to 8).
pub(super) struct FlagArgs<'a> {
    /// ARGV[1]: the kind, step or op.
    pub what: &'a str,
    /// ARGV[2]
    pub amount_minor: u64,
    /// ARGV[3]: the transaction's fingerprint (what its id is bound to).
    pub fingerprint: String,
    /// ARGV[4]: seconds to keep the flag.
    pub outcome_ttl_secs: u64,
    /// ARGV[5]: the consumer's clock.
    pub now_ms: u64,
    /// ARGV[6]: the transaction's id.
    pub id: &'a str,
    /// ARGV[7]: milliseconds of history to keep (0: none).
    pub history_keep_ms: u64,
    /// ARGV[8]: the metadata, canonical JSON.
    pub metadata: String,
}

impl FlagArgs<'_> {
    fn write(self, args: &mut Cmd) {
        args.arg(self.what)
            .arg(self.amount_minor)
            .arg(self.fingerprint)
            .arg(self.outcome_ttl_secs)
            .arg(self.now_ms)
            .arg(self.id)
            .arg(self.history_keep_ms)
            .arg(self.metadata);
    }
}

/// `lua/atomic_update.lua`: a debit, credit or transfer in one slot.
pub(super) struct AtomicUpdateCall<'a> {
    /// KEYS[1..4]: the checked account's.
    pub account: AccountKeys,
    /// KEYS[5..6]: a transfer's destination (none for a debit or credit).
    pub to: Option<CreditedKeys>,
    /// ARGV[1..8]
    pub args: FlagArgs<'a>,
    /// ARGV[9]: the destination's name ('' for a debit or credit).
    pub to_name: &'a str,
    /// ARGV[10]: the checked account's name.
    pub account_name: &'a str,
    /// ARGV[11]: the asset the transaction names ('' : none).
    pub asset: &'a str,
}

impl AtomicUpdateCall<'_> {
    /// Its KEYS, then its ARGV, in the order of the script's header.
    pub(super) fn write(self) -> (Vec<String>, Cmd) {
        let (mut keys, mut args) = (Vec::with_capacity(6), Cmd::new());
        self.account.write(&mut keys);
        if let Some(to) = self.to {
            to.write(&mut keys);
        }
        self.args.write(&mut args);
        args.arg(self.to_name)
            .arg(self.account_name)
            .arg(self.asset);
        (keys, args)
    }
}

/// `lua/saga_step.lua`: one step of a saga, in one account's slot.
pub(super) struct SagaStepCall<'a> {
    /// KEYS[1..4]: the account the step runs on, under the step's flag.
    pub account: AccountKeys,
    /// KEYS[5]: a capture saga's settle only, the hold it ends.
    pub hold: Option<String>,
    /// ARGV[1..8]
    pub args: FlagArgs<'a>,
    /// ARGV[9]: the saga's other account.
    pub counterparty: &'a str,
    /// ARGV[10]: the transaction's kind (transfer or capture).
    pub kind: &'a str,
    /// ARGV[11]: a capture's hold id ('' for a transfer).
    pub hold_id: &'a str,
    /// ARGV[12]: the asset the money must be of ('' : none named): a
    /// debit's, the transaction's; a credit's, the one its debit answered.
    pub asset: &'a str,
}

impl SagaStepCall<'_> {
    /// Its KEYS, then its ARGV, in the order of the script's header.
    pub(super) fn write(self) -> (Vec<String>, Cmd) {
        let (mut keys, mut args) = (Vec::with_capacity(5), Cmd::new());
        self.account.write(&mut keys);
        keys.extend(self.hold);
        self.args.write(&mut args);
        args.arg(self.counterparty)
            .arg(self.kind)
            .arg(self.hold_id)
            .arg(self.asset);
        (keys, args)
    }
}

/// `lua/hold.lua`: a hold, or a capture, void or expiry of one, in the
/// slot of the hold's account.
pub(super) struct HoldCall<'a> {
    /// KEYS[1..4]: the hold's account.
    pub account: AccountKeys,
    /// KEYS[5]: the hold.
    pub hold: String,
    /// KEYS[6]: the slot's due holds.
    pub holds_due: String,
    /// KEYS[7..8]: a capture's `to` in this slot (none otherwise).
    pub to: Option<CreditedKeys>,
    /// ARGV[1..8]
    pub args: FlagArgs<'a>,
    /// ARGV[9]: the hold's member of the due set.
    pub due_member: String,
    /// ARGV[10]: a hold's timeout (0 for the others).
    pub timeout_ms: u64,
    /// ARGV[11]: the hold's `to` ('' when none).
    pub to_name: &'a str,
    /// ARGV[12]: the hold's id.
    pub hold_id: &'a str,
    /// ARGV[13]: the account's name (`to`'s counterparty).
    pub account_name: &'a str,
    /// ARGV[14]: the asset the transaction names ('' : none).
    pub asset: &'a str,
}

impl HoldCall<'_> {
    /// Its KEYS, then its ARGV, in the order of the script's header.
    pub(super) fn write(self) -> (Vec<String>, Cmd) {
        let (mut keys, mut args) = (Vec::with_capacity(8), Cmd::new());
        self.account.write(&mut keys);
        keys.push(self.hold);
        keys.push(self.holds_due);
        if let Some(to) = self.to {
            to.write(&mut keys);
        }
        self.args.write(&mut args);
        args.arg(self.due_member)
            .arg(self.timeout_ms)
            .arg(self.to_name)
            .arg(self.hold_id)
            .arg(self.account_name)
            .arg(self.asset);
        (keys, args)
    }
}

/// `lua/postings.lua`: a postings transaction, every account in one slot.
pub(super) struct PostingsCall<'a> {
    /// KEYS[1..4]: the first `from`'s (account 1), under the apply flag.
    pub first: AccountKeys,
    /// KEYS[5..]: accounts 2..m, in order of first mention.
    pub others: Vec<CreditedKeys>,
    /// ARGV[1..8]
    pub args: FlagArgs<'a>,
    /// ARGV[9..]: the accounts' names, 1..m.
    pub names: Vec<&'a str>,
    /// Each posting: its `from`'s and `to`'s numbers (1-based, in `names`),
    /// its amount, the asset it names ('' : none).
    pub postings: Vec<(usize, usize, u64, &'a str)>,
}

impl PostingsCall<'_> {
    /// Its KEYS, then its ARGV, in the order of the script's header.
    pub(super) fn write(self) -> (Vec<String>, Cmd) {
        let (mut keys, mut args) = (Vec::with_capacity(4 + 2 * self.others.len()), Cmd::new());
        self.first.write(&mut keys);
        for other in self.others {
            other.write(&mut keys);
        }
        self.args.write(&mut args);
        write_counted(&mut args, &self.names);
        write_postings(&mut args, &self.postings);
        (keys, args)
    }
}

/// A list as the postings scripts take it: its length, then its items.
fn write_counted<T: redis::ToRedisArgs>(args: &mut Cmd, items: &[T]) {
    args.arg(items.len());
    for item in items {
        args.arg(item);
    }
}

/// Postings as the postings scripts take them: their count, then each
/// one's `from` and `to` numbers, amount and named asset.
fn write_postings(args: &mut Cmd, postings: &[(usize, usize, u64, &str)]) {
    args.arg(postings.len());
    for (from, to, amount, asset) in postings {
        args.arg(from).arg(to).arg(amount).arg(asset);
    }
}

/// `lua/posting_step.lua`'s call: one slot's step of a postings
/// transaction between slots.
pub(super) struct PostingStepCall<'a> {
    /// KEYS[1..4]: this slot's account 1, under the step's flag.
    pub first: AccountKeys,
    /// KEYS[5..2 + 2l]: this slot's accounts 2..l.
    pub others: Vec<CreditedKeys>,
    /// KEYS[3 + 2l]: commit and cancel only: this slot's reserve flag.
    pub reserve_flag: Option<String>,
    /// ARGV[1..8]
    pub args: FlagArgs<'a>,
    /// ARGV[9..]: every account's name, 1..m, in order of first mention.
    pub names: Vec<&'a str>,
    /// This slot's accounts' numbers (1-based, in `names`).
    pub here: Vec<usize>,
    /// Each posting: its `from`'s and `to`'s numbers, its amount, the
    /// asset it names ('' : none).
    pub postings: Vec<(usize, usize, u64, &'a str)>,
    /// Cancel only: the failed posting's index and its reason.
    pub failed: Option<(u16, &'a str)>,
}

impl PostingStepCall<'_> {
    /// Its KEYS, then its ARGV, in the order of the script's header.
    pub(super) fn write(self) -> (Vec<String>, Cmd) {
        let (mut keys, mut args) = (Vec::with_capacity(5 + 2 * self.others.len()), Cmd::new());
        self.first.write(&mut keys);
        for other in self.others {
            other.write(&mut keys);
        }
        keys.extend(self.reserve_flag);
        self.args.write(&mut args);
        write_counted(&mut args, &self.names);
        write_counted(&mut args, &self.here);
        write_postings(&mut args, &self.postings);
        match self.failed {
            Some((posting, reason)) => args.arg(posting).arg(reason),
            None => args.arg("").arg(""),
        };
        (keys, args)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::RedisTopology;

    /// The indices a script's header documents for `what` (KEYS or ARGV):
    /// `-- KEYS[3] ...` or `-- ARGV[6..8] ...` at the start of a comment
    /// line, its own header's and those of money.lua's layout it takes.
    fn documented(source: &str, what: &str) -> Vec<usize> {
        let prefix = format!("-- {what}[");
        let mut indices: Vec<usize> = source
            .lines()
            .filter_map(|line| line.strip_prefix(&prefix)?.split_once(']'))
            .flat_map(|(range, _)| {
                let (first, last) = range.split_once("..").unwrap_or((range, range));
                first.parse().unwrap()..=last.parse().unwrap()
            })
            .collect();
        indices.sort_unstable();
        indices.dedup();
        indices
    }

    fn flag_args() -> FlagArgs<'static> {
        FlagArgs {
            what: "what",
            amount_minor: 1,
            fingerprint: "fp".into(),
            outcome_ttl_secs: 60,
            now_ms: 1,
            id: "t-1",
            history_keep_ms: 0,
            metadata: String::new(),
        }
    }

    fn account(layout: &Layout) -> AccountKeys {
        AccountKeys::of(layout, "a", "flag".into())
    }

    /// Each contract, with every optional key given, writes exactly the
    /// KEYS and ARGV its script's header documents, 1 to the last.
    #[test]
    fn each_contract_writes_what_its_header_documents() {
        let layout = Layout::new("ns", RedisTopology::Single);
        let to = || Some(CreditedKeys::of(&layout, "b"));
        let calls = [
            (
                "atomic_update",
                AtomicUpdateCall {
                    asset: "",
                    account: account(&layout),
                    to: to(),
                    args: flag_args(),
                    to_name: "b",
                    account_name: "a",
                }
                .write(),
            ),
            (
                "saga_step",
                SagaStepCall {
                    account: account(&layout),
                    hold: Some("hold".into()),
                    args: flag_args(),
                    counterparty: "b",
                    kind: "capture",
                    hold_id: "h",
                    asset: "USD/2",
                }
                .write(),
            ),
            (
                "hold",
                HoldCall {
                    asset: "",
                    account: account(&layout),
                    hold: "hold".into(),
                    holds_due: "due".into(),
                    to: to(),
                    args: flag_args(),
                    due_member: "a|h".into(),
                    timeout_ms: 0,
                    to_name: "b",
                    hold_id: "h",
                    account_name: "a",
                }
                .write(),
            ),
        ];
        for (script, (keys, args)) in calls {
            let header = match script {
                "atomic_update" => include_str!("../../../lua/atomic_update.lua"),
                "saga_step" => include_str!("../../../lua/saga_step.lua"),
                _ => include_str!("../../../lua/hold.lua"),
            };
            let keys_documented = documented(header, "KEYS");
            let args_documented = documented(header, "ARGV");
            assert_eq!(
                keys_documented,
                (1..=keys.len()).collect::<Vec<_>>(),
                "{script}'s KEYS"
            );
            assert_eq!(
                args_documented,
                (1..=args.args_iter().count()).collect::<Vec<_>>(),
                "{script}'s ARGV"
            );
        }
    }

    /// The account's keys sit where money.lua's layout says, in every call.
    #[test]
    fn the_account_keys_are_at_the_same_index_in_every_script() {
        let layout = Layout::new("ns", RedisTopology::Single);
        let (keys, _) = SagaStepCall {
            account: account(&layout),
            hold: None,
            args: flag_args(),
            counterparty: "b",
            kind: "transfer",
            hold_id: "",
            asset: "",
        }
        .write();
        assert_eq!(
            keys,
            [
                "flag".to_owned(),
                layout.seq(0),
                layout.account("a"),
                layout.history("a"),
            ]
        );
        let money = include_str!("../../../lua/money.lua");
        assert_eq!(documented(money, "KEYS"), (1..=4).collect::<Vec<_>>());
        assert_eq!(documented(money, "ARGV"), (1..=8).collect::<Vec<_>>());
    }
}
