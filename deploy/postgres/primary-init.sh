#!/bin/sh
# Run once by the postgres image when it initialises the primary's data
# directory (/docker-entrypoint-initdb.d): a role the replica streams WAL as,
# and a pg_hba line letting it connect for replication over the compose network.
set -e
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
  -v password="$REPLICATION_PASSWORD" <<'SQL'
CREATE ROLE replicator WITH REPLICATION LOGIN PASSWORD :'password';
SQL
echo "host replication replicator all scram-sha-256" >> "$PGDATA/pg_hba.conf"
