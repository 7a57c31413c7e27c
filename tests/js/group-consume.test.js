// kafkajs consumer-group consumption (run by tests/e2e/test_kafkajs.py). Reads SHALE_TOPIC (3 partitions,
// 30 records each, as left by smoke.test.js) through a group subscription.
'use strict';

process.env.KAFKAJS_NO_PARTITIONER_WARNING = '1';

const test = require('node:test');
const assert = require('node:assert/strict');
const { Kafka, logLevel } = require('kafkajs');

const bootstrap = process.env.SHALE_BOOTSTRAP || '127.0.0.1:9092';
const topic = process.env.SHALE_TOPIC;
const expected = Number(process.env.SHALE_EXPECTED || '90');

test('consumer group: subscribe and read every record', { timeout: 60000 }, async () => {
  assert.ok(topic, 'SHALE_TOPIC must be set');
  const kafka = new Kafka({
    clientId: 'shale-js-group',
    brokers: [bootstrap],
    logLevel: logLevel.NOTHING,
    retry: { retries: 2, initialRetryTime: 200 },
  });
  const consumer = kafka.consumer({ groupId: `js-group-${Date.now()}`, sessionTimeout: 10000 });
  const seen = [];
  try {
    await consumer.connect();
    await consumer.subscribe({ topic, fromBeginning: true });
    await new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`only ${seen.length} of ${expected} records in 30s`)), 30000);
      consumer.on(consumer.events.CRASH, (e) => { clearTimeout(timer); reject(e.payload.error); });
      consumer.run({
        eachMessage: async ({ partition, message }) => {
          seen.push([partition, message.offset]);
          if (seen.length >= expected) { clearTimeout(timer); resolve(); }
        },
      }).catch((e) => { clearTimeout(timer); reject(e); });
    });
  } finally {
    await consumer.disconnect().catch(() => {});
  }
  assert.equal(seen.length, expected);
});
