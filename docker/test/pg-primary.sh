#!/bin/sh
# The compose stack's primary in the test run (docker/test/compose.test.yml):
# what the postgres image's entrypoint does, for Debian's PostgreSQL 15 in
# the local base. On an empty data volume: initdb (the superuser's password
# from POSTGRES_PASSWORD), the database POSTGRES_DB, then the scripts of
# /docker-entrypoint-initdb.d against a server on a socket only. Then the
# server, as postgres, on 127.0.0.1:$PGPORT (host network) with the compose
# file's arguments ("postgres -c …").
set -eu
bin=/usr/lib/postgresql/15/bin
export PGDATA=/var/lib/postgresql/data PGHOST=/tmp
as_postgres() { setpriv --reuid=postgres --regid=postgres --init-groups "$@"; }
if [ ! -s "$PGDATA/PG_VERSION" ]; then
    chown postgres:postgres "$PGDATA"
    chmod 0700 "$PGDATA"
    pwfile=$(mktemp)
    printf '%s\n' "$POSTGRES_PASSWORD" >"$pwfile"
    chown postgres "$pwfile"
    as_postgres "$bin/initdb" -D "$PGDATA" -U "$POSTGRES_USER" --pwfile="$pwfile" \
        --auth-local=trust --auth-host=scram-sha-256 >/dev/null
    rm -f "$pwfile"
    echo "host all all 127.0.0.1/32 scram-sha-256" >>"$PGDATA/pg_hba.conf"
    as_postgres "$bin/pg_ctl" -D "$PGDATA" -w -o "-c listen_addresses='' -c unix_socket_directories=/tmp" start
    as_postgres "$bin/psql" -v ON_ERROR_STOP=1 -U "$POSTGRES_USER" -d postgres \
        -c "CREATE DATABASE \"$POSTGRES_DB\""
    for f in /docker-entrypoint-initdb.d/*; do
        case $f in
        *.sql) as_postgres "$bin/psql" -v ON_ERROR_STOP=1 -U "$POSTGRES_USER" -d "$POSTGRES_DB" -f "$f" ;;
        *.sh) PATH=$bin:$PATH . "$f" ;;
        esac
    done
    as_postgres "$bin/pg_ctl" -D "$PGDATA" -w stop
fi
[ "${1:-}" = postgres ] && shift
exec setpriv --reuid=postgres --regid=postgres --init-groups \
    "$bin/postgres" -c listen_addresses=127.0.0.1 -c unix_socket_directories=/tmp "$@"
