//! End-to-end tests of the engine against real Redis and real Kafka.
//!
//! One test binary, so Kafka and Redis start once ([`Infra::shared`]); each
//! test gets its own engine with its own topics, group and key namespace.

mod api;
mod apply;
mod contract;
mod differential;
mod limits;
mod observability;
mod pipeline;

use std::sync::Once;

use harness::infra::Infra;

/// The shared infra, plus test logging (RUST_LOG) set up once.
pub fn infra() -> &'static Infra {
    static LOGGING: Once = Once::new();
    LOGGING.call_once(|| {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    });
    Infra::shared()
}
