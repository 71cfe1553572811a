#!/usr/bin/env bash
# make bench: the same unary load, back to back in one run, against the echo
# server directly, through envgate, and through nginx and HAProxy configured
# to route on the env header with HTTP/2 to the backend, through the naive
# mwitkow/grpc-proxy router (scripts/bench/grpcproxy) as a baseline, and
# through the least a grpc-go server + client forwarder can do
# (scripts/bench/floor), what envgate would cost on grpc-go's client at the least. h2load (raw gRPC
# frames) measures throughput and CPU, ghz measures latency. Every run is
# bounded by a call count and a timeout. Prints one table with ratios to
# direct and to envgate, measured in this run (the machine is shared).
# Then the HTTP rows (HTTP_ROWS=0 skips them): GET / of the second seed's
# helloserver, directly and through envgate, nginx and HAProxy routing on the
# env header, and through the least a Go relay on Go's netpoller can do
# (scripts/bench/httpfloor), over HTTP/1.1 and h2c; h2load gives rps and,
# from its per-request log, p50/p99.
# Every unary row also gets p50/p99 of calls sent open loop at a fixed rate
# each target sustains (LATENCY_RPS; scripts/bench/load -mode rate).
# Then the upstream TLS rows (UPSTREAM_TLS=0 skips them): the backend behind
# TLS (a bench CA, the name verified), reached directly over TLS, through
# envgate (upstream.tls SIMPLE) and through HAProxy (server ... ssl).
# Then the production path (issue 15), each part skipped with its variable
# set to 0:
#   CLIENT_TLS_ROWS  the client speaks TLS to every proxy (one certificate,
#                    ECDSA P-256 then RSA 2048), h2c behind; direct-tls is
#                    the client speaking TLS to the backend itself;
#                    CLIENT_TLS_KEYS picks the keys ("ecdsa rsa").
#                    envgate-grpcserver-ctls has sharedHTTP2 off (gRPC's
#                    own server; the default listener's before run U),
#                    envgate-shared-ctls says sharedHTTP2 (for a base
#                    before run U). CLIENT_TLS_TARGETS picks the rows.
#   STREAM_ROWS      server-streaming MB/s and CPU per GB (1 KiB and 64 KiB
#                    messages), bidi ping-pong p50/p99 on 100 streams
#                    (scripts/bench/load); envgate-grpcserver has
#                    sharedHTTP2 off (gRPC's own server, which hands over
#                    messages, not bytes). STREAM_TARGETS picks the rows.
#   CONN_ROWS        CONN_COUNT (10,000) TLS connections, one call each, idle
#                    with keepalive pings, then calls on CONN_ACTIVE (1,000)
#                    of them and on 10: RSS per idle connection, rate, p99,
#                    the server's and the client's CPU per call; then
#                    CONN_RPS (3,000) calls a second open loop on each:
#                    p50, p99, CPU per call at the same offered rate.
#   OVERLOAD_ROWS    envgate's sustained rate (closed loop, 50 in flight),
#                    then twice that rate open loop for 10 s through envgate,
#                    envgate with limits.maxConcurrentCalls, nginx, HAProxy,
#                    each limited to OVERLOAD_CPU (250) millicores of CPU:
#                    calls refused, p50/p99/p99.9 of the others.
#   ENV_ROWS         envgate with 2 and with ENV_COUNT (1,000) environments
#                    of 3 endpoints each (scripts/bench/manyecho), calls
#                    spread over all of them: rate, p99, CPU, RSS,
#                    descriptors, goroutines; then upstream.idleTimeout
#                    (10 s) passes and every environment is called again.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${BIN:-$ROOT/bin}
SIZES=${SIZES:-"100 65536"}
CONC=50          # concurrent calls
CONNS=10         # client connections (a load balancer spreads over several)
DIR=$(mktemp -d)
# The gateway watches its configuration file's directory for changes: it
# gets one of its own, as a ConfigMap volume is, so the logs written to
# $DIR during a run do not wake the watcher.
mkdir -p "$DIR/conf"
BACKEND_PORT=${BACKEND_PORT:-19051}
BACKEND_TLS_PORT=${BACKEND_TLS_PORT:-19052}
UPSTREAM_TLS=${UPSTREAM_TLS:-1}
HTTP_ROWS=${HTTP_ROWS:-1}
BACKEND_HTTP_PORT=${BACKEND_HTTP_PORT:-19053}
CLIENT_TLS_ROWS=${CLIENT_TLS_ROWS:-1}
STREAM_ROWS=${STREAM_ROWS:-1}
CONN_ROWS=${CONN_ROWS:-1}
CONN_COUNT=${CONN_COUNT:-10000}
CONN_ACTIVE=${CONN_ACTIVE:-1000}
CONN_RPS=${CONN_RPS:-3000}
ENV_ROWS=${ENV_ROWS:-1}
OVERLOAD_ROWS=${OVERLOAD_ROWS:-1}
# Every unary row also sends LATENCY_DURATION of calls open loop at a
# fixed rate per message size (size:calls-per-second; empty skips it),
# below what each target sustains here, for the latency the hop adds
# rather than the queueing of a saturated machine.
LATENCY_RPS=${LATENCY_RPS-"100:4000 65536:600"}
LATENCY_DURATION=${LATENCY_DURATION:-5s}
ENV_COUNT=${ENV_COUNT:-1000}
OVERLOAD_CPU=${OVERLOAD_CPU:-250} # millicores each target may use in the overload rows
# ROUNDS=N measures the HTTP, client-TLS and stream tables N times over,
# the targets alternating (one row of each per round, in the order given),
# so that the ratio of two proxies is judged from N rows each measured
# beside the other rather than from one row each on a shared, noisy
# machine. With N > 1 a row names its round (envgate-http@2), its ratios
# are to the rows of the same round, and each table is followed by the
# medians over the rounds (summary).
ROUNDS=${ROUNDS:-1}
# HTTP_ROUNDS=N: the HTTP table's rounds, ROUNDS unless given; a round of
# it takes about a minute, against several for the other tables, and its
# rows are the shortest and so the noisiest.
HTTP_ROUNDS=${HTTP_ROUNDS:-$ROUNDS}
tag="" # the round of the rows being measured ("@2"); "" with one round
# Below Linux's ephemeral range (32768-60999): the client sockets of the
# connection rows may still hold ports there.
MANY_BASE=${MANY_BASE:-20000}
LISTEN=""
PIN="" # a prefix to the target's command (the overload rows' CPU limit)
PORT=${PORT:-19080}
TICK=$(getconf CLK_TCK)
pids=()

cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$DIR"
}
trap cleanup EXIT

