//! `shale.toml` + `SHALE_*` environment overrides, with Kafka-style setting names.
//! Every key is documented in docs/configuration.md.

use anyhow::{Context, bail};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

/// Every key Shale understands, with its default ("" means unset).
pub const KEYS: &[(&str, &str)] = &[
    ("node.id", "1"),
    ("process.roles", "broker,controller"),
    ("listeners", "PLAINTEXT://127.0.0.1:9092"),
    ("advertised.listeners", ""),
    // Kafka's default map, plus the controller listener's name.
    (
        "listener.security.protocol.map",
        "PLAINTEXT:PLAINTEXT,SSL:SSL,SASL_PLAINTEXT:SASL_PLAINTEXT,SASL_SSL:SASL_SSL,CONTROLLER:PLAINTEXT",
    ),
    // TLS (PEM only; see shale_security::tls). Each may also be set per listener as
    // listener.name.<name>.<key>.
    ("ssl.keystore.type", ""),
    ("ssl.keystore.location", ""),
    ("ssl.keystore.certificate.chain", ""),
    ("ssl.keystore.key", ""),
    ("ssl.keystore.password", ""),
    ("ssl.key.password", ""),
    ("ssl.certificate.location", ""),
    ("ssl.key.location", ""),
    ("ssl.truststore.type", ""),
    ("ssl.truststore.location", ""),
    ("ssl.truststore.certificates", ""),
    ("ssl.ca.location", ""),
    ("ssl.client.auth", "none"),
    ("ssl.enabled.protocols", "TLSv1.2,TLSv1.3"),
    ("ssl.principal.mapping.rules", "DEFAULT"),
    // Authorization: off unless authorizer.class.name names Kafka's standard authorizer.
    ("authorizer.class.name", ""),
    ("super.users", ""),
    ("allow.everyone.if.no.acl.found", "false"),
    // SASL.
    ("sasl.enabled.mechanisms", "SCRAM-SHA-256,SCRAM-SHA-512"),
    ("connections.max.reauth.ms", "0"),
    // SASL/OAUTHBEARER (shale_security::oauth, which applies Kafka's defaults to unset ones).
    // Each may also be set per listener, as listener.name.<name>.<key> or with Kafka's
    // mechanism prefix, listener.name.<name>.oauthbearer.<key>.
    ("sasl.oauthbearer.jwks.endpoint.url", ""),
    ("sasl.oauthbearer.expected.audience", ""),
    ("sasl.oauthbearer.expected.issuer", ""),
    ("sasl.oauthbearer.clock.skew.seconds", ""),
    ("sasl.oauthbearer.sub.claim.name", ""),
    ("sasl.oauthbearer.scope.claim.name", ""),
    ("sasl.oauthbearer.jwks.endpoint.refresh.ms", ""),
    ("sasl.oauthbearer.jwks.endpoint.retry.backoff.ms", ""),
    ("sasl.oauthbearer.jwks.endpoint.retry.backoff.max.ms", ""),
    ("sasl.oauthbearer.allowed.urls", ""),
    ("sasl.oauthbearer.jwks.endpoint.ssl.truststore.location", ""),
    ("broker.rack", ""),
    ("controller.quorum.voters", ""),
    ("controller.listener.names", "CONTROLLER"),
    ("broker.heartbeat.interval.ms", "250"),
    ("broker.session.timeout.ms", "1500"),
    // Client quotas: the rate window (Kafka's defaults: 11 samples of 1 s).
    ("quota.window.num", "11"),
    ("quota.window.size.seconds", "1"),
    ("quota.sensors.max", "100000"),
    ("admin.http.listener", ""),
    // Its security (admin_http::AdminSecurity): HTTPS from PEM files, mTLS, a bearer token.
    ("admin.http.ssl.certificate.location", ""),
    ("admin.http.ssl.key.location", ""),
    ("admin.http.ssl.truststore.location", ""),
    ("admin.http.ssl.client.auth", "none"),
    ("admin.http.auth.token.file", ""),
    ("admin.http.auth.exempt.paths", ""),
    ("admin.http.auth.mtls", "false"),
    ("data.dir", "./shale-data"),
    ("object.store", "local"),
    ("object.store.local.path", ""),
    ("s3.endpoint", ""),
    ("s3.bucket", "shale"),
    ("s3.region", "us-east-1"),
    ("s3.access.key.id", ""),
    ("s3.secret.access.key", ""),
    ("s3.prefix", ""),
    // Server-side encryption by the bucket: "" (the bucket's default), AES256 (SSE-S3),
    // aws:kms (SSE-KMS, with s3.sse.kms.key.id) or aws:kms:dsse.
    ("s3.server.side.encryption", ""),
    ("s3.sse.kms.key.id", ""),
    // Client-side envelope encryption of every object (shale_stream::encrypted): KEKs as
    // ID=file:/path or ID=env:VAR, and the one new objects are wrapped with. SIGHUP
    // re-reads both (online rotation).
    ("object.encryption.keys", ""),
    // The audit log (shale_security::audit): CloudEvents, hash-chained, to a file (default
    // <data.dir>/audit/audit.log, which also carries the chain across restarts) and the
    // __shale_audit topic.
    ("audit.enable", "false"),
    ("audit.file.path", ""),
    ("audit.queue.capacity", "65536"),
    ("audit.failure.policy", "fail-closed"),
    ("audit.log.allowed", "false"),
    ("audit.topic.enable", ""),
    ("object.encryption.key.id", ""),
    ("wal.batch.interval.ms", "50"),
    ("wal.batch.bytes", "8388608"),
    ("wal.max.inflight.uploads", "4"),
    ("wal.max.pending.bytes", "268435456"),
    ("wal.retry.timeout.ms", "60000"),
    ("object.gc.interval.ms", "600000"),
    ("object.gc.min.age.ms", "3600000"),
    ("log.cache.bytes", "268435456"),
    ("block.cache.bytes", "268435456"),
    ("block.readahead.ranges", "4"),
    ("compaction.interval.ms", "60000"),
    ("compaction.small.object.bytes", "8388608"),
    ("compaction.max.object.bytes", "268435456"),
    ("object.delete.grace.ms", "60000"),
    ("num.partitions", "1"),
    ("default.replication.factor", "1"),
    ("auto.create.topics.enable", "true"),
    ("socket.request.max.bytes", "104857600"),
    ("fetch.max.bytes", "57671680"),
    ("log.retention.check.interval.ms", "300000"),
    ("offsets.topic.num.partitions", "50"),
    ("group.initial.rebalance.delay.ms", "3000"),
    ("group.min.session.timeout.ms", "6000"),
    ("group.max.session.timeout.ms", "1800000"),
    ("offset.metadata.max.bytes", "4096"),
    ("offsets.retention.minutes", "10080"),
    ("offsets.retention.check.interval.ms", "600000"),
    ("log.cleaner.backoff.ms", "15000"),
    ("producer.id.expiration.ms", "86400000"),
    ("producer.id.expiration.check.interval.ms", "600000"),
    ("producer.state.snapshot.interval.ms", "60000"),
    ("producer.state.checkpoint.interval.ms", "1000"),
    ("transaction.max.timeout.ms", "900000"),
    ("transactional.id.expiration.ms", "604800000"),
    (
        "transaction.abort.timed.out.transaction.cleanup.interval.ms",
        "10000",
    ),
    ("transaction.state.log.num.partitions", "50"),
    // Broker-level defaults of topic configs (Kafka's names).
    ("log.retention.ms", "604800000"),
    ("log.retention.bytes", "-1"),
    ("message.max.bytes", "1048588"),
    ("log.cleanup.policy", "delete"),
    ("log.message.timestamp.type", "CreateTime"),
    ("compression.type", "producer"),
    // Shale's: the default replay window of topics (-1: none; docs/security.md).
    ("replay.window.ms", "-1"),
];

