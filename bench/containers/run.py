#!/usr/bin/env python3
"""The timed part of bench/containers.sh: every case once per round, rounds interleaved, each
case torn down (and checked to have left nothing) before the next. Prints the table.

Usage: run.py WORK TUG DEMO IMAGE ROUNDS PROJECT
WORK holds one folder per case (written by containers.sh): tug-exec/, tug-http/,
compose-INTERVAL/, start-KIND-PROBE/; each tug stack keeps its state in its folder's .tug/.
PROJECT prefixes the Compose project names and labels the `docker run` references.
Knobs (environment): SETTLE (1) seconds before each case, after which the machine must also be
quiet (under QUIET (0.25) cores busy over half a second, waiting up to 20 s); DOCKER_RUNS (3)
single `docker run` references per round; POLL (0.02) seconds between two `docker inspect` of the
Compose wait; COMPOSE_INTERVALS ("100ms 1s"; the first is the headline); START_PROBES ("tcp none");
RESULTS (a file for the raw figures as JSON; none by default).
"""
import concurrent.futures
import json
import os
import resource
import statistics
import subprocess
import sys
import threading
import time
from datetime import datetime

WORK, TUG, DEMO, IMAGE, ROUNDS, PROJECT = sys.argv[1:7]
ROUNDS = int(ROUNDS)
SETTLE = float(os.environ.get("SETTLE", "1"))
QUIET = float(os.environ.get("QUIET", "0.25"))
DOCKER_RUNS = int(os.environ.get("DOCKER_RUNS", "3"))
POLL = float(os.environ.get("POLL", "0.02"))
COMPOSE_INTERVALS = os.environ.get("COMPOSE_INTERVALS", "100ms 1s").split()
START_PROBES = os.environ.get("START_PROBES", "tcp none").split()
LEVELS, WIDTH = 5, 4
N = LEVELS * WIDTH
CRITICAL = LEVELS * 0.2
TIMEOUT = 120
HZ = os.sysconf("SC_CLK_TCK")
ENGINE = ("dockerd", "containerd", "containerd-shim", "containerd-shi")   # comm is cut at 15 characters


class Failed(Exception):
    pass


def run(*args, check=True, timeout=TIMEOUT):
    r = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise Failed(f"`{' '.join(args)}` exited {r.returncode}:\n{r.stdout[-2000:]}{r.stderr[-2000:]}")
    return r


def load():
    return float(open("/proc/loadavg").read().split()[0])


def busy():
    """Core-seconds the machine has spent busy (all but idle and iowait), and in steal."""
    user, nice, system, idle, iowait, irq, softirq, steal = (int(x) for x in open("/proc/stat").readline().split()[1:9])
    return (user + nice + system + irq + softirq + steal) / HZ, steal / HZ


def proc_cpu(pid):
    try:
        f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        return (int(f[11]) + int(f[12])) / HZ, int(f[1])
    except (OSError, IndexError):
        return 0.0, 0


def engine_cpu():
    """CPU seconds of the engine's long-lived processes: dockerd, containerd, the shims."""
    total = 0.0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            comm = open(f"/proc/{pid}/comm").read().strip()
        except OSError:
            continue
        if comm in ENGINE:
            total += proc_cpu(pid)[0]
    return total


def children_cpu():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


class Cpu:
    """What the machine, the engine and this script's children spent between two points."""

    def __init__(self):
        self.busy, self.steal = busy()
        self.engine = engine_cpu()
        self.children = children_cpu()

    def until(self, later, tool_extra=0.0):
        total = later.busy - self.busy
        engine = later.engine - self.engine
        tool = later.children - self.children + tool_extra
        return {"cpu": total, "steal": later.steal - self.steal, "cpu_engine": engine, "cpu_tool": tool,
                "cpu_other": total - engine - tool}


def quiet():
    """SETTLE seconds, then until the machine is quiet (at most 20 s more). Returns the cores busy."""
    time.sleep(SETTLE)
    deadline = time.time() + 20
    while True:
        b0 = busy()[0]
        time.sleep(0.5)
        cores = (busy()[0] - b0) / 0.5
        if cores < QUIET or time.time() > deadline:
            return cores


