#!/usr/bin/env bash
# Browser end-to-end tests of the relay web chat.
#
#   bash tests/browser/run.sh [extra node --test args]
#
# Starts, on free 127.0.0.1 ports: a private redis-server, two relay nodes
# (nodeA, nodeB) sharing it, and nginx in front of both, plus a third node in
# token mode (nodeT: --auth token, its own --redis-prefix, so its accounts and
# rooms are separate); then runs the node:test suite in
# tests/browser/*.test.mjs with headless Chromium (playwright-core), and stops
# everything it started (by PID) on exit.
#
# Environment:
#   RELAY_BIN     relay binary (default: target/debug/relay under the repo root)
#   KEEP_TMP=1    keep the scratch directory (logs, configs) after the run
#   RELAY_WEB_FROM_DISK=1  serve web/ from disk through nginx (also in front of
#                 each node) instead of the copy embedded in the binary: test
#                 page edits without rebuilding
#
# Exported to the tests: RELAY_LB_URL, RELAY_NODE_A_URL, RELAY_NODE_B_URL,
# RELAY_NODE_A_PID, RELAY_NODE_B_PID, RELAY_NODE_A_PID_FILE (node A's current
# PID: node A runs in a loop that restarts it on the same port whenever it
# exits, while RELAY_NODE_A_KEEP exists), RELAY_TOKEN_NODE_URL,
# RELAY_TOKEN_NODE_PID, RELAY_REDIS_URL, RELAY_TOKEN_REDIS_PREFIX,
# RELAY_WEB_STALE (1 when the page embedded in the binary differs from web/),
# RELAY_ARTIFACTS.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
ARTIFACTS="$ROOT/.ci/artifacts/browser"
log() { printf '[browser-tests] %s\n' "$*" >&2; }

# ------------------------------------------------------------------ installs (only what is missing)
missing=()
command -v chromium >/dev/null 2>&1 || [ -x /usr/bin/chromium ] || missing+=(chromium)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx-light)
if [ "${#missing[@]}" -gt 0 ]; then
  log "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq "${missing[@]}" >/dev/null
fi
NGINX="$(command -v nginx || echo /usr/sbin/nginx)"
command -v node >/dev/null 2>&1 || { log "node is required"; exit 1; }

