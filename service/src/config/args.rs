//! A configuration as the command line that makes `txengine` run it (for
//! child processes).

use clap::ValueEnum;

use super::Config;

impl Config {
    /// The command-line arguments that make `txengine` run this config (for
    /// child processes). Every field is named here, so a new one cannot be
    /// forgotten; the admin token is left out: pass it in the environment
    /// (`TXENGINE_ADMIN_TOKEN`), where `ps` does not show it. Kept whole
    /// for that: one destructuring names every field.
    pub fn to_args(&self) -> Vec<String> {
        let Self {
            role,
            listen,
            metrics_listen,
            redis_url,
            redis_topology,
            kafka_brokers,
            topic,
            dlq_topic,
            outcomes_topic,
            outcome_events,
            partitions,
            topic_replication_factor,
            topic_min_insync_replicas,
            group,
            namespace,
            default_asset,
            admin_token: _,
            admin_token_file,
            outcome_ttl_secs,
            history_retention_secs,
            lease_ms,
            max_in_flight,
            max_backlog_records,
            publish_timeout_ms,
            linger_ms,
            batch_size,
            redis_timeout_ms,
            redis_wait_replicas,
            redis_accept_failover_loss,
            retry_after_secs,
            max_connections,
            header_read_timeout_ms,
            body_read_timeout_ms,
            rate_limit,
            key_cache_ms,
            hold_timeout_s,
            max_hold_timeout_s,
            expire_scan_ms,
        } = self;
        let role = value_name(*role);
        let optional = [
            ("--metrics-listen", metrics_listen.map(|a| a.to_string())),
            (
                "--redis-wait-replicas",
                redis_wait_replicas.map(|n| n.to_string()),
            ),
            (
                "--admin-token-file",
                admin_token_file.as_ref().map(|p| p.display().to_string()),
            ),
            (
                "--history-retention-secs",
                history_retention_secs.map(|s| s.to_string()),
            ),
        ];
        let pairs = [
            ("--listen", listen.to_string()),
            ("--redis-url", redis_url.clone()),
            ("--redis-topology", value_name(*redis_topology)),
            ("--kafka-brokers", kafka_brokers.clone()),
            ("--topic", topic.clone()),
            ("--dlq-topic", dlq_topic.clone()),
            ("--outcomes-topic", outcomes_topic.clone()),
            ("--outcome-events", outcome_events.to_string()),
            ("--partitions", partitions.to_string()),
            (
                "--topic-replication-factor",
                topic_replication_factor.to_string(),
            ),
            (
                "--topic-min-insync-replicas",
                topic_min_insync_replicas.to_string(),
            ),
            ("--group", group.clone()),
            ("--namespace", namespace.clone()),
            ("--default-asset", default_asset.to_string()),
            ("--outcome-ttl-secs", outcome_ttl_secs.to_string()),
            ("--lease-ms", lease_ms.to_string()),
            ("--max-in-flight", max_in_flight.to_string()),
            ("--max-backlog-records", max_backlog_records.to_string()),
            ("--publish-timeout-ms", publish_timeout_ms.to_string()),
            ("--linger-ms", linger_ms.to_string()),
            ("--batch-size", batch_size.to_string()),
            ("--redis-timeout-ms", redis_timeout_ms.to_string()),
            ("--retry-after-secs", retry_after_secs.to_string()),
            ("--max-connections", max_connections.to_string()),
            (
                "--header-read-timeout-ms",
                header_read_timeout_ms.to_string(),
            ),
            ("--body-read-timeout-ms", body_read_timeout_ms.to_string()),
            ("--rate-limit", value_name(*rate_limit)),
            ("--key-cache-ms", key_cache_ms.to_string()),
            ("--hold-timeout-s", hold_timeout_s.to_string()),
            ("--max-hold-timeout-s", max_hold_timeout_s.to_string()),
            ("--expire-scan-ms", expire_scan_ms.to_string()),
        ]
        .into_iter()
        .chain(
            optional
                .into_iter()
                .filter_map(|(flag, v)| Some((flag, v?))),
        );
        // A switch is a flag alone (clap takes no value for it).
        let switches = [("--redis-accept-failover-loss", *redis_accept_failover_loss)]
            .into_iter()
            .filter(|(_, on)| *on)
            .map(|(flag, _)| flag.to_owned());
        std::iter::once(role)
            .chain(pairs.flat_map(|(flag, value)| [flag.to_owned(), value]))
            .chain(switches)
            .collect()
    }
}

/// The command-line name of a value of a `ValueEnum`.
fn value_name(value: impl ValueEnum) -> String {
    value
        .to_possible_value()
        .expect("every value has a name")
        .get_name()
        .to_owned()
}
