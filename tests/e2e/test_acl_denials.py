"""One ACL denial per API family, as a Kafka client sees it against Apache Kafka's
StandardAuthorizer: the principal (carol, authenticated with SASL PLAIN, granted nothing)
gets the family's error code, and the node audits the denial."""

from __future__ import annotations

import json
import time

import pytest

pytest.importorskip("confluent_kafka")

from confluent_kafka import (ConsumerGroupTopicPartitions, Consumer, KafkaError, KafkaException,
                             Producer, TopicPartition)
from confluent_kafka.admin import (AclBinding, AclBindingFilter, AclOperation, AclPermissionType,
                                   ConfigResource, NewPartitions, NewTopic, ResourcePatternType,
                                   ResourceType)

import kproto
import test_security as ts
from clients import unique
from test_security import pki  # noqa: F401

CAROL = ("carol", "carol-secret")


@pytest.fixture(scope="module")
def node(tmp_path_factory, moto, pki):  # noqa: F811
    import harness
    n = harness.Shale(tmp_path_factory.mktemp("acl-denials"), moto=moto, protocol="SASL_SSL",
                      settings=ts.sasl_settings(pki, "PLAIN", **{"audit.enable": "true"}))
    n.start()
    admin = ts.admin_client(ts.sasl_conf(n, pki, "PLAIN", "admin", ts.ADMIN_PASSWORD))
    n.topic = unique("denied")
    admin.create_topics([NewTopic(n.topic, 1, 1)])[n.topic].result(30)
    yield n
    n.stop()


def carol(node, pki, **extra) -> dict:  # noqa: F811
    return {**ts.sasl_conf(node, pki, "PLAIN", *CAROL), **extra}


def audited_denial(node, operation: str, resource_type: str, name: str | None = None, timeout=15.0):
    log = node.data_dir / "audit" / "audit.log"
    deadline = time.time() + timeout
    while time.time() < deadline:
        for line in log.read_text().splitlines() if log.exists() else []:
            d = json.loads(line)["data"]
            if (d.get("outcome") == "denied" and d.get("principal") == "User:carol"
                    and d["operation"].lower().replace("_", "") == operation.lower().replace("_", "")
                    and d["resource"]["type"] == resource_type
                    and (name is None or d["resource"]["name"] == name)):
                return d
        time.sleep(0.2)
    raise AssertionError(f"no audited denial of {operation} on {resource_type} {name}")


def test_produce_needs_write_on_the_topic(node, pki):  # noqa: F811
    err = ts.produce_error(carol(node, pki), node.topic)
    assert err.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED
    # librdkafka learns it from Metadata (the topic is hidden from carol) before it
    # produces: the denial audited is Describe.
    audited_denial(node, "describe", "Topic", node.topic)


def test_fetch_needs_read_on_the_topic(node, pki):  # noqa: F811
    # Carol may see the topic (else librdkafka never fetches) and use her group (librdkafka
    # looks its coordinator up even for assign()), but not read the topic.
    group, topic = unique("g"), unique("visible")
    admin = ts.admin_client(ts.sasl_conf(node, pki, "PLAIN", "admin", ts.ADMIN_PASSWORD))
    admin.create_topics([NewTopic(topic, 1, 1)])[topic].result(30)
    for f in admin.create_acls([
        AclBinding(ResourceType.GROUP, group, ResourcePatternType.LITERAL, "User:carol", "*",
                   AclOperation.READ, AclPermissionType.ALLOW),
        AclBinding(ResourceType.TOPIC, topic, ResourcePatternType.LITERAL, "User:carol", "*",
                   AclOperation.DESCRIBE, AclPermissionType.ALLOW),
    ]).values():
        f.result(30)
    c = Consumer(carol(node, pki, **{"group.id": group, "enable.auto.commit": False}))
    c.assign([TopicPartition(topic, 0, 0)])
    errors = []
    deadline = time.time() + 20
    while not errors and time.time() < deadline:
        m = c.poll(0.5)
        if m is not None and m.error():
            errors.append(m.error())
    c.close()
    assert errors and errors[0].code() == KafkaError.TOPIC_AUTHORIZATION_FAILED, errors
    audited_denial(node, "read", "Topic", topic)


def test_a_consumer_group_needs_describe_on_the_group(node, pki):  # noqa: F811
    group = unique("g")
    a = ts.admin_client(carol(node, pki))
    fut = a.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group)])[group]
    with pytest.raises(KafkaException) as e:
        fut.result(30)
    assert e.value.args[0].code() == KafkaError.GROUP_AUTHORIZATION_FAILED
    audited_denial(node, "describe", "Group", group)


def test_topic_administration_needs_create_delete_and_alter(node, pki):  # noqa: F811
    a = ts.admin_client(carol(node, pki))
    created = unique("new")
    with pytest.raises(KafkaException) as e:
        a.create_topics([NewTopic(created, 1, 1)])[created].result(30)
    assert e.value.args[0].code() == KafkaError.TOPIC_AUTHORIZATION_FAILED
    with pytest.raises(KafkaException) as e:
        a.delete_topics([node.topic])[node.topic].result(30)
    assert e.value.args[0].code() == KafkaError.TOPIC_AUTHORIZATION_FAILED
    with pytest.raises(KafkaException) as e:
        a.create_partitions([NewPartitions(node.topic, 3)])[node.topic].result(30)
    assert e.value.args[0].code() == KafkaError.TOPIC_AUTHORIZATION_FAILED
    audited_denial(node, "create", "Topic", created)
    audited_denial(node, "delete", "Topic", node.topic)


def test_configs_need_describe_configs_and_alter_configs(node, pki):  # noqa: F811
    a = ts.admin_client(carol(node, pki))
    res = ConfigResource(ConfigResource.Type.TOPIC, node.topic)
    with pytest.raises(KafkaException) as e:
        a.describe_configs([res])[res].result(30)
    assert e.value.args[0].code() == KafkaError.TOPIC_AUTHORIZATION_FAILED
    audited_denial(node, "describe_configs", "Topic", node.topic)


def test_cluster_administration_needs_the_cluster(node, pki):  # noqa: F811
    a = ts.admin_client(carol(node, pki))
    acl_filter = AclBindingFilter(ResourceType.ANY, None, ResourcePatternType.ANY, None, None,
                                  AclOperation.ANY, AclPermissionType.ANY)
    with pytest.raises(KafkaException) as e:
        a.delete_acls([acl_filter])[acl_filter].result(30)
    assert e.value.args[0].code() == KafkaError.CLUSTER_AUTHORIZATION_FAILED
    # Client quotas: ALTER_CONFIGS on the cluster.
    c = kproto.Conn.to(node.bootstrap, tls=ts.tls_context(pki))
    assert ts.sasl_handshake(c, "PLAIN")[0] == 0
    assert ts.sasl_authenticate(c, f"\0{CAROL[0]}\0{CAROL[1]}".encode())[0] == 0
    (err, _, _), = kproto.alter_client_quotas(c, [({"user": "carol"}, {"producer_byte_rate": 1e9})])
    c.close()
    assert err == 31  # CLUSTER_AUTHORIZATION_FAILED
    audited_denial(node, "alter", "Cluster")


def test_a_transactional_producer_needs_write_on_its_transactional_id(node, pki):  # noqa: F811
    txn_id = unique("txn")
    p = Producer(carol(node, pki, **{"transactional.id": txn_id}))
    with pytest.raises(KafkaException) as e:
        p.init_transactions(30)
    assert e.value.args[0].code() == KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED
    audited_denial(node, "describe", "TransactionalId", txn_id)
