#!/usr/bin/env bash
# Produce latency, 1-node cluster against 3-node cluster, in one run: each cluster from
# deploy/local-cluster.sh (moto S3), one confluent-kafka producer, acks=all, 1000 records/s
# of 100 B over 3 topics x 4 partitions (on 3 nodes one topic owned by each node), 3 s of
# warm-up then 30 s measured; prints p50/p99 per cluster and the 3-node / 1-node ratios
# (target: p99 ratio <= 1.2).
#
#   scripts/bench-cluster-latency.sh [--sizes 1,3] [--rounds 1] [--seconds 30] [--warmup 3]
#                                    [--rate 1000] [--value-bytes 100] [--topics 3]
#                                    [--partitions 4] [--linger-ms 5] [--slow-ms 100]
#                                    [--dir DIR (.bench-latency)]
#                                    [--base-port 9392] [--s3-port P] [--keep]
#
# The work is scripts/bench_cluster_latency.py (its --help says how each figure is taken).
# Needs the binary ($ROOT/target/release/shale or SHALE_BIN), moto[server], boto3 and
# confluent-kafka (scripts/install-test-deps.sh).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
case "${1:-}" in -h|--help) sed -n '2,16p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;; esac
exec "${PYTHON:-python3}" "$ROOT/scripts/bench_cluster_latency.py" "$@"
