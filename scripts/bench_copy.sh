#!/usr/bin/env bash
# Migration throughput, in one run on one file and one PostgreSQL:
#   our copy (+ verify), sqlite3 -csv | psql \copy into the full schema, and pgloader (tuned),
# then our sync after 1% of the rows changed, at two database sizes.
#
#   bash scripts/bench_copy.sh [SESSIONS]        (default 20000: 800,000 messages, ~700 MB)
#
# Needs sqlite3 and /usr/bin/time; pgloader is installed from Debian's packages when missing
# (skipped if that fails). Scratch databases are created and dropped on the server at
# INTERVIEW_BENCH_POSTGRES_URL (default: the tests' admin URL).
set -euo pipefail
cd "$(dirname "$0")/.."
sessions=${1:-20000}
admin=${INTERVIEW_BENCH_POSTGRES_URL:-${INTERVIEW_TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/postgres}}
base=${admin%/*}
bash scripts/ensure-postgres.sh
cargo build --release --all-features --example migrate --example generate -q
bin=target/release/examples
data=target/bench-data
mkdir -p "$data"
file=$data/legacy-$sessions.db
[ -f "$file" ] || "$bin/generate" --sessions "$sessions" --out "$file"
ls -l "$file"

dbs=()
fresh() { # fresh NAME: a new empty database, its URL in $url (no subshell, so cleanup sees it)
  local name="bench_${1}_$$"
  psql -q "$admin" -c "DROP DATABASE IF EXISTS $name WITH (FORCE)" -c "CREATE DATABASE $name" >/dev/null
  dbs+=("$name")
  url="$base/$name"
}
cleanup() { for d in "${dbs[@]}"; do psql -q "$admin" -c "DROP DATABASE IF EXISTS $d WITH (FORCE)" >/dev/null 2>&1 || true; done; }
trap cleanup EXIT

# timed LABEL CMD... : runs CMD under /usr/bin/time -v and prints wall seconds and peak RSS.
results=()
timed() {
  local label=$1; shift
  local log; log=$(mktemp)
  local rc=0
  /usr/bin/time -v "$@" >"$log.out" 2>"$log" || rc=$?
  local wall rss
  wall=$(awk -F': ' '/Elapsed \(wall clock\)/ {n=split($2,a,":"); s=0; for(i=1;i<=n;i++) s=s*60+a[i]; print s}' "$log")
  rss=$(awk -F': ' '/Maximum resident set size/ {printf "%.0f", $2/1024}' "$log")
  [ $rc -eq 0 ] || { echo "$label failed (exit $rc):"; tail -5 "$log"; tail -5 "$log.out"; }
  results+=("$(printf '%-44s %8.2f s %8s MB%s' "$label" "$wall" "$rss" "$([ $rc -eq 0 ] || echo "  FAILED($rc)")")")
  echo "${results[-1]}"
}

fresh ours; ours=$url
timed "interview-store copy (strict)" "$bin/migrate" copy --sqlite "$file" --postgres "$ours"
timed "interview-store verify" "$bin/migrate" verify --sqlite "$file" --postgres "$ours"

fresh csv; csv=$url
"$bin/migrate" setup --postgres "$csv" >/dev/null 2>&1
timed "sqlite3 -csv | psql \\copy (full schema)" bash -c "
  sqlite3 -csv '$file' 'SELECT id, created_at, updated_at, coalesce(summary, \"\") FROM sessions' | psql -q '$csv' -c '\\copy sessions FROM STDIN WITH (FORMAT csv)' &&
  sqlite3 -csv '$file' 'SELECT id, session_id, role, text, created_at FROM messages' | psql -q '$csv' -c '\\copy messages FROM STDIN WITH (FORMAT csv)' &&
  sqlite3 -csv '$file' 'SELECT id, session_id, content, created_at FROM drafts' | psql -q '$csv' -c '\\copy drafts FROM STDIN WITH (FORMAT csv)'"

if ! command -v pgloader >/dev/null; then
  (DEBIAN_FRONTEND=noninteractive apt-get install -y -q pgloader >/dev/null 2>&1) || true
fi
if command -v pgloader >/dev/null; then
  fresh pgloader; pgl=$url
  "$bin/migrate" setup --postgres "$pgl" >/dev/null 2>&1
  load=$(mktemp --suffix .load)
  cat >"$load" <<EOF
LOAD DATABASE
  FROM sqlite://$(realpath "$file")
  INTO $pgl
  WITH data only, disable triggers, batch rows = 5000, prefetch rows = 5000
  EXCLUDING TABLE NAMES LIKE 'sqlite_sequence';
EOF
  timed "pgloader (data only, tuned)" pgloader --quiet "$load"
else
  results+=("pgloader: not installed, skipped")
fi

# Sync after 1% of the sessions changed (new messages, a draft, a summary), at this size.
fresh sync; sync_db=$url
work=$data/sync-$sessions.db
cp "$file" "$work"
"$bin/migrate" copy --sqlite "$work" --postgres "$sync_db" >/dev/null 2>&1
# change N: N sessions get a message, a draft and a new summary.
change() {
  sqlite3 "$work" "
    WITH picked AS (SELECT id FROM sessions ORDER BY rowid LIMIT $1)
    INSERT INTO messages (session_id, role, text, created_at)
      SELECT id, 'user', 'a late answer ' || id, strftime('%Y-%m-%dT%H:%M:%f000Z', 'now') FROM picked;
    WITH picked AS (SELECT id FROM sessions ORDER BY rowid LIMIT $1)
    INSERT INTO drafts (session_id, content, created_at)
      SELECT id, 'a late draft', strftime('%Y-%m-%dT%H:%M:%f000Z', 'now') FROM picked;
    UPDATE sessions SET summary = 'changed ' || random(), updated_at = strftime('%Y-%m-%dT%H:%M:%f000Z', 'now')
      WHERE rowid IN (SELECT rowid FROM sessions ORDER BY rowid LIMIT $1);"
}
change $((sessions / 100))
timed "interview-store sync (1% changed)" "$bin/migrate" sync --sqlite "$work" --postgres "$sync_db"
timed "interview-store verify after sync" "$bin/migrate" verify --sqlite "$work" --postgres "$sync_db"
change 50
timed "interview-store sync (50 sessions changed)" "$bin/migrate" sync --sqlite "$work" --postgres "$sync_db"
rm -f "$work" "$work"-*

echo
echo "== $sessions sessions, $(du -m "$file" | cut -f1) MB, $(nproc) cores, $(psql -tA "$admin" -c 'SHOW server_version')"
printf '%s\n' "${results[@]}"
