// Producer: appends invoice events for two tenants with eventstore.push (JDBC, pgjdbc).
//
// Each push is one call in one short transaction, as a request handler would make it: all its
// events commit or none do (G1), and each aggregate gets sequences 1, 2, 3... (G2). Commands go
// in the JSON form, eventstore.push(?::jsonb): an array of objects with the fields of
// eventstore.command, bound as a string. A stale expected_sequence shows optimistic
// concurrency: it is refused with SQLSTATE ES409, whose detail is a JSON object (the aggregate,
// the expected and the actual sequence), and nothing is written. The last push carries an event
// id and metadata and is sent twice, the second time on a new connection as after a connection
// lost before the answer came: the retry returns the rows the first one wrote and writes
// nothing (G14).
//
//     java -cp /usr/share/java/postgresql.jar Producer.java
//
// Connection: the libpq environment (PGHOST, PGPORT, PGUSER, PGDATABASE), which pgjdbc does not
// read by itself. Prints one line per event written, one per refused push and one per retried
// event.
import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.UUID;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import org.postgresql.util.PSQLException;

public class Producer {
    static final Map<String, Integer> TENANTS = new LinkedHashMap<>();  // tenant -> price unit in cents
    static {
        TENANTS.put("acme", 100);
        TENANTS.put("globex", 7);
    }
    // The id of each tenant's inv-3 created event. An application makes a fresh one
    // (UUID.randomUUID()) when it decides the event; fixed here so that every run and every
    // language print the same.
    static final Map<String, UUID> EVENT_IDS = Map.of(
        "acme", UUID.fromString("00000000-0000-4000-8000-0000000000a1"),
        "globex", UUID.fromString("00000000-0000-4000-8000-0000000000b1"));

    static final String PUSH = """
        SELECT instance_id, aggregate_id, sequence, position, in_tx_order
          FROM eventstore.push(?::jsonb) ORDER BY in_tx_order""";

    /** One row push returned. */
    record Pushed(String tenant, String invoice, long sequence, long position) {}

    /** One command; null fields are left out of the JSON and take their defaults (revision 1,
     *  creator current_user, owner the aggregate's owner, expected_sequence: no check, no event
     *  id, no metadata). */
    record Command(String tenant, String invoice, String eventType, Long amountCents,
                   Long expectedSequence, UUID id, String correlationId) {
        String toJson() {
            StringBuilder json = new StringBuilder("{")
                .append("\"instance_id\": ").append(quote(tenant))
                .append(", \"aggregate_type\": \"invoice\"")
                .append(", \"aggregate_id\": ").append(quote(invoice))
                .append(", \"event_type\": ").append(quote(eventType));
            if (amountCents != null) json.append(", \"payload\": {\"amount_cents\": ").append(amountCents).append("}");
            if (expectedSequence != null) json.append(", \"expected_sequence\": ").append(expectedSequence);
            if (id != null) json.append(", \"id\": ").append(quote(id.toString()));
            if (correlationId != null) json.append(", \"metadata\": {\"correlation_id\": ").append(quote(correlationId)).append("}");
            return json.append("}").toString();
        }
    }

    static Command command(String tenant, String invoice, String eventType, Long amountCents, Long expectedSequence) {
        return new Command(tenant, invoice, eventType, amountCents, expectedSequence, null, null);
    }

    /** Appends the commands in one transaction (autocommit: the statement is its own
     *  transaction); returns push's rows, one per event. */
    static List<Pushed> send(Connection conn, List<Command> commands) throws SQLException {
        List<String> json = new ArrayList<>();
        for (Command cmd : commands) json.add(cmd.toJson());
        try (PreparedStatement st = conn.prepareStatement(PUSH)) {
            st.setString(1, "[" + String.join(", ", json) + "]");
            // executeQuery, never executeUpdate: push returns rows, and executeUpdate throws
            // "A result was returned when none was expected" AFTER the push has committed; a
            // caller that retried on that exception without event ids would write the events
            // twice.
            try (ResultSet rs = st.executeQuery()) {
                List<Pushed> rows = new ArrayList<>();
                while (rs.next()) {
                    rows.add(new Pushed(rs.getString("instance_id"), rs.getString("aggregate_id"),
                                        rs.getLong("sequence"), rs.getLong("position")));
                }
                return rows;
            }
        }
    }

