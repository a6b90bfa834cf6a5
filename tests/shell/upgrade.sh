#!/usr/bin/env bash
# Upgrades: the releases' install scripts (sql/eventstore--<old>.sql, frozen as released),
# loaded with data and brought up with ALTER EXTENSION eventstore UPDATE, must keep every event,
# position, checkpoint and counter, go on working (push, catch-up, next_number), and end in
# exactly the schema a fresh CREATE EXTENSION makes (tests/upgrade/describe.sql: functions with
# their bodies, settings and privileges, tables, columns, indexes, constraints, views, policies,
# sequences, comments, dump marks, roles). Two kinds of path:
#   - step by step through every release (0.1.0 -> 0.2.0 -> ... -> this one), with data written
#     at each step and everything checked after each step;
#   - directly from each earlier release to this one, in one ALTER EXTENSION ... UPDATE.
# Its own scratch cluster: 127.0.0.1, port ${1:-5486}, data in /var/tmp/eventstore/upgrade.
#   tests/shell/upgrade.sh [PORT]
set -euo pipefail
cd "$(dirname "$0")/../.."
. scripts/cluster.sh

port=${1:-5486}
new=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
out="$SCRATCH_ROOT/upgrade-output"
rm -rf "$out" && mkdir -p "$out"
psql_as() { local db=$1; shift; as_postgres "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" -U postgres -d "$db" "$@"; }
value() { local db=$1; shift; psql_as "$db" -At -c "$*"; }

# The earlier releases, oldest first: every frozen install script but this release's.
earlier=()
for script in sql/eventstore--[0-9]*.sql; do
    version=$(basename "$script" .sql); version=${version#eventstore--}
    case $version in *--*|"$new") continue ;; esac   # an upgrade script, or this release
    earlier+=("$version")
done
mapfile -t earlier < <(printf '%s\n' "${earlier[@]}" | sort -V)

cluster_start upgrade "$port"
trap 'cluster_stop upgrade' EXIT
# Start as a cluster that never had this release: no database with the extension, no roles.
psql_as postgres -c "DROP DATABASE eventstore" \
    -c "DROP ROLE IF EXISTS eventstore_writer, eventstore_reader, eventstore_projector"

failures=0
check() {   # check DESCRIPTION EXPECTED ACTUAL
    if [ "$2" = "$3" ]; then echo "ok: $1"; else echo "FAILED: $1 (expected '$2', got '$3')"; failures=$((failures + 1)); fi
}

has_counters() { [ "$(value "$1" "SELECT to_regclass('eventstore.counters') IS NOT NULL")" = t ]; }

# write_data DB TAG: what an application of any release writes: 20 events in two tenants (the
# aggregates' sequences continue across steps), catch-ups of a global and of a per-tenant
# projection that stop partway (batches of 10 and 4), and a number where the release has
# next_number.
write_data() {
    local db=$1 tag=$2
    psql_as "$db" -v tag="$tag" >/dev/null <<'SQL'
SELECT count(*) FROM eventstore.push(ARRAY(
    SELECT eventstore.command('tenant-' || (n % 2), 'order', 'o' || (n % 5), 'placed',
                              jsonb_build_object('n', n, 'written_by', :'tag'))
      FROM generate_series(1, 20) AS n));
BEGIN;
SELECT count(*) FROM eventstore.projection_catchup('totals', NULL, 10);
SELECT count(*) FROM eventstore.projection_catchup('per_tenant', 'tenant-0', 4);
COMMIT;
SQL
    if has_counters "$db"; then value "$db" "SELECT eventstore.next_number('invoice', 'tenant-0')" >/dev/null; fi
}

# fingerprint DB: every event (position, identity, sequence, type, payload), the checkpoints,
# the position sequence and the counters, as one line each.
fingerprint() {
    local db=$1
    value "$db" "SELECT count(*) || ' events, max position ' || coalesce(max(position), 0) || ', md5 '
                     || md5(coalesce(string_agg(concat_ws('|', position, instance_id, aggregate_type, aggregate_id,
                                                          sequence, event_type, payload), ',' ORDER BY position), ''))
                   FROM eventstore.events"
    value "$db" "SELECT 'checkpoints ' || string_agg(projection || '/' || coalesce(instance_id, '*') || '=' || checkpoint,
                                                     ' ' ORDER BY projection, instance_id NULLS FIRST)
                   FROM eventstore.projection_states"
    value "$db" "SELECT 'position_seq ' || last_value || ' ' || is_called FROM eventstore.position_seq"
    if has_counters "$db"; then
        value "$db" "SELECT 'counters ' || coalesce(string_agg(scope || '/' || tenant || '=' || value, ' ' ORDER BY scope, tenant), '')
                       FROM eventstore.counters"
    fi
}

