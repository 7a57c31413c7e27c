// kafkajs against Shale: admin (createTopics, fetchTopicMetadata, listTopics) and produce.
// Run by tests/e2e/test_kafkajs.py, which starts the broker, passes SHALE_BOOTSTRAP and
// SHALE_TOPIC, and reads back what was produced with confluent-kafka (assign-based, so the
// check does not depend on consumer groups). By hand:
//   SHALE_BOOTSTRAP=127.0.0.1:9092 SHALE_TOPIC=js-smoke node --test smoke.test.js
'use strict';

process.env.KAFKAJS_NO_PARTITIONER_WARNING = '1';

const test = require('node:test');
const assert = require('node:assert/strict');
const { Kafka, logLevel, CompressionTypes } = require('kafkajs');

const bootstrap = process.env.SHALE_BOOTSTRAP || '127.0.0.1:9092';
const topic = process.env.SHALE_TOPIC || `js-smoke-${Date.now()}`;

const kafka = new Kafka({
  clientId: 'shale-js-smoke',
  brokers: [bootstrap],
  logLevel: logLevel.WARN,
  connectionTimeout: 10000,
  requestTimeout: 30000,
  retry: { retries: 5, initialRetryTime: 200 },
});

test('admin: createTopics, fetchTopicMetadata, listTopics', async () => {
  const admin = kafka.admin();
  await admin.connect();
  try {
    const created = await admin.createTopics({
      topics: [{ topic, numPartitions: 3, replicationFactor: 1 }],
      waitForLeaders: true,
    });
    assert.equal(created, true);
    // creating it again is not an error for createTopics (it answers false)
    assert.equal(await admin.createTopics({ topics: [{ topic, numPartitions: 3 }] }), false);
    const md = await admin.fetchTopicMetadata({ topics: [topic] });
    assert.equal(md.topics.length, 1);
    assert.equal(md.topics[0].name, topic);
    const parts = md.topics[0].partitions.map((p) => p.partitionId).sort();
    assert.deepEqual(parts, [0, 1, 2]);
    for (const p of md.topics[0].partitions) {
      assert.equal(p.partitionErrorCode, 0);
      assert.equal(p.leader, 1);
    }
    assert.ok((await admin.listTopics()).includes(topic));
    const offsets = await admin.fetchTopicOffsets(topic);
    assert.deepEqual(offsets.map((o) => [o.partition, o.offset]).sort(), [[0, '0'], [1, '0'], [2, '0']]);
  } finally {
    await admin.disconnect();
  }
});

test('producer: send and sendBatch with acks=-1, plain and gzip', async () => {
  const producer = kafka.producer({ allowAutoTopicCreation: false });
  await producer.connect();
  try {
    // 20 records to each partition, keys and headers, no compression
    for (let p = 0; p < 3; p++) {
      const res = await producer.send({
        topic,
        acks: -1,
        messages: Array.from({ length: 20 }, (_, i) => ({
          partition: p,
          key: `k${p}-${i}`,
          value: `js ${p}/${i}`,
          headers: { idx: `${i}` },
        })),
      });
      assert.equal(res.length, 1);
      assert.equal(res[0].errorCode, 0);
      assert.equal(res[0].partition, p);
      assert.equal(res[0].baseOffset, '0');
    }
    // 10 more per partition in one gzip-compressed request to all three partitions
    const res = await producer.sendBatch({
      acks: -1,
      compression: CompressionTypes.GZIP,
      topicMessages: [{
        topic,
        messages: [0, 1, 2].flatMap((p) => Array.from({ length: 10 }, (_, i) => ({
          partition: p,
          key: `k${p}-${20 + i}`,
          value: `js ${p}/${20 + i}`,
          headers: { idx: `${20 + i}` },
        }))),
      }],
    });
    assert.deepEqual(res.map((r) => [r.partition, r.errorCode, r.baseOffset]).sort(),
      [[0, 0, '20'], [1, 0, '20'], [2, 0, '20']]);
  } finally {
    await producer.disconnect();
  }
  const admin = kafka.admin();
  await admin.connect();
  try {
    const offsets = await admin.fetchTopicOffsets(topic);
    assert.deepEqual(offsets.map((o) => [o.partition, o.high]).sort(), [[0, '30'], [1, '30'], [2, '30']]);
  } finally {
    await admin.disconnect();
  }
});
