#!/usr/bin/env bash
# eventstore on Citus (README "Running on Citus"): a coordinator and two workers on loopback,
# eventstore.distribute(), and every tenant call delegated to the node of the tenant's shard:
#   - distribute(): events, projection_states and counters distributed by tenant, colocated,
#     position unique per tenant;
#   - push (array and jsonb forms), tenant_catchup, tenant_lock_projection (G6 across sessions),
#     tenant_await_writers, tenant_wait_for_events (woken by a push) and next_number, all
#     through the coordinator's delegation;
#   - the locality guard: a call that was not delegated (run on the coordinator, which holds no
#     shard) is refused with ES421, a global catch-up with 0A000;
#   - a shard move in the middle of a run of pushes and catch-ups (citus_move_shard_placement):
#     no event lost, none handed out twice, the moved tenant's positions keep increasing;
#   - a race run per tenant with the stress detector (tests/stress --citus, README "Stress and
#     the race detector"): writers push with push(instance_id, commands), workers run per-tenant
#     projections with tenant_catchup, tenant_lock_projection and tenant_wait_for_events, every
#     call delegated, while backends are killed: nothing skipped, nothing applied twice, each
#     aggregate in order, no two runs of a projection at once, no commit lost; the same run with
#     the harness's naive catch-up (--unsafe) must be caught (the detector bites on Citus too).
# Runs only when the extension citus is installed in the PostgreSQL under test ($PG_BIN);
# otherwise it prints "skipped: citus is not installed" and succeeds. Citus is not in any
# package registry this project uses: install it yourself into the PostgreSQL under test.
# Its own clusters: 127.0.0.1, ports ${1:-5480} (coordinator), +1 and +2 (workers), data in
# $SCRATCH_ROOT/citus-{coordinator,worker1,worker2}.
#   tests/shell/citus.sh [PORT]
# The race run lasts ${EVENTSTORE_CITUS_STRESS_SECONDS:-15} seconds, the naive one 8.
set -euo pipefail
cd "$(dirname "$0")/../.."
. scripts/cluster.sh
export PATH="$HOME/.cargo/bin:$PATH"

if [ ! -f "$("$PG_BIN/pg_config" --sharedir)/extension/citus.control" ]; then
    echo "skipped: citus is not installed"
    exit 0
fi

port=${1:-${EVENTSTORE_CITUS_PORT:-5480}}
worker1=$((port + 1))
worker2=$((port + 2))
nodes=(citus-coordinator citus-worker1 citus-worker2)
ports=("$port" "$worker1" "$worker2")
out="$SCRATCH_ROOT/citus-output"
rm -rf "$out" && mkdir -p "$out" && chmod 777 "$out"

psql_at() { local p=$1; shift; as_postgres "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$p" -U postgres -d eventstore "$@"; }
value() { psql_at "$port" -At -c "$*"; }
# sqlstate PORT SQL: the SQLSTATE the statement fails with ("ok" when it succeeds).
sqlstate() {
    local p=$1; shift
    if psql_at "$p" -At -v VERBOSITY=verbose -c "$*" >/dev/null 2>"$out/error"; then echo ok
    else sed -n 's/^ERROR:  \([0-9A-Z]\{5\}\):.*/\1/p' "$out/error" | head -1; fi
}

failures=0
check() {   # check DESCRIPTION EXPECTED ACTUAL
    if [ "$2" = "$3" ]; then echo "ok: $1"; else echo "FAILED: $1 (expected '$2', got '$3')"; failures=$((failures + 1)); fi
}

stop_all() { for node in "${nodes[@]}"; do cluster_stop "$node"; done; }
[ -n "${EVENTSTORE_CITUS_KEEP:-}" ] || trap stop_all EXIT   # set it to look at the clusters afterwards
for i in 0 1 2; do
    port_variable=EVENTSTORE_CITUS_PORT cluster_start "${nodes[$i]}" "${ports[$i]}" \
        "shared_preload_libraries = 'citus'" "max_prepared_transactions = 20" \
        "citus.node_conninfo = 'sslmode=disable'" "citus.log_remote_commands = off"
    psql_at "${ports[$i]}" -c "CREATE EXTENSION citus" >/dev/null
done
psql_at "$port" >/dev/null <<SQL
SELECT citus_set_coordinator_host('127.0.0.1', $port);
SELECT citus_add_node('127.0.0.1', $worker1);
SELECT citus_add_node('127.0.0.1', $worker2);
SQL

