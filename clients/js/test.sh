#!/usr/bin/env bash
# Tests of the JavaScript client (clients/js): installs what they need
# (nodejs/npm, redis-server, nginx-light with apt-get when missing, as root;
# the npm packages with `npm ci` from package-lock.json), type-checks
# index.d.ts and a typed usage file with `tsc --noEmit`, then runs the
# node:test suites in test/ against real relay nodes (one embedded node; two
# nodes sharing a private redis-server behind nginx), started and stopped by
# the tests on free 127.0.0.1 ports.
#
#   RELAY_BIN=target/debug/relay bash clients/js/test.sh [extra node --test args]
#
# RELAY_BIN: the relay binary, relative to the repo root or absolute
# (default target/debug/relay). KEEP_TMP=1 keeps the servers' logs.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
log() { printf '[js-client-tests] %s\n' "$*" >&2; }

missing=()
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx-light)
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then log "missing ${missing[*]} and not root: install them first"; exit 1; fi
  log "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq "${missing[@]}" >/dev/null
fi

RELAY_BIN="${RELAY_BIN:-target/debug/relay}"
case "$RELAY_BIN" in /*) ;; *) RELAY_BIN="$ROOT/$RELAY_BIN" ;; esac
if [ ! -x "$RELAY_BIN" ]; then
  log "relay binary not found at $RELAY_BIN (cargo build --bin relay), or set RELAY_BIN"
  exit 1
fi
export RELAY_BIN

cd "$HERE"
if [ -n "${CI:-}" ] || [ ! -d node_modules/ws ] || [ ! -d node_modules/typescript ]; then
  log "npm ci"
  npm ci --no-audit --no-fund --loglevel=error >/dev/null
fi

log "tsc --noEmit (index.d.ts, test/types/usage.ts)"
npx --no-install tsc --noEmit -p tsconfig.json

log "node --test (relay: $RELAY_BIN)"
node --test --test-concurrency=1 --test-reporter=spec "$@" test/*.test.mjs
