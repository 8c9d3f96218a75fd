#!/usr/bin/env python3
"""DP-SGD's step in Candle (the `wdml` binary) against the same in Opacus (PyTorch).

The models are the project's defaults on Fashion-MNIST's shape, as
`node/src/model/mlp.rs` and `cnn.rs` build them: `mlp` (784 → 256 → 128 → 10, ReLU
between, 235,146 parameters) and `cnn:16,32,128` (two stages of a 3×3 convolution with
padding 1, a 2×2 max-pool and ReLU, 1 → 16 → 32 channels, then 1568 → 128 → 10,
206,922 parameters; the script prints its counts and checks them). The batch: 32 fixed
images (the default `train.batch_size`, the same rows every step), 10 classes,
cross-entropy, Adam (lr 1e-3). Two steps per model, as `wdml bench --only dp` times them:

- plain: forward, cross-entropy, backward, Adam;
- DP: Opacus's `GradSampleModule` (its per-sample-gradient hooks) and `DPOptimizer`
  (`noise_multiplier` σ = 1, `max_grad_norm` C = 1, `expected_batch_size` 32): forward,
  cross-entropy, backward with per-sample gradients, each clipped to C, summed, plus
  N(0, (σC)²) per coordinate, divided by 32, Adam. Candle's is
  `Learner::private_step` on the same rows: one forward and backward per row, then
  the same clipping, noise, division and Adam.

Both sides run on one thread, in turns: each trial runs `wdml bench --only dp
--trials 1` (a subprocess: the node's code, allocator and build), then a trial of each
PyTorch step in this process (`torch.set_num_threads(1)`; the CNN in PyTorch's default
NCHW layout, which Opacus's convolution hooks unfold). A trial is the thread CPU time
per step over 30 plain or 10 DP steps after 3 warm-up steps, as in
`src/cli/bench/dp.rs`; the figures are the medians over the trials, and the ratios are
Candle's over PyTorch's or Opacus's (below 1: Candle is faster).

    pip install torch opacus
    cargo build --release
    python3 scripts/torch-compare/opacus_step.py --trials 7
    python3 scripts/torch-compare/opacus_step.py --count   # parameters of both models

PyTorch and Opacus are not dependencies of the project or its CI; this is run by hand.

Measured 2026-12-07 at 399000e (per-example gradients clipped and summed on f32
buffers), AMD EPYC (Zen 4, AVX-512, 2 cores, KVM), torch 2.15.0, opacus 1.6.0, load
average ~9.8 on 2 cores (the ratios mean more than the milliseconds); `--trials 7
--keep-heap`, ms of thread CPU per step, medians:

    model  plain Candle  DP Candle  plain torch  Opacus DP  DP Candle/Opacus
    mlp        0.65         6.90        1.47        13.92        0.50
    cnn        4.27        11.74        9.71        23.24        0.51

`--keep-heap` keeps glibc from handing Opacus's per-sample gradients (25.7 MB for the
MLP's first layer) back to the operating system after every step: without it Opacus's
MLP step is bimodal (14 to 18 ms, or 35 to 42 ms with ~11,000 page faults a step), and
the ratios above are against its faster mode. At ecc051e, before the buffers, Candle's DP
step was 0.95 to 1.08 (MLP) and 0.81 (CNN) of Opacus's (raw data: docs/results/dp/).
docs/privacy.md has the whole account.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[2]
BATCH, CLASSES = 32, 10
WARMUP = 3
CALLS = {"plain": 30, "dp": 10}  # as OPS in src/cli/bench/dp.rs
LEARNING_RATE = 1e-3
NOISE_MULTIPLIER, MAX_GRAD_NORM = 1.0, 1.0
PARAMETERS = {"mlp": 235_146, "cnn": 206_922}  # ModelSpec::parameter_count on Fashion-MNIST
# glibc malloc's settings for `--keep-heap`: allocations up to 32 MiB from the heap
# (an MLP's per-sample gradients of fc1 are 25.7 MB) and the heap never trimmed.
KEEP_HEAP = {"MALLOC_MMAP_THRESHOLD_": str(32 << 20), "MALLOC_TRIM_THRESHOLD_": str(1 << 40)}
# The names `wdml bench --only dp` gives the models in dp.json.
SPEC = {"mlp": "mlp:256,128", "cnn": "cnn:16,32,128"}


def mlp() -> nn.Module:
    """`mlp` (784-256-128-10), as `ModelSpec::default_mlp`."""
    return nn.Sequential(nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 128), nn.ReLU(), nn.Linear(128, 10))


def cnn() -> nn.Module:
    """`cnn:16,32,128`, as `ModelSpec::default_cnn`: two conv3×3 (padding 1) / max-pool 2
    / ReLU stages, then 1568 → 128 → 10. (Candle's stage pools before its ReLU, the
    same function; PyTorch's order here does not change the time.)"""
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1),
        nn.MaxPool2d(2),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.MaxPool2d(2),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(32 * 7 * 7, 128),
        nn.ReLU(),
        nn.Linear(128, 10),
    )