if [ -n "${CI:-}" ] || [ ! -f "$HERE/node_modules/playwright-core/package.json" ]; then
  log "npm ci"
  (cd "$HERE" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
fi

# ------------------------------------------------------------------ the relay command
RELAY_BIN="${RELAY_BIN:-target/debug/relay}"
case "$RELAY_BIN" in /*) ;; *) RELAY_BIN="$ROOT/$RELAY_BIN" ;; esac
if [ ! -x "$RELAY_BIN" ]; then
  log "relay binary not found at $RELAY_BIN (build it first: cargo build), or set RELAY_BIN"
  exit 1
fi
RELAY_CMD=("$RELAY_BIN")

# ------------------------------------------------------------------ scratch dir, cleanup
RUN="$(mktemp -d "${TMPDIR:-/tmp}/relay-browser.XXXXXX")"
chmod 755 "$RUN"
mkdir -p "$RUN/redis" "$RUN/nginx" "$RUN/home" "$RUN/home/.config" "$RUN/home/.cache" "$RUN/home/.local/share" "$RUN/xdg-runtime"
chmod 700 "$RUN/xdg-runtime"
PIDS=()
NODE_A_LOOP=""
STATUS=1

# shellcheck disable=SC2317  # invoked by the EXIT trap
cleanup() {
  local rc=$?
  set +e
  trap - EXIT INT TERM
  rm -f "$RUN/nodeA.keep"
  if [ -f "$RUN/nodeA.pid" ]; then kill -TERM "$(cat "$RUN/nodeA.pid")" 2>/dev/null; fi
  if [ -n "$NODE_A_LOOP" ]; then kill -TERM "$NODE_A_LOOP" 2>/dev/null; fi
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null; done
  # give them a moment, then make sure
  for _ in $(seq 1 30); do
    alive=0
    for pid in "${PIDS[@]}" $NODE_A_LOOP $(cat "$RUN/nodeA.pid" 2>/dev/null); do
      kill -0 "$pid" 2>/dev/null && alive=1
    done
    [ "$alive" = 0 ] && break
    sleep 0.2
  done
  for pid in "${PIDS[@]}" $NODE_A_LOOP $(cat "$RUN/nodeA.pid" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null; done
  wait 2>/dev/null
  if [ "$STATUS" != 0 ] || [ "$rc" != 0 ]; then
    mkdir -p "$ARTIFACTS/logs"
    cp "$RUN"/*.log "$RUN/redis/redis.log" "$RUN/nginx/error.log" "$RUN/nginx/nginx.conf" "$ARTIFACTS/logs/" 2>/dev/null
    log "server logs copied to $ARTIFACTS/logs/"
  fi
  if [ "${KEEP_TMP:-0}" = "1" ]; then log "kept $RUN"; else rm -rf "$RUN"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ------------------------------------------------------------------ ports
read -r REDIS_PORT PORT_A PORT_B PORT_LB _UNUSED PORT_FRONT_A PORT_FRONT_B PORT_T PORT_FRONT_T < <(node -e '
  const net = require("net");
  const servers = [];
  (async () => {
    const ports = [];
    for (let i = 0; i < 9; i++) {
      const s = net.createServer();
      await new Promise((r) => s.listen(0, "127.0.0.1", r));
      servers.push(s); ports.push(s.address().port);
    }
    servers.forEach((s) => s.close());
    console.log(ports.join(" "));
  })();')

wait_http() { # URL TIMEOUT_S: until it answers 200
  local url="$1" deadline=$((SECONDS + $2))
  while [ "$SECONDS" -lt "$deadline" ]; do
    if curl -fsS -o /dev/null --max-time 1 "$url" 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  log "timed out waiting for $url"
  return 1
}

# ------------------------------------------------------------------ redis
redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save "" --appendonly no \
  --dir "$RUN/redis" --logfile "$RUN/redis/redis.log" --daemonize no &
PIDS+=($!)
for _ in $(seq 1 100); do
  redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null | grep -q PONG && break
  sleep 0.05
done
redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping | grep -q PONG || { log "redis did not start"; cat "$RUN/redis/redis.log" >&2; exit 1; }
REDIS_URL="redis://127.0.0.1:$REDIS_PORT"


# ------------------------------------------------------------------ relay nodes
node_args() { # ID PORT
  echo serve --listen "127.0.0.1:$2" --redis "$REDIS_URL" --node-id "$1" --heartbeat-ms 1000 --drain-secs 2
}

# Node A runs in a loop: when it exits (the drain test sends it SIGTERM), it is
# started again on the same port, as long as the keep file exists.
touch "$RUN/nodeA.keep"
(
  while [ -e "$RUN/nodeA.keep" ]; do
    # shellcheck disable=SC2046
    "${RELAY_CMD[@]}" $(node_args nodeA "$PORT_A") >>"$RUN/nodeA.log" 2>&1 &
    child=$!
    echo "$child" >"$RUN/nodeA.pid.tmp" && mv -f "$RUN/nodeA.pid.tmp" "$RUN/nodeA.pid"
    set +e
    wait "$child"
    echo "[run.sh] nodeA (pid $child) exited with $? at $(date +%T.%N)" >>"$RUN/nodeA.log"
    set -e
    [ -e "$RUN/nodeA.keep" ] || break
    sleep 0.2
  done
) &
NODE_A_LOOP=$!

# shellcheck disable=SC2046
"${RELAY_CMD[@]}" $(node_args nodeB "$PORT_B") >>"$RUN/nodeB.log" 2>&1 &
NODE_B_PID=$!
PIDS+=("$NODE_B_PID")

# Node T: token mode (register / log in), on the same redis under its own
# prefix. --login-rate: the suite registers and logs in more than the default
# 10 times a minute, all from 127.0.0.1.
TOKEN_SECRET=browser-test-secret-0123456789abcdef
TOKEN_PREFIX=tok
"${RELAY_CMD[@]}" serve --listen "127.0.0.1:$PORT_T" --redis "$REDIS_URL" --redis-prefix "$TOKEN_PREFIX" \
  --node-id nodeT --auth token --secret "$TOKEN_SECRET" --heartbeat-ms 1000 --drain-secs 2 --login-rate 600 \
  >>"$RUN/nodeT.log" 2>&1 &
NODE_T_PID=$!
PIDS+=("$NODE_T_PID")

for _ in $(seq 1 50); do [ -s "$RUN/nodeA.pid" ] && break; sleep 0.1; done
wait_http "http://127.0.0.1:$PORT_A/readyz" 30 || { tail -50 "$RUN/nodeA.log" >&2; exit 1; }
wait_http "http://127.0.0.1:$PORT_B/readyz" 30 || { tail -50 "$RUN/nodeB.log" >&2; exit 1; }
wait_http "http://127.0.0.1:$PORT_T/readyz" 30 || { tail -50 "$RUN/nodeT.log" >&2; exit 1; }
curl -fsS --max-time 2 "http://127.0.0.1:$PORT_T/api/config" | grep -q '"auth":"token"' \
  || { log "node T is not in token mode"; tail -50 "$RUN/nodeT.log" >&2; exit 1; }

# The page is embedded in the binary at build time: say so when web/ has
# changed since (the tests would check the binary's older copy).
RELAY_WEB_STALE=0
while IFS= read -r f; do
  if ! curl -fsS --max-time 2 "http://127.0.0.1:$PORT_A/$f" | cmp -s - "$ROOT/web/$f"; then RELAY_WEB_STALE=1; fi
done < <(cd "$ROOT/web" && find . -type f \( -name '*.html' -o -name '*.js' -o -name '*.css' \) | sed 's#^\./##' | sort)
if [ "$RELAY_WEB_STALE" = 1 ] && [ "${RELAY_WEB_FROM_DISK:-0}" != "1" ]; then
  log "WARNING: web/ differs from the page embedded in $RELAY_BIN: the tests run the binary's copy."
  log "WARNING: rebuild (cargo build), or set RELAY_WEB_FROM_DISK=1 to test web/ as it is on disk."
fi

# ------------------------------------------------------------------ nginx
TEMPLATE=""
WEB_ARGS=()
URL_A="http://127.0.0.1:$PORT_A"
URL_B="http://127.0.0.1:$PORT_B"
URL_T="http://127.0.0.1:$PORT_T"
if [ "${RELAY_WEB_FROM_DISK:-0}" = "1" ]; then
  WEB_ARGS=(--static "$ROOT/web" --front "$PORT_FRONT_A=127.0.0.1:$PORT_A" --front "$PORT_FRONT_B=127.0.0.1:$PORT_B"
    --front "$PORT_FRONT_T=127.0.0.1:$PORT_T")
  URL_A="http://127.0.0.1:$PORT_FRONT_A"
  URL_B="http://127.0.0.1:$PORT_FRONT_B"
  URL_T="http://127.0.0.1:$PORT_FRONT_T"
  RELAY_WEB_STALE=0
  log "RELAY_WEB_FROM_DISK=1: the page comes from $ROOT/web, not from the binary"
fi
if [ -f "$ROOT/docker/nginx.conf" ]; then TEMPLATE="$ROOT/docker/nginx.conf"; fi
node "$ROOT/tests/harness/nginx-conf.mjs" --prefix "$RUN/nginx" --listen "$PORT_LB" \
  --upstream "127.0.0.1:$PORT_A" --upstream "127.0.0.1:$PORT_B" ${TEMPLATE:+--template "$TEMPLATE"} \
  "${WEB_ARGS[@]}" >/dev/null
log "nginx config from ${TEMPLATE:-the inline fallback}"
"$NGINX" -t -q -p "$RUN/nginx" -c "$RUN/nginx/nginx.conf" -e "$RUN/nginx/error.log" -g 'daemon off;' \
  || { cat "$RUN/nginx/nginx.conf" >&2; exit 1; }
"$NGINX" -p "$RUN/nginx" -c "$RUN/nginx/nginx.conf" -e "$RUN/nginx/error.log" -g 'daemon off;' &
PIDS+=($!)
wait_http "http://127.0.0.1:$PORT_LB/healthz" 10 || { cat "$RUN/nginx/error.log" >&2; exit 1; }

# ------------------------------------------------------------------ tests
export RELAY_LB_URL="http://127.0.0.1:$PORT_LB"
export RELAY_NODE_A_URL="$URL_A"
export RELAY_NODE_B_URL="$URL_B"
RELAY_NODE_A_PID="$(cat "$RUN/nodeA.pid")"
export RELAY_NODE_A_PID
export RELAY_NODE_A_PID_FILE="$RUN/nodeA.pid"
export RELAY_NODE_A_KEEP="$RUN/nodeA.keep"
export RELAY_NODE_B_PID="$NODE_B_PID"
export RELAY_TOKEN_NODE_URL="$URL_T"
export RELAY_TOKEN_NODE_PID="$NODE_T_PID"
export RELAY_REDIS_URL="$REDIS_URL"
export RELAY_TOKEN_REDIS_PREFIX="$TOKEN_PREFIX"
export RELAY_WEB_STALE
export RELAY_ARTIFACTS="$ARTIFACTS"
export CHROMIUM_BIN="${CHROMIUM_BIN:-/usr/bin/chromium}"
# Chromium gets a scratch home.
export HOME="$RUN/home" XDG_CONFIG_HOME="$RUN/home/.config" XDG_CACHE_HOME="$RUN/home/.cache" \
  XDG_DATA_HOME="$RUN/home/.local/share" XDG_RUNTIME_DIR="$RUN/xdg-runtime"
rm -rf "$ARTIFACTS"
mkdir -p "$ARTIFACTS"

log "LB $RELAY_LB_URL, nodeA $RELAY_NODE_A_URL (pid $RELAY_NODE_A_PID), nodeB $RELAY_NODE_B_URL (pid $RELAY_NODE_B_PID), token nodeT $RELAY_TOKEN_NODE_URL (pid $RELAY_TOKEN_NODE_PID)"
set +e
(cd "$HERE" && node --test --test-concurrency=1 --test-reporter=spec "$@" ./*.test.mjs)
STATUS=$?
set -e
exit "$STATUS"
