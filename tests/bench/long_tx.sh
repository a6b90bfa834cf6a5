# long_tx (issues 8 and 19): what one write transaction held open costs the writers and
# catch-ups of its tenant, once per horizon mode (barrier: eventstore.horizon = 'barrier';
# floors: the default without preloading; registry: preloaded; the cluster restarts between).
# Needs neither the preloaded logs nor Message DB. Sourced by scripts/bench.
#
# A single-event push writer of tenant-0 (tests/bench/long_tx_writer.pgbench) and a catch-up
# loop of tenant-0 (tests/bench/long_tx_catchup.pgbench, with long_tx_idle.pgbench between its
# calls) run while a push of tenant-0 is held open uncommitted; the baseline is the same without
# it.
#
#   writer_p99_during_long_tx_vs_idle[_barrier|_floors]
#                                 p99 of the writer while the push is held open ÷ without it.
#                                 No suffix: the registry; _barrier, _floors: not preloaded
#   catchup_p50_ms_during_long_tx[_barrier|_floors], catchup_p99_ms_during_long_tx[...]
#                                 (a value in ms, not a ratio) latency of that catch-up loop's
#                                 calls while the push is held open; the baseline column is the
#                                 same without it, in us. Barrier: the catch-up waits for the
#                                 held writer; floors, registry: it answers at once below its
#                                 position
#   catchup_p50_during_long_tx_vs_idle[...], catchup_p99_during_long_tx_vs_idle[...]
#                                 the catch-up's p50 and p99 while held ÷ without it (goal for
#                                 the floors: <= 2, issue 19)

self_contained+=(long_tx)
goal "<= 2" 'writer_p99_during_long_tx_vs_idle*'
goal "<= 100" catchup_p99_ms_during_long_tx catchup_p99_ms_during_long_tx_floors
goal "<= 2" catchup_p50_during_long_tx_vs_idle_floors catchup_p99_during_long_tx_vs_idle_floors

# set_horizon_mode MODE: restarts the cluster with eventstore preloaded (registry) or not
# (floors; barrier with eventstore.horizon = 'barrier'), keeping its data.
set_horizon_mode() {
    local mode=$1
    if [ "$mode" = registry ]; then
        sql postgres -c "ALTER SYSTEM SET shared_preload_libraries = 'eventstore'"
    else
        sql postgres -c "ALTER SYSTEM RESET shared_preload_libraries"
    fi
    # ALTER SYSTEM knows eventstore.horizon once the library is loaded.
    sql eventstore -c "LOAD 'eventstore'" -c "ALTER SYSTEM SET eventstore.horizon = '$([ "$mode" = barrier ] && echo barrier || echo floors)'"
    as_postgres env -u RUST_BACKTRACE -u RUST_LIB_BACKTRACE "$PG_BIN/pg_ctl" \
        -D "$SCRATCH_ROOT/$cluster" -l "$SCRATCH_ROOT/$cluster/server.log" -w -t 60 -m fast restart >/dev/null
    [ "$(sql eventstore -Atc "SELECT eventstore.horizon_mode()")" = "$mode" ] || die "horizon mode is not $mode"
}

