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

impl ConfigType {
    /// Kafka's name of the type, as its parse errors spell it.
    pub fn kafka_name(self) -> &'static str {
        match self {
            ConfigType::Boolean => "BOOLEAN",
            ConfigType::String => "STRING",
            ConfigType::Int => "INT",
            ConfigType::Short => "SHORT",
            ConfigType::Long => "LONG",
            ConfigType::Double => "DOUBLE",
            ConfigType::List => "LIST",
        }
    }
}

/// A value check beyond the type (Kafka's `ConfigDef` validators).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Check {
    None,
    /// `Range.atLeast(min)`.
    AtLeast(i64),
    /// `Range.between(min, max)` (for DOUBLE configs the bounds are compared as floats).
    Between(i64, i64),
    /// GZIP levels: 1..=9, or -1 for the codec default.
    GzipLevel,
    /// `ThrottledReplicaListValidator`: `*` or `partition:broker` pairs.
    ThrottledReplicas,
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
    /// Range or format check of the value.
    pub check: Check,
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
        check: Check::None,
        doc,
    }
}

const fn at_least(d: ConfigDef, min: i64) -> ConfigDef {
    ConfigDef {
        check: Check::AtLeast(min),
        ..d
    }
}

const fn checked(d: ConfigDef, check: Check) -> ConfigDef {
    ConfigDef { check, ..d }
}

const fn one_of(d: ConfigDef, allowed: &'static [&'static str]) -> ConfigDef {
    ConfigDef { allowed, ..d }
}

const MAX: &str = "9223372036854775807";

use ConfigType::*;

/// The topic configs of Apache Kafka 3.9, and Shale's own `replay.window.ms`, sorted by name
/// as Kafka lists them.
#[rustfmt::skip]
pub const TOPIC_CONFIGS: &[ConfigDef] = &[
    one_of(def("cleanup.policy", List, "delete", Some("log.cleanup.policy"), "Retention policy: delete and/or compact."), &["compact", "delete"]),
    checked(def("compression.gzip.level", Int, "-1", Some("compression.gzip.level"), "Compression level used when compression.type is gzip."), Check::GzipLevel),
    checked(def("compression.lz4.level", Int, "9", Some("compression.lz4.level"), "Compression level used when compression.type is lz4."), Check::Between(1, 17)),
    one_of(def("compression.type", String, "producer", Some("compression.type"), "Final compression type of the topic."), &["uncompressed", "zstd", "lz4", "snappy", "gzip", "producer"]),
    checked(def("compression.zstd.level", Int, "3", Some("compression.zstd.level"), "Compression level used when compression.type is zstd."), Check::Between(-131_072, 22)),
    at_least(def("delete.retention.ms", Long, "86400000", Some("log.cleaner.delete.retention.ms"), "How long tombstones are retained on compacted topics."), 0),
    at_least(def("file.delete.delay.ms", Long, "60000", Some("log.segment.delete.delay.ms"), "Delay before deleting data from storage: objects are deleted object.delete.grace.ms (this config's broker default) after they stop being referenced; a topic may not ask for longer."), 0),
    at_least(def("flush.messages", Long, MAX, Some("log.flush.interval.messages"), "Accepted for compatibility; data is durable in object storage before acks."), 1),
    at_least(def("flush.ms", Long, MAX, Some("log.flush.interval.ms"), "Accepted for compatibility; data is durable in object storage before acks."), 0),
    checked(def("follower.replication.throttled.replicas", List, "", None, "Accepted for compatibility; storage is shared."), Check::ThrottledReplicas),
    at_least(def("index.interval.bytes", Int, "4096", Some("log.index.interval.bytes"), "Accepted for compatibility."), 0),
    checked(def("leader.replication.throttled.replicas", List, "", None, "Accepted for compatibility; storage is shared."), Check::ThrottledReplicas),
    at_least(def("local.retention.bytes", Long, "-2", Some("log.local.retention.bytes"), "Accepted for compatibility (tiered storage)."), -2),
    at_least(def("local.retention.ms", Long, "-2", Some("log.local.retention.ms"), "Accepted for compatibility (tiered storage)."), -2),
    at_least(def("max.compaction.lag.ms", Long, MAX, Some("log.cleaner.max.compaction.lag.ms"), "Longest time a record stays uncompacted."), 1),
    at_least(def("max.message.bytes", Int, "1048588", Some("message.max.bytes"), "Largest record batch size allowed."), 0),
    def("message.downconversion.enable", Boolean, "true", Some("log.message.downconversion.enable"), "Accepted for compatibility."),
    def("message.format.version", String, "3.0-IV1", Some("log.message.format.version"), "Accepted for compatibility; batches are magic v2."),
    at_least(def("message.timestamp.after.max.ms", Long, MAX, Some("log.message.timestamp.after.max.ms"), "Largest allowed timestamp lead over broker time."), 0),
    at_least(def("message.timestamp.before.max.ms", Long, MAX, Some("log.message.timestamp.before.max.ms"), "Largest allowed timestamp lag behind broker time."), 0),
    at_least(def("message.timestamp.difference.max.ms", Long, MAX, Some("log.message.timestamp.difference.max.ms"), "Deprecated timestamp bound."), 0),
    one_of(def("message.timestamp.type", String, "CreateTime", Some("log.message.timestamp.type"), "CreateTime or LogAppendTime."), &["CreateTime", "LogAppendTime"]),
    checked(def("min.cleanable.dirty.ratio", Double, "0.5", Some("log.cleaner.min.cleanable.ratio"), "Dirty ratio that triggers compaction."), Check::Between(0, 1)),
    at_least(def("min.compaction.lag.ms", Long, "0", Some("log.cleaner.min.compaction.lag.ms"), "Shortest time a record stays uncompacted."), 0),
    at_least(def("min.insync.replicas", Int, "1", Some("min.insync.replicas"), "Accepted for compatibility; durability comes from object storage."), 1),
    def("preallocate", Boolean, "false", Some("log.preallocate"), "Accepted for compatibility."),
    def("remote.log.copy.disable", Boolean, "false", None, "Accepted for compatibility (tiered storage)."),
    def("remote.log.delete.on.disable", Boolean, "false", None, "Accepted for compatibility (tiered storage)."),
    def("remote.storage.enable", Boolean, "false", None, "Accepted for compatibility; all data is in object storage."),
    at_least(def("replay.window.ms", Long, "-1", Some("replay.window.ms"), "Shale's: with an authorizer, fetching records older than this, or moving a committed offset backwards, also needs READ on the topic __replay.<topic> (-1 or 0: no window)."), -1),
    def("retention.bytes", Long, "-1", Some("log.retention.bytes"), "Size of a partition above which old data is deleted (-1: no limit)."),
    at_least(def("retention.ms", Long, "604800000", Some("log.retention.ms"), "Age after which data is deleted (-1: no limit)."), -1),
    at_least(def("segment.bytes", Int, "1073741824", Some("log.segment.bytes"), "Accepted for compatibility."), 14),
    at_least(def("segment.index.bytes", Int, "10485760", Some("log.index.size.max.bytes"), "Accepted for compatibility."), 4),
    at_least(def("segment.jitter.ms", Long, "0", Some("log.roll.jitter.ms"), "Accepted for compatibility."), 0),
    at_least(def("segment.ms", Long, "604800000", Some("log.roll.ms"), "Accepted for compatibility."), 1),
    def("unclean.leader.election.enable", Boolean, "false", Some("unclean.leader.election.enable"), "Accepted for compatibility; there are no replicas to diverge."),
];

