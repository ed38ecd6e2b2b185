// End-to-end test client for Custos: a thin, deterministic wrapper over the
// real Apache Kafka Java client. Compiled and run by deploy/kafka.sh
// (`deploy/kafka.sh java-client SUBCOMMAND ...`).
//
// Every subcommand prints JSON lines on stdout (one object per line) and exits
// non-zero on failure. Every subcommand has a hard deadline (--timeout-ms plus
// a grace period) after which the JVM halts with exit code 3, so it never hangs.
//
// Record lines: {"t":"rec","p":PARTITION,"o":OFFSET,"ts":TIMESTAMP,"k":B64|null,
//                "v":B64|null,"h":[[NAME,B64|null],...], ...}
// Keys, values and header values are base64 so they compare byte for byte.
// produce and consume end with {"t":"summary",...,"digest":HEX}: SHA-256 over the
// records sorted by (partition, offset), equal for equal record sets.
//
// Subcommands:
//   produce  --bootstrap B --topic T --count N [--compression none|gzip|snappy|lz4|zstd]
//            [--idempotent] [--transactional-id ID [--txn-pattern commit,abort,...]]
//            [--size BYTES] [--seed S] [--partition P] [--acks all|1|0]
//            [--interval-ms MS]  (pause between sends, for long-running producers)
//   consume  --bootstrap B --topic T --count N [--group G] [--group-protocol classic|consumer]
//            [--isolation read_committed|read_uncommitted] [--extra-ms MS]
//            [--follow]   (group member that runs until "quit" or EOF on stdin; prints
//                          {"t":"assignment","partitions":[...]} on every change)
//            [--pause-after N --resume-file F]  (after N records, prints {"t":"paused"} and
//                          stops polling until file F exists, its buffered records kept)
//   share-consume --bootstrap B --topic T --group G --count N [--extra-ms MS]
//            [--reset earliest|latest|by_duration:PnDTnHnMn.nS] [--ack-mode implicit|explicit]
//            KIP-932 share group member (KafkaShareConsumer; the broker needs the feature
//            share.version=1). --reset first sets the group config share.auto.offset.reset
//            (a new share group starts at latest otherwise). After every poll the records are
//            acknowledged (ACCEPT) with commitSync before they are printed. Record lines as
//            for consume plus "dc" (delivery count); a failed acknowledgement prints
//            {"t":"ack_error","topic":T,"p":P,"error":...}; ends with {"t":"summary","count":N,
//            "distinct":D,"ack_errors":E,"ok":B,"digest":HEX} (digest over distinct records).
//   admin    create-topic|describe-topic|delete-topic|list-topics|describe-config|describe-group
//            |describe-share-group|set-group-config|alter-share-offsets|delete-share-offsets
//            (alter-share-offsets --group G --topic T --partitions N --offset O sets the share
//            group's start offset of partitions 0..N-1; delete-share-offsets --group G --topic T)
//            --bootstrap B [--topic T] [--group G] [--partitions P] [--replication-factor R] [--config k=v]
//            (describe-config takes --topic, or --group for a group's configs; set-group-config
//            --group G --config k=v... sets group configs, e.g. share.auto.offset.reset=earliest)
//   metadata --bootstrap B [--topic T]
//   ping     --bootstrap B [--expect-brokers N] [--expect-node ID]
// Common: --timeout-ms MS (default 60000), --property k=v (extra client config, repeatable).

import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.io.PrintStream;
import java.io.FileOutputStream;
import java.io.FileDescriptor;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Paths;
import java.security.MessageDigest;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Base64;
import java.util.Collection;
import java.util.Collections;
import java.util.HashMap;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Optional;
import java.util.Properties;
import java.util.Set;
import java.util.TreeSet;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.Future;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicBoolean;

import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.AdminClientConfig;
import org.apache.kafka.clients.admin.Config;
import org.apache.kafka.clients.admin.ConfigEntry;
import org.apache.kafka.clients.admin.CreateTopicsOptions;
import org.apache.kafka.clients.admin.DeleteTopicsOptions;
import org.apache.kafka.clients.admin.DescribeClusterOptions;
import org.apache.kafka.clients.admin.DescribeClusterResult;
import org.apache.kafka.clients.admin.DescribeTopicsOptions;
import org.apache.kafka.clients.admin.AlterConfigOp;
import org.apache.kafka.clients.admin.ListTopicsOptions;
import org.apache.kafka.clients.admin.NewTopic;
import org.apache.kafka.clients.admin.TopicDescription;
import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.clients.consumer.ConsumerRebalanceListener;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.consumer.ConsumerRecords;
import org.apache.kafka.clients.consumer.AcknowledgeType;
import org.apache.kafka.clients.consumer.KafkaConsumer;
import org.apache.kafka.clients.consumer.KafkaShareConsumer;
import org.apache.kafka.clients.consumer.OffsetAndMetadata;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerConfig;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.clients.producer.RecordMetadata;
import org.apache.kafka.common.Node;
import org.apache.kafka.common.PartitionInfo;
import org.apache.kafka.common.KafkaException;
import org.apache.kafka.common.TopicIdPartition;
import org.apache.kafka.common.config.ConfigResource;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.TopicPartitionInfo;
import org.apache.kafka.common.header.Header;
import org.apache.kafka.common.header.internals.RecordHeader;
import org.apache.kafka.common.serialization.ByteArrayDeserializer;
import org.apache.kafka.common.serialization.ByteArraySerializer;

public final class E2eClient {

    // ------------------------------------------------------------ arguments

    static final class Args {
        final Map<String, List<String>> opts = new HashMap<>();
        final List<String> positional = new ArrayList<>();

