//! The Lua scripts, compiled in from `lua/` so the binary is self-contained
//! and loaded into Redis (SCRIPT LOAD) when the store starts and after a
//! NOSCRIPT answer. What several scripts share is one file put before each
//! (`money.lua` before the four that move money; `clock.lua` before the
//! ones that claim or count; `claim.lua` and `rate_limit.lua`, functions,
//! before the ones that run them for many requests).

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
    pub rate_limit_then_claim: Script,
}

impl Scripts {
    pub(super) fn new() -> Self {
        Self {
            apply: Script::new(concat!(
                include_str!("../../../lua/money.lua"),
                include_str!("../../../lua/atomic_update.lua")
            )),
            claim: Script::new(concat!(
                include_str!("../../../lua/clock.lua"),
                include_str!("../../../lua/claim.lua"),
                "\nreturn claim(KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4], clock_us())\n"
            )),
            claim_batch: Script::new(concat!(
                include_str!("../../../lua/clock.lua"),
                include_str!("../../../lua/claim.lua"),
                include_str!("../../../lua/claim_batch.lua")
            )),
            release: Script::new(include_str!("../../../lua/release.lua")),
            accept: Script::new(concat!(
                include_str!("../../../lua/accept.lua"),
                "\nreturn accept(KEYS[1], ARGV[1], ARGV[2])\n"
            )),
            accept_batch: Script::new(concat!(
                include_str!("../../../lua/accept.lua"),
                include_str!("../../../lua/accept_batch.lua")
            )),
            saga_step: Script::new(concat!(
                include_str!("../../../lua/money.lua"),
                include_str!("../../../lua/saga_step.lua")
            )),
            hold: Script::new(concat!(
                include_str!("../../../lua/money.lua"),
                include_str!("../../../lua/clock.lua"),
                include_str!("../../../lua/hold.lua")
            )),
            finish: Script::new(include_str!("../../../lua/finish.lua")),
            set_balance: Script::new(concat!(
                include_str!("../../../lua/money.lua"),
                include_str!("../../../lua/set_balance.lua")
            )),
            rate_limit: Script::new(concat!(
                include_str!("../../../lua/clock.lua"),
                include_str!("../../../lua/rate_limit.lua"),
                "\nreturn rate_limit(KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), clock_us())\n"
            )),
            rate_limit_then_claim: Script::new(concat!(
                include_str!("../../../lua/clock.lua"),
                include_str!("../../../lua/rate_limit.lua"),
                include_str!("../../../lua/claim.lua"),
                include_str!("../../../lua/rate_limit_then_claim.lua")
            )),
        }
    }

    /// Every script, for SCRIPT LOAD.
    pub(super) fn all(&self) -> [&Script; 12] {
        self.named().map(|(_, script)| script)
    }

    /// Every script with its name (the name of its file in `lua/`, the
    /// apply script's `atomic_update`), for reports of what each costs.
    pub(super) fn named(&self) -> [(&'static str, &Script); 12] {
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
            rate_limit_then_claim,
        } = self;
        [
            ("atomic_update", apply),
            ("claim", claim),
            ("claim_batch", claim_batch),
            ("release", release),
            ("accept", accept),
            ("accept_batch", accept_batch),
            ("saga_step", saga_step),
            ("hold", hold),
            ("finish", finish),
            ("set_balance", set_balance),
            ("rate_limit", rate_limit),
            ("rate_limit_then_claim", rate_limit_then_claim),
        ]
    }
}
