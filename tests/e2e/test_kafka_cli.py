"""Apache Kafka 4.1.1's command-line tools, unchanged, against Shale: kafka-topics.sh
(org.apache.kafka.tools.TopicCommand), kafka-acls.sh (org.apache.kafka.tools.AclCommand) and
kafka-configs.sh (kafka.admin.ConfigCommand) for SCRAM users and client quotas: the main
classes bin/kafka-*.sh run, on the classpath tests/java/tools resolves (harness.kafka_tool).
Each test asserts the tool's exit status and what it prints, then checks the effect with a
real client (confluent-kafka) or a second tool call.

Two nodes serve the whole module: a PLAINTEXT one (kafka-topics.sh) and a SASL_SSL one with
the StandardAuthorizer, where the tools connect as the super user `admin` (PLAIN) through
--command-config, as an operator's would; alice and bob are PLAIN users there too, so the ACL
test does not depend on the SCRAM test's credentials. The outputs and refusals asserted here
are Kafka 4.1.1's: with SHALE_TEST_BROKER=kafka every test runs against the reference broker
(its SASL_SSL listener beside the PLAINTEXT one the harness probes).
"""

from __future__ import annotations

import re
import shutil
import ssl
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

pytest.importorskip("confluent_kafka")

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicCollection
from confluent_kafka.admin import (AdminClient, NewTopic, ScramCredentialInfo, ScramMechanism,
                                   UserScramCredentialUpsertion)

import certs
import clients
import harness
import kproto

TOPICS = "org.apache.kafka.tools.TopicCommand"  # kafka-topics.sh
ACLS = "org.apache.kafka.tools.AclCommand"      # kafka-acls.sh
CONFIGS = "kafka.admin.ConfigCommand"           # kafka-configs.sh

STANDARD_AUTHORIZER = "org.apache.kafka.metadata.authorizer.StandardAuthorizer"
ADMIN_PASSWORD = "admin-secret"
PLAIN_PASSWORDS = {"alice": "alice-plain", "bob": "bob-plain"}

pytestmark = [
    pytest.mark.skipif(shutil.which("java") is None, reason="no java on PATH"),
    pytest.mark.skipif(harness.java_classpath(harness.REPO / "tests" / "java" / "tools") is None,
                       reason="tests/java/tools is not built: run scripts/install-test-deps.sh"),
]

# The module's nodes, for the failure report (conftest attaches their logs' tails).
_NODES: list = []


@pytest.fixture(autouse=True)
def _report_module_nodes(request):
    request.node._shale_procs = _NODES


# ---- running the tools ----------------------------------------------------------------------


def tool(main: str, *args, timeout: float = 60.0) -> subprocess.CompletedProcess:
    return harness.kafka_tool(main, *args, timeout=timeout)


def shown(r: subprocess.CompletedProcess) -> str:
    args = list(map(str, r.args))
    i = next((i for i, a in enumerate(args) if a in (TOPICS, ACLS, CONFIGS)), 0)
    return (f"`{' '.join(args[i:])}` exited {r.returncode}\n--- stdout ---\n{r.stdout[-4000:]}"
            f"\n--- stderr ---\n{r.stderr[-4000:]}")


def ok(r: subprocess.CompletedProcess) -> str:
    """The tool's stdout, once it exited 0 with no error on stderr."""
    assert r.returncode == 0, shown(r)
    assert "Exception" not in r.stderr and "ERROR" not in r.stderr, shown(r)
    return r.stdout


def fails(r: subprocess.CompletedProcess, *needles: str):
    """The tool exited non-zero, printing each of `needles` (stdout or stderr)."""
    assert r.returncode != 0, shown(r)
    for n in needles:
        assert n in r.stdout + r.stderr, f"{n!r} not printed: {shown(r)}"


# ---- what the tools print ------------------------------------------------------------------


