<?php
// Projection worker: keeps the read model `invoices` up to date from the invoice events (PHP,
// PDO pgsql).
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
//     php worker.php [--name A] [--batch-size 4] [--fail-on-batch 2] [--tenants acme,globex]
//
// Connection: the libpq environment (PGHOST, PGPORT, PGUSER, PGDATABASE). The read model goes
// to stdout, one line per invoice; progress and a summary go to stderr.
declare(strict_types=1);

const PROJECTION = 'invoices';
const RETRY_PAUSE_US = 200_000; // when the projection is busy or a batch was rolled back
const MAX_ATTEMPTS = 5;         // consecutive rolled-back attempts of one batch before giving up

const READ_MODEL = <<<'SQL'
    CREATE TABLE IF NOT EXISTS invoices (
        instance_id text    NOT NULL,
        invoice_id  text    NOT NULL,
        total_cents bigint  NOT NULL,
        lines       integer NOT NULL DEFAULT 0,
        paid        boolean NOT NULL DEFAULT false,
        version     bigint  NOT NULL,  -- the sequence of the invoice's last event applied
        PRIMARY KEY (instance_id, invoice_id)
    )
    SQL;

const CATCHUP = <<<'SQL'
    SELECT instance_id, aggregate_id, sequence, event_type, payload
      FROM eventstore.projection_catchup(?, ?, ?, aggregate_types => ARRAY['invoice'])
    SQL;

// One statement per event type, all with the parameters (tenant, invoice, amount, sequence).
// Every statement checks that the event is the invoice's next one (version = sequence - 1), so
// a skipped, repeated or reordered event would fail loudly.
const HANDLERS = [
    'invoice.created' => <<<'SQL'
        INSERT INTO invoices (instance_id, invoice_id, total_cents, version)
        SELECT tenant, invoice, amount, sequence
          FROM (VALUES (?, ?, ?::bigint, ?::bigint)) AS e (tenant, invoice, amount, sequence)
         WHERE sequence = 1
        SQL,
    'invoice.line_added' => <<<'SQL'
        UPDATE invoices SET total_cents = total_cents + amount, lines = lines + 1, version = sequence
          FROM (VALUES (?, ?, ?::bigint, ?::bigint)) AS e (tenant, invoice, amount, sequence)
         WHERE instance_id = tenant AND invoice_id = invoice AND version = sequence - 1
        SQL,
    'invoice.paid' => <<<'SQL'
        UPDATE invoices SET paid = true, version = sequence
          FROM (VALUES (?, ?, ?::bigint, ?::bigint)) AS e (tenant, invoice, amount, sequence)
         WHERE instance_id = tenant AND invoice_id = invoice AND version = sequence - 1
        SQL,
];

class HandlerError extends Exception {}

final class Worker
{
    public int $batches = 0, $events = 0, $busy = 0, $rollbacks = 0;

    // $failOnBatch: 0, or: fail once, on the last event of this batch.
    public function __construct(private PDO $pdo, public string $name, private int $batchSize,
                                private int $failOnBatch) {}

    // Workers start together: serialize the CREATE with a transaction-scoped lock of our own.
    public function createReadModel(): void
    {
        $this->inTransaction(function () {
            $this->pdo->query("SELECT pg_advisory_xact_lock(hashtext('examples: invoices read model'))");
            $this->pdo->exec(READ_MODEL);
        });
    }

    // BEGIN, fn, COMMIT; on any error ROLLBACK and rethrow. No savepoints (G8).
    private function inTransaction(callable $fn): mixed
    {
        $this->pdo->beginTransaction();
        try {
            $result = $fn();
        } catch (Throwable $e) {
            $this->pdo->rollBack();
            throw $e;
        }
        $this->pdo->commit();
        return $result;
    }

    private function query(string $sql, array $params): PDOStatement
    {
        $statement = $this->pdo->prepare($sql);
        $statement->execute($params);
        return $statement;
    }

    private function apply(array $event): void
    {
        $where = "{$event['instance_id']}/{$event['aggregate_id']} seq {$event['sequence']}";
        $handler = HANDLERS[$event['event_type']] ?? null;
        if ($handler === null) throw new HandlerError("$where: unknown event type {$event['event_type']}");
        $payload = json_decode($event['payload'] ?? 'null', true, flags: JSON_THROW_ON_ERROR);
        $params = [$event['instance_id'], $event['aggregate_id'], $payload['amount_cents'] ?? 0,
                   $event['sequence']];
        if ($this->query($handler, $params)->rowCount() !== 1) {
            throw new HandlerError("$where: not the invoice's next event");
        }
    }

