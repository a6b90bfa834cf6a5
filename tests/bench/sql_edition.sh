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
# Every slice runs on a fresh copy of its side's template database (filled once, vacuumed; see
# afresh in lib.sh).

self_contained+=(sql_edition_vs_native)
goal ">= 0.7" 'sql_edition_vs_native_push_*'
SQL_EDITION_LOG=200000

fresh_catchups() { afresh "$1"; catchups "$@"; }
# versus CMD ARG...: interleave's means of CMD on the edition's database and on native's.
versus() { local cmd=$1; shift; interleave "$cmd eventstore_sql $*" "$cmd eventstore_native $*"; }

case_sql_edition_vs_native() {
    say "the SQL edition into eventstore_sql; a log of $SQL_EDITION_LOG events in both"
    local db result es base durability
    for db in eventstore_sql eventstore_native; do new_template "$db"; done
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
