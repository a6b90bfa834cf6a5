# What every bench case shares, sourced by scripts/bench: running SQL and pgbench against the
# bench cluster, alternating a case's two sides, recording ratios against their goals, printing
# the results, and the cluster with its preloaded logs. Uses the driver's settings: conn, cluster,
# port, keep, preload, mode, SLICE, ROUNDS, BIG_NAME, SHARED_BUFFERS, PG_LIB, cases, work.

# ---------------------------------------------------------------------------------------------
# Plumbing

die() { echo "scripts/bench: $*" >&2; exit 1; }
say() { echo "· $*" >&2; }
calc() { awk "BEGIN { printf \"%.6g\", $1 }"; }

sql() { local db=$1; shift; PGOPTIONS='-c client_min_messages=warning' \
    "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 "${conn[@]}" -d "$db" "$@"; }

# pgbench_run DB CLIENTS DURABILITY SCRIPT [VAR=VALUE...] [-- PGBENCH_ARGS...]: one pgbench run
# of $SLICE seconds (prepared statements); prints its transactions per second. Each run gets a
# unique variable "run" (catch-up scripts name their projections after it).
pgbench_run() {
    local db=$1 clients=$2 durability=$3 script=$4 out; shift 4
    local args=(-n -M prepared -c "$clients" -j $((clients < 2 ? 1 : 2)) -T "$SLICE" -f "$script")
    args+=(-D "run=$(date +%s%N)")
    while [ $# -gt 0 ] && [ "$1" != -- ]; do args+=(-D "$1"); shift; done
    [ $# -gt 0 ] && shift && args+=("$@")
    if ! out=$(PGOPTIONS="-c synchronous_commit=$durability ${SESSION_OPTIONS:-}" \
            "$PG_BIN/pgbench" "${conn[@]}" "${args[@]}" "$db" 2>&1); then
        echo "$out" >&2; die "pgbench failed: $script on $db"
    fi
    grep -q '^number of failed transactions: 0 ' <<<"$out" || { echo "$out" >&2; die "failed transactions: $script"; }
    sed -n 's/^tps = \([0-9.]*\) .*/\1/p' <<<"$out"
}

# interleave CMD_A CMD_B: runs each command (word-split; no spaces in arguments) $ROUNDS times,
# alternating A B, B A, ...; prints the mean output of each.
interleave() {
    local sum_a=0 sum_b=0 round a b
    for ((round = 0; round < ROUNDS; round++)); do
        if ((round % 2 == 0)); then a=$($1); b=$($2); else b=$($2); a=$($1); fi
        sum_a=$(calc "$sum_a + $a") sum_b=$(calc "$sum_b + $b")
    done
    echo "$(calc "$sum_a / $ROUNDS") $(calc "$sum_b / $ROUNDS")"
}

# insert_events DB FROM TO COUNT: events FROM..TO of a log of COUNT events, straight into
# eventstore.events: 10 per aggregate (user-1 .. user-COUNT/10, tenant-<aggregate % 4>),
# positions from eventstore.position_seq (so push continues above them).
insert_events() {
    sql "$1" -c "SET synchronous_commit = off" -c "
        INSERT INTO eventstore.events (instance_id, aggregate_type, aggregate_id, sequence,
               event_type, revision, payload, creator, owner, created_at, position, in_tx_order)
        SELECT 'tenant-' || (a % 4), 'user', 'user-' || a, s, 'user.updated', 1,
               jsonb_build_object('name', 'bench user', 'email', 'user@example.com', 'n', g),
               'bench', 'tenant-' || (a % 4), now(), nextval('eventstore.position_seq'), 0
          FROM generate_series($2, $3) g,
               LATERAL (SELECT (g - 1) % ($4 / 10) + 1 AS a, (g - 1) / ($4 / 10) + 1 AS s) x"
}

# fill_log DB COUNT: a log of COUNT events in DB, vacuumed and analyzed (the self-contained
# cases' small logs).
fill_log() {
    insert_events "$1" 1 "$2" "$2"
    sql "$1" -c "VACUUM (ANALYZE) eventstore.events"
}

# afresh DB: DB dropped and copied again from DB_template, then a checkpoint.
#
# A write case runs every slice on a fresh copy of its template. Without it the two sides drift
# apart: the faster side writes more events per slice, so its table and indexes grow faster and
# its later slices slow down, which flatters the slower side (full mode, 2026-12-06: the SQL
# edition's 8-client single-event ratio with commits off read 0.72 without the copies, 0.64 with
# them); and a table that earlier cases wrote into is bigger than its baseline's.
afresh() {
    sql postgres -c "DROP DATABASE IF EXISTS $1" -c "CREATE DATABASE $1 TEMPLATE $1_template" \
        -c CHECKPOINT >/dev/null
}
# new_template DB: DB and DB_template dropped, DB_template created empty (for afresh DB).
new_template() {
    sql postgres -c "DROP DATABASE IF EXISTS $1" -c "DROP DATABASE IF EXISTS $1_template" \
        -c "CREATE DATABASE $1_template"
}
# fresh_writes DB ARG...: writes (writes.sh) on a fresh copy of DB_template.
fresh_writes() { afresh "$1"; writes "$@"; }

# percentile TAG P: the P-th percentile (0 < P <= 1) of $work/TAG.latencies.
percentile() { sort -n "$work/$1.latencies" | awk -v p="$2" '{ v[NR] = $1 } END { i = int(NR * p); if (i < NR * p) i++; if (i < 1) i = 1; print v[i] }'; }

# ---------------------------------------------------------------------------------------------
# Results

rows=() ratios=() goal_patterns=() goal_bounds=()

# goal BOUND PATTERN...: the goal of the ratios whose names match PATTERN (a shell pattern, the
# _syncoff suffix included), e.g. goal ">= 0.8" 'push_100_vs_multirow_insert*' (issue 5).
# Throughput ratios: at least; cost and latency: at most. A ratio no pattern matches has none.
goal() {
    local bound=$1 pattern; shift
    for pattern in "$@"; do goal_patterns+=("$pattern") goal_bounds+=("$bound"); done
}

# target NAME: the goal of the ratio NAME, or nothing.
target() {
    local i
    for i in "${!goal_patterns[@]}"; do   # unquoted on the right: matched as a pattern
        if [[ $1 == ${goal_patterns[i]} ]]; then echo "${goal_bounds[i]}"; return; fi
    done
    echo ""
}

# record NAME DURABILITY EVENTSTORE BASELINE UNIT RATIO: one result; DURABILITY "off" suffixes
# the name with _syncoff.
record() {
    local name=$1 durability=$2 eventstore=$3 baseline=$4 unit=$5 ratio verdict=""
    ratio=$(calc "$6")
    [ "$durability" = off ] && name+=_syncoff
    local goal; goal=$(target "$name")
    if [ -n "$goal" ]; then
        verdict=$(awk "BEGIN { print ($ratio $goal) ? \"met\" : \"MISSED\" }")
    fi
    rows+=("$(printf '%-46s %12.0f %12.0f  %-5s %7.3f  %-7s %s' "$name" "$eventstore" "$baseline" \
        "$unit" "$ratio" "$goal" "$verdict")")
    ratios+=("ratio $name $ratio")
    say "$name: $ratio"
}

print_results() {
    printf '\n%-46s %12s %12s  %-5s %7s  %-7s %s\n' case eventstore baseline unit ratio target ""
    printf '%s\n' "${rows[@]}"
    printf '\n(%s mode: %s s slices, %s rounds; 2-core machine shared with other work: absolute ' \
        "$mode" "$SLICE" "$ROUNDS"
    printf 'numbers are noisy, compare ratios. Scaling rows: eventstore = the %s log, baseline = ' \
        "$BIG_NAME"
    printf 'the 10k log; p99 rows in microseconds.)\n'
    printf 'Measured: %s, %s modified %s.\n\n' \
        "$(sql eventstore -Atc "SELECT 'eventstore ' || extversion FROM pg_extension WHERE extname = 'eventstore'")" \
        "$PG_LIB/eventstore.so" "$(date -r "$PG_LIB/eventstore.so" '+%F %T')"
    printf '%s\n' "${ratios[@]}"
}

# ---------------------------------------------------------------------------------------------
# The cluster and its logs

start_cluster() {
    say "cluster bench on 127.0.0.1:$port ($mode mode$($preload && echo ', preloaded'))"
    local settings=("shared_buffers = $SHARED_BUFFERS" "max_wal_size = 20GB" "checkpoint_timeout = 1h"
        "autovacuum = off")
    $preload && settings+=("shared_preload_libraries = 'eventstore'")
    cluster_start "$cluster" "$port" "${settings[@]}"
    $keep || trap 'cluster_stop "$cluster"' EXIT
}

# load_events DB COUNT: a new database DB with the extension and a log of COUNT events
# (insert_events, in chunks of a million), then vacuumed, analyzed and checkpointed.
load_events() {
    local db=$1 count=$2 chunk=1000000 from
    say "loading $count events into $db"
    sql postgres -c "CREATE DATABASE $db"
    sql "$db" -c "CREATE EXTENSION eventstore"
    for ((from = 1; from <= count; from += chunk)); do
        insert_events "$db" "$from" $((from + chunk - 1 < count ? from + chunk - 1 : count)) "$count"
    done
    sql "$db" -c "VACUUM (ANALYZE) eventstore.events" -c "CHECKPOINT"
}
