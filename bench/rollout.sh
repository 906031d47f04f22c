#!/usr/bin/env bash
# Benchmark (issue 5): rollouts behind tug's router, under load.
#  1. Zero failed requests across each strategy at about half the router's capacity, at least
#     100,000 requests per strategy: the capacity of the stack's port is measured first (plain
#     `wrk -t2 -c64 -d5s`, as router.sh), then wrk drives a paced load of LOAD_FRACTION of it on
#     keep-alive connections (bench/rollout/paced.lua counts every response by status and version)
#     while `tug deploy` rolls out a new version with each strategy, from before the deploy starts
#     until the rollout has ended (blue_green: until its old set is retired, not just promoted)
#     and at least MIN_REQUESTS were answered. `none` (same load, no deploy) is the noise floor;
#     `recreate` (stop all, start all) fails requests by design: the baseline without a peer.
#  2. A bad canary (30% of answers 500) at 200 requests/s with step_duration 30s: the time from its
#     first response to its last (all traffic back on stable) and to `tug rollout status` saying
#     rolled_back, ROUNDS times (bench/rollout/canary.py); reported against Flagger's floor.
#
# Knobs (environment): PORT (18480: the service's port), TUG_PORT_RANGE (32100-32199: the
# instances' private ports), STRATEGIES ("none rolling blue_green canary recreate"), MIN_REQUESTS
# (100000 per strategy), LOAD_FRACTION (0.5 of capacity), CAPACITY_RUNS (3, 5 s each: the median),
# WRK_THREADS (2), WRK_CONNS (64), LEAD (1: seconds of load before each deploy), TAIL (1: seconds
# after the rollout ended), ROUNDS (5 bad canaries), CANARY_RATE (200), CANARY_CONNS (4),
# FLAGGER_FLOOR (70: seconds), TUG_BIN / DEMO_BIN (default: a fresh release build).
set -euo pipefail
cd "$(dirname "$0")/.."
updated=0
need() {   # need COMMAND PACKAGE: apt-get install PACKAGE when COMMAND is missing
  command -v "$1" >/dev/null && return 0
  [ "$updated" = 1 ] || { apt-get update -qq; updated=1; }
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null
}
need wrk wrk; need curl curl
[ -x /usr/bin/python3 ] || need /usr/bin/python3 python3
py=/usr/bin/python3

port=${PORT:-18480}
strategies=${STRATEGIES:-none rolling blue_green canary recreate}
min_requests=${MIN_REQUESTS:-100000}
fraction=${LOAD_FRACTION:-0.5}
capacity_runs=${CAPACITY_RUNS:-3}
threads=${WRK_THREADS:-2}
conns=${WRK_CONNS:-64}
lead=${LEAD:-1}
tail_s=${TAIL:-1}
rounds=${ROUNDS:-5}
canary_rate=${CANARY_RATE:-200}
canary_conns=${CANARY_CONNS:-4}
export TUG_PORT_RANGE=${TUG_PORT_RANGE:-32100-32199}
unset TUG_STATE_DIR   # the stack's own .tug/

out=bench/out/rollout-$(date +%Y%m%d-%H%M%S)
mkdir -p "$out/raw" "$out/bin" "$out/stack"
out=$(realpath "$out")
stack=$out/stack
echo "results: $out"

# --- binaries: a fresh release build unless given; copied so a rebuild cannot swap them mid-run ---
if [ -z "${TUG_BIN:-}" ] || [ -z "${DEMO_BIN:-}" ]; then
  cargo build --release --quiet -p tug -p tug-demo ||
    echo "warning: cargo build failed; measuring the existing target/release binaries" >&2
fi
cp "${TUG_BIN:-target/release/tug}" "$out/bin/tug"; cp "${DEMO_BIN:-target/release/tug-demo}" "$out/bin/tug-demo"
tug=$out/bin/tug demo=$out/bin/tug-demo
git log -1 --format='commit %h %s' > "$out/build.txt" 2>/dev/null || true
git status --short -- crates | sed 's/^/changed: /' >> "$out/build.txt" 2>/dev/null || true

# --- the port must be free: a fixed port, and nothing of ours may run on it yet -----------------
if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
  echo "port $port is taken (PORT=... to choose another):" >&2; ss -ltnp "sport = :$port" >&2 || true; exit 1
fi

