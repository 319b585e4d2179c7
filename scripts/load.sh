#!/usr/bin/env bash
# Load run of the example server with wrk, half chats and half session reads, on each backend
# with one server process and then with two on the same database (one SQLite file, one
# PostgreSQL database), as several processes behind a load balancer run it.
#
#   bash scripts/load.sh [SECONDS] [CONNECTIONS] [BACKENDS] [PROCESS COUNTS]
#   defaults: 10 s, 16 connections, "sqlite postgres", "1 2"
#   e.g.      bash scripts/load.sh 5 16 sqlite 2
#
# wrk runs 2 threads per process; with several processes its threads connect to them in turn
# (scripts/load/mixed.lua), so one report covers all of them. Prints requests/s, p99 latency
# and the error count (non-2xx answers and socket errors) per backend and process count, and
# the servers' own error log lines. Needs wrk (Debian package, installed when missing) and the
# PostgreSQL at INTERVIEW_TEST_POSTGRES_URL's server. INTERVIEW_LOAD_POSTGRES_URL (a server
# URL without the database name, e.g. a pooler's, with INTERVIEW_PG_STATEMENT_CACHE=off) replaces the direct one.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}
conns=${2:-16}
backends=${3:-sqlite postgres}
counts=${4:-1 2}
admin=${INTERVIEW_TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/postgres}
bash scripts/ensure-postgres.sh
if ! command -v wrk >/dev/null; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q wrk >/dev/null 2>&1 ||
    { DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q wrk >/dev/null; }
fi
target=${CARGO_TARGET_DIR:-target}
cargo build --release --all-features --example server -q
server_bin="$target/release/examples/server"
work=$(mktemp -d)
servers=()
dbs=()
stop_servers() {
  for pid in "${servers[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${servers[@]}"; do wait "$pid" 2>/dev/null || true; done
  servers=()
}
cleanup() {
  stop_servers
  for db in "${dbs[@]}"; do
    psql -q "$admin" -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 || true
  done
  rm -rf "$work"
}
trap cleanup EXIT

summary=()
run=0
for backend in $backends; do
  for procs in $counts; do
    run=$((run + 1))
    # A fresh database per run, so every run starts from the same 200 sessions.
    db="load_$$_$run"
    pg_url="${INTERVIEW_LOAD_POSTGRES_URL:-${admin%/*}}/$db"
    if [ "$backend" = postgres ]; then
      psql -q "$admin" -c "CREATE DATABASE $db"
      dbs+=("$db")
    fi
    targets=()
    for i in $(seq "$procs"); do
      addr="127.0.0.1:$((18079 + i))"
      INTERVIEW_DB_BACKEND=$backend INTERVIEW_SQLITE_PATH="$work/interview-$run.db" \
        INTERVIEW_POSTGRES_URL="$pg_url" INTERVIEW_ADDR=$addr RUST_LOG=warn \
        "$server_bin" 2>>"$work/server-$run.log" &
      servers+=($!)
      targets+=("$addr")
      # One at a time: the first creates the schema (and the SQLite file) before the next opens it.
      for _ in $(seq 100); do curl -fs "http://$addr/health" >/dev/null && break; sleep 0.1; done
    done
    ids=""
    for _ in $(seq 200); do
      id=$(curl -fs -X POST "http://${targets[0]}/interview/start" -H 'content-type: application/json' -d '{}' |
        sed -E 's/.*"session_id":"([^"]+)".*/\1/')
      ids="$ids,$id"
    done
    list=$(IFS=,; echo "${targets[*]}")
    out=$(SESSIONS="${ids#,}" TARGETS="$list" wrk -t$((2 * procs)) -c"$conns" -d"${secs}s" --latency \
      -s scripts/load/mixed.lua "http://${targets[0]}")
    echo "== $backend, $procs process(es)"; echo "$out"
    # Each process's own count, from its metrics: every process took its share.
    served=""
    for t in "${targets[@]}"; do
      n=$(curl -fs "http://$t/metrics" | awk '/^interview_http_requests_total/ {n += $NF} END {print n + 0}')
      served="$served $n"
    done
    stop_servers
    rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
    p99=$(awk '$1 == "99%" {print $2}' <<<"$out")
    errors=$(awk '/Non-2xx/ {n += $NF} /Socket errors/ {for (i = 4; i <= NF; i += 2) n += $i} END {print n + 0}' <<<"$out")
    locked=$(grep -c "database is locked" "$work/server-$run.log" || true)
    logged=$(grep -c -E "ERROR|WARN" "$work/server-$run.log" || true)
    if [ "$logged" != 0 ]; then
      echo "-- server log lines with ERROR/WARN: $logged (first 5)"; grep -E "ERROR|WARN" "$work/server-$run.log" | head -n 5
    fi
    summary+=("$(printf '%-9s %d process(es) %10s req/s   p99 %8s   errors %s   (\"database is locked\" in server logs: %s; requests per process:%s)' \
      "$backend" "$procs" "$rps" "$p99" "$errors" "$locked" "$served")")
  done
done
echo
echo "== wrk -c$conns -d${secs}s, 50% POST /interview/chat + 50% GET /interview/session/{id}, $(nproc) cores"
printf '%s\n' "${summary[@]}"
