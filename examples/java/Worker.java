// Projection worker: keeps the read model `invoices` up to date from the invoice events (JDBC,
// pgjdbc).
//
// A loop of short transactions, one per batch. Each transaction takes the projection's lock,
// calls eventstore.projection_catchup, applies every event of the batch to the read model and
// commits: the read model and the projection's checkpoint move together (G5). A handler error
// rolls the whole transaction back, so the same batch comes again. Another worker holding the
// projection is not an error: this one sleeps briefly and tries again (G6). The worker stops
// when a catch-up, made while holding the lock, returns no rows (caught up), then prints the
// read model.
//
// Run as many copies as you like; at most one applies a given tenant's batch at a time.
//
//     java -cp /usr/share/java/postgresql.jar Worker.java [--name A] [--batch-size 4] \
//          [--fail-on-batch 2] [--tenants acme,globex]
//
// Connection: the libpq environment (PGHOST, PGPORT, PGUSER, PGDATABASE). The read model goes
// to stdout, one line per invoice; progress and a summary go to stderr.
import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;

public class Worker {
    static final String PROJECTION = "invoices";
    static final long RETRY_PAUSE_MS = 200;  // when the projection is busy or a batch was rolled back
    static final int MAX_ATTEMPTS = 5;       // consecutive rolled-back attempts of one batch before giving up

    static final String READ_MODEL = """
        CREATE TABLE IF NOT EXISTS invoices (
            instance_id text    NOT NULL,
            invoice_id  text    NOT NULL,
            total_cents bigint  NOT NULL,
            lines       integer NOT NULL DEFAULT 0,
            paid        boolean NOT NULL DEFAULT false,
            version     bigint  NOT NULL,  -- the sequence of the invoice's last event applied
            PRIMARY KEY (instance_id, invoice_id)
        )""";

    // The amount is read from the payload in SQL: the JDK has no JSON parser.
    static final String CATCHUP = """
        SELECT instance_id, aggregate_id, sequence, event_type,
               coalesce((payload->>'amount_cents')::bigint, 0) AS amount_cents
          FROM eventstore.projection_catchup(?, ?, ?, aggregate_types => ARRAY['invoice'])""";

    // One statement per event type, all with the parameters (tenant, invoice, amount, sequence).
    // Every statement checks that the event is the invoice's next one (version = sequence - 1),
    // so a skipped, repeated or reordered event would fail loudly.
    static final Map<String, String> HANDLERS = Map.of(
        "invoice.created", """
            INSERT INTO invoices (instance_id, invoice_id, total_cents, version)
            SELECT tenant, invoice, amount, sequence
              FROM (VALUES (?, ?, ?::bigint, ?::bigint)) AS e (tenant, invoice, amount, sequence)
             WHERE sequence = 1""",
        "invoice.line_added", """
            UPDATE invoices SET total_cents = total_cents + amount, lines = lines + 1, version = sequence
              FROM (VALUES (?, ?, ?::bigint, ?::bigint)) AS e (tenant, invoice, amount, sequence)
             WHERE instance_id = tenant AND invoice_id = invoice AND version = sequence - 1""",
        "invoice.paid", """
            UPDATE invoices SET paid = true, version = sequence
              FROM (VALUES (?, ?, ?::bigint, ?::bigint)) AS e (tenant, invoice, amount, sequence)
             WHERE instance_id = tenant AND invoice_id = invoice AND version = sequence - 1""");

    record Event(String tenant, String invoice, long sequence, String eventType, long amountCents) {}

    static class HandlerError extends Exception {
        HandlerError(String message) { super(message); }
    }

    final Connection conn;
    final String name;
    final int batchSize;
    int failOnBatch;  // 0, or: fail once, on the last event of this batch
    int batches, events, busy, rollbacks;

    Worker(Connection conn, String name, int batchSize, int failOnBatch) {
        this.conn = conn;
        this.name = name;
        this.batchSize = batchSize;
        this.failOnBatch = failOnBatch;
    }

    // Workers start together: serialize the CREATE with a transaction-scoped lock of our own.
    void createReadModel() throws SQLException {
        try (var st = conn.createStatement()) {
            st.execute("SELECT pg_advisory_xact_lock(hashtext('examples: invoices read model'))");
            st.execute(READ_MODEL);
            conn.commit();
        } catch (SQLException e) {
            conn.rollback();
            throw e;
        }
    }

    void apply(Event e) throws SQLException, HandlerError {
        String where = e.tenant() + "/" + e.invoice() + " seq " + e.sequence();
        String handler = HANDLERS.get(e.eventType());
        if (handler == null) throw new HandlerError(where + ": unknown event type " + e.eventType());
        try (PreparedStatement st = conn.prepareStatement(handler)) {
            st.setString(1, e.tenant());
            st.setString(2, e.invoice());
            st.setLong(3, e.amountCents());
            st.setLong(4, e.sequence());
            if (st.executeUpdate() != 1) throw new HandlerError(where + ": not the invoice's next event");
        }
    }