        Args(String[] argv, int from) {
            for (int i = from; i < argv.length; i++) {
                String a = argv[i];
                if (a.startsWith("--")) {
                    String name = a.substring(2);
                    String value;
                    int eq = name.indexOf('=');
                    if (eq >= 0) {
                        value = name.substring(eq + 1);
                        name = name.substring(0, eq);
                    } else if (FLAGS.contains(name)) {
                        value = "true";
                    } else {
                        if (i + 1 >= argv.length) throw new IllegalArgumentException("missing value for --" + name);
                        value = argv[++i];
                    }
                    opts.computeIfAbsent(name, k -> new ArrayList<>()).add(value);
                } else {
                    positional.add(a);
                }
            }
        }

        static final Set<String> FLAGS = Set.of("idempotent", "follow", "no-wait");

        String get(String name, String dflt) {
            List<String> v = opts.get(name);
            return v == null ? dflt : v.get(v.size() - 1);
        }

        String need(String name) {
            String v = get(name, null);
            if (v == null) throw new IllegalArgumentException("--" + name + " is required");
            return v;
        }

        int getInt(String name, int dflt) { return Integer.parseInt(get(name, Integer.toString(dflt))); }
        long getLong(String name, long dflt) { return Long.parseLong(get(name, Long.toString(dflt))); }
        boolean flag(String name) { return "true".equals(get(name, "false")); }
        List<String> all(String name) { return opts.getOrDefault(name, Collections.emptyList()); }
    }

    // ------------------------------------------------------------ JSON output

    static final PrintStream OUT = new PrintStream(new FileOutputStream(FileDescriptor.out), false, StandardCharsets.UTF_8);

    static synchronized void emit(Map<String, Object> obj) {
        StringBuilder sb = new StringBuilder();
        json(sb, obj);
        OUT.println(sb);
        OUT.flush();
    }

    @SuppressWarnings("unchecked")
    static void json(StringBuilder sb, Object v) {
        if (v == null) {
            sb.append("null");
        } else if (v instanceof String) {
            String s = (String) v;
            sb.append('"');
            for (int i = 0; i < s.length(); i++) {
                char c = s.charAt(i);
                switch (c) {
                    case '"': sb.append("\\\""); break;
                    case '\\': sb.append("\\\\"); break;
                    case '\n': sb.append("\\n"); break;
                    case '\r': sb.append("\\r"); break;
                    case '\t': sb.append("\\t"); break;
                    default:
                        if (c < 0x20) sb.append(String.format("\\u%04x", (int) c));
                        else sb.append(c);
                }
            }
            sb.append('"');
        } else if (v instanceof Number || v instanceof Boolean) {
            sb.append(v);
        } else if (v instanceof Map) {
            sb.append('{');
            boolean first = true;
            for (Map.Entry<String, Object> e : ((Map<String, Object>) v).entrySet()) {
                if (!first) sb.append(',');
                first = false;
                json(sb, e.getKey());
                sb.append(':');
                json(sb, e.getValue());
            }
            sb.append('}');
        } else if (v instanceof Collection) {
            sb.append('[');
            boolean first = true;
            for (Object o : (Collection<Object>) v) {
                if (!first) sb.append(',');
                first = false;
                json(sb, o);
            }
            sb.append(']');
        } else if (v instanceof byte[]) {
            json(sb, Base64.getEncoder().encodeToString((byte[]) v));
        } else {
            json(sb, v.toString());
        }
    }

    static Map<String, Object> obj(Object... kv) {
        Map<String, Object> m = new LinkedHashMap<>();
        for (int i = 0; i < kv.length; i += 2) m.put((String) kv[i], kv[i + 1]);
        return m;
    }

    // SHA-256 over the records sorted by (partition, offset): equal digests mean
    // equal record sets (partition, offset, timestamp, key, value, headers).
    static final class Digest {
        final java.util.TreeMap<Long, String> lines = new java.util.TreeMap<>();

        void add(int p, long o, long ts, byte[] k, byte[] v, Iterable<Header> hs) {
            StringBuilder sb = new StringBuilder();
            json(sb, Arrays.asList(p, o, ts, b64(k), b64(v), headersJson(hs)));
            lines.put(((long) p << 40) + o, sb.toString());
        }

        String hex() {
            StringBuilder all = new StringBuilder();
            for (String l : lines.values()) all.append(l).append('\n');
            StringBuilder hex = new StringBuilder();
            for (byte b : sha256(utf8(all.toString()))) hex.append(String.format("%02x", b));
            return hex.toString();
        }
    }

    static String b64(byte[] b) { return b == null ? null : Base64.getEncoder().encodeToString(b); }

    static List<Object> headersJson(Iterable<Header> headers) {
        List<Object> out = new ArrayList<>();
        for (Header h : headers) out.add(Arrays.asList(h.key(), b64(h.value())));
        return out;
    }

    static Map<String, Object> nodeJson(Node n) {
        if (n == null || n.isEmpty()) return null;
        return obj("id", n.id(), "host", n.host(), "port", n.port(), "rack", n.rack());
    }

    // ------------------------------------------------------------ deterministic records
    // Mirrored in tests/e2e/records.py; keep the two in sync.

    static byte[] utf8(String s) { return s.getBytes(StandardCharsets.UTF_8); }

    static byte[] sha256(byte[] in) {
        try {
            return MessageDigest.getInstance("SHA-256").digest(in);
        } catch (Exception e) {
            throw new RuntimeException(e);
        }
    }

