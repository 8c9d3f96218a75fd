"""A WDML device whose model is PyTorch: a small ResNet-style CNN that none of the
Rust nodes has (or, with --arch mlp, the Candle nodes' 784-256-128-10 MLP, to compare
the cost of a Python device with a Candle node on one model).

`wdml run examples/python/torch.toml` starts it beside Candle nodes; on its own,
against a running coordinator:

    WDML_NODE_ID=3 WDML_MODEL=ext:torch-resnet WDML_COORDINATOR=HOST:PORT \
        WDML_TLS_DIR=run/tls python3 examples/python/torch_device.py

On CIFAR-10 (`--data-dir cifar-10-batches-bin` on the coordinator's run, see
docs/data.md), the same network takes colour images and the run's classes:

    ... python3 examples/python/torch_device.py --channels 3 --classes 10

Needs `pip install ./python torch`.
"""

import argparse
import sys

import torch
from torch import nn

import wdml
from wdml.torch import TorchModel


class Residual(nn.Module):
    """Two 3×3 convolutions with batch norm, and the identity around them."""

    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(),
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
        )

    def forward(self, x):
        return torch.relu(x + self.body(x))


def resnet(width: int = 16, channels: int = 1, classes: int = 10) -> nn.Module:
    """H×W (28×28, 32×32, …) → stem → residual → pool → residual (2× width) → pool →
    global average → classes."""
    return nn.Sequential(
        nn.Conv2d(channels, width, 3, padding=1, bias=False),
        nn.BatchNorm2d(width),
        nn.ReLU(),
        Residual(width),
        nn.MaxPool2d(2),
        nn.Conv2d(width, 2 * width, 1, bias=False),
        Residual(2 * width),
        nn.MaxPool2d(2),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(2 * width, classes),
    )


def mlp() -> nn.Module:
    """The Candle nodes' default MLP, 784-256-128-10."""
    return nn.Sequential(nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 128), nn.ReLU(), nn.Linear(128, 10))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", choices=["resnet", "mlp"], default="resnet")
    parser.add_argument("--threads", type=int, default=1, help="torch's intra-op threads (1 when devices share a host)")
    parser.add_argument("--channels", type=int, default=1, help="the run's image channels (3 for CIFAR)")
    parser.add_argument("--classes", type=int, default=10, help="the run's classes (100 for CIFAR-100)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.arch == "resnet":
        model = TorchModel(lambda: resnet(channels=args.channels, classes=args.classes), image_shape=True)
    else:
        model = TorchModel(mlp)
    sys.exit(0 if wdml.run(model) else 1)
