#!/usr/bin/env bash
# Checks that the crate as `cargo package` would publish it is whole: packs it without the
# verify build (which would compile every dependency again with the default features), unpacks
# the .crate into a temp dir and runs the README's doctest there, on the repository's target
# dir so the dependencies already built are reused. A file the crate needs but the package
# leaves out (the embedded migrations, README.md, which src/lib.rs includes) fails here.
#
#   bash scripts/check-package.sh [--full]   (--full: also `cargo package`'s own verify build)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target}"
verify=--no-verify
[ "${1:-}" = --full ] && verify=
# --allow-dirty: CI checks the tree as it is; a release is packed from a clean commit anyway.
cargo package --allow-dirty $verify --locked
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -1)
crate="$CARGO_TARGET_DIR/package/interview-store-$version.crate"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
tar -xzf "$crate" -C "$work"
cd "$work/interview-store-$version"
cargo test --all-features --locked --doc -- ReadmeDoctests
echo "check-package: $(basename "$crate") unpacks, builds and passes the README's doctest"