    static byte[] recordKey(long seed, int i) {
        if (i % 13 == 7) return null;
        return utf8("key-" + seed + "-" + i);
    }

    static byte[] recordValue(long seed, int i, int size) {
        if (i % 17 == 5) return null;
        byte[] out = new byte[size];
        int pos = 0;
        for (int j = 0; pos < size; j++) {
            byte[] block = sha256(utf8("value-" + seed + "-" + i + "-" + j));
            int n = Math.min(block.length, size - pos);
            System.arraycopy(block, 0, out, pos, n);
            pos += n;
        }
        return out;
    }

    static List<Header> recordHeaders(long seed, int i) {
        List<Header> hs = new ArrayList<>();
        if (i % 11 == 3) return hs;
        hs.add(new RecordHeader("idx", utf8(Integer.toString(i))));
        hs.add(new RecordHeader("dup", utf8("first-" + i)));
        hs.add(new RecordHeader("dup", utf8("second-" + i)));
        hs.add(new RecordHeader("bin", new byte[] {(byte) (i & 0xff), 0, (byte) 0xff}));
        if (i % 5 == 0) hs.add(new RecordHeader("nullh", (byte[]) null));
        return hs;
    }

    // ------------------------------------------------------------ main

    static long deadline;

    public static void main(String[] argv) {
        if (argv.length < 1) {
            System.err.println("usage: E2eClient produce|consume|share-consume|admin|metadata|ping ...");
            System.exit(2);
        }
        String cmd = argv[0];
        int rc;
        try {
            Args a = new Args(argv, 1);
            long timeoutMs = a.getLong("timeout-ms", 60000);
            deadline = System.currentTimeMillis() + timeoutMs;
            startWatchdog(timeoutMs + 15000);
            switch (cmd) {
                case "produce": rc = produce(a); break;
                case "consume": rc = consume(a); break;
                case "share-consume": rc = shareConsume(a); break;
                case "admin": rc = admin(a); break;
                case "metadata": rc = metadata(a, false); break;
                case "ping": rc = metadata(a, true); break;
                default:
                    System.err.println("unknown subcommand " + cmd);
                    rc = 2;
            }
        } catch (IllegalArgumentException e) {
            System.err.println("E2eClient: " + e.getMessage());
            rc = 2;
        } catch (Throwable t) {
            System.err.println("E2eClient " + cmd + " failed: " + t);
            t.printStackTrace(System.err);
            emit(obj("t", "error", "error", String.valueOf(t)));
            rc = 1;
        }
        OUT.flush();
        System.out.flush();
        // halt: do not wait for lingering client threads
        Runtime.getRuntime().halt(rc);
    }

    static void startWatchdog(long ms) {
        Thread t = new Thread(() -> {
            try {
                Thread.sleep(ms);
            } catch (InterruptedException e) {
                return;
            }
            System.err.println("E2eClient: hard deadline of " + ms + " ms reached, halting");
            emit(obj("t", "error", "error", "hard deadline reached"));
            Runtime.getRuntime().halt(3);
        }, "watchdog");
        t.setDaemon(true);
        t.start();
    }

    static long remaining() { return Math.max(0, deadline - System.currentTimeMillis()); }

    static void common(Properties p, Args a) {
        p.put("bootstrap.servers", a.need("bootstrap"));
        p.put("client.id", a.get("client-id", "custos-e2e"));
        p.put("request.timeout.ms", "15000");
        p.put("socket.connection.setup.timeout.ms", "5000");
        p.put("socket.connection.setup.timeout.max.ms", "10000");
        p.put("reconnect.backoff.max.ms", "1000");
        p.put("retry.backoff.max.ms", "1000");
        p.put("metadata.max.age.ms", "10000");
        for (String kv : a.all("property")) {
            int eq = kv.indexOf('=');
            if (eq < 0) throw new IllegalArgumentException("--property wants k=v, got " + kv);
            p.put(kv.substring(0, eq), kv.substring(eq + 1));
        }
    }

    // ------------------------------------------------------------ produce

