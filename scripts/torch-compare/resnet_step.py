#!/usr/bin/env python3
"""A ResNet-8 training step in Candle (the `wdml` binary) against the same in PyTorch.

The model is the CIFAR ResNet of `node/src/model/resnet.rs` (He et al. 2016, §4.2) with
GroupNorm (2 groups, affine) in place of BatchNorm: a 3×3 stem of 16 channels, three
stages of basic blocks of 16/32/64 channels (stride 2 at the start of stages 2 and 3,
a 1×1 stride-2 convolution and its GroupNorm as the shortcut there), global average
pooling and a dense layer to 10 classes. The step: a batch of 64 images 3×32×32,
forward, cross-entropy, backward, Adam (lr 1e-3), as `wdml bench --only resnet` times it.

Both sides run on one thread, in turns: each trial runs `wdml bench --only resnet
--trials 1` (a subprocess: the node's code, allocator and build), then a trial of the
same step in PyTorch (`channels_last`, `torch.set_num_threads(1)`) in this process. Each
trial is the thread CPU time per step over 10 steps after 3 warm-up steps; the figures
are the medians over the trials, and the ratio is Candle's over PyTorch's (below 1:
Candle is faster).

    pip install torch
    cargo build --release
    python3 scripts/torch-compare/resnet_step.py --trials 5
    python3 scripts/torch-compare/resnet_step.py --count   # parameters of ResNet-8/20

PyTorch is not a dependency of the project or its CI; this is run by hand.

Measured 2026-12-07, AMD EPYC (Zen 3, AVX2, no AVX-512), torch 2.15.0 (oneDNN), on a
machine shared with builds (load average 3 to 6 on 2 cores, so every figure is inflated
and noisy; only the interleaved ratio means much), two runs of `--trials 5`:
Candle 191.3 / PyTorch 204.2 ms (0.94), then 170.7 / 165.4 ms (1.03): at parity. In a
profile of the Candle step: the `gemm` crate's kernels and packing 54 %, the im2col
copies 18 %, the group norms 10 %, Candle's gradient accumulation (a zero tensor plus
an addition per gradient) 7 %, page faults on fresh buffers 3 to 5 %.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[2]
BATCH, CLASSES, INPUT = 64, 10, (3, 32, 32)
WARMUP, CALLS = 3, 10  # as in src/cli/bench/resnet.rs
LEARNING_RATE = 1e-3
GROUPS = 2


class Block(nn.Module):
    """A basic block: relu(gn2(conv2(relu(gn1(conv1(x))))) + shortcut(x))."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.gn1 = nn.GroupNorm(GROUPS, cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.gn2 = nn.GroupNorm(GROUPS, cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.GroupNorm(GROUPS, cout))

    def forward(self, x):
        out = F.relu(self.gn1(self.conv1(x)))
        return F.relu(self.gn2(self.conv2(out)) + self.shortcut(x))


class ResNet(nn.Module):
    """ResNet-`depth` (6n + 2) with GroupNorm, named as `resnet.rs` names its parameters."""

    def __init__(self, depth: int, channels: int = 3, classes: int = CLASSES):
        super().__init__()
        assert (depth - 2) % 6 == 0 and depth >= 8
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(channels, 16, 3, 1, 1, bias=False)
        self.gn1 = nn.GroupNorm(GROUPS, 16)
        prev, stages = 16, []
        for i, width in enumerate((16, 32, 64)):
            blocks = []
            for b in range(n):
                blocks.append(Block(prev, width, 2 if i > 0 and b == 0 else 1))
                prev = width
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.fc = nn.Linear(64, classes)
        # torchvision's ResNet initialisation, as `init_seeded_resnet` draws it.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.GroupNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x):
        x = F.relu(self.gn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class TorchStep:
    def __init__(self, depth: int):
        torch.manual_seed(0)
        fmt = torch.channels_last
        self.model = ResNet(depth).to(memory_format=fmt)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=LEARNING_RATE)
        gen = torch.Generator().manual_seed(1)
        self.xs = (torch.rand(BATCH, *INPUT, generator=gen) * 2 - 1).contiguous(memory_format=fmt)
        self.ys = torch.arange(BATCH) % CLASSES

    def __call__(self):
        self.model.train()
        loss = F.cross_entropy(self.model(self.xs), self.ys)
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


def candle_trial(wdml: str, scratch: Path) -> float:
    subprocess.run(
        [wdml, "bench", "--only", "resnet", "--trials", "1", "--out", str(scratch)],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return json.loads((scratch / "resnet.json").read_text())["cpu_ms"][0]


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
    parser.add_argument("--depth", type=int, default=8, help="ResNet depth (6n + 2); the bench's is 8")
    parser.add_argument("--count", action="store_true", help="print ResNet-8/20's parameter counts and exit")
    parser.add_argument("--out", type=Path, help="also write the figures here as JSON")
    args = parser.parse_args()
    if args.count:
        for depth in (8, 20):
            n = sum(p.numel() for p in ResNet(depth).parameters())
            print(f"ResNet-{depth} (GroupNorm, 3×32×32, 10 classes): {n} parameters")
        return 0
    if args.trials < 1:
        parser.error("--trials must be at least 1")
    if not os.access(args.wdml, os.X_OK):
        parser.error(f"--wdml: {args.wdml} is not an executable (cargo build --release?)")
    torch.set_num_threads(1)
    torch.set_num_interop_threads(1)
    step = TorchStep(args.depth)
    candle, theirs = [], []
    with tempfile.TemporaryDirectory() as scratch:
        for t in range(args.trials):
            candle.append(candle_trial(args.wdml, Path(scratch)))
            theirs.append(trial(step))
            print(f"trial {t + 1}/{args.trials}: Candle {candle[-1]:.2f} ms, PyTorch {theirs[-1]:.2f} ms", file=sys.stderr)
    ours, ref = statistics.median(candle), statistics.median(theirs)
    print(
        f"\n{cpu_model()}, torch {torch.__version__} ({torch.backends.cpu.get_cpu_capability()}, "
        f"mkldnn {torch.backends.mkldnn.is_available()}), one thread each; ResNet-{args.depth} GroupNorm "
        f"training step, batch {BATCH}, {INPUT}, Adam; ms of thread CPU per step, median of {args.trials} "
        f"interleaved trials of {CALLS}"
    )
    print(f"Candle  {ours:8.2f}  (trials {', '.join(f'{v:.2f}' for v in candle)})")
    print(f"PyTorch {ref:8.2f}  (trials {', '.join(f'{v:.2f}' for v in theirs)})")
    print(f"ratio Candle / PyTorch: {ours / ref:.3f}")
    if args.out:
        record = {
            "cpu": cpu_model(),
            "torch": torch.__version__,
            "depth": args.depth,
            "trials": args.trials,
            "calls_per_trial": CALLS,
            "candle_ms": candle,
            "torch_ms": theirs,
            "candle_median_ms": ours,
            "torch_median_ms": ref,
            "ratio": ours / ref,
        }
        args.out.write_text(json.dumps(record, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
