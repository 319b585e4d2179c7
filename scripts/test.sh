#!/usr/bin/env bash
# The test command: starts PostgreSQL where it can, plus the throwaway helpers of the
# production-PostgreSQL tests (PgBouncer in transaction mode, a TLS-only cluster; see
# scripts/test-helpers.sh), then runs every test on both backends and stops the helpers.
#
# Without a helper (no root to install pgbouncer, no initdb) its tests print why and skip,
# except under CI=true, where they fail.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/ensure-postgres.sh
source scripts/test-helpers.sh
trap stop_helpers EXIT
for helper in start_pgbouncer start_tls_cluster; do
  if ! "$helper"; then
    echo "test helpers: $helper failed" >&2
    [ "${CI:-}" = true ] && exit 1
  fi
done
cargo test --all-features "$@"
