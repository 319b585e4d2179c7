#!/usr/bin/env bash
# The zero-downtime cutover's proof under load (issue 10): two example server processes on a copy
# of a legacy SQLite file, wrk sending chats and session reads to both, `migrate follow` running,
# then `migrate switch` in the middle of a load window, some load on PostgreSQL with
# `migrate follow --reverse`, and the rollback `migrate switch --to sqlite` the same way.
#
#   bash scripts/zero_downtime.sh [FILE | SESSIONS]          (default: 2000 sessions)
#
# SESSIONS names $ZDT_DATA/legacy-SESSIONS.db (ZDT_DATA defaults to $BENCH_DATA, then
# target/bench-data, where scripts/bench_copy.sh keeps its files), made by examples/generate.rs
# when missing. The file is never modified: the run works on a scratch copy, deleted at exit
# (ZDT_KEEP=1 keeps it), with a scratch PostgreSQL database dropped at exit.
#
# Steps:
#   1. copy the file; start the two servers on it (INTERVIEW_POSTGRES_URL set, so they follow a
#      switch by themselves); `migrate setup` and `copy`; `migrate follow --json` in the background.
#   2. w0: load on SQLite while `migrate verify --live --record` runs (it records the position it found
#      equal), then until the follower lags under
#      ZDT_CATCH_UP_MS (1000) again: the runbook's "verify, let the lag drop, switch".
#   3. w1: load for ZDT_WINDOW/2 seconds, `migrate switch`, load for ZDT_WINDOW/2 seconds more after
#      it returned (a slow switch stays inside its window).
#   4. w2: load on PostgreSQL (at least ZDT_PG_SECS) with `migrate follow --reverse` started and
#      `migrate verify --live --record` run under it, as w0.
#   5. w3: as w1, with `migrate switch --to sqlite`.
#   6. the writes: every chat carries a unique token (scripts/load/zero_downtime.lua); each token
#      whose chat was answered 2xx must be stored exactly once in the final live database (SQLite
#      after the rollback), and nothing stored that was never sent; PostgreSQL is checked too
#      (every acknowledged write before the rollback window, nothing twice, nothing unsent).
#
# Per switch it reports non-2xx answers and socket errors, the window's longest request (wrk's max
# latency over the whole window: the switch is inside it), p99, requests/s, writes held (from the
# switch's own output) and its wall time, and appends one CSV line per switch to
# $ZDT_OUT_ROOT/results.csv. Exit status 1 when a target is missed: any non-2xx answer or socket
# error, an acknowledged write lost or stored twice, a write stored that was never sent, a switch
# or verify that failed, a server that did not follow; and, unless ZDT_TIMING=report, a window's
# longest request at or over 1000 ms or writes held 250 ms or more (the issue's targets, meant for
# a quiet machine).
#
# Environment (all optional):
#   ZDT_WINDOW (20)         seconds of load around each switch, half before it, half after it
#   ZDT_MAX_WINDOW (1800)   wrk's own bound on any window, in seconds
#   ZDT_PG_SECS (10)        minimum seconds of load on PostgreSQL before the rollback
#   ZDT_CONNECTIONS (16)    wrk connections, over 2 threads per server process
#   ZDT_ROLLBACK (1)        0: stop after the switch to PostgreSQL (the final live side is PostgreSQL)
#   ZDT_TIMING (enforce)    report: latency and held-ms targets are printed, not failed
#   ZDT_WRK_TIMEOUT (10)    wrk's per-request timeout in seconds (past it, a socket timeout error)
#   ZDT_PORT (18280)        first server's port; the second uses the next one
#   ZDT_DATA, ZDT_OUT_ROOT (target/zero-downtime: run logs and results.csv), ZDT_KEEP, ZDT_NO_BUILD
#   INTERVIEW_TEST_POSTGRES_URL (the admin URL), INTERVIEW_PAUSE_WAIT_MS (passed to the servers)
# Needs wrk (Debian package; installed when missing), sqlite3 and psql.
set -euo pipefail
cd "$(dirname "$0")/.."