    static int produce(Args a) throws Exception {
        String topic = a.need("topic");
        int count = a.getInt("count", 10);
        long seed = a.getLong("seed", 1);
        int size = a.getInt("size", 100);
        String compression = a.get("compression", "none");
        String txnId = a.get("transactional-id", null);
        boolean idempotent = a.flag("idempotent") || txnId != null;
        String partArg = a.get("partition", null);
        Integer partition = partArg == null ? null : Integer.valueOf(partArg);
        long intervalMs = a.getLong("interval-ms", 0);

        Properties p = new Properties();
        common(p, a);
        p.put(ProducerConfig.KEY_SERIALIZER_CLASS_CONFIG, ByteArraySerializer.class.getName());
        p.put(ProducerConfig.VALUE_SERIALIZER_CLASS_CONFIG, ByteArraySerializer.class.getName());
        p.put(ProducerConfig.COMPRESSION_TYPE_CONFIG, compression);
        p.put(ProducerConfig.ENABLE_IDEMPOTENCE_CONFIG, Boolean.toString(idempotent));
        p.put(ProducerConfig.ACKS_CONFIG, idempotent ? "all" : a.get("acks", "all"));
        p.put(ProducerConfig.LINGER_MS_CONFIG, a.get("linger-ms", "5"));
        long deliveryTimeout = Math.max(20000, Math.min(remaining() - 5000, 120000));
        p.put(ProducerConfig.DELIVERY_TIMEOUT_MS_CONFIG, Long.toString(deliveryTimeout));
        p.put(ProducerConfig.MAX_BLOCK_MS_CONFIG, Long.toString(Math.min(remaining(), 30000)));
        if (txnId != null) {
            p.put(ProducerConfig.TRANSACTIONAL_ID_CONFIG, txnId);
            p.put(ProducerConfig.TRANSACTION_TIMEOUT_CONFIG, "30000");
        }

        String[] pattern = txnId == null ? new String[] {null}
                : a.get("txn-pattern", "commit").split(",");
        RecordMetadata[] acked = new RecordMetadata[count];
        Exception[] failed = new Exception[count];
        String[] txnOf = new String[count];

        try (KafkaProducer<byte[], byte[]> producer = new KafkaProducer<>(p)) {
            if (txnId != null) producer.initTransactions();
            int chunks = pattern.length;
            for (int c = 0; c < chunks; c++) {
                int from = (int) ((long) count * c / chunks);
                int to = (int) ((long) count * (c + 1) / chunks);
                String outcome = pattern[c] == null ? null : pattern[c].trim();
                if (outcome != null && !outcome.equals("commit") && !outcome.equals("abort"))
                    throw new IllegalArgumentException("--txn-pattern entries are commit or abort");
                if (txnId != null) producer.beginTransaction();
                List<Future<RecordMetadata>> futures = new ArrayList<>();
                for (int i = from; i < to; i++) {
                    final int idx = i;
                    txnOf[i] = outcome;
                    ProducerRecord<byte[], byte[]> rec = new ProducerRecord<>(topic, partition, null,
                            recordKey(seed, i), recordValue(seed, i, size), recordHeaders(seed, i));
                    futures.add(producer.send(rec, (md, ex) -> {
                        if (ex != null) failed[idx] = ex;
                        else acked[idx] = md;
                    }));
                    if (intervalMs > 0) Thread.sleep(intervalMs);
                }
                producer.flush();
                if (txnId != null) {
                    if ("abort".equals(outcome)) producer.abortTransaction();
                    else producer.commitTransaction();
                }
            }
        }
        int nAcked = 0, nFailed = 0;
        Digest digest = new Digest();
        for (int i = 0; i < count; i++) {
            if (acked[i] != null) {
                nAcked++;
                RecordMetadata md = acked[i];
                digest.add(md.partition(), md.offset(), md.timestamp(), recordKey(seed, i),
                        recordValue(seed, i, size), recordHeaders(seed, i));
                Map<String, Object> rec = obj("t", "rec", "i", i, "p", md.partition(), "o", md.offset(),
                        "ts", md.timestamp(), "k", b64(recordKey(seed, i)), "v", b64(recordValue(seed, i, size)),
                        "h", headersJson(recordHeaders(seed, i)));
                if (txnOf[i] != null) rec.put("txn", txnOf[i]);
                emit(rec);
            } else {
                nFailed++;
                emit(obj("t", "fail", "i", i, "error", String.valueOf(failed[i])));
            }
        }
        emit(obj("t", "summary", "acked", nAcked, "failed", nFailed, "digest", digest.hex()));
        return nFailed == 0 ? 0 : 1;
    }

    // ------------------------------------------------------------ consume

    static Map<String, Object> recJson(ConsumerRecord<byte[], byte[]> r) {
        return obj("t", "rec", "p", r.partition(), "o", r.offset(), "ts", r.timestamp(),
                "tt", r.timestampType().name, "k", b64(r.key()), "v", b64(r.value()),
                "h", headersJson(r.headers()));
    }

