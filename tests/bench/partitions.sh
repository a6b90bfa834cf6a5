# partitions_4_vs_1, catchup_partitioned_vs_plain (issue 13): partitioned projections. Needs
# neither the preloaded logs nor Message DB: both cases share a log of their own (database
# "partitions", $PARTITION_EVENTS events, 10 per aggregate, loaded once). Sourced by
# scripts/bench.
#
#   partitions_4_vs_1             events/s of a projection whose handler waits 1 ms per event
#                                 (pg_sleep inside the worker's transaction: waiting, not CPU),
#                                 drained by 4 workers on 4 partitions with partition_catchup ÷
#                                 by 1 worker on a projection of 1 partition (batches of
#                                 $DRAIN_BATCH; default durability). Script:
#                                 tests/bench/partition_drain.pgbench
#   catchup_partitioned_vs_plain  events/s of one worker on a projection of 1 partition through
#                                 partition_catchup ÷ through projection_catchup (batches of
#                                 1000 read to the client, no handler; also _syncoff). Scripts:
#                                 tests/bench/partition_catchup.pgbench, tests/bench/catchup.pgbench

self_contained+=(partitions_4_vs_1 catchup_partitioned_vs_plain)
goal ">= 3.5" partitions_4_vs_1
goal ">= 0.95" 'catchup_partitioned_vs_plain*'

PARTITION_EVENTS=200000   # enough that no partition runs dry within a slice (4 x 1000 ev/s x 10 s)
DRAIN_BATCH=50            # 50 ms of handler per batch: many batches per slice, all of them full

# partition_log: loads the database "partitions" once per run of scripts/bench.
partition_log() {
    [ "$(sql postgres -Atc "SELECT count(*) FROM pg_database WHERE datname = 'partitions'")" = 1 ] \
        || load_events partitions $PARTITION_EVENTS
}

# drain PARTITIONS WORKERS: events/s of WORKERS workers draining a new projection of PARTITIONS
# partitions, each batch followed by 1 ms of waiting per event in the worker's transaction.
# Every batch is full (the log outlasts a slice; checked), so events = transactions x batch.
drain() {
    local partitions=$1 workers=$2 projection tps handled
    projection=drain_$(date +%s%N)_$partitions
    sql partitions -Atc "SELECT eventstore.set_partitions('$projection', NULL, $partitions)" >/dev/null
    tps=$(pgbench_run partitions "$workers" on "$cases/partition_drain.pgbench" \
        "projection=$projection" "batch=$DRAIN_BATCH")
    # The furthest checkpoint must be short of the log's end: no batch came back short.
    handled=$(sql partitions -Atc "SELECT max(checkpoint) FROM eventstore.projection_states
                                   WHERE projection = '$projection'")
    [ "$handled" -lt "$PARTITION_EVENTS" ] || die "drain: partition ran dry ($handled); raise PARTITION_EVENTS"
    calc "$tps * $DRAIN_BATCH"
}

case_partitions_4_vs_1() {
    local result four one
    partition_log
    result=$(interleave "drain 4 4" "drain 1 1")
    read -r four one <<<"$result"
    record partitions_4_vs_1 on "$four" "$one" ev/s "$four / $one"
}

# partition_catchups DURABILITY SCRIPT: events/s of one worker, 1000 per transaction, through
# SCRIPT (partition_catchup on a projection never partitioned, i.e. of 1 partition, or
# projection_catchup: tests/bench/catchup.pgbench).
partition_catchups() {
    local tps; tps=$(pgbench_run partitions 1 "$1" "$cases/$2.pgbench" "maxpos=$PARTITION_EVENTS" round=0 position=0)
    calc "$tps * 1000"
}

case_catchup_partitioned_vs_plain() {
    local durability result es base
    partition_log
    for durability in on off; do
        result=$(interleave "partition_catchups $durability partition_catchup" "partition_catchups $durability catchup")
        read -r es base <<<"$result"
        record catchup_partitioned_vs_plain $durability "$es" "$base" ev/s "$es / $base"
    done
}
