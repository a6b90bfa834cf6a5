// Producer: appends invoice events for two tenants with eventstore.push (node-postgres).
//
// Each push is one call in one short transaction, as a request handler would make it: all its
// events commit or none do (G1), and each aggregate gets sequences 1, 2, 3... (G2).
// node-postgres cannot bind an array of composites, so commands go in the JSON form,
// eventstore.push($1::jsonb): an array of objects with the fields of eventstore.command. Pass
// JSON.stringify(commands) — a bare JS array would be sent as a PostgreSQL array literal. A
// stale expected_sequence shows optimistic concurrency: it is refused with SQLSTATE ES409, whose
// detail is a JSON object (the aggregate, the expected and the actual sequence), and nothing is
// written. The last push carries an event id and metadata and is sent twice, the second time on
// a new connection as after a connection lost before the answer came: the retry returns the
// rows the first one wrote and writes nothing (G14).
//
// Connection: the libpq environment (PGHOST, PGPORT, PGUSER, PGDATABASE). Prints one line per
// event written, one per refused push and one per retried event.
'use strict';
const { Client } = require('pg');

const TENANTS = { acme: 100, globex: 7 }; // tenant -> price unit in cents
// The id of each tenant's inv-3 created event. An application makes a fresh one
// (crypto.randomUUID()) when it decides the event; fixed here so that every run and every
// language print the same.
const EVENT_IDS = { acme: '00000000-0000-4000-8000-0000000000a1',
                    globex: '00000000-0000-4000-8000-0000000000b1' };

function command(tenant, invoice, eventType, payload = null, expectedSequence = null,
                 { id = null, metadata = null } = {}) {
  // Omitted fields take their defaults: revision 1, creator current_user, owner the
  // aggregate's owner, expected_sequence NULL (no check), no event id, no metadata.
  const cmd = { instance_id: tenant, aggregate_type: 'invoice', aggregate_id: invoice,
                event_type: eventType };
  if (payload !== null) cmd.payload = payload;
  if (expectedSequence !== null) cmd.expected_sequence = expectedSequence;
  if (id !== null) cmd.id = id;
  if (metadata !== null) cmd.metadata = metadata;
  return cmd;
}

// Appends the commands in one transaction (a single statement is its own transaction);
// returns push's rows, one per event.
async function send(client, commands) {
  const result = await client.query(
    `SELECT instance_id, aggregate_id, sequence, position, in_tx_order
       FROM eventstore.push($1::jsonb) ORDER BY in_tx_order`, [JSON.stringify(commands)]);
  return result.rows;
}

// Appends the commands; prints the events written, or the refusal. Returns the rows.
async function push(client, commands) {
  let rows;
  try {
    rows = await send(client, commands);
  } catch (err) {
    if (err.code !== 'ES409') throw err; // ES409: expected_sequence did not match
    const conflict = JSON.parse(err.detail);
    console.log(`refused ${conflict.instance_id}/${conflict.aggregate_id}: ${err.code} ` +
                `expected_sequence=${conflict.expected_sequence} actual_sequence=${conflict.actual_sequence}`);
    return [];
  }
  rows.forEach((row, i) => {
    const cmd = commands[i];
    const amount = cmd.payload ? ` amount_cents=${cmd.payload.amount_cents}` : '';
    console.log(`pushed ${row.instance_id}/${row.aggregate_id} seq=${row.sequence} ${cmd.event_type}${amount}`);
  });
  return rows;
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
      // A push with an event id and metadata, then the same push again as its retry: the
      // answer to the first was "lost" (a new connection sends the retry). The stored event's
      // rows come back, nothing is written, and expected_sequence 0 is not checked again (the
      // first push moved the aggregate past it).
      const created = [command(tenant, 'inv-3', 'invoice.created', { amount_cents: unit }, 0,
                               { id: EVENT_IDS[tenant], metadata: { correlation_id: `example-${tenant}` } })];
      const first = await push(client, created);
      const reconnected = new Client();
      await reconnected.connect();
      let retried;
      try {
        retried = await send(reconnected, created);
      } finally {
        await reconnected.end();
      }
      retried.forEach((row, i) => {
        // bigint columns come back as strings: compare them as strings.
        console.log(`retried ${tenant}/${row.aggregate_id} seq=${row.sequence} ` +
                    `same_position=${row.position === first[i].position}`);
      });
    }
  } finally {
    await client.end();
  }
}

main().catch((err) => { console.error(err); process.exit(1); });