    static int consume(Args a) throws Exception {
        String topic = a.need("topic");
        int count = a.getInt("count", Integer.MAX_VALUE);
        String group = a.get("group", null);
        String protocol = a.get("group-protocol", "classic");
        boolean follow = a.flag("follow");
        long extraMs = a.getLong("extra-ms", 0);
        // --pause-after N --resume-file F: after N records, stop polling until F
        // exists (what the consumer has buffered stays buffered meanwhile).
        int pauseAfter = a.getInt("pause-after", 0);
        String resumeFile = a.get("resume-file", null);
        if (pauseAfter > 0 && resumeFile == null) throw new IllegalArgumentException("--pause-after needs --resume-file");
        if (follow && group == null) throw new IllegalArgumentException("--follow needs --group");

        Properties p = new Properties();
        common(p, a);
        p.put(ConsumerConfig.KEY_DESERIALIZER_CLASS_CONFIG, ByteArrayDeserializer.class.getName());
        p.put(ConsumerConfig.VALUE_DESERIALIZER_CLASS_CONFIG, ByteArrayDeserializer.class.getName());
        p.put(ConsumerConfig.ISOLATION_LEVEL_CONFIG, a.get("isolation", "read_uncommitted"));
        p.put(ConsumerConfig.AUTO_OFFSET_RESET_CONFIG, "earliest");
        p.put(ConsumerConfig.ENABLE_AUTO_COMMIT_CONFIG, "false");
        p.put(ConsumerConfig.DEFAULT_API_TIMEOUT_MS_CONFIG, "20000");
        p.put(ConsumerConfig.GROUP_PROTOCOL_CONFIG, protocol);
        if (group != null) {
            p.put(ConsumerConfig.GROUP_ID_CONFIG, group);
            if (protocol.equals("classic")) {
                p.put(ConsumerConfig.SESSION_TIMEOUT_MS_CONFIG, "10000");
                p.put(ConsumerConfig.HEARTBEAT_INTERVAL_MS_CONFIG, "1000");
            }
        }

        AtomicBoolean quit = new AtomicBoolean(false);
        if (follow) {
            Thread t = new Thread(() -> {
                try (BufferedReader r = new BufferedReader(new InputStreamReader(System.in, StandardCharsets.UTF_8))) {
                    String line;
                    while ((line = r.readLine()) != null) {
                        if (line.trim().equals("quit")) break;
                    }
                } catch (Exception ignored) {
                }
                quit.set(true);
            }, "stdin");
            t.setDaemon(true);
            t.start();
        }

        int got = 0;
        Digest digest = new Digest();
        try (KafkaConsumer<byte[], byte[]> consumer = new KafkaConsumer<>(p)) {
            Set<TopicPartition> owned = new TreeSet<>((x, y) -> Integer.compare(x.partition(), y.partition()));
            if (group != null) {
                consumer.subscribe(Collections.singletonList(topic), new ConsumerRebalanceListener() {
                    @Override
                    public void onPartitionsRevoked(Collection<TopicPartition> parts) {
                        owned.removeAll(parts);
                        emitAssignment(owned, "revoked", parts);
                    }

                    @Override
                    public void onPartitionsAssigned(Collection<TopicPartition> parts) {
                        owned.addAll(parts);
                        emitAssignment(owned, "assigned", parts);
                    }

                    @Override
                    public void onPartitionsLost(Collection<TopicPartition> parts) {
                        owned.removeAll(parts);
                        emitAssignment(owned, "lost", parts);
                    }
                });
            } else {
                List<TopicPartition> tps = new ArrayList<>();
                while (tps.isEmpty()) {
                    List<PartitionInfo> infos;
                    try {
                        infos = consumer.partitionsFor(topic, Duration.ofMillis(Math.min(5000, Math.max(1, remaining()))));
                    } catch (org.apache.kafka.common.errors.TimeoutException e) {
                        infos = null;
                    }
                    if (infos != null) for (PartitionInfo pi : infos) tps.add(new TopicPartition(topic, pi.partition()));
                    if (tps.isEmpty()) {
                        if (remaining() == 0) throw new RuntimeException("topic " + topic + " not found");
                        Thread.sleep(200);
                    }
                }
                consumer.assign(tps);
                consumer.seekToBeginning(tps);
            }

            long extraUntil = -1;
            while (true) {
                if (follow) {
                    if (quit.get()) break;
                } else if (got >= count) {
                    if (extraUntil < 0) extraUntil = System.currentTimeMillis() + extraMs;
                    if (System.currentTimeMillis() >= extraUntil) break;
                }
                if (remaining() == 0) break;
                ConsumerRecords<byte[], byte[]> recs = consumer.poll(Duration.ofMillis(Math.min(200, Math.max(1, remaining()))));
                if (recs.isEmpty()) continue;
                if (group != null) {
                    // commit before reporting: a record reported here is never delivered to another member
                    Map<TopicPartition, OffsetAndMetadata> offs = new HashMap<>();
                    for (TopicPartition tp : recs.partitions()) {
                        List<ConsumerRecord<byte[], byte[]>> l = recs.records(tp);
                        offs.put(tp, new OffsetAndMetadata(l.get(l.size() - 1).offset() + 1));
                    }
                    consumer.commitSync(offs, Duration.ofMillis(Math.max(1000, Math.min(remaining(), 20000))));
                }
                for (ConsumerRecord<byte[], byte[]> r : recs) {
                    emit(recJson(r));
                    digest.add(r.partition(), r.offset(), r.timestamp(), r.key(), r.value(), r.headers());
                    got++;
                }
                if (pauseAfter > 0 && got >= pauseAfter) {
                    pauseAfter = 0;
                    emit(obj("t", "paused", "count", got));
                    while (!Files.exists(Paths.get(resumeFile)) && remaining() > 0) Thread.sleep(50);
                    emit(obj("t", "resumed", "count", got));
                }
            }
            emit(obj("t", "closing", "count", got));
        }
        boolean ok = follow ? !(remaining() == 0) : got >= count;
        emit(obj("t", "summary", "count", got, "ok", ok, "digest", digest.hex()));
        if (!ok) System.err.println("E2eClient consume: got " + got + " of " + (follow ? "?" : count) + " records before the deadline");
        return ok ? 0 : 2;
    }

    static void emitAssignment(Set<TopicPartition> owned, String event, Collection<TopicPartition> changed) {
        List<Integer> now = new ArrayList<>();
        for (TopicPartition tp : owned) now.add(tp.partition());
        List<Integer> ch = new ArrayList<>();
        for (TopicPartition tp : changed) ch.add(tp.partition());
        Collections.sort(ch);
        emit(obj("t", "assignment", "event", event, "changed", ch, "partitions", now));
    }

    // ------------------------------------------------------------ share-consume (KIP-932)

    // Sets group configs (resource type GROUP), e.g. share.auto.offset.reset=earliest.
    static void setGroupConfigs(Admin admin, String group, Map<String, String> configs) throws Exception {
        ConfigResource res = new ConfigResource(ConfigResource.Type.GROUP, group);
        List<AlterConfigOp> ops = new ArrayList<>();
        for (Map.Entry<String, String> e : configs.entrySet())
            ops.add(new AlterConfigOp(new ConfigEntry(e.getKey(), e.getValue()), AlterConfigOp.OpType.SET));
        admin.incrementalAlterConfigs(Collections.singletonMap(res, ops)).all().get();
    }

    static Map<String, String> configArgs(Args a) {
        Map<String, String> configs = new LinkedHashMap<>();
        for (String kv : a.all("config")) {
            int eq = kv.indexOf('=');
            if (eq < 0) throw new IllegalArgumentException("--config wants k=v, got " + kv);
            configs.put(kv.substring(0, eq), kv.substring(eq + 1));
        }
        return configs;
    }

