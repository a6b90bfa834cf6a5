# event_id_index (issue 14): what the event id's unique index (events_id_key, partial: WHERE id
# IS NOT NULL) costs a push. Two databases of the bench cluster, each with the extension and the
# same log of $EVENT_ID_LOG events; in "eventstore_no_id_index" the index is dropped. Every slice
# runs on a fresh copy of its database's template (afresh in lib.sh). Needs neither the
# preloaded logs nor Message DB. Sourced by scripts/bench.
#
#   push_1_with_id_index_vs_without    single-event push (no id), 1 client, events/s: with the
#                                      index ÷ without it
#   push_100_with_id_index_vs_without  the same for a 100-event push
#   push_1_ids_vs_no_ids               (no goal) a single-event push carrying a new event id ÷
#                                      one carrying none, both with the index: what giving ids
#                                      costs (the index entry and the look-up for a replay)
#   push_100_ids_vs_no_ids             (no goal) the same for 100 events
# Each also _syncoff (the CPU cost; with default durability both sides wait for the flush).

self_contained+=(event_id_index)
goal ">= 0.95" 'push_*_with_id_index_vs_without*'
EVENT_ID_LOG=200000

case_event_id_index() {
    say "eventstore_ids and eventstore_no_id_index, a log of $EVENT_ID_LOG events in both"
    local db result es base durability n
    for db in eventstore_ids eventstore_no_id_index; do
        new_template "$db"
        sql "${db}_template" -c "CREATE EXTENSION eventstore"
        fill_log "${db}_template" "$EVENT_ID_LOG"
    done
    sql eventstore_no_id_index_template -c "DROP INDEX eventstore.events_id_key"
    for durability in on off; do
        for n in 1 100; do
            result=$(interleave "fresh_writes eventstore_ids 1 $durability push_$n" \
                                "fresh_writes eventstore_no_id_index 1 $durability push_$n")
            read -r es base <<<"$result"
            record "push_${n}_with_id_index_vs_without" $durability "$(calc "$es * $n")" "$(calc "$base * $n")" ev/s "$es / $base"
            result=$(interleave "fresh_writes eventstore_ids 1 $durability push_ids_$n" \
                                "fresh_writes eventstore_ids 1 $durability push_$n")
            read -r es base <<<"$result"
            record "push_${n}_ids_vs_no_ids" $durability "$(calc "$es * $n")" "$(calc "$base * $n")" ev/s "$es / $base"
        done
    done
}
