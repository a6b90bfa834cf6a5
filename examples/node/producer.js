// Producer: appends invoice events for two tenants with eventstore.push (node-postgres).
//
// Each push is one call in one short transaction, as a request handler would make it: all its
// events commit or none do (G1), and each aggregate gets sequences 1, 2, 3... (G2).
// node-postgres cannot bind an array of composites, so commands go in the JSON form,
// eventstore.push($1::jsonb): an array of objects with the fields of eventstore.command. Pass
// JSON.stringify(commands) — a bare JS array would be sent as a PostgreSQL array literal. The
// last push shows optimistic concurrency: a stale expected_sequence is refused with SQLSTATE
// ES409 (a JSON detail: expected and actual sequence) and nothing is written.
//
// Connection: the libpq environment (PGHOST, PGPORT, PGUSER, PGDATABASE). Prints one line per
// event written and one per refused push.
'use strict';
const { Client } = require('pg');

const TENANTS = { acme: 100, globex: 7 }; // tenant -> price unit in cents

function command(tenant, invoice, eventType, payload = null, expectedSequence = null) {
  // Omitted fields take their defaults: revision 1, creator current_user, owner the
  // aggregate's owner, expected_sequence NULL (no check).
  const cmd = { instance_id: tenant, aggregate_type: 'invoice', aggregate_id: invoice,
                event_type: eventType };
  if (payload !== null) cmd.payload = payload;
  if (expectedSequence !== null) cmd.expected_sequence = expectedSequence;
  return cmd;
}

// Appends the commands in one transaction (a single statement is its own transaction);
// prints the events written, or the refusal.
async function push(client, commands) {
  let result;
  try {
    result = await client.query(
      `SELECT instance_id, aggregate_id, sequence, in_tx_order
         FROM eventstore.push($1::jsonb) ORDER BY in_tx_order`, [JSON.stringify(commands)]);
  } catch (err) {
    if (err.code !== 'ES409') throw err; // ES409: expected_sequence did not match
    const conflict = JSON.parse(err.detail);
    console.log(`refused ${conflict.instance_id}/${conflict.aggregate_id}: ${err.code} ` +
                `expected_sequence ${conflict.expected_sequence}, actual_sequence ${conflict.actual_sequence}`);
    return;
  }
  result.rows.forEach((row, i) => {
    const cmd = commands[i];
    const amount = cmd.payload ? ` amount_cents=${cmd.payload.amount_cents}` : '';
    console.log(`pushed ${row.instance_id}/${row.aggregate_id} seq=${row.sequence} ${cmd.event_type}${amount}`);
  });
}

async function main() {
  const client = new Client();
  await client.connect();
  try {
    for (const [tenant, unit] of Object.entries(TENANTS)) {
      // A new invoice and its first line in one atomic push; expected_sequence 0: the
      // aggregate must not exist yet.
      await push(client, [command(tenant, 'inv-1', 'invoice.created', { amount_cents: 120 * unit }, 0),
                          command(tenant, 'inv-1', 'invoice.line_added', { amount_cents: 30 * unit })]);
      await push(client, [command(tenant, 'inv-2', 'invoice.created', { amount_cents: 75 * unit }, 0)]);
      for (let i = 1; i <= 5; i++) { // one event per call, as request handlers append them
        await push(client, [command(tenant, 'inv-2', 'invoice.line_added', { amount_cents: i * unit })]);
      }
      await push(client, [command(tenant, 'inv-1', 'invoice.paid', null, 2)]);
      // A second "pay" decided on the same stale state: refused, nothing written.
      await push(client, [command(tenant, 'inv-1', 'invoice.paid', null, 2)]);
    }
  } finally {
    await client.end();
  }
}

main().catch((err) => { console.error(err); process.exit(1); });
