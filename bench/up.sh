#!/usr/bin/env bash
# Benchmark: `tug up -d` of a generated 50-service stack, five levels of ten, every service of level
# k > 0 gated on two of level k-1 (`healthy`), each ready 200 ms after it starts. The peer is the
# critical path, 5 x 200 ms = 1.0 s: goal at most 1.10x. Then, with the 50 services up: the daemon's
# resident memory (goal at most 30 MB) and its CPU while idle (goal under 1% of one core).
#
# Knobs (environment): RUNS (10) timed runs per case, TRACE_RUNS (3) traced runs for the breakdown,
# IDLE_SECONDS (10), PROBES ("http log"; the first is the headline), START_INTERVAL (10ms),
# TUG_BIN / DEMO_BIN (default: a fresh release build) to measure another build.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v hyperfine >/dev/null || { apt-get update -qq && apt-get install -y -qq hyperfine >/dev/null; }
runs=${RUNS:-10}
trace_runs=${TRACE_RUNS:-3}
idle=${IDLE_SECONDS:-10}
probes=${PROBES:-http log}
start_interval=${START_INTERVAL:-10ms}
out=bench/out/up
mkdir -p "$out/bin"
if [ -z "${TUG_BIN:-}" ] || [ -z "${DEMO_BIN:-}" ]; then
  cargo build --release --quiet -p tug -p tug-demo
fi
# Private copies: a rebuild elsewhere in the workspace must not swap the binaries mid-run.
copy() { [ "$(realpath "$1")" = "$(realpath -m "$2")" ] || cp "$1" "$2"; }
copy "${TUG_BIN:-target/release/tug}" "$out/bin/tug"
copy "${DEMO_BIN:-target/release/tug-demo}" "$out/bin/tug-demo"
tug=$(realpath "$out/bin/tug")
demo=$(realpath "$out/bin/tug-demo")
names=$(python3 -c "print(' '.join(f'l{l}-s{i}' for l in range(5) for i in range(10)))")

work=$(mktemp -d /tmp/tug-bench-up.XXXXXX)
export TUG_STATE_DIR="$work/state"
# Off the default range (20000-29999), which tests running beside the benchmark use too, and
# below the ephemeral ports (32768+), which the probes' own connections take.
export TUG_PORT_RANGE=${TUG_PORT_RANGE:-31000-31999}
cleanup() { "$tug" down -f "$work/tug.yaml" >/dev/null 2>&1 || true; rm -rf "$work"; }
trap cleanup EXIT

machine() { echo "$(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg), $(ls /proc | grep -c '^[0-9]') processes"; }
echo "machine: $(machine)" | tee "$out/machine.txt"

for probe in $probes; do
  echo "== probe: $probe (start_interval $start_interval, interval 2s)"
  python3 bench/gen_up_stack.py --probe "$probe" --start-interval "$start_interval" --demo "$demo" > "$work/tug.yaml"
  cp "$work/tug.yaml" "$out/tug-$probe.yaml"
  "$tug" check -f "$work/tug.yaml" | tail -1
  up="$tug up -d -f $work/tug.yaml"
  down="$tug down -f $work/tug.yaml"
  # Cold: the daemon is not running (`tug down` stops it), so every run starts it.
  hyperfine -N --runs "$runs" --prepare "$down" --cleanup "$down" \
    --export-json "$out/cold-$probe.json" -n "up -d cold ($probe)" "$up"
  # Warm: the daemon runs and knows the stack; every service is stopped before each run.
  hyperfine -N --runs "$runs" --setup "$up" --prepare "$tug stop -f $work/tug.yaml $names" --cleanup "$down" \
    --export-json "$out/warm-$probe.json" -n "up -d warm ($probe)" "$up"

  # Traced cold runs: where the time goes, from the daemon's own timestamps (`tug ps --json`:
  # started_at, ready_at). Same stack with `interval: 1m`, so that with a build that has no `ready_at`
  # no later probe overwrites `health.at` before it is read (the interval only schedules probes
  # after the first success, so start-up is the same).
  sed 's/interval: 2s/interval: 1m/' "$work/tug.yaml" > "$work/trace.yaml"
  python3 - "$tug" "$work/trace.yaml" "$trace_runs" "$out/trace-$probe.json" <<'PY'
import json, os, re, resource, subprocess, sys, time
from datetime import datetime
tug, stack, runs, dest = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
state = os.environ["TUG_STATE_DIR"]
ticks = os.sysconf("SC_CLK_TCK")
ms = lambda s: datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp() * 1000
def cpu(pid):
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / ticks
def deps(name):
    level, i = map(int, re.fullmatch(r"l(\d+)-s(\d+)", name).groups())
    return [] if level == 0 else [f"l{level-1}-s{i}", f"l{level-1}-s{(i+1)%10}"]
