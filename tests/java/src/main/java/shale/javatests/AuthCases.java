package shale.javatests;

import java.io.IOException;
import java.io.Reader;
import java.io.UncheckedIOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.Properties;
import java.util.concurrent.Future;
import java.util.concurrent.TimeUnit;

import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.consumer.KafkaConsumer;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerConfig;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.clients.producer.RecordMetadata;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.serialization.StringDeserializer;
import org.apache.kafka.common.serialization.StringSerializer;

/**
 * Many connection checks in one JVM (a JVM with kafka-clients loaded takes seconds to start;
 * the security matrix of tests/e2e/test_client_matrix.py has a dozen cases), each with its own
 * client settings.
 *
 * <pre>
 *   java -cp ... shale.javatests.AuthCases CASES_FILE
 * </pre>
 *
 * CASES_FILE has one case a line, tab-separated: NAME, ACTION, PROPERTIES (a client properties
 * file with bootstrap.servers and the security settings), TOPIC, N. Actions:
 * <ul>
 *   <li>{@code roundtrip}: a producer (acks=all) sends N records, key "k{i}" value "v{i}", to
 *   partition 0 of TOPIC and waits for every acknowledgement; a consumer with the same settings
 *   assigns partition 0 from the beginning and polls until it holds N records (30 s at most).
 *   {@code ok} when all N came back; {@code values} are what it read.</li>
 *   <li>{@code refused}: a producer asks for TOPIC's partitions (max.block.ms 15 s).
 *   {@code ok} when that fails; {@code error} and {@code causes} say how.</li>
 *   <li>{@code steady}: one producer sends a record "s{i}" to partition 0 of TOPIC every
 *   100 ms for N seconds, waiting for each acknowledgement, so that its connection outlives
 *   a short SASL session (KIP-368 re-authentication). {@code ok} when every record was
 *   acknowledged; {@code values} are the acknowledged ones.</li>
 * </ul>
 * Prints one JSON line a case, in order: {"case", "action", "ok", "values", "error", "causes",
 * "start_ms", "end_ms"} (wall-clock milliseconds, to find the case's audit events), and
 * {"done": count} last. A case that fails does not stop the next.
 */
public final class AuthCases {

    public static void main(String[] args) throws Exception {
        List<String> lines = Files.readAllLines(Path.of(args[0]));
        int done = 0;
        for (String line : lines) {
            if (line.isBlank()) {
                continue;
            }
            String[] f = line.split("\t");
            String name = f[0], action = f[1], topic = f[3];
            Properties props = load(Path.of(f[2]));
            int n = Integer.parseInt(f[4]);
            long start = System.currentTimeMillis();
            List<String> values = new ArrayList<>();
            Throwable error = null;
            boolean ok;
            try {
                switch (action) {
                    case "roundtrip" -> roundtrip(props, topic, n, values);
                    case "refused" -> partitions(props, topic);
                    case "steady" -> steady(props, topic, n, values);
                    default -> throw new IllegalArgumentException("unknown action " + action);
                }
                ok = action.equals("roundtrip") ? values.size() >= n : action.equals("steady");
            } catch (Exception e) {
                error = e;
                ok = action.equals("refused");
            }
            Main.emit(Main.obj("case", name, "action", action, "ok", ok, "values", values,
                    "error", error == null ? null : error.toString(), "causes", causes(error),
                    "start_ms", start, "end_ms", System.currentTimeMillis()));
            done++;
        }
        Main.emit(Main.obj("done", done));
        // Client threads (the OAuth login refresher) must not keep the JVM alive.
        System.exit(0);
    }

    static Properties load(Path file) {
        Properties props = new Properties();
        try (Reader r = Files.newBufferedReader(file)) {
            props.load(r);
        } catch (IOException e) {
            throw new UncheckedIOException(e);
        }
        return props;
    }