need() { # command, Debian package
  command -v "$1" >/dev/null && return
  echo "bench: installing $2" >&2
  if [ "$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null
  else sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null; fi
}
need h2load nghttp2-client
need nginx nginx-light
need haproxy haproxy
need openssl openssl
export PATH=$PATH:/usr/sbin
# 10,000 client connections take as many descriptors in the client and in
# each proxy (the processes started from here inherit the limit).
ulimit -n "$(ulimit -Hn)"

# family PID: the process and its direct children (nginx workers).
family() {
  local p=$1
  echo "$p"
  for s in /proc/[0-9]*/stat; do
    # A process may end between the glob and the read: braces, so that
    # the failed redirection's message is discarded too.
    { read -r -a f <"$s"; } 2>/dev/null || continue
    [ "${f[3]:-}" = "$p" ] && echo "${f[0]}"
  done
  return 0
}
# cpu_ticks PID...: utime+stime, in clock ticks, of the processes and their children.
cpu_ticks() {
  local sum=0 p
  for p in $(for q in "$@"; do family "$q"; done); do
    [ -r "/proc/$p/stat" ] || continue
    # fields after the command name: state is 3, utime 14, stime 15
    local rest; rest=$(sed 's/^.*) //' "/proc/$p/stat")
    set -- $rest
    sum=$((sum + ${12} + ${13}))
  done
  echo "$sum"
}
# peak_rss_kb PID...: summed VmHWM.
peak_rss_kb() {
  local sum=0 p v
  for p in $(for q in "$@"; do family "$q"; done); do
    v=$(awk '/^VmHWM/ {print $2}' "/proc/$p/status" 2>/dev/null || echo 0)
    sum=$((sum + ${v:-0}))
  done
  echo "$sum"
}
wait_port() {
  for _ in $(seq 200); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.05
  done
  echo "bench: nothing listening on $1" >&2; [ -n "${BENCH_DEBUG:-}" ] && cat "$DIR"/*.log >&2; exit 1
}
render() { sed -e "s|@DIR@|$DIR|g" -e "s|@PORT@|$PORT|g" -e "s|@BACKEND_PORT@|$BACKEND_PORT|g" -e "s|@BACKEND_TLS_PORT@|$BACKEND_TLS_PORT|g" \
  -e "s|@BACKEND_HTTP_PORT@|$BACKEND_HTTP_PORT|g" -e "s|@LISTEN@|$LISTEN|g" "$1" >"$2"; }

# bench_certs [KEY]: a CA and the certificate (echo.bench, 127.0.0.1) the
# TLS backend and the client-TLS proxies serve; KEY ecdsa (P-256, the
# default) or rsa (2048 bits). echo-combined.pem is HAProxy's crt file.
bench_certs() {
  local key=(-newkey ec -pkeyopt ec_paramgen_curve:P-256)
  [ "${1:-ecdsa}" = rsa ] && key=(-newkey rsa:2048)
  openssl req -x509 "${key[@]}" -nodes -days 1 -subj /CN=bench-ca \
    -keyout "$DIR/ca-key.pem" -out "$DIR/ca.pem" 2>/dev/null
  openssl req "${key[@]}" -nodes -subj /CN=echo.bench \
    -keyout "$DIR/echo-key.pem" -out "$DIR/echo.csr" 2>/dev/null
  printf 'subjectAltName=DNS:echo.bench,IP:127.0.0.1\n' >"$DIR/san.ext"
  openssl x509 -req -in "$DIR/echo.csr" -CA "$DIR/ca.pem" -CAkey "$DIR/ca-key.pem" -CAcreateserial -days 1 \
    -extfile "$DIR/san.ext" -out "$DIR/echo.pem" 2>/dev/null
  cat "$DIR/echo.pem" "$DIR/echo-key.pem" >"$DIR/echo-combined.pem"
}

# varint N: protobuf varint bytes as printf escapes.
varint() {
  local n=$1 out=""
  while [ "$n" -ge 128 ]; do out+=$(printf '\\x%02x' $(( (n & 127) | 128 ))); n=$((n >> 7)); done
  out+=$(printf '\\x%02x' "$n"); echo "$out"
}
# request_file SIZE FILE: one gRPC-framed EchoRequest{response_size: SIZE, payload: SIZE zero bytes}.
request_file() {
  local size=$1 body="$DIR/body"
  { printf "\\x10$(varint "$size")\\x52$(varint "$size")"; head -c "$size" /dev/zero; } >"$body"
  local len; len=$(stat -c %s "$body")
  { printf "\\x00$(printf '\\x%02x\\x%02x\\x%02x\\x%02x' $((len >> 24 & 255)) $((len >> 16 & 255)) $((len >> 8 & 255)) $((len & 255)))"; cat "$body"; } >"$2"
}

start_backend() {
  ENV=env1 "$BIN/echo" -addr "127.0.0.1:$BACKEND_PORT" >"$DIR/echo.log" 2>&1 &
  backend=$!; pids+=("$backend"); wait_port "$BACKEND_PORT"
}
start_http_backend() {
  ENV=env1 "$BIN/helloserver" -addr "127.0.0.1:$BACKEND_HTTP_PORT" >/dev/null 2>&1 &
  http_backend=$!; pids+=("$http_backend"); wait_port "$BACKEND_HTTP_PORT"
}
start_tls_backend() {
  if [ -n "${tls_backend:-}" ]; then kill "$tls_backend"; wait "$tls_backend" 2>/dev/null || true; fi
  ENV=env1 "$BIN/echo" -addr "127.0.0.1:$BACKEND_TLS_PORT" -tls-cert "$DIR/echo.pem" -tls-key "$DIR/echo-key.pem" >"$DIR/echo-tls.log" 2>&1 &
  tls_backend=$!; pids+=("$tls_backend"); wait_port "$BACKEND_TLS_PORT"
}
# start_target NAME: sets target_pid and target_port.
start_target() {
  target_name=$1
  case $1 in
    direct) target_pid=""; target_port=$BACKEND_PORT; return ;;
    direct-tls) target_pid=""; target_port=$BACKEND_TLS_PORT; return ;;
    direct-http) target_pid=""; target_port=$BACKEND_HTTP_PORT; return ;;
    envgate-http) render "$ROOT/scripts/bench/envgate-http.yaml.in" "$DIR/conf/envgate.yaml"
      $PIN "$BIN/gateway" -config "$DIR/conf/envgate.yaml" >"$DIR/envgate.log" 2>&1 & ;;
    envgate-base-http) render "$ROOT/scripts/bench/envgate-http.yaml.in" "$DIR/conf/envgate.yaml"
      $PIN "$BASE_GATEWAY" -config "$DIR/conf/envgate.yaml" >"$DIR/envgate.log" 2>&1 & ;;
    gofloor-http) $PIN "$BIN/bench-httpfloor" -listen "127.0.0.1:$PORT" -backend "127.0.0.1:$BACKEND_HTTP_PORT" >"$DIR/httpfloor.log" 2>&1 & ;;
    nginx-http) render "$ROOT/scripts/bench/nginx-http.conf.in" "$DIR/nginx.conf"
      $PIN nginx -p "$DIR" -c "$DIR/nginx.conf" -e "$DIR/nginx-error.log" >"$DIR/nginx.log" 2>&1 & ;;
    haproxy-http) render "$ROOT/scripts/bench/haproxy-http.cfg.in" "$DIR/haproxy.cfg"
      $PIN haproxy -db -f "$DIR/haproxy.cfg" >"$DIR/haproxy.log" 2>&1 & ;;
    envgate-tls) render "$ROOT/scripts/bench/envgate-tls.yaml.in" "$DIR/conf/envgate.yaml"
      $PIN "$BIN/gateway" -config "$DIR/conf/envgate.yaml" >"$DIR/envgate.log" 2>&1 & ;;
    envgate-base-tls) render "$ROOT/scripts/bench/envgate-tls.yaml.in" "$DIR/conf/envgate.yaml"
      $PIN "$BASE_GATEWAY" -config "$DIR/conf/envgate.yaml" >"$DIR/envgate.log" 2>&1 & ;;
    haproxy-tls) render "$ROOT/scripts/bench/haproxy-tls.cfg.in" "$DIR/haproxy.cfg"
      $PIN haproxy -db -f "$DIR/haproxy.cfg" >"$DIR/haproxy.log" 2>&1 & ;;
    envgate-overload) render "$ROOT/scripts/bench/envgate-overload.yaml.in" "$DIR/conf/envgate.yaml"
      $PIN "$BIN/gateway" -config "$DIR/conf/envgate.yaml" >"$DIR/envgate.log" 2>&1 & ;;
    envgate-ctls) render "$ROOT/scripts/bench/envgate-ctls.yaml.in" "$DIR/conf/envgate.yaml"
      $PIN "$BIN/gateway" -config "$DIR/conf/envgate.yaml" >"$DIR/envgate.log" 2>&1 & ;;
    envgate-base-ctls) render "$ROOT/scripts/bench/envgate-ctls.yaml.in" "$DIR/conf/envgate.yaml"
      $PIN "$BASE_GATEWAY" -config "$DIR/conf/envgate.yaml" >"$DIR/envgate.log" 2>&1 & ;;
    envgate-grpcserver-ctls) render "$ROOT/scripts/bench/envgate-grpcserver-ctls.yaml.in" "$DIR/conf/envgate.yaml"
      $PIN "$BIN/gateway" -config "$DIR/conf/envgate.yaml" >"$DIR/envgate.log" 2>&1 & ;;
    envgate-shared-ctls) render "$ROOT/scripts/bench/envgate-shared-ctls.yaml.in" "$DIR/conf/envgate.yaml"
      $PIN "$BIN/gateway" -config "$DIR/conf/envgate.yaml" >"$DIR/envgate.log" 2>&1 & ;;
    envgate-base-shared-ctls) render "$ROOT/scripts/bench/envgate-shared-ctls.yaml.in" "$DIR/conf/envgate.yaml"
      $PIN "$BASE_GATEWAY" -config "$DIR/conf/envgate.yaml" >"$DIR/envgate.log" 2>&1 & ;;
    nginx-ctls) render "$ROOT/scripts/bench/nginx-ctls.conf.in" "$DIR/nginx.conf"
      $PIN nginx -p "$DIR" -c "$DIR/nginx.conf" -e "$DIR/nginx-error.log" >"$DIR/nginx.log" 2>&1 & ;;
    haproxy-ctls) render "$ROOT/scripts/bench/haproxy-ctls.cfg.in" "$DIR/haproxy.cfg"
      $PIN haproxy -db -f "$DIR/haproxy.cfg" >"$DIR/haproxy.log" 2>&1 & ;;
    envgate) render "$ROOT/scripts/bench/envgate.yaml.in" "$DIR/conf/envgate.yaml"
      $PIN "$BIN/gateway" -config "$DIR/conf/envgate.yaml" >"$DIR/envgate.log" 2>&1 & ;;
    envgate-base) render "$ROOT/scripts/bench/envgate.yaml.in" "$DIR/conf/envgate.yaml"
      $PIN "$BASE_GATEWAY" -config "$DIR/conf/envgate.yaml" >"$DIR/envgate.log" 2>&1 & ;;
    envgate-grpcserver) render "$ROOT/scripts/bench/envgate-grpcserver.yaml.in" "$DIR/conf/envgate.yaml"
      $PIN "$BIN/gateway" -config "$DIR/conf/envgate.yaml" >"$DIR/envgate.log" 2>&1 & ;;
    envgate-shared) render "$ROOT/scripts/bench/envgate-shared.yaml.in" "$DIR/conf/envgate.yaml"
      $PIN "$BIN/gateway" -config "$DIR/conf/envgate.yaml" >"$DIR/envgate.log" 2>&1 & ;;
    envgate-base-shared) render "$ROOT/scripts/bench/envgate-shared.yaml.in" "$DIR/conf/envgate.yaml"
      $PIN "$BASE_GATEWAY" -config "$DIR/conf/envgate.yaml" >"$DIR/envgate.log" 2>&1 & ;;
    nginx) render "$ROOT/scripts/bench/nginx.conf.in" "$DIR/nginx.conf"
      $PIN nginx -p "$DIR" -c "$DIR/nginx.conf" -e "$DIR/nginx-error.log" >"$DIR/nginx.log" 2>&1 & ;;
    grpcgo-floor) "$BIN/bench-floor" -listen "127.0.0.1:$PORT" -backend "127.0.0.1:$BACKEND_PORT" >"$DIR/floor.log" 2>&1 & ;;
    grpc-proxy) "$BIN/bench-grpcproxy" -listen "127.0.0.1:$PORT" -backend "127.0.0.1:$BACKEND_PORT" >"$DIR/grpcproxy.log" 2>&1 & ;;
    haproxy) render "$ROOT/scripts/bench/haproxy.cfg.in" "$DIR/haproxy.cfg"
      $PIN haproxy -db -f "$DIR/haproxy.cfg" >"$DIR/haproxy.log" 2>&1 & ;;
  esac
  target_pid=$!; pids+=("$target_pid"); target_port=$PORT; wait_port "$PORT"
}
stop_target() {
  [ -n "${BENCH_DEBUG:-}" ] && cat "$DIR"/*.log >&2
  [ -n "$target_pid" ] || return 0
  kill "$target_pid"; wait "$target_pid" 2>/dev/null || true
}

# ghz_latency PORT SIZE N: prints "p50_ms p99_ms errors". CLIENT_TLS=1
# speaks TLS to the target (the bench CA, echo.bench).
ghz_latency() {
  local payload; payload=$(head -c "$2" /dev/zero | base64 -w0)
  local sec=(--insecure)
  [ "${CLIENT_TLS:-0}" = 1 ] && sec=(--cacert "$DIR/ca.pem" --cname echo.bench)
  timeout 300 "$BIN/ghz" "${sec[@]}" --proto "$ROOT/proto/echo.proto" --call echo.EchoService.Call \
    -m '{"env":"env1"}' -d "{\"response_size\":$2,\"payload\":\"$payload\"}" \
    -c "$CONC" --connections "$CONNS" -n "$3" --timeout 20s "127.0.0.1:$1" >"$DIR/ghz.txt"
  awk '
    function ms(v, u) { return u == "s" ? v * 1000 : u == "ms" ? v : (u == "µs" || u == "us") ? v / 1000 : v / 1e6 }
    /^  50 % in/ { p50 = ms($4, $5) }
    /^  99 % in/ { p99 = ms($4, $5) }
    /^  \[OK\]/ { ok = $2 }
    END { printf "%.3f %.3f %d\n", p50, p99, ok }' "$DIR/ghz.txt"
}
# h2load_rps PORT FILE N: prints req/s; fails unless every call got HTTP 200.
h2load_rps() {
  timeout 300 h2load -n "$3" -c "$CONNS" -m $((CONC / CONNS)) -d "$2" \
    -H 'content-type: application/grpc' -H 'te: trailers' -H 'env: env1' \
    "$( [ "${CLIENT_TLS:-0}" = 1 ] && echo https || echo http )://127.0.0.1:$1/echo.EchoService/Call" >"$DIR/h2load.txt"
  grep -q "requests: $3 total, $3 started, $3 done, $3 succeeded" "$DIR/h2load.txt" ||
    { echo "bench: h2load calls failed:" >&2; cat "$DIR/h2load.txt" >&2; exit 1; }
  awk '/^finished in/ { gsub(",", ""); print $4 }' "$DIR/h2load.txt"
}

# h2load_http PORT PROTO N: GET / with env: env1 over PROTO (h1: HTTP/1.1,
# CONC connections; h2: h2c, CONNS connections of CONC/CONNS streams);
# prints "rps p50_ms p99_ms"; fails unless every request got a 2xx.
h2load_http() {
  local args=(-c "$CONNS" -m $((CONC / CONNS)))
  [ "$2" = h1 ] && args=(--h1 -c "$CONC" -m 1)
  timeout 300 h2load "${args[@]}" -n "$3" -H 'env: env1' --log-file "$DIR/h2load-req.log" \
    "http://127.0.0.1:$1/" >"$DIR/h2load.txt"
  grep -q "requests: $3 total, $3 started, $3 done, $3 succeeded" "$DIR/h2load.txt" && grep -q "status codes: $3 2xx" "$DIR/h2load.txt" ||
    { echo "bench: h2load requests failed:" >&2; cat "$DIR/h2load.txt" >&2; exit 1; }
  local rps; rps=$(awk '/^finished in/ { gsub(",", ""); print $4 }' "$DIR/h2load.txt")
  # The log's third column is each request's time to its response's end, in us.
  sort -n -k3,3 "$DIR/h2load-req.log" | awk -v rps="$rps" '{ t[NR] = $3 } END { printf "%s %.3f %.3f\n", rps, t[int(NR * 0.5)] / 1000, t[int(NR * 0.99)] / 1000 }'
}

# measure_http TARGET...: one row per protocol and target into $results.
measure_http() {
  local n=40000
  for proto in h1 h2; do
    LISTEN=""; [ "$proto" = h2 ] && LISTEN=http2
    for target in "$@"; do
      start_target "$target"
      h2load_http "$target_port" "$proto" 2000 >/dev/null # warm up connections
      b0=$(cpu_ticks "$http_backend"); p0=0; [ -n "$target_pid" ] && p0=$(cpu_ticks "$target_pid")
      read -r rps p50 p99 < <(h2load_http "$target_port" "$proto" "$n")
      b1=$(cpu_ticks "$http_backend"); p1=0; [ -n "$target_pid" ] && p1=$(cpu_ticks "$target_pid")
      rss=0; [ -n "$target_pid" ] && rss=$(peak_rss_kb "$target_pid")
      awk -v s="$proto" -v t="$target$tag" -v rps="$rps" -v p50="$p50" -v p99="$p99" -v pc=$((p1 - p0)) -v bc=$((b1 - b0)) \
          -v n="$n" -v tick="$TICK" -v rss="$rss" \
          'BEGIN { printf "%s %s %.0f %.3f %.3f %.3f %.3f %.1f %d %.3f\n", s, t, rps, p50, p99, pc / tick / n * 10000, bc / tick / n * 10000, rss / 1024, 0, 0 }' >>"$results"
      stop_target
    done
  done
}

# measure TARGET...: one row per size and target into $results, the backend
# being the process $measured_backend.
measure() {
  for size in $SIZES; do
    if [ "$size" -ge 65536 ]; then n_ghz=3000; n_h2=8000; else n_ghz=20000; n_h2=60000; fi
    request_file "$size" "$DIR/req.bin"
    for target in "$@"; do
      CLIENT_TLS=0
      case $target in direct-tls|*-ctls) CLIENT_TLS=1 ;; esac
      # The client-TLS rows' direct-tls reaches the TLS backend; their proxies the h2c one.
      mb=$measured_backend; [ "$target" = direct-tls ] && mb=$tls_backend
      start_target "$target"
      ghz_latency "$target_port" "$size" 500 >/dev/null # warm up connections and caches
      g0=0; [ -n "$target_pid" ] && g0=$(cpu_ticks "$target_pid")
      read -r p50 p99 ok < <(ghz_latency "$target_port" "$size" "$n_ghz")
      g1=0; [ -n "$target_pid" ] && g1=$(cpu_ticks "$target_pid")
      failed=$((n_ghz - ok))
      if [ "$failed" != 0 ]; then
        echo "bench: $target, $size B: $failed of $n_ghz ghz calls failed:" >&2
        sed -n '/Status code distribution/,$p' "$DIR/ghz.txt" >&2
        # The other proxies' failures are results; envgate's or the backend's end the bench.
        case $target in direct*|envgate*) exit 1 ;; esac
      fi
      b0=$(cpu_ticks "$mb"); p0=0; [ -n "$target_pid" ] && p0=$(cpu_ticks "$target_pid")
      rps=$(h2load_rps "$target_port" "$DIR/req.bin" "$n_h2")
      b1=$(cpu_ticks "$mb"); p1=0; [ -n "$target_pid" ] && p1=$(cpu_ticks "$target_pid")
      rss=0; [ -n "$target_pid" ] && rss=$(peak_rss_kb "$target_pid")
      read -r rp50 rp99 rfailed rout < <(rate_latency "$size")
      if [ "$rfailed" != 0 ]; then
        echo "bench: $target, $size B at a fixed rate: $rfailed calls failed or were dropped (total ok refused other dropped p50 p99 p99.9 rate: $rout)" >&2
        case $target in direct*|envgate*) exit 1 ;; esac
      fi
      awk -v s="$size" -v t="$target$tag" -v rps="$rps" -v p50="$p50" -v p99="$p99" \
          -v pc=$((p1 - p0)) -v bc=$((b1 - b0)) -v n="$n_h2" -v tick="$TICK" -v rss="$rss" -v failed="$failed" \
          -v gc=$((g1 - g0)) -v ng="$n_ghz" -v rp50="$rp50" -v rp99="$rp99" \
          'BEGIN { printf "%s %s %.0f %.3f %.3f %.3f %.3f %.1f %d %.3f %.3f %.3f\n", s, t, rps, p50, p99, pc / tick / n * 10000, bc / tick / n * 10000, rss / 1024, failed, gc / tick / ng * 10000, rp50, rp99 }' >>"$results"
      stop_target
    done
  done
}

# rate_latency SIZE: "p50_ms p99_ms failed output" of calls sent open
# loop at the fixed rate LATENCY_RPS gives SIZE (scripts/bench/load -mode
# rate: each call's latency counts from when it was due, so a proxy that
# falls behind is not excused by sending later), "0 0 0 -" without one.
# At saturation (the ghz columns), p99 measures how the proxy, the client
# and the backend share two cores; at a rate every target sustains, it
# measures what the hop adds.
rate_latency() {
  local rate="" kv
  for kv in $LATENCY_RPS; do [ "${kv%%:*}" = "$1" ] && rate=${kv#*:}; done
  [ -n "$rate" ] || { echo "0 0 0 -"; return 0; }
  local tls=(); [ "${CLIENT_TLS:-0}" = 1 ] && tls=(-ca "$DIR/ca.pem" -name echo.bench)
  local out; out=$(load -mode rate -rps "$rate" -duration "$LATENCY_DURATION" -conns "$CONNS" -msg "$1" "${tls[@]}") || out="0 -1 0 0 0 0 0 0 0"
  # total ok refused other dropped p50 p99 p99.9 rate
  local total ok p50 p99
  read -r total ok _ _ _ p50 p99 _ _ <<<"$out"
  echo "$p50 $p99 $((total - ok)) ${out// /,}"
}

# table DIRECT ENVGATE: the rows of $results, with ratios to the rows of
# targets DIRECT and ENVGATE of the same size.
table() {
  awk -v direct="$1" -v envgate="$2" '
    { size[NR] = $1; tgt[NR] = $2; rps[NR] = $3; p50[NR] = $4; p99[NR] = $5; pcpu[NR] = $6; bcpu[NR] = $7; rss[NR] = $8; fail[NR] = $9; gcpu[NR] = $10
      rp50[NR] = $11; rp99[NR] = $12; if ($12 > 0) rated = 1
      key = $1 SUBSEP $2; R[key] = $3; P99[key] = $5; C[key] = $6; RP99[key] = $12 }
    function ratio(a, b) { return b > 0 ? sprintf("%.2f", a / b) : "-" }
    function round(t) { return index(t, "@") ? substr(t, index(t, "@")) : "" }
    END {
      printf "%-6s %-12s %9s %8s %8s %10s %8s %10s %8s %6s | %-22s | %-22s", "size", "target", "rps", "p50 ms", "p99 ms", "proxy cpu", "cpu ghz", "backnd cpu", "RSS MB", "failed", "vs " direct " rps/p99", "vs " envgate " rps/p99/cpu"
      if (rated) printf " | %8s %8s %-9s", "rate p50", "rate p99", "vs " direct " p99"
      printf "\n"
      for (i = 1; i <= NR; i++) {
        d = size[i] SUBSEP direct round(tgt[i]); e = size[i] SUBSEP envgate round(tgt[i])
        printf "%-6s %-12s %9d %8.3f %8.3f %10.3f %8.3f %10.3f %8.1f %6d | %-22s | %-22s", size[i], tgt[i], rps[i], p50[i], p99[i], pcpu[i], gcpu[i], bcpu[i], rss[i], fail[i],
          ratio(rps[i], R[d]) " / " ratio(p99[i], P99[d]),
          ratio(rps[i], R[e]) " / " ratio(p99[i], P99[e]) " / " ratio(pcpu[i], C[e])
        if (rated) printf " | %8.3f %8.3f %-9s", rp50[i], rp99[i], ratio(rp99[i], RP99[d])
        printf "\n"
      }
    }' "$results"
}

# rounds FUNCTION TARGET...: FUNCTION TARGET... once per round (ROUNDS),
# the rows of each round tagged with it. Each round starts one target
# later than the one before (round 2 measures the second target first and
# the first last): a row's place in the round matters here (the backend
# that just served the direct row costs more per request for the row
# after it), and rotating the order spreads that over every target.
rounds() {
  local f=$1 r
  shift
  local targets=("$@") n=$#
  for r in $(seq "$ROUNDS"); do
    tag=""; [ "$ROUNDS" -gt 1 ] && tag="@$r"
    local k=$(((r - 1) % n))
    "$f" "${targets[@]:k}" "${targets[@]:0:k}"
  done
  tag=""
}

# summary FILE SIZECOL TARGETCOL ENVGATE PEERS METRICS: with ROUNDS > 1,
# per size (column SIZECOL of FILE; 0: one size) the median over the
# rounds of each metric (METRICS: "label=column ...") for each target,
# then ENVGATE's ratio to each of PEERS ("target ...") within each round:
# their median, lowest and highest. A ratio needs both values above 0. A
# metric "label=a/b" is column a over column b of the same row (the
# proxy's CPU per unit of the backend's, which takes out how fast the
# machine was during that row).
summary() {
  [ "$ROUNDS" -gt 1 ] || return 0
  awk -v scol="$2" -v tcol="$3" -v envgate="$4" -v peers="$5" -v metrics="$6" -v rounds="$ROUNDS" '
    function median(list,   a, n, i, j, t) {
      n = split(list, a, " ")
      for (i = 2; i <= n; i++) for (j = i; j > 1 && a[j - 1] + 0 > a[j] + 0; j--) { t = a[j]; a[j] = a[j - 1]; a[j - 1] = t }
      return n == 0 ? 0 : n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
    }
    function lowest(list,   a, n, i, m) { n = split(list, a, " "); m = a[1]; for (i = 2; i <= n; i++) if (a[i] + 0 < m + 0) m = a[i]; return m }
    function highest(list,   a, n, i, m) { n = split(list, a, " "); m = a[1]; for (i = 2; i <= n; i++) if (a[i] + 0 > m + 0) m = a[i]; return m }
    BEGIN { nm = split(metrics, spec, " "); for (k = 1; k <= nm; k++) { split(spec[k], kv, "="); label[k] = kv[1]; split(kv[2], ab, "/"); col[k] = ab[1]; per[k] = ab[2] } }
    function value(k) { return per[k] == "" ? $(col[k]) : $(per[k]) > 0 ? $(col[k]) / $(per[k]) : 0 }
    {
      s = scol ? $scol : "-"; t = $tcol; r = ""
      if (i = index(t, "@")) { r = substr(t, i + 1); t = substr(t, 1, i - 1) }
      if (!(s in seenS)) { seenS[s] = 1; sizes[++ns] = s }
      if (!((s, t) in seenT)) { seenT[s, t] = 1; tgts[s, ++nt[s]] = t }
      for (k = 1; k <= nm; k++) { v = value(k); V[s, t, r, k] = v; L[s, t, k] = L[s, t, k] " " v }
      R[r] = 1
    }
    END {
      printf "medians of %d rounds, then %s'"'"'s ratio to each target within each round: median [lowest, highest]\n", rounds, envgate
      np = split(peers, peer, " ")
      for (a = 1; a <= ns; a++) {
        s = sizes[a]
        for (b = 1; b <= nt[s]; b++) {
          t = tgts[s, b]; line = sprintf("%-6s %-22s", s, t)
          for (k = 1; k <= nm; k++) line = line sprintf(" %s %.3f", label[k], median(L[s, t, k]))
          print line
        }
        for (p = 1; p <= np; p++) {
          if (!((s, peer[p]) in seenT) || peer[p] == envgate) continue
          line = sprintf("%-6s %-22s", s, "vs " peer[p])
          for (k = 1; k <= nm; k++) {
            q = ""
            for (r in R) { x = V[s, envgate, r, k]; y = V[s, peer[p], r, k]; if (x > 0 && y > 0) q = q " " sprintf("%.3f", x / y) }
            line = line (q == "" ? sprintf(" %s -", label[k]) : sprintf(" %s %.2f [%.2f, %.2f]", label[k], median(q), lowest(q), highest(q)))
          }
          print line
        }
      }
    }' "$1"
}

# load ARGS...: bench-load against the target started last; a failure names
# the target and the mode, since its error alone does not say which proxy.
load() {
  timeout 600 "$BIN/bench-load" -addr "127.0.0.1:$target_port" "$@" && return 0
  local rc=$?
  echo "bench: bench-load $1 $2 against ${target_name:-?}${tag:-} failed (exit $rc)" >&2
  return "$rc"
}

# measure_streams TARGET...: server-streaming rows into $results-streams
# and ping-pong rows into $results-pingpong (h2c; the backend is $backend).
measure_streams() {
  for msg in 1024 65536; do
    # 64 KiB messages carry a GB in seconds; 1 KiB ones cost a message's
    # work per KiB, so 256 MB of them take as long.
    bytes=1000000000; [ "$msg" = 1024 ] && bytes=256000000
    for target in "$@"; do
      start_target "$target"
      read -r mbps cpu bcpu < <(load -mode stream -pid "${target_pid:-0}" -backend-pid "$backend" -streams 10 -msg "$msg" -bytes "$bytes")
      rss=0; [ -n "$target_pid" ] && rss=$(peak_rss_kb "$target_pid")
      echo "$msg $target$tag $mbps $cpu $bcpu $((rss / 1024))" >>"$DIR/results-streams"
      stop_target
    done
  done
  for target in "$@"; do
    start_target "$target"
    echo "$target$tag $(load -mode pingpong -pid "${target_pid:-0}" -streams 100 -rounds 300 -msg 1024)" >>"$DIR/results-pingpong"
    stop_target
  done
}

# measure_conns TARGET...: the connection rows into $results-conns (client
# TLS; direct-tls measures the TLS backend itself).
measure_conns() {
  for target in "$@"; do
    start_target "$target"
    pid=$target_pid; [ "$target" = direct-tls ] && pid=$tls_backend
    line=$(load -mode conns -ca "$DIR/ca.pem" -pid "$pid" -conns "$CONN_COUNT" -active "$CONN_ACTIVE" -calls 30000 -idle 15s -conns-rps "$CONN_RPS" -conns-duration 5s)
    echo "$target $line" >>"$DIR/results-conns"
    stop_target
  done
}

# measure_envs N...: envgate routing to N environments of 3 endpoints each
# on the manyecho backend; one row per N into $results-envs.
measure_envs() {
  "$BIN/bench-manyecho" -base "$MANY_BASE" -n $((3 * ENV_COUNT)) >"$DIR/manyecho.log" 2>&1 &
  local many=$!; pids+=("$many"); wait_port $((MANY_BASE + 3 * ENV_COUNT - 1))
  for n in "$@"; do
    {
      echo "listeners: [{address: 127.0.0.1:$PORT}]"
      echo "environments: [$(seq -s, -f 'env%g' 1 "$n")]"
      echo "discovery:"
      echo "  static:"
      for i in $(seq 0 $((n - 1))); do
        p=$((MANY_BASE + 3 * i))
        echo "    env$((i + 1)): [127.0.0.1:$p, 127.0.0.1:$((p + 1)), 127.0.0.1:$((p + 2))]"
      done
      echo "upstream: {idleTimeout: 10s}"
      echo "accessLog: false"
    } >"$DIR/conf/envgate.yaml"
    "$BIN/gateway" -config "$DIR/conf/envgate.yaml" >"$DIR/envgate.log" 2>&1 &
    target_pid=$!; pids+=("$target_pid"); target_port=$PORT; wait_port "$PORT"
    echo "$n $(load -mode envs -envs "$n" -pid "$target_pid" -calls 30000 -conns 10 -inflight 50 \
      -metrics http://127.0.0.1:15000/metrics -idle-wait 25s)" >>"$DIR/results-envs"
    stop_target
  done
  kill "$many"; wait "$many" 2>/dev/null || true
}

# cpu_cgroup: makes a cgroup limited to OVERLOAD_CPU millicores (a CFS
# quota per 10 ms period) and prints its directory: cgroup v2 (cpu.max) or
# the v1 cpu controller (cpu.cfs_*); fails, saying why, where neither can
# be written (it needs root).
cpu_cgroup() {
  local quota=$((OVERLOAD_CPU * 10)) cg
  if [ -f /sys/fs/cgroup/cgroup.controllers ]; then
    cg=/sys/fs/cgroup/envgate-bench-$$
    grep -qw cpu /sys/fs/cgroup/cgroup.subtree_control 2>/dev/null || echo +cpu >/sys/fs/cgroup/cgroup.subtree_control 2>/dev/null || true
    if mkdir "$cg" 2>/dev/null; then
      echo "$quota 10000" >"$cg/cpu.max" 2>/dev/null && { echo "$cg"; return 0; }
      rmdir "$cg"
    fi
  elif [ -d /sys/fs/cgroup/cpu ]; then
    cg=/sys/fs/cgroup/cpu/envgate-bench-$$
    if mkdir "$cg" 2>/dev/null; then
      { echo 10000 >"$cg/cpu.cfs_period_us" && echo "$quota" >"$cg/cpu.cfs_quota_us"; } 2>/dev/null && { echo "$cg"; return 0; }
      rmdir "$cg"
    fi
  fi
  echo "bench: the overload rows need a cgroup with a CPU limit, and none can be made here (run as root, or OVERLOAD_ROWS=0)" >&2
  return 1
}

# measure_overload CGROUP TARGET...: envgate's sustained rate, then twice it through each
# target; rows into $results-overload, the rate into $overload_rate.
# Each target runs under a CPU limit of OVERLOAD_CPU millicores (a cgroup's
# CFS quota, as a pod's CPU limit is; Go sizes GOMAXPROCS from it), while
# the client and the backend keep both cores: on two shared cores, twice an
# unlimited proxy's rate overloads the client before the proxy, and then
# measures the client.
measure_overload() {
  local cg=$1
  shift
  PIN="$ROOT/scripts/bench/incgroup $cg"
  start_target envgate
  local sustained; sustained=$(load -mode envs -envs 1 -calls 20000 -conns 10 -inflight 50 | awk '{ print $1 }')
  stop_target
  overload_rate=$((sustained * 2))
  for target in "$@"; do
    start_target "$target"
    echo "$target $(load -mode rate -rps "$overload_rate" -duration 10s -conns 10 -msg 100)" >>"$DIR/results-overload"
    stop_target
  done
  PIN=""
  rmdir "$cg"
}

start_backend
results="$DIR/results"
measured_backend=$backend
# BASE_GATEWAY=path/to/gateway adds its row (envgate-base): a change
# measured against the gateway before it, in the same run.
GRPC_TARGETS=${GRPC_TARGETS:-"direct envgate ${BASE_GATEWAY:+envgate-base }envgate-grpcserver grpcgo-floor grpc-proxy nginx haproxy"}
# GRPC_TARGETS=" " skips this table.
if [ -n "${GRPC_TARGETS// /}" ]; then
  measure $GRPC_TARGETS
  echo
  echo "unary echo.EchoService/Call, $CONC concurrent calls over $CONNS connections; request and response payload of SIZE bytes"
  echo "rps: h2load; p50/p99: ghz; CPU: utime+stime seconds per 10k calls of the h2load run (cpu ghz: of the ghz run); RSS: peak (VmHWM) of the proxy's processes; failed: ghz calls that did not return OK"
  table direct envgate
fi

if [ "$HTTP_ROWS" = 1 ]; then
  start_http_backend
  results="$DIR/results-http"
  ROUNDS=$HTTP_ROUNDS rounds measure_http direct-http envgate-http ${BASE_GATEWAY:+envgate-base-http }gofloor-http nginx-http haproxy-http
  echo
  echo "HTTP: GET / of the helloserver (Go net/http, HTTP/1.1 and h2c), env: env1; h1: $CONC HTTP/1.1 connections, h2: $CONNS h2c connections of $((CONC / CONNS)) streams"
  echo "rps, p50/p99 (from h2load's per-request log) and CPU per 10k requests of the same h2load run (cpu ghz: not measured, 0)"
  table direct-http envgate-http
  ROUNDS=$HTTP_ROUNDS summary "$results" 1 2 envgate-http "nginx-http haproxy-http gofloor-http envgate-base-http direct-http" "cpu=6 cpu/backend=6/7 p99=5"
fi

if [ "$UPSTREAM_TLS" = 1 ]; then
  bench_certs
  start_tls_backend
  results="$DIR/results-tls"
  measured_backend=$tls_backend
  : >"$results"
  rounds measure ${UPSTREAM_TLS_TARGETS:-direct-tls envgate-tls ${BASE_GATEWAY:+envgate-base-tls }haproxy-tls}
  echo
  echo "upstream TLS: the backend behind TLS 1.3 (ECDSA P-256, a bench CA, the name echo.bench verified); direct-tls is the client speaking TLS to it, the proxies take h2c from the client and TLS to the backend"
  table direct-tls envgate-tls
  summary "$results" 1 2 envgate-tls "haproxy-tls envgate-base-tls direct-tls" "cpu=6 cpu/backend=6/7 p99=5"
fi

if [ "$CLIENT_TLS_ROWS" = 1 ]; then
  results="$DIR/results-ctls"
  measured_backend=$backend
  for key in ${CLIENT_TLS_KEYS:-ecdsa rsa}; do
    bench_certs "$key"
    start_tls_backend
    : >"$results"
    rounds measure ${CLIENT_TLS_TARGETS:-direct-tls envgate-ctls ${BASE_GATEWAY:+envgate-base-ctls }envgate-grpcserver-ctls nginx-ctls haproxy-ctls}
    echo
    echo "client TLS ($key): the client speaks TLS 1.3 to each proxy (one certificate, $( [ "$key" = rsa ] && echo "RSA 2048" || echo "ECDSA P-256" )), h2c to the backend; direct-tls speaks TLS to the backend itself. Columns as in the first table."
    table direct-tls envgate-ctls
    summary "$results" 1 2 envgate-ctls "nginx-ctls haproxy-ctls envgate-base-ctls direct-tls" "cpu=6 cpu/backend=6/7 p99=5 rate-p99=12"
  done
fi

if [ "$STREAM_ROWS" = 1 ]; then
  rounds measure_streams ${STREAM_TARGETS:-direct envgate ${BASE_GATEWAY:+envgate-base }envgate-grpcserver nginx haproxy}
  echo
  echo "server streaming: 10 concurrent ServerStream calls on one h2c connection, responses of MSG bytes (1 KiB: 256 MB in all, 64 KiB: 1 GB); CPU: seconds per GB received"
  awk '{ key = $1 SUBSEP $2; M[key] = $3; C[key] = $4; row[NR] = $0 }
    function ratio(a, b) { return b > 0 ? sprintf("%.2f", a / b) : "-" }
    function round(t) { return index(t, "@") ? substr(t, index(t, "@")) : "" }
    END {
      printf "%-6s %-19s %9s %12s %12s %7s | %-10s | %-16s\n", "msg", "target", "MB/s", "proxy cpu/GB", "backnd cpu/GB", "RSS MB", "vs direct", "vs haproxy cpu/GB"
      for (i = 1; i <= NR; i++) { split(row[i], f, " ")
        printf "%-6s %-19s %9.1f %12.3f %12.3f %7d | %-10s | %-16s\n", f[1], f[2], f[3], f[4], f[5], f[6], ratio(f[3], M[f[1] SUBSEP "direct" round(f[2])]), ratio(f[4], C[f[1] SUBSEP "haproxy" round(f[2])]) } }' "$DIR/results-streams"
  summary "$DIR/results-streams" 1 2 envgate "haproxy nginx envgate-base envgate-grpcserver" "cpu/GB=4 cpu/backend=4/5 MB/s=3"
  echo
  echo "bidi ping-pong: 100 concurrent BidiStreams on one h2c connection, 1 KiB each way, one message in flight per stream; proxy CPU seconds per 10k round trips"
  awk '{ P[$1] = $3; C[$1] = $5; row[NR] = $0 }
    function ratio(a, b) { return b > 0 ? sprintf("%.2f", a / b) : "-" }
    function round(t) { return index(t, "@") ? substr(t, index(t, "@")) : "" }
    END {
      printf "%-19s %8s %8s %10s %10s | %-12s | %-10s\n", "target", "p50 ms", "p99 ms", "rtt/s", "proxy cpu", "vs direct p99", "vs haproxy cpu"
      for (i = 1; i <= NR; i++) { split(row[i], f, " ")
        printf "%-19s %8.3f %8.3f %10d %10.3f | %-13s | %-10s\n", f[1], f[2], f[3], f[4], f[5], ratio(f[3], P["direct" round(f[1])]), ratio(f[5], C["haproxy" round(f[1])]) } }' "$DIR/results-pingpong"
  summary "$DIR/results-pingpong" 0 1 envgate "haproxy nginx envgate-base direct" "p99=3 cpu=5"
fi

if [ "$CONN_ROWS" = 1 ]; then
  bench_certs ecdsa
  start_tls_backend
  measure_conns ${CONN_TARGETS:-direct-tls envgate-ctls nginx-ctls haproxy-ctls}
  echo
  echo "connections: $CONN_COUNT TLS connections (ECDSA P-256), one 100 B call each, then 15 s idle with keepalive pings every 10 s; then 30,000 calls on $CONN_ACTIVE of them (one in flight each) and on 10 ($((CONN_ACTIVE / 10)) in flight each)"
  echo "RSS: of the process (and workers) before, with the connections idle, and the peak; KiB/conn: (idle - before) / connections; cpu: the target's seconds per 10k calls; client: the load client's (same machine)"
  # Fields: 1 target, 2-5 RSS, 6-9 active closed loop (rps p99 cpu client),
  # 10-13 the same on 10, 14-16 active open loop (p50 p99 cpu), 17-19 the
  # same on 10.
  awk '{ K[$1] = $4; row[NR] = $0 }
    function ratio(a, b) { return b > 0 ? sprintf("%.2f", a / b) : "-" }
    END {
      printf "%-13s %8s %8s %8s %8s | %8s %8s %7s %7s | %8s %8s %7s %7s | %-10s | %-16s\n", "target", "RSS0 MB", "idle MB", "KiB/conn", "peak MB", "rps act", "p99 act", "cpu act", "client", "rps 10", "p99 10", "cpu 10", "client", "vs haproxy", "active/10 rps,p99"
      for (i = 1; i <= NR; i++) { split(row[i], f, " ")
        printf "%-13s %8.1f %8.1f %8.1f %8.1f | %8d %8.3f %7.3f %7.3f | %8d %8.3f %7.3f %7.3f | %-10s | %-16s\n", f[1], f[2], f[3], f[4], f[5], f[6], f[7], f[8], f[9], f[10], f[11], f[12], f[13],
          ratio(f[4], K["haproxy-ctls"]), ratio(f[6], f[10]) "," ratio(f[7], f[11]) } }' "$DIR/results-conns"
  echo "the same connections, open loop: $CONN_RPS calls/s for 5 s on $CONN_ACTIVE of them, then on 10; latency from when each call was due"
  awk '{ row[NR] = $0 }
    function ratio(a, b) { return b > 0 ? sprintf("%.2f", a / b) : "-" }
    END {
      printf "%-13s %8s %8s %7s | %8s %8s %7s | %-22s\n", "target", "p50 act", "p99 act", "cpu act", "p50 10", "p99 10", "cpu 10", "active/10 p50,p99,cpu"
      for (i = 1; i <= NR; i++) { split(row[i], f, " ")
        printf "%-13s %8.3f %8.3f %7.3f | %8.3f %8.3f %7.3f | %-22s\n", f[1], f[14], f[15], f[16], f[17], f[18], f[19],
          ratio(f[14], f[17]) "," ratio(f[15], f[18]) "," ratio(f[16], f[19]) } }' "$DIR/results-conns"
fi

if [ "$ENV_ROWS" = 1 ]; then
  measure_envs 2 "$ENV_COUNT"
  echo
  echo "environments: envgate routing to N environments of 3 endpoints each (one manyecho process), 30,000 unary 100 B calls spread evenly over them, 50 in flight over 10 h2c connections, after 6 calls per environment connected every endpoint"
  echo "cpu: seconds per 10k calls; RSS, descriptors and goroutines after the run; then 25 s without calls (upstream.idleTimeout 10s, checked every 2.5 s, a retired connection closed after its grace) and one call per environment: descriptors before it, calls failed"
  awk '{ C[NR] = $4; row[NR] = $0 }
    function ratio(a, b) { return b > 0 ? sprintf("%.2f", a / b) : "-" }
    END {
      printf "%-6s %8s %8s %8s %8s %6s %10s | %9s %12s | %-14s\n", "envs", "rps", "p99 ms", "cpu", "RSS MB", "fds", "goroutines", "idle fds", "failed after", "vs first cpu"
      for (i = 1; i <= NR; i++) { split(row[i], f, " ")
        printf "%-6s %8d %8.3f %8.3f %8.1f %6d %10d | %9d %12d | %-14s\n", f[1], f[2], f[3], f[4], f[5], f[6], f[7], f[8], f[9], ratio(f[4], C[1]) } }' "$DIR/results-envs"
fi

if [ "$OVERLOAD_ROWS" = 1 ] && overload_cg=$(cpu_cgroup); then
  measure_overload "$overload_cg" envgate ${BASE_GATEWAY:+envgate-base }envgate-overload nginx haproxy
  echo
  echo "overload: unary 100 B calls open loop at $overload_rate/s (twice envgate's closed-loop rate, 50 in flight, in this run) for 10 s over 10 h2c connections; each proxy limited to $OVERLOAD_CPU millicores of CPU (CFS quota per 10 ms), client and backend not; latency from when each call was due; refused: RESOURCE_EXHAUSTED or UNAVAILABLE; dropped: due while the client had 20,000 in flight"
  echo "envgate-overload is envgate with limits.maxConcurrentCalls: 128"
  awk '{ row[NR] = $0 }
    END {
      printf "%-17s %8s %8s %8s %8s %8s %8s | %9s %9s %9s %9s\n", "target", "due", "ok", "refused", "other", "dropped", "refused%", "p50 ms", "p99 ms", "p99.9 ms", "ok/s"
      for (i = 1; i <= NR; i++) { split(row[i], f, " ")
        printf "%-17s %8d %8d %8d %8d %8d %7.1f%% | %9.1f %9.1f %9.1f %9d\n", f[1], f[2], f[3], f[4], f[5], f[6], f[4] / f[2] * 100, f[7], f[8], f[9], f[10] } }' "$DIR/results-overload"
fi
