#!/usr/bin/env python3
"""Acceptance check for crash safety, outside the test suite.

A producer process writes RECORDS records over PARTITIONS partitions with acks=all (each
carrying its per-partition sequence number, idempotence off, no retries); once a quarter of
them are acknowledged the broker is killed with SIGKILL and restarted on the same data;
the producer carries on. Then every partition is read back and checked: every acknowledged
record is read back exactly once, at its acknowledged offset, in produce order.

By default the script starts `shale dev` itself on a temporary directory (local object
store); --s3 starts a moto S3 server and `shale serve` against it instead. With --bootstrap
and --pid it uses a broker you started: it kills PID and waits for the broker to be back
(restart it yourself, or under a supervisor).

    scripts/crash-check.py                      # 100k records, 8 partitions, shale dev
    scripts/crash-check.py --s3 --records 200000
    scripts/crash-check.py --bootstrap 127.0.0.1:9092 --pid 12345

Needs confluent-kafka (and moto for --s3): scripts/install-test-deps.sh installs them.
Exit status 0 when the contract holds, 1 when it does not.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

E2E = Path(__file__).resolve().parents[1] / "tests" / "e2e"
sys.path.insert(0, str(E2E))

import harness  # noqa: E402
import kproto  # noqa: E402
from clients import consume, create_topic, unique  # noqa: E402
from load_producer import count_lines, read_acked, verify  # noqa: E402


def wait_serving(bootstrap: str, timeout: float):
    deadline = time.monotonic() + timeout
    while True:
        try:
            with kproto.Conn.to(bootstrap, timeout=5) as c:
                if kproto.api_versions(c)[0] == 0:
                    kproto.metadata(c, version=1)
                    return
        except (OSError, kproto.Closed, ValueError, AssertionError):
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"broker at {bootstrap} not serving after {timeout}s")
        time.sleep(0.2)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=100_000)
    ap.add_argument("--partitions", type=int, default=8)
    ap.add_argument("--kill-after", type=int, default=0, help="acked records before the kill (default: records/4)")
    ap.add_argument("--rate", type=float, default=0, help="producer records/s (default: as fast as it goes)")
    ap.add_argument("--s3", action="store_true", help="moto S3 server + shale serve instead of shale dev")
    ap.add_argument("--bootstrap", help="use a running broker (with --pid)")
    ap.add_argument("--pid", type=int, help="process id of the broker at --bootstrap, killed with SIGKILL")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = ap.parse_args()
    if bool(args.bootstrap) != bool(args.pid):
        ap.error("--bootstrap and --pid go together")
    kill_after = args.kill_after or args.records // 4

    tmp = Path(tempfile.mkdtemp(prefix="shale-crash-check-"))
    moto = node = None
    try:
        if args.bootstrap:
            bootstrap = args.bootstrap
        else:
            if args.s3:
                moto = harness.MotoServer(tmp / "moto").start()
            node = harness.Shale(tmp / "shale", mode="serve" if args.s3 else "dev", moto=moto,
                                 settings={"wal.batch.interval.ms": 20})
            node.start()
            bootstrap = node.bootstrap
        print(f"broker: {bootstrap} ({'external' if args.bootstrap else 'shale ' + node.mode})  "
              f"work dir: {tmp}")

        topic = create_topic(bootstrap, unique("crash-check"), partitions=args.partitions)
        acked_file = tmp / "acked.txt"
        cmd = [sys.executable, str(E2E / "load_producer.py"), "--bootstrap", bootstrap, "--topic", topic,
               "--partitions", str(args.partitions), "--count", str(args.records),
               "--acked-file", str(acked_file)]
        if args.rate:
            cmd += ["--rate", str(args.rate)]
        t0 = time.monotonic()
        producer = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        while count_lines(acked_file) < kill_after:
            if producer.poll() is not None:
                raise SystemExit(f"producer ended before the kill: {producer.communicate()}")
            time.sleep(0.02)
        if producer.poll() is not None:
            raise SystemExit("producer already finished: nothing in flight to kill under")
        if args.bootstrap:
            import os
            import signal
            os.kill(args.pid, signal.SIGKILL)
        else:
            node.kill9()
        acked_at_kill = count_lines(acked_file)
        t_kill = time.monotonic()
        print(f"killed the broker with SIGKILL after {acked_at_kill} acknowledged records "
              f"({t_kill - t0:.1f}s into the load)")
        if args.bootstrap:
            print("waiting for the broker to be restarted ...")
            wait_serving(bootstrap, 600)
        else:
            node.restart()
        print(f"broker serving again after {time.monotonic() - t_kill:.1f}s")
        out, err = producer.communicate(timeout=900)
        if producer.returncode != 0:
            raise SystemExit(f"producer failed: {err.decode()[-3000:]}")
        summary = json.loads(out.decode().strip().splitlines()[-1])
        print(f"producer: {summary}")

        t_read = time.monotonic()
        got = consume(bootstrap, topic, range(args.partitions), timeout=600)
        read = {p: [(r.offset, r.value) for r in recs] for p, recs in got.items()}
        acked = read_acked(acked_file)
        print(f"read back {sum(len(v) for v in read.values())} records in {time.monotonic() - t_read:.1f}s")
        try:
            figures = verify(acked, read)
        except AssertionError as e:
            print(f"FAIL: {e}")
            return 1
        print("per partition (acked / read):",
              ", ".join(f"{p}: {len(acked.get(p, []))}/{len(read.get(p, []))}" for p in range(args.partitions)))
        print(f"OK: {figures['acked']} acknowledged records all read back exactly once, in order, at their "
              f"acknowledged offsets; {figures['read_unacked']} unacknowledged records also present "
              f"(allowed); {figures['duplicates']} duplicates; "
              f"{summary['failed']} deliveries failed at the crash ({summary['errors']})")
        if node is not None and moto is not None:
            print(f"objects in the bucket: {len(node.objects())}")
        return 0
    finally:
        if node is not None:
            node.stop()
        if moto is not None:
            moto.stop()
        if not args.keep:
            import shutil
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
