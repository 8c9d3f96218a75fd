# The torch MLP device, with the CPU time spent inside the model's own methods
# (thread CPU clock) written per round to stderr, to split a round's compute into the
# model's work and everything else (the runtime, the bridge, the copies).
import sys, time
sys.path.insert(0, "examples/python")
import torch
torch.set_num_threads(1)
import wdml
from torch_device import mlp
from wdml.torch import TorchModel

class Timed(TorchModel):
    spent = 0.0
    def predict(self, images):
        c = time.thread_time(); out = super().predict(images); Timed.spent += time.thread_time() - c
        if images.shape[0] == 128:  # the public batch: a round begins
            print(f"MODEL_CPU_MS {1e3 * Timed.spent:.2f}", file=sys.stderr, flush=True)
            Timed.spent = time.thread_time() - c
        return out
    def train_step(self, *a):
        c = time.thread_time(); out = super().train_step(*a); Timed.spent += time.thread_time() - c
        return out

sys.exit(0 if wdml.run(Timed(mlp)) else 1)
