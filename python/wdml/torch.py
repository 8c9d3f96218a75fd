"""PyTorch models as WDML devices: the loss of deep mutual learning, and an adapter
that makes a ``torch.nn.Module`` the model ``wdml.run`` takes.

    import torch, wdml
    from wdml.torch import TorchModel
    wdml.run(TorchModel(lambda: MyNet()))

The loss is the one WDML's Candle nodes optimise, term for term (``dml_loss``), so a
PyTorch device and a Candle device of one run learn by the same rule.
"""

from __future__ import annotations

from typing import Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["TorchModel", "dml_loss"]


def dml_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    public_logits: Optional[torch.Tensor] = None,
    targets: Optional[torch.Tensor] = None,
    weights: Optional[torch.Tensor] = None,
    temperature: float = 1.0,
    kl_weight: float = 1.0,
):
    """``CE(logits, labels) + kl_weight * T^2 * KL(targets || softmax(public_logits / T))``.

    The KL is summed over classes and averaged over the public rows, each row's term
    weighted by ``weights`` (all 1 when None; a stale neighbour's rows weigh less), as
    WDML's Candle learner computes it. Returns ``(total, ce, kl)`` tensors; ``kl`` is 0
    without public rows or with ``kl_weight`` 0.
    """
    ce = F.cross_entropy(logits, labels)
    if public_logits is None or targets is None or kl_weight == 0:
        zero = ce.new_zeros(())
        return ce, ce, zero
    log_q = F.log_softmax(public_logits / temperature, dim=-1)
    log_p = targets.clamp_min(torch.finfo(targets.dtype).tiny).log()
    per_row = (targets * (log_p - log_q)).sum(dim=-1)
    if weights is not None:
        per_row = per_row * weights
    kl = per_row.sum() / per_row.shape[0]
    return ce + kl_weight * temperature**2 * kl, ce, kl


class TorchModel:
    """A ``torch.nn.Module`` as a WDML device's model.

    ``build`` makes the module; it is called once to count the parameters and again in
    ``setup``, under ``torch.manual_seed(model_seed)``, so the device's initialisation
    follows from the run seed. ``optimizer`` makes the optimiser from the parameters
    and the run's learning rate (default: Adam, as the Candle nodes use).
    ``image_shape`` reshapes the (n, values) samples to the run's sample shape, (n, C, H, W)
    for images (``setup``'s ``sample_shape``; (n, 1, 28, 28) on Fashion-MNIST), for
    convolutional modules.
    """

    def __init__(
        self,
        build: Callable[[], torch.nn.Module],
        optimizer: Optional[Callable] = None,
        image_shape: bool = False,
    ):
        self.build = build
        self.make_optimizer = optimizer or (lambda params, lr: torch.optim.Adam(params, lr=lr))
        self.image_shape = image_shape
        self.module = build()
        self.sample_shape = (1, 28, 28)
        self.optimizer = None
        self.temperature = 1.0
        self.kl_weight = 1.0

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.module.parameters() if p.requires_grad)

    def setup(self, settings: dict) -> None:
        torch.manual_seed(settings["model_seed"] % (1 << 63))
        self.module = self.build()
        self.optimizer = self.make_optimizer(self.module.parameters(), settings["learning_rate"])
        self.temperature = settings["temperature"]
        self.kl_weight = settings["kl_weight"]
        self.sample_shape = tuple(settings["sample_shape"])

    def _input(self, images: np.ndarray) -> torch.Tensor:
        # from_numpy shares the runtime's buffer: no copy.
        x = torch.from_numpy(images)
        return x.view(-1, *self.sample_shape) if self.image_shape else x

    def predict(self, images: np.ndarray) -> np.ndarray:
        self.module.eval()
        with torch.no_grad():
            return self.module(self._input(images)).numpy()

    def train_step(self, images, labels, public=None, targets=None, weights=None):
        if self.optimizer is None:
            raise RuntimeError("TorchModel.train_step before setup: run it with wdml.run")
        self.module.train()
        x, y = self._input(images), torch.from_numpy(labels)
        rows = x.shape[0]
        if public is not None:
            # One forward pass over private and public rows together, as the Candle
            # learner does.
            out = self.module(torch.cat([x, self._input(public)]))
            logits, public_logits = out[:rows], out[rows:]
            t = torch.from_numpy(targets)
            w = None if weights is None else torch.from_numpy(weights)
        else:
            logits, public_logits, t, w = self.module(x), None, None, None
        total, ce, kl = dml_loss(logits, y, public_logits, t, w, self.temperature, self.kl_weight)
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        self.optimizer.step()
        return ce.item(), kl.item(), total.item()