    static int shareConsume(Args a) throws Exception {
        String topic = a.need("topic");
        String group = a.need("group");
        int count = a.getInt("count", Integer.MAX_VALUE);
        long extraMs = a.getLong("extra-ms", 0);
        String reset = a.get("reset", null);
        String ackMode = a.get("ack-mode", "implicit");
        if (!ackMode.equals("implicit") && !ackMode.equals("explicit"))
            throw new IllegalArgumentException("--ack-mode is implicit or explicit");

        if (reset != null) {
            try (Admin admin = Admin.create(adminProps(a))) {
                setGroupConfigs(admin, group, Collections.singletonMap("share.auto.offset.reset", reset));
            }
            emit(obj("t", "group_config", "group", group, "share.auto.offset.reset", reset));
        }

        Properties p = new Properties();
        common(p, a);
        p.put(ConsumerConfig.KEY_DESERIALIZER_CLASS_CONFIG, ByteArrayDeserializer.class.getName());
        p.put(ConsumerConfig.VALUE_DESERIALIZER_CLASS_CONFIG, ByteArrayDeserializer.class.getName());
        p.put(ConsumerConfig.GROUP_ID_CONFIG, group);
        p.put(ConsumerConfig.DEFAULT_API_TIMEOUT_MS_CONFIG, "20000");
        p.put(ConsumerConfig.SHARE_ACKNOWLEDGEMENT_MODE_CONFIG, ackMode);
        // (auto.offset.reset, isolation.level, session/heartbeat settings, group.protocol are
        // rejected by KafkaShareConsumer: they are group configs of a share group)

        int got = 0, ackErrors = 0;
        Digest digest = new Digest();
        KafkaShareConsumer<byte[], byte[]> consumer = new KafkaShareConsumer<>(p);
        try {
            consumer.subscribe(Collections.singletonList(topic));
            long extraUntil = -1;
            try {
                while (true) {
                    if (got >= count) {
                        if (extraUntil < 0) extraUntil = System.currentTimeMillis() + extraMs;
                        if (System.currentTimeMillis() >= extraUntil) break;
                    }
                    if (remaining() == 0) break;
                    ConsumerRecords<byte[], byte[]> recs = consumer.poll(Duration.ofMillis(Math.min(200, Math.max(1, remaining()))));
                    if (recs.isEmpty()) continue;
                    if (ackMode.equals("explicit"))
                        for (ConsumerRecord<byte[], byte[]> r : recs) consumer.acknowledge(r, AcknowledgeType.ACCEPT);
                    // acknowledge before reporting: a record reported here is not delivered again
                    Map<TopicIdPartition, Optional<KafkaException>> acks =
                            consumer.commitSync(Duration.ofMillis(Math.max(1000, Math.min(remaining(), 20000))));
                    for (Map.Entry<TopicIdPartition, Optional<KafkaException>> e : acks.entrySet()) {
                        if (e.getValue().isPresent()) {
                            ackErrors++;
                            KafkaException ex = e.getValue().get();
                            emit(obj("t", "ack_error", "topic", e.getKey().topic(), "p", e.getKey().partition(),
                                    "error", ex.getClass().getName() + ": " + ex.getMessage()));
                        }
                    }
                    for (ConsumerRecord<byte[], byte[]> r : recs) {
                        Map<String, Object> j = recJson(r);
                        j.put("dc", r.deliveryCount().map(Short::intValue).orElse(null));
                        emit(j);
                        digest.add(r.partition(), r.offset(), r.timestamp(), r.key(), r.value(), r.headers());
                        got++;
                    }
                }
            } catch (org.apache.kafka.common.errors.UnsupportedVersionException
                     | org.apache.kafka.common.errors.GroupAuthorizationException
                     | org.apache.kafka.common.errors.TopicAuthorizationException e) {
                System.err.println("E2eClient share-consume: " + e.getClass().getName() + ": " + e.getMessage()
                        + (e instanceof org.apache.kafka.common.errors.UnsupportedVersionException
                           ? " (are share groups enabled? FeatureCommand upgrade --feature share.version=1)" : ""));
                emit(obj("t", "error", "error", e.getClass().getName() + ": " + e.getMessage()));
                emit(obj("t", "summary", "count", got, "distinct", digest.lines.size(), "ack_errors", ackErrors,
                        "ok", false, "digest", digest.hex()));
                return 1;
            }
            emit(obj("t", "closing", "count", got));
        } finally {
            // leaves the group and closes the share sessions (bounded: the default is 30 s)
            consumer.close(Duration.ofMillis(Math.max(1000, Math.min(remaining(), 10000))));
        }
        boolean ok = got >= count && ackErrors == 0;
        emit(obj("t", "summary", "count", got, "distinct", digest.lines.size(), "ack_errors", ackErrors,
                "ok", ok, "digest", digest.hex()));
        if (got < count) System.err.println("E2eClient share-consume: got " + got + " of " + count + " records before the deadline");
        if (ackErrors > 0) System.err.println("E2eClient share-consume: " + ackErrors + " acknowledgement(s) failed");
        return ok ? 0 : 2;
    }

    // ------------------------------------------------------------ admin

    static Properties adminProps(Args a) {
        Properties p = new Properties();
        common(p, a);
        long apiTimeout = Math.max(5000, Math.min(remaining(), 30000));
        p.put(AdminClientConfig.DEFAULT_API_TIMEOUT_MS_CONFIG, Long.toString(apiTimeout));
        // the admin client rejects default.api.timeout.ms < request.timeout.ms (short --timeout-ms)
        if (apiTimeout < Long.parseLong(p.getProperty("request.timeout.ms")))
            p.put("request.timeout.ms", Long.toString(apiTimeout));
        return p;
    }

