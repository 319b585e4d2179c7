#!/usr/bin/env bash
# Makes sure the PostgreSQL the tests use is up: the machine's own cluster if it has
# one, else the repository's compose.yaml. Sourced by scripts/test.sh and .ci/run.
set -euo pipefail

url="${INTERVIEW_TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
hostport="${url#*://}"; hostport="${hostport#*@}"; hostport="${hostport%%/*}"; hostport="${hostport%%\?*}"
host="${hostport%%:*}"; port="${hostport##*:}"; [ "$port" = "$hostport" ] && port=5432

reachable() { (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null; }

if reachable; then
  exit 0
fi
echo "PostgreSQL is not answering on $host:$port; trying to start it" >&2
if command -v pg_ctlcluster >/dev/null 2>&1 && [ -d /etc/postgresql ]; then
  version="$(ls /etc/postgresql | sort -V | tail -n 1)"
  pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
elif command -v docker >/dev/null 2>&1 && docker compose version >/dev/null 2>&1; then
  docker compose -f "$(dirname "${BASH_SOURCE[0]}")/../compose.yaml" up -d
fi
for _ in $(seq 1 30); do
  if reachable; then exit 0; fi
  sleep 1
done
cat >&2 <<MSG
No PostgreSQL reachable at $host:$port. Start one, then run the tests again:
  - a local cluster:  pg_ctlcluster --skip-systemctl-redirect \$(ls /etc/postgresql) main start
  - with Docker:      docker compose up -d    (uses compose.yaml)
  - elsewhere:        export INTERVIEW_TEST_POSTGRES_URL=postgres://USER@HOST:PORT/postgres
MSG
exit 1