BUILD = {"mlp": mlp, "cnn": cnn}


def count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def batch(name: str):
    gen = torch.Generator().manual_seed(1)
    xs = torch.rand(BATCH, 784, generator=gen) * 2 - 1
    if name == "cnn":
        xs = xs.reshape(BATCH, 1, 28, 28).contiguous()
    return xs, torch.arange(BATCH) % CLASSES


class Plain:
    """forward, cross-entropy, backward, Adam."""

    def __init__(self, name: str):
        torch.manual_seed(0)
        self.model = BUILD[name]()
        self.opt = torch.optim.Adam(self.model.parameters(), lr=LEARNING_RATE)
        self.xs, self.ys = batch(name)

    def __call__(self):
        loss = F.cross_entropy(self.model(self.xs), self.ys)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()


class Private:
    """Opacus's DP-SGD step on a fixed batch: per-sample gradients by its hooks, clip to
    C, sum, Gaussian noise σ·C, divide by the expected batch, Adam."""

    def __init__(self, name: str):
        from opacus import GradSampleModule
        from opacus.optimizers import DPOptimizer

        torch.manual_seed(0)
        self.model = GradSampleModule(BUILD[name]())
        adam = torch.optim.Adam(self.model.parameters(), lr=LEARNING_RATE)
        self.opt = DPOptimizer(
            adam,
            noise_multiplier=NOISE_MULTIPLIER,
            max_grad_norm=MAX_GRAD_NORM,
            expected_batch_size=BATCH,
        )
        self.xs, self.ys = batch(name)

    def __call__(self):
        self.opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(self.model(self.xs), self.ys)
        loss.backward()
        self.opt.step()


def trial(f, calls: int) -> float:
    """Thread CPU ms per call of `f` over one trial."""
    for _ in range(WARMUP):
        f()
    start = time.thread_time_ns()
    for _ in range(calls):
        f()
    return (time.thread_time_ns() - start) / 1e6 / calls