def parse_topic(out: str) -> tuple[dict, list[dict]]:
    """kafka-topics.sh --describe of one topic: its header fields (Configs as a dict) and one
    dict per partition line."""
    def fields(line):
        d = {}
        for part in line.strip().split("\t"):
            k, _, v = part.partition(": ")
            d[k] = v
        return d
    lines = [ln for ln in out.splitlines() if ln.strip()]
    head = fields(lines[0])
    head["Configs"] = dict(kv.split("=", 1) for kv in head.get("Configs", "").split(",") if kv)
    return head, [fields(ln) for ln in lines[1:]]


_RESOURCE = re.compile(r"ResourcePattern\(resourceType=(\w+), name=(.*?), patternType=(\w+)\)")
_ACE = re.compile(r"\(principal=(.*?), host=(.*?), operation=(\w+), permissionType=(\w+)\)")


def parse_acls(out: str) -> set[tuple]:
    """The bindings kafka-acls.sh prints (--add and --list print the same form):
    {(resource type, name, pattern type, principal, host, operation, permission)}."""
    found, resource = set(), None
    for line in out.splitlines():
        if m := _RESOURCE.search(line):
            resource = m.groups()
        elif m := _ACE.search(line):
            assert resource is not None, out
            found.add(resource + m.groups())
    return found


def parse_scram(out: str) -> dict[str, dict[str, int]]:
    """"SCRAM credential configs for user-principal 'alice' are SCRAM-SHA-512=iterations=4096,
    SCRAM-SHA-256=iterations=8192" lines: user -> {mechanism: iterations}."""
    users = {}
    for m in re.finditer(r"^SCRAM credential configs for user-principal '(.*)' are (.*)$", out, re.M):
        users[m[1]] = {mech: int(it) for mech, it in re.findall(r"(SCRAM-SHA-\d+)=iterations=(\d+)", m[2])}
    return users


def parse_quotas(out: str) -> dict[str, dict[str, float]]:
    """"Quota configs for <entity> are k=v, k=v" lines: entity -> {key: value}, the entity as
    printed ("user-principal 'alice'", "the default client-id", "user-principal 'alice',
    client-id 'app'")."""
    entities = {}
    for m in re.finditer(r"^Quota configs for (.*) are (.*)$", out, re.M):
        entities[m[1]] = {k: float(v) for k, v in (kv.split("=", 1) for kv in m[2].split(", "))}
    return entities


# ---- nodes ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def plain(moto, tmp_path_factory):
    d = tmp_path_factory.mktemp("cli-plain")
    node = harness.KafkaBroker(d / "kafka") if harness.reference_broker() else \
        harness.Shale(d, moto=moto, name="plain")
    _NODES.append(node)
    try:
        yield node.start()
    finally:
        node.stop()


@dataclass
class Secured:
    node: harness.Shale
    bootstrap: str  # the SASL_SSL listener
    ca: Path
    dir: Path
    admin_config: Path

    def command_config(self, user: str, password: str) -> Path:
        """The client properties a tool is given with --command-config: SASL_SSL, PLAIN as
        `user`, the test CA as a PEM trust store."""
        path = self.dir / f"{user}.properties"
        path.write_text(
            "security.protocol=SASL_SSL\nsasl.mechanism=PLAIN\n"
            "sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required "
            f'username="{user}" password="{password}";\n'
            f"ssl.truststore.type=PEM\nssl.truststore.location={self.ca}\n")
        return path

    def conf(self, user: str, password: str, mechanism: str = "PLAIN", **extra) -> dict:
        """confluent-kafka settings logging in as `user`."""
        return {"bootstrap.servers": self.bootstrap, "security.protocol": "SASL_SSL",
                "ssl.ca.location": str(self.ca), "sasl.mechanism": mechanism,
                "sasl.username": user, "sasl.password": password, **extra}

    def admin(self) -> AdminClient:
        return clients.admin(self.bootstrap, **{k: v for k, v in self.conf("admin", ADMIN_PASSWORD).items()
                                                if k != "bootstrap.servers"})

    def run(self, main: str, *args, user: str = "admin", password: str = ADMIN_PASSWORD):
        """The tool against this node as `user` (the super user by default)."""
        config = self.admin_config if user == "admin" else self.command_config(user, password)
        return tool(main, "--bootstrap-server", self.bootstrap, "--command-config", config, *args)


