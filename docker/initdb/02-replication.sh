#!/bin/sh
# The compose stack's primary (docker/compose.yml): replication for the
# streaming replica and for refugio's base backups (the physical job), over
# the compose network, with passwords. The postgres image runs this once,
# when its data volume is empty, after 01-trips.sql.
set -eu
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" <<'SQL'
CREATE ROLE replicator LOGIN REPLICATION PASSWORD 'replicator-demo-password';
-- The physical job takes base backups with pg_basebackup.
ALTER ROLE refugio REPLICATION;
SQL
echo "host replication all all scram-sha-256" >> "$PGDATA/pg_hba.conf"
