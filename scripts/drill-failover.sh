#!/usr/bin/env bash
# Failover drill: a 3-node cluster (deploy/local-cluster.sh, moto S3); per trial a topic
# owned by one node, an idempotent acks=all producer at ~500 records/s, then kill -9 or
# SIGTERM of the owner; prints how long producers waited and whether any acknowledged
# record was lost or duplicated (exit status 1 if so).
#   --mode two-of-five: 5 nodes (5 voters); kill -9 of one partition owner, and of two at
#     once (never the metadata leader), in the same cluster: the time until every
#     partition serves again, both ways, and their ratio.
#   --mode leader: kill -9 of the metadata (Raft) leader alone: the time to the next
#     committed metadata write, whether a healthy node was fenced, and the longest produce
#     gap on partitions owned by the surviving nodes.
#
#   scripts/drill-failover.sh [--trials N (20, per mode)] [--partitions P (4)]
#                             [--mode kill|term|both|two-of-five|leader (both)]
#                             [--nodes N (3; two-of-five 5)] [--voters 1|3|5 (3; two-of-five 5)]
#                             [--dir DIR (.drill-cluster)] [--base-port 9292] [--s3-port P]
#                             [--rate 500] [--value-bytes 100] [--prefill-bytes 2000000]
#                             [--any-victims] [--keep]
#
# The work is scripts/drill_failover.py (its --help explains every figure). Needs the
# binary ($ROOT/target/release/shale or SHALE_BIN), moto[server], boto3 and confluent-kafka
# (scripts/install-test-deps.sh).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
case "${1:-}" in -h|--help) sed -n '2,22p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;; esac
exec "${PYTHON:-python3}" "$ROOT/scripts/drill_failover.py" "$@"
