#!/usr/bin/env bash
# Start a throwaway PostgreSQL server on 127.0.0.1 and print its URL.
# Usage: eval "$(bash .ci/postgres.sh)"   -> exports REPLAYABLE_TEST_POSTGRES
set -euo pipefail
PORT="${REPLAYABLE_PG_PORT:-54329}"
PGBIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
if [ -z "$PGBIN" ]; then
  echo "echo 'PostgreSQL server binaries not found: apt-get install postgresql' >&2; false"
  exit 0
fi
URL="postgresql://postgres@127.0.0.1:${PORT}/postgres"
if "$PGBIN/pg_isready" -h 127.0.0.1 -p "$PORT" -q 2>/dev/null; then
  echo "export REPLAYABLE_TEST_POSTGRES=$URL"
  exit 0
fi
DATA=$(mktemp -d /tmp/replayable-pg.XXXXXX)
as_pg=()
if [ "$(id -u)" = "0" ]; then
  chown postgres "$DATA"
  as_pg=(runuser -u postgres --)
fi
"${as_pg[@]}" "$PGBIN/initdb" -D "$DATA" -A trust -U postgres >/dev/null
"${as_pg[@]}" "$PGBIN/pg_ctl" -D "$DATA" -l "$DATA/server.log" -w \
  -o "-c listen_addresses=127.0.0.1 -p $PORT -k $DATA -c fsync=off -c max_connections=200" start >/dev/null
echo "export REPLAYABLE_TEST_POSTGRES=$URL"
echo "export REPLAYABLE_TEST_PGDATA=$DATA"
echo "export REPLAYABLE_TEST_PGBIN=$PGBIN"