/// Broker settings that provide topic config defaults: (broker key, topic key).
pub const TOPIC_SYNONYMS: &[(&str, &str)] = &[
    ("log.retention.ms", "retention.ms"),
    ("log.retention.bytes", "retention.bytes"),
    ("message.max.bytes", "max.message.bytes"),
    ("log.cleanup.policy", "cleanup.policy"),
    ("log.message.timestamp.type", "message.timestamp.type"),
    ("compression.type", "compression.type"),
    ("replay.window.ms", "replay.window.ms"),
];

/// The resolved settings.
#[derive(Clone)]
pub struct Settings {
    values: BTreeMap<String, String>,
    /// Keys set explicitly (file or environment), as opposed to defaults.
    explicit: std::collections::BTreeSet<String>,
}

/// Names only: values include secrets (JAAS passwords, inline keys, S3 credentials).
impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("explicit", &self.explicit)
            .finish_non_exhaustive()
    }
}

impl Settings {
    /// Defaults, then the file (if any), then `SHALE_*` environment variables.
    pub fn load(file: Option<&std::path::Path>) -> anyhow::Result<Self> {
        let mut s = Settings {
            values: KEYS
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            explicit: Default::default(),
        };
        if let Some(path) = file {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            let table: toml::Table =
                toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
            for (k, v) in table {
                let v = match v {
                    toml::Value::String(s) => s,
                    toml::Value::Integer(i) => i.to_string(),
                    toml::Value::Boolean(b) => b.to_string(),
                    toml::Value::Float(f) => f.to_string(),
                    other => bail!(
                        "{}: value of {k} must be a string, number or boolean, not {other}",
                        path.display()
                    ),
                };
                s.set(&k, v)?;
            }
        }
        for (k, _) in KEYS {
            let env = format!("SHALE_{}", k.to_ascii_uppercase().replace('.', "_"));
            if let Ok(v) = std::env::var(&env) {
                s.set(k, v)?;
            }
        }
        Ok(s)
    }

