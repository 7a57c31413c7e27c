#!/usr/bin/env bash
# A fault harness for a Shale cluster, modelled on Jepsen's Kafka checkers: starts a moto S3
# server, fault proxies and a cluster, runs an idempotent-producer / consumer workload while
# killing, pausing, partitioning nodes, failing the object store and killing the metadata
# leader, heals, checks the history for lost / duplicated / skipped records and offset
# anomalies (and, unless --no-txn, a transactional read-process-write stage for exactly-once:
# txn_lost / txn_duplicated / txn_phantom / txn_aborted_read), prints a one-line verdict and
# a few figures. Exit 0 on PASS, 1 on FAIL,
# 2 when the harness itself failed.
#
# Usage: scripts/chaos.sh [--nodes 3] [--seconds N] [--faults kill,pause,partition,store,leader]
#                         [--seed S] [--dir DIR] [--keep] [--rate MSGS_PER_S] [--txn|--no-txn] [--quiet]
# Environment: SHALE_BIN  shale binary (default: target/release/shale); PYTHON (python3).
# See tests/chaos/chaos.py.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
exec "${PYTHON:-python3}" "$ROOT/tests/chaos/chaos.py" "$@"
