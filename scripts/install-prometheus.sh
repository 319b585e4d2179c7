#!/usr/bin/env bash
# Installs Debian's `prometheus` package (promtool and the server binary) and python3-yaml when
# missing. Idempotent. The package's own service is never left running: a policy-rc.d that
# refuses every start is in place during the install (the Debian way to install a daemon
# without starting it), and removed after unless it was there before.
set -euo pipefail
# python3-yaml: scripts/prometheus-check.sh reads the rules' expressions with it.
if command -v promtool >/dev/null 2>&1 && [ -x /usr/bin/prometheus ] && python3 -c 'import yaml' 2>/dev/null; then
  exit 0
fi
sudo=""
if [ "$(id -u)" != 0 ]; then sudo="sudo"; fi
policy=/usr/sbin/policy-rc.d
placed=""
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\n# placed by interview-store scripts/install-prometheus.sh\nexit 101\n' | $sudo tee "$policy" >/dev/null
  $sudo chmod +x "$policy"
  placed=1
fi
cleanup() { if [ -n "$placed" ]; then $sudo rm -f "$policy"; fi; }
trap cleanup EXIT
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq -o DPkg::Lock::Timeout=300 \
  --no-install-recommends prometheus python3-yaml >/dev/null
# On a systemd machine the unit may still be enabled for the next boot: disable it.
if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
  $sudo systemctl disable --now prometheus >/dev/null 2>&1 || true
fi
command -v promtool >/dev/null