pub fn lookup(name: &str) -> Option<&'static ConfigDef> {
    TOPIC_CONFIGS.iter().find(|d| d.name == name)
}

/// The elements of a LIST value as Kafka splits them (comma separated, trimmed; an empty or
/// blank value is the empty list).
pub fn list_items(value: &str) -> Vec<&str> {
    if value.trim().is_empty() {
        return Vec::new();
    }
    value.split(',').map(str::trim).collect()
}

/// Checks a value against its config's type and validator and returns it in canonical form
/// (trimmed, booleans in lower case, list elements trimmed), or Kafka's message on error.
pub fn normalize(name: &str, value: &str) -> Result<std::string::String, std::string::String> {
    let Some(d) = lookup(name) else {
        return Err(format!("Unknown topic config name: {name}"));
    };
    let invalid = |why: &str| format!("Invalid value {value} for configuration {name}: {why}");
    let not_a_number = || invalid(&format!("Not a number of type {}", d.kind.kafka_name()));
    let v = value.trim();
    match d.kind {
        Boolean => {
            if v.eq_ignore_ascii_case("true") {
                Ok("true".into())
            } else if v.eq_ignore_ascii_case("false") {
                Ok("false".into())
            } else {
                Err(invalid("Expected value to be either true or false"))
            }
        }
        Int | Short | Long => {
            let n: i64 = match d.kind {
                Int => v
                    .parse::<i32>()
                    .map(i64::from)
                    .map_err(|_| not_a_number())?,
                Short => v
                    .parse::<i16>()
                    .map(i64::from)
                    .map_err(|_| not_a_number())?,
                _ => v.parse::<i64>().map_err(|_| not_a_number())?,
            };
            check_integer(d.check, n).map_err(|why| invalid(&why))?;
            Ok(n.to_string())
        }
        Double => {
            let n: f64 = v.parse().map_err(|_| not_a_number())?;
            if !n.is_finite() {
                return Err(not_a_number());
            }
            match d.check {
                Check::AtLeast(min) if n < min as f64 => {
                    Err(invalid(&format!("Value must be at least {min}")))
                }
                Check::Between(min, _) if n < min as f64 => {
                    Err(invalid(&format!("Value must be at least {min}")))
                }
                Check::Between(_, max) if n > max as f64 => {
                    Err(invalid(&format!("Value must be no more than {max}")))
                }
                _ => Ok(v.to_string()),
            }
        }
        String => {
            if !d.allowed.is_empty() && !d.allowed.contains(&v) {
                return Err(invalid(&format!(
                    "String must be one of: {}",
                    d.allowed.join(", ")
                )));
            }
            Ok(v.to_string())
        }
        List => {
            let items = list_items(v);
            if !d.allowed.is_empty()
                && let Some(bad) = items.iter().find(|i| !d.allowed.contains(i))
            {
                return Err(format!(
                    "Invalid value {bad} for configuration {name}: String must be one of: {}",
                    d.allowed.join(", ")
                ));
            }
            if d.check == Check::ThrottledReplicas {
                let pair = |s: &str| match s.split_once(':') {
                    Some((p, b)) => {
                        !p.is_empty()
                            && !b.is_empty()
                            && p.bytes().all(|c| c.is_ascii_digit())
                            && b.bytes().all(|c| c.is_ascii_digit())
                    }
                    None => s.is_empty(),
                };
                if !(items.iter().all(|s| pair(s)) || items.concat() == "*") {
                    return Err(invalid(&format!(
                        "{name} must be the literal '*' or a list of replicas in the following \
                         format: [partitionId]:[brokerId],[partitionId]:[brokerId],..."
                    )));
                }
            }
            Ok(items.join(","))
        }
    }
}

