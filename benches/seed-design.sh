#!/usr/bin/env bash
# Runs `cargo bench --bench seed_design` against the seed design's PostgreSQL and Redis.
#
# Installs both from Debian packages if they are missing, starts throwaway instances on
# 127.0.0.1 with durable settings (Postgres: fsync and synchronous_commit on; Redis: append-only
# file synced on every write), runs the bench with their addresses, and always stops them and
# deletes their data, also when the bench fails or is interrupted.
#
# Usage, from the repository root: benches/seed-design.sh
# Environment: TALLY_SEED_PG_PORT (default 55432), TALLY_SEED_REDIS_PORT (default 56379), and
# the bench's own TALLY_BENCH_* settings (see benches/seed_design.rs).
set -euo pipefail

cd "$(dirname "$0")/.."

PG_PORT="${TALLY_SEED_PG_PORT:-55432}"
REDIS_PORT="${TALLY_SEED_REDIS_PORT:-56379}"
# Connections: the bench's workers, its setup and totals connections, and headroom.
PG_MAX_CONNECTIONS=$(( ${TALLY_BENCH_CONCURRENCY:-64} + 16 ))
PG_DATABASE=tally_seed
PG_USER=tally
START_WAIT_S=30

log() { echo "seed-design: $*" >&2; }

postgres_bin_dir() {
    local dir
    for dir in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
        if [[ -x "$dir/postgres" && -x "$dir/initdb" && -x "$dir/pg_ctl" ]]; then
            echo "$dir"
            return 0
        fi
    done
    return 1
}

# Installs PostgreSQL and Redis from Debian packages if their binaries are missing. Debian's
# packages start a system-wide instance on install; a policy-rc.d keeps them from doing so.
install_missing() {
    local packages=()
    postgres_bin_dir >/dev/null || packages+=(postgresql)
    command -v redis-server >/dev/null || packages+=(redis-server)
    [[ ${#packages[@]} -eq 0 ]] && return 0
    [[ $(id -u) -eq 0 ]] || { log "installing ${packages[*]} needs root"; exit 1; }
    log "installing ${packages[*]}"
    local policy=/usr/sbin/policy-rc.d added_policy="" status=0
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy" && added_policy=1
    fi
    apt_install "${packages[@]}" || status=$?
    if [[ -n $added_policy ]]; then
        rm -f "$policy"
    fi
    return "$status"
}

# `apt-get update` only when the package lists are too old or missing for the install.
apt_install() {
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y --no-install-recommends "$@" && return 0
    log "apt-get install failed; updating the package lists and trying again"
    apt-get update && apt-get install -y --no-install-recommends "$@"
}

# Nothing answers on 127.0.0.1:$1.
port_is_free() {
    ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# Runs a command as the cluster's owner: postgres refuses to run as root.
as_postgres_owner() {
    if [[ $(id -u) -eq 0 ]]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

start_postgres() {
    local bin
    bin=$(postgres_bin_dir) || { log "no PostgreSQL binaries found"; exit 1; }
    mkdir -p "$WORK_DIR/postgres"
    if [[ $(id -u) -eq 0 ]]; then
        chown postgres: "$WORK_DIR/postgres"
    fi
    as_postgres_owner "$bin/initdb" --pgdata="$WORK_DIR/postgres/data" --username="$PG_USER" \
        --auth=trust --encoding=UTF8 --no-locale >"$WORK_DIR/postgres/initdb.log"
    as_postgres_owner "$bin/pg_ctl" --pgdata="$WORK_DIR/postgres/data" \
        --log="$WORK_DIR/postgres/server.log" --wait --timeout="$START_WAIT_S" start \
        -o "-c listen_addresses=127.0.0.1 -c port=$PG_PORT" \
        -o "-c unix_socket_directories='$WORK_DIR/postgres'" \
        -o "-c fsync=on -c synchronous_commit=on -c full_page_writes=on" \
        -o "-c max_connections=$PG_MAX_CONNECTIONS" >/dev/null
    PG_BIN="$bin"
    "$bin/createdb" --host=127.0.0.1 --port="$PG_PORT" --username="$PG_USER" "$PG_DATABASE"
    log "PostgreSQL $("$bin/postgres" --version | awk '{print $3}') on 127.0.0.1:$PG_PORT"
}

stop_postgres() {
    [[ -n ${PG_BIN:-} ]] || return 0
    as_postgres_owner "$PG_BIN/pg_ctl" --pgdata="$WORK_DIR/postgres/data" --mode=fast \
        --wait stop >/dev/null || true
}

start_redis() {
    mkdir -p "$WORK_DIR/redis"
    redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --protected-mode yes \
        --dir "$WORK_DIR/redis" --appendonly yes --appendfsync always --save '' \
        --daemonize yes --pidfile "$WORK_DIR/redis/redis.pid" \
        --logfile "$WORK_DIR/redis/redis.log"
    local waited=0
    until [[ -s $WORK_DIR/redis/redis.pid ]] && ! port_is_free "$REDIS_PORT"; do
        (( waited++ < START_WAIT_S * 10 )) || { log "redis-server did not start"; exit 1; }
        sleep 0.1
    done
    REDIS_PID=$(cat "$WORK_DIR/redis/redis.pid")
    log "Redis $(redis-server --version | awk '{print $3}' | cut -d= -f2) on 127.0.0.1:$REDIS_PORT"
}

stop_redis() {
    [[ -n ${REDIS_PID:-} ]] || return 0
    kill -TERM "$REDIS_PID" 2>/dev/null || return 0
    local waited=0
    while kill -0 "$REDIS_PID" 2>/dev/null && (( waited++ < START_WAIT_S * 10 )); do
        sleep 0.1
    done
}

tear_down() {
    local status=$?
    stop_redis
    stop_postgres
    rm -rf "$WORK_DIR"
    exit "$status"
}

install_missing
for port in "$PG_PORT" "$REDIS_PORT"; do
    port_is_free "$port" || { log "port $port on 127.0.0.1 is taken; set TALLY_SEED_PG_PORT / TALLY_SEED_REDIS_PORT"; exit 1; }
done

# Everything the run writes — Postgres, Redis and tally's data — lives here, on one filesystem.
WORK_DIR=$(mktemp -d "${TMPDIR:-/tmp}/tally-seed-design.XXXXXX")
chmod 755 "$WORK_DIR"
trap tear_down EXIT
trap 'exit 130' INT TERM

start_postgres
start_redis

TALLY_SEED_POSTGRES="host=127.0.0.1 port=$PG_PORT user=$PG_USER dbname=$PG_DATABASE" \
TALLY_SEED_REDIS="redis://127.0.0.1:$REDIS_PORT/" \
TMPDIR="$WORK_DIR" \
    cargo bench --bench seed_design
