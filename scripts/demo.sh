#!/usr/bin/env bash
# make demo: for env1 and env2 the first seed's echo server (app-service) and
# the second seed's helloserver (hellosvc), the gateway on one port routing
# both by scripts/demo.yaml and scripts/demo-vs.yaml, then the seed's
# grpcurl check and curl over HTTP/1.1 and HTTP/2 for env1, env2 and an
# unknown environment, then everything stops.
set -euo pipefail
BIN=${BIN:-$(cd "$(dirname "$0")/.." && pwd)/bin}
cd "$(dirname "$0")/.."
logs=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$logs"
}
trap cleanup EXIT

# wait_for FILE PATTERN: until the process logging to FILE prints PATTERN.
wait_for() {
  for _ in $(seq 100); do
    grep -q "$2" "$1" 2>/dev/null && return 0
    sleep 0.1
  done
  echo "demo: timed out waiting for '$2' in $1:" >&2
  cat "$1" >&2
  exit 1
}

ENV=env1 "$BIN/echo" -addr 127.0.0.1:50051 >"$logs/env1.log" 2>&1 & pids+=($!)
ENV=env2 "$BIN/echo" -addr 127.0.0.1:50052 >"$logs/env2.log" 2>&1 & pids+=($!)
ENV=env1 "$BIN/helloserver" -addr 127.0.0.1:8081 >"$logs/hello1.log" 2>&1 & pids+=($!)
ENV=env2 "$BIN/helloserver" -addr 127.0.0.1:8082 >"$logs/hello2.log" 2>&1 & pids+=($!)
"$BIN/gateway" -config scripts/demo.yaml >"$logs/gateway.log" 2>&1 & pids+=($!)
wait_for "$logs/env1.log" "start server"
wait_for "$logs/env2.log" "start server"
wait_for "$logs/hello1.log" "Starting server"
wait_for "$logs/hello2.log" "Starting server"
wait_for "$logs/gateway.log" '"msg":"listening"'

call() {
  echo
  echo "\$ grpcurl -plaintext -proto proto/echo.proto -rpc-header 'env: $1' 127.0.0.1:8080 echo.EchoService/Call"
  "$BIN/grpcurl" -plaintext -proto proto/echo.proto -rpc-header "env: $1" 127.0.0.1:8080 echo.EchoService/Call 2>&1 || true
}
web() {
  echo
  echo "\$ curl -sS $1 -H 'env: $2' http://127.0.0.1:8080/"
  curl -sS "$1" -w '(HTTP %{http_version} %{http_code})\n' -H "env: $2" http://127.0.0.1:8080/ 2>&1 || true
}
echo "envgate demo: gRPC and HTTP on 127.0.0.1:8080, env1 and env2 behind it"
call env1
call env2
call env3
web --http1.1 env1
web --http2-prior-knowledge env2
web --http1.1 env3

echo
echo "--- gateway access log"
grep -E '"msg":"(call|request)"' "$logs/gateway.log" || true
echo "--- env1 log"
cat "$logs/env1.log"
