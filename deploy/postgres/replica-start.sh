#!/bin/sh
# The streaming replica: on first start, copy the primary with pg_basebackup
# (which writes standby.signal and primary_conninfo), then run as a hot standby.
# The read API reads from it (REPORUNNER_READ_DATABASE_URL); nothing writes to it.
set -eu
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  until pg_isready --host=postgres --username=replicator --quiet; do sleep 1; done
  PGPASSWORD="$REPLICATION_PASSWORD" pg_basebackup --host=postgres --username=replicator \
    --pgdata="$PGDATA" --wal-method=stream --write-recovery-conf --checkpoint=fast
  chmod 0700 "$PGDATA"
fi
# A hot standby needs max_connections at least the primary's (compose.yaml sets 300 there).
exec postgres -c hot_standby=on -c max_connections=300
