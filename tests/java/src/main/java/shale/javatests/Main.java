package shale.javatests;

import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.HashMap;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.Properties;
import java.util.TreeMap;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.Future;
import java.util.concurrent.atomic.AtomicInteger;
import java.util.concurrent.atomic.AtomicReference;

import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.consumer.KafkaConsumer;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerConfig;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.clients.producer.RecordMetadata;
import org.apache.kafka.common.PartitionInfo;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.serialization.ByteArrayDeserializer;
import org.apache.kafka.common.serialization.LongDeserializer;
import org.apache.kafka.common.serialization.Serdes;
import org.apache.kafka.common.serialization.StringDeserializer;
import org.apache.kafka.common.serialization.StringSerializer;
import org.apache.kafka.streams.KafkaStreams;
import org.apache.kafka.streams.StreamsBuilder;
import org.apache.kafka.streams.StreamsConfig;
import org.apache.kafka.streams.kstream.Consumed;
import org.apache.kafka.streams.kstream.Grouped;
import org.apache.kafka.streams.kstream.Produced;

/**
 * Real Java clients (kafka-clients, kafka-streams) for the end-to-end tests. Each subcommand
 * prints JSON lines on stdout: progress events while it runs, and one summary line last.
 * Logs (SLF4J simple) go to stderr.
 *
 * <pre>
 *   produce-default BOOTSTRAP TOPIC N [DELAY_MS]
 *       a KafkaProducer with the default configuration (enable.idempotence=true, acks=all),
 *       sends N records key "k{i}" value "v{i}", DELAY_MS between sends, flushes, prints
 *       {"event":"acked","acked":n} every 100 acknowledgements and a summary last.
 *   produce-idempotent BOOTSTRAP TOPIC N DELAY_MS
 *       a KafkaProducer with enable.idempotence=true and acks=all set explicitly (the client
 *       retries retriable errors until delivery.timeout.ms, 120 s by default), sends N
 *       records key "k{i}" value "v{i}" round-robin over the topic's partitions, DELAY_MS
 *       between sends; prints {"event":"acked","acked":n,"sent":s} every 100
 *       acknowledgements and a summary last with every acknowledged record
 *       ({"p","o","v"}) and every error a send callback saw. Exits 1 when any send failed.
 *   consume BOOTSTRAP TOPIC N [read_committed|read_uncommitted] [TIMEOUT_MS] [string|long]
 *       assigns every partition from the beginning (no group), reads until it holds N
 *       records and its position reached the end offsets (the last stable offsets under
 *       read_committed), or until the timeout; prints the records (values decoded as UTF-8
 *       strings, or as 8-byte big-endian longs as Serdes.Long() writes them).
 *   txn BOOTSTRAP TOPIC TXN_ID
 *       a transactional producer: commits "c1-{i}", aborts "a-{i}", commits "c2-{i}" (10
 *       records each); prints what it committed and aborted.
 *   txn-open BOOTSTRAP TOPIC TXN_ID N
 *       a transactional producer that begins a transaction, sends "open-{i}" (N records),
 *       flushes, prints {"event":"open",...} and then waits, never committing, until killed.
 *   wordcount BOOTSTRAP APP_ID IN OUT STATE_DIR
 *       a Kafka Streams word count, processing.guarantee=exactly_once_v2, runs until killed;
 *       prints {"event":"state","state":...} on every state change.
 * </pre>
 */
public final class Main {

    public static void main(String[] args) throws Exception {
        if (args.length == 0) {
            usage();
        }
        String[] rest = Arrays.copyOfRange(args, 1, args.length);
        switch (args[0]) {
            case "produce-default" -> produceDefault(rest);
            case "produce-idempotent" -> produceIdempotent(rest);
            case "consume" -> consume(rest);
            case "txn" -> txn(rest);
            case "txn-open" -> txnOpen(rest);
            case "wordcount" -> wordcount(rest);
            default -> usage();
        }
    }

