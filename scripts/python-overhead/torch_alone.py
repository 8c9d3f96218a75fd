# The model work of one round of the mixed run, in PyTorch alone (no WDML): 20 steps of
# 32 private + 128 public rows, predictions on 128 public images, evaluation on TEST rows
# in batches of 500. Process CPU time per round, median of 30 rounds after 3 warm-up.
import sys, time, statistics
import numpy as np, torch
sys.path.insert(0, "examples/python")
torch.set_num_threads(1)
from torch_device import mlp
from wdml.torch import TorchModel
TEST = int(sys.argv[1])
m = TorchModel(mlp)
m.setup({"model_seed": 1, "learning_rate": 1e-3, "temperature": 1.0, "kl_weight": 1.0})
rng = np.random.default_rng(0)
x = rng.random((32, 784), dtype=np.float32); y = rng.integers(0, 10, 32).astype(np.int64)
p = rng.random((128, 784), dtype=np.float32); t = np.full((128, 10), 0.1, np.float32)
test = rng.random((TEST, 784), dtype=np.float32)
def one_round():
    m.predict(p)
    for _ in range(20):
        m.train_step(x, y, p, t, None)
    for s in range(0, TEST, 500):
        m.predict(test[s:s+500])
times = []
for i in range(33):
    c = time.process_time(); one_round(); times.append(time.process_time() - c)
print(f"torch alone: {1e3*statistics.median(times[3:]):.1f} ms CPU per round (min {1e3*min(times[3:]):.1f})")