def candle_trial(wdml: str, scratch: Path) -> dict:
    """One trial of `wdml bench --only dp`: {(model, op): ms}."""
    subprocess.run(
        [wdml, "bench", "--only", "dp", "--trials", "1", "--out", str(scratch)],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return {(t["model"], t["op"]): t["cpu_ms"][0] for t in json.loads((scratch / "dp.json").read_text())}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--wdml", default=str(ROOT / "target/release/wdml"), help="the wdml binary")
    parser.add_argument("--trials", type=int, default=5, help="interleaved trials per side")
    parser.add_argument("--count", action="store_true", help="print the models' parameter counts and exit")
    parser.add_argument("--out", type=Path, help="also write the figures here as JSON")
    parser.add_argument(
        "--keep-heap",
        action="store_true",
        help="run PyTorch with glibc's malloc told to keep freed memory (no page faults on the "
        "per-sample gradients' fresh buffers; the wdml side uses mimalloc either way)",
    )
    args = parser.parse_args()
    if args.keep_heap and os.environ.get("MALLOC_TRIM_THRESHOLD_") is None:
        # glibc reads these at start-up: run this script again with them set.
        env = dict(os.environ, **KEEP_HEAP)
        os.execve(sys.executable, [sys.executable, *sys.argv], env)
    for name, build in BUILD.items():
        n = count(build())
        if args.count:
            print(f"{name}: {n} parameters")
        if n != PARAMETERS[name]:
            sys.exit(f"{name}: {n} parameters, but the project's has {PARAMETERS[name]}")
    if args.count:
        return 0
    if args.trials < 1:
        parser.error("--trials must be at least 1")
    if not os.access(args.wdml, os.X_OK):
        parser.error(f"--wdml: {args.wdml} is not an executable (cargo build --release?)")
    import opacus

    # Opacus warns that its random source is not cryptographic (`secure_mode` off, its
    # default), and PyTorch that the hooks fire on a module whose input needs no
    # gradient (the first layer's): neither changes the step's time.
    warnings.filterwarnings("ignore", module="opacus")
    warnings.filterwarnings("ignore", message="Full backward hook")
    torch.set_num_threads(1)
    torch.set_num_interop_threads(1)
    steps = {(name, op): (Plain if op == "plain" else Private)(name) for name in BUILD for op in ("plain", "dp")}
    candle = {key: [] for key in steps}
    theirs = {key: [] for key in steps}
    parts = {}
    with tempfile.TemporaryDirectory() as scratch:
        for t in range(args.trials):
            ours = candle_trial(args.wdml, Path(scratch))
            for key in steps:
                candle[key].append(ours[(SPEC[key[0]], key[1])])
            for (model, op), ms in ours.items():
                parts.setdefault((model, op), []).append(ms)
            for key, step in steps.items():
                theirs[key].append(trial(step, CALLS[key[1]]))
            print(
                f"trial {t + 1}/{args.trials}: "
                + ", ".join(f"{m} {op} Candle {candle[(m, op)][-1]:.2f} / torch {theirs[(m, op)][-1]:.2f}" for m, op in steps),
                file=sys.stderr,
            )
    med = {key: (statistics.median(candle[key]), statistics.median(theirs[key])) for key in steps}
    print(
        f"\n{cpu_model()}, torch {torch.__version__} ({torch.backends.cpu.get_cpu_capability()}), "
        f"opacus {opacus.__version__}, one thread each; batch {BATCH} fixed rows, σ = {NOISE_MULTIPLIER}, "
        f"C = {MAX_GRAD_NORM}, Adam; glibc malloc {'keeping freed memory' if args.keep_heap else 'as it is'}; "
        f"ms of thread CPU per step, median of {args.trials} interleaved trials; "
        f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())} at the end"
    )
    print(
        f"{'model':<6} {'plain Candle':>13} {'DP Candle':>10} {'plain torch':>12} {'Opacus DP':>10}"
        f" {'Candle DP/plain':>16} {'Opacus DP/plain':>16} {'DP Candle/Opacus':>17} {'plain Candle/torch':>19}"
    )
    for name in BUILD:
        (cp, tp), (cd, td) = med[(name, "plain")], med[(name, "dp")]
        print(
            f"{name:<6} {cp:13.2f} {cd:10.2f} {tp:12.2f} {td:10.2f} {cd / cp:16.1f} {td / tp:16.1f}"
            f" {cd / td:17.2f} {cp / tp:19.2f}"
        )
    print("Candle's DP step, its parts timed alone (medians, ms):")
    for name in BUILD:
        spec = SPEC[name]
        cells = [f"{op} {statistics.median(parts[(spec, op)]):.2f}" for op in ("dp_per_example", "dp_clip_sum", "dp_noise")]
        print(f"  {name}: {', '.join(cells)}")
    if args.out:
        record = {
            "cpu": cpu_model(),
            "torch": torch.__version__,
            "opacus": opacus.__version__,
            "keep_heap": args.keep_heap,
            "trials": args.trials,
            "calls_per_trial": CALLS,
            "load_average_end": os.getloadavg(),
            "candle_ms": {f"{m} {op}": v for (m, op), v in candle.items()},
            "torch_ms": {f"{m} {op}": v for (m, op), v in theirs.items()},
            "candle_parts_ms": {f"{m} {op}": v for (m, op), v in parts.items()},
            "medians_ms": {f"{m} {op}": {"candle": c, "torch": t} for (m, op), (c, t) in med.items()},
        }
        args.out.write_text(json.dumps(record, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
