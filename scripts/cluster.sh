#!/usr/bin/env bash
# Scratch PostgreSQL clusters for eventstore: sourced by setup, test, stress and bench.
# A cluster is initdb'd as the postgres OS user under /var/tmp/eventstore/<name> (a place the
# postgres user can reach), listens only on 127.0.0.1 and its own port (never 5432), and has
# the extension installed in the database "eventstore".

PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}
SCRATCH_ROOT=${SCRATCH_ROOT:-/var/tmp/eventstore}

# as_postgres CMD...: run a command as the postgres OS user (directly if we already are).
as_postgres() {
    if [ "$(id -un)" = postgres ]; then "$@"; else runuser -u postgres -- "$@"; fi
}

# cluster_start NAME PORT [postgresql.conf lines...]: a fresh cluster, started, with the
# database "eventstore" and the extension created in it.
cluster_start() {
    local name=$1 port=$2; shift 2
    local dir="$SCRATCH_ROOT/$name"
    cluster_stop "$name"
    mkdir -p "$SCRATCH_ROOT"
    chmod 1777 "$SCRATCH_ROOT"
    rm -rf "$dir"
    as_postgres "$PG_BIN/initdb" -D "$dir" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 >/dev/null
    {
        echo "port = $port"
        echo "listen_addresses = '127.0.0.1'"
        echo "unix_socket_directories = '$dir'"
        echo "max_connections = 200"
        echo "fsync = on"
        echo "log_min_messages = warning"
        for line in "$@"; do echo "$line"; done
    } >> "$dir/postgresql.conf"
    # The server must not inherit RUST_BACKTRACE: pgrx would put backtraces into error details.
    as_postgres env -u RUST_BACKTRACE -u RUST_LIB_BACKTRACE \
        "$PG_BIN/pg_ctl" -D "$dir" -l "$dir/server.log" -w -t 60 start >/dev/null
    as_postgres "$PG_BIN/psql" -X -q -h 127.0.0.1 -p "$port" -U postgres -d postgres \
        -c "CREATE DATABASE eventstore" >/dev/null
    as_postgres "$PG_BIN/psql" -X -q -h 127.0.0.1 -p "$port" -U postgres -d eventstore \
        -c "CREATE EXTENSION eventstore" >/dev/null
}

# cluster_stop NAME: stop the cluster if it runs (its files stay for a look afterwards).
cluster_stop() {
    local dir="$SCRATCH_ROOT/$1"
    if [ -f "$dir/postmaster.pid" ]; then
        as_postgres "$PG_BIN/pg_ctl" -D "$dir" -m fast -w stop >/dev/null 2>&1 || true
    fi
}

# private_pg_tree DIR: a private copy of the PostgreSQL 15 tree under DIR (made once), for
# builds that must not touch the system installation (in-process tests, mutants). PostgreSQL
# finds its share and lib directories relative to its binaries, so the copy runs on its own.
# Prints the copy's bin directory.
private_pg_tree() {
    local root=$1
    if [ ! -x "$root/usr/lib/postgresql/15/bin/postgres" ]; then
        mkdir -p "$root/usr/lib/postgresql" "$root/usr/share/postgresql" "$root/usr/include"
        cp -a /usr/lib/postgresql/15 "$root/usr/lib/postgresql/"
        cp -a /usr/share/postgresql/15 "$root/usr/share/postgresql/"
        ln -sfn /usr/include/postgresql "$root/usr/include/postgresql"
    fi
    echo "$root/usr/lib/postgresql/15/bin"
}