    pub fn set(&mut self, key: &str, value: String) -> anyhow::Result<()> {
        if !KEYS.iter().any(|(k, _)| *k == key) && !is_listener_setting(key) {
            bail!("unknown setting {key} (see docs/configuration.md)");
        }
        self.explicit.insert(key.to_string());
        self.values.insert(key.to_string(), value);
        Ok(())
    }

    pub fn is_set(&self, key: &str) -> bool {
        self.explicit.contains(key)
    }

    pub fn str(&self, key: &str) -> &str {
        self.values.get(key).map(String::as_str).unwrap_or("")
    }

    pub fn opt(&self, key: &str) -> Option<&str> {
        Some(self.str(key)).filter(|v| !v.is_empty())
    }

    pub fn parse<T: std::str::FromStr>(&self, key: &str) -> anyhow::Result<T>
    where
        T::Err: std::fmt::Display,
    {
        self.str(key)
            .trim()
            .parse()
            .map_err(|e| anyhow::anyhow!("setting {key}={:?}: {e}", self.str(key)))
    }

    pub fn millis(&self, key: &str) -> anyhow::Result<Duration> {
        Ok(Duration::from_millis(self.parse(key)?))
    }

    pub fn data_dir(&self) -> PathBuf {
        PathBuf::from(self.str("data.dir"))
    }

    /// Kafka's `process.roles`: (broker, controller). A broker outside
    /// `controller.quorum.voters` is a learner of the metadata quorum; a controller without
    /// the broker role serves only the quorum.
    pub fn roles(&self) -> anyhow::Result<(bool, bool)> {
        let (mut broker, mut controller) = (false, false);
        for r in self.str("process.roles").split(',').map(str::trim) {
            match r {
                "broker" => broker = true,
                "controller" => controller = true,
                "" => {}
                other => bail!("process.roles: unknown role {other:?} (broker, controller)"),
            }
        }
        if !broker && !controller {
            bail!("process.roles names no role (broker, controller)");
        }
        Ok((broker, controller))
    }

    /// Host and port of the client listener (the one that is not a controller listener).
    pub fn listener(&self) -> anyhow::Result<(String, u16)> {
        let (_, host, port) = self.client_listener()?;
        Ok((host, port))
    }

    /// The client listener: name, host and port. Shale serves one (multiple client
    /// listeners would need an endpoint per listener in the brokers' registrations).
    pub fn client_listener(&self) -> anyhow::Result<(String, String, u16)> {
        let controller = self.str("controller.listener.names");
        let mut kafka = self
            .str("listeners")
            .split(',')
            .map(str::trim)
            .filter(|l| !l.is_empty() && !is_named(l, controller));
        let first = kafka.next().unwrap_or("");
        if let Some(second) = kafka.next() {
            bail!(
                "listeners: {first} and {second} are both client listeners; Shale serves one \
                 client listener (plus the controller listener) so far"
            );
        }
        let name = match first.split_once("://") {
            Some((name, _)) => name.trim().to_ascii_uppercase(),
            None => "PLAINTEXT".to_string(),
        };
        let (host, port) = parse_listener(first)?;
        Ok((name, host, port))
    }

    /// The security of the client listener, from `listener.security.protocol.map` and the
    /// `ssl.*`/`sasl.*` settings (`listener.name.<name>.` first).
    pub fn client_listener_security(
        &self,
    ) -> anyhow::Result<shale_security::listener::ListenerSecurity> {
        let (name, _, _) = self.client_listener()?;
        let protocol = self.security_protocol(&name)?;
        let get = |key: &str| self.opt(key).map(str::to_string);
        shale_security::listener::ListenerSecurity::from_settings(&name, protocol, &get)
            .map_err(|e| anyhow::anyhow!(e))
    }