arg=${1:-2000}
window=${ZDT_WINDOW:-20}
pg_secs=${ZDT_PG_SECS:-10}
conns=${ZDT_CONNECTIONS:-16}
rollback=${ZDT_ROLLBACK:-1}
timing=${ZDT_TIMING:-enforce}
wrk_timeout=${ZDT_WRK_TIMEOUT:-10}
port=${ZDT_PORT:-18280}
admin=${INTERVIEW_TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/postgres}
data=${ZDT_DATA:-${BENCH_DATA:-target/bench-data}}
target=${CARGO_TARGET_DIR:-target}
root=${ZDT_OUT_ROOT:-$target/zero-downtime}
run_id=$(date -u +%Y%m%dT%H%M%SZ)
out=$root/$run_id
nonce=$$ # tokens are zdt-$nonce-wN-tT-cC: unique to this run
max_latency_target_ms=1000
held_target_ms=250

die() { echo "zero_downtime: $*" >&2; exit 2; }
for tool in sqlite3 psql curl; do command -v $tool >/dev/null || die "$tool is not installed"; done
{ [[ $window =~ ^[0-9]+$ ]] && [ "$window" -ge 4 ]; } || die "ZDT_WINDOW must be a whole number of seconds, at least 4"
{ [[ $pg_secs =~ ^[0-9]+$ ]] && [[ $conns =~ ^[0-9]+$ ]] && [ "$conns" -ge 4 ]; } ||
  die "ZDT_PG_SECS must be a whole number of seconds, ZDT_CONNECTIONS at least 4 (one per wrk thread)"
bash scripts/ensure-postgres.sh
if ! command -v wrk >/dev/null; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q wrk >/dev/null 2>&1 ||
    { DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q wrk >/dev/null; }
fi
[ -n "${ZDT_NO_BUILD:-}" ] || cargo build --release --all-features --example server --example migrate --example generate -q
bin=$target/release/examples
mkdir -p "$out/tokens"
out=$(cd "$out" && pwd)

if [[ $arg =~ ^[0-9]+$ ]]; then
  file=$data/legacy-$arg.db
  if [ ! -f "$file" ]; then
    mkdir -p "$data"
    echo "== generating $file ($arg sessions)"
    rm -f "$file.partial" "$file.partial-wal" "$file.partial-shm" # an interrupted earlier try
    nice -n 19 "$bin/generate" --sessions "$arg" --out "$file.partial"
    mv "$file.partial" "$file"
  fi
else
  file=$arg
  [ -f "$file" ] || die "no such file: $file"
fi
# A copy of the file alone would miss what a WAL beside it still holds.
[ ! -s "$file-wal" ] || die "$file has a non-empty $file-wal: checkpoint it (or stop its writer) first"

