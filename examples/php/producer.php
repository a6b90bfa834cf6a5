<?php
// Producer: appends invoice events for two tenants with eventstore.push (PHP, PDO pgsql).
//
// Each push is one call in one short transaction, as a request handler would make it: all its
// events commit or none do (G1), and each aggregate gets sequences 1, 2, 3... (G2). Commands go
// in the JSON form, eventstore.push(?::jsonb), with json_encode($commands). A stale
// expected_sequence shows optimistic concurrency: it is refused with SQLSTATE ES409, whose
// detail is a JSON object (the aggregate, the expected and the actual sequence), and nothing is
// written. The last push carries an event id and metadata and is sent twice, the second time on
// a new connection as after a connection lost before the answer came: the retry returns the
// rows the first one wrote and writes nothing (G14).
//
//     php producer.php
//
// Connection: the libpq environment (PGHOST, PGPORT, PGUSER, PGDATABASE): the DSN "pgsql:"
// names nothing, so libpq fills it in. Prints one line per event written, one per refused push
// and one per retried event.
declare(strict_types=1);

const TENANTS = ['acme' => 100, 'globex' => 7]; // tenant -> price unit in cents
// The id of each tenant's inv-3 created event. An application makes a fresh one (a UUIDv4 or
// v7 from its UUID library) when it decides the event; fixed here so that every run and every
// language print the same.
const EVENT_IDS = ['acme' => '00000000-0000-4000-8000-0000000000a1',
                   'globex' => '00000000-0000-4000-8000-0000000000b1'];

const PUSH = <<<'SQL'
    SELECT instance_id, aggregate_id, sequence, position, in_tx_order
      FROM eventstore.push(?::jsonb) ORDER BY in_tx_order
    SQL;

function connect(): PDO
{
    // ERRMODE_EXCEPTION: every error is a PDOException carrying the SQLSTATE.
    // PGSQL_ATTR_DISABLE_PREPARES: no named server-side prepared statements, so the same code
    // runs behind PgBouncer in transaction pooling mode.
    return new PDO('pgsql:', null, null, [
        PDO::ATTR_ERRMODE => PDO::ERRMODE_EXCEPTION,
        PDO::PGSQL_ATTR_DISABLE_PREPARES => true,
    ]);
}

// Omitted fields take their defaults: revision 1, creator current_user, owner the aggregate's
// owner, expected_sequence NULL (no check), no event id, no metadata.
function command(string $tenant, string $invoice, string $eventType, ?array $payload = null,
                 ?int $expectedSequence = null, ?string $id = null, ?array $metadata = null): array
{
    $cmd = ['instance_id' => $tenant, 'aggregate_type' => 'invoice', 'aggregate_id' => $invoice,
            'event_type' => $eventType];
    if ($payload !== null) $cmd['payload'] = $payload;
    if ($expectedSequence !== null) $cmd['expected_sequence'] = $expectedSequence;
    if ($id !== null) $cmd['id'] = $id;
    if ($metadata !== null) $cmd['metadata'] = $metadata;
    return $cmd;
}

// The DETAIL line of a server error: PDO gives only libpq's message text ("ERROR:  ...\nDETAIL:
// ...\nHINT:  ..."), not the error's fields one by one.
function error_detail(PDOException $e): ?string
{
    return preg_match('/^DETAIL:  (.*)$/m', $e->errorInfo[2] ?? '', $m) ? $m[1] : null;
}

// Appends the commands in one transaction (autocommit: the statement is its own transaction);
// returns push's rows, one per event.
function send(PDO $pdo, array $commands): array
{
    $statement = $pdo->prepare(PUSH);
    $statement->execute([json_encode($commands, JSON_THROW_ON_ERROR)]);
    return $statement->fetchAll(PDO::FETCH_ASSOC);
}

// Appends the commands; prints the events written, or the refusal. Returns the rows.
function push(PDO $pdo, array $commands): array
{
    try {
        $rows = send($pdo, $commands);
    } catch (PDOException $e) {
        if ($e->errorInfo[0] !== 'ES409') throw $e; // ES409: expected_sequence did not match
        $conflict = json_decode(error_detail($e) ?? '', true, flags: JSON_THROW_ON_ERROR);
        echo "refused {$conflict['instance_id']}/{$conflict['aggregate_id']}: {$e->errorInfo[0]} ",
             "expected_sequence={$conflict['expected_sequence']} actual_sequence={$conflict['actual_sequence']}\n";
        return [];
    }
    foreach ($rows as $i => $row) {
        $cmd = $commands[$i];
        $amount = isset($cmd['payload']) ? " amount_cents={$cmd['payload']['amount_cents']}" : '';
        echo "pushed {$row['instance_id']}/{$row['aggregate_id']} seq={$row['sequence']} {$cmd['event_type']}$amount\n";
    }
    return $rows;
}

$pdo = connect();
foreach (TENANTS as $tenant => $unit) {
    // A new invoice and its first line in one atomic push; expected_sequence 0: the aggregate
    // must not exist yet.
    push($pdo, [command($tenant, 'inv-1', 'invoice.created', ['amount_cents' => 120 * $unit], 0),
                command($tenant, 'inv-1', 'invoice.line_added', ['amount_cents' => 30 * $unit])]);
    push($pdo, [command($tenant, 'inv-2', 'invoice.created', ['amount_cents' => 75 * $unit], 0)]);
    for ($i = 1; $i <= 5; $i++) { // one event per call, as request handlers append them
        push($pdo, [command($tenant, 'inv-2', 'invoice.line_added', ['amount_cents' => $i * $unit])]);
    }
    push($pdo, [command($tenant, 'inv-1', 'invoice.paid', null, 2)]);
    // A second "pay" decided on the same stale state: refused, nothing written.
    push($pdo, [command($tenant, 'inv-1', 'invoice.paid', null, 2)]);
    // A push with an event id and metadata, then the same push again as its retry: the answer
    // to the first was "lost" (a new connection sends the retry). The stored event's rows come
    // back, nothing is written, and expected_sequence 0 is not checked again (the first push
    // moved the aggregate past it).
    $created = [command($tenant, 'inv-3', 'invoice.created', ['amount_cents' => $unit], 0,
                        EVENT_IDS[$tenant], ['correlation_id' => "example-$tenant"])];
    $first = push($pdo, $created);
    $retried = send(connect(), $created);
    foreach ($retried as $i => $row) {
        echo "retried $tenant/{$row['aggregate_id']} seq={$row['sequence']} same_position=",
             $row['position'] === $first[$i]['position'] ? 'true' : 'false', "\n";
    }
}
