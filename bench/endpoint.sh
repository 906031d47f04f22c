#!/usr/bin/env bash
# Benchmark: what the daemon's network endpoint (api.listen: /metrics, the /ui dashboard) costs.
#  1. Router throughput with /metrics scraped 10x/s vs not scraped: one `tug-demo` service, two
#     replicas behind `port:`, `wrk -t2 -c64 -d$DURATION --latency` against the port, with nothing
#     scraping (off) and while a loop runs `curl -H "Authorization: Bearer $(tug token metrics)"
#     /metrics` at SCRAPE_RATE (on; 10/s: far more than Prometheus's usual 15 s, so the cost
#     shows). Off and on interleaved, ROUNDS rounds, the order swapped each round; medians of
#     requests/s and p99, on/off ratios. Goal: under 3% apart.
#  2. The dashboard's cost to the daemon: its CPU (% of one core, utime+stime) and VmRSS over WINDOW
#     seconds with a paced light load (LIGHT_RATE requests/s, bench/rollout/paced.lua) in both cases,
#     (a) the browser on about:blank, (b) one headless Chromium tab on /ui/ (logged in with the link
#     from `tug dashboard`; the page holds its server-sent-events stream, a snapshot a second).
#     Interleaved, ROUNDS rounds; the same Chromium throughout (bench/endpoint/browser.py). Also the
#     stream's bytes per snapshot, from `curl -N /ui/events` for SSE_SECONDS.
#  3. /metrics with SERVICES (50) services x REPLICAS (3) instances: `tug up -d` of a generated stack,
#     REQUESTS requests to each service's port so every counter and histogram has data, then SCRAPES
#     (50) sequential scrapes timed by curl (`%{time_total}`: no process start in it, unlike
#     hyperfine): median and p95, the body's size (plain and gzip-requested), its series and families,
#     and the daemon's CPU per scrape (less its idle rate, measured just before). No peer: for scale,
#     the same scrape of part 1's one-service stack.
#
# Knobs (environment): PARTS ("1 2 3"), ROUNDS (3), DURATION (5s) per wrk run, SCRAPE_RATE (10/s:
# curl --rate), SCRAPE_AUTH (1; 0: no token, every scrape a 401: the scraping loop's own cost, as a
# control), WINDOW (20) seconds, SETTLE (5) seconds after each navigation, LIGHT_RATE (50),
# SSE_SECONDS (5), SERVICES (50), REPLICAS (3), REQUESTS (30 per service), SCRAPES (50), BASE_PORT
# (32400: part 1's service, +1 its api.listen, +2 part 3's api.listen, +10.. part 3's services),
# TUG_PORT_RANGE (32500-32699: the instances' private ports), TUG_BIN / DEMO_BIN (default: a fresh
# release build; CARGO_TARGET_DIR is honoured), OUT (bench/out/endpoint: summary.txt, raw/, the
# stacks, daemon logs; emptied first).
set -euo pipefail
cd "$(dirname "$0")/.."
updated=0
install() {   # install PACKAGE: apt-get install, after one apt-get update
  [ "$updated" = 1 ] || { apt-get update -qq; updated=1; }
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$1" >/dev/null
}
need() { command -v "$1" >/dev/null || install "$2"; }   # need COMMAND PACKAGE
need wrk wrk; need curl curl; need /usr/bin/python3 python3
need /usr/bin/chromium chromium; need /usr/bin/chromedriver chromium-driver
/usr/bin/python3 -c 'import selenium' 2>/dev/null || install python3-selenium
py=/usr/bin/python3

rounds=${ROUNDS:-3}
duration=${DURATION:-5s}
scrape_rate=${SCRAPE_RATE:-10/s}
scrape_auth=${SCRAPE_AUTH:-1}
parts=${PARTS:-1 2 3}
has() { [[ " $parts " == *" $1 "* ]]; }
window=${WINDOW:-20}
settle=${SETTLE:-5}
light_rate=${LIGHT_RATE:-50}
sse_seconds=${SSE_SECONDS:-5}
n_services=${SERVICES:-50}
replicas=${REPLICAS:-3}
requests=${REQUESTS:-30}
scrapes=${SCRAPES:-50}
base=${BASE_PORT:-32400}
p_web=$base p_api=$((base + 1)) p_api3=$((base + 2)) p_svc3=$((base + 10))
# Below the ephemeral ports (32768+) and off the default range (20000-29999) and the other benches'.
export TUG_PORT_RANGE=${TUG_PORT_RANGE:-32500-32699}

