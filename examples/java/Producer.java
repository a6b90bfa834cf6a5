// Producer: appends invoice events for two tenants with eventstore.push (JDBC, pgjdbc).
//
// Each push is one call in one short transaction, as a request handler would make it: all its
// events commit or none do (G1), and each aggregate gets sequences 1, 2, 3... (G2). Commands go
// in the JSON form, eventstore.push(?::jsonb): an array of objects with the fields of
// eventstore.command, bound as a string. The last push shows optimistic concurrency: a stale
// expected_sequence is refused with SQLSTATE 40001 and nothing is written.
//
//     java -cp /usr/share/java/postgresql.jar Producer.java
//
// Connection: the libpq environment (PGHOST, PGPORT, PGUSER, PGDATABASE), which pgjdbc does not
// read by itself. Prints one line per event written and one per refused push.
import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import org.postgresql.util.PSQLException;

public class Producer {
    static final Map<String, Integer> TENANTS = new LinkedHashMap<>();  // tenant -> price unit in cents
    static {
        TENANTS.put("acme", 100);
        TENANTS.put("globex", 7);
    }

    static final String PUSH = """
        SELECT instance_id, aggregate_id, sequence, in_tx_order
          FROM eventstore.push(?::jsonb) ORDER BY in_tx_order""";

    /** One command; null fields are left out of the JSON and take their defaults (revision 1,
     *  creator current_user, owner the aggregate's owner, expected_sequence: no check). */
    record Command(String tenant, String invoice, String eventType, Long amountCents,
                   Long expectedSequence) {
        String toJson() {
            StringBuilder json = new StringBuilder("{")
                .append("\"instance_id\": ").append(quote(tenant))
                .append(", \"aggregate_type\": \"invoice\"")
                .append(", \"aggregate_id\": ").append(quote(invoice))
                .append(", \"event_type\": ").append(quote(eventType));
            if (amountCents != null) json.append(", \"payload\": {\"amount_cents\": ").append(amountCents).append("}");
            if (expectedSequence != null) json.append(", \"expected_sequence\": ").append(expectedSequence);
            return json.append("}").toString();
        }
    }

    static Command command(String tenant, String invoice, String eventType, Long amountCents, Long expectedSequence) {
        return new Command(tenant, invoice, eventType, amountCents, expectedSequence);
    }

    /** Appends the commands in one transaction (autocommit: the statement is its own
     *  transaction); prints the events written, or the refusal. */
    static void push(Connection conn, List<Command> commands) throws SQLException {
        List<String> json = new ArrayList<>();
        for (Command cmd : commands) json.add(cmd.toJson());
        try (PreparedStatement st = conn.prepareStatement(PUSH)) {
            st.setString(1, "[" + String.join(", ", json) + "]");
            // executeQuery, never executeUpdate: push returns rows, and executeUpdate throws
            // "A result was returned when none was expected" AFTER the push has committed; a
            // caller that retried on that exception would write the events twice.
            try (ResultSet rows = st.executeQuery()) {
                for (int i = 0; rows.next(); i++) {
                    Command cmd = commands.get(i);
                    String amount = cmd.amountCents() != null ? " amount_cents=" + cmd.amountCents() : "";
                    System.out.println("pushed " + rows.getString("instance_id") + "/" + rows.getString("aggregate_id")
                                       + " seq=" + rows.getLong("sequence") + " " + cmd.eventType() + amount);
                }
            }
        } catch (PSQLException e) {
            if (!"40001".equals(e.getSQLState())) throw e;  // 40001: expected_sequence did not match
            System.out.println("refused " + commands.get(0).tenant() + "/" + commands.get(0).invoice() + ": "
                               + e.getSQLState() + " " + e.getServerErrorMessage().getDetail());
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

    /** A JSON string literal (an application would use its JSON library). */
    static String quote(String s) {
        StringBuilder out = new StringBuilder("\"");
        for (char c : s.toCharArray()) {
            if (c == '"' || c == '\\') out.append('\\').append(c);
            else if (c < 0x20) out.append(String.format("\\u%04x", (int) c));
            else out.append(c);
        }
        return out.append('"').toString();
    }

    public static void main(String[] args) throws SQLException {
        try (Connection conn = connect()) {
            for (Map.Entry<String, Integer> tenant : TENANTS.entrySet()) {
                String t = tenant.getKey();
                long unit = tenant.getValue();
                // A new invoice and its first line in one atomic push; expected_sequence 0: the
                // aggregate must not exist yet.
                push(conn, List.of(command(t, "inv-1", "invoice.created", 120 * unit, 0L),
                                   command(t, "inv-1", "invoice.line_added", 30 * unit, null)));
                push(conn, List.of(command(t, "inv-2", "invoice.created", 75 * unit, 0L)));
                for (long i = 1; i <= 5; i++) {  // one event per call, as request handlers append them
                    push(conn, List.of(command(t, "inv-2", "invoice.line_added", i * unit, null)));
                }
                push(conn, List.of(command(t, "inv-1", "invoice.paid", null, 2L)));
                // A second "pay" decided on the same stale state: refused, nothing written.
                push(conn, List.of(command(t, "inv-1", "invoice.paid", null, 2L)));
            }
        }
    }
}
