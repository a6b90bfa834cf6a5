# catchup_vs_select: projection_catchup against a raw paging SELECT over the same rows of the
# preloaded big log (database "big"). Sourced by scripts/bench.
#
# Eventstore side: tests/bench/catchup.pgbench; baseline: tests/bench/select_page.pgbench.
#
#   catchup_vs_select             events/s delivered by projection_catchup (batches of 1000, each
#                                 in its own committed transaction) ÷ a raw paging SELECT by
#                                 position over the same rows (also _syncoff: catch-up commits
#                                 its checkpoint, the SELECT writes nothing)

goal ">= 1.0" 'catchup_vs_select*'   # issue 15

# catchups DB MAXPOS CLIENTS DURABILITY SCRIPT: events/s, 1000 per transaction.
catchups() {
    local tps; tps=$(pgbench_run "$1" "$3" "$4" "$cases/$5.pgbench" "maxpos=$2" round=0 position=0)
    calc "$tps * 1000"
}

case_catchup_vs_select() {
    local durability result es base
    for durability in on off; do
        result=$(interleave "catchups big $BIG 1 $durability catchup" "catchups big $BIG 1 $durability select_page")
        read -r es base <<<"$result"
        record catchup_vs_select $durability "$es" "$base" ev/s "$es / $base"
    done
}
