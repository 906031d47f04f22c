#!/usr/bin/env bash
# Benchmark: `tug import compose` and `tug check` on a large Compose file (76 services, anchors,
# profiles, every interpolation form; bench/import/gen.py), side by side with Docker Compose's
# own reading of the same file, `docker compose config` (or Compose v1's `docker-compose config`
# where the machine has only that), in one run. Reported as medians and ratios.
#   import: `tug import compose F -o OUT --force`   vs  `compose -f F config` (the resolved model)
#   check:  `tug check -f OUT`                       vs  `compose -f F config -q` (validation only)
# Knobs (environment): ROUNDS (15), SERVICES (76), TUG_BIN (target/release/tug).
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${ROUNDS:-15}
services=${SERVICES:-76}
tug=$(realpath -m "${TUG_BIN:-target/release/tug}")
die() { echo "import.sh: $*" >&2; exit 1; }
command -v python3 >/dev/null || die "python3 is missing (apt-get install python3)"
[ -x "$tug" ] || cargo build --release -q -p tug
if docker compose version >/dev/null 2>&1; then
  compose=(docker compose); compose_name="docker compose $(docker compose version --short)"; v1=""
elif command -v docker-compose >/dev/null; then
  # Compose v1 does not know `${VAR:+alt}`: the file is generated without it.
  compose=(docker-compose); compose_name="docker-compose $(docker-compose version --short)"; v1="--compose-v1"
else
  die "neither \`docker compose\` nor \`docker-compose\` is installed (apt-get install docker-compose)"
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 bench/import/gen.py "$work" "$services" $v1
export PG_PASSWORD=bench-password-0123456789 TUG_SECRETS_KEY=$(head -c 32 /dev/urandom | base64)
"$tug" import compose "$work/compose.yaml" -o "$work/tug.yaml" --force 2>/dev/null ||
  die "tug import failed on the generated file"
"${compose[@]}" -f "$work/compose.yaml" config -q || die "$compose_name refuses the generated file"
python3 - "$rounds" "$tug" "$work" "$compose_name" "${compose[@]}" <<'PY'
import statistics, subprocess, sys, time
rounds, tug, work, name, compose = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5:]
f = f"{work}/compose.yaml"
cases = {
    "import": ([tug, "import", "compose", f, "-o", f"{work}/tug.yaml", "--force"], compose + ["-f", f, "config"]),
    "check": ([tug, "check", "-f", f"{work}/tug.yaml"], compose + ["-f", f, "config", "-q"]),
}
def run(argv):
    t = time.perf_counter()
    subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True, cwd=work)
    return time.perf_counter() - t
print(f"{open(f'{work}/tug.yaml').read().count(chr(10) + '    image: ')} services; {rounds} rounds, interleaved; peer: {name}")
print(f"{'case':8} {'tug median':>12} {'peer median':>12} {'peer / tug':>11}")
for case, (ours, peer) in cases.items():
    a, b = [], []
    for _ in range(rounds):
        a.append(run(ours)); b.append(run(peer))
    ma, mb = statistics.median(a), statistics.median(b)
    print(f"{case:8} {ma*1000:10.1f}ms {mb*1000:10.1f}ms {mb/ma:10.1f}x")
PY
