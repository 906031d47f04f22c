#!/usr/bin/python3
"""One round of the bad-canary measurement (bench/rollout.sh).

Drives a paced load of --rate requests/s over --conns keep-alive HTTP/1.1 connections (each
connection gets an equal share, its sends on a fixed grid; a late send is not made up with a
burst), records every response (monotonic send and receive time, status, the body's "version",
the answering instance), starts `tug deploy` for the stack in --stack-dir (whose file the caller
already changed to the bad canary), polls `tug rollout status SERVICE --json` every --poll
seconds meanwhile, and stops --tail seconds after the rollout ended. Writes:

  PREFIX.responses.csv   one line per response: t_send, t_recv, status (0: socket error), version,
                         instance, error
  PREFIX.status.jsonl    one line per status poll: t (monotonic, after the call returned) + status
  PREFIX.deploy.txt      `tug deploy`'s output
  PREFIX.json            the figures of the round (times in seconds, monotonic clock)

The figures: first_bad / last_bad (receive time of the first and last response of --bad-version),
rolled_back (the first poll that reported phase rolled_back for the new revision), weight_zero (the
first poll of the new revision reporting weight 0 after it had been above 0, i.e. the daemon
saying traffic is back on stable), and their differences.
"""

import argparse
import http.client
import json
import re
import subprocess
import sys
import threading
import time

VERSION_RE = re.compile(rb'"version":"([^"]*)"')


def load(port, path, period, offset, start, stop, sink):
    """One keep-alive connection sending on a grid of `period` seconds from `start + offset`."""
    conn = None
    slot = start + offset
    while not stop.is_set():
        now = time.monotonic()
        if slot > now:
            time.sleep(slot - now)
        elif now - slot > period:
            slot = now  # late by more than a period: skip, no burst
        slot += period
        if conn is None:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        t_send = time.monotonic()
        try:
            conn.request("GET", path)
            resp = conn.getresponse()
            body = resp.read()
            t_recv = time.monotonic()
            m = VERSION_RE.search(body)
            version = m.group(1).decode() if m else "?"
            sink.append((t_send, t_recv, resp.status, version, resp.getheader("x-demo-instance", "-"), ""))
            if resp.will_close:
                conn.close()
                conn = None
        except Exception as e:  # a socket error: count it, reconnect
            sink.append((t_send, time.monotonic(), 0, "?", "-", type(e).__name__))
            try:
                conn.close()
            except Exception:
                pass
            conn = None
    if conn is not None:
        conn.close()


