#!/bin/bash
# A streaming replica in the official image: on first start, clone the primary with
# pg_basebackup (-R writes standby.signal and primary_conninfo; -C -S makes its slot), then
# run postgres as a hot standby.
set -euo pipefail
: "${PRIMARY_HOST:?}" "${REPLICATION_PASSWORD:?}" "${SLOT_NAME:?}"
export PGDATA=${PGDATA:-/var/lib/postgresql/data}
export PGPASSWORD="$REPLICATION_PASSWORD"
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  until pg_isready -h "$PRIMARY_HOST" -p 5432 -q; do sleep 1; done
  rm -rf "${PGDATA:?}"/*
  pg_basebackup -h "$PRIMARY_HOST" -p 5432 -U replicator -D "$PGDATA" -R -X stream \
    -C -S "$SLOT_NAME" --checkpoint=fast
  chmod 0700 "$PGDATA"
fi
# Two-phase commit: a standby needs max_prepared_transactions at least the primary's.
exec postgres -c hot_standby=on -c max_prepared_transactions=200
