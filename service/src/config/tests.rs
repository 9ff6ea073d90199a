//! The configuration's own tests: every flag round-trips, nonsense is
//! refused naming the flag, secrets are never printed.

use super::*;

/// A config with every field away from its default.
fn unusual() -> Config {
    Config::parse_from([
        "txengine",
        "consumer",
        "--listen=127.0.0.2:81",
        "--metrics-listen=127.0.0.3:82",
        "--redis-url=redis://r:1",
        "--redis-topology=cluster",
        "--kafka-brokers=k:2",
        "--topic=t",
        "--dlq-topic=d",
        "--partitions=3",
        "--topic-replication-factor=3",
        "--topic-min-insync-replicas=2",
        "--group=g",
        "--namespace=n",
        "--default-asset=EUR/2",
        "--admin-token-file=/tmp/token",
        "--outcome-ttl-secs=99",
        "--lease-ms=98",
        "--max-in-flight=97",
        "--publish-timeout-ms=96",
        "--linger-ms=95",
        "--batch-size=94",
        "--redis-timeout-ms=93",
        "--redis-wait-replicas=2",
        "--redis-accept-failover-loss",
        "--retry-after-secs=92",
        "--max-connections=91",
        "--header-read-timeout-ms=90",
        "--body-read-timeout-ms=89",
        "--rate-limit=off",
        "--key-cache-ms=88",
        "--hold-timeout-s=7",
        "--max-hold-timeout-s=49",
        "--expire-scan-ms=77",
    ])
}

#[test]
fn to_args_round_trips_every_field() {
    let config = unusual();
    let args = config.to_args();
    let parsed = Config::parse_from(std::iter::once("txengine".to_owned()).chain(args));
    assert_eq!(parsed, config);
    // And every flag differs from the default, so none can be dropped unseen.
    let defaults = Config::defaults();
    assert_ne!(config.retry_after_secs, defaults.retry_after_secs);
    assert_ne!(config.metrics_listen, defaults.metrics_listen);
    assert_ne!(config.redis_timeout_ms, defaults.redis_timeout_ms);
}

#[test]
fn to_args_leaves_the_admin_token_out() {
    let mut config = Config::defaults();
    config.admin_token = Some(Secret::new("s3cr3t-token"));
    assert!(!config.to_args().iter().any(|a| a.contains("s3cr3t")));
}

#[test]
fn admin_token_is_not_printed_by_debug() {
    let config = Config::parse_from(["txengine", "--admin-token=s3cr3t-token"]);
    assert_eq!(
        config.admin_token().unwrap().unwrap().expose(),
        "s3cr3t-token"
    );
    let printed = format!("{config:?}");
    assert!(!printed.contains("s3cr3t"), "{printed}");
    assert!(printed.contains("redacted"), "{printed}");
}

#[test]
fn redis_passwords_are_not_printed() {
    assert_eq!(
        redacted_url("redis://:hunter2@r:6379/0,redis://app:pw@q:1"),
        "redis://:***@r:6379/0,redis://app:***@q:1"
    );
    assert_eq!(redacted_url("redis://r:6379"), "redis://r:6379");
    assert_eq!(redacted_url("rediss://u@r"), "rediss://u:***@r");
    assert_eq!(redacted_url("redis://:a/b@r:1"), "redis://:***@r:1");
    assert_eq!(
        redacted_url("redis+unix:///run/redis.sock?db=1&pass=hunter2"),
        "redis+unix:///run/redis.sock?db=1&pass=***"
    );
}

#[test]
fn defaults_are_valid() {
    assert_eq!(Config::defaults().validate(), Ok(()));
    assert_eq!(unusual().validate(), Ok(()));
}

#[test]
fn nonsense_is_refused_naming_the_flag() {
    for flag in [
        "--partitions",
        "--outcome-ttl-secs",
        "--lease-ms",
        "--max-in-flight",
        "--publish-timeout-ms",
        "--batch-size",
        "--redis-timeout-ms",
        "--max-connections",
        "--header-read-timeout-ms",
        "--body-read-timeout-ms",
        "--hold-timeout-s",
        "--max-hold-timeout-s",
        "--expire-scan-ms",
    ] {
        let config = Config::parse_from(["txengine", &format!("{flag}=0")]);
        let error = config.validate().unwrap_err();
        assert_eq!(error, ConfigError::Zero(flag));
        assert!(error.to_string().starts_with(flag), "{error}");
    }
    for flag in ["--topic", "--dlq-topic", "--group", "--namespace"] {
        let config = Config::parse_from(["txengine", &format!("{flag}=")]);
        assert_eq!(config.validate(), Err(ConfigError::Empty(flag)));
    }
    let same = Config::parse_from(["txengine", "--topic=x", "--dlq-topic=x"]);
    assert_eq!(same.validate(), Err(ConfigError::SameTopics));
    let short = Config::parse_from([
        "txengine",
        "--outcome-ttl-secs=5",
        "--publish-timeout-ms=5000",
    ]);
    assert!(matches!(
        short.validate(),
        Err(ConfigError::OutcomeTtlTooShort { .. })
    ));
    let long_enough = Config::parse_from([
        "txengine",
        "--outcome-ttl-secs=6",
        "--publish-timeout-ms=5000",
        "--max-hold-timeout-s=3",
    ]);
    assert_eq!(long_enough.validate(), Ok(()));
    // A hold must end while its records and flags exist.
    let holds = |max: &str| {
        Config::parse_from([
            "txengine",
            "--outcome-ttl-secs=100",
            &format!("--max-hold-timeout-s={max}"),
        ])
        .validate()
    };
    assert_eq!(holds("50"), Ok(()));
    assert_eq!(
        holds("51"),
        Err(ConfigError::HoldOutlivesOutcomes {
            max_hold_timeout_s: 51,
            outcome_ttl_secs: 100
        })
    );
    let cluster = |extra: &[&str]| {
        Config::parse_from(["txengine", "--redis-topology=cluster"].iter().chain(extra))
    };
    assert_eq!(cluster(&[]).wait_replicas(), 1);
    assert_eq!(Config::defaults().wait_replicas(), 0);
    assert_eq!(cluster(&[]).validate(), Ok(()));
    assert_eq!(
        cluster(&["--redis-wait-replicas=0"]).validate(),
        Err(ConfigError::ClusterWithoutWait)
    );
    assert_eq!(
        cluster(&["--redis-wait-replicas=0", "--redis-accept-failover-loss"]).validate(),
        Ok(())
    );
    for (factor, min_insync) in [("0", "1"), ("1", "0"), ("1", "2")] {
        let config = Config::parse_from([
            "txengine".to_owned(),
            format!("--topic-replication-factor={factor}"),
            format!("--topic-min-insync-replicas={min_insync}"),
        ]);
        assert!(
            matches!(config.validate(), Err(ConfigError::Replication { .. })),
            "{factor} {min_insync}"
        );
    }
    let cache =
        |ms: u64| Config::parse_from(["txengine".to_owned(), format!("--key-cache-ms={ms}")]);
    assert_eq!(cache(MAX_KEY_CACHE_MS).validate(), Ok(()));
    assert_eq!(
        cache(MAX_KEY_CACHE_MS + 1).validate(),
        Err(ConfigError::KeyCacheTooLong(MAX_KEY_CACHE_MS + 1))
    );
}