echo "== distribute()"
psql_at "$port" -c "SELECT eventstore.distribute(shard_count => 8)" >/dev/null
check "events, projection_states and counters are distributed and colocated" "3 1" \
    "$(value "SELECT count(*) || ' ' || count(DISTINCT colocationid) FROM pg_dist_partition
               WHERE logicalrelid IN ('eventstore.events'::regclass, 'eventstore.projection_states'::regclass,
                                      'eventstore.counters'::regclass)")"
check "position is unique per tenant" "UNIQUE (instance_id, \"position\")" \
    "$(value "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conname = 'events_instance_position_key'")"
check "the tenant functions are delegated by instance_id" "8" \
    "$(value "SELECT count(*) FROM pg_dist_object o JOIN pg_proc p ON p.oid = o.objid
               WHERE o.classid = 'pg_proc'::regclass AND o.force_delegation
                 AND p.pronamespace = 'eventstore'::regnamespace")"
check "a second distribute() is refused (55000)" 55000 "$(sqlstate "$port" "SELECT eventstore.distribute()")"

# Six tenants, spread over both workers.
tenants=(acme globex initech umbrella hooli stark)
node_of() {   # the port of the worker holding tenant $1's shard
    value "SELECT n.nodeport FROM pg_dist_placement p JOIN pg_dist_node n USING (groupid)
            WHERE p.shardid = get_shard_id_for_distribution_column('eventstore.events', '$1')"
}
check "the tenants are on both workers" 2 \
    "$(for t in "${tenants[@]}"; do node_of "$t"; done | sort -u | wc -l)"

# commands TENANT COUNT: an array of COUNT commands to three orders of TENANT, as a constant
# (Citus delegates a call only when its arguments are constants, never a subquery).
commands() {
    local n list=""
    for n in $(seq 1 "$2"); do list+="${list:+, }eventstore.command('$1', 'order', 'o$((n % 3))', 'placed', '{\"n\": $n}')"; done
    echo "ARRAY[$list]"
}

echo "== push, catch-up, next_number through delegation"
for t in "${tenants[@]}"; do
    psql_at "$port" -At >/dev/null <<SQL
SELECT count(*) FROM eventstore.push('$t', $(commands "$t" 10));
SELECT count(*) FROM eventstore.push('$t', '[{"instance_id": "$t", "aggregate_type": "order",
    "aggregate_id": "o1", "event_type": "shipped"}, {"instance_id": "$t", "aggregate_type": "invoice",
    "aggregate_id": "i1", "event_type": "sent"}]'::jsonb);
SQL
done
check "every push was written: 12 events per tenant" "72" "$(value "SELECT count(*) FROM eventstore.events")"
check "sequences are gapless per aggregate (G2)" "0" \
    "$(value "SELECT count(*) FROM (SELECT instance_id, aggregate_type, aggregate_id,
                                           max(sequence) = count(*) AS gapless
                                      FROM eventstore.events GROUP BY 1, 2, 3) a WHERE NOT gapless")"
check "a command for another tenant is refused (22023)" 22023 \
    "$(sqlstate "$port" "SELECT * FROM eventstore.push('acme', ARRAY[eventstore.command('globex', 'a', '1', 'e')])")"
catchup_count() {   # catchup_count TENANT PROJECTION BATCH
    value "SELECT count(*) FROM eventstore.tenant_catchup('$1', '$2', $3)"
}
check "a first catch-up hands out the tenant's 12 events" 12 "$(catchup_count acme totals 100)"
check "a second one hands out nothing (G5)" 0 "$(catchup_count acme totals 100)"
check "the checkpoint is on the tenant's shard" 1 \
    "$(value "SELECT count(*) FROM eventstore.projection_states WHERE instance_id = 'acme' AND projection = 'totals'")"
check "tenant_await_writers is at or past the tenant's last position" t \
    "$(value "SELECT eventstore.tenant_await_writers('globex') >= (SELECT max(position) FROM eventstore.events
                                                                   WHERE instance_id = 'globex')")"
check "next_number counts per tenant on its node" "1 2 1" \
    "$(echo $(value "SELECT eventstore.next_number('invoice', 'acme')"; value "SELECT eventstore.next_number('invoice', 'acme')";
              value "SELECT eventstore.next_number('invoice', 'globex')"))"