    static Map<String, Object> topicJson(TopicDescription d) {
        List<Object> parts = new ArrayList<>();
        for (TopicPartitionInfo pi : d.partitions()) {
            List<Integer> replicas = new ArrayList<>();
            for (Node n : pi.replicas()) replicas.add(n.id());
            List<Integer> isr = new ArrayList<>();
            for (Node n : pi.isr()) isr.add(n.id());
            parts.add(obj("partition", pi.partition(), "leader", nodeJson(pi.leader()), "replicas", replicas, "isr", isr));
        }
        return obj("t", "topic", "name", d.name(), "id", d.topicId() == null ? null : d.topicId().toString(),
                "internal", d.isInternal(), "partitions", parts);
    }

    static TopicDescription describeWithRetry(Admin admin, String topic, int expectPartitions) throws Exception {
        Exception last = null;
        while (remaining() > 0) {
            try {
                TopicDescription d = admin.describeTopics(Collections.singletonList(topic),
                        new DescribeTopicsOptions().timeoutMs((int) Math.min(10000, Math.max(1000, remaining()))))
                        .allTopicNames().get().get(topic);
                boolean ready = d.partitions().size() >= expectPartitions;
                for (TopicPartitionInfo pi : d.partitions()) if (pi.leader() == null || pi.leader().isEmpty()) ready = false;
                if (ready) return d;
            } catch (ExecutionException e) {
                last = e;
            }
            Thread.sleep(200);
        }
        throw new RuntimeException("topic " + topic + " not ready before the deadline", last);
    }

    static int admin(Args a) throws Exception {
        if (a.positional.isEmpty()) throw new IllegalArgumentException("admin needs create-topic|describe-topic|delete-topic|list-topics");
        String op = a.positional.get(0);
        try (Admin admin = Admin.create(adminProps(a))) {
            switch (op) {
                case "create-topic": {
                    String topic = a.need("topic");
                    int parts = a.getInt("partitions", 1);
                    short rf = (short) a.getInt("replication-factor", 1);
                    Map<String, String> configs = new HashMap<>();
                    for (String kv : a.all("config")) {
                        int eq = kv.indexOf('=');
                        configs.put(kv.substring(0, eq), kv.substring(eq + 1));
                    }
                    NewTopic nt = new NewTopic(topic, parts, rf).configs(configs);
                    admin.createTopics(Collections.singletonList(nt),
                            new CreateTopicsOptions().timeoutMs((int) Math.min(30000, Math.max(1000, remaining()))))
                            .all().get();
                    if (!a.flag("no-wait")) {
                        emit(topicJson(describeWithRetry(admin, topic, parts)));
                    } else {
                        emit(obj("t", "created", "name", topic));
                    }
                    return 0;
                }
                case "describe-topic": {
                    String topic = a.need("topic");
                    emit(topicJson(describeWithRetry(admin, topic, 1)));
                    return 0;
                }
                case "delete-topic": {
                    String topic = a.need("topic");
                    admin.deleteTopics(Collections.singletonList(topic),
                            new DeleteTopicsOptions().timeoutMs((int) Math.min(30000, Math.max(1000, remaining()))))
                            .all().get();
                    if (!a.flag("no-wait")) {
                        while (true) {
                            Set<String> names = admin.listTopics().names().get();
                            if (!names.contains(topic)) break;
                            if (remaining() == 0) throw new RuntimeException("topic still listed after delete");
                            Thread.sleep(200);
                        }
                    }
                    emit(obj("t", "deleted", "name", topic));
                    return 0;
                }
                case "list-topics": {
                    Set<String> names = new TreeSet<>(admin.listTopics(new ListTopicsOptions().listInternal(a.flag("internal"))).names().get());
                    emit(obj("t", "topics", "topics", new ArrayList<>(names)));
                    return 0;
                }
                case "describe-group": {
                    String group = a.need("group");
                    org.apache.kafka.clients.admin.ConsumerGroupDescription g =
                            admin.describeConsumerGroups(Collections.singletonList(group)).all().get().get(group);
                    List<Object> members = new ArrayList<>();
                    for (org.apache.kafka.clients.admin.MemberDescription m : g.members()) {
                        List<Integer> parts = new ArrayList<>();
                        for (TopicPartition tp : m.assignment().topicPartitions()) parts.add(tp.partition());
                        Collections.sort(parts);
                        members.add(obj("member_id", m.consumerId(), "client_id", m.clientId(), "partitions", parts));
                    }
                    emit(obj("t", "group", "group", g.groupId(), "state", String.valueOf(g.groupState()),
                            "type", String.valueOf(g.type()), "coordinator", nodeJson(g.coordinator()),
                            "members", members));
                    return 0;
                }
                case "describe-share-group": {
                    String group = a.need("group");
                    org.apache.kafka.clients.admin.ShareGroupDescription g =
                            admin.describeShareGroups(Collections.singletonList(group)).all().get().get(group);
                    List<Object> members = new ArrayList<>();
                    for (org.apache.kafka.clients.admin.ShareMemberDescription m : g.members()) {
                        List<Object> parts = new ArrayList<>();
                        List<TopicPartition> tps = new ArrayList<>(m.assignment().topicPartitions());
                        tps.sort((x, y) -> x.topic().equals(y.topic()) ? Integer.compare(x.partition(), y.partition())
                                : x.topic().compareTo(y.topic()));
                        for (TopicPartition tp : tps) parts.add(Arrays.asList(tp.topic(), tp.partition()));
                        members.add(obj("member_id", m.consumerId(), "client_id", m.clientId(),
                                "member_epoch", m.memberEpoch(), "partitions", parts));
                    }
                    emit(obj("t", "share_group", "group", g.groupId(), "state", String.valueOf(g.groupState()),
                            "group_epoch", g.groupEpoch(), "coordinator", nodeJson(g.coordinator()), "members", members));
                    return 0;
                }
                case "alter-share-offsets": {
                    String group = a.need("group");
                    String topic = a.need("topic");
                    long offset = Long.parseLong(a.need("offset"));
                    Map<TopicPartition, Long> offsets = new HashMap<>();
                    for (int p = 0; p < a.getInt("partitions", 1); p++) offsets.put(new TopicPartition(topic, p), offset);
                    admin.alterShareGroupOffsets(group, offsets).all().get();
                    emit(obj("t", "share_offsets_altered", "group", group, "topic", topic, "partitions", offsets.size()));
                    return 0;
                }
                case "delete-share-offsets": {
                    String group = a.need("group");
                    String topic = a.need("topic");
                    admin.deleteShareGroupOffsets(group, Collections.singleton(topic)).all().get();
                    emit(obj("t", "share_offsets_deleted", "group", group, "topic", topic));
                    return 0;
                }
                case "set-group-config": {
                    String group = a.need("group");
                    Map<String, String> configs = configArgs(a);
                    if (configs.isEmpty()) throw new IllegalArgumentException("set-group-config needs --config k=v");
                    setGroupConfigs(admin, group, configs);
                    emit(obj("t", "group_config", "group", group, "config", new LinkedHashMap<String, Object>(configs)));
                    return 0;
                }
                case "describe-config": {
                    String topic = a.get("topic", null);
                    String name = topic != null ? topic : a.need("group");
                    ConfigResource res = new ConfigResource(
                            topic != null ? ConfigResource.Type.TOPIC : ConfigResource.Type.GROUP, name);
                    Config cfg = admin.describeConfigs(Collections.singletonList(res)).all().get().get(res);
                    Map<String, Object> m = new LinkedHashMap<>();
                    for (ConfigEntry e : cfg.entries()) m.put(e.name(), e.value());
                    emit(obj("t", "config", "name", name, "config", m));
                    return 0;
                }
                default:
                    throw new IllegalArgumentException("unknown admin operation " + op);
            }
        }
    }

