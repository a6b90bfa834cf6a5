#!/usr/bin/env bash
# Scratch PostgreSQL clusters for eventstore: sourced by setup, test, stress and bench.
# A cluster is initdb'd as the postgres OS user under /var/tmp/eventstore/<name> (a place the
# postgres user can reach), listens only on 127.0.0.1 and its own port (never 5432), and has
# the extension installed in the database "eventstore".

# PostgreSQL 16-18 trees unpacked by scripts/install-deps, one per major version.
EVENTSTORE_PG_ROOT=${EVENTSTORE_PG_ROOT:-/opt/eventstore-pg}

# pg_bin_for MAJOR: the bin directory of that PostgreSQL version: Debian's for 15, the tree
# scripts/install-deps unpacked for 16, 17 and 18.
pg_bin_for() {
    case $1 in
        15) echo /usr/lib/postgresql/15/bin ;;
        16|17|18) echo "$EVENTSTORE_PG_ROOT/$1/bin" ;;
        *) echo "unsupported PostgreSQL version '$1' (supported: 15, 16, 17, 18)" >&2; return 1 ;;
    esac
}

PG_BIN=${PG_BIN:-$(pg_bin_for 15)}
SCRATCH_ROOT=${SCRATCH_ROOT:-/var/tmp/eventstore}

# as_postgres CMD...: run a command as the postgres OS user (directly if we already are).
as_postgres() {
    if [ "$(id -un)" = postgres ]; then "$@"; else runuser -u postgres -- "$@"; fi
}

# require_free_port PORT [VARIABLE]: fails, naming the port and the variable that moves it, if
# something already listens on 127.0.0.1:PORT.
require_free_port() {
    local port=$1 variable=${2:-"the EVENTSTORE_*_PORT variable that sets it (see $0)"}
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        echo "$0: port $port on 127.0.0.1 is already in use by another server;" \
            "choose a free one with $variable" >&2
        return 1
    fi
}

# The edition a scratch cluster gets: native (CREATE EXTENSION eventstore, the default) or sql
# (EVENTSTORE_EDITION=sql: the SQL edition's script, EVENTSTORE_SQL_EDITION_SCRIPT, default
# sql/plpgsql/eventstore.sql, run with psql -f; no native library needed).
EVENTSTORE_EDITION=${EVENTSTORE_EDITION:-native}

# install_edition PORT DATABASE: eventstore into an empty database, in the edition chosen above.
install_edition() {
    local port=$1 database=$2
    if [ "$EVENTSTORE_EDITION" = sql ]; then
        as_postgres "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 --single-transaction -h 127.0.0.1 \
            -p "$port" -U postgres -d "$database" -f - \
            < "${EVENTSTORE_SQL_EDITION_SCRIPT:-sql/plpgsql/eventstore.sql}" >/dev/null
    else
        as_postgres "$PG_BIN/psql" -X -q -h 127.0.0.1 -p "$port" -U postgres -d "$database" \
            -c "CREATE EXTENSION eventstore" >/dev/null
    fi
}

# cluster_start NAME PORT [postgresql.conf lines...]: a fresh cluster, started, with the
# database "eventstore" and eventstore installed in it (install_edition). The port must be
# free (a caller may set port_variable to the name of the variable that moves it, for the message).
cluster_start() {
    local name=$1 port=$2; shift 2
    local dir="$SCRATCH_ROOT/$name"
    cluster_stop "$name"
    require_free_port "$port" ${port_variable:+"$port_variable"} || return 1
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
    install_edition "$port" eventstore
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