    // One transaction. Returns the number of events applied, or null when another worker holds
    // the projection. Throws (after rolling back) when a handler fails.
    private function runBatch(string $tenant): ?int
    {
        return $this->inTransaction(function () use ($tenant) {
            // Lock first: a catch-up that returns zero rows cannot tell "another worker has it"
            // from "caught up". Holding the lock, the catch-up re-enters it and zero rows mean
            // caught up. The lock is transaction-scoped: COMMIT or ROLLBACK releases it.
            $locked = $this->query('SELECT eventstore.lock_projection(?, ?)', [PROJECTION, $tenant])
                           ->fetchColumn();
            if (!$locked) return null;
            $batch = $this->query(CATCHUP, [PROJECTION, $tenant, $this->batchSize])->fetchAll(PDO::FETCH_ASSOC);
            foreach ($batch as $i => $event) {
                if ($this->batches + 1 === $this->failOnBatch && $i === count($batch) - 1) {
                    $this->failOnBatch = 0;
                    throw new HandlerError('simulated failure on the last event of the batch');
                }
                $this->apply($event);
            }
            return count($batch);
        });
    }

    public function catchUp(string $tenant): void
    {
        $attempts = 0;
        while (true) {
            try {
                $applied = $this->runBatch($tenant);
            } catch (HandlerError|PDOException $e) {
                // The transaction was rolled back: read model and checkpoint are unchanged and
                // the same batch comes again on the next try.
                $this->rollbacks++;
                $attempts++;
                fwrite(STDERR, "worker {$this->name}: $tenant: batch rolled back ({$e->getMessage()})\n");
                if ($attempts >= MAX_ATTEMPTS) throw $e;
                usleep(RETRY_PAUSE_US);
                continue;
            }
            $attempts = 0;
            if ($applied === null) { // another worker is running this projection: try again soon
                $this->busy++;
                usleep(RETRY_PAUSE_US);
            } elseif ($applied === 0) { // caught up
                return;
            } else {
                $this->batches++;
                $this->events += $applied;
            }
        }
    }

    public function printReadModel(): void
    {
        $rows = $this->pdo->query('SELECT instance_id, invoice_id, total_cents, lines, paid, version
                                     FROM invoices ORDER BY instance_id, invoice_id');
        foreach ($rows->fetchAll(PDO::FETCH_ASSOC) as $r) {
            echo "{$r['instance_id']}/{$r['invoice_id']} total_cents={$r['total_cents']} lines={$r['lines']} ",
                 'paid=', $r['paid'] ? 'true' : 'false', " version={$r['version']}\n";
        }
    }
}

$options = ['name' => '1', 'batch-size' => '100', 'fail-on-batch' => '0', 'tenants' => 'acme,globex'];
for ($i = 1; $i < $argc; $i += 2) {
    $option = substr($argv[$i], 2);
    if (!str_starts_with($argv[$i], '--') || !isset($options[$option]) || $i + 1 >= $argc) {
        fwrite(STDERR, "usage: php worker.php [--name A] [--batch-size N] [--fail-on-batch N] [--tenants a,b]\n");
        exit(2);
    }
    $options[$option] = $argv[$i + 1];
}
// ERRMODE_EXCEPTION: every error is a PDOException. PGSQL_ATTR_DISABLE_PREPARES: no named
// server-side prepared statements, so the worker runs behind PgBouncer in transaction pooling
// mode. beginTransaction() sends BEGIN, never a savepoint (G8).
$pdo = new PDO('pgsql:', null, null, [
    PDO::ATTR_ERRMODE => PDO::ERRMODE_EXCEPTION,
    PDO::PGSQL_ATTR_DISABLE_PREPARES => true,
]);
$worker = new Worker($pdo, $options['name'], (int) $options['batch-size'], (int) $options['fail-on-batch']);
$worker->createReadModel();
foreach (explode(',', $options['tenants']) as $tenant) {
    $worker->catchUp($tenant);
}
$worker->printReadModel();
fwrite(STDERR, "worker {$worker->name}: {$worker->batches} batches, {$worker->events} events, " .
               "{$worker->busy} busy retries, {$worker->rollbacks} rollbacks\n");
