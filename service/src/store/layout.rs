//! Key names and the slot each lives in.
//!
//!
//! Key layout ([`Layout`]). Every key carries a hash tag, `{tag}`, naming its
//! Redis Cluster slot: `{ns}` for every key on one Redis, `{ns:<shard>}` on a
//! cluster, where an account's shard (and a transaction id's) is a hash of
//! its name over [`CLUSTER_SHARDS`] shards, so accounts spread over the
//! cluster's masters.
//! - `{tag}:acct:<account>` the account, one hash: `balance` in minor
//!   units, `pending` (money its active holds keep) and `held` (money
//!   sagas debited from it and have not settled: never above 0 on one
//!   Redis), each of the last two absent (0) until first written
//! - `{tag}:tx:<id>`        hash: `fp` (the body the id is bound to, from the
//!   first claim on), `lease` + `lease_until_ms` (which request may publish
//!   it now), `accepted` (1 once Kafka has the record), and once settled
//!   `state` applied|rejected, `reason`, `balance_after`, `applied_at_ms`,
//!   and `seq` when the outcome was decided in this slot
//! - `{tag}:seq`            counter: the order in which this slot's outcomes
//!   and saga steps were decided
//! - cluster only, in the account's slot: `{tag}:step:<id>:<step>` (the
//!   flag of an apply whose tx record is in another slot, `apply`, or of a
//!   saga step, `debit` | `credit` | `settle`)
//! - in the account's slot: `{tag}:hold:<hold id>` (hash: `state`
//!   held|capturing|captured|voided|expired|rejected, `amount`, `to`,
//!   `deadline_ms` on Redis's clock, `captured`, `ended_ms`, `ended_seq`) and, one per
//!   slot, `{tag}:holds_due` (sorted set of `<account>|<hold id>` by when
//!   the expirer should next look at the hold)
//! - API keys, all in one slot (`{ns}` on one Redis, `{ns:keys}` on a
//!   cluster): `{keys}:apikey:<key id>` (hash: `hash` of the secret,
//!   `accounts` as a JSON array, `rate_per_s` and `burst` when limited,
//!   `created_at_ms`) and `{keys}:apikeys` (the set of key ids)
//! - `{tag}:rate:<key id>`: the key's GCRA state, in the key id's shard

use crate::domain::{Movement, Transaction};

/// How Redis is deployed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RedisTopology {
    /// One Redis server (with replicas or not): `--redis-url` is its URL.
    Single,
    /// A Redis Cluster: `--redis-url` is one or more seed nodes, comma
    /// separated; MOVED, ASK and TRYAGAIN are followed and retried.
    Cluster,
}

impl RedisTopology {
    /// The name `--redis-topology` takes.
    pub fn name(self) -> &'static str {
        match self {
            Self::Single => "single",
            Self::Cluster => "cluster",
        }
    }
}

use crate::limits::CLUSTER_SHARDS;

/// Key names and the slot each lives in; the store and the harness (which
/// reads Redis to check invariants) both build keys with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    namespace: String,
    shards: u32,
}