traces = []
for _ in range(runs):
    subprocess.run([tug, "down", "-f", stack], check=True, capture_output=True)
    child0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.time() * 1000
    subprocess.run([tug, "up", "-d", "-f", stack], check=True, capture_output=True)
    t1 = time.time() * 1000
    child1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    daemon = int(open(f"{state}/daemon.pid").read().strip())
    daemon_cpu = cpu(daemon)
    rows = {r["service"]: r for r in json.loads(subprocess.run([tug, "ps", "--json", "-f", stack], check=True, capture_output=True).stdout)}
    start = {n: ms(r["started_at"]) for n, r in rows.items()}
    # `ready_at` (first success) where the daemon reports it; else the last probe's time.
    healthy = {n: ms(r.get("ready_at") or r["health"]["at"]) for n, r in rows.items()}
    node = max(healthy, key=healthy.get)
    chain = []
    while True:
        ds = deps(node)
        dep = max(ds, key=healthy.get) if ds else None
        chain.append({"service": node, "gate_ms": start[node] - healthy[dep] if dep else None,
                      "detect_ms": healthy[node] - start[node] - 200})
        if dep is None:
            break
        node = dep
    chain.reverse()
    levels = [{"first_start": min(start[f"l{l}-s{i}"] for i in range(10)) - t0,
               "last_start": max(start[f"l{l}-s{i}"] for i in range(10)) - t0,
               "last_healthy": max(healthy[f"l{l}-s{i}"] for i in range(10)) - t0,
               "detect_mean": sum(healthy[f"l{l}-s{i}"] - start[f"l{l}-s{i}"] - 200 for i in range(10)) / 10}
              for l in range(5)]
    traces.append({
        "total_ms": t1 - t0,
        "pre_ms": start[chain[0]["service"]] - t0,   # CLI: compile, start the daemon, PUT; the first spawn
        "gate_ms": sum(c["gate_ms"] for c in chain[1:]),   # dependency healthy -> dependent started
        "ready_ms": 200 * len(chain),
        "detect_ms": sum(c["detect_ms"] for c in chain),   # exec and start of the process, and the probe noticing it is ready
        "post_ms": t1 - healthy[chain[-1]["service"]],      # last healthy -> `tug up -d` exits
        "chain": chain, "levels": levels,
        "daemon_cpu_s": daemon_cpu,
        "cli_cpu_s": (child1.ru_utime + child1.ru_stime) - (child0.ru_utime + child0.ru_stime),
    })
subprocess.run([tug, "down", "-f", stack], check=True, capture_output=True)
json.dump(traces, open(dest, "w"), indent=1)
for t in traces:
    print("trace: total {total_ms:.0f} ms = before first start {pre_ms:.0f} + 5 x 200 ready + process start and probe detection {detect_ms:.0f}"
          " + gate->spawn {gate_ms:.0f} + exit {post_ms:.0f}; daemon CPU {daemon_cpu_s:.2f} s, CLI CPU {cli_cpu_s:.2f} s".format(**t))
PY

  # Resources with the 50 services up and idle.
  "$tug" up -d -f "$work/tug.yaml" 2>/dev/null
  python3 - "$tug" "$work/tug.yaml" "$idle" "$out/resources-$probe.json" <<'PY'