    // ------------------------------------------------------------ metadata / ping

    static int metadata(Args a, boolean ping) throws Exception {
        int expectBrokers = a.getInt("expect-brokers", 1);
        int expectNode = a.getInt("expect-node", -1);
        String topic = a.get("topic", null);
        Properties p = adminProps(a);
        Exception last = null;
        try (Admin admin = Admin.create(p)) {
            while (true) {
                try {
                    DescribeClusterResult r = admin.describeCluster(new DescribeClusterOptions()
                            .timeoutMs((int) Math.min(5000, Math.max(1000, remaining()))));
                    Collection<Node> nodes = r.nodes().get();
                    Node controller = r.controller().get();
                    String clusterId = r.clusterId().get();
                    boolean hasNode = expectNode < 0;
                    List<Object> brokers = new ArrayList<>();
                    List<Node> sorted = new ArrayList<>(nodes);
                    sorted.sort((x, y) -> Integer.compare(x.id(), y.id()));
                    for (Node n : sorted) {
                        brokers.add(nodeJson(n));
                        if (n.id() == expectNode) hasNode = true;
                    }
                    if (!ping || (nodes.size() >= expectBrokers && hasNode)) {
                        Map<String, Object> out = obj("t", "metadata", "cluster_id", clusterId,
                                "controller", nodeJson(controller), "brokers", brokers);
                        if (topic != null) out.put("partitions", partitionsViaMetadata(a, topic));
                        emit(out);
                        return 0;
                    }
                    last = new RuntimeException("saw " + nodes.size() + " brokers, want " + expectBrokers
                            + (hasNode ? "" : " including node " + expectNode));
                } catch (ExecutionException e) {
                    if (!ping) throw e;
                    last = e;
                }
                if (remaining() == 0) {
                    throw new RuntimeException("cluster not ready before the deadline", last);
                }
                Thread.sleep(200);
            }
        }
    }

    // Leaders and replicas as a consumer sees them through the Metadata API.
    static List<Object> partitionsViaMetadata(Args a, String topic) {
        Properties p = new Properties();
        common(p, a);
        p.put(ConsumerConfig.KEY_DESERIALIZER_CLASS_CONFIG, ByteArrayDeserializer.class.getName());
        p.put(ConsumerConfig.VALUE_DESERIALIZER_CLASS_CONFIG, ByteArrayDeserializer.class.getName());
        p.put("allow.auto.create.topics", "false");
        List<Object> out = new ArrayList<>();
        try (KafkaConsumer<byte[], byte[]> c = new KafkaConsumer<>(p)) {
            List<PartitionInfo> infos = c.partitionsFor(topic, Duration.ofMillis(Math.max(1000, Math.min(remaining(), 15000))));
            List<PartitionInfo> sorted = new ArrayList<>(infos);
            sorted.sort((x, y) -> Integer.compare(x.partition(), y.partition()));
            for (PartitionInfo pi : sorted) {
                List<Object> replicas = new ArrayList<>();
                for (Node n : pi.replicas()) replicas.add(nodeJson(n));
                out.add(obj("partition", pi.partition(), "leader", nodeJson(pi.leader()), "replicas", replicas));
            }
        }
        return out;
    }
}