@pytest.fixture(scope="module")
def secured(moto, tmp_path_factory):
    d = tmp_path_factory.mktemp("cli-sasl")
    ca = certs.CA(d / "pki")
    cert = ca.issue("broker", "CN=localhost")
    users = " ".join(f'user_{u}="{p}"' for u, p in {"admin": ADMIN_PASSWORD, **PLAIN_PASSWORDS}.items())
    common = {
        "sasl.enabled.mechanisms": "PLAIN,SCRAM-SHA-256,SCRAM-SHA-512",
        "listener.name.sasl_ssl.plain.sasl.jaas.config":
            f"org.apache.kafka.common.security.plain.PlainLoginModule required {users};",
        "authorizer.class.name": STANDARD_AUTHORIZER,
    }
    if harness.reference_broker():
        # Kafka: SASL_SSL beside the PLAINTEXT listener the harness probes, which also carries
        # the broker's own traffic (ANONYMOUS, a super user there); a PEM keystore holds the
        # key and the certificate in one file.
        node = harness.KafkaBroker(d / "kafka", name="sasl")
        port = harness.free_port()
        keystore = d / "broker-keystore.pem"
        keystore.write_text(cert.key.read_text() + cert.cert.read_text())
        node.settings.update({
            **common,
            "listeners": f"PLAINTEXT://127.0.0.1:{node.port},SASL_SSL://127.0.0.1:{port},"
                         f"CONTROLLER://127.0.0.1:{node.controller_port}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{node.port},SASL_SSL://127.0.0.1:{port}",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,SASL_SSL:SASL_SSL,CONTROLLER:PLAINTEXT",
            "listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config":
                "org.apache.kafka.common.security.scram.ScramLoginModule required;",
            "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config":
                "org.apache.kafka.common.security.scram.ScramLoginModule required;",
            "ssl.keystore.type": "PEM",
            "ssl.keystore.location": str(keystore),
            "super.users": "User:admin;User:ANONYMOUS",
        })
        bootstrap = f"127.0.0.1:{port}"
    else:
        node = harness.Shale(d, moto=moto, name="sasl", protocol="SASL_SSL", settings={
            **common,
            "ssl.keystore.type": "PEM",
            "ssl.certificate.location": str(cert.cert),
            "ssl.key.location": str(cert.key),
            "ssl.truststore.location": str(ca.pem),
            "ssl.client.auth": "none",
            "super.users": "User:admin",
        })
        bootstrap = node.bootstrap
    _NODES.append(node)
    try:
        node.start()
        s = Secured(node, bootstrap, ca.pem, d, d / "admin.properties")
        s.command_config("admin", ADMIN_PASSWORD)
        yield s
    finally:
        node.stop()


def require_quota_apis(s: Secured):
    """The node advertises DescribeClientQuotas (48) and AlterClientQuotas (49):
    kafka-configs.sh needs them for quotas, and for --describe of users at all."""
    with kproto.Conn.to(s.bootstrap, timeout=10, tls=ssl.create_default_context(cafile=str(s.ca))) as c:
        err, versions = kproto.api_versions(c)
    assert err == 0
    assert 48 in versions and 49 in versions, versions


# ---- client checks --------------------------------------------------------------------------


def authenticates(conf: dict) -> bool:
    """Whether a client with `conf` logs in (and gets a Metadata answer)."""
    refused = []
    a = AdminClient({**conf, "socket.timeout.ms": 5000,
                     "error_cb": lambda e: refused.append(e) if e.code() == KafkaError._AUTHENTICATION else None})
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            a.list_topics(timeout=0.5)
            return True
        except KafkaException:
            a.poll(0)  # serves error_cb
            if refused:
                return False
    raise AssertionError("neither logged in nor refused within 15 s")


