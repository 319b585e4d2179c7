#!/usr/bin/env bash
# The test command: starts PostgreSQL where it can, then runs every test on both backends.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/ensure-postgres.sh
exec cargo test --all-features "$@"