echo "== the projection lock holds across sessions (G6)"
psql_at "$port" -At -c "BEGIN" -c "SELECT eventstore.tenant_lock_projection('globex', 'totals')" \
    -c "SELECT pg_sleep(4)" -c "COMMIT" > "$out/holder" 2>&1 &
holder=$!
sleep 1.5
check "while a session holds the lock, another's tenant_lock_projection is false" f \
    "$(value "SELECT eventstore.tenant_lock_projection('globex', 'totals')")"
check "and its catch-up hands out nothing" 0 "$(catchup_count globex totals 100)"
wait "$holder"
check "the holder took the lock" t "$(sed -n 1p "$out/holder")"
check "after the holder's commit the catch-up runs" 12 "$(catchup_count globex totals 100)"

echo "== wait_for_events woken by a push"
psql_at "$port" -At -c "SELECT eventstore.tenant_wait_for_events('initech', 'waiter', 0)" >/dev/null
catchup_count initech waiter 100 >/dev/null
started=$(date +%s%N)
psql_at "$port" -At -c "SELECT eventstore.tenant_wait_for_events('initech', 'waiter', 20000)" > "$out/waiter" &
waiter=$!
sleep 1
psql_at "$port" -At -c "SELECT count(*) FROM eventstore.push('initech', ARRAY[eventstore.command('initech', 'order', 'w', 'woke')])" >/dev/null
wait "$waiter"
waited_ms=$(( ($(date +%s%N) - started) / 1000000 ))
check "the waiter woke with true" t "$(cat "$out/waiter")"
check "within 3 s of its start (the push came after 1 s; it took ${waited_ms} ms)" t \
    "$([ "$waited_ms" -lt 3000 ] && echo t || echo f)"

echo "== a tenant binding reaches the workers (ALTER ROLE ... SET, propagated by Citus)"
psql_at "$port" >/dev/null <<'SQL'
CREATE ROLE app_acme LOGIN;
GRANT eventstore_writer TO app_acme;
ALTER ROLE app_acme SET eventstore.tenant = 'acme';
SQL
as_app() { as_postgres "$PG_BIN/psql" -X -q -At -v VERBOSITY=verbose -h 127.0.0.1 -p "$port" -U app_acme -d eventstore -c "$1" 2>&1; }
check "a session of the role bound to acme pushes to acme on acme's worker" 1 \
    "$(as_app "SELECT count(*) FROM eventstore.push('acme', ARRAY[eventstore.command('acme', 'order', 'bound', 'placed')])")"
check "and is refused another tenant there (42501)" 42501 \
    "$(as_app "SELECT count(*) FROM eventstore.push('globex', ARRAY[eventstore.command('globex', 'order', 'bound', 'placed')])" \
        | sed -n 's/^ERROR:  \([0-9A-Z]\{5\}\):.*/\1/p')"

echo "== the locality guard"
check "a push run on the coordinator (not delegated) is refused (ES421)" ES421 \
    "$(sqlstate "$port" "SELECT * FROM eventstore.push(ARRAY[eventstore.command('acme', 'a', '1', 'e')])")"
check "a catch-up run on the coordinator is refused (ES421)" ES421 \
    "$(sqlstate "$port" "SELECT * FROM eventstore.projection_catchup('totals', 'acme')")"
check "a lock_projection run on the coordinator is refused (ES421)" ES421 \
    "$(sqlstate "$port" "SELECT eventstore.lock_projection('totals', 'acme')")"
other_worker() { if [ "$(node_of "$1")" = "$worker1" ]; then echo "$worker2"; else echo "$worker1"; fi; }
check "a catch-up run on the worker without the tenant's shard is refused (ES421)" ES421 \
    "$(sqlstate "$(other_worker acme)" "SELECT * FROM eventstore.projection_catchup('totals', 'acme')")"
check "a global catch-up is refused (0A000)" 0A000 \
    "$(sqlstate "$port" "SELECT * FROM eventstore.projection_catchup('everything')")"
check "nothing was written by the refused calls" 74 "$(value "SELECT count(*) FROM eventstore.events")"

