//! The topics: created with settings that keep every record gone before the
//! processed flag that catches its duplicate expires, and an existing
//! topic checked against the same rule before anything runs on it.
//!
//! Kafka deletes whole segments, once the newest record of a segment is
//! older than `retention.ms`, at the broker's next retention check
//! (`log.retention.check.interval.ms`). A segment rolls once it is older
//! than `segment.ms`, so a record can be read for up to
//! `segment.ms + retention.ms + log.retention.check.interval.ms` after it
//! was written (the first check runs `log.initial.task.delay.ms` after the
//! broker starts: the longer of the two bounds the wait for a check). Its
//! flag is written when it is applied (later than that) and kept for the
//! outcome TTL. So: that sum < outcome TTL, or a replay from offset 0
//! applies again every record whose flag has expired.

use std::time::Duration;

use rdkafka::admin::{
    AdminClient, AdminOptions, ConfigResource, NewTopic, ResourceSpecifier, TopicReplication,
};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::ClientConfig;

/// The broker settings that bound how late a due segment is deleted, with
/// Kafka's defaults for a broker that does not say.
const CHECK_INTERVAL: &str = "log.retention.check.interval.ms";
const DEFAULT_CHECK_INTERVAL_MS: u64 = 300_000;
const FIRST_CHECK_DELAY: &str = "log.initial.task.delay.ms";
const DEFAULT_FIRST_CHECK_DELAY_MS: u64 = 30_000;

/// What the engine's topics are created with.
#[derive(Debug, Clone)]
pub struct TopicSettings<'a> {
    pub brokers: &'a str,
    /// The transactions topic and its partitions.
    pub topic: &'a str,
    pub partitions: i32,
    /// Records that cannot be decoded (one partition).
    pub dlq_topic: &'a str,
    /// The outcome events (the transactions topic's partitions), when
    /// they are published.
    pub outcomes_topic: Option<&'a str>,
    /// Replicas of each partition (1 fits one broker; 3 in production).
    pub replication_factor: i32,
    /// Replicas that must have a record before `acks=all` answers.
    pub min_insync_replicas: u32,
    /// How long the processed flags live (`--outcome-ttl-secs`).
    pub outcome_ttl: Duration,
}

/// `segment.ms` and `retention.ms` for the transactions topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    pub segment_ms: u64,
    pub retention_ms: u64,
}

impl Retention {
    /// The settings for flags kept `outcome_ttl_ms` on brokers that check
    /// retention every `check_interval_ms`: of what the TTL leaves after
    /// the check interval, a quarter for `segment.ms`, half for
    /// `retention.ms`, and a quarter spare (clocks, a slow check).
    pub fn for_ttl(outcome_ttl_ms: u64, check_interval_ms: u64) -> Result<Self, TopicError> {
        let budget = outcome_ttl_ms.saturating_sub(check_interval_ms);
        let retention = Self {
            segment_ms: budget / 4,
            retention_ms: budget / 2,
        };
        if retention.segment_ms == 0 {
            return Err(TopicError::TtlTooShort {
                outcome_ttl_ms,
                check_interval_ms,
            });
        }
        Ok(retention)
    }

