#!/usr/bin/env bash
# Load run of the example server on both backends with wrk: half chats, half session reads.
#
#   bash scripts/load.sh [SECONDS] [CONNECTIONS]     (defaults: 10 s, 16 connections)
#
# Prints requests/s, p99 latency and the error count per backend. Needs wrk (Debian package,
# installed when missing) and the PostgreSQL at INTERVIEW_TEST_POSTGRES_URL's server.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}
conns=${2:-16}
admin=${INTERVIEW_TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/postgres}
bash scripts/ensure-postgres.sh
command -v wrk >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -q wrk >/dev/null
cargo build --release --all-features --example server -q
work=$(mktemp -d)
db="load_$$"
psql -q "$admin" -c "CREATE DATABASE $db"
server=""
cleanup() {
  [ -n "$server" ] && kill "$server" 2>/dev/null && wait "$server" 2>/dev/null || true
  psql -q "$admin" -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

summary=()
for backend in sqlite postgres; do
  addr=127.0.0.1:18080
  INTERVIEW_DB_BACKEND=$backend INTERVIEW_SQLITE_PATH="$work/interview.db" \
    INTERVIEW_POSTGRES_URL="${admin%/*}/$db" INTERVIEW_ADDR=$addr RUST_LOG=warn \
    target/release/examples/server &
  server=$!
  for _ in $(seq 100); do curl -fs "http://$addr/health" >/dev/null && break; sleep 0.1; done
  ids=""
  for _ in $(seq 200); do
    id=$(curl -fs -X POST "http://$addr/interview/start" -H 'content-type: application/json' -d '{}' |
      sed -E 's/.*"session_id":"([^"]+)".*/\1/')
    ids="$ids,$id"
  done
  out=$(SESSIONS="${ids#,}" wrk -t2 -c"$conns" -d"${secs}s" --latency -s scripts/load/mixed.lua "http://$addr")
  echo "== $backend"; echo "$out"
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  p99=$(awk '$1 == "99%" {print $2}' <<<"$out")
  errors=$(awk '/Non-2xx/ {n += $NF} /Socket errors/ {for (i = 4; i <= NF; i += 2) n += $i} END {print n + 0}' <<<"$out")
  summary+=("$(printf '%-9s %10s req/s   p99 %8s   errors %s' "$backend" "$rps" "$p99" "$errors")")
  kill "$server"; wait "$server" 2>/dev/null || true; server=""
done
echo
echo "== wrk -t2 -c$conns -d${secs}s, 50% POST /interview/chat + 50% GET /interview/session/{id}, $(nproc) cores"
printf '%s\n' "${summary[@]}"