echo "== a shard move in the middle of pushes and catch-ups"
mover=hooli
from=$(node_of "$mover")
to=$(if [ "$from" = "$worker1" ]; then echo "$worker2"; else echo "$worker1"; fi)
# The other node's sequence is below the tenant's positions: raise every event count there.
psql_at "$port" -At >/dev/null <<SQL
SELECT count(*) FROM eventstore.push('$mover', $(commands "$mover" 200));
SELECT count(*) FROM eventstore.tenant_catchup('$mover', 'moved', 1000);
SQL
pushes=120
(
    for n in $(seq 1 "$pushes"); do
        psql_at "$port" -At -c "SELECT position FROM eventstore.push('$mover', ARRAY[eventstore.command('$mover', 'run', 'r' || ($n % 4), 'step', '{\"n\": $n}')])" \
            >> "$out/pushed" 2>> "$out/push-errors" || true
    done
) &
pusher=$!
(
    while kill -0 "$pusher" 2>/dev/null; do
        psql_at "$port" -At -c "SELECT position FROM eventstore.tenant_catchup('$mover', 'moved', 7)" \
            >> "$out/handed" 2>> "$out/catchup-errors" || true
    done
) &
catcher=$!
sleep 1
shard=$(value "SELECT get_shard_id_for_distribution_column('eventstore.events', '$mover')")
psql_at "$port" -At -c "SELECT citus_move_shard_placement($shard, '127.0.0.1', $from, '127.0.0.1', $to,
                                                         shard_transfer_mode => 'block_writes')" >/dev/null
moved_after=$(wc -l < "$out/pushed")
wait "$pusher" "$catcher"
check "the move finished mid-run (after $moved_after of $pushes pushes)" t \
    "$([ "$moved_after" -gt 0 ] && [ "$moved_after" -lt "$pushes" ] && echo t || echo f)"
check "the shard moved to the other worker" "$to" "$(node_of "$mover")"
for _ in $(seq 1 20); do   # drain what is left
    psql_at "$port" -At -c "SELECT position FROM eventstore.tenant_catchup('$mover', 'moved', 1000)" >> "$out/handed"
done
pushed=$(wc -l < "$out/pushed")
echo "pushes: $pushed of $pushes committed ($(sort -u "$out/push-errors" | head -3 | tr '\n' ' '))"
check "most pushes committed across the move" t "$([ "$pushed" -ge $((pushes * 9 / 10)) ] && echo t || echo f)"
check "positions kept increasing across the move" "$(cat "$out/pushed")" "$(sort -n "$out/pushed")"
check "every committed push is stored" "$pushed" \
    "$(value "SELECT count(*) FROM eventstore.events WHERE instance_id = '$mover' AND aggregate_type = 'run'")"
check "nothing handed out twice (G5)" "$(wc -l < "$out/handed")" "$(sort -u "$out/handed" | wc -l)"
check "handed out in position order (G7)" "$(cat "$out/handed")" "$(sort -n "$out/handed")"
check "every committed push was handed out (G4): none missing" "" \
    "$(comm -23 <(sort "$out/pushed") <(sort "$out/handed"))"
check "the moved tenant's events are all on the new node" \
    "$(value "SELECT count(*) FROM eventstore.events WHERE instance_id = '$mover'")" \
    "$(psql_at "$to" -At -c "SET citus.override_table_visibility = off" \
        -c "SELECT count(*) FROM eventstore.events_$shard WHERE instance_id = '$mover'")"

echo "== a race run per tenant with the stress detector"
check "the harness's tenants (system, t1, t2, t3) are on both workers" 2 \
    "$(for t in system t1 t2 t3; do node_of "$t"; done | sort -u | wc -l)"
# stress_run NAME ARGS...: the harness against the coordinator, its output in $out/NAME; prints
# its verdict (the last line) and returns its exit status (0 clean, 1 violations, 2 no run).
stress_run() {
    local name=$1 status=0; shift
    cargo run --release --quiet -p eventstore-stress -- --citus --port "$port" \
        --data-dir "$SCRATCH_ROOT/citus-coordinator" --pg-bin "$PG_BIN" "$@" > "$out/$name" 2>&1 || status=$?
    tail -n 1 "$out/$name"
    return "$status"
}
status=0; stress_run race --seconds "${EVENTSTORE_CITUS_STRESS_SECONDS:-15}" || status=$?
check "the race run per tenant ends clean: no violation (exit 0; output in $out/race)" 0 "$status"
status=0; stress_run race-naive --seconds 8 --unsafe || status=$?
check "the same run with a naive catch-up is caught: violations (exit 1)" 1 "$status"

if [ "$failures" -gt 0 ]; then echo "citus: $failures check(s) failed (outputs in $out)"; exit 1; fi
echo "citus: every check passed"
