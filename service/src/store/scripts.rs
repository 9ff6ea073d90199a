//! The Lua scripts, compiled in from `lua/` so the binary is self-contained
//! and loaded into Redis (SCRIPT LOAD) when the store starts and after a
//! NOSCRIPT answer. What several scripts share is one file put before each
//! (`money.lua` before the ones that read or write accounts; `clock.lua` before the
//! ones that claim or count; `claim.lua` and `rate_limit.lua`, functions,
//! before the ones that run them for many requests). The ones that apply
//! records (`atomic_update.lua`, `saga_step.lua`, `hold.lua`, `postings.lua`,
//! `posting_step.lua`) are functions
//! of one script, `apply_many.lua`, which runs a slot's records in order.

use redis::Script;

/// Every script the store runs. Built in one place ([`Scripts::new`]) and
/// listed in one ([`Scripts::named`]): both name every field, so a script
/// added here cannot be left out of either.
pub(super) struct Scripts {
    pub apply_many: Script,
    pub claim: Script,
    pub claim_batch: Script,
    pub release: Script,
    pub accept: Script,
    pub accept_batch: Script,
    pub finish: Script,
    pub set_balance: Script,
    pub rate_limit: Script,
    pub migrate_account: Script,
    pub put_account: Script,
}

/// A script of `lua/` that applies records, `$name` (its file's name), as
/// a function of that name: `apply_many.lua` calls it.
macro_rules! apply_function {
    ($name:literal) => {
        concat!(
            "\nlocal function ",
            $name,
            "()\n",
            include_str!(concat!("../../../lua/", $name, ".lua")),
            "\nend\n"
        )
    };
}

/// Each script's name (the name of its file in `lua/`) and its source as Redis runs it, in [`Scripts`]' order.
pub(super) const SOURCES: [(&str, &str); 11] = [
    (
        "apply_many",
        concat!(
            include_str!("../../../lua/money.lua"),
            include_str!("../../../lua/clock.lua"),
            apply_function!("atomic_update"),
            apply_function!("saga_step"),
            apply_function!("hold"),
            apply_function!("postings"),
            apply_function!("posting_step"),
            include_str!("../../../lua/apply_many.lua")
        ),
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
        let [apply_many, claim, claim_batch, release, accept, accept_batch, finish, set_balance, rate_limit, migrate_account, put_account] =
            SOURCES.map(|(_, source)| Script::new(source));
        Self {
            apply_many,
            claim,
            claim_batch,
            release,
            accept,
            accept_batch,
            finish,
            set_balance,
            rate_limit,
            migrate_account,
            put_account,
        }
    }

    /// Every script, for SCRIPT LOAD.
    pub(super) fn all(&self) -> [&Script; 11] {
        self.named().map(|(_, script)| script)
    }

    /// Every script with its name, in [`SOURCES`]' order.
    pub(super) fn named(&self) -> [(&'static str, &Script); 11] {
        let Self {
            apply_many,
            claim,
            claim_batch,
            release,
            accept,
            accept_batch,
            finish,
            set_balance,
            rate_limit,
            migrate_account,
            put_account,
        } = self;
        let scripts = [
            apply_many,
            claim,
            claim_batch,
            release,
            accept,
            accept_batch,
            finish,
            set_balance,
            rate_limit,
            migrate_account,
            put_account,
        ];
        std::array::from_fn(|i| (SOURCES[i].0, scripts[i]))
    }
}
