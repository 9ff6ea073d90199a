//! The Lua scripts, compiled in from `lua/` so the binary is self-contained
//! and loaded into Redis (SCRIPT LOAD) when the store starts and after a
//! NOSCRIPT answer. What several scripts share is one file put before each
//! (`money.lua` before the ones that read or write accounts; `clock.lua` before the
//! ones that claim or count; `claim.lua` and `rate_limit.lua`, functions,
//! before the ones that run them for many requests). The three that apply
//! records (`atomic_update.lua`, `saga_step.lua`, `hold.lua`) run as the
//! body of `in_order.lua`, which keeps a pipeline of them in order.

use redis::Script;

/// Every script the store runs. Built in one place ([`Scripts::new`]) and
/// listed in one ([`Scripts::named`]): both name every field, so a script
/// added here cannot be left out of either.
pub(super) struct Scripts {
    pub apply: Script,
    pub claim: Script,
    pub claim_batch: Script,
    pub release: Script,
    pub accept: Script,
    pub accept_batch: Script,
    pub saga_step: Script,
    pub hold: Script,
    pub finish: Script,
    pub set_balance: Script,
    pub rate_limit: Script,
    pub migrate_account: Script,
    pub put_account: Script,
}

/// A script of `lua/` that applies records (`$body`, its file name), as the
/// store runs it: `money.lua` and a `$prelude` if given, then the script as
/// the body of `run`, then `in_order.lua`, which calls it.
macro_rules! in_order {
    ($body:literal) => {
        in_order!("", $body)
    };
    ($prelude:expr, $body:literal) => {
        concat!(
            include_str!("../../../lua/money.lua"),
            $prelude,
            "\nlocal function run()\n",
            include_str!(concat!("../../../lua/", $body)),
            "\nend\n",
            include_str!("../../../lua/in_order.lua")
        )
    };
}

/// Each script's name (the name of its file in `lua/`, the apply script's
/// `atomic_update`) and its source as Redis runs it, in [`Scripts`]' order.
pub(super) const SOURCES: [(&str, &str); 13] = [
    (
        "atomic_update",
        in_order!("atomic_update.lua"),
    ),
    (
        "claim",
        concat!(
            include_str!("../../../lua/clock.lua"),
            include_str!("../../../lua/claim.lua"),
            "\nreturn claim(KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4], clock_us())\n"
        ),
    ),
    (
        "claim_batch",
        concat!(
            include_str!("../../../lua/clock.lua"),
            include_str!("../../../lua/rate_limit.lua"),
            include_str!("../../../lua/claim.lua"),
            include_str!("../../../lua/claim_batch.lua")
        ),
    ),
    ("release", include_str!("../../../lua/release.lua")),
    (
        "accept",
        concat!(
            include_str!("../../../lua/accept.lua"),
            "\nreturn accept(KEYS[1], ARGV[1], ARGV[2])\n"
        ),
    ),
    (
        "accept_batch",
        concat!(
            include_str!("../../../lua/accept.lua"),
            include_str!("../../../lua/accept_batch.lua")
        ),
    ),
    (
        "saga_step",
        in_order!("saga_step.lua"),
    ),
    (
        "hold",
        in_order!(include_str!("../../../lua/clock.lua"), "hold.lua"),
    ),
    ("finish", include_str!("../../../lua/finish.lua")),
    (
        "set_balance",
        concat!(
            include_str!("../../../lua/money.lua"),
            include_str!("../../../lua/set_balance.lua")
        ),
    ),
    (
        "rate_limit",
        concat!(
            include_str!("../../../lua/clock.lua"),
            include_str!("../../../lua/rate_limit.lua"),
            "\nreturn rate_limit(KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), clock_us())\n"
        ),
    ),
    (
        "migrate_account",
        include_str!("../../../lua/migrate_account.lua"),
    ),
    (
        "put_account",
        concat!(
            include_str!("../../../lua/money.lua"),
            include_str!("../../../lua/put_account.lua")
        ),
    ),
];

impl Scripts {
    pub(super) fn new() -> Self {
        let [apply, claim, claim_batch, release, accept, accept_batch, saga_step, hold, finish, set_balance, rate_limit, migrate_account, put_account] =
            SOURCES.map(|(_, source)| Script::new(source));
        Self {
            apply,
            claim,
            claim_batch,
            release,
            accept,
            accept_batch,
            saga_step,
            hold,
            finish,
            set_balance,
            rate_limit,
            migrate_account,
            put_account,
        }
    }

    /// Every script, for SCRIPT LOAD.
    pub(super) fn all(&self) -> [&Script; 13] {
        self.named().map(|(_, script)| script)
    }

    /// Every script with its name, in [`SOURCES`]' order.
    pub(super) fn named(&self) -> [(&'static str, &Script); 13] {
        let Self {
            apply,
            claim,
            claim_batch,
            release,
            accept,
            accept_batch,
            saga_step,
            hold,
            finish,
            set_balance,
            rate_limit,
            migrate_account,
            put_account,
        } = self;
        let scripts = [
            apply,
            claim,
            claim_batch,
            release,
            accept,
            accept_batch,
            saga_step,
            hold,
            finish,
            set_balance,
            rate_limit,
            migrate_account,
            put_account,
        ];
        std::array::from_fn(|i| (SOURCES[i].0, scripts[i]))
    }
}