# update_and_check DB FROM TO [TARGET]: ALTER EXTENSION ... UPDATE (TO TARGET, when given), then
# check the version, that nothing was lost, and that push, catch-up and next_number go on.
update_and_check() {
    local db=$1 from=$2 to=$3 target=${4:-} path="$1: $2 -> $3"
    local before had_counters=false last_number=0
    before=$(fingerprint "$db")
    if has_counters "$db"; then
        had_counters=true
        last_number=$(value "$db" "SELECT coalesce(max(value), 0) FROM eventstore.counters WHERE scope = 'invoice' AND tenant = 'tenant-0'")
    fi
    psql_as "$db" -c "ALTER EXTENSION eventstore UPDATE${target:+ TO '$target'}"
    check "$path: the extension is at $to" "$to" "$(value "$db" "SELECT extversion FROM pg_extension WHERE extname = 'eventstore'")"
    local after
    after=$(fingerprint "$db")
    if ! $had_counters; then after=$(grep -v '^counters ' <<<"$after"); fi
    check "$path: events, positions, checkpoints and counters kept ($(head -1 <<<"$before" | cut -d, -f1-2))" \
        "$before" "$after"

    # The next push continues the aggregate's sequence and draws a position above every stored one.
    local expected_push
    expected_push=$(value "$db" "SELECT (max(sequence) + 1) || '/true' FROM eventstore.events
                                  WHERE instance_id = 'tenant-0' AND aggregate_type = 'order' AND aggregate_id = 'o0'")
    check "$path: the next push continues the sequence and the positions" "$expected_push" \
        "$(value "$db" "SELECT p.sequence || '/' || (p.position > (SELECT max(position) FROM eventstore.events))
                         FROM eventstore.push(ARRAY[eventstore.command('tenant-0', 'order', 'o0', 'shipped')]) AS p")"
    # Each catch-up hands out exactly the events past its checkpoint, in position order.
    local projection instance scope
    for projection in totals per_tenant; do
        if [ "$projection" = totals ]; then instance=NULL; scope=true; else instance="'tenant-0'"; scope="instance_id = 'tenant-0'"; fi
        check "$path: catch-up of $projection continues from its checkpoint" \
            "$(value "$db" "SELECT count(*) || '/' || coalesce(string_agg(position::text, ',' ORDER BY position), '')
                              FROM eventstore.events WHERE $scope AND position > (SELECT checkpoint FROM eventstore.projection_states
                                                                                    WHERE projection = '$projection')")" \
            "$(value "$db" "SELECT count(*) || '/' || coalesce(string_agg(position::text, ',' ORDER BY position), '')
                              FROM (SELECT position FROM eventstore.projection_catchup('$projection', $instance, 100000)) AS batch")"
    done
    check "$path: next_number continues its counter" "$((last_number + 1))" \
        "$(value "$db" "SELECT eventstore.next_number('invoice', 'tenant-0')")"
}

# same_schema_as_fresh DB PATH: the schema of DB equals a fresh install of this release.
same_schema_as_fresh() {
    local db=$1 path=$2
    psql_as postgres -c "CREATE DATABASE fresh_$db"
    psql_as "fresh_$db" -c "CREATE EXTENSION eventstore"
    psql_as "$db" -f tests/upgrade/describe.sql > "$out/$db.txt"
    psql_as "fresh_$db" -f tests/upgrade/describe.sql > "$out/fresh_$db.txt"
    if diff -u "$out/fresh_$db.txt" "$out/$db.txt" > "$out/$db.diff"; then
        echo "ok: $path: the updated schema equals a fresh install ($(wc -l < "$out/$db.txt") facts compared)"
    else
        echo "FAILED: $path: the updated schema differs from a fresh install (- fresh, + updated):"
        cat "$out/$db.diff"
        failures=$((failures + 1))
    fi
}

# Step by step through every release, with data written at each step.
if [ ${#earlier[@]} -gt 0 ]; then
    steps=("${earlier[@]}" "$new")
    db=stepwise
    echo "== step by step: ${steps[*]}"
    psql_as postgres -c "CREATE DATABASE $db"
    psql_as "$db" -c "CREATE EXTENSION eventstore VERSION '${steps[0]}'"
    write_data "$db" "${steps[0]}"
    for ((i = 1; i < ${#steps[@]}; i++)); do
        update_and_check "$db" "${steps[i - 1]}" "${steps[i]}" "${steps[i]}"
        write_data "$db" "${steps[i]}"
    done
    same_schema_as_fresh "$db" "step by step ${steps[*]}"
fi

# Directly from each earlier release to this one.
for old in "${earlier[@]}"; do
    db="direct_from_${old//./_}"
    echo "== directly: $old -> $new"
    psql_as postgres -c "CREATE DATABASE $db"
    psql_as "$db" -c "CREATE EXTENSION eventstore VERSION '$old'"
    write_data "$db" "$old"
    update_and_check "$db" "$old" "$new"
    same_schema_as_fresh "$db" "$old -> $new"
done
echo "upgrade: $failures failed"
[ "$failures" -eq 0 ]
