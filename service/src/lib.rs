#![warn(unreachable_pub)]
//! # txengine
//!
//! An atomic transaction engine: clients POST money movements over HTTP, the
//! API publishes each to Kafka and answers 202 once the broker has it, and
//! consumers apply them to Redis balances with one Lua script that checks the
//! balance, moves the money and records the outcome atomically.
//!
//! # Layout
//! - [`limits`]: every named limit (a leaf: it imports nothing of the crate).
//! - [`domain`]: ids, amounts, movements, outcomes. Knows no I/O crate.
//! - [`metadata`]: the flat object of strings a transaction may carry.
//! - [`keys`]: API keys: secrets and their hashes, account scopes, rate
//!   limits, the short-lived cache of keys.
//! - [`wire`]: the versioned Kafka record (one encode, one decode).
//! - [`events`]: the versioned event of the outcomes topic.
//! - [`store`]: Redis keys and the Lua scripts of `lua/`.
//! - [`admission`]: the one path of every money request, a single one being
//!   a batch of one: completed, scope, backlog bound, rate limit with the
//!   claim, publish, accept; the id binding rules.
//! - [`backlog`]: how far the consumers are behind, the bound the API sheds at.
//! - [`gather`]: the claims and accepts of concurrent requests, gathered into
//!   one script call.
//! - [`publisher`]: the idempotent Kafka producer with a bounded queue.
//! - [`topics`]: topic creation, and the retention rule every topic must keep.
//! - [`consumer`]: the consumer group loop: batch, apply, store offsets, DLQ.
//! - [`expirer`]: finds holds past their deadline and publishes their expiry.
//! - [`http`]: the axum routes (one module per concern) and problem+json errors.
//! - [`server`]: the hyper serve loop with the connection limits.
//! - [`config`]: flags and `TXENGINE_*` variables.
//! - [`app`]: wiring, start and graceful stop.

pub mod admission;
pub mod app;
pub mod backlog;
pub mod config;
pub mod consumer;
pub mod domain;
pub mod events;
mod expirer;
mod gather;
pub mod http;
pub mod keys;
pub mod limits;
mod metadata;
pub mod publisher;
pub mod server;
pub mod store;
pub mod topics;
pub mod wire;

pub use app::Engine;
pub use config::{Config, Role};

#[cfg(test)]
mod tests {
    /// The modules `source` declares (`mod NAME;` or `pub mod NAME;` lines)
    /// that its `//!` doc does not name as "[`NAME`]".
    fn modules_missing_from_doc(source: &str) -> Vec<&str> {
        let doc: Vec<&str> = source
            .lines()
            .filter(|line| line.starts_with("//!"))
            .collect();
        source
            .lines()
            .filter_map(|line| {
                let line = line.trim();
                let line = line.strip_prefix("pub ").unwrap_or(line);
                line.strip_prefix("mod ")?.strip_suffix(';')
            })
            .filter(|name| {
                let link = format!("[`{name}`]");
                !doc.iter().any(|line| line.contains(link.as_str()))
            })
            .collect()
    }

    /// Each file that lists its modules in its `//!` doc lists all of them.
    #[test]
    fn every_module_is_in_the_layout_doc() {
        for (file, source) in [
            ("lib.rs", include_str!("lib.rs")),
            ("admission/mod.rs", include_str!("admission/mod.rs")),
            ("http/mod.rs", include_str!("http/mod.rs")),
            ("store/mod.rs", include_str!("store/mod.rs")),
        ] {
            let missing = modules_missing_from_doc(source);
            assert!(
                missing.is_empty(),
                "modules missing from the `//!` doc of {file}: {missing:?}"
            );
        }
    }
}