# wrk's progress files: on tmpfs, so wrk's event loop never waits for the disk
shm=$(mktemp -d /dev/shm/tug-bench-rollout.XXXXXX 2>/dev/null || mktemp -d /tmp/tug-bench-rollout.XXXXXX)
bg=()       # background processes of ours (wrk, canary.py)
up=0
cleanup() {
  rm -rf "$shm"
  for p in "${bg[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${bg[@]}"; do wait "$p" 2>/dev/null || true; done
  if [ "$up" = 1 ]; then
    cp "$stack/.tug/daemon.log" "$out/daemon.log" 2>/dev/null || true
    (cd "$stack" && timeout 60 "$tug" down >"$out/down.log" 2>&1) || echo "warning: tug down failed (see $out/down.log)" >&2
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

machine() { echo "$(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg), $(ls /proc | grep -c '^[0-9]') processes"; }
cpu() { awk '/^cpu /{print $2+$3+$4+$5+$6+$7+$8+$9, $5+$6, $9}' /proc/stat; }   # total idle+iowait steal (ticks)
proc_cpu() { awk '{print $14+$15}' "/proc/$1/stat" 2>/dev/null || echo 0; }      # utime+stime (ticks)
rss_kb() { awk '/^VmRSS/{print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
hwm_kb() { awk '/^VmHWM/{print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
now() { date +%s.%N; }
echo "machine before: $(machine)" | tee "$out/machine.txt"
ps -eo pcpu,pid,etime,args --sort=-pcpu | head -8 | cut -c1-160 > "$out/top-before.txt"

# --- the stack -----------------------------------------------------------------------------------
write_stack() {   # write_stack VERSION 'DEPLOY' ['EXTRA ENV']
  cat > "$stack/tug.yaml" <<YAML
name: benchroll
services:
  web:
    command: [$demo]
    port: $port
    replicas: 3
    environment: { VERSION: "$1"${3:+, $3} }
    healthcheck: { http: /health, interval: 1s, start_interval: 100ms }
    stop_grace_period: 5s
    deploy: $2
YAML
}
deploy_of() {
  case $1 in
    rolling) echo '{ strategy: rolling }' ;;   # max_surge 1, max_unavailable 0 (the defaults)
    blue_green) echo '{ strategy: blue_green, auto_promote: true, scale_down_delay: 2s }' ;;
    canary) echo '{ strategy: canary, steps: [10, 50, 100], step_duration: 2s, analysis: { max_error_rate: 1%, min_requests: 20 } }' ;;
    recreate) echo '{ strategy: recreate }' ;;
    none) echo '{ strategy: rolling }' ;;
    *) echo "unknown strategy $1" >&2; exit 1 ;;
  esac
}
version=1
write_stack "$version" "$(deploy_of rolling)"
(cd "$stack" && timeout 120 "$tug" up -d --timeout 90s) >"$out/up.log" 2>&1 || { cat "$out/up.log"; up=1; exit 1; }
up=1
daemon=$(cat "$stack/.tug/daemon.pid")
curl -fsS "http://127.0.0.1:$port/" >/dev/null || { echo "no 200 from the stack's port" >&2; exit 1; }

# --- capacity: plain wrk, as router.sh --------------------------------------------------------------
wrk -t"$threads" -c"$conns" -d2s "http://127.0.0.1:$port/" >/dev/null   # warm-up
caps=()
for i in $(seq "$capacity_runs"); do
  f=$out/raw/capacity-$i.txt
  cmd="wrk -t$threads -c$conns -d5s --latency http://127.0.0.1:$port/"
  { echo "# $cmd"; $cmd; } > "$f"
  caps+=("$(awk '/^Requests\/sec/{print $2}' "$f")")
  echo "capacity run $i: ${caps[-1]} req/s"
done
capacity=$(printf '%s\n' "${caps[@]}" | sort -g | awk '{a[NR]=$1} END{print a[int((NR+1)/2)]}')
rate=$(awk -v c="$capacity" -v f="$fraction" 'BEGIN{printf "%d", c*f}')
echo "capacity (median of $capacity_runs): $capacity req/s; paced load: $rate req/s ($fraction of it)"
printf '{"runs":[%s],"capacity":%s,"fraction":%s,"rate":%s,"threads":%s,"conns":%s}\n' \
  "$(IFS=,; echo "${caps[*]}")" "$capacity" "$fraction" "$rate" "$threads" "$conns" > "$out/capacity.json"