    /// How long after it was written a record can still be read.
    pub fn longest_life_ms(&self, check_interval_ms: u64) -> u64 {
        self.segment_ms
            .saturating_add(self.retention_ms)
            .saturating_add(check_interval_ms)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TopicError {
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error("could not {what}: {code}")]
    Admin {
        what: String,
        code: RDKafkaErrorCode,
    },
    #[error("--outcome-ttl-secs ({} s) leaves no room for a topic's retention: the brokers' wait for a retention check ({CHECK_INTERVAL}, or {FIRST_CHECK_DELAY} if longer) alone is {check_interval_ms} ms; keep outcomes longer", outcome_ttl_ms / 1000)]
    TtlTooShort {
        outcome_ttl_ms: u64,
        check_interval_ms: u64,
    },
    /// An existing topic keeps records longer than their flags live.
    #[error("topic {topic} keeps records too long for --outcome-ttl-secs ({} s): {problem}; a replay of it could apply transactions again once their flags expired. Set it with `kafka-configs --alter --entity-type topics --entity-name {topic} --add-config segment.ms={},retention.ms={}` (this engine's values), or keep outcomes longer", outcome_ttl_ms / 1000, wanted.segment_ms, wanted.retention_ms)]
    OutlivesFlags {
        topic: String,
        problem: String,
        outcome_ttl_ms: u64,
        wanted: Retention,
    },
}

/// Creates the topics where missing, and checks that the transactions
/// topic (new or not) deletes its records before their flags expire.
pub async fn ensure_topics(settings: &TopicSettings<'_>) -> Result<Retention, TopicError> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", settings.brokers)
        .create()?;
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let brokers = broker_ids(&admin, settings.topic).await?;
    let check_interval_ms = longest_check_interval(&admin, &brokers, &options).await?;
    let outcome_ttl_ms = settings.outcome_ttl.as_millis() as u64;
    let wanted = Retention::for_ttl(outcome_ttl_ms, check_interval_ms)?;

    let segment = wanted.segment_ms.to_string();
    let retention = wanted.retention_ms.to_string();
    let min_insync = settings.min_insync_replicas.to_string();
    let outcomes = settings
        .outcomes_topic
        .map(|name| (name, settings.partitions));
    let new_topics: Vec<NewTopic> = [
        Some((settings.topic, settings.partitions)),
        Some((settings.dlq_topic, 1)),
        outcomes,
    ]
    .into_iter()
    .flatten()
    .map(|(name, partitions)| {
        NewTopic::new(
            name,
            partitions,
            TopicReplication::Fixed(settings.replication_factor),
        )
        .set("cleanup.policy", "delete")
        .set("segment.ms", &segment)
        .set("retention.ms", &retention)
        .set("min.insync.replicas", &min_insync)
    })
    .collect();
    for result in admin.create_topics(&new_topics, &options).await? {
        match result {
            Ok(name) => tracing::info!(topic = %name, "topic created"),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => {
                return Err(TopicError::Admin {
                    what: format!("create topic {name}"),
                    code,
                })
            }
        }
    }

    let config = describe_topic(&admin, settings.topic, &options).await?;
    check_topic(settings.topic, &config, outcome_ttl_ms, check_interval_ms)?;
    let topic_min_insync = number(&config, "min.insync.replicas").unwrap_or(1);
    if brokers.len() > 1 && topic_min_insync < 2 {
        tracing::warn!(
            topic = settings.topic,
            brokers = brokers.len(),
            "min.insync.replicas is 1 on a cluster of several brokers: acks=all then waits for one replica only, and a broker lost can take accepted transactions with it; set --topic-min-insync-replicas 2 with --topic-replication-factor 3"
        );
    }
    Ok(wanted)
}

/// Refuses a topic that can keep a record readable after its flag expired.
pub fn check_topic(
    topic: &str,
    config: &ConfigResource,
    outcome_ttl_ms: u64,
    check_interval_ms: u64,
) -> Result<(), TopicError> {
    let wanted = Retention::for_ttl(outcome_ttl_ms, check_interval_ms)?;
    let refuse = |problem: String| TopicError::OutlivesFlags {
        topic: topic.to_owned(),
        problem,
        outcome_ttl_ms,
        wanted,
    };
    let policy = text(config, "cleanup.policy").unwrap_or_default();
    if !policy.split(',').any(|p| p.trim() == "delete") || policy.contains("compact") {
        return Err(refuse(format!(
            "cleanup.policy is {policy:?}, not \"delete\" (compaction keeps records for good)"
        )));
    }
    let (Some(segment_ms), Some(retention_ms)) =
        (number(config, "segment.ms"), number(config, "retention.ms"))
    else {
        return Err(refuse(
            "segment.ms or retention.ms is not a time (retention.ms = -1 keeps records for good)"
                .into(),
        ));
    };
    let found = Retention {
        segment_ms,
        retention_ms,
    };
    let life_ms = found.longest_life_ms(check_interval_ms);
    if life_ms >= outcome_ttl_ms {
        return Err(refuse(format!(
            "segment.ms ({segment_ms}) + retention.ms ({retention_ms}) + the wait for a retention check ({CHECK_INTERVAL} or {FIRST_CHECK_DELAY}: {check_interval_ms}) = {life_ms} ms is not below {outcome_ttl_ms} ms"
        )));
    }
    Ok(())
}

/// The ids of the brokers, from a metadata request.
async fn broker_ids(
    admin: &AdminClient<DefaultClientContext>,
    topic: &str,
) -> Result<Vec<i32>, TopicError> {
    // A blocking call, once at start.
    let metadata = admin
        .inner()
        .fetch_metadata(Some(topic), Duration::from_secs(10))?;
    Ok(metadata.brokers().iter().map(|b| b.id()).collect())
}

/// The longest wait for a retention check on any broker: its
/// `log.retention.check.interval.ms`, or its `log.initial.task.delay.ms`
/// (the first check after a start) if longer.
async fn longest_check_interval(
    admin: &AdminClient<DefaultClientContext>,
    brokers: &[i32],
    options: &AdminOptions,
) -> Result<u64, TopicError> {
    let mut longest = 0;
    // One broker a request: librdkafka refuses several broker resources
    // in one DescribeConfigs ("Conflicting use").
    let mut results = Vec::with_capacity(brokers.len());
    for id in brokers {
        let specifier = [ResourceSpecifier::Broker(*id)];
        results.extend(admin.describe_configs(&specifier, options).await?);
    }
    for result in results {
        let config = result.map_err(|code| TopicError::Admin {
            what: format!("read the brokers' {CHECK_INTERVAL} and {FIRST_CHECK_DELAY}"),
            code,
        })?;
        let interval = number(&config, CHECK_INTERVAL).unwrap_or(DEFAULT_CHECK_INTERVAL_MS);
        let first = number(&config, FIRST_CHECK_DELAY).unwrap_or(DEFAULT_FIRST_CHECK_DELAY_MS);
        longest = longest.max(interval).max(first);
    }
    Ok(if brokers.is_empty() {
        DEFAULT_CHECK_INTERVAL_MS
    } else {
        longest
    })
}

/// The config of `topic`. A topic created a moment ago may not be known to
/// the broker that answers yet (no entries, or unknown): asked again for up
/// to 10 s.
async fn describe_topic(
    admin: &AdminClient<DefaultClientContext>,
    topic: &str,
    options: &AdminOptions,
) -> Result<ConfigResource, TopicError> {
    let what = format!("describe topic {topic}");
    let mut attempts = 0;
    loop {
        let described = admin
            .describe_configs(&[ResourceSpecifier::Topic(topic)], options)
            .await
            .map_err(TopicError::from)
            .and_then(|described| first_resource(described, &what));
        match described {
            Ok(config) if config.get("cleanup.policy").is_some() => return Ok(config),
            Ok(_) | Err(_) if attempts < 40 => {}
            Ok(_) => {
                return Err(TopicError::Admin {
                    what: format!("{what}: the broker returned no settings for it"),
                    code: RDKafkaErrorCode::UnknownTopicOrPartition,
                })
            }
            Err(e) => return Err(e),
        }
        attempts += 1;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn first_resource(
    described: Vec<Result<ConfigResource, RDKafkaErrorCode>>,
    what: &str,
) -> Result<ConfigResource, TopicError> {
    described
        .into_iter()
        .next()
        .unwrap_or(Err(RDKafkaErrorCode::UnknownTopicOrPartition))
        .map_err(|code| TopicError::Admin {
            what: what.to_owned(),
            code,
        })
}

fn text(config: &ConfigResource, name: &str) -> Option<String> {
    config.get(name).and_then(|entry| entry.value.clone())
}

/// A setting as a non-negative integer (`None` for -1, absent or not a number).
fn number(config: &ConfigResource, name: &str) -> Option<u64> {
    text(config, name).and_then(|value| value.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::admin::{ConfigEntry, ConfigSource, OwnedResourceSpecifier};

    fn topic_config(entries: &[(&str, &str)]) -> ConfigResource {
        ConfigResource {
            specifier: OwnedResourceSpecifier::Topic("t".into()),
            entries: entries
                .iter()
                .map(|(name, value)| ConfigEntry {
                    name: (*name).into(),
                    value: Some((*value).into()),
                    source: ConfigSource::DynamicTopic,
                    is_read_only: false,
                    is_default: false,
                    is_sensitive: false,
                })
                .collect(),
        }
    }

    #[test]
    fn the_settings_keep_a_record_shorter_than_its_flag() {
        for (ttl_ms, check_ms) in [(604_800_000, 300_000), (20_000, 1_000), (5, 1)] {
            let retention = Retention::for_ttl(ttl_ms, check_ms).unwrap();
            assert!(
                retention.longest_life_ms(check_ms) < ttl_ms,
                "{retention:?}"
            );
            assert!(retention.segment_ms > 0 && retention.retention_ms > 0);
        }
        assert!(matches!(
            Retention::for_ttl(300_000, 300_000),
            Err(TopicError::TtlTooShort { .. })
        ));
    }

    #[test]
    fn a_topic_that_outlives_the_flags_is_refused_naming_the_setting() {
        let ttl_ms = 7 * 24 * 3_600_000;
        let wanted = Retention::for_ttl(ttl_ms, 300_000).unwrap();
        let ours = topic_config(&[
            ("cleanup.policy", "delete"),
            ("segment.ms", &wanted.segment_ms.to_string()),
            ("retention.ms", &wanted.retention_ms.to_string()),
        ]);
        check_topic("t", &ours, ttl_ms, 300_000).unwrap();
        // Records kept as long as the TTL: retention = TTL, segment.ms default (7 days).
        let old = topic_config(&[
            ("cleanup.policy", "delete"),
            ("segment.ms", "604800000"),
            ("retention.ms", &ttl_ms.to_string()),
        ]);
        let error = check_topic("t", &old, ttl_ms, 300_000)
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("segment.ms (604800000) + retention.ms"),
            "{error}"
        );
        let forever = topic_config(&[
            ("cleanup.policy", "delete"),
            ("segment.ms", "1000"),
            ("retention.ms", "-1"),
        ]);
        let error = check_topic("t", &forever, ttl_ms, 300_000)
            .unwrap_err()
            .to_string();
        assert!(error.contains("retention.ms = -1"), "{error}");
        let compacted = topic_config(&[
            ("cleanup.policy", "compact,delete"),
            ("segment.ms", "1000"),
            ("retention.ms", "1000"),
        ]);
        let error = check_topic("t", &compacted, ttl_ms, 300_000)
            .unwrap_err()
            .to_string();
        assert!(error.contains("cleanup.policy"), "{error}");
        // Just at the TTL is too long: the sum must stay below it.
        let at_ttl = topic_config(&[
            ("cleanup.policy", "delete"),
            ("segment.ms", "1000"),
            ("retention.ms", &(ttl_ms - 1000 - 300_000).to_string()),
        ]);
        assert!(check_topic("t", &at_ttl, ttl_ms, 300_000).is_err());
        let below = topic_config(&[
            ("cleanup.policy", "delete"),
            ("segment.ms", "1000"),
            ("retention.ms", &(ttl_ms - 1001 - 300_000).to_string()),
        ]);
        check_topic("t", &below, ttl_ms, 300_000).unwrap();
    }
}