    /// The authorizer's settings, `None` when `authorizer.class.name` is unset.
    pub fn authorizer(&self) -> anyhow::Result<Option<shale_security::acl::AuthorizerConfig>> {
        /// Kafka's authorizers; Shale's is their ACL model (KRaft's name, and ZooKeeper's).
        const KNOWN: &[&str] = &[
            "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
            "kafka.security.authorizer.AclAuthorizer",
        ];
        let Some(class) = self.opt("authorizer.class.name") else {
            return Ok(None);
        };
        if !KNOWN.contains(&class.trim()) {
            bail!(
                "authorizer.class.name={class}: Shale implements Kafka's ACL authorizer; \
                 set it to {} (or leave it unset to allow every request)",
                KNOWN[0]
            );
        }
        Ok(Some(shale_security::acl::AuthorizerConfig {
            super_users: shale_security::acl::AuthorizerConfig::parse_super_users(
                self.str("super.users"),
            )
            .map_err(|e| anyhow::anyhow!(e))?,
            allow_if_no_acl: self.parse("allow.everyone.if.no.acl.found")?,
        }))
    }

    /// Mutual TLS for the metadata quorum's node-to-node RPC, when
    /// `listener.security.protocol.map` maps the controller listener to SSL (its `ssl.*`
    /// settings resolve `listener.name.<controller>.` first, as Kafka's do). SASL on the
    /// controller listener is refused: nodes prove who they are by certificate.
    pub fn node_tls(&self, node_id: u64) -> anyhow::Result<Option<shale_security::node::NodeTls>> {
        use shale_security::listener::SecurityProtocol;
        let name = self
            .str("controller.listener.names")
            .trim()
            .to_ascii_uppercase();
        if name.is_empty() {
            return Ok(None);
        }
        match self.security_protocol(&name)? {
            SecurityProtocol::Plaintext => Ok(None),
            SecurityProtocol::Ssl => {
                let prefix = format!("listener.name.{}.", name.to_ascii_lowercase());
                let get = |key: &str| {
                    self.opt(&format!("{prefix}{key}"))
                        .or_else(|| self.opt(key))
                        .map(str::to_string)
                };
                shale_security::node::NodeTls::from_settings(&get, node_id)
                    .map(Some)
                    .map_err(|e| anyhow::anyhow!("the {name} listener (node-to-node TLS): {e}"))
            }
            other => bail!(
                "listener.security.protocol.map maps the controller listener {name} to {}; \
                 nodes authenticate each other by certificate: use SSL (mutual TLS) or \
                 PLAINTEXT",
                other.name()
            ),
        }
    }

    /// A listener name's protocol in `listener.security.protocol.map`.
    pub fn security_protocol(
        &self,
        name: &str,
    ) -> anyhow::Result<shale_security::listener::SecurityProtocol> {
        for entry in self
            .str("listener.security.protocol.map")
            .split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
        {
            let (n, p) = entry.split_once(':').with_context(|| {
                format!("listener.security.protocol.map entry {entry:?}: expected NAME:PROTOCOL")
            })?;
            if n.trim().eq_ignore_ascii_case(name) {
                return p
                    .parse()
                    .map_err(|e| anyhow::anyhow!("listener.security.protocol.map: {e}"));
            }
        }
        bail!("listener {name} is not in listener.security.protocol.map")
    }

    /// Host and port of the controller listener (`controller.listener.names`, Kafka's
    /// `CONTROLLER://host:port` entry of `listeners`): where the metadata quorum's RPC
    /// binds. `None` when no listener has that name.
    pub fn controller_listener(&self) -> anyhow::Result<Option<(String, u16)>> {
        let controller = self.str("controller.listener.names");
        match self
            .str("listeners")
            .split(',')
            .map(str::trim)
            .find(|l| is_named(l, controller))
        {
            Some(l) => {
                let rest = l.split_once("://").map_or(l, |(_, r)| r);
                parse_listener(rest).map(Some)
            }
            None => Ok(None),
        }
    }

