"""WDML devices in Python: bring a model, the Rust runtime does the rest.

A device of a WDML run shares only its predictions on each round's public batch with
its radio neighbours, so its model can be written in anything. ``wdml.run(model)``
joins a run as one device whose model is a Python object; the data split, the public
batches, the exchange over the shaped gRPC streams, the radio's accounting and the
reports are the Rust node runtime's, the same a ``wdml node`` runs.

The model is any object with these methods (``wdml.torch.TorchModel`` makes one from a
``torch.nn.Module``)::

    parameter_count() -> int
        Its trainable parameters (declared when it joins), 1 to 50,000,000.
    setup(settings: dict) -> None                                   (optional)
        Called once the run's settings are known: node_id, seed, model_seed (the seed a
        Rust node of this id would initialise from), learning_rate, temperature,
        kl_weight, local_steps, batch_size, public_batch, distill_batch, rounds, nodes,
        algorithm, run_id; and the run's data: classes (K), sample_shape ([C, H, W] for
        images, [D] for feature vectors) and image_shape ((H, W), or None).
    predict(images) -> logits
        images: float32 array (n, values) of normalised samples, each row a sample of
        sample_shape row-major: (n, 784) on Fashion-MNIST (reshape it to
        (n, *sample_shape) for a CNN: a view, no copy). Returns (n, K) logits.
    train_step(images, labels, public, targets, weights) -> (ce, kl, total)
        One optimiser step on a private batch: images (b, values) float32, labels (b,)
        int64; when the neighbours were heard, public (p, values) float32 samples and
        targets (p, K) float32, the aggregate of the neighbours' softened predictions
        (each row a distribution), and weights (p,) float32 or None (all 1). The
        loss of deep mutual learning is ``CE + kl_weight * T^2 * KL(targets ||
        softmax(f(public) / T))`` (``wdml.torch.dml_loss``); public, targets and weights
        are None on a step of CE alone. Returns the three losses as numbers.

An exception in the model ends this device's round with the exception in its log and a
failed report to the coordinator; the run goes on without it.
"""

from __future__ import annotations

import os
from typing import Any, Optional

import numpy as np

from ._wdml import CLASSES, DATA_CONTRACT, IMAGE_SIDE, PROTOCOL_VERSION, run_device

__all__ = ["run", "CLASSES", "IMAGE_SIDE", "PROTOCOL_VERSION", "DATA_CONTRACT"]


class _Arrays:
    """The user's model, with its answers made what the runtime reads: a C-contiguous
    float32 array of logits (any array-like is accepted), three float losses."""

    def __init__(self, model: Any):
        self.model = model
        if hasattr(model, "setup"):
            self.setup = model.setup

    def predict(self, images):
        return np.ascontiguousarray(np.asarray(self.model.predict(images), dtype=np.float32))

    def train_step(self, images, labels, public, targets, weights):
        losses = self.model.train_step(images, labels, public, targets, weights)
        ce, kl, total = losses
        return float(ce), float(kl), float(total)


def _env(name: str) -> Optional[str]:
    value = os.environ.get(name)
    return value if value else None


def run(
    model: Any,
    name: Optional[str] = None,
    *,
    node_id: Optional[int] = None,
    coordinator: Optional[str] = None,
    tls_dir: Optional[str] = None,
    insecure: Optional[bool] = None,
    listen: Optional[str] = None,
    advertise: Optional[str] = None,
    data_dir: Optional[str] = None,
    coordinator_timeout_s: int = 60,
) -> bool:
    """Runs ``model`` as one device of a WDML run until the run is over.

    Every argument left out is read from the environment, as ``wdml node`` reads it
    (``wdml run`` sets these for the programs of ``[[nodes.programs]]``):

    - ``name``: the model's name, the scenario's ``ext:NAME`` for this id
      (``WDML_MODEL``, e.g. ``ext:numpy-mlp``);
    - ``node_id`` (``WDML_NODE_ID``), ``coordinator`` (``WDML_COORDINATOR``,
      default ``127.0.0.1:7000``);
    - ``tls_dir`` (``WDML_TLS_DIR``): the run's certificates (``ca.pem``,
      ``node-<id>.pem`` and ``.key``), or ``insecure`` (``WDML_INSECURE``) to run
      without TLS (debugging only);
    - ``listen`` (``WDML_LISTEN``, default ``127.0.0.1:0``) and ``advertise``
      (``WDML_ADVERTISE``): the device's peer service, as for ``wdml node``;
    - ``data_dir`` (``WDML_DATA_DIR``): overrides the run's dataset directory.

    Returns True when the run finished (every round closed), False when it ended early
    or the device was stopped (SIGINT, SIGTERM: it leaves the run first). Raises
    ValueError for a bad argument and RuntimeError when the device cannot take part
    (refused by the coordinator, a failed round).
    """
    if name is None:
        spec = _env("WDML_MODEL")
        if spec is None:
            raise ValueError("name: give the model's name (the scenario's ext:NAME), or set WDML_MODEL")
        name = spec
    if name.startswith("ext:"):
        name = name[len("ext:"):]
    if node_id is None:
        value = _env("WDML_NODE_ID")
        if value is None:
            raise ValueError("node_id: give this device's id, or set WDML_NODE_ID")
        try:
            node_id = int(value)
        except ValueError:
            raise ValueError(f"WDML_NODE_ID: {value!r} is not a node id") from None
    if insecure is None:
        insecure = (_env("WDML_INSECURE") or "false").lower() in ("1", "true", "yes")
    if tls_dir is None and not insecure:
        tls_dir = _env("WDML_TLS_DIR")
    parameters = model.parameter_count() if callable(getattr(model, "parameter_count", None)) else None
    if not isinstance(parameters, int) or isinstance(parameters, bool):
        raise ValueError("model: parameter_count() must return the model's trainable parameters as an int")
    if not 1 <= parameters <= 50_000_000:
        raise ValueError(f"model: parameter_count() is {parameters}; a model declares 1 to 50,000,000")
    for method in ("predict", "train_step"):
        if not callable(getattr(model, method, None)):
            raise ValueError(f"model: it has no {method}() method (see help(wdml))")
    return run_device(
        _Arrays(model),
        name=name,
        parameters=parameters,
        node_id=node_id,
        coordinator=coordinator or _env("WDML_COORDINATOR") or "127.0.0.1:7000",
        listen=listen or _env("WDML_LISTEN") or "127.0.0.1:0",
        advertise=advertise or _env("WDML_ADVERTISE"),
        tls_dir=tls_dir,
        insecure=bool(insecure),
        data_dir=data_dir or _env("WDML_DATA_DIR"),
        coordinator_timeout_s=coordinator_timeout_s,
    )