# --- background processes, cleanup -----------------------------------------------------------
pids=()
forget() { local p keep=(); for p in "${pids[@]}"; do [ "$p" = "$1" ] || keep+=("$p"); done; pids=("${keep[@]}"); }
# reap PID: its exit status, without tripping set -e.
reap() { local rc=0; wait "$1" || rc=$?; forget "$1"; return $rc; }
stop() { # stop PID...: TERM, 15 s to exit, then KILL
  local p
  for p in "$@"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "$@"; do
    for _ in $(seq 150); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
    forget "$p"
  done
}
db="zdt_$$"
pg_url="${admin%/*}/$db"
work=$out/interview.db
cleanup() {
  local rc=$?
  [ ${#pids[@]} -eq 0 ] || stop "${pids[@]}"
  psql -q "$admin" -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 || true
  [ -n "${ZDT_KEEP:-}" ] || rm -f "$work" "$work-wal" "$work-shm"
  echo "logs: $out"
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

now_ms() { echo $(($(date +%s%N) / 1000000)); }
load1() { cut -d' ' -f1 /proc/loadavg; }
failures=()
timing_reported=0
miss() { failures+=("$*"); echo "!! $*"; }

# --- 1. the service on SQLite, the copy, the follower ----------------------------------------
echo "== $file -> scratch copy $work (every log goes to $out)"
cp "$file" "$work"
sessions=$(sqlite3 "$work" "SELECT count(*) FROM sessions")
file_mb=$(du -m "$file" | cut -f1)
ids=$(sqlite3 "$work" "SELECT id FROM sessions ORDER BY random() LIMIT 200" | paste -sd,)
[ -n "$ids" ] || die "$file has no sessions"

targets=("127.0.0.1:$port" "127.0.0.1:$((port + 1))")
for t in "${targets[@]}"; do
  ! curl -s -o /dev/null "http://$t/" || die "$t is already in use (set ZDT_PORT)"
done
start_server() { # start_server I: on SQLite, following a switch to PostgreSQL and back by itself
  INTERVIEW_DB_BACKEND=sqlite INTERVIEW_SQLITE_PATH="$work" INTERVIEW_POSTGRES_URL="$pg_url" \
    INTERVIEW_ADDR="${targets[$1]}" RUST_LOG=${ZDT_SERVER_LOG:-info} \
    "$bin/server" >>"$out/server-$1.log" 2>&1 &
  pids+=($!)
  local pid=$!
  # One at a time: the first migrates the legacy file (its indexes: minutes on a big one).
  for _ in $(seq 18000); do
    curl -fs "http://${targets[$1]}/health" >/dev/null && return 0
    kill -0 "$pid" 2>/dev/null || { tail -5 "$out/server-$1.log"; die "server $1 exited"; }
    sleep 0.1
  done
  die "server $1 did not answer /health"
}
t0=$(now_ms)
start_server 0
start_server 1
echo "servers up on ${targets[*]} in $(($(now_ms) - t0)) ms (logs $out/server-{0,1}.log)"

psql -q "$admin" -c "CREATE DATABASE $db" >/dev/null
t0=$(now_ms)
"$bin/migrate" setup --postgres "$pg_url" --sqlite "$work" >"$out/setup.log" 2>&1 || { cat "$out/setup.log"; die "setup failed"; }
"$bin/migrate" copy --sqlite "$work" --postgres "$pg_url" >"$out/copy.log" 2>&1 || { tail "$out/copy.log"; die "copy failed"; }
echo "setup and copy: $(($(now_ms) - t0)) ms"

follower() { # follower NAME [--reverse]: migrate follow in the background, its pid in $follow_pid
  local name=$1; shift
  "$bin/migrate" follow --sqlite "$work" --postgres "$pg_url" --json --report-secs 1 "$@" \
    >"$out/$name.jsonl" 2>"$out/$name.log" &
  follow_pid=$!
  pids+=($!)
}
# follower_ended NAME PID: the follower ends by itself (exit 0, "switched") once the switch is done.
follower_ended() {
  local name=$1 pid=$2 rc=0
  for _ in $(seq 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$pid" 2>/dev/null; then
    miss "$name still running 30 s after the switch"
    stop "$pid"
    return
  fi
  reap "$pid" || rc=$?
  if [ $rc -ne 0 ] || ! grep -q '"ended":"switched"' "$out/$name.jsonl"; then
    miss "$name ended with exit $rc, not by the switch (see $out/$name.log)"
  fi
}
follower follow
sleep 1
kill -0 "$follow_pid" 2>/dev/null || { cat "$out/follow.log"; die "migrate follow exited at once"; }

# --- load windows ------------------------------------------------------------------------------
session_list=$ids
target_list=$(IFS=,; echo "${targets[*]}")
wrk_start() { # wrk_start WINDOW SECONDS: wrk in the background, its pid in $wrk_pid
  RUN="zdt-$nonce-$1" OUT="$out/tokens" SESSIONS="$session_list" TARGETS="$target_list" \
    wrk -t$((2 * ${#targets[@]})) -c"$conns" -d"$2s" --timeout "${wrk_timeout}s" --latency \
    -s scripts/load/zero_downtime.lua "http://${targets[0]}" >"$out/wrk-$1.log" 2>&1 &
  wrk_pid=$!
  pids+=($!)
}
wrk_end() { # wrk_end WINDOW: waits for wrk; its figures (from the Lua done()) into fig[WINDOW.key]
  local rc=0 k v
  reap "$wrk_pid" || rc=$?
  local f="$out/tokens/wrk-zdt-$nonce-$1.txt"
  if [ $rc -ne 0 ] || [ ! -s "$f" ]; then
    cat "$out/wrk-$1.log"
    die "wrk failed in window $1 (exit $rc)"
  fi
  while read -r k v; do fig[$1.$k]=$v; done <"$f"
  # Every non-2xx answer, 3xx included (wrk's own count starts at 400).
  fig[$1.non2xx]=$(cat "$out"/tokens/errors-zdt-"$nonce"-"$1"-t*.txt | wc -l)
}
declare -A fig
health_backend() { curl -fs --max-time 2 "http://$1/health" | sed -nE 's/.*"backend":"([a-z]+)".*/\1/p'; }
# servers_follow WINDOW BACKEND: every server's /health names BACKEND within 10 s of the switch.
servers_follow() {
  local t0 t b
  t0=$(now_ms)
  for t in "${targets[@]}"; do
    for _ in $(seq 100); do
      b=$(health_backend "$t" || true)
      [ "$b" = "$2" ] && break
      sleep 0.1
    done
    [ "$b" = "$2" ] || miss "$1: server $t still on ${b:-?} 10 s after the switch to $2"
  done
  fig[$1.follow_ms]=$(($(now_ms) - t0))
}
wrk_stop() { # wrk_stop WINDOW: ends the window's wrk now
  # wrk stops on SIGINT and still prints its report and runs done(); a signal that reaches a
  # worker thread while its main thread sleeps may need a second one.
  for _ in $(seq 20); do
    kill -INT "$wrk_pid" 2>/dev/null || break
    for _ in $(seq 10); do kill -0 "$wrk_pid" 2>/dev/null || break 2; sleep 0.1; done
  done
  wrk_end "$1"
}
nap() { sleep "$1" & wait $!; } # a sleep that a signal to the script cuts short
# verify_window WINDOW MIN_SECS FOLLOWER: load while `migrate verify --live --record` runs, then until the
# follower (whose JSON lines are in $out/FOLLOWER.jsonl) reports a lag under catch_up_ms again,
# at least MIN_SECS in all: the operator's "re-run
# verify, wait for the lag to drop, switch".
catch_up_ms=${ZDT_CATCH_UP_MS:-1000}
# wrk ends by itself after this long even if nothing stops it (a window normally ends by SIGINT).
max_window=${ZDT_MAX_WINDOW:-1800}
verify_window() {
  local t0 t1 rc=0 lag=""
  t0=$(now_ms)
  wrk_start "$1" "$max_window"
  nap 2
  "$bin/migrate" verify --live --record --sqlite "$work" --postgres "$pg_url" >"$out/verify-$1.log" 2>&1 || rc=$?
  t1=$(now_ms)
  fig[$1.verify_ms]=$((t1 - t0 - 2000))
  fig[$1.verify]=$(grep -E '^(EQUAL|DIFFERENT)' "$out/verify-$1.log" | tail -1 | cut -d' ' -f1-4)
  [ $rc -eq 0 ] || miss "$1: migrate verify --live exit $rc (see $out/verify-$1.log)"
  while :; do
    # A report written after the verify ended: the follower reports every second.
    [ $(($(now_ms) - t1)) -lt 1500 ] || lag=$(tail -n 1 "$out/$3.jsonl" | sed -nE 's/.*"lag_ms":([0-9]+).*/\1/p')
    if [ -n "$lag" ] && [ "$lag" -lt "$catch_up_ms" ] && [ $(($(now_ms) - t0)) -ge $(($2 * 1000)) ]; then break; fi
    if [ $(($(now_ms) - t1)) -gt 600000 ]; then
      miss "$1: migrate $3 still lagging ${lag:-?} ms 10 minutes after the verify (see $out/$3.jsonl)"
      break
    fi
    sleep 0.2
  done
  fig[$1.catch_up_ms]=$(($(now_ms) - t1))
  wrk_stop "$1"
}
# switch_window WINDOW ARGS...: load for ZDT_WINDOW/2 seconds, `migrate switch ARGS`, load for
# ZDT_WINDOW/2 seconds more after the switch returned: however long the switch takes, it is inside
# the window whose longest request is reported.
switch_window() {
  local name=$1 rc=0 t0 t1 start half; shift
  half=$(awk -v w="$window" 'BEGIN {print w / 2}')
  start=$(now_ms)
  wrk_start "$name" "$max_window"
  nap "$half"
  fig[$name.load1]=$(load1)
  t0=$(now_ms)
  "$bin/migrate" switch --sqlite "$work" --postgres "$pg_url" "$@" >"$out/switch-$name.log" 2>&1 || rc=$?
  t1=$(now_ms)
  fig[$name.switch_ms]=$((t1 - t0))
  fig[$name.at_s]=$(awk -v a="$t0" -v s="$start" 'BEGIN {printf "%.1f", (a - s) / 1000}')
  fig[$name.held_ms]=$(sed -nE 's/.*writes held ([0-9]+) ms.*/\1/p' "$out/switch-$name.log" | tail -1)
  fig[$name.switch_said]=$(grep -E ' is live' "$out/switch-$name.log" | tail -1 || true)
  [ $rc -ne 0 ] || fig[$name.switched]=1
  if [ $rc -ne 0 ]; then
    miss "$name: migrate switch $* exit $rc: $(tail -1 "$out/switch-$name.log")"
  elif [ -z "${fig[$name.held_ms]}" ]; then
    miss "$name: the switch did not report writes held (not the switch under traffic?): ${fig[$name.switch_said]}"
  fi
  nap "$half"
  wrk_stop "$name"
}

echo "== w0: load on SQLite, migrate verify --live"
verify_window w0 5 follow
echo "== w1: ${window} s of load, migrate switch in the middle"
switch_window w1
if [ -n "${fig[w1.switched]:-}" ]; then
  servers_follow w1 postgres
  follower_ended follow "$follow_pid"
fi
windows=(w0 w1)
if [ "$rollback" = 1 ] && [ ${#failures[@]} -eq 0 ]; then
  echo "== w2: load on PostgreSQL, migrate follow --reverse, migrate verify --live"
  follower follow-reverse --reverse
  reverse_pid=$follow_pid
  sleep 1
  kill -0 "$reverse_pid" 2>/dev/null || miss "migrate follow --reverse exited at once: $(tail -1 "$out/follow-reverse.log")"
  verify_window w2 "$pg_secs" follow-reverse
  windows+=(w2)
  if [ ${#failures[@]} -eq 0 ]; then
    echo "== w3: ${window} s of load, migrate switch --to sqlite in the middle"
    switch_window w3 --to sqlite
    if [ -n "${fig[w3.switched]:-}" ]; then
      servers_follow w3 sqlite
      follower_ended follow-reverse "$reverse_pid"
    fi
    windows+=(w3)
  fi
elif [ "$rollback" = 1 ]; then
  echo "== the rollback half is skipped: the switch to PostgreSQL did not complete (above)"
fi
[ ${#pids[@]} -eq 0 ] || stop "${pids[@]}" # the servers and any follower left

# --- the writes, checked against what the clients were told ------------------------------------
tok=$out/tokens
cat "$tok"/acks-*.txt | sort >"$out/acked.txt"
cat "$tok"/sent-*.txt >"$out/sent.txt"
sqlite3 "$work" "SELECT substr(text, 1, instr(text, ' ') - 1) FROM messages WHERE text LIKE 'zdt-$nonce-%'" |
  sort >"$out/stored-sqlite.txt"
psql -tA "$pg_url" -c "SELECT split_part(text, ' ', 1) FROM messages WHERE text LIKE 'zdt-$nonce-%'" |
  sort >"$out/stored-postgres.txt"
# tally STORED COMPLETE_WINDOWS: per window "window sent acked lost duplicated never_sent unacked_stored untokened";
# lost counts only in the windows named complete (those the database must hold all of).
tally() {
  awk -v complete=" $2 " '
    FILENAME == ARGV[1] { split($1, p, "-"); sent[$1] = $2; wsent[p[3]] += $2; next }
    FILENAME == ARGV[2] {
      if ($1 == "untokened") { untok["?"]++; next }
      split($1, p, "-"); w = p[3]; if (acked[$1]++ == 0) wacked[w]++; next }
    { stored[$1]++ }
    END {
      for (t in stored) {
        split(t, p, "-"); w = p[3]; tag = p[1] "-" p[2] "-" p[3] "-" p[4]; c = substr(p[5], 2) + 0
        if (stored[t] > 1) dup[w] += stored[t] - 1
        if (!(tag in sent) || c < 1 || c > sent[tag]) unsent[w]++
        else if (!(t in acked)) unacked[w]++
      }
      for (t in acked) { split(t, p, "-"); w = p[3]; if (!(t in stored) && index(complete, " " w " ")) lost[w]++ }
      for (w in wsent) printf "%s %d %d %d %d %d %d %d\n", w, wsent[w], wacked[w], lost[w], dup[w], unsent[w], unacked[w], untok["?"]
    }' "$out/sent.txt" "$out/acked.txt" "$1" | sort
}
# Which database must hold every acknowledged write of which window: the live one all of them; the
# other one those before the switch away from it (after the rollback PostgreSQL holds w0-w2, not
# what was written on SQLite after it; SQLite, left behind by the switch, holds only w0).
all="${windows[*]}"
# shellcheck disable=SC2034 # complete_sqlite and complete_postgres are read as ${!complete} below
if [ -z "${fig[w1.switched]:-}" ]; then
  final=sqlite complete_sqlite=$all complete_postgres=""
elif [ -n "${fig[w3.switched]:-}" ]; then
  final=sqlite complete_sqlite=$all complete_postgres="w0 w1 w2"
else
  final=postgres complete_sqlite="w0" complete_postgres=$all
fi
declare -A tal
for side in sqlite postgres; do
  complete=complete_$side
  while read -r w s a l d u x n; do tal[$side.$w]="$s $a $l $d $u $x $n"; done < <(
    tally "$out/stored-$side.txt" "${!complete}")
done

# --- report --------------------------------------------------------------------------------------
label() { case $1 in w0) echo "SQLite, verify";; w1) echo "switch -> PostgreSQL";; w2) echo "PostgreSQL, verify";; w3) echo "switch -> SQLite";; esac; }
ms() { awk -v u="${1:-0}" 'BEGIN {printf "%.0f", u / 1000}'; }
echo
echo "== zero-downtime load run: $sessions sessions ($file_mb MB), 2 server processes, wrk $((2 * ${#targets[@]})) threads" \
  "$conns connections, $((window / 2)) s of load before and after each switch; $(nproc) cores, load $(load1) now"
printf '%-22s %5s %8s %8s %7s %7s %8s %7s %7s %9s %6s %6s %5s %5s\n' window secs requests req/s non-2xx sockerr \
  "max ms" "p99 ms" "held" "switch ms" acked lost dup unsent
for w in "${windows[@]}"; do
  secs=$(awk -v d="${fig[$w.duration_us]}" 'BEGIN {printf "%.1f", d / 1e6}')
  rps=$(awk -v r="${fig[$w.requests]}" -v d="${fig[$w.duration_us]}" 'BEGIN {printf "%.0f", r / (d / 1e6)}')
  fig[$w.rps]=$rps
  read -r _s acked lost dup unsent _x _n <<<"${tal[$final.$w]:-0 0 0 0 0 0 0}"
  printf '%-22s %5s %8s %8s %7s %7s %8s %7s %7s %9s %6s %6s %5s %5s\n' "$w $(label "$w")" "$secs" "${fig[$w.requests]}" "$rps" \
    "${fig[$w.non2xx]}" "${fig[$w.socket_errors]}" "$(ms "${fig[$w.latency_max_us]}")" "$(ms "${fig[$w.latency_p99_us]}")" \
    "${fig[$w.held_ms]:--}" "${fig[$w.switch_ms]:--}" "$acked" "$lost" "$dup" "$unsent"
done
echo "(max ms: wrk's longest request over the whole window, the switch inside it; held: writes held," \
  "from the switch's own output; lost/dup/unsent: that window's chats checked in the final live database, $final)"
for w in "${windows[@]}"; do
  if [ -n "${fig[$w.switched]:-}" ]; then
    echo "$w: switch at ${fig[$w.at_s]} s of the window, load ${fig[$w.load1]}: ${fig[$w.switch_said]}; both servers followed within ${fig[$w.follow_ms]:-?} ms"
    # Where the hold went, as the switch logged it.
    grep -E ' INFO ' "$out/switch-$w.log" | grep -v -E 'switched (under traffic|back):' | sed -E 's/^\[[^]]*\] */    /' | cut -c1-240 || true
  elif [ -n "${fig[$w.switch_ms]:-}" ]; then
    echo "$w: switch at ${fig[$w.at_s]} s of the window FAILED after ${fig[$w.switch_ms]} ms (see $out/switch-$w.log)"
  fi
  [ -z "${fig[$w.verify]:-}" ] || echo "$w: migrate verify --live: ${fig[$w.verify]} in ${fig[$w.verify_ms]} ms under load;" \
    "the follower was within $catch_up_ms ms ${fig[$w.catch_up_ms]} ms after it ended"
done
for f in follow follow-reverse; do
  [ -f "$out/$f.jsonl" ] || continue
  lag=$(sed -nE 's/.*"lag_ms":([0-9]+).*/\1/p' "$out/$f.jsonl" | sort -n | tail -1)
  echo "migrate $f: largest lag reported (every second) ${lag:-?} ms; $(tail -1 "$out/$f.jsonl")"
done

for side in sqlite postgres; do
  read -r S A L D U X N < <(for w in "${windows[@]}"; do echo "${tal[$side.$w]:-0 0 0 0 0 0 0}"; done |
    awk '{s += $1; a += $2; l += $3; d += $4; u += $5; x += $6; n = $7} END {print s + 0, a + 0, l + 0, d + 0, u + 0, x + 0, n + 0}')
  stored=$(wc -l <"$out/stored-$side.txt")
  echo "$side$([ $side = $final ] && echo " (live at the end)"): $S chats sent, $A answered 2xx, $stored stored;" \
    "lost $L, stored twice $D, stored but never sent $U; stored but not acknowledged $X (in flight when a window ended," \
    "or answered non-2xx), 2xx chat answers without a token $N"
  [ "$L" -eq 0 ] || miss "$side: $L acknowledged writes lost"
  [ "$D" -eq 0 ] || miss "$side: $D writes stored twice"
  [ "$U" -eq 0 ] || miss "$side: $U writes stored that were never sent"
  [ "$N" -eq 0 ] || miss "$N chat answers without a readable token"
done

for w in "${windows[@]}"; do
  # A stored chat the client was not told about is one still in flight when wrk stopped (at most
  # one per connection) or one answered with an error: more than that is a write that succeeded
  # while its client saw it fail.
  read -r _s _a _l _d _u unacked _n <<<"${tal[$final.$w]:-0 0 0 0 0 0 0}"
  [ "$unacked" -le $((conns + fig[$w.non2xx] + fig[$w.socket_errors])) ] ||
    miss "$w: $unacked chats stored without a 2xx answer, more than the $conns connections could have had in flight"
  [ "${fig[$w.non2xx]}" -eq 0 ] || miss "$w: ${fig[$w.non2xx]} non-2xx answers: $(
    sed -E 's/,?"request_id":"[^"]*"//' "$tok"/errors-zdt-"$nonce"-"$w"-t*.txt | sort | uniq -c | sort -rn | head -3 |
      awk '{$1 = $1 " x"; print}' | paste -sd';')"
  [ "${fig[$w.socket_errors]}" -eq 0 ] || miss "$w: ${fig[$w.socket_errors]} socket errors (connect ${fig[$w.connect]}, read ${fig[$w.read]}, write ${fig[$w.write]}, timeout ${fig[$w.timeout]})"
  [ -n "${fig[$w.switch_ms]:-}" ] || continue
  max_ms=$(ms "${fig[$w.latency_max_us]}")
  timing_miss() {
    if [ "$timing" = report ]; then
      echo "-- timing target missed (not enforced, ZDT_TIMING=report): $*"
      timing_reported=$((timing_reported + 1))
    else
      miss "$*"
    fi
  }
  [ "$max_ms" -lt $max_latency_target_ms ] || timing_miss "$w: longest request $max_ms ms (target under $max_latency_target_ms ms)"
  [ -z "${fig[$w.held_ms]}" ] || [ "${fig[$w.held_ms]}" -lt $held_target_ms ] || timing_miss "$w: writes held ${fig[$w.held_ms]} ms (target under $held_target_ms ms)"
done
# Each process logs the switches it followed at WARN; anything else at WARN or ERROR is shown.
followed=' switch: .* is retired; serving from '
for i in 0 1; do
  echo "server $i followed $(grep -c -E "$followed" "$out/server-$i.log" || true) switch(es) by itself"
  n=$(grep -E " (ERROR|WARN) " "$out/server-$i.log" | grep -c -v -E "$followed" || true)
  [ "$n" -eq 0 ] || { echo "-- server $i log: $n other ERROR/WARN lines, first 3:"; grep -E " (ERROR|WARN) " "$out/server-$i.log" | grep -v -E "$followed" | head -3; }
done

csv=$root/results.csv
[ -s "$csv" ] || echo "run,sessions,file_mb,direction,window_s,switch_at_s,held_ms,switch_ms,max_latency_ms,p99_ms,non2xx,socket_errors,rps,acked,lost,duplicated,never_sent,load1,switched" >"$csv"
for w in w1 w3; do
  [ -n "${fig[$w.switch_ms]:-}" ] || continue
  read -r _s acked lost dup unsent _x _n <<<"${tal[$final.$w]:-0 0 0 0 0 0 0}"
  echo "$run_id,$sessions,$file_mb,$([ $w = w1 ] && echo sqlite-to-postgres || echo postgres-to-sqlite),$window,${fig[$w.at_s]},${fig[$w.held_ms]}," \
    "${fig[$w.switch_ms]},$(ms "${fig[$w.latency_max_us]}"),$(ms "${fig[$w.latency_p99_us]}"),${fig[$w.non2xx]},${fig[$w.socket_errors]},${fig[$w.rps]}," \
    "$acked,$lost,$dup,$unsent,${fig[$w.load1]},${fig[$w.switched]:-0}" | tr -d ' ' >>"$csv"
done
echo "results: $csv"
if [ ${#failures[@]} -gt 0 ]; then
  echo
  echo "== TARGETS MISSED (${#failures[@]}):"
  printf '  %s\n' "${failures[@]}"
  exit 1
fi
if [ "$timing_reported" -gt 0 ]; then
  echo "== every enforced target met; $timing_reported timing target(s) missed, reported only (ZDT_TIMING=report)"
else
  echo "== every target met"
fi