    /**
     * Client settings every subcommand starts from: the properties file named by the
     * SHALE_CLIENT_CONFIG environment variable (security settings: SASL_SSL, SCRAM, PEM
     * stores), or nothing.
     */
    static Properties baseProps() {
        Properties props = new Properties();
        String file = System.getenv("SHALE_CLIENT_CONFIG");
        if (file != null && !file.isEmpty()) {
            try (java.io.Reader r = java.nio.file.Files.newBufferedReader(java.nio.file.Path.of(file))) {
                props.load(r);
            } catch (java.io.IOException e) {
                throw new java.io.UncheckedIOException(e);
            }
        }
        return props;
    }

    private static void usage() {
        System.err.println("usage: Main produce-default|produce-idempotent|consume|txn|txn-open|wordcount ... (see Main.java)");
        System.exit(2);
    }

    // ---- produce-default -----------------------------------------------------------------

    static void produceDefault(String[] a) throws Exception {
        String bootstrap = a[0], topic = a[1];
        int n = Integer.parseInt(a[2]);
        long delayMs = a.length > 3 ? Long.parseLong(a[3]) : 0;
        Properties props = baseProps();
        props.put(ProducerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        props.put(ProducerConfig.KEY_SERIALIZER_CLASS_CONFIG, StringSerializer.class.getName());
        props.put(ProducerConfig.VALUE_SERIALIZER_CLASS_CONFIG, StringSerializer.class.getName());
        // Nothing else: the defaults are the point.
        ProducerConfig effective = new ProducerConfig(props);
        AtomicInteger acked = new AtomicInteger();
        List<String> errors = new ArrayList<>();
        Map<Integer, Long> lastOffset = new TreeMap<>();
        long t0 = System.nanoTime();
        try (KafkaProducer<String, String> p = new KafkaProducer<>(props)) {
            for (int i = 0; i < n; i++) {
                p.send(new ProducerRecord<>(topic, "k" + i, "v" + i), (md, e) -> {
                    synchronized (errors) {
                        if (e != null) {
                            errors.add(e.toString());
                            return;
                        }
                        lastOffset.merge(md.partition(), md.offset(), Math::max);
                    }
                    int c = acked.incrementAndGet();
                    if (c % 100 == 0) {
                        emit(obj("event", "acked", "acked", c));
                    }
                });
                if (delayMs > 0) {
                    Thread.sleep(delayMs);
                }
            }
            p.flush();
        }
        synchronized (errors) {
            emit(obj("sent", n, "acked", acked.get(), "errors", errors,
                    "enable.idempotence", effective.getBoolean(ProducerConfig.ENABLE_IDEMPOTENCE_CONFIG),
                    "acks", effective.getString(ProducerConfig.ACKS_CONFIG),
                    "last_offsets", lastOffset,
                    "seconds", (System.nanoTime() - t0) / 1e9));
        }
    }

    // ---- produce-idempotent ----------------------------------------------------------------

    static void produceIdempotent(String[] a) throws Exception {
        String bootstrap = a[0], topic = a[1];
        int n = Integer.parseInt(a[2]);
        long delayMs = Long.parseLong(a[3]);
        Properties props = baseProps();
        props.put(ProducerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        props.put(ProducerConfig.KEY_SERIALIZER_CLASS_CONFIG, StringSerializer.class.getName());
        props.put(ProducerConfig.VALUE_SERIALIZER_CLASS_CONFIG, StringSerializer.class.getName());
        props.put(ProducerConfig.ENABLE_IDEMPOTENCE_CONFIG, "true");
        props.put(ProducerConfig.ACKS_CONFIG, "all");
        props.put(ProducerConfig.LINGER_MS_CONFIG, "5");
        List<Map<String, Object>> acked = new ArrayList<>();
        List<String> errors = new ArrayList<>();
        AtomicInteger sent = new AtomicInteger();
        long t0 = System.nanoTime();
        try (KafkaProducer<String, String> p = new KafkaProducer<>(props)) {
            int partitions = p.partitionsFor(topic).size();
            for (int i = 0; i < n; i++) {
                String v = "v" + i;
                p.send(new ProducerRecord<>(topic, i % partitions, "k" + i, v), (md, e) -> {
                    int c;
                    synchronized (acked) {
                        if (e != null) {
                            errors.add(v + ": " + e);
                            return;
                        }
                        acked.add(obj("p", md.partition(), "o", md.offset(), "v", v));
                        c = acked.size();
                    }
                    if (c % 100 == 0) {
                        emit(obj("event", "acked", "acked", c, "sent", sent.get()));
                    }
                });
                sent.incrementAndGet();
                if (delayMs > 0) {
                    Thread.sleep(delayMs);
                }
            }
            p.flush();
        }
        synchronized (acked) {
            emit(obj("sent", sent.get(), "acked", acked.size(), "errors", errors,
                    "seconds", (System.nanoTime() - t0) / 1e9, "records", acked));
            if (!errors.isEmpty()) {
                System.exit(1);
            }
        }
    }

    // ---- consume -------------------------------------------------------------------------

    static void consume(String[] a) {
        String bootstrap = a[0], topic = a[1];
        int n = Integer.parseInt(a[2]);
        String isolation = a.length > 3 ? a[3] : "read_uncommitted";
        long timeoutMs = a.length > 4 ? Long.parseLong(a[4]) : 60_000;
        boolean longs = a.length > 5 && a[5].equals("long");
        Properties props = baseProps();
        props.put(ConsumerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        props.put(ConsumerConfig.KEY_DESERIALIZER_CLASS_CONFIG, StringDeserializer.class.getName());
        props.put(ConsumerConfig.VALUE_DESERIALIZER_CLASS_CONFIG, ByteArrayDeserializer.class.getName());
        props.put(ConsumerConfig.ISOLATION_LEVEL_CONFIG, isolation);
        props.put(ConsumerConfig.ENABLE_AUTO_COMMIT_CONFIG, "false");
        List<Map<String, Object>> records = new ArrayList<>();
        boolean complete = false;
        Map<TopicPartition, Long> end = Map.of();
        LongDeserializer asLong = new LongDeserializer();
        try (KafkaConsumer<String, byte[]> c = new KafkaConsumer<>(props)) {
            long deadline = System.currentTimeMillis() + timeoutMs;
            List<TopicPartition> tps = new ArrayList<>();
            while (tps.isEmpty() && System.currentTimeMillis() < deadline) {
                List<PartitionInfo> infos = c.partitionsFor(topic, Duration.ofSeconds(10));
                if (infos != null) {
                    for (PartitionInfo pi : infos) {
                        tps.add(new TopicPartition(topic, pi.partition()));
                    }
                }
            }
            c.assign(tps);
            c.seekToBeginning(tps);
            while (System.currentTimeMillis() < deadline) {
                for (ConsumerRecord<String, byte[]> r : c.poll(Duration.ofMillis(200))) {
                    Object v = r.value() == null ? null
                            : longs ? asLong.deserialize(topic, r.value())
                            : new String(r.value(), StandardCharsets.UTF_8);
                    records.add(obj("p", r.partition(), "o", r.offset(), "k", r.key(), "v", v));
                }
                if (records.size() >= n) {
                    end = c.endOffsets(tps, Duration.ofSeconds(10));
                    boolean atEnd = true;
                    for (TopicPartition tp : tps) {
                        atEnd &= c.position(tp, Duration.ofSeconds(10)) >= end.get(tp);
                    }
                    if (atEnd) {
                        complete = true;
                        break;
                    }
                }
            }
        }
        Map<String, Long> endOut = new TreeMap<>();
        end.forEach((tp, o) -> endOut.put(String.valueOf(tp.partition()), o));
        emit(obj("count", records.size(), "complete", complete, "isolation", isolation,
                "end_offsets", endOut, "records", records));
    }

    // ---- txn -----------------------------------------------------------------------------

    static void txn(String[] a) throws Exception {
        String bootstrap = a[0], topic = a[1], txnId = a[2];
        Properties props = baseProps();
        props.put(ProducerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        props.put(ProducerConfig.KEY_SERIALIZER_CLASS_CONFIG, StringSerializer.class.getName());
        props.put(ProducerConfig.VALUE_SERIALIZER_CLASS_CONFIG, StringSerializer.class.getName());
        props.put(ProducerConfig.TRANSACTIONAL_ID_CONFIG, txnId);
        List<Object> steps = new ArrayList<>();
        Map<String, List<String>> done = new HashMap<>();
        try (KafkaProducer<String, String> p = new KafkaProducer<>(props)) {
            p.initTransactions();
            steps.add("initTransactions");
            for (String[] t : new String[][] {{"c1", "commit"}, {"a", "abort"}, {"c2", "commit"}}) {
                p.beginTransaction();
                List<Future<RecordMetadata>> fs = new ArrayList<>();
                List<String> values = new ArrayList<>();
                for (int i = 0; i < 10; i++) {
                    String v = t[0] + "-" + i;
                    values.add(v);
                    fs.add(p.send(new ProducerRecord<>(topic, "k" + i, v)));
                }
                p.flush();
                List<Long> offsets = new ArrayList<>();
                for (Future<RecordMetadata> f : fs) {
                    offsets.add(f.get().offset());
                }
                if (t[1].equals("commit")) {
                    p.commitTransaction();
                    done.computeIfAbsent("committed", k -> new ArrayList<>()).addAll(values);
                } else {
                    p.abortTransaction();
                    done.computeIfAbsent("aborted", k -> new ArrayList<>()).addAll(values);
                }
                steps.add(obj("txn", t[0], "outcome", t[1], "offsets", offsets));
            }
        }
        emit(obj("transactional.id", txnId, "steps", steps,
                "committed", done.get("committed"), "aborted", done.get("aborted")));
    }

    static void txnOpen(String[] a) throws Exception {
        String bootstrap = a[0], topic = a[1], txnId = a[2];
        int n = Integer.parseInt(a[3]);
        Properties props = baseProps();
        props.put(ProducerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        props.put(ProducerConfig.KEY_SERIALIZER_CLASS_CONFIG, StringSerializer.class.getName());
        props.put(ProducerConfig.VALUE_SERIALIZER_CLASS_CONFIG, StringSerializer.class.getName());
        props.put(ProducerConfig.TRANSACTIONAL_ID_CONFIG, txnId);
        KafkaProducer<String, String> p = new KafkaProducer<>(props);
        p.initTransactions();
        p.beginTransaction();
        List<Future<RecordMetadata>> fs = new ArrayList<>();
        for (int i = 0; i < n; i++) {
            fs.add(p.send(new ProducerRecord<>(topic, "k" + i, "open-" + i)));
        }
        p.flush();
        List<Long> offsets = new ArrayList<>();
        for (Future<RecordMetadata> f : fs) {
            offsets.add(f.get().offset());
        }
        emit(obj("event", "open", "transactional.id", txnId, "offsets", offsets));
        Thread.sleep(Long.MAX_VALUE);
    }

    // ---- wordcount -----------------------------------------------------------------------

    static void wordcount(String[] a) throws Exception {
        String bootstrap = a[0], appId = a[1], in = a[2], out = a[3], stateDir = a[4];
        Properties props = baseProps();
        props.put(StreamsConfig.APPLICATION_ID_CONFIG, appId);
        props.put(StreamsConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        props.put(StreamsConfig.PROCESSING_GUARANTEE_CONFIG, StreamsConfig.EXACTLY_ONCE_V2);
        props.put(StreamsConfig.STATE_DIR_CONFIG, stateDir);
        props.put(StreamsConfig.REPLICATION_FACTOR_CONFIG, 1);
        // A killed instance's member is gone after 10 s instead of 45 s, so the restarted one
        // gets its partitions sooner.
        props.put(StreamsConfig.consumerPrefix(ConsumerConfig.SESSION_TIMEOUT_MS_CONFIG), 10_000);
        props.put(StreamsConfig.consumerPrefix(ConsumerConfig.HEARTBEAT_INTERVAL_MS_CONFIG), 1_000);

        StreamsBuilder b = new StreamsBuilder();
        b.stream(in, Consumed.with(Serdes.String(), Serdes.String()))
                .flatMapValues(line -> Arrays.asList(line.toLowerCase(Locale.ROOT).split("\\W+")))
                .filter((k, w) -> !w.isEmpty())
                .groupBy((k, w) -> w, Grouped.with(Serdes.String(), Serdes.String()))
                .count()
                .toStream()
                .to(out, Produced.with(Serdes.String(), Serdes.Long()));

        KafkaStreams streams = new KafkaStreams(b.build(), props);
        AtomicReference<Throwable> failure = new AtomicReference<>();
        CountDownLatch stopped = new CountDownLatch(1);
        streams.setStateListener((now, before) -> {
            emit(obj("event", "state", "state", now.toString(), "previous", before.toString()));
            if (now == KafkaStreams.State.ERROR || now == KafkaStreams.State.NOT_RUNNING) {
                stopped.countDown();
            }
        });
        streams.setUncaughtExceptionHandler(e -> {
            failure.set(e);
            emit(obj("event", "uncaught", "error", e.toString()));
            return org.apache.kafka.streams.errors.StreamsUncaughtExceptionHandler
                    .StreamThreadExceptionResponse.REPLACE_THREAD;
        });
        Runtime.getRuntime().addShutdownHook(new Thread(() -> streams.close(Duration.ofSeconds(30))));
        streams.start();
        stopped.await();
        emit(obj("event", "stopped", "error", String.valueOf(failure.get())));
        System.exit(1);
    }

    // ---- JSON ----------------------------------------------------------------------------

    static Map<String, Object> obj(Object... kv) {
        Map<String, Object> m = new java.util.LinkedHashMap<>();
        for (int i = 0; i < kv.length; i += 2) {
            m.put((String) kv[i], kv[i + 1]);
        }
        return m;
    }

    static synchronized void emit(Object o) {
        System.out.println(json(o));
        System.out.flush();
    }

    static String json(Object o) {
        StringBuilder sb = new StringBuilder();
        write(sb, o);
        return sb.toString();
    }

    private static void write(StringBuilder sb, Object o) {
        if (o == null) {
            sb.append("null");
        } else if (o instanceof Number || o instanceof Boolean) {
            sb.append(o);
        } else if (o instanceof Map<?, ?> m) {
            sb.append('{');
            boolean first = true;
            for (Map.Entry<?, ?> e : m.entrySet()) {
                if (!first) sb.append(',');
                first = false;
                write(sb, String.valueOf(e.getKey()));
                sb.append(':');
                write(sb, e.getValue());
            }
            sb.append('}');
        } else if (o instanceof Iterable<?> it) {
            sb.append('[');
            boolean first = true;
            for (Object x : it) {
                if (!first) sb.append(',');
                first = false;
                write(sb, x);
            }
            sb.append(']');
        } else {
            String s = o.toString();
            sb.append('"');
            for (char ch : s.toCharArray()) {
                switch (ch) {
                    case '"' -> sb.append("\\\"");
                    case '\\' -> sb.append("\\\\");
                    case '\n' -> sb.append("\\n");
                    case '\r' -> sb.append("\\r");
                    case '\t' -> sb.append("\\t");
                    default -> {
                        if (ch < 0x20) sb.append(String.format("\\u%04x", (int) ch));
                        else sb.append(ch);
                    }
                }
            }
            sb.append('"');
        }
    }
}
