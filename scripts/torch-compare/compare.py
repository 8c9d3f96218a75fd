#!/usr/bin/env python3
"""A node's model work in Candle (the `wdml` binary) against the same work in PyTorch.

Both sides run on one thread, in turns: each trial runs `wdml bench --only steps
--trials 1` (a subprocess: the node's code, allocator and build), then the same
operations in PyTorch in this process. The figure per side is the least thread CPU time
per call over the trials; the ratio is Candle's over PyTorch's (below 1: Candle is
faster). The operations, batches and losses are those of `src/cli/bench/steps.rs`:

- `logits`: predictions on 256 public images (no gradient);
- `ce`: a training step on 64 private images (cross-entropy, Adam);
- `ce_kl`: the same plus the 256 public images' KL to a peer's predictions (T = 3),
  in one forward pass, as both learners do.

The CNN runs in PyTorch twice: in its default layout (NCHW) and in `channels_last`
(NHWC, the layout Candle's own kernels use).

    pip install torch numpy
    cargo build --release
    python3 scripts/torch-compare/compare.py --trials 9

PyTorch is not a dependency of the project or its CI; this is run by hand.
"""

import argparse
import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[2]
PRIVATE, PUBLIC, CLASSES = 64, 256, 10
WARMUP, CALLS = 3, 30  # as in steps.rs
TEMPERATURE, LEARNING_RATE = 3.0, 1e-3


def load_dml_loss():
    """`dml_loss` from the Python package's PyTorch adapter, without importing the
    package (whose native module needs a maturin build)."""
    spec = importlib.util.spec_from_file_location("wdml_torch", ROOT / "python/wdml/torch.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.dml_loss


dml_loss = load_dml_loss()


def mlp() -> nn.Module:
    """`mlp` (784-256-128-10), as `ModelSpec::default_mlp`."""
    return nn.Sequential(nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 128), nn.ReLU(), nn.Linear(128, 10))


def cnn() -> nn.Module:
    """`cnn:16,32,128`, as `ModelSpec::default_cnn`: two conv3×3 / ReLU / max-pool 2
    stages, then 1568 → 128 → 10."""
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(32 * 7 * 7, 128),
        nn.ReLU(),
        nn.Linear(128, 10),
    )


class TorchSide:
    """One model's three operations in PyTorch."""

    def __init__(self, build, images: bool, channels_last: bool):
        torch.manual_seed(0)
        self.model = build()
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        if channels_last:
            self.model = self.model.to(memory_format=fmt)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=LEARNING_RATE)
        gen = torch.Generator().manual_seed(1)

        def batch(rows):
            x = torch.rand(rows, 784, generator=gen) * 2 - 1
            return x.view(rows, 1, 28, 28).contiguous(memory_format=fmt) if images else x

        self.xs, self.public = batch(PRIVATE), batch(PUBLIC)
        self.both = torch.cat([self.xs, self.public]).contiguous(memory_format=fmt)
        self.ys = torch.arange(PRIVATE) % CLASSES
        peer = torch.randn(PUBLIC, CLASSES, generator=gen)
        self.targets = F.softmax(peer / TEMPERATURE, dim=-1)

    def logits(self):
        self.model.eval()
        with torch.no_grad():
            self.model(self.public)

    def ce(self):
        self.model.train()
        loss, _, _ = dml_loss(self.model(self.xs), self.ys)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()

    def ce_kl(self):
        self.model.train()
        out = self.model(self.both)
        loss, _, _ = dml_loss(out[:PRIVATE], self.ys, out[PRIVATE:], self.targets, None, TEMPERATURE, 1.0)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()


def trial(f) -> float:
    """Thread CPU ms per call of `f` over one trial."""
    for _ in range(WARMUP):
        f()
    start = time.thread_time_ns()
    for _ in range(CALLS):
        f()
    return (time.thread_time_ns() - start) / 1e6 / CALLS


def cpu_model() -> str:
    """The CPU's model name (Linux), for the record."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def candle_trial(wdml: str, scratch: Path) -> dict:
    subprocess.run(
        [wdml, "bench", "--only", "steps", "--trials", "1", "--out", str(scratch)],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    rows = json.loads((scratch / "steps.json").read_text())
    return {(r["model"], r["op"]): r["cpu_ms"] for r in rows}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--wdml", default=str(ROOT / "target/release/wdml"), help="the wdml binary")
    parser.add_argument("--trials", type=int, default=9, help="interleaved trials per side")
    parser.add_argument("--out", type=Path, help="also write the figures here as JSON")
    args = parser.parse_args()
    if args.trials < 1:
        parser.error("--trials must be at least 1")
    if not os.access(args.wdml, os.X_OK):
        parser.error(f"--wdml: {args.wdml} is not an executable (cargo build --release?)")
    torch.set_num_threads(1)
    torch.set_num_interop_threads(1)

    sides = {
        ("mlp", "torch"): TorchSide(mlp, images=False, channels_last=False),
        ("cnn", "torch"): TorchSide(cnn, images=True, channels_last=False),
        ("cnn", "torch channels_last"): TorchSide(cnn, images=True, channels_last=True),
    }
    ops = ["logits", "ce", "ce_kl"]
    candle, theirs = {}, {}
    with tempfile.TemporaryDirectory() as scratch:
        for t in range(args.trials):
            print(f"trial {t + 1}/{args.trials}…", file=sys.stderr)
            for key, ms in candle_trial(args.wdml, Path(scratch)).items():
                candle[key] = min(candle.get(key, float("inf")), ms)
            for (model, variant), side in sides.items():
                for op in ops:
                    ms = trial(getattr(side, op))
                    key = (model, variant, op)
                    theirs[key] = min(theirs.get(key, float("inf")), ms)

    candle_model = {"mlp": "mlp:256,128", "cnn": "cnn:16,32,128"}
    print(
        f"\n{cpu_model()}, torch {torch.__version__} "
        f"({torch.backends.cpu.get_cpu_capability()}), one thread; ms of thread CPU per call, "
        f"least of {args.trials} interleaved trials of {CALLS}; ratio = Candle / PyTorch"
    )
    print(f"{'model':<5} {'op':<7} {'Candle':>8}  {'PyTorch':<22} {'ms':>8} {'ratio':>6}")
    results = []
    for (model, variant), _ in sides.items():
        for op in ops:
            ours = candle[(candle_model[model], op)]
            ref = theirs[(model, variant, op)]
            print(f"{model:<5} {op:<7} {ours:8.3f}  {variant:<22} {ref:8.3f} {ours / ref:6.2f}")
            results.append(
                {"model": model, "op": op, "candle_ms": ours, "torch": variant, "torch_ms": ref, "ratio": ours / ref}
            )
    if args.out:
        record = {
            "cpu": cpu_model(),
            "torch": torch.__version__,
            "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "wdml": args.wdml,
            "trials": args.trials,
            "calls_per_trial": CALLS,
            "results": results,
        }
        args.out.write_text(json.dumps(record, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