    static void roundtrip(Properties base, String topic, int n, List<String> values) throws Exception {
        Properties p = new Properties();
        p.putAll(base);
        p.put(ProducerConfig.KEY_SERIALIZER_CLASS_CONFIG, StringSerializer.class.getName());
        p.put(ProducerConfig.VALUE_SERIALIZER_CLASS_CONFIG, StringSerializer.class.getName());
        p.put(ProducerConfig.ACKS_CONFIG, "all");
        p.put(ProducerConfig.MAX_BLOCK_MS_CONFIG, "20000");
        p.put(ProducerConfig.DELIVERY_TIMEOUT_MS_CONFIG, "30000");
        p.put(ProducerConfig.REQUEST_TIMEOUT_MS_CONFIG, "10000");
        try (KafkaProducer<String, String> producer = new KafkaProducer<>(p)) {
            List<Future<RecordMetadata>> acks = new ArrayList<>();
            for (int i = 0; i < n; i++) {
                acks.add(producer.send(new ProducerRecord<>(topic, 0, "k" + i, "v" + i)));
            }
            for (Future<RecordMetadata> ack : acks) {
                ack.get(30, TimeUnit.SECONDS);
            }
        }
        Properties c = new Properties();
        c.putAll(base);
        c.put(ConsumerConfig.KEY_DESERIALIZER_CLASS_CONFIG, StringDeserializer.class.getName());
        c.put(ConsumerConfig.VALUE_DESERIALIZER_CLASS_CONFIG, StringDeserializer.class.getName());
        c.put(ConsumerConfig.ENABLE_AUTO_COMMIT_CONFIG, "false");
        try (KafkaConsumer<String, String> consumer = new KafkaConsumer<>(c)) {
            TopicPartition tp = new TopicPartition(topic, 0);
            consumer.assign(List.of(tp));
            consumer.seekToBeginning(List.of(tp));
            long deadline = System.currentTimeMillis() + 30_000;
            while (values.size() < n && System.currentTimeMillis() < deadline) {
                for (ConsumerRecord<String, String> r : consumer.poll(Duration.ofMillis(200))) {
                    values.add(r.value());
                }
            }
        }
    }

    static void steady(Properties base, String topic, int seconds, List<String> values) throws Exception {
        Properties p = new Properties();
        p.putAll(base);
        p.put(ProducerConfig.KEY_SERIALIZER_CLASS_CONFIG, StringSerializer.class.getName());
        p.put(ProducerConfig.VALUE_SERIALIZER_CLASS_CONFIG, StringSerializer.class.getName());
        p.put(ProducerConfig.ACKS_CONFIG, "all");
        p.put(ProducerConfig.MAX_BLOCK_MS_CONFIG, "20000");
        p.put(ProducerConfig.DELIVERY_TIMEOUT_MS_CONFIG, "30000");
        p.put(ProducerConfig.REQUEST_TIMEOUT_MS_CONFIG, "10000");
        try (KafkaProducer<String, String> producer = new KafkaProducer<>(p)) {
            long end = System.currentTimeMillis() + seconds * 1000L;
            for (int i = 0; System.currentTimeMillis() < end; i++) {
                producer.send(new ProducerRecord<>(topic, 0, "k" + i, "s" + i)).get(30, TimeUnit.SECONDS);
                values.add("s" + i);
                Thread.sleep(100);
            }
        }
    }

    static void partitions(Properties base, String topic) {
        Properties p = new Properties();
        p.putAll(base);
        p.put(ProducerConfig.KEY_SERIALIZER_CLASS_CONFIG, StringSerializer.class.getName());
        p.put(ProducerConfig.VALUE_SERIALIZER_CLASS_CONFIG, StringSerializer.class.getName());
        p.put(ProducerConfig.MAX_BLOCK_MS_CONFIG, "15000");
        try (KafkaProducer<String, String> producer = new KafkaProducer<>(p)) {
            try {
                producer.partitionsFor(topic);
            } finally {
                producer.close(Duration.ofSeconds(5));
            }
        }
    }

    /** The exception and its causes, each "class: message". */
    static List<String> causes(Throwable t) {
        List<String> out = new ArrayList<>();
        for (; t != null && out.size() < 8; t = t.getCause()) {
            out.add(t.getClass().getName() + ": " + t.getMessage());
        }
        return out;
    }
}
