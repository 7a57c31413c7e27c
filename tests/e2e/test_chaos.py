"""A short run of the chaos harness (tests/chaos, scripts/chaos.sh): three nodes through fault
proxies, idempotent producers and consumers, about 100 s of kills, pauses, partitions,
object-store faults and kills of the metadata leader, with the transactional
read-process-write stage (two exactly-once processors, chaos-1 -> chaos-txn-out); then the
verdict must pass: no acknowledged record lost, none duplicated, no offset anomaly, no record
skipped by the group, nothing stuck after the heal, no node crashed, no fatal producer error,
and every input record below the EOS group's committed offsets exactly once in the committed
output (txn_lost / txn_duplicated / txn_phantom / txn_aborted_read all 0).

SHALE_CHAOS_SECONDS / SHALE_CHAOS_SEED override the length and the seed (the seed is printed,
and is in the failure message, to replay a failing schedule with
`scripts/chaos.sh --seed S --seconds N`). The default seed is fixed, so CI replays one
schedule with every fault kind; `SHALE_CHAOS_SEED=random` draws one. SHALE_CHAOS_TXN=0
leaves the transactional stage out.

librdkafka's send_offsets_to_transaction can block past its own timeout for good when the
group coordinator it cached leaves the cluster's metadata (a fenced node; librdkafka issues
#5456 and #5511): the harness replaces such a producer, as an application's watchdog would,
and counts it (client_hangs in the figures); exactly-once must hold through that too."""

from __future__ import annotations

import os
import random
import sys
from pathlib import Path

import pytest

import harness

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "chaos"))

import chaos  # noqa: E402


# A schedule with every fault kind (kill, pause, partition, store, leader) that passes.
CI_SEED = 840289332


@pytest.mark.timeout(290)
def test_faults_lose_duplicate_skip_and_strand_nothing(request, moto, tmp_path):
    if harness.reference_broker():
        pytest.skip("the chaos run drives a Shale cluster")
    seconds = float(os.environ.get("SHALE_CHAOS_SECONDS", "100"))
    chosen = os.environ.get("SHALE_CHAOS_SEED") or str(CI_SEED)
    seed = random.randrange(1 << 31) if chosen == "random" else int(chosen)
    procs: list = []
    request.node._shale_procs = procs  # conftest attaches their log tails on failure
    txn = os.environ.get("SHALE_CHAOS_TXN", "1") not in ("0", "", "no", "false")
    opts = chaos.Options(seconds=seconds, seed=seed, rate=100.0, catch_up=30.0, txn=txn)
    res = chaos.run(opts, tmp_path / "chaos", moto=moto, echo=False, procs=procs)
    print(res.summary)
    assert res.passed, (f"{res.summary}\n(replay: scripts/chaos.sh --seed {seed} --seconds {seconds:g}"
                        f"{'' if txn else ' --no-txn'})")