    /// `controller.quorum.voters` (`id@host:port,...`, Kafka's syntax): id to address.
    pub fn voters(&self) -> anyhow::Result<BTreeMap<u64, String>> {
        let mut out = BTreeMap::new();
        for v in self
            .str("controller.quorum.voters")
            .split(',')
            .map(str::trim)
            .filter(|v| !v.is_empty())
        {
            let (id, addr) = v.split_once('@').with_context(|| {
                format!("controller.quorum.voters entry {v}: expected id@host:port")
            })?;
            let id: u64 = id
                .trim()
                .parse()
                .with_context(|| format!("controller.quorum.voters entry {v}: bad id"))?;
            let (host, port) = parse_listener(addr)
                .with_context(|| format!("controller.quorum.voters entry {v}"))?;
            let addr = if host.contains(':') {
                format!("[{host}]:{port}")
            } else {
                format!("{host}:{port}")
            };
            if out.insert(id, addr).is_some() {
                bail!("controller.quorum.voters names node {id} twice");
            }
        }
        Ok(out)
    }

    /// Host and port clients are told to use.
    pub fn advertised(&self) -> anyhow::Result<(String, u16)> {
        match self.opt("advertised.listeners") {
            Some(l) => {
                // The entry named as the client listener; else the first that is not the
                // controller's.
                let (name, _, _) = self.client_listener()?;
                let controller = self.str("controller.listener.names");
                let entries: Vec<&str> = l.split(',').map(str::trim).collect();
                let entry = entries
                    .iter()
                    .find(|e| is_named(e, &name))
                    .or_else(|| entries.iter().find(|e| !is_named(e, controller)))
                    .copied()
                    .unwrap_or("");
                parse_listener(entry)
            }
            None => {
                let (host, port) = self.listener()?;
                // A wildcard bind address is no use to clients.
                let host = if host == "0.0.0.0" || host.is_empty() {
                    "127.0.0.1".to_string()
                } else {
                    host
                };
                Ok((host, port))
            }
        }
    }

    /// Broker-level topic config defaults explicitly set, by topic config name.
    pub fn topic_defaults(&self) -> BTreeMap<String, String> {
        TOPIC_SYNONYMS
            .iter()
            .filter(|(broker_key, _)| self.is_set(broker_key))
            .map(|(broker_key, topic_key)| {
                (topic_key.to_string(), self.str(broker_key).to_string())
            })
            .collect()
    }
}

/// Whether listener `spec` (`NAME://host:port`) has the name `name`.
fn is_named(spec: &str, name: &str) -> bool {
    spec.split_once("://")
        .is_some_and(|(n, _)| !name.is_empty() && n.eq_ignore_ascii_case(name))
}

/// Settings a listener may override under `listener.name.<name>.` (Kafka's per-listener
/// configuration), the per-listener-only JAAS entries of the SASL mechanisms, and
/// OAUTHBEARER's settings under Kafka's mechanism prefix (`listener.name.<name>.oauthbearer.`).
fn is_listener_setting(key: &str) -> bool {
    let Some(rest) = key.strip_prefix("listener.name.") else {
        return false;
    };
    let Some((_, setting)) = rest.split_once('.') else {
        return false;
    };
    let setting = match setting.strip_prefix("oauthbearer.") {
        Some(oauth) if oauth.starts_with("sasl.oauthbearer.") => oauth,
        _ => setting,
    };
    setting == "plain.sasl.jaas.config"
        || ((setting.starts_with("ssl.")
            || setting.starts_with("sasl.")
            || setting == "connections.max.reauth.ms")
            && KEYS.iter().any(|(k, _)| *k == setting))
}

