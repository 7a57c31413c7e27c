#!/usr/bin/env python3
"""End-to-end latency with a live consumer: a producer sends 1 KiB records at a fixed rate
(acks=all) over 8 partitions with its send time in the payload; a consumer (assign, no group)
reads them and records receive - send. Prints p50/p99/max.

    python3 benches/e2e_latency.py --bootstrap 127.0.0.1:9092 --rate 1000 --seconds 20

Starts nothing itself: point it at a running broker (`shale dev`). The topic (default
`latency`, 8 partitions) is created if missing.
"""
import argparse
import struct
import threading
import time

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bootstrap", default="127.0.0.1:9092")
    ap.add_argument("--topic", default="latency")
    ap.add_argument("--partitions", type=int, default=8)
    ap.add_argument("--rate", type=int, default=1000)
    ap.add_argument("--seconds", type=int, default=20)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--linger-ms", type=int, default=5, help="producer linger.ms (librdkafka's default is 5)")
    a = ap.parse_args()

    admin = AdminClient({"bootstrap.servers": a.bootstrap})
    for f in admin.create_topics([NewTopic(a.topic, a.partitions, 1)]).values():
        try:
            f.result()
        except Exception as e:  # already exists
            if "TOPIC_ALREADY_EXISTS" not in str(e):
                raise

    total = a.rate * a.seconds
    lat = []
    done = threading.Event()

    consumer = Consumer({"bootstrap.servers": a.bootstrap, "group.id": "latency-bench",
                         "enable.auto.commit": False, "fetch.wait.max.ms": 500})
    consumer.assign([TopicPartition(a.topic, p, -1) for p in range(a.partitions)])  # -1: end

    def consume():
        while len(lat) < total and not done.is_set():
            # A short timeout: consume() waits for its whole timeout unless the batch fills.
            for m in consumer.consume(1000, 0.005):
                if m.error() or len(m.value()) < 8:
                    continue
                sent = struct.unpack(">d", m.value()[:8])[0]
                lat.append((time.time() - sent) * 1000.0)
    t = threading.Thread(target=consume)
    t.start()
    time.sleep(2)  # let the consumer's first fetches be in place

    producer = Producer({"bootstrap.servers": a.bootstrap, "acks": "all", "linger.ms": a.linger_ms})
    pad = b"x" * (a.size - 8)
    start = time.time()
    for i in range(total):
        due = start + i / a.rate
        now = time.time()
        if due > now:
            time.sleep(due - now)
        producer.produce(a.topic, value=struct.pack(">d", time.time()) + pad,
                         partition=i % a.partitions)
        producer.poll(0)
    producer.flush(30)
    t.join(timeout=30)
    done.set()
    consumer.close()
    lat.sort()
    if not lat:
        raise SystemExit("no records consumed")
    pick = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))]
    print(f"records {len(lat)}/{total} at {a.rate} msg/s: end-to-end latency "
          f"p50 {pick(0.50):.1f} ms, p99 {pick(0.99):.1f} ms, max {lat[-1]:.1f} ms")


if __name__ == "__main__":
    main()