# --- 1. each strategy under the paced load -------------------------------------------------------
status_json() { (cd "$stack" && timeout 10 "$tug" rollout status web --json 2>/dev/null) || echo '{}'; }
progress() { cat "$shm/$1".progress.* 2>/dev/null | awk '{s+=$1} END{print s+0}'; }
for s in $strategies; do
  prefix=$out/raw/load-$s
  if [ "$s" != none ]; then version=$((version + 1)); write_stack "$version" "$(deploy_of "$s")"; fi
  cp "$stack/tug.yaml" "$prefix.tug.yaml"
  read -r c0_total c0_idle c0_steal < <(cpu); d0=$(proc_cpu "$daemon"); rss0=$(rss_kb "$daemon")
  load0=$(cut -d' ' -f1 /proc/loadavg); $py bench/rollout/procs.py "$prefix.procs0.json"
  cmd="wrk -t$threads -c$conns -d600s --timeout 2s -s bench/rollout/paced.lua http://127.0.0.1:$port/ -- $rate $prefix $threads $shm/load-$s"
  echo "# $cmd" > "$prefix.wrk.txt"
  $cmd >> "$prefix.wrk.txt" 2>&1 &
  wrk_pid=$!; bg+=("$wrk_pid")
  t_load=$(now)
  sleep "$lead"
  t_deploy=$(now) rc=0 t_promoted="" t_end=""
  if [ "$s" != none ]; then
    # deploy's progress lines, each with the moment it was printed
    (cd "$stack" && { timeout 180 "$tug" deploy --timeout 150s 2>&1 && echo "exit 0" || echo "exit $?"; }) |
      while IFS= read -r line; do printf '%s %s\n' "$(now)" "$line"; done > "$prefix.deploy.txt"
    rc=$(awk '$2=="exit"{print $3}' "$prefix.deploy.txt" | tail -1)
    t_promoted=$(now)   # deploy returned (a blue-green returns once promoted)
    # the rollout's end: blue_green keeps its old set for scale_down_delay after the promotion
    for _ in $(seq 600); do
      ph=$(status_json | $py -c 'import json,sys; print(json.load(sys.stdin).get("phase",""))' 2>/dev/null || true)
      case $ph in complete|rolled_back|failed) break ;; esac
      sleep 0.2
    done
    status_json > "$prefix.status.json"
  fi
  t_end=$(now)
  # keep the load on until MIN_REQUESTS were answered and TAIL seconds past the end (600 s at most)
  until [ "$(progress "load-$s")" -ge "$min_requests" ] &&
        awk -v a="$(now)" -v b="$t_end" -v t="$tail_s" 'BEGIN{exit !(a - b >= t)}'; do
    kill -0 "$wrk_pid" 2>/dev/null || break
    sleep 0.2
  done
  w_cpu=$(proc_cpu "$wrk_pid")
  kill -INT "$wrk_pid" 2>/dev/null || true
  wait "$wrk_pid" || true
  bg=()
  t_stop=$(now)
  read -r c1_total c1_idle c1_steal < <(cpu); d1=$(proc_cpu "$daemon"); rss1=$(rss_kb "$daemon")
  $py bench/rollout/procs.py "$prefix.procs1.json"
  printf '{"strategy":"%s","rate_target":%s,"t_load":%s,"t_deploy":%s,"t_deploy_returned":"%s","t_end":%s,"t_stop":%s,"deploy_rc":%s,"cpu_ticks":%s,"idle_ticks":%s,"steal_ticks":%s,"daemon_ticks":%s,"wrk_ticks":%s,"daemon_rss_kb":[%s,%s],"daemon_hwm_kb":%s,"load1":[%s,%s],"hz":%s}\n' \
    "$s" "$rate" "$t_load" "$t_deploy" "$t_promoted" "$t_end" "$t_stop" "${rc:-0}" "$((c1_total - c0_total))" \
    "$((c1_idle - c0_idle))" "$((c1_steal - c0_steal))" "$((d1 - d0))" "$w_cpu" "$rss0" "$rss1" "$(hwm_kb "$daemon")" \
    "$load0" "$(cut -d' ' -f1 /proc/loadavg)" "$(getconf CLK_TCK)" > "$prefix.meta.json"
  $py - "$prefix" <<'PY'
import json, sys
p = sys.argv[1]
d, m = json.load(open(p + ".json")), json.load(open(p + ".meta.json"))
e = d["errors"]
sock = e["connect"] + e["read"] + e["write"] + e["timeout"]
secs = d["duration_us"] / 1e6
print(f"{m['strategy']:>10}: {d['requests']} requests in {secs:.1f} s ({d['requests']/secs:.0f}/s), "
      f"{d['non_2xx']} non-2xx, {sock} socket errors; versions {d['versions']}; deploy exit {m['deploy_rc']}")
PY
  sleep 1
done

# --- 2. a bad canary at 200 requests/s, ROUNDS times -----------------------------------------------
for r in $(seq "$rounds"); do
  write_stack bad '{ strategy: canary, steps: [10, 50, 100], step_duration: 30s, analysis: { max_error_rate: 1%, min_requests: 20 } }' \
    "DEMO_FAIL_RATE: \"30%\", BENCH_ROUND: \"$r\""
  cp "$stack/tug.yaml" "$out/raw/canary-$r.tug.yaml"
  printf 'round %s: ' "$r"
  timeout 200 $py bench/rollout/canary.py --port "$port" --rate "$canary_rate" --conns "$canary_conns" \
    --tug "$tug" --stack-dir "$stack" --out "$out/raw/canary-$r" --timeout 150 &
  bg+=($!); wait "${bg[-1]}" || echo "round $r: canary.py failed" >&2
  unset 'bg[-1]'
  sleep 1
done

echo "machine after: $(machine); tug daemon RSS $(($(rss_kb "$daemon") / 1024)) MiB, peak $(($(hwm_kb "$daemon") / 1024)) MiB" |
  tee -a "$out/machine.txt"
ps -eo pcpu,pid,etime,args --sort=-pcpu | head -8 | cut -c1-160 > "$out/top-after.txt"
$py bench/rollout/summary.py "$out" "$strategies" "$rounds" "${FLAGGER_FLOOR:-70}" | tee "$out/summary.txt"
