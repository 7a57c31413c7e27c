// kafkajs clients as child processes of the end-to-end tests (tests/e2e/test_cluster_clients.py),
// like the Java clients of tests/java: each subcommand prints JSON lines on stdout (progress
// events while it runs, one summary line last); kafkajs's own log (WARN and up: the retriable
// errors it retries) goes to stderr.
//
//   node clients.js produce BOOTSTRAP TOPIC N BATCH DELAY_MS
//       an idempotent producer (idempotent: true, acks -1, retries unlimited as kafkajs
//       defaults them for idempotence, 100 ms to 1 s apart) sends N records key "k{i}" value
//       "v{i}", round-robin over the topic's partitions, BATCH records per send() awaited one
//       after another, DELAY_MS between sends; prints {"event":"acked","acked":n} as the
//       acknowledgements pass each 100 and a summary last: every acknowledged record
//       ({"p","o","v"}, offsets from each partition's baseOffset), the error that failed a
//       send if one did, and how many errors kafkajs logged (and retried). Exits 1 when a
//       send failed.
//   node clients.js consume BOOTSTRAP TOPIC TIMEOUT_MS
//       reads the end offsets (admin.fetchTopicOffsets), then a consumer in a new group
//       subscribes from the beginning and reads every partition up to its end offset (or
//       until the timeout); prints {"count","complete","end_offsets","records"}. Exits 1 when
//       the consumer crashed.
'use strict';

process.env.KAFKAJS_NO_PARTITIONER_WARNING = '1';

const { Kafka, logLevel } = require('kafkajs');

const emit = (o) => process.stdout.write(JSON.stringify(o) + '\n');
// process.exit() does not wait for a pending write to a pipe: exit once the last line is out.
const emitAndExit = (o, code) => process.stdout.write(JSON.stringify(o) + '\n', () => process.exit(code));

const logged = { count: 0, samples: [] };
const logCreator = () => ({ namespace, level, label, log }) => {
  const { message, timestamp, ...extra } = log;
  logged.count++;
  const line = `${timestamp} ${label} [${namespace}] ${message}`;
  if (logged.samples.length < 10 && !logged.samples.some((s) => s.endsWith(`[${namespace}] ${message}`))) {
    logged.samples.push(line);
  }
  process.stderr.write(`${line} ${JSON.stringify(extra)}\n`);
};

function client(bootstrap, clientId) {
  return new Kafka({
    clientId,
    brokers: bootstrap.split(','),
    logLevel: logLevel.WARN,
    logCreator,
    connectionTimeout: 3000,
    requestTimeout: 30000,
  });
}

async function partitionsOf(kafka, topic) {
  const admin = kafka.admin();
  await admin.connect();
  try {
    return await admin.fetchTopicOffsets(topic);
  } finally {
    await admin.disconnect();
  }
}

async function produce([bootstrap, topic, n, batch, delayMs]) {
  n = Number(n); batch = Number(batch); delayMs = Number(delayMs);
  const kafka = client(bootstrap, 'shale-js-produce');
  const partitions = (await partitionsOf(kafka, topic)).map((o) => o.partition).sort((a, b) => a - b);
  const producer = kafka.producer({
    idempotent: true,
    maxInFlightRequests: 1,
    allowAutoTopicCreation: false,
    retry: { retries: Number.MAX_SAFE_INTEGER, initialRetryTime: 100, maxRetryTime: 1000 },
  });
  const t0 = Date.now();
  const acked = [];
  let sent = 0;
  let error = null;
  await producer.connect();
  try {
    while (sent < n) {
      const messages = [];
      for (let i = sent; i < Math.min(sent + batch, n); i++) {
        messages.push({ partition: partitions[i % partitions.length], key: `k${i}`, value: `v${i}` });
      }
      const res = await producer.send({ topic, acks: -1, messages });
      sent += messages.length;
      const base = new Map(res.map((r) => [r.partition, BigInt(r.baseOffset)]));
      const before = acked.length;
      const next = new Map();
      for (const m of messages) {
        const k = next.get(m.partition) || 0n;
        next.set(m.partition, k + 1n);
        acked.push({ p: m.partition, o: Number(base.get(m.partition) + k), v: m.value });
      }
      if (Math.floor(acked.length / 100) > Math.floor(before / 100)) {
        emit({ event: 'acked', acked: acked.length, sent });
      }
      if (delayMs > 0) await new Promise((r) => setTimeout(r, delayMs));
    }
  } catch (e) {
    error = `${e.name}: ${e.message}${e.cause ? ` (cause: ${e.cause.name}: ${e.cause.message})` : ''}`;
  }
  await producer.disconnect().catch(() => {});
  emitAndExit({ sent, acked: acked.length, error, logged_errors: logged.count, logged_samples: logged.samples,
                seconds: (Date.now() - t0) / 1000, records: acked }, error ? 1 : 0);
}

async function consume([bootstrap, topic, timeoutMs]) {
  const kafka = client(bootstrap, 'shale-js-consume');
  const end = new Map((await partitionsOf(kafka, topic)).map((o) => [o.partition, Number(o.high)]));
  const pending = new Set([...end].filter(([, high]) => high > 0).map(([p]) => p));
  const consumer = kafka.consumer({ groupId: `js-readback-${Date.now()}`, sessionTimeout: 10000, maxWaitTimeInMs: 200 });
  const records = [];
  let crash = null;
  await consumer.connect();
  await consumer.subscribe({ topic, fromBeginning: true });
  await new Promise((resolve) => {
    const timer = setTimeout(resolve, Number(timeoutMs));
    const done = () => { clearTimeout(timer); resolve(); };
    consumer.on(consumer.events.CRASH, (e) => { crash = String(e.payload.error); done(); });
    if (pending.size === 0) return done();
    consumer.run({
      eachMessage: async ({ partition, message }) => {
        const o = Number(message.offset);
        records.push({ p: partition, o, v: message.value === null ? null : message.value.toString() });
        if (o + 1 >= end.get(partition)) {
          pending.delete(partition);
          if (pending.size === 0) done();
        }
      },
    }).catch((e) => { crash = String(e); done(); });
  });
  await consumer.disconnect().catch(() => {});
  emitAndExit({ count: records.length, complete: pending.size === 0 && crash === null, crash,
                end_offsets: Object.fromEntries(end), records }, crash ? 1 : 0);
}

const [cmd, ...args] = process.argv.slice(2);
const commands = { produce, consume };
if (!commands[cmd]) {
  process.stderr.write('usage: node clients.js produce|consume ... (see clients.js)\n');
  process.exit(2);
}
commands[cmd](args).catch((e) => {
  emitAndExit({ fatal: `${e.name}: ${e.message}` }, 1);
});