def deliver(conf: dict, topic: str, value: bytes):
    """The error the one record is delivered with (None: acknowledged)."""
    got = []
    p = Producer({**conf, "message.timeout.ms": 15000, "linger.ms": 0})
    p.produce(topic, value, on_delivery=lambda err, msg: got.append(err))
    p.flush(30)
    assert got, "no delivery report"
    return got[0]


def consume_in_group(conf: dict, topic: str, group: str, want: set[bytes]) -> set[bytes]:
    """Subscribes in `group`, reads until every value of `want` came, commits."""
    c = Consumer({**conf, "group.id": group, "auto.offset.reset": "earliest", "enable.auto.commit": False})
    seen = set()
    try:
        c.subscribe([topic])
        deadline = time.monotonic() + 30
        while not want <= seen and time.monotonic() < deadline:
            m = c.poll(0.5)
            if m is None:
                continue
            if m.error():
                raise KafkaException(m.error())
            seen.add(m.value())
        c.commit(asynchronous=False)
    finally:
        c.close()
    return seen


# ---- kafka-topics.sh ------------------------------------------------------------------------


def test_kafka_topics_creates_lists_describes_alters_and_deletes_a_topic(plain):
    b = ["--bootstrap-server", plain.bootstrap]
    topic = "orders"
    out = ok(tool(TOPICS, *b, "--create", "--topic", topic, "--partitions", 3, "--replication-factor", 1,
                  "--config", "retention.ms=3600000"))
    assert out.strip() == f"Created topic {topic}."
    admin = clients.admin(plain.bootstrap)
    assert len(admin.list_topics(topic, timeout=30).topics[topic].partitions) == 3

    listed = ok(tool(TOPICS, *b, "--list", "--exclude-internal")).split()
    assert topic in listed and not [t for t in listed if t.startswith("__")], listed

    head, partitions = parse_topic(ok(tool(TOPICS, *b, "--describe", "--topic", topic)))
    assert (head["Topic"], head["PartitionCount"], head["ReplicationFactor"]) == (topic, "3", "1"), head
    assert head["Configs"]["retention.ms"] == "3600000", head
    described = admin.describe_topics(TopicCollection([topic]))[topic].result(30)
    # librdkafka prints topic ids in standard base64, Kafka in URL-safe base64.
    assert head["TopicId"] == str(described.topic_id).replace("+", "-").replace("/", "_"), head
    assert [(p["Partition"], p["Leader"], p["Replicas"], p["Isr"]) for p in partitions] == \
        [(str(i), "1", "1", "1") for i in range(3)], partitions

    assert ok(tool(TOPICS, *b, "--alter", "--topic", topic, "--partitions", 4)).strip() == ""
    assert len(admin.list_topics(topic, timeout=30).topics[topic].partitions) == 4
    fails(tool(TOPICS, *b, "--alter", "--topic", topic, "--partitions", 2),
          "The topic orders currently has 4 partition(s); 2 would not be an increase.")
    fails(tool(TOPICS, *b, "--create", "--topic", topic, "--partitions", 1),
          f"Topic '{topic}' already exists.")

    assert ok(tool(TOPICS, *b, "--delete", "--topic", topic)).strip() == ""
    deadline = time.monotonic() + 15
    while topic in admin.list_topics(timeout=30).topics:
        assert time.monotonic() < deadline, "the deleted topic is still listed"
        time.sleep(0.2)
    fails(tool(TOPICS, *b, "--describe", "--topic", topic), f"Topic '{topic}' does not exist as expected")


# ---- kafka-configs.sh: SCRAM credentials -----------------------------------------------------


def stored_scram(s: Secured, user: str) -> dict:
    """{mechanism name: iterations} of the user's credentials, as DescribeUserScramCredentials
    answers the admin (confluent-kafka)."""
    described = s.admin().describe_user_scram_credentials()  # every user
    if isinstance(described, dict):  # confluent-kafka answers a dict of futures or one future
        described = {u: f.result(30) for u, f in described.items()}
    else:
        described = described.result(30)
    if user not in described:
        return {}
    names = {ScramMechanism.SCRAM_SHA_256: "SCRAM-SHA-256", ScramMechanism.SCRAM_SHA_512: "SCRAM-SHA-512"}
    return {names[c.mechanism]: c.iterations for c in described[user].scram_credential_infos}