/// Host and port of the first listener in `spec` (`NAME://host:port,...`).
fn parse_listener(spec: &str) -> anyhow::Result<(String, u16)> {
    let first = spec.split(',').next().unwrap_or("").trim();
    let rest = first.split_once("://").map_or(first, |(_, rest)| rest);
    let (host, port) = rest
        .rsplit_once(':')
        .with_context(|| format!("listener {first}: expected host:port"))?;
    let port = port
        .parse()
        .with_context(|| format!("listener {first}: bad port"))?;
    Ok((host.trim_matches(['[', ']']).to_string(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_then_environment_override_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shale.toml");
        std::fs::write(
            &path,
            "\"num.partitions\" = 3\n\"listeners\" = \"PLAINTEXT://0.0.0.0:19092\"\n\"log.retention.ms\" = 1000\n",
        )
        .unwrap();
        let s = Settings::load(Some(&path)).unwrap();
        assert_eq!(s.parse::<i32>("num.partitions").unwrap(), 3);
        assert_eq!(s.listener().unwrap(), ("0.0.0.0".to_string(), 19092));
        assert_eq!(s.advertised().unwrap(), ("127.0.0.1".to_string(), 19092));
        assert_eq!(
            s.topic_defaults().get("retention.ms").map(String::as_str),
            Some("1000")
        );
        assert!(!s.topic_defaults().contains_key("retention.bytes"));
    }

    #[test]
    fn a_controller_listener_and_voters_use_kafkas_syntax() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shale.toml");
        std::fs::write(
            &path,
            "\"listeners\" = \"CONTROLLER://0.0.0.0:9093,PLAINTEXT://10.0.0.2:9092\"\n\
             \"controller.quorum.voters\" = \"1@10.0.0.1:9093, 2@10.0.0.2:9093,3@[::1]:9093\"\n",
        )
        .unwrap();
        let s = Settings::load(Some(&path)).unwrap();
        assert_eq!(s.listener().unwrap(), ("10.0.0.2".to_string(), 9092));
        assert_eq!(
            s.controller_listener().unwrap(),
            Some(("0.0.0.0".to_string(), 9093))
        );
        let voters = s.voters().unwrap();
        assert_eq!(voters.len(), 3);
        assert_eq!(voters[&2], "10.0.0.2:9093");
        assert_eq!(voters[&3], "[::1]:9093");
        // No voters is the one-voter default; a malformed entry is an error.
        std::fs::write(
            &path,
            "\"controller.quorum.voters\" = \"1:10.0.0.1:9093\"\n",
        )
        .unwrap();
        assert!(Settings::load(Some(&path)).unwrap().voters().is_err());
        std::fs::write(&path, "").unwrap();
        let s = Settings::load(Some(&path)).unwrap();
        assert!(s.voters().unwrap().is_empty());
        assert_eq!(s.controller_listener().unwrap(), None);
    }

    #[test]
    fn oauthbearer_settings_are_taken_bare_per_listener_and_with_the_mechanism_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let jwks = dir.path().join("jwks.json");
        let url = format!("file://{}", jwks.display());
        let path = dir.path().join("shale.toml");
        std::fs::write(
            &path,
            format!(
                "\"listeners\" = \"SASL_PLAINTEXT://127.0.0.1:9092\"\n\
                 \"sasl.enabled.mechanisms\" = \"OAUTHBEARER\"\n\
                 \"sasl.oauthbearer.expected.issuer\" = \"https://idp.example\"\n\
                 \"listener.name.sasl_plaintext.sasl.oauthbearer.expected.audience\" = \"kafka\"\n\
                 \"listener.name.sasl_plaintext.oauthbearer.sasl.oauthbearer.jwks.endpoint.url\" = \"{url}\"\n",
            ),
        )
        .unwrap();
        let security = Settings::load(Some(&path))
            .unwrap()
            .client_listener_security()
            .unwrap();
        let oauth = security.oauth.expect("OAUTHBEARER is configured");
        assert_eq!(
            oauth.jwks.source,
            shale_security::oauth::JwksSource::File(jwks)
        );
        assert_eq!(oauth.rules.expected_audience, ["kafka"]);
        assert_eq!(
            oauth.rules.expected_issuer.as_deref(),
            Some("https://idp.example")
        );
        // The mechanism prefix takes only OAUTHBEARER's own settings, and only per listener.
        for bad in [
            "listener.name.sasl_plaintext.oauthbearer.ssl.keystore.location",
            "listener.name.sasl_plaintext.oauthbearer.sasl.oauthbearer.no.such.key",
            "oauthbearer.sasl.oauthbearer.jwks.endpoint.url",
        ] {
            std::fs::write(&path, format!("\"{bad}\" = \"x\"\n")).unwrap();
            assert!(Settings::load(Some(&path)).is_err(), "{bad} was accepted");
        }
    }

    #[test]
    fn oauthbearer_without_a_jwks_url_stops_start_up_with_the_key_to_set() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shale.toml");
        std::fs::write(
            &path,
            "\"listeners\" = \"SASL_PLAINTEXT://127.0.0.1:9092\"\n\
             \"sasl.enabled.mechanisms\" = \"OAUTHBEARER\"\n",
        )
        .unwrap();
        let err = Settings::load(Some(&path))
            .unwrap()
            .client_listener_security()
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("enables OAUTHBEARER")
                && err.contains("sasl.oauthbearer.jwks.endpoint.url"),
            "{err}"
        );
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shale.toml");
        std::fs::write(&path, "\"num.partition\" = 3\n").unwrap();
        assert!(Settings::load(Some(&path)).is_err());
    }
}
