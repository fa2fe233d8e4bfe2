// A quorum queue on a 3-node cluster through the RabbitMQ Java client, with its leader
// killed mid-run (the scenario of interop/pika/test_quorum.py; run.sh sets QUORUM_URLS=A,B,C,
// INTEROP_KILL and INTEROP_REVIVE for node B).
//
// The queue is declared on node B with x-queue-leader-locator client-local, so B leads; B
// is killed while a publisher with confirms uses it; the publisher reconnects to node C and
// goes on, publishing again what was nacked or not confirmed. A consumer on node A takes
// everything: lost = 0 and unexpected = 0, duplicates counted. Last line:
// "javaquorum: N passed, N failed".

import com.rabbitmq.client.*;
import java.nio.charset.StandardCharsets;
import java.util.*;
import java.util.concurrent.*;

public class Quorum {
    static final int BEFORE = 100, AFTER = 100;
    static final String QUEUE = "interop.java." + UUID.randomUUID().toString().substring(0, 10) + ".quorum";

    static Connection connect(String url) throws Exception {
        ConnectionFactory f = new ConnectionFactory();
        f.setUri(url.replace("%2F", "%2f"));
        f.setAutomaticRecoveryEnabled(false);
        f.setConnectionTimeout(5_000);
        return f.newConnection();
    }

    static void sh(String cmd) throws Exception {
        Process p = new ProcessBuilder("sh", "-c", cmd).inheritIO().start();
        if (p.waitFor() != 0) throw new AssertionError("command failed: " + cmd);
    }

    /** Publish `id` and wait for its confirm: true on ack, false on nack or timeout. */
    static boolean publish(Channel ch, int id) throws Exception {
        ch.basicPublish("", QUEUE, MessageProperties.PERSISTENT_BASIC,
                ("m" + id).getBytes(StandardCharsets.UTF_8));
        try {
            return ch.waitForConfirms(10_000);
        } catch (TimeoutException e) {
            return false;
        }
    }

    static void publishUntilConfirmed(String url, Deque<Integer> pending, Set<Integer> confirmed,
            long deadline) throws Exception {
        while (!pending.isEmpty()) {
            if (System.nanoTime() > deadline)
                throw new AssertionError(pending.size() + " publishes never confirmed on " + url);
            try (Connection c = connect(url)) {
                Channel ch = c.createChannel();
                ch.confirmSelect();
                while (!pending.isEmpty() && System.nanoTime() < deadline) {
                    if (publish(ch, pending.peekFirst())) confirmed.add(pending.pollFirst());
                    else Thread.sleep(200);
                }
            } catch (java.io.IOException | ShutdownSignalException | TimeoutException e) {
                Thread.sleep(200);
            }
        }
    }

    static void scenario(String[] urls, Map<String, Integer> stats) throws Exception {
        long deadline = System.nanoTime() + 40_000_000_000L;
        Connection a = connect(urls[0]);
        Connection b = connect(urls[1]);
        Channel ch = b.createChannel();
        Map<String, Object> args = new HashMap<>();
        args.put("x-queue-type", "quorum");
        args.put("x-queue-leader-locator", "client-local");
        ch.queueDeclare(QUEUE, true, false, false, args);
        ch.confirmSelect();
        Set<Integer> confirmed = new HashSet<>();
        for (int i = 0; i < BEFORE; i++) {
            if (!publish(ch, i)) throw new AssertionError("m" + i + " nacked before the kill");
            confirmed.add(i);
        }
        sh(System.getenv("INTEROP_KILL"));
        boolean lateConfirm;
        try {
            lateConfirm = publish(ch, -1);
        } catch (java.io.IOException | ShutdownSignalException e) {
            lateConfirm = false;
        }
        if (lateConfirm) throw new AssertionError("a publish on the killed node's connection was confirmed");
        Deque<Integer> pending = new ArrayDeque<>();
        for (int i = BEFORE; i < BEFORE + AFTER; i++) pending.add(i);
        publishUntilConfirmed(urls[2], pending, confirmed, deadline);

        List<Integer> got = Collections.synchronizedList(new ArrayList<>());
        Channel cch = a.createChannel();
        cch.basicQos(50);
        String tag = cch.basicConsume(QUEUE, false, (consumerTag, d) -> {
            got.add(Integer.parseInt(new String(d.getBody(), StandardCharsets.UTF_8).substring(1)));
            cch.basicAck(d.getEnvelope().getDeliveryTag(), false);
        }, consumerTag -> {});
        while (System.nanoTime() < deadline) {
            Set<Integer> seen;
            synchronized (got) { seen = new HashSet<>(got); }
            if (seen.containsAll(confirmed)) break;
            Thread.sleep(20);
        }
        cch.basicCancel(tag);
        Set<Integer> seen;
        int consumed;
        synchronized (got) { seen = new HashSet<>(got); consumed = got.size(); }
        Set<Integer> lost = new TreeSet<>(confirmed);
        lost.removeAll(seen);
        Set<Integer> unexpected = new TreeSet<>(seen);
        unexpected.removeIf(id -> id >= -1 && id < BEFORE + AFTER);
        stats.put("confirmed", confirmed.size());
        stats.put("consumed", consumed);
        stats.put("duplicates", consumed - seen.size());
        stats.put("lost", lost.size());
        stats.put("unexpected", unexpected.size());
        if (!lost.isEmpty() || !unexpected.isEmpty())
            throw new AssertionError("lost " + lost + ", unexpected " + unexpected);
        sh(System.getenv("INTEROP_REVIVE"));
        cch.queueDelete(QUEUE);
        a.close();
    }

    public static void main(String[] args) throws Exception {
        String[] urls = System.getenv("QUORUM_URLS").split(",");
        Map<String, Integer> stats = new LinkedHashMap<>();
        int passed = 0, failed = 0;
        try {
            scenario(urls, stats);
            passed++;
            System.out.println("ok   leader_killed_publisher_reconnects " + stats);
        } catch (Throwable t) {
            failed++;
            System.out.println("FAIL leader_killed_publisher_reconnects: " + t + " " + stats);
        }
        System.out.println("javaquorum: " + passed + " passed, " + failed + " failed");
        System.exit(failed == 0 ? 0 : 1);
    }
}
