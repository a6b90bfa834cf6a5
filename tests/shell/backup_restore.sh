#!/usr/bin/env bash
# Backup and restore keep the event store exactly (DESIGN.md G3: positions unchanged by
# pg_dump/restore; G2 and G5 across it).
#
# On a scratch cluster: push events for several tenants and aggregates (both push forms, exact
# numbers, non-ASCII text), run catch-ups of a per-tenant and a global projection (checkpoints,
# one rolled back), roll back a push (so the position sequence is ahead of the last event),
# then `pg_dump -Fc`, restore into a new database (the dump creates the extension) and check
# that the restored database has
#   - every event row identical (all columns, in position order: diffed, and an md5 shown),
#   - every checkpoint identical,
#   - eventstore.position_seq where it was (last_value, is_called) and still CACHE 1,
# and that a new push after the restore continues the aggregate's sequence and draws the
# position right after the last one drawn before the dump (above every old event), exactly as
# the original database does for the same push; a catch-up then hands out just that event.
#
# Usage: tests/shell/backup_restore.sh [PORT]   (default $PORT, else 5485; 127.0.0.1 only)
# Needs the extension installed in the system PostgreSQL 15 (scripts/setup). Run as root or
# as postgres. Prints a verdict; exits non-zero on any mismatch.
set -euo pipefail
cd "$(dirname "$0")/../.."
. scripts/cluster.sh

port=${1:-${PORT:-5485}}
cluster=backup
work="$SCRATCH_ROOT/backup-work"
failures=()

cluster_start "$cluster" "$port"
trap 'cluster_stop "$cluster"' EXIT
rm -rf "$work" && mkdir -p "$work" && chmod 777 "$work"

# sql DB STATEMENT...: run statements, print unaligned tuples only; stop on the first error.
sql() {
    local db=$1; shift
    local args=()
    for statement in "$@"; do args+=(-c "$statement"); done
    as_postgres env PGTZ=UTC "$PG_BIN/psql" -X -q -At -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" \
        -U postgres -d "$db" "${args[@]}"
}
check() {   # check WHAT EXPECTED ACTUAL
    if [ "$2" = "$3" ]; then
        echo "  ok: $1"
    else
        echo "  MISMATCH: $1: expected [$2], got [$3]"
        failures+=("$1")
    fi
}

echo "== events and checkpoints on 127.0.0.1:$port"
sql eventstore "
SELECT count(*) FROM eventstore.push(ARRAY(
    SELECT eventstore.command(tenant, kind, kind || '-' || n, kind || '.event-' || step,
                              jsonb_build_object('tenant', tenant, 'n', n, 'step', step, 'note', 'naïve café ☕'),
                              revision => 1 + step % 3,
                              owner => CASE WHEN n % 2 = 0 THEN 'org-' || tenant END)
      FROM unnest(ARRAY['acme', 'globex', 'initech']) AS tenant,
           unnest(ARRAY['order', 'user']) AS kind,
           generate_series(1, 4) AS n,
           generate_series(1, 3) AS step
     ORDER BY step, tenant, kind, n))" >/dev/null
sql eventstore "
SELECT count(*) FROM eventstore.push('[
    {\"instance_id\": \"acme\", \"aggregate_type\": \"order\", \"aggregate_id\": \"order-1\", \"event_type\": \"order.paid\",
     \"payload\": {\"amount\": 12345678901234567890.50, \"tags\": [\"a\", null, true]}, \"expected_sequence\": 3,
     \"creator\": \"alice\"},
    {\"instance_id\": \"globex\", \"aggregate_type\": \"invoice\", \"aggregate_id\": \"inv-\\u00e9\", \"event_type\": \"invoice.sent\"}
]'::text)" >/dev/null
for tenant in acme globex initech; do
    sql eventstore "SELECT count(*) FROM eventstore.push(ARRAY[
        eventstore.command('$tenant', 'order', 'order-2', 'order.shipped', expected_sequence => 3)])" >/dev/null
