"""A WDML device whose model is written in numpy alone: a two-layer MLP (784-128-10)
trained with Adam on the loss of deep mutual learning, gradients by hand.

For machines without PyTorch. `wdml run examples/python/mixed.toml` starts it beside
Candle nodes; on its own, against a running coordinator:

    WDML_NODE_ID=2 WDML_MODEL=ext:numpy-mlp WDML_COORDINATOR=HOST:PORT \
        WDML_TLS_DIR=run/tls python3 examples/python/numpy_device.py
"""

import sys

import numpy as np

import wdml


class NumpyMlp:
    """784 → hidden → 10, ReLU, PyTorch's default initialisation, Adam."""

    def __init__(self, hidden: int = 128):
        self.sizes = [784, hidden, 10]
        self.init(0)
        self.lr, self.temperature, self.kl_weight = 1e-3, 1.0, 1.0

    def init(self, seed: int) -> None:
        rng = np.random.default_rng(seed)
        self.params = []
        for fan_in, fan_out in zip(self.sizes, self.sizes[1:]):
            bound = 1.0 / np.sqrt(fan_in)
            self.params.append(rng.uniform(-bound, bound, (fan_in, fan_out)).astype(np.float32))
            self.params.append(rng.uniform(-bound, bound, fan_out).astype(np.float32))
        self.m = [np.zeros_like(p) for p in self.params]
        self.v = [np.zeros_like(p) for p in self.params]
        self.step = 0

    # -- what wdml.run asks of a model ---------------------------------------------

    def parameter_count(self) -> int:
        return sum(p.size for p in self.params)

    def setup(self, settings: dict) -> None:
        self.init(settings["model_seed"])
        self.lr = settings["learning_rate"]
        self.temperature = settings["temperature"]
        self.kl_weight = settings["kl_weight"]

    def predict(self, images: np.ndarray) -> np.ndarray:
        return self.forward(images)[-1]

    def train_step(self, images, labels, public=None, targets=None, weights=None):
        rows = images.shape[0]
        x = images if public is None else np.concatenate([images, public])
        h1, logits = self.forward(x)
        # Cross-entropy on the private rows: d/dz = (softmax(z) - onehot) / rows.
        z = logits[:rows]
        log_p = z - z.max(axis=1, keepdims=True)
        log_p -= np.log(np.exp(log_p).sum(axis=1, keepdims=True))
        ce = -log_p[np.arange(rows), labels].mean()
        grad = np.zeros_like(logits)
        grad[:rows] = np.exp(log_p)
        grad[np.arange(rows), labels] -= 1.0
        grad[:rows] /= rows
        kl = 0.0
        if public is not None:
            # λ·T²·KL(t ‖ softmax(z/T)), averaged over the public rows (each weighted):
            # d/dz = λ·T·w·(softmax(z/T) − t) / rows.
            t, T, lam = targets, self.temperature, self.kl_weight
            w = np.ones(len(t), np.float32) if weights is None else weights
            zt = logits[rows:] / T
            log_q = zt - zt.max(axis=1, keepdims=True)
            log_q -= np.log(np.exp(log_q).sum(axis=1, keepdims=True))
            per_row = (t * (np.log(np.maximum(t, np.finfo(np.float32).tiny)) - log_q)).sum(axis=1)
            kl = float((per_row * w).sum() / len(t))
            grad[rows:] = lam * T * w[:, None] * (np.exp(log_q) - t) / len(t)
        total = float(ce) + self.kl_weight * self.temperature**2 * kl
        self.backward(x, h1, grad)
        return float(ce), kl, total

    # -- the network ---------------------------------------------------------------

    def forward(self, x):
        w1, b1, w2, b2 = self.params
        h1 = np.maximum(x @ w1 + b1, 0.0)
        return h1, h1 @ w2 + b2

    def backward(self, x, h1, grad):
        w1, b1, w2, b2 = self.params
        g_w2, g_b2 = h1.T @ grad, grad.sum(axis=0)
        g_h1 = (grad @ w2.T) * (h1 > 0)
        g_w1, g_b1 = x.T @ g_h1, g_h1.sum(axis=0)
        self.adam([g_w1, g_b1, g_w2, g_b2])

    def adam(self, grads, beta1=0.9, beta2=0.999, eps=1e-8):
        self.step += 1
        c1, c2 = 1 - beta1**self.step, 1 - beta2**self.step
        for p, g, m, v in zip(self.params, grads, self.m, self.v):
            m *= beta1
            m += (1 - beta1) * g
            v *= beta2
            v += (1 - beta2) * g * g
            p -= (self.lr * (m / c1) / (np.sqrt(v / c2) + eps)).astype(np.float32)


if __name__ == "__main__":
    sys.exit(0 if wdml.run(NumpyMlp()) else 1)