def iso(s):
    return datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()


class Events:
    """One `docker events` stream for the whole run: container creates, starts and health changes,
    with the engine's own timestamps (its ring buffer for --since is 256 events, which exec probes
    overflow in a second, so the stream is followed live)."""

    def __init__(self):
        self.lines = []
        self.proc = subprocess.Popen(
            ["docker", "events", "--format", "{{json .}}", "--filter", "type=container", "--filter", "event=create",
             "--filter", "event=start", "--filter", "event=health_status"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self.thread = threading.Thread(target=self.read, daemon=True)
        self.thread.start()

    def read(self):
        for line in self.proc.stdout:
            try:
                self.lines.append(json.loads(line))
            except ValueError:
                pass

    def ready(self):
        """Waits until the stream delivers: a throwaway container's start must show."""
        cid = run("docker", "create", "--label", f"tug-bench={PROJECT}", IMAGE, "true").stdout.strip()
        try:
            run("docker", "start", cid)
            deadline = time.time() + 10
            while time.time() < deadline:
                if any(e.get("id") == cid for e in self.lines):
                    return
                time.sleep(0.05)
            raise Failed("`docker events` shows nothing")
        finally:
            run("docker", "rm", "-f", cid, check=False)

    def since(self, t0, key, value, expect):
        """(service label, kind, time) of the events since t0 of containers labelled key=value,
        once every kind in `expect` has been seen for N services (the stream is a moment behind),
        or after 5 s."""
        deadline = time.time() + 5
        while True:
            out = []
            for e in self.lines[:]:
                attrs = e.get("Actor", {}).get("Attributes", {})
                t = e["timeNano"] / 1e9
                if t >= t0 and attrs.get(key) == value:
                    service = attrs.get("tug.service") or attrs.get("com.docker.compose.service")
                    out.append((service, e["status"], t))
            if all(len({s for s, kind, _ in out if kind == k}) >= N for k in expect) or time.time() > deadline:
                return out
            time.sleep(0.05)

    def close(self):
        self.proc.terminate()
        self.proc.wait()


def level(service):
    return int(service.split("-")[0][1:])


def breakdown(t0, t1, creates, starts, healthy):
    """Along the levels: before the first start; each level's first start -> its last healthy
    (200 ms of the service's own, the spread of its starts, probe detection); a level's last
    healthy -> the next level's first start (the gate: noticing, create, start); the last healthy
    -> done. The four sum to t1 - t0. Plus the mean of create -> start per container."""
    if len(starts) != N or len(healthy) != N:
        return None
    first = [min(starts[s] for s in starts if level(s) == lv) for lv in range(LEVELS)]
    last = [max(healthy[s] for s in healthy if level(s) == lv) for lv in range(LEVELS)]
    return {
        "pre": first[0] - t0,
        "level": sum(last[lv] - first[lv] for lv in range(LEVELS)),
        "gate": sum(first[lv] - last[lv - 1] for lv in range(1, LEVELS)),
        "post": t1 - last[-1],
        "start_spread": sum(max(starts[s] for s in starts if level(s) == lv) - first[lv] for lv in range(LEVELS)) / LEVELS,
        "create_to_start": statistics.mean(starts[s] - creates[s] for s in starts if s in creates),
    }


def daemon(folder):
    """The daemon's pid, VmRSS (MiB) and CPU with its keeper's (both started in this case)."""
    pid = int(open(f"{folder}/.tug/daemon.pid").read().strip())
    rss = None
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) / 1024
    cpu, keeper = proc_cpu(pid)
    return pid, rss, cpu + proc_cpu(keeper)[0]


def leftovers_tug(folder):
    state = os.path.realpath(f"{folder}/.tug")
    ids = run("docker", "ps", "-aq", "--filter", f"label=tug.state_dir={state}").stdout.split()
    if ids:
        raise Failed(f"{folder}: {len(ids)} container(s) left after `tug down`: {' '.join(ids)}")
    pidfile = f"{folder}/.tug/daemon.pid"
    if os.path.exists(pidfile):
        pid = open(pidfile).read().strip()
        if pid and os.path.exists(f"/proc/{pid}"):
            raise Failed(f"{folder}: the daemon ({pid}) still runs after `tug down`")
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")[0].decode()
        except OSError:
            continue
        if cmd == DEMO:
            raise Failed(f"{folder}: a tug-demo process ({pid}) is left after `tug down`")


def tug_case(name, events):
    folder = f"{WORK}/{name}"
    stack = f"{folder}/tug.yaml"
    state = os.path.realpath(f"{folder}/.tug")
    run(TUG, "down", "-f", stack, check=False)
    before = quiet()
    c0 = Cpu()
    t0 = time.time()
    run(TUG, "up", "-d", "-f", stack, "--timeout", "2m")
    t1 = time.time()
    c1 = Cpu()
    _, rss, daemon_cpu = daemon(folder)
    result = {"time": t1 - t0, "load": load(), "busy_before": before, "rss_mib": rss, **c0.until(c1, daemon_cpu)}
    rows = json.loads(run(TUG, "ps", "--json", "-f", stack).stdout)
    if len(rows) != N:
        raise Failed(f"{name}: {len(rows)} instances, not {N}")
    if name.startswith("tug-"):
        seen = events.since(t0, "tug.state_dir", state, ["create", "start"])
        creates = {s: t for s, kind, t in seen if kind == "create"}
        starts = {s: t for s, kind, t in seen if kind == "start"}
        healthy = {r["service"]: iso(r["ready_at"]) for r in rows if r.get("ready_at")}
        result["breakdown"] = breakdown(t0, t1, creates, starts, healthy)
    d0 = time.time()
    run(TUG, "down", "-f", stack)
    result["down"] = time.time() - d0
    leftovers_tug(folder)
    return result


def compose_case(interval, events):
    folder = f"{WORK}/compose-{interval}"
    project = f"{PROJECT}{interval}"
    compose = ["docker-compose", "-p", project, "-f", f"{folder}/docker-compose.yml"]
    label = f"label=com.docker.compose.project={project}"
    before = quiet()
    c0 = Cpu()
    t0 = time.time()
    run(*compose, "up", "-d")
    t_up = time.time()
    ids = run("docker", "ps", "-q", "--filter", label).stdout.split()
    if len(ids) != N:
        raise Failed(f"compose: {len(ids)} containers up, not {N}")
    # `docker compose up -d --wait`, emulated: one `docker inspect` of every container each POLL.
    polls = []
    while True:
        p0 = time.time()
        states = run("docker", "inspect", "-f", "{{.State.Health.Status}}", *ids).stdout.split()
        polls.append(time.time() - p0)
        if all(s == "healthy" for s in states):
            break
        if "unhealthy" in states or time.time() - t0 > TIMEOUT:
            raise Failed(f"compose: not all healthy: {states}")
        time.sleep(POLL)
    t1 = time.time()
    c1 = Cpu()
    result = {"time": t1 - t0, "up_d": t_up - t0, "polls": len(polls), "poll_s": statistics.mean(polls), "load": load(),
              "busy_before": before,
              **c0.until(c1)}
    seen = events.since(t0, "com.docker.compose.project", project, ["create", "start", "health_status: healthy"])
    creates = {s: t for s, kind, t in seen if kind == "create"}
    starts = {s: t for s, kind, t in seen if kind == "start"}
    healthy = {}
    for s, kind, t in seen:
        if kind == "health_status: healthy" and s not in healthy:
            healthy[s] = t
    result["breakdown"] = breakdown(t0, t1, creates, starts, healthy)
    d0 = time.time()
    run(*compose, "down", "-t", "1", "-v")
    result["down"] = time.time() - d0
    left = run("docker", "ps", "-aq", "--filter", label).stdout.split()
    nets = run("docker", "network", "ls", "-q", "--filter", label).stdout.split()
    if left or nets:
        raise Failed(f"compose: left after `down`: containers {left}, networks {nets}")
    return result


def docker_run(port):
    return run("docker", "run", "-d", "--network", "host", "-e", f"PORT={port}", "--label", f"tug-bench={PROJECT}",
               IMAGE).stdout.strip()


def docker_run_case():
    """DOCKER_RUNS times one `docker run -d` then `docker rm -f`; then N at once (N CLIs in parallel)."""
    out = {"single": []}
    for _ in range(DOCKER_RUNS):
        quiet()
        t0 = time.time()
        cid = docker_run(31399)
        t1 = time.time()
        run("docker", "rm", "-f", cid)
        out["single"].append({"run": t1 - t0, "rm": time.time() - t1})
    quiet()
    c0 = Cpu()
    t0 = time.time()
    with concurrent.futures.ThreadPoolExecutor(N) as pool:
        ids = list(pool.map(docker_run, range(31400, 31400 + N)))
    out["parallel"] = time.time() - t0
    out.update(c0.until(Cpu()))
    run("docker", "rm", "-f", *ids)
    left = run("docker", "ps", "-aq", "--filter", f"label=tug-bench={PROJECT}").stdout.split()
    if left:
        raise Failed(f"docker run: left after `docker rm -f`: {left}")
    return out


def med(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else float("nan")


def main():
    cases = (["tug-exec"] + [f"compose-{i}" for i in COMPOSE_INTERVALS] + ["tug-http"]
             + [f"start-{kind}-{p}" for p in START_PROBES for kind in ("container", "process")] + ["docker-run"])
    results = {k: [] for k in cases}
    events = Events()
    try:
        events.ready()
        for r in range(1, ROUNDS + 1):
            print(f"round {r}/{ROUNDS} (load {load():.2f}):", end="", flush=True)
            for case in cases:
                if case.startswith("compose-"):
                    res = compose_case(case.split("-", 1)[1], events)
                elif case == "docker-run":
                    res = docker_run_case()
                    results[case].append(res)
                    print(f" docker-run {med([x['run'] for x in res['single']]):.3f}/{res['parallel']:.3f}", flush=True)
                    continue
                else:
                    res = tug_case(case, events)
                results[case].append(res)
                print(f" {case} {res['time']:.3f}", end="", flush=True)
    finally:
        events.close()
    if os.environ.get("RESULTS"):
        json.dump(results, open(os.environ["RESULTS"], "w"), indent=1)
    report(results)


def report(results):
    def m(case, key):
        return med([r.get(key) for r in results[case]])

    def rng(case, key):
        v = [r[key] for r in results[case]]
        return f"{min(v):.2f}–{max(v):.2f}"

    headline = f"compose-{COMPOSE_INTERVALS[0]}"
    compose = m(headline, "time")
    print()
    print(f"1. 20 containers in {LEVELS} levels of {WIDTH} (each depends on every one of the level before, healthy),"
          f" each ready 200 ms after it starts: critical path {CRITICAL:.1f} s. Medians of {ROUNDS} rounds.")
    rows = [("case", "time (s)", "range", "× critical path", f"× compose {COMPOSE_INTERVALS[0]}",
             "CPU core-s: all = engine + tool + other", "down (s)")]
    labels = {"tug-exec": "tug up -d, exec probe (start_interval 100ms)", "tug-http": "tug up -d, http probe from the host (extra)"}
    for i in COMPOSE_INTERVALS:
        labels[f"compose-{i}"] = f"docker-compose up -d + wait, exec probe, interval {i}" + ("" if i == COMPOSE_INTERVALS[0] else " (extra)")
    for case in ["tug-exec"] + [f"compose-{i}" for i in COMPOSE_INTERVALS] + ["tug-http"]:
        t = m(case, "time")
        cpu = f"{m(case, 'cpu'):.1f} = {m(case, 'cpu_engine'):.1f} + {m(case, 'cpu_tool'):.1f} + {m(case, 'cpu_other'):.1f}"
        rows.append((labels[case], f"{t:.3f}", rng(case, "time"), f"{t / CRITICAL:.2f}×", f"{t / compose:.2f}×", cpu,
                     f"{m(case, 'down'):.2f}"))
    table(rows)
    print(f"   tug/compose, the same exec check: {m('tug-exec', 'time') / compose:.2f}×. The wait after `docker-compose up -d`: "
          + "; ".join(f"interval {i}: `up -d` {m(f'compose-{i}', 'up_d'):.2f} s, then `docker ps` and"
                      f" {m(f'compose-{i}', 'polls'):.0f} `docker inspect` polls of {m(f'compose-{i}', 'poll_s') * 1000:.0f} ms each"
                      for i in COMPOSE_INTERVALS))
    print("   CPU: engine = dockerd, containerd and the shims; tool = tug's CLI, daemon and keeper / docker-compose and"
          " the polls' docker CLI; other = the rest (runc, exec'd probes, the kernel, other users)")
    print()
    print("   Where the time goes (medians, ms; container create and start, and Compose's healthy, from the engine's"
          " events; tug's healthy is its ready_at):")
    rows = [("case", "before 1st start", "5 × (1st start → last healthy)", "4 × (healthy → next 1st start)",
             "last healthy → done", "start spread per level", "create → start per container")]
    for case in ["tug-exec"] + [f"compose-{i}" for i in COMPOSE_INTERVALS] + ["tug-http"]:
        b = [r["breakdown"] for r in results[case] if r.get("breakdown")]
        if not b:
            continue
        g = lambda k: med([x[k] for x in b]) * 1000
        rows.append((case, f"{g('pre'):.0f}", f"{g('level'):.0f} = 1000 + {g('level') - 1000:.0f}", f"{g('gate'):.0f}",
                     f"{g('post'):.0f}", f"{g('start_spread'):.0f}", f"{g('create_to_start'):.0f}"))
    table(rows)
    print()
    print(f"2. Start cost: tug up -d of {N} independent services, cold (the daemon starts too). Medians of {ROUNDS} rounds.")
    rows = [("probe", "containers (s)", "processes (s)", "difference (s)", f"per instance (÷{N})", "CPU core-s, containers / processes")]
    for p in START_PROBES:
        c, pr = m(f"start-container-{p}", "time"), m(f"start-process-{p}", "time")
        label = ("none (+ up -d's 500 ms settle)" if p == "none" else "tcp, start_interval 10ms (all listening)")
        rows.append((label, f"{c:.3f}", f"{pr:.3f}", f"{c - pr:.3f}", f"{(c - pr) / N * 1000:.0f} ms",
                     f"{m(f'start-container-{p}', 'cpu'):.1f} / {m(f'start-process-{p}', 'cpu'):.2f}"))
    table(rows)
    d = results["docker-run"]
    single = [x for r in d for x in r["single"]]
    par = med([r["parallel"] for r in d])
    print(f"   reference, the docker CLI: one `docker run -d --network host` {med([x['run'] for x in single]) * 1000:.0f} ms,"
          f" `docker rm -f` {med([x['rm'] for x in single]) * 1000:.0f} ms (medians of {len(single)});"
          f" {N} `docker run -d` at once {par:.2f} s = {par / N * 1000:.0f} ms per container, {med([r['cpu'] for r in d]):.1f} core-s")
    print()
    print("3. The daemon's VmRSS once `up -d` returned (medians):", ", ".join(
        f"{case} {m(case, 'rss_mib'):.1f} MiB" for case in results if case.startswith(("tug-", "start-"))))
    allr = [r for c in results if c != "docker-run" for r in results[c]]
    print(f"   load average (1 min) at the end of the cases: {min(r['load'] for r in allr):.2f}–{max(r['load'] for r in allr):.2f};"
          f" cores busy just before them: {min(r['busy_before'] for r in allr):.2f}–{max(r['busy_before'] for r in allr):.2f}")


def table(rows):
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("   " + "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())


if __name__ == "__main__":
    try:
        main()
    except Failed as e:
        sys.exit(f"containers.sh: {e}")
    except KeyboardInterrupt:
        print("\ninterrupted: cleaning up", file=sys.stderr)
        sys.exit(130)