done
# Catch-ups: committed ones move checkpoints, a rolled-back one does not.
sql eventstore \
    "BEGIN" "SELECT count(*) FROM eventstore.projection_catchup('totals', 'acme', 5)" "COMMIT" \
    "BEGIN" "SELECT count(*) FROM eventstore.projection_catchup('totals', 'acme', 5)" "COMMIT" \
    "BEGIN" "SELECT count(*) FROM eventstore.projection_catchup('audit', NULL, 20)" "COMMIT" \
    "BEGIN" "SELECT count(*) FROM eventstore.projection_catchup('totals', 'globex', 1000, aggregate_types => ARRAY['order'])" "COMMIT" \
    "BEGIN" "SELECT count(*) FROM eventstore.projection_catchup('audit', NULL, 20)" "ROLLBACK" \
    "BEGIN" "SELECT count(*) FROM eventstore.projection_catchup('everything', 'acme', 1000)" "COMMIT" >/dev/null
# A push that rolls back: the position sequence ends up ahead of the last event.
sql eventstore "BEGIN" "SELECT count(*) FROM eventstore.push(ARRAY[
    eventstore.command('acme', 'order', 'order-1', 'order.never'), eventstore.command('acme', 'order', 'order-9', 'order.never')])" \
    "ROLLBACK" >/dev/null
# Counters: three numbers for one tenant, two for another, one rolled back (handed out again).
sql eventstore "SELECT eventstore.next_number('invoice', 'acme') FROM generate_series(1, 3)" \
               "SELECT eventstore.next_number('invoice', 'globex') FROM generate_series(1, 2)" >/dev/null
sql eventstore "BEGIN; SELECT eventstore.next_number('invoice', 'acme'); ROLLBACK" >/dev/null

sql eventstore "SELECT 'events: ' || count(*) || ', tenants: ' || count(DISTINCT instance_id) || ', aggregates: '
                       || count(DISTINCT (instance_id, aggregate_type, aggregate_id)) || ', positions 1..' || max(position)
                  FROM eventstore.events" \
               "SELECT 'checkpoints: ' || string_agg(projection || '/' || coalesce(instance_id, '*') || '=' || checkpoint, ', ' ORDER BY projection, instance_id)
                  FROM eventstore.projection_states" \
               "SELECT 'position_seq: last_value ' || last_value || ', is_called ' || is_called FROM eventstore.position_seq"

# Everything a restore must keep, as text to diff: each event (all columns), each checkpoint,
# the position sequence's state and definition.
EVENTS="SELECT instance_id, aggregate_type, aggregate_id, sequence, event_type, revision, payload,
               creator, owner, created_at, position, in_tx_order FROM eventstore.events ORDER BY position"
CHECKPOINTS="SELECT projection, instance_id, checkpoint, updated_at FROM eventstore.projection_states
              ORDER BY projection, instance_id NULLS FIRST"
COUNTERS="SELECT scope, tenant, value FROM eventstore.counters ORDER BY scope, tenant"
SEQUENCE="SELECT s.last_value, s.is_called, p.start_value, p.increment_by, p.cache_size, p.cycle
            FROM eventstore.position_seq s, pg_sequences p
           WHERE p.schemaname = 'eventstore' AND p.sequencename = 'position_seq'"
snapshot() {   # snapshot DB PREFIX
    sql "$1" "COPY ($EVENTS) TO STDOUT" > "$work/$2.events"
    sql "$1" "COPY ($CHECKPOINTS) TO STDOUT" > "$work/$2.checkpoints"
    sql "$1" "$SEQUENCE" > "$work/$2.sequence"
    sql "$1" "COPY ($COUNTERS) TO STDOUT" > "$work/$2.counters"
    sql "$1" "SELECT count(*) || ' events, md5 ' || md5(string_agg(e::text, E'\n' ORDER BY position)) FROM ($EVENTS) e" > "$work/$2.md5"
}
snapshot eventstore before

echo "== pg_dump -Fc, restore into a new database"
as_postgres "$PG_BIN/pg_dump" -Fc -h 127.0.0.1 -p "$port" -U postgres -d eventstore -f "$work/eventstore.dump"
echo "  dump: $(du -h "$work/eventstore.dump" | cut -f1)"
sql postgres "CREATE DATABASE restored"
restore_log="$work/restore.log"
if as_postgres "$PG_BIN/pg_restore" --exit-on-error -h 127.0.0.1 -p "$port" -U postgres -d restored \
        "$work/eventstore.dump" >"$restore_log" 2>&1; then
    echo "  ok: pg_restore finished without error"