def test_kafka_configs_adds_and_deletes_scram_credentials_that_clients_log_in_with(secured):
    s = secured
    user = ["--entity-type", "users", "--entity-name", "alice"]
    # Both mechanisms in one command, as Kafka's documentation writes it: ConfigCommand sends
    # both upsertions in one AlterUserScramCredentials request, and Kafka 4.1.1's controller
    # refuses a second change of one user in a request (ScramControlManager), so Kafka fails
    # this very command the same way; nothing is stored.
    fails(s.run(CONFIGS, "--alter", *user, "--add-config",
                "SCRAM-SHA-256=[iterations=8192,password=alice-secret],SCRAM-SHA-512=[password=alice-secret]"),
          "DuplicateResourceException: A user credential cannot be altered twice in the same request")
    assert stored_scram(s, "alice") == {}

    # One mechanism per command works.
    out = ok(s.run(CONFIGS, "--alter", *user, "--add-config", "SCRAM-SHA-256=[iterations=8192,password=alice-secret]"))
    assert out.strip() == "Completed updating config for user alice."
    out = ok(s.run(CONFIGS, "--alter", *user, "--add-config", "SCRAM-SHA-512=[password=alice-secret]"))
    assert out.strip() == "Completed updating config for user alice."
    assert stored_scram(s, "alice") == {"SCRAM-SHA-256": 8192, "SCRAM-SHA-512": 4096}
    assert authenticates(s.conf("alice", "alice-secret", "SCRAM-SHA-512"))
    assert authenticates(s.conf("alice", "alice-secret", "SCRAM-SHA-256"))
    assert not authenticates(s.conf("alice", "wrong", "SCRAM-SHA-512"))

    out = ok(s.run(CONFIGS, "--alter", *user, "--delete-config", "SCRAM-SHA-512"))
    assert out.strip() == "Completed updating config for user alice."
    assert stored_scram(s, "alice") == {"SCRAM-SHA-256": 8192}
    assert not authenticates(s.conf("alice", "alice-secret", "SCRAM-SHA-512"))
    assert authenticates(s.conf("alice", "alice-secret", "SCRAM-SHA-256"))

    ok(s.run(CONFIGS, "--alter", *user, "--delete-config", "SCRAM-SHA-256"))
    assert stored_scram(s, "alice") == {}
    assert not authenticates(s.conf("alice", "alice-secret", "SCRAM-SHA-256"))
    fails(s.run(CONFIGS, "--alter", *user, "--delete-config", "SCRAM-SHA-256"),
          "ResourceNotFoundException: Attempt to delete a user credential that does not exist")
    # The broker's bound (16384); the tool itself checks the lower one (4096).
    fails(s.run(CONFIGS, "--alter", *user, "--add-config", "SCRAM-SHA-256=[iterations=20000,password=x]"),
          "UnacceptableCredentialException: Too many iterations")
    assert stored_scram(s, "alice") == {}


def test_kafka_configs_describes_scram_credentials(secured):
    s = secured
    # kafka-configs.sh --describe --entity-type users asks DescribeClientQuotas too: without
    # it the tool fails ("The node does not support DESCRIBE_CLIENT_QUOTAS").
    require_quota_apis(s)
    for kind, iterations in ((ScramMechanism.SCRAM_SHA_256, 8192), (ScramMechanism.SCRAM_SHA_512, 4096)):
        for f in s.admin().alter_user_scram_credentials(
                [UserScramCredentialUpsertion("carol", ScramCredentialInfo(kind, iterations), b"carol-secret")]).values():
            f.result(30)
    out = ok(s.run(CONFIGS, "--describe", "--entity-type", "users", "--entity-name", "carol"))
    assert parse_scram(out) == {"carol": {"SCRAM-SHA-256": 8192, "SCRAM-SHA-512": 4096}}, out
    out = ok(s.run(CONFIGS, "--describe", "--entity-type", "users"))
    assert parse_scram(out)["carol"] == {"SCRAM-SHA-256": 8192, "SCRAM-SHA-512": 4096}, out