# long_tx_window TAG HOLD: $LONG_TX_SECONDS of a single-event push writer of tenant-0 and a
# catch-up loop of tenant-0 (1 client each, default durability); with HOLD=true, a push of
# tenant-0 is held open, uncommitted, from before they start until after they end. Appends
# latencies (us) to $work/TAG_writer.latencies and $work/TAG_catchup.latencies.
long_tx_window() {
    local tag=$1 hold=$2 holder="" writer logs
    logs=$work/log.$tag.$RANDOM
    if $hold; then
        sql eventstore -c "BEGIN" -c "SELECT position FROM eventstore.push(ARRAY[ROW('tenant-0',
            'user', 'held', 'user.updated', 1::smallint, '{}'::jsonb, 'bench', NULL, NULL, NULL, NULL)::eventstore.command])" \
            -c "SELECT pg_sleep($LONG_TX_SECONDS + 1)" -c "COMMIT" >/dev/null &
        holder=$!
        sleep 0.5
    fi
    "$PG_BIN/pgbench" "${conn[@]}" -n -M prepared -c 1 -T "$LONG_TX_SECONDS" -D naggs=$AGGREGATES \
        -f "$cases/long_tx_writer.pgbench" -l --log-prefix="$logs.w" eventstore >"$work/long_tx_writer.log" 2>&1 &
    writer=$!
    "$PG_BIN/pgbench" "${conn[@]}" -n -M prepared -c 1 -T "$LONG_TX_SECONDS" -D run="$(date +%s%N)" \
        -f "$cases/long_tx_catchup.pgbench" -f "$cases/long_tx_idle.pgbench" -l --log-prefix="$logs.c" \
        eventstore >"$work/long_tx_catchup.log" 2>&1 || die "catch-up loop failed: $work/long_tx_catchup.log"
    wait "$writer" || die "writer failed: $work/long_tx_writer.log"
    if [ -n "$holder" ]; then wait "$holder" || die "the held transaction failed"; fi
    cat "$logs".w.* | awk '{ print $3 }' >>"$work/${tag}_writer.latencies"
    cat "$logs".c.* | awk '$4 == 0 { print $3 }' >>"$work/${tag}_catchup.latencies"
    rm -f "$logs".*
}

# Each horizon in turn (the cluster restarts between), then back to the default, floors.
case_long_tx() {
    local horizon round idle_w held_w idle_c held_c50 held_c99 idle_c50
    LONG_TX_SECONDS=$((SLICE * 2))
    for horizon in barrier floors registry; do
        set_horizon_mode $horizon
        long_tx_window long_tx_warmup false   # after the restart: caches, first checkpoint
        rm -f "$work"/long_tx_*.latencies
        for ((round = 0; round < ROUNDS; round++)); do   # alternating: idle held, held idle, ...
            if ((round % 2 == 0)); then
                long_tx_window long_tx_idle false; long_tx_window long_tx_held true
            else
                long_tx_window long_tx_held true; long_tx_window long_tx_idle false
            fi
        done
        idle_w=$(percentile long_tx_idle_writer 0.99) held_w=$(percentile long_tx_held_writer 0.99)
        idle_c=$(percentile long_tx_idle_catchup 0.99) idle_c50=$(percentile long_tx_idle_catchup 0.5)
        held_c99=$(percentile long_tx_held_catchup 0.99) held_c50=$(percentile long_tx_held_catchup 0.5)
        say "long_tx $horizon: catch-ups while held: $(wc -l <"$work/long_tx_held_catchup.latencies"), idle: $(wc -l <"$work/long_tx_idle_catchup.latencies")"
        # The registry is issue 8's horizon: its rows carry the plain names; the others a suffix.
        local mode=""; [ "$horizon" = registry ] || mode=_$horizon
        record "writer_p99_during_long_tx_vs_idle$mode" on "$held_w" "$idle_w" us "$held_w / $idle_w"
        record "catchup_p50_ms_during_long_tx$mode" on "$held_c50" "$idle_c50" us "$held_c50 / 1000"
        record "catchup_p99_ms_during_long_tx$mode" on "$held_c99" "$idle_c" us "$held_c99 / 1000"
        record "catchup_p50_during_long_tx_vs_idle$mode" on "$held_c50" "$idle_c50" us "$held_c50 / $idle_c50"
        record "catchup_p99_during_long_tx_vs_idle$mode" on "$held_c99" "$idle_c" us "$held_c99 / $idle_c"
        if [ "$horizon" != barrier ]; then
            # No writer waits for a catch-up: the writer's slowest call while held stays far
            # below the time the push is held.
            record "writer_max_ms_during_long_tx$mode" on "$(percentile long_tx_held_writer 1)" \
                "$(percentile long_tx_idle_writer 1)" us "$(percentile long_tx_held_writer 1) / 1000"
        fi
    done
    set_horizon_mode floors
}