    /** One transaction. Returns the number of events applied, or null when another worker holds
     *  the projection. Throws (after rolling back) when a handler fails. */
    Integer runBatch(String tenant) throws SQLException, HandlerError {
        try {
            // Lock first: a catch-up that returns zero rows cannot tell "another worker has it"
            // from "caught up". Holding the lock, the catch-up re-enters it and zero rows mean
            // caught up. The lock is transaction-scoped: COMMIT or ROLLBACK releases it.
            boolean locked;
            try (PreparedStatement st = conn.prepareStatement("SELECT eventstore.lock_projection(?, ?)")) {
                st.setString(1, PROJECTION);
                st.setString(2, tenant);
                try (ResultSet rs = st.executeQuery()) {
                    rs.next();
                    locked = rs.getBoolean(1);
                }
            }
            if (!locked) {
                conn.commit();
                return null;
            }
            List<Event> batch = new ArrayList<>();
            try (PreparedStatement st = conn.prepareStatement(CATCHUP)) {
                st.setString(1, PROJECTION);
                st.setString(2, tenant);
                st.setInt(3, batchSize);
                try (ResultSet rs = st.executeQuery()) {
                    while (rs.next()) {
                        batch.add(new Event(rs.getString("instance_id"), rs.getString("aggregate_id"),
                                            rs.getLong("sequence"), rs.getString("event_type"),
                                            rs.getLong("amount_cents")));
                    }
                }
            }
            for (int i = 0; i < batch.size(); i++) {
                if (batches + 1 == failOnBatch && i == batch.size() - 1) {
                    failOnBatch = 0;
                    throw new HandlerError("simulated failure on the last event of the batch");
                }
                apply(batch.get(i));
            }
            conn.commit();
            return batch.size();
        } catch (SQLException | HandlerError | RuntimeException e) {
            conn.rollback();
            throw e;
        }
    }

    void catchUp(String tenant) throws Exception {
        int attempts = 0;
        while (true) {
            Integer applied;
            try {
                applied = runBatch(tenant);
            } catch (SQLException | HandlerError e) {
                // The transaction was rolled back: read model and checkpoint are unchanged and
                // the same batch comes again on the next try.
                rollbacks++;
                attempts++;
                System.err.println("worker " + name + ": " + tenant + ": batch rolled back (" + e.getMessage() + ")");
                if (attempts >= MAX_ATTEMPTS) throw e;
                Thread.sleep(RETRY_PAUSE_MS);
                continue;
            }
            attempts = 0;
            if (applied == null) {  // another worker is running this projection: try again soon
                busy++;
                Thread.sleep(RETRY_PAUSE_MS);
            } else if (applied == 0) {  // caught up
                return;
            } else {
                batches++;
                events += applied;
            }
        }
    }

    void printReadModel() throws SQLException {
        try (var st = conn.createStatement();
             ResultSet rs = st.executeQuery("""
                 SELECT instance_id, invoice_id, total_cents, lines, paid, version
                   FROM invoices ORDER BY instance_id, invoice_id""")) {
            while (rs.next()) {
                System.out.println(rs.getString("instance_id") + "/" + rs.getString("invoice_id")
                                   + " total_cents=" + rs.getLong("total_cents") + " lines=" + rs.getInt("lines")
                                   + " paid=" + rs.getBoolean("paid") + " version=" + rs.getLong("version"));
            }
            conn.commit();
        }
    }

    /** A connection from the libpq environment variables. prepareThreshold=0: no server-side
     *  prepared statements, so the same code runs behind PgBouncer in transaction pooling mode. */
    static Connection connect() throws SQLException {
        String url = "jdbc:postgresql://" + env("PGHOST", "localhost") + ":" + env("PGPORT", "5432") + "/"
                     + env("PGDATABASE", env("PGUSER", "postgres")) + "?prepareThreshold=0";
        return DriverManager.getConnection(url, env("PGUSER", "postgres"), System.getenv("PGPASSWORD"));
    }

    static String env(String name, String fallback) {
        String value = System.getenv(name);
        return value == null || value.isEmpty() ? fallback : value;
    }

    public static void main(String[] args) throws Exception {
        String name = "1", tenants = "acme,globex";
        int batchSize = 100, failOnBatch = 0;
        for (int i = 0; i < args.length; i++) {
            String value = i + 1 < args.length ? args[i + 1] : null;
            switch (args[i]) {
                case "--name" -> name = value;
                case "--batch-size" -> batchSize = Integer.parseInt(value);
                case "--fail-on-batch" -> failOnBatch = Integer.parseInt(value);
                case "--tenants" -> tenants = value;
                default -> throw new IllegalArgumentException("unknown argument " + args[i]
                    + " (usage: Worker.java [--name A] [--batch-size N] [--fail-on-batch N] [--tenants a,b])");
            }
            i++;
        }
        try (Connection conn = connect()) {
            // autocommit off: a transaction starts with the first statement and ends with
            // commit() or rollback(), never a savepoint (pgjdbc's autosave stays "never", G8).
            conn.setAutoCommit(false);
            Worker worker = new Worker(conn, name, batchSize, failOnBatch);
            worker.createReadModel();
            for (String tenant : tenants.split(",")) worker.catchUp(tenant);
            worker.printReadModel();
            System.err.println("worker " + worker.name + ": " + worker.batches + " batches, " + worker.events
                               + " events, " + worker.busy + " busy retries, " + worker.rollbacks + " rollbacks");
        }
    }
}
