#!/usr/bin/env bash
# Model-checks the cutover protocol (model/cutover.pml, described in docs/model.md) with Spin:
#   1. the real model, exhaustively, for every property: the assertions (one live side, a retired
#      side takes no client write, each log entry applied once and none skipped, every acknowledged
#      write on the live side once, the end settled) and the LTL formulas never_both_live and
#      no_stuck; each must report errors: 0;
#   2. the same assertions with two kills instead of one (the rerun and the undo killed too);
#   3. the variant with the step order before the redesign (-DOLD_ORDER), which must FAIL with the
#      stuck state, as an assertion and as the no_stuck formula; its trail is printed, filtered to
#      the steps.
# Bounds: 2 servers x 2 client writes, 1 kill of the migration command (2 in run 2), the runbook's
# commands (copy, switch --to postgres, a second switch after an undo, switch --to sqlite) and
# whatever status names after a kill. Exits non-zero when the real model fails, a search is cut
# short, or the old variant does NOT fail. MODEL_CHECK_BUDGET (seconds, default 420) bounds the
# whole run. Installs Debian's spin when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
root="$PWD"
budget="${MODEL_CHECK_BUDGET:-420}"
started=$SECONDS

if ! command -v spin >/dev/null 2>&1; then
  if [ "$(id -u)" != 0 ]; then
    echo "model-check: spin is not installed and we are not root: apt-get install spin" >&2
    exit 1
  fi
  echo "model-check: installing spin"
  DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q spin gcc >/dev/null
fi
command -v gcc >/dev/null 2>&1 || { echo "model-check: gcc is needed to compile Spin's verifier" >&2; exit 1; }

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cp "$root/model/cutover.pml" "$work/"
cd "$work"

failed=0
left() { echo $((budget - (SECONDS - started))); }

# verify NAME EXPECT(pass|fail|fail-quiet) SPIN_FLAGS GCC_FLAGS PAN_FLAGS
# fail: a counterexample is expected and its trail printed; fail-quiet: expected, not printed.
verify() {
  local name="$1" expect="$2" spin_flags="$3" gcc_flags="$4" pan_flags="$5"
  local out="$work/$name.out" t0=$SECONDS secs cpu
  secs="$(left)"
  if [ "$secs" -le 0 ]; then
    echo "FAIL $name: no time left of the ${budget}s budget" >&2
    failed=1
    return
  fi
  rm -f cutover.pml.trail
  # shellcheck disable=SC2086 # the flags are word lists
  spin $spin_flags -a cutover.pml >/dev/null
  # shellcheck disable=SC2086
  gcc -O2 -w $gcc_flags -o "pan-$name" pan.c
  local rc=0 TIMEFORMAT='%U'
  # The verifier's own CPU time (user), next to the wall time: the machine may be shared.
  # shellcheck disable=SC2086
  cpu="$({ time timeout "$secs" "./pan-$name" $pan_flags >"$out" 2>&1 || echo "rc=$?" >"$out.rc"; } 2>&1)"
  [ -f "$out.rc" ] && rc="$(sed 's/rc=//' "$out.rc")"
  local errors states transitions depth
  errors="$(sed -n 's/.*errors: \([0-9]*\).*/\1/p' "$out" | tail -n 1)"
  states="$(sed -n 's/^ *\([0-9.e+]*\) states, stored.*/\1/p' "$out" | tail -n 1)"
  transitions="$(sed -n 's/^ *\([0-9.e+]*\) transitions.*/\1/p' "$out" | tail -n 1)"
  depth="$(sed -n 's/.*depth reached \([0-9]*\).*/\1/p' "$out" | tail -n 1)"
  printf '%-20s errors: %-2s states: %-9s transitions: %-9s depth: %-4s cpu: %ss wall: %ss\n' \
    "$name" "${errors:-?}" "${states:-?}" "${transitions:-?}" "${depth:-?}" "$cpu" "$((SECONDS - t0))"
  if [ "$rc" = 124 ]; then
    echo "FAIL $name: cut off by the ${budget}s budget" >&2
    failed=1
    return
  fi
  if grep -q "max search depth too small\|search not completed" "$out"; then
    echo "FAIL $name: the search was not exhaustive" >&2
    grep "max search depth too small\|search not completed" "$out" >&2
    failed=1
    return
  fi
  case "$expect" in
    pass)
      if [ "${errors:-}" != 0 ]; then
        echo "FAIL $name: Spin found a violation:" >&2
        grep "^pan:" "$out" >&2 || tail -n 20 "$out" >&2
        if [ -f cutover.pml.trail ]; then
          # shellcheck disable=SC2086
          spin $spin_flags -t cutover.pml 2>&1 | grep -E "^ *(step:|old:|undo:|command:|killed|stuck:)|Error|assertion" >&2 || true
        fi
        failed=1
      fi
      ;;
    fail | fail-quiet)
      if [ "${errors:-0}" -lt 1 ] || [ ! -f cutover.pml.trail ]; then
        echo "FAIL $name: expected a counterexample, Spin found none" >&2
        failed=1
      else
        echo "  the expected counterexample: $(grep '^pan:1:' "$out" | cut -c1-80)..."
        if [ "$expect" = fail ]; then
          echo "  its trail (spin -t, filtered to the steps):"
          # shellcheck disable=SC2086
          spin $spin_flags -t cutover.pml 2>&1 | grep -E "^ *(step:|old:|undo:|command:|killed|stuck:)|text of failed" |
            sed -e 's/^ */    /' -e 's/text of failed assertion: assert(.*/assertion violated: not SETTLED (no side live)/'
        fi
      fi
      ;;
  esac
}

echo "== model check: model/cutover.pml (Spin $(spin -V | sed -n 's/Spin Version \([^ ]*\).*/\1/p'))"
# Assertions and invalid end states, no claim (-DNOCLAIM), exact state compression (-DCOLLAPSE),
# with up to two kills: every run with one kill is one of these too.
verify assertions pass "-DMAXCRASH=2" "-DSAFETY -DNOCLAIM -DCOLLAPSE" "-m200000"
# LTL, one kill: each formula on its own, acceptance cycles (-a). Every loop of the model makes
# progress, so the only cycle is the final stutter and no fairness flag (-f) is needed.
verify never_both_live pass "" "-DCOLLAPSE" "-a -N never_both_live -m200000"
verify no_stuck pass "" "-DCOLLAPSE" "-a -N no_stuck -m200000"
echo "== the step order before the redesign (-DOLD_ORDER): must fail"
verify old-order fail "-DOLD_ORDER" "-DSAFETY -DNOCLAIM -DCOLLAPSE" "-m200000"
# -A: assertions off, so that the LTL formula itself finds the stuck state.
verify old-order-no_stuck fail-quiet "-DOLD_ORDER" "-DCOLLAPSE" "-a -A -N no_stuck -m200000"
echo "== model check: $((SECONDS - started))s in all"
if [ "$failed" != 0 ]; then
  echo "model check FAILED" >&2
  exit 1
fi
echo "model check: every property holds for the real model; the old order fails as expected"
