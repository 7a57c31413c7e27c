//! Topic configs: names, types, Kafka defaults and the broker settings that override them.
//!
//! DescribeConfigs lists every entry here for a topic (admin tools read-modify-write that
//! list), Create/Alter configs validate against it.

use std::collections::BTreeMap;

/// Kafka's config types as DescribeConfigs v3+ reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigType {
    Boolean = 1,
    String = 2,
    Int = 3,
    Short = 4,
    Long = 5,
    Double = 6,
    List = 7,
}

/// One topic config.
#[derive(Debug, Clone, Copy)]
pub struct ConfigDef {
    pub name: &'static str,
    pub kind: ConfigType,
    /// Kafka's default value.
    pub default: &'static str,
    /// Broker setting that provides the default (`log.retention.ms` for `retention.ms`).
    pub broker_synonym: Option<&'static str>,
    /// Allowed values for enumerations (empty: any value of the type).
    pub allowed: &'static [&'static str],
    pub doc: &'static str,
}

const fn def(
    name: &'static str,
    kind: ConfigType,
    default: &'static str,
    broker_synonym: Option<&'static str>,
    doc: &'static str,
) -> ConfigDef {
    ConfigDef {
        name,
        kind,
        default,
        broker_synonym,
        allowed: &[],
        doc,
    }
}

use ConfigType::*;

/// The topic configs of Apache Kafka 3.9, in Kafka's order.
pub const TOPIC_CONFIGS: &[ConfigDef] = &[
    ConfigDef {
        allowed: &["compact", "delete"],
        ..def("cleanup.policy", List, "delete", Some("log.cleanup.policy"), "Retention policy: delete and/or compact.")
    },
    ConfigDef {
        allowed: &["uncompressed", "zstd", "lz4", "snappy", "gzip", "producer"],
        ..def("compression.type", String, "producer", Some("compression.type"), "Final compression type of the topic.")
    },
    def("delete.retention.ms", Long, "86400000", Some("log.cleaner.delete.retention.ms"), "How long tombstones are retained on compacted topics."),
    def("file.delete.delay.ms", Long, "60000", Some("log.segment.delete.delay.ms"), "Delay before deleting data from storage."),
    def("flush.messages", Long, "9223372036854775807", Some("log.flush.interval.messages"), "Accepted for compatibility; data is durable in object storage before acks."),
    def("flush.ms", Long, "9223372036854775807", Some("log.flush.interval.ms"), "Accepted for compatibility; data is durable in object storage before acks."),
    def("follower.replication.throttled.replicas", List, "", None, "Accepted for compatibility; storage is shared."),
    def("index.interval.bytes", Int, "4096", Some("log.index.interval.bytes"), "Accepted for compatibility."),
    def("leader.replication.throttled.replicas", List, "", None, "Accepted for compatibility; storage is shared."),
    def("local.retention.bytes", Long, "-2", Some("log.local.retention.bytes"), "Accepted for compatibility (tiered storage)."),
    def("local.retention.ms", Long, "-2", Some("log.local.retention.ms"), "Accepted for compatibility (tiered storage)."),
    def("max.compaction.lag.ms", Long, "9223372036854775807", Some("log.cleaner.max.compaction.lag.ms"), "Longest time a record stays uncompacted."),
    def("max.message.bytes", Int, "1048588", Some("message.max.bytes"), "Largest record batch size allowed."),
    def("message.downconversion.enable", Boolean, "true", Some("log.message.downconversion.enable"), "Accepted for compatibility."),
    def("message.format.version", String, "3.0-IV1", Some("log.message.format.version"), "Accepted for compatibility; batches are magic v2."),
    def("message.timestamp.after.max.ms", Long, "9223372036854775807", Some("log.message.timestamp.after.max.ms"), "Largest allowed timestamp lead over broker time."),
    def("message.timestamp.before.max.ms", Long, "9223372036854775807", Some("log.message.timestamp.before.max.ms"), "Largest allowed timestamp lag behind broker time."),
    def("message.timestamp.difference.max.ms", Long, "9223372036854775807", Some("log.message.timestamp.difference.max.ms"), "Deprecated timestamp bound."),
    ConfigDef {
        allowed: &["CreateTime", "LogAppendTime"],
        ..def("message.timestamp.type", String, "CreateTime", Some("log.message.timestamp.type"), "CreateTime or LogAppendTime.")
    },
    def("min.cleanable.dirty.ratio", Double, "0.5", Some("log.cleaner.min.cleanable.ratio"), "Dirty ratio that triggers compaction."),
    def("min.compaction.lag.ms", Long, "0", Some("log.cleaner.min.compaction.lag.ms"), "Shortest time a record stays uncompacted."),
    def("min.insync.replicas", Int, "1", Some("min.insync.replicas"), "Accepted for compatibility; durability comes from object storage."),
    def("preallocate", Boolean, "false", Some("log.preallocate"), "Accepted for compatibility."),
    def("remote.storage.enable", Boolean, "false", None, "Accepted for compatibility; all data is in object storage."),
    def("retention.bytes", Long, "-1", Some("log.retention.bytes"), "Size of a partition above which old data is deleted (-1: no limit)."),
    def("retention.ms", Long, "604800000", Some("log.retention.ms"), "Age after which data is deleted (-1: no limit)."),
    def("segment.bytes", Int, "1073741824", Some("log.segment.bytes"), "Accepted for compatibility."),
    def("segment.index.bytes", Int, "10485760", Some("log.index.size.max.bytes"), "Accepted for compatibility."),
    def("segment.jitter.ms", Long, "0", Some("log.roll.jitter.ms"), "Accepted for compatibility."),
    def("segment.ms", Long, "604800000", Some("log.roll.ms"), "Accepted for compatibility."),
    def("unclean.leader.election.enable", Boolean, "false", Some("unclean.leader.election.enable"), "Accepted for compatibility; there are no replicas to diverge."),
];