    /** Appends the commands; prints the events written, or the refusal. Returns the rows. */
    static List<Pushed> push(Connection conn, List<Command> commands) throws SQLException {
        List<Pushed> rows;
        try {
            rows = send(conn, commands);
        } catch (PSQLException e) {
            if (!"ES409".equals(e.getSQLState())) throw e;  // ES409: expected_sequence did not match
            Map<String, Object> conflict = parseJsonObject(e.getServerErrorMessage().getDetail());
            System.out.println("refused " + conflict.get("instance_id") + "/" + conflict.get("aggregate_id") + ": "
                               + e.getSQLState() + " expected_sequence=" + conflict.get("expected_sequence")
                               + " actual_sequence=" + conflict.get("actual_sequence"));
            return List.of();
        }
        for (int i = 0; i < rows.size(); i++) {
            Pushed row = rows.get(i);
            Command cmd = commands.get(i);
            String amount = cmd.amountCents() != null ? " amount_cents=" + cmd.amountCents() : "";
            System.out.println("pushed " + row.tenant() + "/" + row.invoice() + " seq=" + row.sequence()
                               + " " + cmd.eventType() + amount);
        }
        return rows;
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

    /** A flat JSON object (string, integer, true, false and null values), as in ES409's detail:
     *  enough for this example; an application would use its JSON library. */
    static Map<String, Object> parseJsonObject(String json) {
        Matcher token = Pattern.compile(
            "\\s*(?:([{}:,])|\"((?:[^\"\\\\]|\\\\.)*)\"|(-?\\d+)|(true|false|null))\\s*").matcher(json);
        Map<String, Object> object = new LinkedHashMap<>();
        // The expected shape, token by token: { "key" : value , "key" : value ... }
        String expect = "{";
        String key = null;
        int end = 0;
        while (end < json.length()) {
            if (!token.find(end) || token.start() != end) break;
            end = token.end();
            String punctuation = token.group(1);
            if (expect.equals("{") && "{".equals(punctuation)) {
                expect = "key or }";
            } else if (expect.startsWith("key") && token.group(2) != null) {
                key = unescape(token.group(2));
                expect = ":";
            } else if (expect.equals("key or }") && "}".equals(punctuation) && object.isEmpty()
                       || expect.equals(", or }") && "}".equals(punctuation)) {
                expect = "end";
            } else if (expect.equals(":") && ":".equals(punctuation)) {
                expect = "value";
            } else if (expect.equals("value") && punctuation == null) {
                object.put(key, token.group(2) != null ? unescape(token.group(2))
                              : token.group(3) != null ? (Object) Long.valueOf(token.group(3))
                              : token.group(4).equals("null") ? null : Boolean.valueOf(token.group(4)));
                expect = ", or }";
            } else if (expect.equals(", or }") && ",".equals(punctuation)) {
                expect = "key";
            } else {
                break;
            }
        }
        if (!expect.equals("end") || end != json.length()) {
            throw new IllegalArgumentException("not a flat JSON object: " + json);
        }
        return object;
    }

    static String unescape(String s) {
        StringBuilder out = new StringBuilder();
        for (int i = 0; i < s.length(); i++) {
            char c = s.charAt(i);
            if (c != '\\') { out.append(c); continue; }
            char e = s.charAt(++i);
            switch (e) {
                case 'n' -> out.append('\n');
                case 't' -> out.append('\t');
                case 'r' -> out.append('\r');
                case 'b' -> out.append('\b');
                case 'f' -> out.append('\f');
                case 'u' -> { out.append((char) Integer.parseInt(s.substring(i + 1, i + 5), 16)); i += 4; }
                default -> out.append(e);  // " \ /
            }
        }
        return out.toString();
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
                // A push with an event id and metadata, then the same push again as its retry:
                // the answer to the first was "lost" (a new connection sends the retry). The
                // stored event's rows come back, nothing is written, and expected_sequence 0 is
                // not checked again (the first push moved the aggregate past it).
                List<Command> created = List.of(new Command(t, "inv-3", "invoice.created", unit, 0L,
                                                            EVENT_IDS.get(t), "example-" + t));
                List<Pushed> first = push(conn, created);
                List<Pushed> retried;
                try (Connection reconnected = connect()) {
                    retried = send(reconnected, created);
                }
                for (int i = 0; i < retried.size(); i++) {
                    Pushed row = retried.get(i);
                    System.out.println("retried " + t + "/" + row.invoice() + " seq=" + row.sequence()
                                       + " same_position=" + (row.position() == first.get(i).position()));
                }
            }
        }
    }
}