# ---- kafka-acls.sh --------------------------------------------------------------------------


def test_kafka_acls_grants_lists_and_removes_what_clients_may_do(secured):
    s = secured
    # kafka-topics.sh over SASL_SSL as the super user, then two more topics with the Admin API.
    assert ok(s.run(TOPICS, "--create", "--topic", "payments", "--partitions", 1)).strip() == \
        "Created topic payments."
    for f in s.admin().create_topics([NewTopic("audit-2026", 1, 1), NewTopic("audit-locked", 1, 1)]).values():
        f.result(30)
    alice = s.conf("alice", PLAIN_PASSWORDS["alice"])
    bob = s.conf("bob", PLAIN_PASSWORDS["bob"])
    assert deliver(alice, "payments", b"too early").code() == KafkaError.TOPIC_AUTHORIZATION_FAILED

    topic = ("TOPIC", "payments", "LITERAL")
    out = ok(s.run(ACLS, "--add", "--allow-principal", "User:alice", "--operation", "Read",
                   "--operation", "Write", "--topic", "payments"))
    assert parse_acls(out) == {topic + ("User:alice", "*", op, "ALLOW") for op in ("READ", "WRITE")}, out
    group = ("GROUP", "payments-app", "LITERAL")
    out = ok(s.run(ACLS, "--add", "--allow-principal", "User:alice", "--operation", "Read",
                   "--group", "payments-app"))
    assert parse_acls(out) == {group + ("User:alice", "*", "READ", "ALLOW")}, out
    prefixed = ("TOPIC", "audit-", "PREFIXED")
    out = ok(s.run(ACLS, "--add", "--allow-principal", "User:alice", "--operation", "Write",
                   "--topic", "audit-", "--resource-pattern-type", "prefixed"))
    assert parse_acls(out) == {prefixed + ("User:alice", "*", "WRITE", "ALLOW")}, out
    locked = ("TOPIC", "audit-locked", "LITERAL")
    ok(s.run(ACLS, "--add", "--deny-principal", "User:alice", "--operation", "Write", "--topic", "audit-locked"))

    everything = {topic + ("User:alice", "*", "READ", "ALLOW"), topic + ("User:alice", "*", "WRITE", "ALLOW"),
                  group + ("User:alice", "*", "READ", "ALLOW"), prefixed + ("User:alice", "*", "WRITE", "ALLOW"),
                  locked + ("User:alice", "*", "WRITE", "DENY")}
    out = ok(s.run(ACLS, "--list"))
    assert parse_acls(out) == everything, out
    # --resource-pattern-type match: every binding that applies to the topic named.
    out = ok(s.run(ACLS, "--list", "--topic", "audit-locked", "--resource-pattern-type", "match"))
    assert parse_acls(out) == {prefixed + ("User:alice", "*", "WRITE", "ALLOW"),
                               locked + ("User:alice", "*", "WRITE", "DENY")}, out

    # What they mean to clients: alice writes and reads payments in her group, writes under
    # the prefix except where denied; bob has no grant.
    assert deliver(alice, "payments", b"paid by alice") is None
    assert b"paid by alice" in consume_in_group(alice, "payments", "payments-app", {b"paid by alice"})
    assert deliver(alice, "audit-2026", b"audited") is None
    assert deliver(alice, "audit-locked", b"locked").code() == KafkaError.TOPIC_AUTHORIZATION_FAILED
    assert deliver(bob, "payments", b"paid by bob").code() == KafkaError.TOPIC_AUTHORIZATION_FAILED
    # Nor may bob manage ACLs (ALTER on the cluster).
    fails(s.run(ACLS, "--add", "--allow-principal", "User:bob", "--operation", "All", "--topic", "payments",
                user="bob", password=PLAIN_PASSWORDS["bob"]),
          "ClusterAuthorizationException")

    ok(s.run(ACLS, "--remove", "--force", "--allow-principal", "User:alice", "--operation", "Read",
             "--operation", "Write", "--topic", "payments"))
    assert ok(s.run(ACLS, "--list", "--topic", "payments")).strip() == ""
    assert deliver(alice, "payments", b"too late").code() == KafkaError.TOPIC_AUTHORIZATION_FAILED
    assert deliver(alice, "audit-2026", b"still allowed") is None