def status(tug, stack_dir, service):
    try:
        out = subprocess.run([tug, "rollout", "status", service, "--json"], cwd=stack_dir,
                             capture_output=True, timeout=5, text=True)
        return json.loads(out.stdout) if out.returncode == 0 else {"error": out.stderr.strip()}
    except Exception as e:
        return {"error": repr(e)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--rate", type=float, default=200)
    ap.add_argument("--conns", type=int, default=4)
    ap.add_argument("--tug", required=True)
    ap.add_argument("--stack-dir", required=True)
    ap.add_argument("--service", default="web")
    ap.add_argument("--bad-version", default="bad")
    ap.add_argument("--lead", type=float, default=1.0, help="load before the deploy starts (s)")
    ap.add_argument("--tail", type=float, default=2.0, help="load after the rollout ended (s)")
    ap.add_argument("--poll", type=float, default=0.1)
    ap.add_argument("--timeout", type=float, default=120.0, help="give up on the rollout after (s)")
    ap.add_argument("--out", required=True, help="output prefix")
    a = ap.parse_args()

    before = status(a.tug, a.stack_dir, a.service)
    old_revision = before.get("to_revision")

    stop = threading.Event()
    sinks = [[] for _ in range(a.conns)]
    period = a.conns / a.rate
    start = time.monotonic() + 0.05
    threads = [threading.Thread(target=load, args=(a.port, "/", period, i * period / a.conns, start, stop, sinks[i]),
                                daemon=True) for i in range(a.conns)]
    for t in threads:
        t.start()
    time.sleep(a.lead)

    polls = []
    t_deploy = time.monotonic()
    deploy_out = open(a.out + ".deploy.txt", "w")
    deploy = subprocess.Popen([a.tug, "deploy", "--timeout", f"{int(a.timeout)}s"], cwd=a.stack_dir,
                              stdout=deploy_out, stderr=subprocess.STDOUT)
    t_deploy_end = None
    ended = None  # monotonic time the new revision's rollout reached an end phase
    final = {}
    while True:
        s = status(a.tug, a.stack_dir, a.service)
        now = time.monotonic()
        polls.append((now, s))
        if t_deploy_end is None and deploy.poll() is not None:
            t_deploy_end = now
        new = s.get("to_revision") not in (None, old_revision)
        if new and ended is None and s.get("phase") in ("rolled_back", "failed", "complete"):
            ended, final = now, s
        if ended is not None and t_deploy_end is not None:
            break
        if now - t_deploy > a.timeout:
            print(f"canary round: no end within {a.timeout}s", file=sys.stderr)
            deploy.kill()
            break
        time.sleep(a.poll)
    deploy_rc = deploy.wait()
    deploy_out.close()
    if t_deploy_end is None:
        t_deploy_end = time.monotonic()
    time.sleep(a.tail)
    stop.set()
    for t in threads:
        t.join(5)
    t_stop = time.monotonic()

    rows = sorted(r for sink in sinks for r in sink)
    with open(a.out + ".responses.csv", "w") as f:
        f.write("t_send,t_recv,status,version,instance,error\n")
        for r in rows:
            f.write(f"{r[0]:.6f},{r[1]:.6f},{r[2]},{r[3]},{r[4]},{r[5]}\n")
    with open(a.out + ".status.jsonl", "w") as f:
        for t, s in polls:
            f.write(json.dumps({"t": round(t, 6), **s}) + "\n")

    bad = [r for r in rows if r[3] == a.bad_version]
    first_bad = min((r[1] for r in bad), default=None)
    last_bad = max((r[1] for r in bad), default=None)
    new_polls = [(t, s) for t, s in polls if s.get("to_revision") not in (None, old_revision)]
    rolled_back = next((t for t, s in new_polls if s.get("phase") == "rolled_back"), None)
    weight_zero = None
    seen_weight = False
    for t, s in new_polls:
        seen_weight |= (s.get("weight") or 0) > 0
        if seen_weight and (s.get("weight") or 0) == 0:
            weight_zero = t
            break
    first_rolling_back = next((t for t, s in new_polls if (s.get("reason") or "").startswith("rolling back")
                               or s.get("phase") == "rolled_back"), None)
    t0 = rows[0][0] if rows else t_deploy
    t1 = rows[-1][1] if rows else t_stop

    def diff(a_, b_):
        return None if a_ is None or b_ is None else round(b_ - a_, 4)

    result = {
        "requests": len(rows),
        "rate": round(len(rows) / (t1 - t0), 1) if rows and t1 > t0 else 0,
        "ok": sum(1 for r in rows if 200 <= r[2] < 300),
        "status": {str(k): sum(1 for r in rows if r[2] == k) for k in sorted({r[2] for r in rows})},
        "bad_responses": len(bad),
        "bad_500": sum(1 for r in bad if r[2] == 500),
        "stable_failures": sum(1 for r in rows if r[3] != a.bad_version and not 200 <= r[2] < 300),
        "deploy_rc": deploy_rc,
        "deploy_s": diff(t_deploy, t_deploy_end),
        "deploy_to_first_bad_s": diff(t_deploy, first_bad),
        "first_bad_to_last_bad_s": diff(first_bad, last_bad),
        "first_bad_to_weight_zero_s": diff(first_bad, weight_zero),
        "first_bad_to_rolling_back_s": diff(first_bad, first_rolling_back),
        "first_bad_to_rolled_back_s": diff(first_bad, rolled_back),
        "phase": final.get("phase"),
        "reason": final.get("reason"),
        "measured": final.get("measured"),
        "from_revision": final.get("from_revision"),
        "to_revision": final.get("to_revision"),
        "started_at": final.get("started_at"),
        "finished_at": final.get("finished_at"),
        "t": {"load_start": t0, "deploy": t_deploy, "first_bad": first_bad, "last_bad": last_bad,
              "weight_zero": weight_zero, "rolling_back": first_rolling_back, "rolled_back": rolled_back,
              "deploy_end": t_deploy_end, "load_end": t1},
    }
    with open(a.out + ".json", "w") as f:
        json.dump(result, f, indent=1)
    print(json.dumps({k: result[k] for k in ("requests", "rate", "bad_responses", "first_bad_to_last_bad_s",
                                              "first_bad_to_rolled_back_s", "phase", "deploy_rc")}))


if __name__ == "__main__":
    main()