out=${OUT:-bench/out/endpoint}
rm -rf "$out"; mkdir -p "$out/raw" "$out/bin"
out=$(realpath "$out")

# --- binaries: a fresh release build unless given; copied so a rebuild cannot swap them mid-run ---
target=${CARGO_TARGET_DIR:-target}
if [ -z "${TUG_BIN:-}" ] || [ -z "${DEMO_BIN:-}" ]; then
  cargo build --release --quiet -p tug -p tug-demo ||
    echo "warning: cargo build failed; measuring the existing $target/release binaries" >&2
fi
cp "${TUG_BIN:-$target/release/tug}" "$out/bin/tug"; cp "${DEMO_BIN:-$target/release/tug-demo}" "$out/bin/tug-demo"
tug=$out/bin/tug demo=$out/bin/tug-demo
{ git log -1 --format='commit %h %s'; git status --short -- crates | sed 's/^/changed: /'; } > "$out/build.txt" 2>/dev/null || true

for p in "$p_web" "$p_api" "$p_api3" $(seq "$p_svc3" $((p_svc3 + n_services - 1))); do
  if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
    echo "port $p is taken (BASE_PORT=... to choose others):" >&2; ss -ltnp "sport = :$p" >&2 || true; exit 1
  fi
done

work=$(mktemp -d /tmp/tug-bench-endpoint.XXXXXX)
mkdir -p "$work/s1" "$work/s3"
s1=$work/s1/tug.yaml s3=$work/s3/tug.yaml
st1=$work/s1/state st3=$work/s3/state
tug1() { TUG_STATE_DIR=$st1 "$tug" "$@" -f "$s1"; }
tug3() { TUG_STATE_DIR=$st3 "$tug" "$@" -f "$s3"; }
bg=()            # background processes of ours (wrk, scrape loops)
br_pid=""        # the browser helper (a coprocess)
profile=$work/chromium
up1=0 up3=0
cleanup() {
  if [ -n "$br_pid" ]; then
    { echo quit >&"${BR[1]}"; } 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$br_pid" 2>/dev/null || break; sleep 0.1; done
    kill -TERM "$br_pid" 2>/dev/null || true
  fi
  # Chromium processes of our own profile that outlived their driver, by id.
  for p in $(pgrep -f -- "$profile" 2>/dev/null || true); do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${bg[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${bg[@]}"; do wait "$p" 2>/dev/null || true; done
  if [ "$up1" = 1 ]; then cp "$st1/daemon.log" "$out/daemon-1.log" 2>/dev/null || true; tug1 down >/dev/null 2>&1 || true; fi
  if [ "$up3" = 1 ]; then cp "$st3/daemon.log" "$out/daemon-3.log" 2>/dev/null || true; tug3 down >/dev/null 2>&1 || true; fi
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

wait_port() {   # wait_port PORT: until something accepts on 127.0.0.1:PORT (10 s)
  for _ in $(seq 200); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done
  echo "nothing listens on 127.0.0.1:$1" >&2; return 1
}
machine() { echo "$(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg), $(ls /proc | grep -c '^[0-9]') processes"; }
proc_cpu() { awk '{print $14+$15}' "/proc/$1/stat" 2>/dev/null || echo 0; }   # utime+stime (ticks)
now() { date +%s.%N; }
minus() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", a - b }'; }
echo "machine before: $(machine)" | tee "$out/machine.txt"
ps -eo pcpu,pid,etime,args --sort=-pcpu | head -8 | cut -c1-160 > "$out/top-before.txt"

# ==================================================================================================
# Part 1: router throughput, /metrics scraped 10x/s vs not
# ==================================================================================================
cat > "$s1" <<YAML
name: benchep
api: { listen: 127.0.0.1:$p_api }
services:
  web:
    command: [$demo]
    replicas: 2
    port: $p_web
    healthcheck: { http: /health, interval: 1s, start_interval: 100ms }
YAML
cp "$s1" "$out/stack-1.yaml"
metrics_url=http://127.0.0.1:$p_api/metrics
if has 1 || has 2; then
  up1=1
  tug1 up -d >"$out/up-1.log" 2>&1 || { cat "$out/up-1.log"; exit 1; }
  wait_port "$p_web"; wait_port "$p_api"
  daemon1=$(cat "$st1/daemon.pid")
  token=$(tug1 token metrics)
  code=$(curl -s -o "$out/raw/metrics-1.prom" -w '%{http_code}' -H "Authorization: Bearer $token" "$metrics_url")
  [ "$code" = 200 ] || { echo "/metrics answered $code with the token" >&2; exit 1; }
  code=$(curl -s -o /dev/null -w '%{http_code}' "$metrics_url")
  [ "$code" = 401 ] || { echo "/metrics without a token answered $code, not 401" >&2; exit 1; }
  curl -fsS -o /dev/null "http://127.0.0.1:$p_web/"
fi

scrape_loop() {   # scrape_loop FILE: one line per scrape (status, seconds, bytes) until killed
  # One curl paced by its --rate, on one keep-alive connection as Prometheus scrapes: a shell loop
  # forking curl and sleep falls behind when wrk and the router take both cores. The query string
  # only makes the URLs distinct (curl's glob); the endpoint matches the path.
  # -w to stderr, which is unbuffered: no line is lost when the loop is killed. SCRAPE_AUTH=0: no
  # token, so every answer is a 401 (a control: the loop's and the connection's cost, no render).
  local auth=(-H "Authorization: Bearer $token"); [ "$scrape_auth" = 1 ] || auth=()
  exec curl -s --rate "$scrape_rate" -o /dev/null -w '%{stderr}%{http_code} %{time_total} %{size_download}\n' \
    "${auth[@]}" "$metrics_url?n=[1-1000000]" 2>> "$1"
}
run_wrk() {   # run_wrk FILE: the throughput load against the service's port
  local cmd="wrk -t2 -c64 -d$duration --latency http://127.0.0.1:$p_web/"
  { echo "# $cmd"; $cmd; } > "$1"
}
if has 1; then
  echo "== part 1: wrk -t2 -c64 -d$duration against :$p_web, /metrics at $scrape_rate (on) or never (off), $rounds rounds"
  run_wrk /dev/null   # warm-up
  printf 'round\tmode\tseconds\tdaemon_ticks\tscrapes\tscrape_seconds\n' > "$out/raw/part1.tsv"
  for r in $(seq "$rounds"); do
    if [ $((r % 2)) = 1 ]; then order="off on"; else order="on off"; fi
    for mode in $order; do
      f=$out/raw/wrk-r$r-$mode.txt scrapes_file=$out/raw/scrapes-r$r.txt
      spid=""
      if [ "$mode" = on ]; then
        : > "$scrapes_file"
        scrape_loop "$scrapes_file" & spid=$!; bg+=("$spid")
        s0=$(now); sleep 0.3   # the loop is running when the load starts
      fi
      c0=$(proc_cpu "$daemon1") t0=$(now)
      run_wrk "$f"
      c1=$(proc_cpu "$daemon1") t1=$(now)
      n=0 ss=0
      if [ -n "$spid" ]; then
        kill -TERM "$spid" 2>/dev/null || true; wait "$spid" 2>/dev/null || true
        ss=$(minus "$(now)" "$s0"); n=$(wc -l < "$scrapes_file")
      fi
      printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$r" "$mode" "$(minus "$t1" "$t0")" "$((c1 - c0))" "$n" "$ss" >> "$out/raw/part1.tsv"
      echo "round $r $mode: $(awk '/Requests\/sec/{print $2}' "$f") req/s, p99 $(awk '$1=="99%"{print $2}' "$f")$([ "$mode" = on ] && echo ", $n scrapes")"
    done
  done
fi

# ==================================================================================================
# Part 2: the dashboard's cost to the daemon
# ==================================================================================================
if has 2; then
  echo "== part 2: daemon CPU and RSS over ${window}s at $light_rate req/s, Chromium on about:blank vs on /ui/, $rounds rounds"
  link=$(tug1 dashboard 2>>"$out/dashboard.log" | grep -o 'http[^ ]*/ui/login?token=[^ ]*' | head -1)
  [ -n "$link" ] || { echo "no login link from \`tug dashboard\`" >&2; exit 1; }
  coproc BR { exec "$py" bench/endpoint/browser.py "http://127.0.0.1:$p_api" "$link" "$profile" web 2>"$out/browser.log"; }
  br_pid=$BR_PID
  answer=""
  br_read() { answer=""; read -r -t "${1:-60}" answer <&"${BR[0]}" || answer="error: no answer (see $out/browser.log)"; }
  br() { echo "$1" >&"${BR[1]}"; br_read 60; [[ $answer == ok* ]] || { echo "browser: $1: $answer" >&2; exit 1; }; }
  br_read 120
  [[ $answer == ok* ]] || { echo "browser: $answer" >&2; cat "$out/browser.log" >&2; exit 1; }
  : > "$out/raw/part2.jsonl"
  for r in $(seq "$rounds"); do
    if [ $((r % 2)) = 1 ]; then order="blank ui"; else order="ui blank"; fi
    for mode in $order; do
      br "$mode"; sleep "$settle"
      br updated; before=${answer#ok }
      prefix=$work/light-r$r-$mode
      wrk -t1 -c4 -d$((window + 2))s -s bench/rollout/paced.lua "http://127.0.0.1:$p_web/" -- "$light_rate" "$prefix" 1 \
        > "$out/raw/light-r$r-$mode.txt" 2>&1 & wpid=$!; bg+=("$wpid")
      sleep 1
      m=$("$py" bench/endpoint/window.py "$window" "$daemon1" "$profile")
      wait "$wpid" || true
      br updated; after=${answer#ok }
      rps=$(awk '/Requests\/sec/{print $2}' "$out/raw/light-r$r-$mode.txt")
      "$py" -c 'import json,sys; d=json.loads(sys.argv[1]); d.update(round=int(sys.argv[2]), mode=sys.argv[3], light_rps=float(sys.argv[4] or 0), page_before=sys.argv[5], page_after=sys.argv[6]); print(json.dumps(d))' \
        "$m" "$r" "$mode" "$rps" "$before" "$after" >> "$out/raw/part2.jsonl"
      "$py" - "$out/raw/part2.jsonl" <<'PY'
import json, sys
d = json.loads(open(sys.argv[1]).readlines()[-1])
print(f"round {d['round']} {d['mode']}: daemon {d['daemon_cpu_pct']:.2f}% CPU, RSS {d['rss_end_kib'] / 1024:.1f} MiB,"
      f" Chromium {d['browser_cpu_pct']:.1f}%, light load {d['light_rps']:.0f} req/s; page: {d['page_before']} -> {d['page_after']}")
PY
    done
  done
  echo quit >&"${BR[1]}"; wait "$br_pid" 2>/dev/null || true; br_pid=""
  # The stream itself: bytes per snapshot, with a session of its own.
  link=$(tug1 dashboard 2>>"$out/dashboard.log" | grep -o 'http[^ ]*/ui/login?token=[^ ]*' | head -1)
  curl -s -o /dev/null -c "$work/jar" "$link"
  curl -s -N -b "$work/jar" --max-time "$sse_seconds" "http://127.0.0.1:$p_api/ui/events" > "$out/raw/sse.txt" || true
  events=$(grep -c '^event: state' "$out/raw/sse.txt" || true)
  printf '{"seconds": %s, "bytes": %s, "snapshots": %s}\n' "$sse_seconds" "$(wc -c < "$out/raw/sse.txt")" "$events" > "$out/raw/sse.json"
  echo "event stream: $(cat "$out/raw/sse.json")"
fi
if [ "$up1" = 1 ]; then
  cp "$st1/daemon.log" "$out/daemon-1.log" 2>/dev/null || true
  tug1 down >/dev/null 2>&1; up1=0
fi

# ==================================================================================================
# Part 3: /metrics with SERVICES x REPLICAS instances
# ==================================================================================================
if has 3; then
  echo "== part 3: /metrics with $n_services services x $replicas instances, $scrapes scrapes"
  {
    echo "name: benchep50"
    echo "api: { listen: 127.0.0.1:$p_api3 }"
    echo "services:"
    for i in $(seq 0 $((n_services - 1))); do
      printf '  s%02d:\n    command: [%s]\n    replicas: %d\n    port: %d\n' "$i" "$demo" "$replicas" $((p_svc3 + i))
      echo "    healthcheck: { http: /health, interval: 2s, start_interval: 100ms }"
    done
  } > "$s3"
  cp "$s3" "$out/stack-3.yaml"
  up3=1
  t0=$(now)
  tug3 up -d >"$out/up-3.log" 2>&1 || { cat "$out/up-3.log"; exit 1; }
  up_s=$(minus "$(now)" "$t0")
  for i in $(seq 0 $((n_services - 1))); do wait_port $((p_svc3 + i)); done
  daemon3=$(cat "$st3/daemon.pid")
  token3=$(tug3 token metrics)
  url3=http://127.0.0.1:$p_api3/metrics
  # Traffic on every service (one keep-alive connection each, spread over its instances by the router).
  for i in $(seq 0 $((n_services - 1))); do
    curl -s $(for _ in $(seq "$requests"); do echo "http://127.0.0.1:$((p_svc3 + i))/"; done) > /dev/null
  done
  sleep 1
  # The daemon's idle rate just before (probes: SERVICES x REPLICAS every 2 s), to subtract.
  idle=$("$py" bench/endpoint/window.py 5 "$daemon3")
  curl -s -o "$out/raw/metrics-3.prom" -H "Authorization: Bearer $token3" "$url3"
  gz=$(curl -s -o /dev/null -w '%{size_download}' -H 'Accept-Encoding: gzip' -H "Authorization: Bearer $token3" "$url3")
  : > "$out/raw/scrapes-3.txt"
  c0=$(proc_cpu "$daemon3") t0=$(now)
  for _ in $(seq "$scrapes"); do
    curl -s -o /dev/null -w '%{http_code} %{time_total} %{time_starttransfer} %{size_download}\n' \
      -H "Authorization: Bearer $token3" "$url3" >> "$out/raw/scrapes-3.txt"
  done
  c1=$(proc_cpu "$daemon3") t1=$(now)
  rss3=$(awk '/^VmRSS/{print $2}' "/proc/$daemon3/status")
  instances=$(tug3 ps --json | "$py" -c 'import json,sys; print(sum(1 for r in json.load(sys.stdin) if r.get("pid")))')
  printf '{"up_seconds": %s, "instances": %s, "daemon_ticks": %s, "seconds": %s, "idle": %s, "gzip_bytes": %s, "rss_kib": %s}\n' \
    "$up_s" "$instances" "$((c1 - c0))" "$(minus "$t1" "$t0")" "$idle" "$gz" "$rss3" > "$out/raw/part3.json"
  echo "scrapes: $(awk '{print $2}' "$out/raw/scrapes-3.txt" | sort -n | awk '{a[NR]=$1} END {print "median " a[int((NR+1)/2)] " s, max " a[NR] " s"}'), $(wc -c < "$out/raw/metrics-3.prom") bytes"
  cp "$st3/daemon.log" "$out/daemon-3.log" 2>/dev/null || true
  tug3 down >/dev/null 2>&1; up3=0
fi

echo "machine after: $(machine)" | tee -a "$out/machine.txt"
ps -eo pcpu,pid,etime,args --sort=-pcpu | head -8 | cut -c1-160 > "$out/top-after.txt"
"$py" bench/endpoint/summary.py "$out" "$duration" "$scrape_rate" "$window" "$light_rate" | tee "$out/summary.txt"
