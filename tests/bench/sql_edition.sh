# sql_edition_vs_native (issue 19): the SQL edition (sql/plpgsql/eventstore.sql, run with psql -f
# into the database "eventstore_sql" of the bench cluster) ÷ the native extension (the database
# "eventstore", horizon mode floors, not preloaded), with the same pgbench scripts. Needs neither
# the preloaded logs nor Message DB. Sourced by scripts/bench.
#
#   sql_edition_vs_native_push_1      single-event push, 1 client, events/s
#   sql_edition_vs_native_push_1x8    the same with 8 clients
#   sql_edition_vs_native_push_100    100-event push, 1 client, events/s
#   sql_edition_vs_native_catchup     events/s delivered by projection_catchup (global, batches
#                                     of 1000, each in its own committed transaction) over the
#                                     same log of $SQL_EDITION_LOG events in both databases
# Each also _syncoff (the CPU cost; with default durability both sides wait for the flush).

self_contained+=(sql_edition_vs_native)
goal ">= 0.7" 'sql_edition_vs_native_push_*'
SQL_EDITION_LOG=200000

case_sql_edition_vs_native() {
    say "the SQL edition into eventstore_sql; a log of $SQL_EDITION_LOG events in both"
    sql postgres -c "DROP DATABASE IF EXISTS eventstore_sql" -c "CREATE DATABASE eventstore_sql"
    sql postgres -c "DROP DATABASE IF EXISTS eventstore_native" -c "CREATE DATABASE eventstore_native"
    sql eventstore_sql --single-transaction -f sql/plpgsql/eventstore.sql
    sql eventstore_native -c "CREATE EXTENSION eventstore"
    local db result es base durability
    for db in eventstore_sql eventstore_native; do fill_log "$db" "$SQL_EDITION_LOG"; done
    sql postgres -c CHECKPOINT
    for durability in on off; do
        result=$(interleave "writes eventstore_sql 1 $durability push_1" "writes eventstore_native 1 $durability push_1")
        read -r es base <<<"$result"
        record sql_edition_vs_native_push_1 $durability "$es" "$base" ev/s "$es / $base"
        result=$(interleave "writes eventstore_sql 8 $durability push_1" "writes eventstore_native 8 $durability push_1")
        read -r es base <<<"$result"
        record sql_edition_vs_native_push_1x8 $durability "$es" "$base" ev/s "$es / $base"
        result=$(interleave "writes eventstore_sql 1 $durability push_100" "writes eventstore_native 1 $durability push_100")
        read -r es base <<<"$result"
        record sql_edition_vs_native_push_100 $durability "$(calc "$es * 100")" "$(calc "$base * 100")" ev/s "$es / $base"
        result=$(interleave "catchups eventstore_sql $SQL_EDITION_LOG 1 $durability catchup" \
                            "catchups eventstore_native $SQL_EDITION_LOG 1 $durability catchup")
        read -r es base <<<"$result"
        record sql_edition_vs_native_catchup $durability "$es" "$base" ev/s "$es / $base"
    done
}