fn check_integer(check: Check, n: i64) -> Result<(), std::string::String> {
    match check {
        Check::AtLeast(min) if n < min => Err(format!("Value must be at least {min}")),
        Check::Between(min, _) if n < min => Err(format!("Value must be at least {min}")),
        Check::Between(_, max) if n > max => Err(format!("Value must be no more than {max}")),
        Check::GzipLevel if n != -1 && !(1..=9).contains(&n) => {
            Err("Value must be between 1 and 9 or equal to -1".into())
        }
        _ => Ok(()),
    }
}

/// The largest compression ratio a batch may have when the broker decompresses it (for a
/// topic rule, the keyless check, ListOffsets by timestamp or the cleaner): beyond it the
/// batch is taken for a decompression bomb.
pub const MAX_COMPRESSION_RATIO: usize = 64;

/// How far one batch of a topic may inflate: its `max.message.bytes` (a bound on the
/// compressed batch, at least 16 KiB) times [`MAX_COMPRESSION_RATIO`]: 64 MiB with Kafka's
/// default of 1 MiB.
pub fn decompression_cap(
    overrides: &BTreeMap<std::string::String, std::string::String>,
    broker: &BTreeMap<std::string::String, std::string::String>,
) -> usize {
    let max = effective_i64("max.message.bytes", overrides, broker).max(16 << 10);
    usize::try_from(max)
        .unwrap_or(usize::MAX)
        .saturating_mul(MAX_COMPRESSION_RATIO)
}

/// Checks a value against its config's type; returns a Kafka-style message on error.
pub fn validate(name: &str, value: &str) -> Result<(), std::string::String> {
    normalize(name, value).map(|_| ())
}