pub fn lookup(name: &str) -> Option<&'static ConfigDef> {
    TOPIC_CONFIGS.iter().find(|d| d.name == name)
}

/// Checks a value against its config's type; returns a Kafka-style message on error.
pub fn validate(name: &str, value: &str) -> Result<(), std::string::String> {
    let Some(d) = lookup(name) else {
        return Err(format!("Unknown topic config name: {name}"));
    };
    let ok = match d.kind {
        Boolean => value.eq_ignore_ascii_case("true") || value.eq_ignore_ascii_case("false"),
        Int => value.trim().parse::<i32>().is_ok(),
        Short => value.trim().parse::<i16>().is_ok(),
        Long => value.trim().parse::<i64>().is_ok(),
        Double => value.trim().parse::<f64>().is_ok(),
        String => d.allowed.is_empty() || d.allowed.contains(&value),
        List => value
            .split(',')
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .all(|v| d.allowed.is_empty() || d.allowed.contains(&v)),
    };
    if ok {
        Ok(())
    } else {
        Err(format!("Invalid value {value} for configuration {name}"))
    }
}

/// Where an effective value comes from (DescribeConfigs `config_source`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    DynamicTopic = 1,
    StaticBroker = 4,
    Default = 5,
}

/// A config's effective value for a topic.
pub struct Effective<'a> {
    pub def: &'static ConfigDef,
    pub value: &'a str,
    pub source: Source,
}

/// Effective value of `def` given topic overrides and broker-level defaults.
pub fn effective<'a>(
    def: &'static ConfigDef,
    overrides: &'a BTreeMap<std::string::String, std::string::String>,
    broker: &'a BTreeMap<std::string::String, std::string::String>,
) -> Effective<'a> {
    if let Some(v) = overrides.get(def.name) {
        return Effective { def, value: v, source: Source::DynamicTopic };
    }
    if let Some(v) = broker.get(def.name) {
        return Effective { def, value: v, source: Source::StaticBroker };
    }
    Effective { def, value: def.default, source: Source::Default }
}

/// Effective value of a config as an integer (for the broker's own use).
pub fn effective_i64(
    name: &str,
    overrides: &BTreeMap<std::string::String, std::string::String>,
    broker: &BTreeMap<std::string::String, std::string::String>,
) -> i64 {
    let Some(d) = lookup(name) else { return -1 };
    effective(d, overrides, broker).value.trim().parse().unwrap_or_else(|_| d.default.parse().unwrap_or(-1))
}

/// Effective value of a config as a string.
pub fn effective_str<'a>(
    name: &str,
    overrides: &'a BTreeMap<std::string::String, std::string::String>,
    broker: &'a BTreeMap<std::string::String, std::string::String>,
) -> &'a str {
    match lookup(name) {
        Some(d) => effective(d, overrides, broker).value,
        None => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validates_types_and_enumerations() {
        assert!(validate("retention.ms", "1000").is_ok());
        assert!(validate("retention.ms", "soon").is_err());
        assert!(validate("cleanup.policy", "compact,delete").is_ok());
        assert!(validate("cleanup.policy", "shred").is_err());
        assert!(validate("message.timestamp.type", "LogAppendTime").is_ok());
        assert!(validate("no.such.config", "1").is_err());
    }

    #[test]
    fn topic_override_beats_broker_default_beats_kafka_default() {
        let mut o = BTreeMap::new();
        let mut b = BTreeMap::new();
        assert_eq!(effective_i64("retention.ms", &o, &b), 604_800_000);
        b.insert("retention.ms".to_string(), "5000".to_string());
        assert_eq!(effective_i64("retention.ms", &o, &b), 5000);
        o.insert("retention.ms".to_string(), "7".to_string());
        assert_eq!(effective_i64("retention.ms", &o, &b), 7);
    }
}