else
    echo "  MISMATCH: pg_restore failed:"; sed 's/^/    /' "$restore_log"
    failures+=("pg_restore")
fi
check "the extension is created by the restore" "$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)" \
    "$(sql restored "SELECT extversion FROM pg_extension WHERE extname = 'eventstore'")"
snapshot restored after

echo "== the restored database against the original"
for part in events checkpoints counters sequence; do
    if diff -q "$work/before.$part" "$work/after.$part" >/dev/null; then
        echo "  ok: $part identical ($(wc -l < "$work/before.$part") lines)"
    else
        echo "  MISMATCH: $part differ:"
        { diff "$work/before.$part" "$work/after.$part" || true; } | head -20 | sed 's/^/    /'
        failures+=("$part")
    fi
done
check "event count and md5" "$(cat "$work/before.md5")" "$(cat "$work/after.md5")"
check "counters restored: acme was at 3, globex at 2" "acme=3 globex=2" \
    "$(sql restored "SELECT string_agg(tenant || '=' || value, ' ' ORDER BY tenant) FROM eventstore.counters WHERE scope = 'invoice'")"
check "the next number after the restore continues the counter" "4" \
    "$(sql restored "SELECT eventstore.next_number('invoice', 'acme')")"
check "position_seq is still CACHE 1" "1" "$(sql restored "SELECT cache_size FROM pg_sequences WHERE schemaname = 'eventstore' AND sequencename = 'position_seq'")"
check "projection_status identical" \
    "$(sql eventstore "SELECT projection, instance_id, checkpoint, head, position_behind, events_behind FROM eventstore.projection_status ORDER BY 1, 2")" \
    "$(sql restored "SELECT projection, instance_id, checkpoint, head, position_behind, events_behind FROM eventstore.projection_status ORDER BY 1, 2")"

echo "== a new push after the restore"
last_drawn=$(cut -d'|' -f1 "$work/before.sequence")   # as the original had it at the dump
max_position=$(sql eventstore "SELECT max(position) FROM eventstore.events")
old_sequence=$(sql restored "SELECT max(sequence) FROM eventstore.events WHERE instance_id = 'acme' AND aggregate_type = 'order' AND aggregate_id = 'order-1'")
NEW_PUSH="SELECT sequence || ' ' || position FROM eventstore.push(ARRAY[
    eventstore.command('acme', 'order', 'order-1', 'order.refunded', '{\"amount\": 1}', expected_sequence => $old_sequence)])"
restored_push=$(sql restored "$NEW_PUSH")
original_push=$(sql eventstore "$NEW_PUSH")
read -r new_sequence new_position <<<"$restored_push"
check "the aggregate's next sequence" "$((old_sequence + 1))" "$new_sequence"
check "the next position: right after the last drawn before the dump ($last_drawn; last event at $max_position)" \
    "$((last_drawn + 1))" "$new_position"
check "the same push on the original database gets the same sequence and position" "$original_push" "$restored_push"
check "a projection caught up before the dump hands out just the new event" "$new_position" \
    "$(sql restored "BEGIN" "SELECT string_agg(position::text, ',') FROM eventstore.projection_catchup('everything', 'acme', 1000)" "COMMIT")"
catchup_on() {   # catchup_on DB PROJECTION INSTANCE: the positions the next catch-up hands out
    sql "$1" "BEGIN" "SELECT string_agg(position::text, ',') FROM eventstore.projection_catchup('$2', $3, 1000)" "ROLLBACK"
}
for projection in "totals 'acme'" "totals 'globex'" "audit NULL"; do
    read -r name instance <<<"$projection"
    original=$(catchup_on eventstore "$name" "$instance")
    check "$name/$instance hands out the same rest as on the original database (${original:0:40}…)" \
        "$original" "$(catchup_on restored "$name" "$instance")"
done

echo
if [ ${#failures[@]} -eq 0 ]; then
    echo "backup/restore: OK — $(cat "$work/before.md5"), $(wc -l < "$work/before.checkpoints") checkpoints and the position sequence restored exactly; pushes and catch-ups continue"
else
    echo "backup/restore: FAILED — ${failures[*]} (files in $work)"
    exit 1
fi
