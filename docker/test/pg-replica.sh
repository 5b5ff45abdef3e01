#!/bin/sh
# The compose stack's streaming replica in the test run: the compose file's
# own steps (pg_basebackup from the primary, then a hot standby) with Debian's
# PostgreSQL 15, on 127.0.0.1:$PGPORT (host network). The primary is
# $PRIMARY_PORT on 127.0.0.1; it may still be initialising (podman 4.3 does
# not wait for health checks), so pg_basebackup is retried for a while.
set -eu
bin=/usr/lib/postgresql/15/bin
export PGDATA=/var/lib/postgresql/data
as_postgres() { setpriv --reuid=postgres --regid=postgres --init-groups "$@"; }
chown postgres:postgres "$PGDATA"
chmod 0700 "$PGDATA"
if [ ! -s "$PGDATA/PG_VERSION" ]; then
    tries=0
    until as_postgres "$bin/pg_basebackup" -h 127.0.0.1 -p "$PRIMARY_PORT" -U replicator \
        -D "$PGDATA" -R -X stream -C -S replica1; do
        tries=$((tries + 1))
        [ "$tries" -lt 90 ] || exit 1
        rm -rf "${PGDATA:?}"/*
        sleep 1
    done
fi
exec setpriv --reuid=postgres --regid=postgres --init-groups \
    "$bin/postgres" -c listen_addresses=127.0.0.1 -c unix_socket_directories=/tmp \
    -c hot_standby=on -c hot_standby_feedback=on
