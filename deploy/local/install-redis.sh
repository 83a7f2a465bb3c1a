#!/usr/bin/env bash
# Makes sure the Debian package redis-server (the online feature store, issue 12) is present.
# Idempotent: prints nothing and exits 0 when redis-server is already installed. Tests and
# `streamscore up` start their own redis-server on a free port; this never starts a service.
set -euo pipefail

if command -v redis-server >/dev/null 2>&1; then exit 0; fi

echo "install-redis: redis-server missing; installing the Debian package with apt-get" >&2
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
$SUDO apt-get update -q
$SUDO apt-get install -y -q --no-install-recommends redis-server
# The package enables a system service on the default port; the project does not use it.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet redis-server 2>/dev/null; then
  $SUDO systemctl disable --now redis-server >/dev/null 2>&1 || true
fi
command -v redis-server >/dev/null 2>&1 || { echo "install-redis: redis-server still not found" >&2; exit 1; }
