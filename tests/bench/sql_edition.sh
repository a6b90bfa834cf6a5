# sql_edition_vs_native (issue 19): the SQL edition (sql/plpgsql/eventstore.sql, run with psql -f
# into the database "eventstore_sql" of the bench cluster) ÷ the native extension (the database
# "eventstore_native", horizon mode floors, not preloaded), with the same pgbench scripts. Needs
# neither the preloaded logs nor Message DB. Sourced by scripts/bench.
#
#   sql_edition_vs_native_push_1      single-event push, 1 client, events/s
#   sql_edition_vs_native_push_1x8    the same with 8 clients
#   sql_edition_vs_native_push_100    100-event push, 1 client, events/s
#   sql_edition_vs_native_catchup     events/s delivered by projection_catchup (global, batches
#                                     of 1000, each in its own committed transaction) over the
#                                     same log of $SQL_EDITION_LOG events in both databases
# Each also _syncoff (the CPU cost; with default durability both sides wait for the flush).
#
# Every slice runs on a fresh copy of its side's template database (filled once, vacuumed), made
# just before the slice and followed by a checkpoint. Without it the sides drift apart: the
# faster side writes more events per slice, so its table and indexes grow faster and its later
# slices slow down, which flatters the slower side (full mode, 2026-12-06: the 8-client
# single-event ratio with commits off read 0.72 without the copies, 0.64 with them).

self_contained+=(sql_edition_vs_native)
goal ">= 0.7" 'sql_edition_vs_native_push_*'
SQL_EDITION_LOG=200000

# afresh DB: DB dropped and copied again from DB_template, then a checkpoint.
afresh() {
    sql postgres -c "DROP DATABASE IF EXISTS $1" -c "CREATE DATABASE $1 TEMPLATE $1_template" \
        -c CHECKPOINT >/dev/null
}
fresh_writes() { afresh "$1"; writes "$@"; }
fresh_catchups() { afresh "$1"; catchups "$@"; }
# versus CMD ARG...: interleave's means of CMD on the edition's database and on native's.
versus() { local cmd=$1; shift; interleave "$cmd eventstore_sql $*" "$cmd eventstore_native $*"; }

case_sql_edition_vs_native() {
    say "the SQL edition into eventstore_sql; a log of $SQL_EDITION_LOG events in both"
    local db result es base durability
    for db in eventstore_sql eventstore_native; do
        sql postgres -c "DROP DATABASE IF EXISTS $db" -c "DROP DATABASE IF EXISTS ${db}_template" \
            -c "CREATE DATABASE ${db}_template"
    done
    sql eventstore_sql_template --single-transaction -f sql/plpgsql/eventstore.sql
    sql eventstore_native_template -c "CREATE EXTENSION eventstore"
    for db in eventstore_sql eventstore_native; do fill_log "${db}_template" "$SQL_EDITION_LOG"; done
    for durability in on off; do
        result=$(versus fresh_writes 1 "$durability" push_1)
        read -r es base <<<"$result"
        record sql_edition_vs_native_push_1 $durability "$es" "$base" ev/s "$es / $base"
        result=$(versus fresh_writes 8 "$durability" push_1)
        read -r es base <<<"$result"
        record sql_edition_vs_native_push_1x8 $durability "$es" "$base" ev/s "$es / $base"
        result=$(versus fresh_writes 1 "$durability" push_100)
        read -r es base <<<"$result"
        record sql_edition_vs_native_push_100 $durability "$(calc "$es * 100")" "$(calc "$base * 100")" ev/s "$es / $base"
        result=$(versus fresh_catchups "$SQL_EDITION_LOG" 1 "$durability" catchup)
        read -r es base <<<"$result"
        record sql_edition_vs_native_catchup $durability "$es" "$base" ev/s "$es / $base"
    done
}
