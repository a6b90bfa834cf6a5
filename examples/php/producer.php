<?php
// Producer: appends invoice events for two tenants with eventstore.push (PHP, PDO pgsql).
//
// Each push is one call in one short transaction, as a request handler would make it: all its
// events commit or none do (G1), and each aggregate gets sequences 1, 2, 3... (G2). Commands go
// in the JSON form, eventstore.push(?::jsonb), with json_encode($commands). The last push shows
// optimistic concurrency: a stale expected_sequence is refused with SQLSTATE 40001 and nothing
// is written.
//
//     php producer.php
//
// Connection: the libpq environment (PGHOST, PGPORT, PGUSER, PGDATABASE): the DSN "pgsql:"
// names nothing, so libpq fills it in. Prints one line per event written and one per refused
// push.
declare(strict_types=1);

const TENANTS = ['acme' => 100, 'globex' => 7]; // tenant -> price unit in cents

const PUSH = <<<'SQL'
    SELECT instance_id, aggregate_id, sequence, in_tx_order
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
// owner, expected_sequence NULL (no check).
function command(string $tenant, string $invoice, string $eventType, ?array $payload = null,
                 ?int $expectedSequence = null): array
{
    $cmd = ['instance_id' => $tenant, 'aggregate_type' => 'invoice', 'aggregate_id' => $invoice,
            'event_type' => $eventType];
    if ($payload !== null) $cmd['payload'] = $payload;
    if ($expectedSequence !== null) $cmd['expected_sequence'] = $expectedSequence;
    return $cmd;
}

// The DETAIL line of a server error: PDO gives only libpq's message text ("ERROR:  ...\nDETAIL:
// ...\nHINT:  ..."), not the error's fields one by one.
function error_detail(PDOException $e): ?string
{
    return preg_match('/^DETAIL:  (.*)$/m', $e->errorInfo[2] ?? '', $m) ? $m[1] : null;
}

// Appends the commands in one transaction (autocommit: the statement is its own transaction);
// prints the events written, or the refusal.
function push(PDO $pdo, array $commands): void
{
    try {
        $statement = $pdo->prepare(PUSH);
        $statement->execute([json_encode($commands, JSON_THROW_ON_ERROR)]);
        $rows = $statement->fetchAll(PDO::FETCH_ASSOC);
    } catch (PDOException $e) {
        if ($e->errorInfo[0] !== '40001') throw $e; // 40001: expected_sequence did not match
        echo "refused {$commands[0]['instance_id']}/{$commands[0]['aggregate_id']}: ",
             "{$e->errorInfo[0]} ", error_detail($e), "\n";
        return;
    }
    foreach ($rows as $i => $row) {
        $cmd = $commands[$i];
        $amount = isset($cmd['payload']) ? " amount_cents={$cmd['payload']['amount_cents']}" : '';
        echo "pushed {$row['instance_id']}/{$row['aggregate_id']} seq={$row['sequence']} {$cmd['event_type']}$amount\n";
    }
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
}
