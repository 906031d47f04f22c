#!/usr/bin/env bash
# Benchmark: `tug check` on a generated 1,000-service stack (goal: under 100 ms).
# For scale, the same file is also only *parsed* by PyYAML's C loader (libyaml),
# the floor any YAML-based tool starts from; the ratio says what validation costs.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v hyperfine >/dev/null || { apt-get update -qq && apt-get install -y -qq hyperfine >/dev/null; }
/usr/bin/python3 -c 'import yaml' 2>/dev/null || { apt-get update -qq && apt-get install -y -qq python3-yaml >/dev/null; }
cargo build --release --quiet
out=bench/out
mkdir -p "$out"
services=${SERVICES:-1000}
python3 bench/gen_stack.py "$services" > "$out/tug.yaml"
echo "stack: $services services, $(wc -l < "$out/tug.yaml") lines, $(du -k "$out/tug.yaml" | cut -f1) KiB"
./target/release/tug check -f "$out/tug.yaml" > "$out/check.txt" || { cat "$out/check.txt"; exit 1; }
tail -1 "$out/check.txt"
hyperfine --warmup 3 --runs 30 --export-json "$out/check.json" \
  -n "tug check" "./target/release/tug check -f $out/tug.yaml" \
  -n "PyYAML CSafeLoader parse only" "/usr/bin/python3 -c 'import yaml; yaml.load(open(\"$out/tug.yaml\"), Loader=yaml.CSafeLoader)'"
/usr/bin/python3 - "$out/check.json" <<'PY'
import json, sys
r = {x["command"]: x for x in json.load(open(sys.argv[1]))["results"]}
t, p = r["tug check"], r["PyYAML CSafeLoader parse only"]
print(f"tug check: mean {t['mean']*1000:.1f} ms (min {t['min']*1000:.1f}, max {t['max']*1000:.1f}); goal < 100 ms: {'met' if t['mean'] < 0.1 else 'NOT met'}")
print(f"ratio tug check / PyYAML parse only: {t['mean']/p['mean']:.2f}x")
PY
