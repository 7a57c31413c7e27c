"""Fixtures of the end-to-end suite.

- `moto`: one moto S3 server for the session (`moto_server -H 127.0.0.1 -p PORT`, in memory);
  every broker gets its own bucket, created here.
- `shale_factory(settings=None, env=None, mode="serve")`: starts a `shale serve --config
  <tmp>/shale.toml` against moto on a free port with a tmp data dir (or `shale dev` with
  mode="dev"), waits until ApiVersions + Metadata are answered; returns a harness.Shale with
  kill9() / terminate() / restart() / objects() / log_tail().
- `broker`: one default serve broker; `dev_broker`: one `shale dev`.
- `cluster`: three `shale serve` nodes sharing one bucket, a three-voter metadata quorum
  (harness.cluster_nodes / start_cluster), as a list of harness.Shale (node ids 1, 2, 3).
- `java_cli`: the Java clients of tests/java (kafka-clients, kafka-streams), or a skip when
  that jar is not built (scripts/install-test-deps.sh builds it).

SHALE_TEST_BROKER=kafka: `shale_factory` starts the reference, an Apache Kafka 4.x broker
(harness.KafkaBroker; Shale-specific settings are ignored), so that a test's claim about Kafka
behaviour can be checked against Kafka itself. Meant for the client tests (test_java.py,
test_kafka_python.py, test_transactions.py); tests of Shale internals fail there.

Every process is killed on teardown. When a test fails, the tail of each of its brokers'
logs is attached to the failure report.
"""

from __future__ import annotations

import pytest

import clients
import harness


@pytest.fixture(autouse=True)
def _fresh_admin_clients():
    """Admin clients are cached per bootstrap address within a test (see clients.admin);
    drop them afterwards so none keeps reconnecting to a broker that is gone."""
    yield
    clients._ADMINS.clear()


@pytest.fixture(scope="session")
def moto(tmp_path_factory):
    server = harness.MotoServer(tmp_path_factory.mktemp("moto")).start()
    yield server
    server.stop()


@pytest.fixture
def shale_factory(request, moto, tmp_path):
    created: list[harness.Shale] = []
    request.node._shale_procs = created

    def make(settings: dict | None = None, env: dict | None = None, mode: str = "serve",
             start: bool = True, name: str | None = None, s3: bool = True,
             protocol: str = "PLAINTEXT") -> harness.Shale:
        if harness.reference_broker():
            node = harness.KafkaBroker(tmp_path / f"kafka{len(created) + 1}")
            created.append(node)
            return node.start() if start else node
        name = name or f"shale{len(created) + 1}"
        node = harness.Shale(tmp_path / name, mode=mode, moto=moto if (s3 and mode == "serve") else None,
                             settings=settings, env=env, name=name, protocol=protocol)
        created.append(node)
        if start:
            node.start()
        return node

    yield make
    for node in created:
        node.stop()


@pytest.fixture
def cluster(request, tmp_path, moto) -> list[harness.Shale]:
    """Three `shale serve` nodes sharing one bucket, all voters of one metadata quorum
    (harness.cluster_nodes), started together; whatever is still running is killed -9 on
    teardown."""
    nodes = harness.cluster_nodes(tmp_path, moto, 3)
    request.node._cluster_procs = nodes
    try:
        yield harness.start_cluster(nodes)
    finally:
        for n in nodes:
            n.stop()


@pytest.fixture
def broker(shale_factory) -> harness.Shale:
    return shale_factory()


@pytest.fixture
def dev_broker(shale_factory) -> harness.Shale:
    return shale_factory(mode="dev")


@pytest.fixture(scope="session")
def java_cli():
    import javaclients
    cli = javaclients.JavaClients.built()
    if cli is None:
        pytest.skip(f"tests/java is not built ({javaclients.JAVA_DIR}/target/classpath.txt missing): "
                    "run scripts/install-test-deps.sh")
    return cli


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        for node in getattr(item, "_shale_procs", []) + getattr(item, "_cluster_procs", []):
            report.sections.append((f"{node.name} log (last 150 lines of {node.log})", node.log_tail(150)))
