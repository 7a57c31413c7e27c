"""kafkajs (npm, tests/js): admin and produce through node's test runner, read back with
confluent-kafka; then a kafkajs consumer group reads everything back."""

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from clients import consume, unique

JS = Path(__file__).resolve().parents[1] / "js"

pytestmark = pytest.mark.skipif(
    shutil.which("node") is None or not (JS / "node_modules" / "kafkajs").is_dir(),
    reason="node or tests/js/node_modules missing (scripts/install-test-deps.sh)")


def node_test(script, bootstrap, topic, timeout=180, **env):
    r = subprocess.run(["node", "--test", script], cwd=JS, capture_output=True, timeout=timeout,
                       env={**os.environ, "SHALE_BOOTSTRAP": bootstrap, "SHALE_TOPIC": topic, **env})
    out = r.stdout.decode() + r.stderr.decode()
    print(out)
    return r.returncode, out


def test_kafkajs_admin_and_produce(broker):
    topic = unique("js")
    rc, out = node_test("smoke.test.js", broker.bootstrap, topic)
    assert rc == 0, out[-6000:]
    passed = re.search(r"^# pass (\d+)$", out, re.M)
    assert "# fail 0" in out and passed and int(passed.group(1)) >= 2, out[-3000:]
    got = consume(broker.bootstrap, topic, range(3))
    for p in range(3):
        recs = got[p]
        assert [r.offset for r in recs] == list(range(30))
        assert [(r.key, r.value) for r in recs] == [(f"k{p}-{i}".encode(), f"js {p}/{i}".encode()) for i in range(30)]
        assert [r.headers for r in recs] == [[("idx", f"{i}".encode())] for i in range(30)]


def test_kafkajs_consumer_group_reads_everything(broker):
    topic = unique("js-group")
    rc, out = node_test("smoke.test.js", broker.bootstrap, topic)
    assert rc == 0, out[-6000:]
    rc, out = node_test("group-consume.test.js", broker.bootstrap, topic, SHALE_EXPECTED="90")
    assert rc == 0, out[-6000:]