impl Layout {
    pub fn new(namespace: &str, topology: RedisTopology) -> Self {
        let shards = match topology {
            RedisTopology::Single => 1,
            RedisTopology::Cluster => CLUSTER_SHARDS,
        };
        Self {
            namespace: namespace.to_owned(),
            shards,
        }
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    pub fn shards(&self) -> u32 {
        self.shards
    }

    /// The shard of an account or a transaction id (FNV-1a of its name;
    /// the same in every namespace).
    pub fn shard_of(&self, name: &str) -> u32 {
        if self.shards == 1 {
            return 0;
        }
        let hash = name.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
        (hash % u64::from(self.shards)) as u32
    }

    /// `{ns}` on one Redis, `{ns:<shard>}` on a cluster.
    pub fn tag(&self, shard: u32) -> String {
        if self.shards == 1 {
            format!("{{{}}}", self.namespace)
        } else {
            format!("{{{}:{shard}}}", self.namespace)
        }
    }

    /// True when one script can touch both names' keys.
    pub fn same_slot(&self, a: &str, b: &str) -> bool {
        self.shard_of(a) == self.shard_of(b)
    }

    /// `{tag}:acct:<account>`: the account's record, a hash of its
    /// `balance`, `pending` (what its active holds keep), `held` (money in
    /// flight out of it), `asset`, bounds, metadata and creation time,
    /// `lua/money.lua`'s `account_at`.
    pub fn account(&self, account: &str) -> String {
        format!("{}:acct:{account}", self.tag(self.shard_of(account)))
    }

    /// `{tag}:layout` of shard 0: the version of the key layout the data
    /// was written in ([`crate::store::LAYOUT_VERSION`]).
    pub fn version(&self) -> String {
        format!("{}:layout", self.tag(0))
    }

    /// A SCAN pattern for the balances of key layout 1, where an account
    /// was three keys (`{tag}:bal:<account>` among them).
    pub fn legacy_balances(&self) -> String {
        if self.shards == 1 {
            format!("{}:bal:*", self.tag(0))
        } else {
            format!("{{{}:*}}:bal:*", self.namespace)
        }
    }

    /// A SCAN pattern for every account's record.
    pub fn accounts(&self) -> String {
        if self.shards == 1 {
            format!("{}:acct:*", self.tag(0))
        } else {
            format!("{{{}:*}}:acct:*", self.namespace)
        }
    }

    /// Key layout 1's keys of `account`: its balance, pending and held.
    pub fn legacy_account(&self, account: &str) -> [String; 3] {
        let tag = self.tag(self.shard_of(account));
        ["bal", "pending", "held"].map(|name| format!("{tag}:{name}:{account}"))
    }

    /// `{tag}:hist:<account>`: the account's history, a stream.
    pub fn history(&self, account: &str) -> String {
        format!("{}:hist:{account}", self.tag(self.shard_of(account)))
    }

    /// `{tag}:hold:<hold id>`, in the hold's account's slot.
    pub fn hold(&self, account: &str, hold: &str) -> String {
        format!("{}:hold:{hold}", self.tag(self.shard_of(account)))
    }

    /// `{tag}:holds_due` of one shard.
    pub fn holds_due(&self, shard: u32) -> String {
        format!("{}:holds_due", self.tag(shard))
    }

    /// A hold's member of its slot's due set: `<account>|<hold id>` (`|`
    /// is in neither alphabet).
    pub fn due_member(account: &str, hold: &str) -> String {
        format!("{account}|{hold}")
    }

    /// `{tag}:tx:<id>`, in the id's own slot.
    pub fn tx(&self, id: &str) -> String {
        format!("{}:tx:{id}", self.tag(self.shard_of(id)))
    }

    /// A SCAN pattern for the tx records whose ids match `id_glob`, and
    /// what precedes the id in every such key (up to and with `:tx:`).
    pub fn tx_pattern(&self, id_glob: &str) -> String {
        if self.shards == 1 {
            format!("{}:tx:{id_glob}", self.tag(0))
        } else {
            format!("{{{}:*}}:tx:{id_glob}", self.namespace)
        }
    }

    /// `{tag}:seq` of one shard.
    pub fn seq(&self, shard: u32) -> String {
        format!("{}:seq", self.tag(shard))
    }

    /// `{tag}:order:<token>`: how far one pipeline of applies in `shard`
    /// got (`lua/apply_many.lua`).
    pub fn order(&self, shard: u32, token: &str) -> String {
        format!("{}:order:{token}", self.tag(shard))
    }

    /// `{tag}:step:<id>:<step>`, in `account`'s slot.
    pub fn step(&self, account: &str, id: &str, step: &str) -> String {
        format!("{}:step:{id}:{step}", self.tag(self.shard_of(account)))
    }

    /// The processed flag of a one-script apply checked on `account`: the
    /// tx record itself when it shares the account's slot (always on one
    /// Redis), else a flag in the account's slot.
    pub fn apply_flag(&self, id: &str, account: &str) -> String {
        if self.same_slot(id, account) {
            self.tx(id)
        } else {
            self.step(account, id, "apply")
        }
    }

    /// The tag of the API keys' slot: every key record and their index
    /// share one slot, so admin operations are single-slot pipelines.
    fn keys_tag(&self) -> String {
        if self.shards == 1 {
            self.tag(0)
        } else {
            format!("{{{}:keys}}", self.namespace)
        }
    }

    /// `{keys}:apikey:<key id>`: the key's record.
    pub fn api_key(&self, id: &str) -> String {
        format!("{}:apikey:{id}", self.keys_tag())
    }

    /// `{keys}:apikeys`: the ids of every key.
    pub fn api_key_index(&self) -> String {
        format!("{}:apikeys", self.keys_tag())
    }

    /// `{tag}:rate:<key id>`: the key's rate limit state, in its own shard
    /// (the limiter's load spreads over a cluster's masters).
    pub fn rate(&self, key_id: &str) -> String {
        format!("{}:rate:{key_id}", self.tag(self.shard_of(key_id)))
    }

    /// False for a postings transaction whose accounts are not all in one
    /// slot (on a cluster): one script cannot apply it.
    pub fn in_one_slot(&self, movement: &Movement) -> bool {
        let Some(postings) = movement.postings() else {
            return true;
        };
        let first = postings.first_from().as_str();
        postings
            .accounts()
            .into_iter()
            .all(|account| self.same_slot(first, account.as_str()))
    }

    /// How `tx` is applied: in one script, or as a saga between slots.
    pub fn needs_saga(&self, tx: &Transaction) -> bool {
        tx.movement
            .credited()
            .is_some_and(|to| !self.same_slot(tx.movement.account().as_str(), to.as_str()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{AccountId, Amount, Movement, TxId};

    #[test]
    fn one_redis_puts_every_key_in_one_slot() {
        let layout = Layout::new("ns", RedisTopology::Single);
        assert_eq!(layout.shards(), 1);
        assert_eq!(layout.account("alice"), "{ns}:acct:alice");
        assert_eq!(layout.tx("t-1"), "{ns}:tx:t-1");
        assert_eq!(layout.seq(0), "{ns}:seq");
        assert_eq!(layout.apply_flag("t-1", "alice"), "{ns}:tx:t-1");
        assert_eq!(layout.api_key("k"), "{ns}:apikey:k");
        assert_eq!(layout.api_key_index(), "{ns}:apikeys");
        assert_eq!(layout.rate("k"), "{ns}:rate:k");
        assert_eq!(layout.tx_pattern("*"), "{ns}:tx:*");
        assert!(layout.same_slot("alice", "bob"));
    }

    #[test]
    fn a_cluster_spreads_accounts_and_keeps_each_one_s_keys_together() {
        let layout = Layout::new("ns", RedisTopology::Cluster);
        assert_eq!(layout.shards(), CLUSTER_SHARDS);
        // FNV-1a: the same shard in every process and every namespace.
        let shard = layout.shard_of("alice");
        assert_eq!(
            shard,
            Layout::new("other", RedisTopology::Cluster).shard_of("alice")
        );
        assert_eq!(
            layout.account("alice"),
            format!("{{ns:{shard}}}:acct:alice")
        );
        assert_eq!(
            layout.history("alice"),
            format!("{{ns:{shard}}}:hist:alice")
        );
        assert_eq!(
            layout.step("alice", "t-1", "debit"),
            format!("{{ns:{shard}}}:step:t-1:debit")
        );
        let shards: std::collections::BTreeSet<u32> = (0..200)
            .map(|i| layout.shard_of(&format!("acct-{i}")))
            .collect();
        assert!(
            shards.len() > 150,
            "accounts spread: {} shards",
            shards.len()
        );
        assert_eq!(layout.api_key("k"), "{ns:keys}:apikey:k");
        assert_eq!(layout.tx_pattern("t-*"), "{ns:*}:tx:t-*");
        // The flag of a one-script apply is the tx record only in its slot.
        let (here, there) =
            ["t-1", "t-2", "t-3", "t-4", "t-5"]
                .iter()
                .fold((None, None), |(here, there), id| {
                    if layout.same_slot(id, "alice") {
                        (Some(*id), there)
                    } else {
                        (here, there.or(Some(*id)))
                    }
                });
        if let Some(id) = here {
            assert_eq!(layout.apply_flag(id, "alice"), layout.tx(id));
        }
        let id = there.expect("some id lands elsewhere");
        assert_eq!(
            layout.apply_flag(id, "alice"),
            layout.step("alice", id, "apply")
        );
        let transfer = |to: &str| crate::domain::Transaction {
            asset: None,
            metadata: Default::default(),
            id: TxId::parse("t").unwrap(),
            movement: Movement::new(
                crate::domain::Kind::Transfer,
                AccountId::parse("alice").unwrap(),
                Some(AccountId::parse(to).unwrap()),
                Amount::new(1).unwrap(),
            )
            .unwrap(),
        };
        let far = (0..)
            .map(|i| format!("b-{i}"))
            .find(|b| !layout.same_slot(b, "alice"))
            .unwrap();
        assert!(layout.needs_saga(&transfer(&far)));
        let near = (0..)
            .map(|i| format!("b-{i}"))
            .find(|b| layout.same_slot(b, "alice"))
            .unwrap();
        assert!(!layout.needs_saga(&transfer(&near)));
        assert_eq!(RedisTopology::Cluster.name(), "cluster");
    }
}