/// Checks rules that span several configs, on the effective values of a topic whose overrides
/// are `overrides` (each already validated on its own).
pub fn validate_combination(
    overrides: &BTreeMap<std::string::String, std::string::String>,
    broker: &BTreeMap<std::string::String, std::string::String>,
) -> Result<(), std::string::String> {
    // Objects hold many partitions, so they are deleted a node-wide delay after they stop
    // being referenced (`object.delete.grace.ms`, the broker default of this config). A topic
    // may ask for less (it is then kept longer than asked, which no client can observe) but
    // not for more, which could not be honoured.
    if let Some(asked) = overrides.get("file.delete.delay.ms") {
        let node = broker
            .get("file.delete.delay.ms")
            .and_then(|v| v.parse::<i64>().ok())
            .unwrap_or(60_000);
        if asked.parse::<i64>().is_ok_and(|a| a > node) {
            return Err(format!(
                "Invalid value {asked} for configuration file.delete.delay.ms: objects are \
                 deleted object.delete.grace.ms ({node} ms) after they stop being referenced; \
                 a topic cannot ask for a longer delay"
            ));
        }
    }
    let min = effective_i64("min.compaction.lag.ms", overrides, broker);
    let max = effective_i64("max.compaction.lag.ms", overrides, broker);
    if min > max {
        return Err(format!(
            "conflict topic config setting min.compaction.lag.ms ({min}) > \
             max.compaction.lag.ms ({max})"
        ));
    }
    Ok(())
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
        return Effective {
            def,
            value: v,
            source: Source::DynamicTopic,
        };
    }
    if let Some(v) = broker.get(def.name) {
        return Effective {
            def,
            value: v,
            source: Source::StaticBroker,
        };
    }
    Effective {
        def,
        value: def.default,
        source: Source::Default,
    }
}

/// One DescribeConfigs synonym: a setting that provides (or would provide) a config's value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Synonym<'a> {
    pub name: &'static str,
    pub value: &'a str,
    pub source: Source,
}

/// Kafka's synonyms of a topic config, highest precedence first: the topic override, the
/// broker setting that provides the default (when the broker sets it), then that broker
/// setting's built-in default. The first entry's source is the config's source; an empty list
/// means the built-in default.
pub fn synonyms<'a>(
    def: &'static ConfigDef,
    overrides: &'a BTreeMap<std::string::String, std::string::String>,
    broker: &'a BTreeMap<std::string::String, std::string::String>,
) -> Vec<Synonym<'a>> {
    let mut out = Vec::new();
    if let Some(v) = overrides.get(def.name) {
        out.push(Synonym {
            name: def.name,
            value: v,
            source: Source::DynamicTopic,
        });
    }
    if let Some(v) = broker.get(def.name) {
        out.push(Synonym {
            name: def.broker_synonym.unwrap_or(def.name),
            value: v,
            source: Source::StaticBroker,
        });
    }
    if let Some(b) = def.broker_synonym {
        out.push(Synonym {
            name: b,
            value: def.default,
            source: Source::Default,
        });
    }
    out
}

