//! The scenario file (TOML): accounts, mix, load, faults and expectations,
//! validated on load with errors that name the field.

use std::path::Path;

use anyhow::{bail, Context};
use rand::SeedableRng;
use serde::Deserialize;
use txengine::limits::MAX_MINOR_UNITS;

use crate::workload::{Kind, Mix, SentTx};

/// One scenario file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    /// What it proves, for the scenario table of docs/faults.md.
    pub description: String,
    /// Runs on a Redis Cluster only (its faults need one).
    #[serde(default)]
    pub cluster_only: bool,
    /// Runs on a Kafka of three brokers only (its faults need one).
    #[serde(default)]
    pub kafka_cluster_only: bool,
    pub accounts: Accounts,
    pub mix: Mix,
    pub load: Load,
    #[serde(default)]
    pub faults: Vec<Fault>,
    #[serde(default)]
    pub expect: Expect,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Accounts {
    pub count: usize,
    /// Starting balance of each account, minor units.
    pub balance: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Load {
    /// Clients sending at once.
    pub concurrency: usize,
    /// Transactions in all.
    pub count: usize,
    /// Consumer processes in the group at the start.
    #[serde(default = "one")]
    pub consumers: usize,
    /// Partitions of the topic.
    #[serde(default = "four")]
    pub partitions: i32,
    /// Pause of each client between two transactions (ms), to spread the
    /// load over the faults.
    #[serde(default)]
    pub pause_ms: u64,
    /// The clients' API key's rate limit (requests per second); far above
    /// the load when absent.
    pub rate_per_s: Option<u64>,
    /// The clients' key's burst; `rate_per_s` when absent.
    pub burst: Option<u64>,
}

fn one() -> usize {
    1
}

fn four() -> i32 {
    4
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fault {
    /// Fires once this share (0..=100 %) of the transactions has been sent.
    pub at_percent: u32,
    pub kind: FaultKind,
    /// Records to publish (`poison`), slots to move (`reshard`), or brokers
    /// to lose (`lose_kafka_brokers`).
    pub count: Option<usize>,
    /// How long the fault lasts (`stall_kafka_broker`, and
    /// `lose_kafka_brokers`: then the lost brokers are started again).
    pub for_ms: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    /// kill -9 of one consumer process, and a new one in its place.
    KillConsumer,
    /// kill -9 of the API process, and a new one on the same port.
    RestartApi,
    /// kill -9 of Redis and a restart on its AOF.
    RestartRedis,
    /// kill -9 of the Kafka broker and a restart on its log dir.
    RestartKafka,
    /// One more consumer joins the group (rebalance).
    AddConsumer,
    /// One consumer leaves the group gracefully (rebalance).
    RemoveConsumer,
    /// `count` undecodable records published into the topic.
    Poison,
    /// On a Redis Cluster only: kill -9 of a master, never restarted (a
    /// machine lost); its replica takes over and the other replica follows
    /// it, so the ledger goes on. The node is started again, as a replica,
    /// once the scenario is judged.
    LoseRedisMaster,
    /// On a Redis Cluster only: `count` slots (default 2000) move, keys
    /// and all, from one master to another while the load goes on.
    Reshard,
    /// kill -9 of `count` Kafka brokers (default 1), the one that leads the
    /// most partitions first; started again after `for_ms`, or once the
    /// scenario is judged.
    LoseKafkaBrokers,
    /// SIGSTOP of the Kafka broker that leads the most partitions for
    /// `for_ms`, then SIGCONT: a broker that hangs without closing a
    /// connection.
    StallKafkaBroker,
    /// Each Kafka broker in turn stopped (SIGTERM) and started again, the
    /// next once every replica is back in sync.
    RollingRestartKafka,
    /// The admin revokes the clients' API key: from then on (give or take
    /// the API's key cache, at most 1 s) every request is refused with 401.
    RevokeKey,
}

/// Checks beyond the invariants, each optional.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    pub applied: Option<usize>,
    pub rejected: Option<usize>,
    /// Records in the DLQ topic.
    pub dlq: Option<usize>,
    /// POST every accepted transaction again (same id, same body): no money moves.
    #[serde(default)]
    pub duplicate_posts: bool,
    /// Re-consume the whole topic from offset 0 in a new group: no money moves.
    #[serde(default)]
    pub replay_topic: bool,
    /// At least this many requests refused with 401 (a revoked key).
    pub min_unauthorized: Option<usize>,
    /// At least this many requests refused with 429 (over the key's rate).
    pub min_rate_limited: Option<usize>,
    /// While a fault left fewer brokers up than a write needs in sync, no
    /// request sent after it took hold got a 202 before it was lifted, and
    /// at least one was refused with 503.
    #[serde(default)]
    pub none_accepted_without_quorum: bool,
    /// The topic holds each accepted transaction once and nothing for a
    /// refused request, by id (saga steps aside: the saga invariants count
    /// them); for runs without faults that can publish a record twice.
    #[serde(default)]
    pub topic_holds_accepted: bool,
}

impl Scenario {
    /// Reads and validates a scenario file; errors name the file and field.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("scenario file {}", path.display()))
    }

    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let scenario: Scenario = toml::from_str(text)?;
        scenario.validate()?;
        Ok(scenario)
    }

    fn validate(&self) -> anyhow::Result<()> {
        let m = &self.mix;
        m.validate().map_err(|e| anyhow::anyhow!("mix: {e}"))?;
        if self.accounts.count == 0
            || ((m.transfer > 0 || m.postings > 0) && self.accounts.count < 2)
        {
            bail!("accounts.count: need at least 1 account, and 2 for transfers or postings");
        }
        if self.accounts.balance > MAX_MINOR_UNITS {
            bail!("accounts.balance: must be at most 2^53-1");
        }
        if self.load.burst.is_some() && self.load.rate_per_s.is_none() {
            bail!("load.burst: needs load.rate_per_s");
        }
        if self.load.concurrency == 0
            || self.load.count == 0
            || self.load.consumers == 0
            || self.load.partitions < 1
        {
            bail!("load: concurrency, count, consumers and partitions must be at least 1");
        }
        for (i, f) in self.faults.iter().enumerate() {
            if f.at_percent > 100 {
                bail!(
                    "faults[{i}].at_percent: must be 0..=100, got {}",
                    f.at_percent
                );
            }
            match (f.kind, f.count) {
                (FaultKind::Poison, None) => bail!("faults[{i}].count: poison needs a count"),
                (FaultKind::LoseKafkaBrokers, Some(0)) => {
                    bail!("faults[{i}].count: lose at least 1 broker")
                }
                (
                    FaultKind::Poison | FaultKind::Reshard | FaultKind::LoseKafkaBrokers,
                    Some(_),
                )
                | (_, None) => {}
                (kind, Some(_)) => bail!(
                    "faults[{i}].count: only poison, reshard and lose_kafka_brokers take a count, not {kind:?}"
                ),
            }
            match (f.kind, f.for_ms) {
                (FaultKind::StallKafkaBroker, None) => {
                    bail!("faults[{i}].for_ms: stall_kafka_broker needs a duration")
                }
                (FaultKind::StallKafkaBroker | FaultKind::LoseKafkaBrokers, _) | (_, None) => {}
                (kind, Some(_)) => bail!(
                    "faults[{i}].for_ms: only stall_kafka_broker and lose_kafka_brokers last, not {kind:?}"
                ),
            }
        }
        Ok(())
    }

    /// The `i`-th transaction of the run: a pure function of the seed and `i`.
    pub(super) fn transaction(&self, run: &str, i: usize) -> SentTx {
        let mut rng = rand::rngs::StdRng::seed_from_u64(i as u64 ^ 0x5eed);
        self.mix
            .draw(format!("{run}-{i}"), self.accounts.count, &mut rng)
    }

    /// What follows the `i`-th transaction once it was accepted, when it is
    /// a hold: its capture, its void, or nothing (a pure function of `i`).
    pub(super) fn end_of_hold(&self, hold: &SentTx, i: usize) -> Option<SentTx> {
        if !matches!(hold.kind, Kind::Hold { .. }) {
            return None;
        }
        let mut rng = rand::rngs::StdRng::seed_from_u64(i as u64 ^ 0xe4d);
        Mix::end_of(hold, &mut rng)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = r#"
name = "t"
description = "d"
[accounts]
count = 2
balance = 100
[mix]
transfer = 100
amount_min = 1
amount_max = 10
[load]
concurrency = 2
count = 10
[[faults]]
at_percent = 50
kind = "kill_consumer"
[[faults]]
at_percent = 60
kind = "poison"
count = 3
"#;

    #[test]
    fn a_valid_file_parses() {
        let s = Scenario::parse(VALID).unwrap();
        assert_eq!(s.faults.len(), 2);
        assert_eq!(
            (s.faults[1].kind, s.faults[1].count),
            (FaultKind::Poison, Some(3))
        );
        assert_eq!(s.load.consumers, 1);
    }

    fn error_of(text: &str) -> String {
        format!("{:#}", Scenario::parse(text).unwrap_err())
    }

    #[test]
    fn bad_files_get_errors_naming_the_field() {
        assert!(error_of(&VALID.replace("count = 10", "count = \"ten\"")).contains("count"));
        assert!(
            error_of(&VALID.replace("balance = 100", "balance = 100\nlimit = 3")).contains("limit")
        );
        assert!(error_of(&VALID.replace("transfer = 100", "transfer = 90")).contains("mix"));
        assert!(error_of(&VALID.replace("amount_min = 1", "amount_min = 0")).contains("amount_min"));
        assert!(
            error_of(&VALID.replace("kind = \"kill_consumer\"", "kind = \"explode\""))
                .contains("explode")
        );
        assert!(
            error_of(&VALID.replace("at_percent = 50", "at_percent = 150"))
                .contains("faults[0].at_percent")
        );
        assert!(error_of(&VALID.replace("count = 3\n", "")).contains("faults[1].count"));
        let burst_alone = VALID.replace("concurrency = 2", "concurrency = 2\nburst = 5");
        assert!(error_of(&burst_alone).contains("load.burst"));
        assert!(
            error_of(&VALID.replace("[load]\nconcurrency = 2\n", "[load]\n"))
                .contains("concurrency")
        );
        assert!(error_of(&VALID.replace("count = 2\n", "count = 1\n")).contains("accounts.count"));
        let stall = VALID.replace("kind = \"kill_consumer\"", "kind = \"stall_kafka_broker\"");
        assert!(error_of(&stall).contains("faults[0].for_ms"));
        assert!(Scenario::parse(
            &stall.replace("at_percent = 50\n", "at_percent = 50\nfor_ms = 8000\n")
        )
        .is_ok());
        let lasting = VALID.replace("at_percent = 50\n", "at_percent = 50\nfor_ms = 8000\n");
        assert!(error_of(&lasting).contains("faults[0].for_ms"));
        let lose = VALID.replace(
            "kind = \"kill_consumer\"",
            "kind = \"lose_kafka_brokers\"\ncount = 0",
        );
        assert!(error_of(&lose).contains("faults[0].count"));
        assert!(Scenario::parse(&lose.replace("count = 0", "count = 2")).is_ok());
    }

    #[test]
    fn transactions_are_a_pure_function_of_the_index() {
        let s = Scenario::parse(VALID).unwrap();
        let a = s.transaction("run", 7);
        let b = s.transaction("run", 7);
        assert_eq!(
            (a.id, a.account, a.to, a.amount),
            (b.id, b.account, b.to, b.amount)
        );
    }
}
