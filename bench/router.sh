#!/usr/bin/env bash
# Benchmark: tug's router against nginx and HAProxy fronting the same three backends (single-process
# nginx answering `return 200 "ok"`, bench/router/backend.sh: with TUG=1 the very instances tug's
# daemon runs, so every proxy meets the same processes), same machine, same load generator (wrk,
# h2load for HTTP/2), same concurrency, interleaved in one run. Goal (issue 4): tug's requests/s at
# least the better peer's, and its p99 at most 1.2x the better peer's.
#
# Knobs (environment): ROUNDS (3), DURATION (10s) per wrk run, LOADS ("64 8": wrk connections, the
# first the throughput run, the second latency-focused), WRK_THREADS (2), PROXY_WORKERS (2: nginx
# worker_processes, HAProxy nbthread; tug's daemon runs one router thread per core), H2 (1), H2_DURATION (5s),
# H2_LOADS ("8x8 8x1": h2load clients x streams each, 64 and 8 streams in flight), TUG (1: also `tug up -d` the generated stack),
# TUG_LABEL (what the daemon serves the port with today), TUG_BIN (default: a fresh release build),
# TUG_ROUTER_CMD (a command starting a router on 127.0.0.1:$LISTEN_PORT in front of $BACKENDS, for a
# router that is not yet in the daemon; PROTOCOL=tcp is added for the TCP section, e.g.
# `cargo build --release -p tug-router --example front` then
# `TUG=0 TUG_ROUTER_CMD=target/release/examples/front bench/router.sh`), BASE_PORT (31800).
# TCP section (TCP=1): redis-server direct vs through HAProxy `mode tcp`, TUG_ROUTER_CMD with
# PROTOCOL=tcp and (TUG=1) the daemon serving a redis stack's `port:` (gen_stack.py --redis), each
# `redis-benchmark --csv -n $REDIS_N -c $REDIS_C -t $REDIS_TESTS -P 1` (200000, 50, ping_inline,set,get),
# interleaved for ROUNDS rounds; reported as ratios to direct and to HAProxy, with p99 and CPU a request.
set -euo pipefail
cd "$(dirname "$0")/.."
need() { command -v "$1" >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null; }; }
need nginx nginx-light; need haproxy haproxy; need wrk wrk; need h2load nghttp2-client
tcp=${TCP:-1}
[ "$tcp" = 1 ] && { need redis-server redis-server; need redis-benchmark redis-tools; }

rounds=${ROUNDS:-3}
duration=${DURATION:-10s}
loads=${LOADS:-64 8}
wrk_threads=${WRK_THREADS:-2}
workers=${PROXY_WORKERS:-2}
h2=${H2:-1}
h2_duration=${H2_DURATION:-5s}
# HTTP/2 loads, CLIENTSxSTREAMS each: 64 streams in flight (as wrk's 64 connections), and 8.
h2_loads=${H2_LOADS:-8x8 8x1}
base=${BASE_PORT:-31800}
tug_label=${TUG_LABEL:-tug router}
# Ports: backends base+1..3 (the harness's; tug starts its own three on private ports from
# TUG_PORT_RANGE), then one front port per target, plus an h2c port for the peers (nginx 1.22 speaks
# h2c only on a port of its own).
backends=($((base + 1)) $((base + 2)) $((base + 3)))
p_nginx=$((base + 10)) p_haproxy=$((base + 11)) p_tug=$((base + 12)) p_cmd=$((base + 13))
p_nginx_h2=$((base + 20)) p_haproxy_h2=$((base + 21))
# TCP section: redis direct, through the router (TUG_ROUTER_CMD), HAProxy, the daemon.
p_redis=$((base + 30)) p_cmd_tcp=$((base + 31)) p_haproxy_tcp=$((base + 32)) p_tug_tcp=$((base + 33))
redis_n=${REDIS_N:-200000} redis_c=${REDIS_C:-50} redis_tests=${REDIS_TESTS:-ping_inline,set,get}