/// Effective value of a config as an integer (for the broker's own use).
pub fn effective_i64(
    name: &str,
    overrides: &BTreeMap<std::string::String, std::string::String>,
    broker: &BTreeMap<std::string::String, std::string::String>,
) -> i64 {
    let Some(d) = lookup(name) else { return -1 };
    effective(d, overrides, broker)
        .value
        .trim()
        .parse()
        .unwrap_or_else(|_| d.default.parse().unwrap_or(-1))
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

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<std::string::String, std::string::String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn a_file_delete_delay_longer_than_the_node_grace_is_refused_rather_than_ignored() {
        let node = map(&[("file.delete.delay.ms", "60000")]);
        let ok = map(&[("file.delete.delay.ms", "10000")]);
        assert!(validate_combination(&ok, &node).is_ok());
        let long = map(&[("file.delete.delay.ms", "120000")]);
        let e = validate_combination(&long, &node).unwrap_err();
        assert!(e.contains("object.delete.grace.ms"), "{e}");
    }

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
    fn table_is_sorted_unique_and_defaults_are_valid() {
        for pair in TOPIC_CONFIGS.windows(2) {
            assert!(
                pair[0].name < pair[1].name,
                "{} before {}",
                pair[0].name,
                pair[1].name
            );
        }
        for d in TOPIC_CONFIGS {
            let canonical = normalize(d.name, d.default)
                .unwrap_or_else(|e| panic!("default of {} is invalid: {e}", d.name));
            assert_eq!(
                canonical, d.default,
                "default of {} is not canonical",
                d.name
            );
        }
    }

    #[test]
    fn messages_follow_kafka() {
        assert_eq!(
            normalize("no.such", "1").unwrap_err(),
            "Unknown topic config name: no.such"
        );
        assert_eq!(
            normalize("retention.ms", "soon").unwrap_err(),
            "Invalid value soon for configuration retention.ms: Not a number of type LONG"
        );
        assert_eq!(
            normalize("retention.ms", "-5").unwrap_err(),
            "Invalid value -5 for configuration retention.ms: Value must be at least -1"
        );
        assert_eq!(
            normalize("preallocate", "yes").unwrap_err(),
            "Invalid value yes for configuration preallocate: Expected value to be either true or false"
        );
        assert_eq!(
            normalize("compression.type", "brotli").unwrap_err(),
            "Invalid value brotli for configuration compression.type: String must be one of: \
             uncompressed, zstd, lz4, snappy, gzip, producer"
        );
        assert_eq!(
            normalize("cleanup.policy", "compact,shred").unwrap_err(),
            "Invalid value shred for configuration cleanup.policy: String must be one of: compact, delete"
        );
    }

    #[test]
    fn ranges_and_special_validators() {
        assert!(
            normalize("max.message.bytes", "2147483648").is_err(),
            "INT overflow"
        );
        assert!(normalize("min.insync.replicas", "0").is_err());
        assert!(normalize("min.cleanable.dirty.ratio", "0.9").is_ok());
        assert!(normalize("min.cleanable.dirty.ratio", "1.5").is_err());
        assert!(normalize("min.cleanable.dirty.ratio", "NaN").is_err());
        assert!(normalize("compression.gzip.level", "-1").is_ok());
        assert!(normalize("compression.gzip.level", "0").is_err());
        assert!(normalize("compression.gzip.level", "9").is_ok());
        assert!(normalize("compression.zstd.level", "-131072").is_ok());
        assert!(normalize("compression.zstd.level", "23").is_err());
        assert!(normalize("compression.lz4.level", "0").is_err());
        assert!(normalize("leader.replication.throttled.replicas", "*").is_ok());
        assert!(normalize("leader.replication.throttled.replicas", "0:1, 1:2").is_ok());
        assert!(normalize("leader.replication.throttled.replicas", "").is_ok());
        assert!(normalize("leader.replication.throttled.replicas", "0-1").is_err());
        assert!(normalize("cleanup.policy", "").is_ok(), "empty list");
        assert!(
            normalize("cleanup.policy", "compact,,delete").is_err(),
            "empty element"
        );
    }

    #[test]
    fn normalizes_values() {
        assert_eq!(normalize("preallocate", " TRUE ").unwrap(), "true");
        assert_eq!(normalize("retention.ms", " +0042 ").unwrap(), "42");
        assert_eq!(
            normalize("cleanup.policy", "compact , delete").unwrap(),
            "compact,delete"
        );
        assert_eq!(normalize("compression.type", " lz4").unwrap(), "lz4");
    }

    #[test]
    fn compaction_lags_must_be_ordered() {
        let broker = BTreeMap::new();
        assert!(validate_combination(&map(&[("min.compaction.lag.ms", "10")]), &broker).is_ok());
        let bad = map(&[
            ("min.compaction.lag.ms", "10"),
            ("max.compaction.lag.ms", "5"),
        ]);
        assert_eq!(
            validate_combination(&bad, &broker).unwrap_err(),
            "conflict topic config setting min.compaction.lag.ms (10) > max.compaction.lag.ms (5)"
        );
        // The broker's value counts when the topic does not override it.
        let broker = map(&[("max.compaction.lag.ms", "5")]);
        assert!(validate_combination(&map(&[("min.compaction.lag.ms", "10")]), &broker).is_err());
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

    #[test]
    fn synonyms_list_override_then_broker_then_default() {
        let d = lookup("retention.ms").unwrap();
        let none = BTreeMap::new();
        let broker = map(&[("retention.ms", "5000")]);
        let topic = map(&[("retention.ms", "7")]);

        let s = synonyms(d, &none, &none);
        assert_eq!(
            s,
            vec![Synonym {
                name: "log.retention.ms",
                value: "604800000",
                source: Source::Default
            }]
        );
        let s = synonyms(d, &topic, &broker);
        assert_eq!(
            s,
            vec![
                Synonym {
                    name: "retention.ms",
                    value: "7",
                    source: Source::DynamicTopic
                },
                Synonym {
                    name: "log.retention.ms",
                    value: "5000",
                    source: Source::StaticBroker
                },
                Synonym {
                    name: "log.retention.ms",
                    value: "604800000",
                    source: Source::Default
                },
            ]
        );
        // A config without a broker setting has no synonyms unless the topic overrides it.
        let d = lookup("remote.storage.enable").unwrap();
        assert!(synonyms(d, &none, &broker).is_empty());

        // The first synonym always carries the effective value and source.
        for d in TOPIC_CONFIGS {
            for (o, b) in [
                (&none, &none),
                (&none, &broker),
                (&topic, &broker),
                (&topic, &none),
            ] {
                let e = effective(d, o, b);
                match synonyms(d, o, b).first() {
                    Some(s) => assert_eq!((s.value, s.source), (e.value, e.source), "{}", d.name),
                    None => assert_eq!(e.source, Source::Default, "{}", d.name),
                }
            }
        }
    }
}
