#!/usr/bin/env bash
# Failover drill: a 3-node cluster (deploy/local-cluster.sh, moto S3); per trial a topic
# owned by one node, an idempotent acks=all producer at ~500 records/s, then kill -9 or
# SIGTERM of the owner; prints how long producers waited and whether any acknowledged
# record was lost or duplicated (exit status 1 if so).
#
#   scripts/drill-failover.sh [--trials N (20, per mode)] [--partitions P (4)]
#                             [--mode kill|term|both (both)] [--dir DIR (.drill-cluster)]
#                             [--base-port 9292] [--rate 500] [--value-bytes 100]
#                             [--prefill-bytes 2000000] [--keep]
#
# The work is scripts/drill_failover.py (its --help explains every figure). Needs the
# binary ($ROOT/target/release/shale or SHALE_BIN), moto[server], boto3 and confluent-kafka
# (scripts/install-test-deps.sh).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
case "${1:-}" in -h|--help) sed -n '2,15p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;; esac
exec "${PYTHON:-python3}" "$ROOT/scripts/drill_failover.py" "$@"
