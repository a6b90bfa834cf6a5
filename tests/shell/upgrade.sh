#!/usr/bin/env bash
# Upgrades: every earlier release's install script (sql/eventstore--<old>.sql), loaded with
# data and brought up with ALTER EXTENSION eventstore UPDATE, must end in exactly the schema a
# fresh CREATE EXTENSION makes (tests/upgrade/describe.sql: functions with their bodies,
# settings and privileges, tables, columns, indexes, constraints, views, policies, sequences,
# comments, dump marks, roles), keep every event, position, checkpoint, and go on working.
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

cluster_start upgrade "$port"
trap 'cluster_stop upgrade' EXIT
# Start as a cluster that never had this release: no database with the extension, no roles.
psql_as postgres -c "DROP DATABASE eventstore" \
    -c "DROP ROLE IF EXISTS eventstore_writer, eventstore_reader, eventstore_projector"

failures=0
check() {   # check DESCRIPTION EXPECTED ACTUAL
    if [ "$2" = "$3" ]; then echo "ok: $1"; else echo "FAILED: $1 (expected '$2', got '$3')"; failures=$((failures + 1)); fi
}

for script in sql/eventstore--[0-9]*.sql; do
    old=$(basename "$script" .sql); old=${old#eventstore--}
    case $old in *--*|"$new") continue ;; esac   # an upgrade script, or this release
    db="upgraded_from_${old//./_}"
    echo "== $old -> $new"
    psql_as postgres -c "CREATE DATABASE $db"
    psql_as "$db" -c "CREATE EXTENSION eventstore VERSION '$old'"
    # Data written by the old release: events in two tenants, a checkpoint partway.
    psql_as "$db" <<'SQL'
SELECT count(*) FROM eventstore.push(ARRAY(
    SELECT eventstore.command('tenant-' || (n % 2), 'order', 'o' || (n % 5), 'placed', jsonb_build_object('n', n))
      FROM generate_series(1, 50) AS n));
BEGIN;
SELECT count(*) FROM eventstore.projection_catchup('totals', NULL, 20);
COMMIT;
SQL
    before=$(psql_as "$db" -At -c "SELECT count(*) || '/' || max(position) || '/' || (SELECT checkpoint FROM eventstore.projection_states) FROM eventstore.events")
    psql_as "$db" -c "ALTER EXTENSION eventstore UPDATE"
    check "$old: updated to $new" "$new" "$(psql_as "$db" -At -c "SELECT extversion FROM pg_extension WHERE extname = 'eventstore'")"
    check "$old: events, last position and checkpoint kept" "$before" \
        "$(psql_as "$db" -At -c "SELECT count(*) || '/' || max(position) || '/' || (SELECT checkpoint FROM eventstore.projection_states) FROM eventstore.events")"
    # It goes on working: the next push continues above the old positions and sequences,
    # the catch-up continues from its checkpoint, the new functions run.
    check "$old: next push continues the sequence and the positions" "6/true" \
        "$(psql_as "$db" -At -c "SELECT sequence || '/' || (position > 50) FROM eventstore.push(ARRAY[eventstore.command('tenant-0', 'order', 'o0', 'shipped')])")"
    check "$old: catch-up continues from its checkpoint" "31/21/51" \
        "$(psql_as "$db" -At -c "SELECT count(*) || '/' || min(position) || '/' || max(position) FROM eventstore.projection_catchup('totals', NULL, 100)")"
    check "$old: next_number works" "1" "$(psql_as "$db" -At -c "SELECT eventstore.next_number('invoice', 'tenant-0')")"

    psql_as postgres -c "CREATE DATABASE fresh_$db"
    psql_as "fresh_$db" -c "CREATE EXTENSION eventstore"
    psql_as "$db" -f tests/upgrade/describe.sql > "$out/$db.txt"
    psql_as "fresh_$db" -f tests/upgrade/describe.sql > "$out/fresh_$db.txt"
    if diff -u "$out/fresh_$db.txt" "$out/$db.txt" > "$out/$db.diff"; then
        echo "ok: $old: the updated schema equals a fresh install ($(wc -l < "$out/$db.txt") facts compared)"
    else
        echo "FAILED: $old: the updated schema differs from a fresh install (- fresh, + updated):"
        cat "$out/$db.diff"
        failures=$((failures + 1))
    fi
done
echo "upgrade: $failures failed"
[ "$failures" -eq 0 ]
