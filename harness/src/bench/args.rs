//! `harness load`'s flags, checked and turned into a run.

use crate::infra::TopologyArgs;
use crate::load::LoadProfile;
use crate::workload::Transfers;

use super::{run_load, Beside, Generator};

/// Start the embedded stack, drive it with goose, wait for the consumers
/// to drain the topic, check the invariants, measure the bare limits with
/// the same generator, and write a report under reports/.
#[derive(clap::Args)]
pub struct LoadArgs {
    /// Concurrent users.
    #[arg(long, default_value_t = 200)]
    pub users: usize,
    /// Seconds of load, for the engine and for each bare limit.
    #[arg(long, default_value_t = 20)]
    pub seconds: usize,
    /// Accounts the mix spreads over.
    #[arg(long, default_value_t = 1000)]
    pub accounts: usize,
    /// Name of the run in the report file names.
    #[arg(long, default_value = "default")]
    pub scenario: String,
    /// Where reports go.
    #[arg(long, default_value = "reports")]
    pub report_dir: std::path::PathBuf,
    /// The load generator: goose (users, per-second timeline, ledger) or
    /// wrk (lean, for peak capacity).
    #[arg(long, value_enum, default_value = "goose")]
    pub generator: Generator,
    /// Seconds of unmeasured load on the engine before the measured run.
    #[arg(long, default_value_t = 5)]
    pub warmup_seconds: usize,
    /// Skip the bare limits (engine only).
    #[arg(long)]
    pub no_limits: bool,
    #[command(flatten)]
    pub topology: TopologyArgs,
    /// Transfers to any account, or each to a partner account in its
    /// source's slot (goose only): on a cluster, sagas or one script.
    #[arg(long, value_enum, default_value = "as-drawn")]
    pub transfers: Transfers,
    /// Transactions per request: above 1, every request is a POST
    /// /transactions/batch of this many (and the Redis limit applies
    /// this many a call), and the same engine is also measured with
    /// single requests in the same run, side by side.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=txengine::limits::MAX_BATCH_ITEMS as u64))]
    pub batch: u64,
    /// Two-phase (goose, single requests): each user posts a hold and
    /// then its capture, and the same engine is also measured with
    /// plain debits in the same run, side by side.
    #[arg(long)]
    pub holds: bool,
    /// Postings of this many legs (goose): half the transactions are
    /// postings (chains over drawn accounts, on a cluster mostly between
    /// slots, in two phases; with `--transfers within-slot`, between each
    /// account and its partner, one script), half plain transfers, and
    /// the same engine is also measured with plain transfers only in the
    /// same run, side by side.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=txengine::limits::MAX_POSTINGS as i64))]
    pub postings: Option<u32>,
    /// Also drive an engine that writes no history and publishes no
    /// outcome events (its own namespace and topics) with the same load
    /// in the same run: what history and events cost per transaction.
    #[arg(long)]
    pub compare_history_events: bool,
    /// Also drive an engine whose topics are on a Kafka of three
    /// brokers (started beside, the same Redis) with the same load in
    /// the same run: what replication costs per transaction.
    #[arg(long, conflicts_with = "kafka_nodes")]
    pub compare_kafka_nodes: bool,
}

impl LoadArgs {
    /// Checks the flags that go together, then runs `harness load`.
    pub async fn run(self) -> anyhow::Result<()> {
        let generator = self.generator;
        anyhow::ensure!(
            self.transfers == Transfers::AsDrawn || generator == Generator::Goose,
            "--transfers within-slot needs goose (wrk's script draws its own transfers)"
        );
        anyhow::ensure!(
            !self.holds || (generator == Generator::Goose && self.batch == 1),
            "--holds needs goose and single requests (a capture follows its hold's answer)"
        );
        let topology = self.topology.redis_topology;
        anyhow::ensure!(
            self.postings.is_none() || (generator == Generator::Goose && !self.holds),
            "--postings needs goose (wrk's script draws its own kinds), and not --holds"
        );
        // The shard of a name does not depend on the namespace.
        let layout = txengine::store::Layout::new("", topology);
        let profile = LoadProfile {
            users: self.users,
            seconds: self.seconds,
            accounts: self.accounts,
            partners: (self.transfers == Transfers::WithinSlot)
                .then(|| crate::workload::partners(&layout, self.accounts)),
            batch: self.batch as usize,
            holds: self.holds,
            mix: match self.postings {
                Some(legs) => crate::workload::Mix::postings_beside_transfers(legs),
                None => crate::workload::Mix::LOAD,
            },
            ..LoadProfile::default()
        };
        let beside = Beside {
            limits: !self.no_limits,
            history_events_off: self.compare_history_events,
            three_kafka_nodes: self.compare_kafka_nodes,
        };
        run_load(
            profile,
            &self.scenario,
            &self.report_dir,
            beside,
            self.warmup_seconds,
            generator,
            topology,
            self.topology.kafka_nodes,
        )
        .await
    }
}