import json, os, subprocess, sys, time
tug, stack, idle, dest = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4]
ticks = os.sysconf("SC_CLK_TCK")
def stat(pid):
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return {"ppid": int(f[1]), "cpu": (int(f[11]) + int(f[12])) / ticks}
def threads_ns(pid):
    """CPU time of each current thread, in ns (/proc/PID/task/TID/schedstat): finer than the ticks of stat."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            out[tid] = int(open(f"/proc/{pid}/task/{tid}/schedstat").read().split()[0])
        except OSError:
            pass
    return out
def kib(pid, file, key):
    for line in open(f"/proc/{pid}/{file}"):
        if line.startswith(key + ":"):
            return int(line.split()[1])
def memory(pid):
    return {k: kib(pid, "status", k) for k in ("VmRSS", "RssAnon", "RssFile", "RssShmem", "Threads")} | {"Pss": kib(pid, "smaps_rollup", "Pss")}
daemon = int(open(os.environ["TUG_STATE_DIR"] + "/daemon.pid").read().strip())
keeper = stat(daemon)["ppid"]
instances = [r["pid"] for r in json.loads(subprocess.run([tug, "ps", "--json", "-f", stack], check=True, capture_output=True).stdout) if r.get("pid")]
time.sleep(3)   # past the start-up, into the steady 2 s probe interval; no API call from here on
mem = {"daemon": memory(daemon), "keeper": memory(keeper)}
pids = {"daemon": [daemon], "keeper": [keeper], "instances": instances}
before = {k: sum(stat(p)["cpu"] for p in v) for k, v in pids.items()}
daemon_ns0 = threads_ns(daemon)
t0 = time.monotonic()
time.sleep(idle)
elapsed = time.monotonic() - t0
daemon_ns1 = threads_ns(daemon)
after = {k: sum(stat(p)["cpu"] for p in v) for k, v in pids.items()}
cpu = {k: 100 * (after[k] - before[k]) / elapsed for k in pids}   # clock ticks: 10 ms resolution per process
if daemon_ns0.keys() == daemon_ns1.keys():   # same threads: the ns figure is exact
    cpu["daemon"] = 100 * sum(daemon_ns1[t] - daemon_ns0[t] for t in daemon_ns1) / 1e9 / elapsed
result = {"memory_kib": mem, "idle_cpu_percent": cpu, "idle_seconds": elapsed, "instances": len(instances)}
json.dump(result, open(dest, "w"), indent=1)
d, k = mem["daemon"], mem["keeper"]
print(f"daemon: VmRSS {d['VmRSS']/1024:.1f} MiB (anon {d['RssAnon']/1024:.1f}, file {d['RssFile']/1024:.1f}), PSS {d['Pss']/1024:.1f} MiB, {d['Threads']} threads;"
      f" keeper: VmRSS {k['VmRSS']/1024:.1f} MiB (anon {k['RssAnon']/1024:.1f}), PSS {k['Pss']/1024:.1f} MiB")
print(f"idle CPU over {elapsed:.0f} s: daemon {cpu['daemon']:.2f}%, keeper {cpu['keeper']:.2f}%, {len(instances)} instances together {cpu['instances']:.2f}% (of one core; instances in 10 ms ticks)")
PY
  "$tug" down -f "$work/tug.yaml" >/dev/null
done
echo "machine after: $(machine)" | tee -a "$out/machine.txt"

python3 - "$out" $probes <<'PY'
import json, sys
out, probes = sys.argv[1], sys.argv[2:]
crit = 1.0
rows, lines = [], []
def ok(met): return "met" if met else "NOT met"
for i, probe in enumerate(probes):
    for case in ("cold", "warm"):
        r = json.load(open(f"{out}/{case}-{probe}.json"))["results"][0]
        ratio = r["mean"] / crit
        rows.append((f"up -d {case}, {probe} probe", f"{len(r['times'])} runs: min {r['min']:.3f} s, median {r['median']:.3f}, mean {r['mean']:.3f} ± {r['stddev']:.3f}",
                     f"{r['min']/crit:.2f}x / {ratio:.2f}x", "≤ 1.10x", ok(ratio <= 1.10)))
    res = json.load(open(f"{out}/resources-{probe}.json"))
    d = res["memory_kib"]["daemon"]; k = res["memory_kib"]["keeper"]; c = res["idle_cpu_percent"]
    rows.append((f"daemon RSS, {probe}", f"anon {d['RssAnon']/1024:.1f} + file {d['RssFile']/1024:.1f} MiB; PSS {d['Pss']/1024:.1f}",
                 f"{d['VmRSS']/1024:.1f} MiB", "≤ 30 MB", ok(d["VmRSS"] * 1024 <= 30e6)))
    rows.append((f"keeper RSS, {probe}", "separate process, not in the goal", f"{k['VmRSS']/1024:.1f} MiB", "", ""))
    rows.append((f"daemon idle CPU, {probe}", f"over {res['idle_seconds']:.0f} s, probes every 2 s", f"{c['daemon']:.2f}%", "< 1%", ok(c["daemon"] < 1)))
    rows.append((f"instances idle CPU, {probe}", f"{res['instances']} together (answering probes)", f"{c['instances']:.2f}%", "", ""))
    traces = json.load(open(f"{out}/trace-{probe}.json"))
    n = len(traces)
    avg = lambda key: sum(t[key] for t in traces) / n
    lines.append(f"{probe}: {n} traced cold runs, mean {avg('total_ms'):.0f} ms = before the first start {avg('pre_ms'):.0f}"
                 f" + 5 x 200 ready + process start and probe detection {avg('detect_ms'):.0f} + dependency ready -> dependent started {avg('gate_ms'):.0f}"
                 f" + last healthy -> CLI exit {avg('post_ms'):.0f} (critical chain); daemon CPU during up {avg('daemon_cpu_s'):.2f} s, CLI {avg('cli_cpu_s'):.2f} s")
widths = [max(len(r[i]) for r in rows) for i in range(5)]
head = ("figure", "detail", "value (min/mean)", "goal", "")
print()
print(f"critical path {crit:.1f} s (5 levels x 200 ms)")
print(open(out + "/machine.txt").read().strip())
for r in [head] + rows:
    print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
print()
print("\n".join(lines))
with open(f"{out}/summary.txt", "w") as f:
    for r in [head] + rows:
        f.write("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() + "\n")
    f.write("\n".join(lines) + "\n")
PY
