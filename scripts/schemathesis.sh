#!/usr/bin/env bash
# Fuzzes the running example server from its own OpenAPI document (GET /openapi.json)
# with schemathesis, on SQLite and on PostgreSQL: every check (no 5xx, every answer
# as documented, invalid data refused, valid data taken, ...), the positive and
# negative modes, all phases, the stateful one following the links from `start`.
#
# schemathesis is pinned and installed from PyPI into a virtualenv in the cache
# directory, once. Bounded: --max-examples per operation and a hard timeout per run.
# Settings: SCHEMATHESIS_MAX_EXAMPLES (default 25), SCHEMATHESIS_TIMEOUT seconds
# per backend (default 150), SCHEMATHESIS_SEED (to replay a failure),
# SCHEMATHESIS_BACKENDS (default "sqlite postgres"), INTERVIEW_TEST_POSTGRES_URL.
set -euo pipefail
cd "$(dirname "$0")/.."
repo="$(pwd)"

version=4.32.5
venv="${XDG_CACHE_HOME:-$HOME/.cache}/interview-store/schemathesis-venv"
max_examples="${SCHEMATHESIS_MAX_EXAMPLES:-25}"
budget="${SCHEMATHESIS_TIMEOUT:-150}"
admin_url="${INTERVIEW_TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
token="schemathesis-admin-token"

if ! "$venv/bin/schemathesis" --version 2>/dev/null | grep -qx "schemathesis, version $version"; then
  if ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
    apt-get update -qq && apt-get install -y -qq python3-venv
  fi
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check "schemathesis==$version"
fi

cargo build --all-features --example server
server_bin="target/debug/examples/server"

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

server_pid=""
scratch=""
pg_db=""
cleanup() {
  if [ -n "$server_pid" ]; then kill "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; fi
  if [ -n "$pg_db" ]; then psql -q "$admin_url" -c "DROP DATABASE IF EXISTS \"$pg_db\" WITH (FORCE)" >/dev/null || true; fi
  if [ -n "$scratch" ]; then rm -rf "$scratch"; fi
  server_pid="" pg_db="" scratch=""
}
trap cleanup EXIT

# st SECONDS ARGS...: schemathesis run against the server at $base, every check, both
# modes, killed after SECONDS.
st() {
  local limit="$1" seed=()
  shift
  [ -n "${SCHEMATHESIS_SEED:-}" ] && seed=(--seed "$SCHEMATHESIS_SEED")
  # From the scratch directory: schemathesis keeps a `.schemathesis/` in its working directory.
  (cd "$scratch" && timeout "$limit" "$venv/bin/schemathesis" --config-file "$repo/scripts/schemathesis.toml" \
    run "$base/openapi.json" \
    --checks all --mode all --max-examples "$max_examples" --request-timeout 20 --workers 1 \
    --generation-database none \
    -H "Authorization: Bearer $token" "${seed[@]}" "$@")
}

fuzz() {
  local backend="$1" started port
  started=$(date +%s)
  scratch="$(mktemp -d)"
  local env=(INTERVIEW_DB_BACKEND="$backend" INTERVIEW_SQLITE_PATH="$scratch/interview.db")
  if [ "$backend" = postgres ]; then
    bash scripts/ensure-postgres.sh
    pg_db="interview_schemathesis_$$"
    psql -q "$admin_url" -c "CREATE DATABASE \"$pg_db\"" >/dev/null
    env+=(INTERVIEW_POSTGRES_URL="${admin_url%/*}/$pg_db")
  fi
  port="$(free_port)"
  base="http://127.0.0.1:$port"
  # No hold of writes through a pause (the admin run pauses), short waits, quiet log.
  env "${env[@]}" INTERVIEW_ADDR="127.0.0.1:$port" INTERVIEW_ADMIN_TOKEN="$token" \
    INTERVIEW_PAUSE_WAIT_MS=0 INTERVIEW_HTTP_TIMEOUT_MS=15000 RUST_LOG=warn \
    "$server_bin" >"$scratch/server.log" 2>&1 &
  server_pid=$!
  for _ in $(seq 1 100); do
    curl -fsS "$base/health" >/dev/null 2>&1 && break
    kill -0 "$server_pid" 2>/dev/null || { cat "$scratch/server.log" >&2; return 1; }
    sleep 0.1
  done
  echo "== schemathesis $version on $backend ($base, --max-examples $max_examples)"
  local rc=0
  # Admin last and apart: it pauses writes, which every later write would meet as 503.
  st "$budget" --exclude-path /admin/maintenance --phases examples,coverage,fuzzing,stateful || rc=$?
  if [ "$rc" = 0 ]; then
    # One operation, no links: no stateful phase.
    st 60 --include-path /admin/maintenance --phases examples,coverage,fuzzing || rc=$?
  fi
  [ "$rc" = 124 ] && echo "schemathesis on $backend: over its ${budget}s budget" >&2
  if [ "$rc" != 0 ]; then
    echo "-- server log ($backend):" >&2
    tail -n 40 "$scratch/server.log" >&2
  fi
  cleanup
  echo "== schemathesis on $backend: $(( $(date +%s) - started ))s, exit $rc"
  return "$rc"
}

status=0
for backend in ${SCHEMATHESIS_BACKENDS:-sqlite postgres}; do
  fuzz "$backend" || status=1
done
exit "$status"
