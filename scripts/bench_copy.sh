#!/usr/bin/env bash
# Migration engine at several sizes, in one run on one PostgreSQL:
#   check, copy, verify, compare --sample 1000, PostgreSQL's own binary COPY of the same rows
#   (the floor), a 1 % change then sync and verify, and pgloader (tuned) on the same file.
#
#   bash scripts/bench_copy.sh [SESSIONS...]      (default: 5000 20000 200000; 200000 is 7.1 GB)
#
# Each size's legacy file is made once by examples/generate.rs (40 messages and 2 drafts per
# session) and kept in $BENCH_DATA (default target/bench-data; a file already there is reused,
# so several checkouts can share one directory). Every step runs under /usr/bin/time -v; its wall
# time, peak RSS and row count go to $BENCH_DATA/results-<run>.csv (and results.csv, the latest
# run), which scripts/plot_bench.py draws; the output of the migrate steps (their logs time each
# stage: SQLite reads, normalising, encoding, COPY, each index and key) goes to
# $BENCH_DATA/logs-<run>/.
#
# Disk: each scratch database is dropped right after its steps, the floor's binary files are
# deleted after loading, and the working copy of the file (the one the 1 % change writes to)
# is deleted after the sync steps: at most the file, its working copy and two PostgreSQL copies
# exist at once.
#
# Environment: BENCH_SKIP (words among check compare floor sync pgloader csv; csv is skipped
# unless BENCH_CSV=1), BENCH_STEP_TIMEOUT (seconds per step, default 1800), BENCH_PGLOADER_MAX
# (largest size pgloader runs at, default 200000: at 20,000 sessions it peaked at 900 MB),
# INTERVIEW_BENCH_POSTGRES_URL (admin URL; default the tests' one), BENCH_PERF (step names, e.g.
# "verify sync_1pct": those steps run under `perf record -a -F 499`, the whole machine, so
# PostgreSQL's backends show beside the tool; `perf report` by process, library and symbol goes to
# the logs as <size>-<step>.perf.txt. A profiled run's times carry perf's overhead: take the
# figures from a run without it).
set -euo pipefail
cd "$(dirname "$0")/.."
sizes=("$@")
[ ${#sizes[@]} -gt 0 ] || sizes=(5000 20000 200000)
admin=${INTERVIEW_BENCH_POSTGRES_URL:-${INTERVIEW_TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/postgres}}
base=${admin%/*}
skip=" ${BENCH_SKIP:-} $([ "${BENCH_CSV:-0}" = 1 ] || echo csv) "
step_timeout=${BENCH_STEP_TIMEOUT:-1800}
skipped() { [[ $skip == *" $1 "* ]]; }

bash scripts/ensure-postgres.sh
# Stage times in the logs: verify's per table, the rebuild's per index and key.
export RUST_LOG=${RUST_LOG:-info,interview_store::migrate::verify=debug,interview_store::migrate::rebuild=debug}
cargo build --release --all-features --example migrate --example generate -q
bin=${CARGO_TARGET_DIR:-target}/release/examples
data=${BENCH_DATA:-target/bench-data}
mkdir -p "$data"
run=$(date -u +%Y%m%dT%H%M%SZ)
out=$data/results-$run.csv
logs=$data/logs-$run
mkdir -p "$logs"
echo "run,sessions,messages,drafts,file_mb,step,wall_s,rss_mb,rows,ok,load1" >"$out"
if ! command -v pgloader >/dev/null && ! skipped pgloader; then
  (DEBIAN_FRONTEND=noninteractive apt-get install -y -q pgloader >/dev/null 2>&1) || true
fi

dbs=()
fresh() { # fresh NAME: a new empty database, its URL in $url (no subshell, so cleanup sees it)
  local name="bench_${1}_$$"
  psql -q "$admin" -c "DROP DATABASE IF EXISTS $name WITH (FORCE)" -c "CREATE DATABASE $name" >/dev/null
  dbs+=("$name")
  url="$base/$name"
}
drop() { psql -q "$admin" -c "DROP DATABASE IF EXISTS bench_${1}_$$ WITH (FORCE)" >/dev/null; }
scratch=()
cleanup() {
  for d in "${dbs[@]}"; do psql -q "$admin" -c "DROP DATABASE IF EXISTS $d WITH (FORCE)" >/dev/null 2>&1 || true; done
  for f in "${scratch[@]}"; do rm -f "$f" "$f"-wal "$f"-shm; done
}
trap cleanup EXIT

# timed STEP ROWS CMD... : runs CMD under /usr/bin/time -v, prints and records wall seconds and peak RSS.
results=()
timed() {
  local step=$1 rows=$2; shift 2
  local log; log=$(mktemp)
  local rc=0 load1
  load1=$(cut -d' ' -f1 /proc/loadavg)
  local perf=()
  if [[ " ${BENCH_PERF:-} " == *" $step "* ]]; then
    perf=(perf record -q -a -F 499 -o "$logs/$sessions-$step.perf" --)
  fi
  timeout "$step_timeout" /usr/bin/time -v "${perf[@]}" "$@" >"$log.out" 2>"$log" || rc=$?
  if [ ${#perf[@]} -gt 0 ]; then
    perf report -q -i "$logs/$sessions-$step.perf" --sort comm,dso,sym --stdio --percent-limit 0.3 \
      >"$logs/$sessions-$step.perf.txt" 2>/dev/null || true
    rm -f "$logs/$sessions-$step.perf"
  fi
  local wall rss
  wall=$(awk -F': ' '/Elapsed \(wall clock\)/ {n=split($2,a,":"); s=0; for(i=1;i<=n;i++) s=s*60+a[i]; print s}' "$log")
  rss=$(awk -F': ' '/Maximum resident set size/ {printf "%.0f", $2/1024}' "$log")
  : "${wall:=$step_timeout}" "${rss:=0}"
  [ $rc -eq 0 ] || { echo "$step failed (exit $rc):"; tail -5 "$log"; tail -5 "$log.out"; }
  cat "$log.out" "$log" >"$logs/$sessions-$step.log"
  echo "$run,$sessions,$messages,$drafts,$file_mb,$step,$wall,$rss,$rows,$([ $rc -eq 0 ] && echo 1 || echo 0),$load1" >>"$out"
  results+=("$(printf '%-7s %-28s %9.2f s %7s MB %10s rows %8.2f us/row  load %s%s' "$sessions" "$step" "$wall" "$rss" "$rows" \
    "$(awk -v w="$wall" -v r="$rows" 'BEGIN {print (r > 0 ? w * 1e6 / r : 0)}')" "$load1" "$([ $rc -eq 0 ] || echo "  FAILED($rc)")")")
  echo "${results[-1]}"
  rm -f "$log" "$log.out"
}

count() { sqlite3 "$1" "SELECT count(*) FROM $2"; }

for sessions in "${sizes[@]}"; do
  file=$data/legacy-$sessions.db
  if [ ! -f "$file" ]; then
    # Made under another name and renamed when whole: an interrupted run leaves no file to reuse.
    rm -f "$file.partial" "$file.partial-wal" "$file.partial-shm"
    nice -n 19 "$bin/generate" --sessions "$sessions" --out "$file.partial"
    mv "$file.partial" "$file"
  fi
  messages=$(count "$file" messages)
  drafts=$(count "$file" drafts)
  file_mb=$(du -mL "$file" | cut -f1)
  total=$((sessions + messages + drafts))
  echo "== $sessions sessions, $messages messages, $drafts drafts, $file_mb MB"

  # The working copy: copy, verify and compare read it, the 1 % change then writes to it.
  work=$data/work-$sessions.db
  scratch+=("$work")
  cp "$file" "$work"
  # The original's pages are of no use until pgloader: out of the page cache with them, so that
  # the working copy and PostgreSQL have the memory (at 200,000 sessions they need about 20 GB).
  dd if="$file" iflag=nocache count=0 status=none 2>/dev/null || true
  skipped check || timed check "$total" "$bin/migrate" check --sqlite "$work"
  fresh ours; ours=$url
  # setup --sqlite: the change log goes into the file before the copy's snapshot, and the
  # indexes on messages and drafts by session that compare reads through.
  timed setup_sqlite "$((messages + drafts))" "$bin/migrate" setup --postgres "$ours" --sqlite "$work"
  timed copy "$total" "$bin/migrate" copy --sqlite "$work" --postgres "$ours"
  timed verify "$total" "$bin/migrate" verify --sqlite "$work" --postgres "$ours"
  skipped compare || timed compare_sample_1000 1000 "$bin/migrate" compare --sqlite "$work" --postgres "$ours" --sample 1000

  if ! skipped floor; then
    # The floor: PostgreSQL's own binary COPY of the same rows from files into the same
    # tables without indexes or constraints (lz4 on the long text, as the copy sets it).
    fresh floor; floor=$url
    psql -q "$floor" >/dev/null <<'EOF'
CREATE TABLE sessions (id uuid, created_at timestamptz, updated_at timestamptz, summary text COMPRESSION lz4);
CREATE TABLE messages (id bigint, session_id uuid, role text, text text COMPRESSION lz4, created_at timestamptz);
CREATE TABLE drafts (id bigint, session_id uuid, content text COMPRESSION lz4, created_at timestamptz);
EOF
    cols_sessions="id, created_at, updated_at, summary"
    cols_messages="id, session_id, role, text, created_at"
    cols_drafts="id, session_id, content, created_at"
    for t in sessions messages drafts; do
      cols=cols_$t
      scratch+=("$data/floor-$t.bin")
      psql -q "$ours" -c "\\copy $t (${!cols}) TO '$data/floor-$t.bin' (FORMAT binary)"
    done
    timed floor_binary_copy "$total" bash -c "
      psql -q '$floor' -c \"SET synchronous_commit = off\" -c \"\\copy sessions ($cols_sessions) FROM '$data/floor-sessions.bin' (FORMAT binary)\" &&
      psql -q '$floor' -c \"SET synchronous_commit = off\" -c \"\\copy messages ($cols_messages) FROM '$data/floor-messages.bin' (FORMAT binary)\" &&
      psql -q '$floor' -c \"SET synchronous_commit = off\" -c \"\\copy drafts ($cols_drafts) FROM '$data/floor-drafts.bin' (FORMAT binary)\""
    rm -f "$data"/floor-*.bin
    drop floor
  fi

  if ! skipped sync; then
    # change N: N sessions get a message, a draft and a new summary (3 N rows).
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
    timed sync_1pct $((3 * sessions / 100)) "$bin/migrate" sync --sqlite "$work" --postgres "$ours"
    timed verify_after_sync "$((total + 2 * sessions / 100))" "$bin/migrate" verify --sqlite "$work" --postgres "$ours"
    change 50
    timed sync_50_sessions 150 "$bin/migrate" sync --sqlite "$work" --postgres "$ours"
  fi
  drop ours
  rm -f "$work" "$work"-wal "$work"-shm

  if ! skipped pgloader && [ "$sessions" -gt "${BENCH_PGLOADER_MAX:-200000}" ]; then
    results+=("$sessions pgloader: skipped above BENCH_PGLOADER_MAX=${BENCH_PGLOADER_MAX:-200000} sessions")
  elif ! skipped pgloader && command -v pgloader >/dev/null; then
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
    timed pgloader "$total" pgloader --quiet "$load"
    rm -f "$load"
    drop pgloader
  elif ! skipped pgloader; then
    results+=("$sessions pgloader: not installed, skipped")
  fi

  if ! skipped csv; then
    fresh csv; csv=$url
    "$bin/migrate" setup --postgres "$csv" >/dev/null 2>&1
    timed sqlite3_csv_psql_copy "$total" bash -c "
      sqlite3 -csv '$file' 'SELECT id, created_at, updated_at, coalesce(summary, \"\") FROM sessions' | psql -q '$csv' -c '\\copy sessions FROM STDIN WITH (FORMAT csv)' &&
      sqlite3 -csv '$file' 'SELECT id, session_id, role, text, created_at FROM messages' | psql -q '$csv' -c '\\copy messages FROM STDIN WITH (FORMAT csv)' &&
      sqlite3 -csv '$file' 'SELECT id, session_id, content, created_at FROM drafts' | psql -q '$csv' -c '\\copy drafts FROM STDIN WITH (FORMAT csv)'"
    drop csv
  fi
done
cp "$out" "$data/results.csv"

echo
echo "== $(nproc) cores, $(psql -tA "$admin" -c 'SHOW server_version'), results in $out"
printf '%s\n' "${results[@]}"
echo
# The ratios the targets name, per size, and per-row cost against the 20,000-session run.
awk -F, 'NR > 1 && $10 == 1 { w[$2","$6] = $7; r[$2","$6] = $9; s[$2] = 1 }
  END {
    for (n in s) {
      c = w[n",copy"]
      printf "%7d sessions:", n
      if (w[n",pgloader"]) printf " copy/pgloader %.2f", c / w[n",pgloader"]
      if (w[n",floor_binary_copy"]) printf "  copy/floor %.2f", c / w[n",floor_binary_copy"]
      if (w[n",verify"]) printf "  verify/copy %.2f", w[n",verify"] / c
      if (w[n",sync_1pct"]) printf "  sync(1%%)/copy %.4f", w[n",sync_1pct"] / c
      if (n != 20000 && w["20000,copy"]) {
        split("copy verify sync_1pct", k, " ")
        for (i = 1; i <= 3; i++) if (w[n","k[i]] && w["20000,"k[i]])
          printf "  %s per row vs 20000: %.2f", k[i], (w[n","k[i]] / r[n","k[i]]) / (w["20000,"k[i]] / r["20000,"k[i]])
      }
      printf "\n"
    }
  }' "$out" | sort -n
