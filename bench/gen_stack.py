#!/usr/bin/env python3
"""Writes a realistic N-service stack file: shared settings (typed, constrained,
per-environment, computed from secrets), services in dependency layers with
probes, environment, deploy and autoscale rules, and a job per layer.
Usage: gen_stack.py N > tug.yaml"""
import sys

n = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
out = ["name: bench", "environments: [development, staging, production]", "settings:"]
for i in range(50):
    out.append(f"  SETTING_{i}: {{ type: int, default: {i + 1}, min: 1, max: 100000 }}")
out += [
    "  LOG_LEVEL:",
    "    type: enum",
    "    values: [DEBUG, INFO, WARNING, ERROR]",
    "    default: INFO",
    "    environments: { development: { default: DEBUG } }",
    "  REDIS_URL: { type: url, schemes: [redis, rediss], default: 'redis://127.0.0.1:6379/0' }",
    "  DB_PASSWORD: { type: secret, min_length: 32, generate: { length: 48, charset: alnum } }",
    "  JWT_KEY: { type: secret, generate: { length: 64, charset: hex } }",
    "  DATABASE_URL: { type: url, value: 'postgresql://app:${DB_PASSWORD}@127.0.0.1:5432/app' }",
    "services:",
]
layers = 10
per_layer = max(1, n // layers)
for i in range(n):
    layer = min(i // per_layer, layers - 1)
    name = f"svc-{i}"
    out.append(f"  {name}:")
    if i % 50 == 0:
        out += ["    kind: job", "    command: [sh, -c, 'exit 0']"]
    else:
        out += [
            "    command: [sleep, '${SETTING_1}']",
            f"    port: {20000 + i}",
            "    replicas: 2",
            "    secrets: [JWT_KEY]",
            "    environment: { PYTHONUNBUFFERED: '1', URL: 'http://${HOST}:${PORT}/' }",
            "    healthcheck: { http: /health, interval: 2s, timeout: 1s, start_interval: 100ms }",
            "    liveness: { tcp: true, interval: 10s }",
            "    deploy: { strategy: canary, steps: [10, 50, 100], analysis: { max_error_rate: 0.5%, max_p99: 200ms } }",
            "    autoscale: { min: 2, max: 8, cpu: 70% }",
            "    resources: { memory: 256Mi, cpu: 500m }",
        ]
    if layer > 0:
        deps = {f"svc-{(layer - 1) * per_layer + k}" for k in (1, 2, 3) if (layer - 1) * per_layer + k < n}
        deps = sorted(d for d in deps if int(d.split("-")[1]) % 50 != 0)
        if deps:
            out.append("    depends_on: { " + ", ".join(f"{d}: healthy" for d in deps) + " }")
print("\n".join(out))
