#!/usr/bin/env bash
# The alert rules and the dashboard against real series:
#
#   1. promtool check rules / test rules (deploy/prometheus/, its unit tests);
#   2. a real Prometheus (Debian's package, its own config and data dir in a temp dir, a free
#      port, scrape and rule interval 1 s) scraping the example server (SQLite, following a
#      switch to a scratch PostgreSQL database, shadow-reading every read from it) and a
#      `migrate follow --metrics-addr` keeping that database current;
#   3. a short load: a few hundred requests, 400s and 404s, and writes held and refused by a
#      paused database, so the error and hold series exist;
#   4. every expression of every dashboard panel and every rule queried through Prometheus's
#      HTTP API: the script fails naming each one that returns no data. An alert's expression
#      is a condition, empty while all is well, so each operand of its comparisons and of its
#      `and`/`or` is queried instead (`a > 5 and b == 1`: `a` and `b`), and each recording
#      rule both as its expression and as the series it records.
#
# Needs the PostgreSQL the tests use (INTERVIEW_TEST_POSTGRES_URL, default the local cluster).
# The live part is bounded by PROM_CHECK_SECS (default 120). Run from .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
source scripts/test-helpers.sh

bash scripts/install-prometheus.sh
echo "== promtool check rules"
promtool check rules deploy/prometheus/*.rules.yml
echo "== promtool test rules"
promtool test rules deploy/prometheus/tests/*.test.yml

echo "== cargo build --all-features --example server --example migrate"
cargo build -q --all-features --example server --example migrate
bin=$root/target/debug/examples

deadline=$(($(date +%s) + ${PROM_CHECK_SECS:-120}))
left() { echo $((deadline - $(date +%s))); }
die() { echo "prometheus-check: $*" >&2; exit 1; }

admin="${INTERVIEW_TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
db="prom_check_$$"
pg_url="${admin%/*}/$db"
out=$(mktemp -d /tmp/interview-prom.XXXXXX)
pids=()
cleanup() {
  local rc=$? p
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  psql -q "$admin" -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 || true
  if [ $rc -eq 0 ]; then rm -rf "$out"; else echo "logs: $out" >&2; fi
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

wait_http() { # wait_http URL WHAT PID
  while [ "$(left)" -gt 0 ]; do
    curl -fs -o /dev/null "$1" && return 0
    kill -0 "$3" 2>/dev/null || die "$2 exited (logs in $out)"
    sleep 0.1
  done
  die "$2 did not answer $1 in time"
}

# --- the server, the cutover's bookkeeping, the follower -----------------------------------------
psql -q "$admin" -c "CREATE DATABASE $db" >/dev/null
sqlite=$out/interview.db
srv_port=$(free_port)
srv=http://127.0.0.1:$srv_port
token=prom-check
INTERVIEW_DB_BACKEND=sqlite INTERVIEW_SQLITE_PATH="$sqlite" INTERVIEW_POSTGRES_URL="$pg_url" \
  INTERVIEW_ADDR=127.0.0.1:$srv_port INTERVIEW_ADMIN_TOKEN=$token \
  INTERVIEW_SHADOW_READS=1 INTERVIEW_SHADOW_SETTLE_MS=0 \
  INTERVIEW_PAUSE_WAIT_MS=300 INTERVIEW_SLOW_REQUEST_MS=200 RUST_LOG=warn \
  "$bin/server" >"$out/server.log" 2>&1 &
pids+=($!)
wait_http "$srv/health" server $!

"$bin/migrate" setup --postgres "$pg_url" --sqlite "$sqlite" >"$out/setup.log" 2>&1 \
  || die "migrate setup failed: $(tail -3 "$out/setup.log")"
"$bin/migrate" copy --sqlite "$sqlite" --postgres "$pg_url" >"$out/copy.log" 2>&1 \
  || die "migrate copy failed: $(tail -3 "$out/copy.log")"
follow_port=$(free_port)
"$bin/migrate" follow --sqlite "$sqlite" --postgres "$pg_url" --report-secs 1 \
  --metrics-addr 127.0.0.1:$follow_port >"$out/follow.log" 2>&1 &
pids+=($!)
wait_http "http://127.0.0.1:$follow_port/metrics" "migrate follow" $!

# --- Prometheus ----------------------------------------------------------------------------------
prom_port=$(free_port)
prom=http://127.0.0.1:$prom_port
cat >"$out/prometheus.yml" <<YAML
global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files:
  - $root/deploy/prometheus/interview-store.rules.yml
scrape_configs:
  - job_name: interview-store
    static_configs: [{targets: ["127.0.0.1:$srv_port"]}]
  - job_name: interview-follow
    static_configs: [{targets: ["127.0.0.1:$follow_port"]}]
YAML
/usr/bin/prometheus --config.file="$out/prometheus.yml" --storage.tsdb.path="$out/data" \
  --web.listen-address=127.0.0.1:$prom_port --log.level=warn >"$out/prometheus.log" 2>&1 &
pids+=($!)
wait_http "$prom/-/ready" prometheus $!

# --- a short load --------------------------------------------------------------------------------
echo "== load: $srv"
post() { curl -s -o /dev/null -w '%{http_code}\n' -X POST "$srv$1" -H 'content-type: application/json' -d "$2"; }
codes=$out/codes
for i in $(seq 30); do
  id=$(curl -s -X POST "$srv/interview/start" -d '{}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["session_id"])')
  post /interview/chat "{\"session_id\": \"$id\", \"text\": \"answer $i\"}" >>"$codes"
  post /interview/draft "{\"session_id\": \"$id\"}" >>"$codes"
  for path in "session/$id" "draft/latest/$id" session/00000000-0000-0000-0000-000000000000 no/such/route; do
    curl -s -o /dev/null -w '%{http_code}\n' "$srv/interview/$path" >>"$codes"
  done
  post /interview/chat '{"session_id": "not-a-uuid", "text": "x"}' >>"$codes"
done
# A paused database: writes held for INTERVIEW_PAUSE_WAIT_MS, then 503 read_only.
curl -s -o /dev/null -X POST "$srv/admin/maintenance" -H "Authorization: Bearer $token" \
  -H 'content-type: application/json' -d '{"read_only": true}'
for _ in 1 2 3; do post /interview/start '{}' >>"$codes"; done
sleep 2 # the pause seen by the watcher and scraped
curl -s -o /dev/null -X POST "$srv/admin/maintenance" -H "Authorization: Bearer $token" \
  -H 'content-type: application/json' -d '{"read_only": false}'
echo "answers: $(sort "$codes" | uniq -c | tr -s ' \n' ' ')"
grep -q '^503$' "$codes" || die "no write was refused by the pause"
grep -q 'slow request: POST /interview/start status=503 backend=sqlite .*held_ms=' "$out/server.log" \
  || die "no slow-request line for a write held by the pause in $out/server.log"

# --- every expression has data -------------------------------------------------------------------
echo "== every panel's and every rule's expression, through $prom"
python3 - "$prom" "$(left)" deploy/grafana/interview-store.json deploy/prometheus/interview-store.rules.yml <<'PY'
import json, sys, time, urllib.parse, urllib.request
import yaml

prom, budget, dashboard, rules = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]

# Series that cannot have data in this test, with the reason. Keep it empty if you can.
EXCUSED = {}

def operands(expr):
    """The operands of expr's top-level comparisons and set operators."""
    parts, depth, quote, start, i = [], 0, None, 0, 0
    ops = (" and ", " or ", " unless ", ">=", "<=", "==", "!=", ">", "<")
    while i < len(expr):
        c = expr[i]
        if quote:
            if c == "\\":
                i += 1
            elif c == quote:
                quote = None
        elif c in "\"'`":
            quote = c
        elif c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        elif depth == 0:
            # `=~` / `!~` only occur inside braces, so a top-level `!=` is a comparison.
            op = next((o for o in ops if expr.startswith(o, i)), None)
            if op:
                parts.append(expr[start:i])
                i += len(op)
                start = i
                continue
        i += 1
    parts.append(expr[start:])
    out = []
    for p in (p.strip() for p in parts):
        try:
            float(p)
        except ValueError:
            out.append(p)
    return out

checks = []  # (what, expression)
for panel in json.load(open(dashboard))["panels"]:
    for t in panel.get("targets", []):
        e = t["expr"].replace("$__rate_interval", "1m").replace("$instance", ".*")
        checks.append((f'panel "{panel["title"]}" {t["refId"]}', e))
for group in yaml.safe_load(open(rules))["groups"]:
    for r in group["rules"]:
        if "record" in r:
            checks.append((f'record {r["record"]}', r["expr"]))
            checks.append((f'record {r["record"]} (the recorded series)', r["record"]))
        else:
            for o in operands(r["expr"]):
                checks.append((f'alert {r["alert"]}', o))

def has_data(expr):
    url = f"{prom}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=5) as resp:
        body = json.load(resp)
    if body.get("status") != "success":
        raise SystemExit(f"query {expr!r} failed: {body}")
    data = body["data"]
    return data["resultType"] == "scalar" or len(data["result"]) > 0

# Rates need two scrapes, and recording rules one evaluation after them: retry until the budget ends.
end = time.time() + max(budget - 2, 5)
missing = checks
while True:
    missing = [(w, e) for w, e in missing if not has_data(e)]
    if not missing or time.time() > end:
        break
    time.sleep(1)
excused = [(w, e) for w, e in missing if any(s in e for s in EXCUSED)]
failed = [(w, e) for w, e in missing if (w, e) not in excused]
for w, e in excused:
    print(f"  excused: {w}: {e}")
for w, e in failed:
    print(f"  NO DATA: {w}: {e}")
print(f"{len(checks) - len(missing)} of {len(checks)} expressions returned data")
sys.exit(1 if failed else 0)
PY
echo "prometheus-check: ok"
