"""`shale dev`: zero-configuration single node with a local-directory object store."""

from clients import assert_contiguous, consume, create_topic, produce_all, producer


def test_dev_round_trip_and_restart(dev_broker):
    b = dev_broker
    topic = create_topic(b.bootstrap, partitions=2)
    sent = [{"partition": i % 2, "key": b"%d" % i, "value": b"dev%d" % i} for i in range(500)]
    produce_all(producer(b.bootstrap), topic, sent)
    assert "bootstrap: 127.0.0.1:%d" % b.port in b.log.read_text(errors="replace")
    objects = [p for p in (b.data_dir / "objects").rglob("*") if p.is_file()]
    assert objects, "records must be in the local object store under DATA_DIR/objects"
    assert b.terminate() == 0
    b.restart()
    got = consume(b.bootstrap, topic, [0, 1])
    for q in (0, 1):
        assert [r.value for r in got[q]] == [s["value"] for s in sent if s["partition"] == q]
        assert_contiguous(got[q])


def test_dev_survives_kill9(dev_broker):
    b = dev_broker
    topic = create_topic(b.bootstrap, partitions=1)
    produce_all(producer(b.bootstrap), topic, [{"value": b"v%d" % i} for i in range(300)])
    b.kill9()
    b.restart()
    produce_all(producer(b.bootstrap), topic, [{"value": b"w%d" % i} for i in range(10)])
    got = consume(b.bootstrap, topic, [0])[0]
    assert [r.value for r in got] == [b"v%d" % i for i in range(300)] + [b"w%d" % i for i in range(10)]
    assert_contiguous(got)


def test_dev_honours_shale_environment_overrides(shale_factory):
    b = shale_factory(mode="dev", settings={"num.partitions": 4})
    topic = "auto-dev-topic"
    produce_all(producer(b.bootstrap), topic, [{"value": b"x"}])
    from clients import admin
    assert len(admin(b.bootstrap).list_topics(timeout=30).topics[topic].partitions) == 4
