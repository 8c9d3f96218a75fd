#!/usr/bin/env bash
# The per-round cost of a Python (PyTorch) device against Candle nodes with the same
# MLP (docs/python.md, "Measured"). Needs `pip install ./python torch` and a release
# build; run from the repository root. Prints the median compute per node (rounds 3–20),
# the CPU spent inside the model's own methods, and the same work in PyTorch alone.
set -euo pipefail
out=$(mktemp -d)/overhead
target/release/wdml run examples/python/mixed.toml --out "$out" --rounds 20 \
    --set 'nodes.models=["mlp:256,128","mlp:256,128","ext:torch-mlp"]' \
    --set 'nodes.programs=[{ ids = [2], command = ["python3", "scripts/python-overhead/timed_torch_device.py"] }]' \
    --set channel.time_scale=0 | tail -3
python3 - "$out" <<'PY'
import json, re, statistics as st, sys
out = sys.argv[1]
rows = [json.loads(l) for l in open(f"{out}/metrics.jsonl")]
for n in (0, 1, 2):
    r = [x for x in rows if x["node"] == n and x["round"] > 2]
    print(f"node {n} {r[0]['model']:<14} compute wall {st.median(x['compute_ms'] for x in r):6.1f} ms, "
          f"CPU {st.median(x['compute_cpu_ms'] for x in r):5.1f} ms")
inside = [float(m) for m in re.findall(r"MODEL_CPU_MS (\S+)", open(f"{out}/logs/node-2.log").read())[2:]]
print(f"node 2 inside the model's methods: {st.median(inside):5.1f} ms CPU")
PY
python3 scripts/python-overhead/torch_alone.py 1000