out=bench/out/router
rm -rf "$out"; mkdir -p "$out/raw" "$out/conf"
work=$(mktemp -d /tmp/tug-bench-router.XXXXXX)
pids=()
tug=""
cleanup() {
  [ -n "$tug" ] && "$tug" down -f "$work/tug.yaml" >/dev/null 2>&1 || true
  [ -n "$tug" ] && [ -f "$work/tug-tcp.yaml" ] &&
    TUG_STATE_DIR="$work/state-tcp" "$tug" down -f "$work/tug-tcp.yaml" >/dev/null 2>&1 || true
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

wait_port() {   # wait_port PORT: until something accepts on 127.0.0.1:PORT (5 s)
  for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done
  echo "nothing listens on 127.0.0.1:$1" >&2; return 1
}
machine() { echo "$(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg), $(ls /proc | grep -c '^[0-9]') processes"; }
# CPU time the hypervisor gave to others ("steal") over the run: on a shared machine, rounds that
# lost much of it are slower for every target alike, which is why the targets are interleaved.
cpu_line() { awk '/^cpu /{t=0; for (i=2; i<=NF; i++) t+=$i; print t, $9}' /proc/stat; }
read -r total0 steal0 < <(cpu_line)
stolen() { local t s; read -r t s < <(cpu_line); echo "$(( (s - steal0) * 100 / (t - total0 + 1) ))% of CPU time stolen by the hypervisor"; }
echo "machine: $(machine)" | tee "$out/machine.txt"

# --- backends: the same processes behind every proxy ---------------------------------------------
# With TUG=1, tug's own three instances (single-process nginx, bench/router/backend.sh) and its
# redis instance are what nginx and HAProxy front too, so every proxy meets the same backends;
# with TUG=0, three of the harness's own and a redis-server.
instance_ports() {   # instance_ports STACK_FILE: the private ports of the stack's instances
  "$tug" ps -f "$1" --json | python3 -c 'import json, sys; print(*sorted(i["port"] for i in json.load(sys.stdin)))'
}
if [ "${TUG:-1}" = 1 ]; then
  if [ -z "${TUG_BIN:-}" ]; then
    cargo build --release --quiet -p tug || echo "warning: cargo build failed; measuring the existing target/release/tug" >&2
  fi
  mkdir -p "$out/bin"; cp "${TUG_BIN:-target/release/tug}" "$out/bin/tug"   # a rebuild must not swap it mid-run
  tug=$(realpath "$out/bin/tug")
  export TUG_STATE_DIR="$work/state" TUG_PORT_RANGE=${TUG_PORT_RANGE:-31900-31949}
  tcp_port_range=${TUG_TCP_PORT_RANGE:-31950-31999}
  python3 bench/router/gen_stack.py --port "$p_tug" --backend "$(realpath bench/router/backend.sh)" \
    --dir "$work/tug-backends" > "$work/tug.yaml"
  cp "$work/tug.yaml" "$out/conf/tug.yaml"
  "$tug" up -d -f "$work/tug.yaml" >"$out/tug-up.log" 2>&1 || { cat "$out/tug-up.log"; exit 1; }
  wait_port "$p_tug"
  read -r -a backends < <(instance_ports "$work/tug.yaml")
  if [ "$tcp" = 1 ]; then
    # The daemon's router serving a one-instance redis stack's `port:` with `protocol: tcp`.
    python3 bench/router/gen_stack.py --redis --replicas 1 --protocol tcp --port "$p_tug_tcp" > "$work/tug-tcp.yaml"
    cp "$work/tug-tcp.yaml" "$out/conf/tug-tcp.yaml"
    # A daemon of its own (one stack a state folder), on ports of its own.
    TUG_STATE_DIR="$work/state-tcp" TUG_PORT_RANGE=$tcp_port_range "$tug" up -d -f "$work/tug-tcp.yaml" \
      >"$out/tug-up-tcp.log" 2>&1 || { cat "$out/tug-up-tcp.log"; exit 1; }
    wait_port "$p_tug_tcp"
    p_redis=$(TUG_STATE_DIR="$work/state-tcp" instance_ports "$work/tug-tcp.yaml")
  fi
else
  for i in 0 1 2; do
    BACKEND_DIR="$work/backends" bench/router/backend.sh "${backends[$i]}" 2>>"$out/backends.log" &
    pids+=($!)
  done
  if [ "$tcp" = 1 ]; then
    redis-server --port "$p_redis" --bind 127.0.0.1 --save '' --appendonly no --daemonize no \
      >"$out/redis.log" 2>&1 &
    pids+=($!)
  fi
fi
for p in "${backends[@]}"; do wait_port "$p"; done
[ "$tcp" = 1 ] && wait_port "$p_redis"
upstreams=$(printf '127.0.0.1:%s,' "${backends[@]}"); upstreams=${upstreams%,}

# --- peer 1: nginx reverse proxy ------------------------------------------------------------------
mkdir -p "$work/nginx/tmp"
cat > "$out/conf/nginx.conf" <<CONF
# nginx as the reverse proxy: $workers worker processes (= tug's runtime threads), keepalive pool to
# the backends, X-Forwarded-For/-Proto added as tug's router must, no access log.
daemon off;
worker_processes $workers;
pid $work/nginx/nginx.pid;
error_log stderr error;
events { worker_connections 8192; }
http {
  access_log off;
  keepalive_requests 1000000;
  keepalive_timeout 60s;
  client_body_temp_path $work/nginx/tmp; proxy_temp_path $work/nginx/tmp; fastcgi_temp_path $work/nginx/tmp;
  uwsgi_temp_path $work/nginx/tmp; scgi_temp_path $work/nginx/tmp;
  upstream backends {
$(for p in "${backends[@]}"; do echo "    server 127.0.0.1:$p;"; done)
    keepalive 128;
    keepalive_requests 1000000;
  }
  server {
    listen 127.0.0.1:$p_nginx;
    listen 127.0.0.1:$p_nginx_h2 http2;
    location / {
      proxy_pass http://backends;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
      proxy_set_header X-Forwarded-Proto \$scheme;
    }
  }
}
CONF
nginx -p "$work/nginx" -e stderr -c "$(realpath "$out/conf/nginx.conf")" 2>>"$out/nginx.log" &
pids+=($!)
# The processes whose CPU time each target's runs are charged (per-request CPU, beside the peers).
declare -A cpu_of=([nginx]=$!)

# --- peer 2: HAProxy ------------------------------------------------------------------------------
cat > "$out/conf/haproxy.cfg" <<CONF
# HAProxy: $workers threads (= tug's runtime threads), round robin, idle server connections shared
# (http-reuse always), X-Forwarded-For/-Proto added, no logging, no health checks (nginx has none either).
global
  nbthread $workers
  maxconn 4096
defaults
  mode http
  option http-keep-alive
  option forwardfor
  http-reuse always
  timeout connect 2s
  timeout client 30s
  timeout server 30s
  timeout http-keep-alive 60s
frontend fe
  bind 127.0.0.1:$p_haproxy
  bind 127.0.0.1:$p_haproxy_h2 proto h2
  http-request set-header X-Forwarded-Proto http
  default_backend be
backend be
  balance roundrobin
$(i=0; for p in "${backends[@]}"; do i=$((i + 1)); echo "  server b$i 127.0.0.1:$p"; done)
$([ "$tcp" = 1 ] && printf 'listen redis\n  mode tcp\n  bind 127.0.0.1:%s\n  server r1 127.0.0.1:%s\n' "$p_haproxy_tcp" "$p_redis")
CONF
haproxy -db -f "$out/conf/haproxy.cfg" 2>>"$out/haproxy.log" &
pids+=($!)
cpu_of[haproxy]=$!
wait_port "$p_nginx"; wait_port "$p_haproxy"

targets=("nginx|$p_nginx" "haproxy|$p_haproxy")

# --- tug: the daemon serving the stack's `port:` in front of its three instances (started above) --
if [ -n "$tug" ]; then
  targets+=("$tug_label|$p_tug")
  cpu_of[$tug_label]=$(cat "$TUG_STATE_DIR/daemon.pid")
fi
# --- a router not yet in the daemon: TUG_ROUTER_CMD -------------------------------------------------
cmd_label="tug router (TUG_ROUTER_CMD)"
# HTTP/2: the peers listen for h2c on ports of their own (nginx 1.22 cannot serve h2c and HTTP/1.1
# on one port); tug's router serves both on its one port. All three forward HTTP/2 requests to
# the backends over HTTP/1.1 (tug does so for everything but gRPC).
h2_targets=("nginx|$p_nginx_h2" "haproxy|$p_haproxy_h2")
[ -n "$tug" ] && h2_targets+=("$tug_label|$p_tug")
if [ -n "${TUG_ROUTER_CMD:-}" ]; then
  echo "TUG_ROUTER_CMD: $TUG_ROUTER_CMD" > "$out/conf/router-cmd.txt"
  LISTEN_PORT=$p_cmd BACKENDS=$upstreams bash -c "exec $TUG_ROUTER_CMD" >"$out/router-cmd.log" 2>&1 &
  pids+=($!)
  wait_port "$p_cmd"
  targets+=("$cmd_label|$p_cmd")
  h2_targets+=("$cmd_label|$p_cmd")
  cpu_of[$cmd_label]=$!
fi

for t in "${targets[@]}"; do curl -fsS "http://127.0.0.1:${t##*|}/" >/dev/null || { echo "no 200 from ${t%%|*}" >&2; exit 1; }; done

# cpu_ticks NAME: "USER SYSTEM" clock ticks so far of the target's process and its children
# (nginx's workers), every thread included.
cpu_ticks() {
  local root="" user=0 system=0 p u s
  [ -n "$1" ] && root=${cpu_of[$1]:-}
  if [ -n "$root" ]; then
    for p in "$root" $(pgrep -P "$root" 2>/dev/null); do
      read -r u s < <(awk '{print $14, $15}' "/proc/$p/stat" 2>/dev/null || echo 0 0)
      user=$((user + u)) system=$((system + s))
    done
  fi
  echo "$user $system"
}

run_wrk() {   # run_wrk CONNECTIONS DURATION PORT FILE [TARGET]: with TARGET, FILE.cpu gets its CPU ticks
  local threads=$wrk_threads; [ "$1" -lt "$threads" ] && threads=$1
  local cmd="wrk -t$threads -c$1 -d$2 --latency http://127.0.0.1:$3/"
  local u0 s0 u1 s1
  read -r u0 s0 < <(cpu_ticks "${5:-}")
  { echo "# $cmd"; $cmd; } > "$4"
  read -r u1 s1 < <(cpu_ticks "${5:-}")
  [ -n "${5:-}" ] && echo "$((u1 - u0)) $((s1 - s0)) $(getconf CLK_TCK)" > "$4.cpu"
  return 0
}

# --- backends direct: each alone, same load as the throughput run -----------------------------------
first_load=${loads%% *}
for p in "${backends[@]}"; do run_wrk "$first_load" 3s "$p" "$out/raw/backend-$p.txt"; done
# Warm-up: every target once, 2 s.
for t in "${targets[@]}"; do run_wrk "$first_load" 2s "${t##*|}" /dev/null; done

# --- interleaved rounds: every target once per load per round, order rotated each round -----------
n=${#targets[@]}
for r in $(seq "$rounds"); do
  for c in $loads; do
    for k in $(seq 0 $((n - 1))); do
      t=${targets[$(((k + r - 1) % n))]}; name=${t%%|*}; port=${t##*|}
      f="$out/raw/c$c-r$r-$(echo "$name" | tr -c 'a-zA-Z0-9\n' '_').txt"
      run_wrk "$c" "$duration" "$port" "$f" "$name"
      echo "round $r c=$c $name: $(grep Requests/sec "$f" | awk '{print $2}') req/s"
    done
  done
  if [ "$h2" = 1 ]; then
    nh=${#h2_targets[@]}
    for load in $h2_loads; do
      clients=${load%x*} streams=${load#*x}
      for k in $(seq 0 $((nh - 1))); do
        t=${h2_targets[$(((k + r - 1) % nh))]}
        name=${t%%|*}; port=${t##*|}; f="$out/raw/h2-$load-r$r-$(echo "$name" | tr -c 'a-zA-Z0-9\n' '_')"
        cmd="h2load -t$wrk_threads -c$clients -m$streams -D ${h2_duration%s} --log-file=$f.log http://127.0.0.1:$port/"
        read -r u0 s0 < <(cpu_ticks "$name")
        { echo "# $cmd"; $cmd; } > "$f.txt"
        read -r u1 s1 < <(cpu_ticks "$name")
        echo "$((u1 - u0)) $((s1 - s0)) $(getconf CLK_TCK)" > "$f.cpu"
        echo "round $r h2 $load $name: $(grep -o '[0-9.]* req/s' "$f.txt")"
      done
    done
  fi
done

# --- TCP: redis-benchmark direct vs through each TCP proxy, interleaved ---------------------------
if [ "$tcp" = 1 ]; then
  tcp_targets=("direct|$p_redis" "haproxy|$p_haproxy_tcp")
  if [ -n "${TUG_ROUTER_CMD:-}" ]; then
    LISTEN_PORT=$p_cmd_tcp BACKENDS=127.0.0.1:$p_redis PROTOCOL=tcp bash -c "exec $TUG_ROUTER_CMD" \
      >"$out/router-cmd-tcp.log" 2>&1 &
    pids+=($!)
    wait_port "$p_cmd_tcp"
    tcp_targets+=("$cmd_label|$p_cmd_tcp")
  fi
  if [ -n "$tug" ]; then
    tug_tcp_label=${TUG_TCP_LABEL:-tug daemon (port:, protocol: tcp)}
    tcp_targets+=("$tug_tcp_label|$p_tug_tcp")
    cpu_of[$tug_tcp_label]=$(cat "$work/state-tcp/daemon.pid")
  fi
  nt=${#tcp_targets[@]}
  for r in $(seq "$rounds"); do
    for k in $(seq 0 $((nt - 1))); do
      t=${tcp_targets[$(((k + r - 1) % nt))]}; name=${t%%|*}; port=${t##*|}
      f="$out/raw/tcp-r$r-$(echo "$name" | tr -c 'a-zA-Z0-9\n' '_').txt"
      cmd="redis-benchmark -h 127.0.0.1 -p $port --csv -n $redis_n -c $redis_c -t $redis_tests -P 1"
      read -r u0 s0 < <(cpu_ticks "$name")
      { echo "# $cmd"; $cmd; } > "$f"
      read -r u1 s1 < <(cpu_ticks "$name")
      echo "$((u1 - u0)) $((s1 - s0)) $(getconf CLK_TCK)" > "$f.cpu"
      echo "round $r tcp $name: $(tail -n +3 "$f" | cut -d, -f1,2 | tr -d '"' | tr '\n' ' ')"
    done
  done
  printf '%s\n' "${tcp_targets[@]%%|*}" > "$out/tcp-targets.txt"
fi
echo "machine after: $(machine), $(stolen)" | tee -a "$out/machine.txt"

python3 bench/router/summary.py "$out" "$rounds" "$loads" "${targets[@]%%|*}" | tee "$out/summary.txt"