# ---- kafka-configs.sh: client quotas ---------------------------------------------------------


def test_kafka_configs_sets_describes_and_deletes_client_quotas(secured):
    s = secured
    require_quota_apis(s)
    alice = ["--entity-type", "users", "--entity-name", "alice"]
    alice_app = alice + ["--entity-type", "clients", "--entity-name", "app"]

    out = ok(s.run(CONFIGS, "--alter", *alice, "--add-config", "producer_byte_rate=1024,consumer_byte_rate=2048"))
    assert out.strip() == "Completed updating config for user alice."
    out = ok(s.run(CONFIGS, "--describe", *alice))
    assert parse_quotas(out) == {"user-principal 'alice'": {"producer_byte_rate": 1024.0,
                                                            "consumer_byte_rate": 2048.0}}, out

    out = ok(s.run(CONFIGS, "--alter", "--entity-type", "clients", "--entity-default",
                   "--add-config", "request_percentage=50"))
    assert out.strip() == "Completed updating default config for clients in the cluster."
    out = ok(s.run(CONFIGS, "--alter", *alice_app, "--add-config", "producer_byte_rate=4096"))
    assert out.strip() == "Completed updating config for user alice."
    out = ok(s.run(CONFIGS, "--alter", "--entity-type", "users", "--entity-default",
                   "--add-config", "consumer_byte_rate=100000"))
    assert out.strip() == "Completed updating default config for users in the cluster."

    out = ok(s.run(CONFIGS, "--describe", *alice_app))
    assert parse_quotas(out) == {"user-principal 'alice', client-id 'app'": {"producer_byte_rate": 4096.0}}, out
    # Every user: the entities of the user alone, named or default; not <user, client-id>.
    out = ok(s.run(CONFIGS, "--describe", "--entity-type", "users"))
    assert parse_quotas(out) == {
        "user-principal 'alice'": {"producer_byte_rate": 1024.0, "consumer_byte_rate": 2048.0},
        "the default user-principal": {"consumer_byte_rate": 100000.0}}, out
    out = ok(s.run(CONFIGS, "--describe", "--entity-type", "clients"))
    assert parse_quotas(out) == {"the default client-id": {"request_percentage": 50.0}}, out

    out = ok(s.run(CONFIGS, "--alter", *alice, "--delete-config", "producer_byte_rate,consumer_byte_rate"))
    assert out.strip() == "Completed updating config for user alice."
    out = ok(s.run(CONFIGS, "--describe", "--entity-type", "users"))
    assert parse_quotas(out) == {"the default user-principal": {"consumer_byte_rate": 100000.0}}, out


def test_kafka_configs_refuses_quotas_kafka_refuses(secured):
    s = secured
    require_quota_apis(s)
    alice = ["--entity-type", "users", "--entity-name", "alice"]
    # Unknown keys are refused by the tool itself (as against Kafka), ...
    fails(s.run(CONFIGS, "--alter", *alice, "--add-config", "foo_rate=1"),
          "Only quota and SCRAM credential configs can be added for 'users' using --bootstrap-server. "
          "Unexpected config names: Set(foo_rate)")
    # ... a fractional byte rate by the broker: INVALID_REQUEST (Kafka 4.1.1's message is
    # "producer_byte_rate cannot be a fractional value.").
    fails(s.run(CONFIGS, "--alter", *alice, "--add-config", "producer_byte_rate=1.5"),
          "InvalidRequestException: ", "producer_byte_rate")
    out = ok(s.run(CONFIGS, "--describe", *alice))
    assert "user-principal 'alice'" not in parse_quotas(out), out
