"""The vectors of docs/determinism.md, checked by an implementation written from that page.

Standard library only, like test_contract.py (whose generators it uses). It reads every
fenced block tagged `vector kind=<kind>` in docs/determinism.md, computes the block's
outputs from its inputs by the algorithms the page specifies (the data splits, the
samplers, placement, mobility, shadowing and the topologies), and compares. The Rust side
(node/tests/spec_vectors.rs) checks the same blocks against the code, so a block both
accept is one the page's text is enough to reproduce.

Distances call the C library's `hypot`, as Rust's `f64::hypot` does (Python's
`math.hypot` is its own algorithm). Only determinism.md is read: the message encodings
of protocol.md are left to the Rust test.

Run from the repository root:  python3 -m unittest discover -s python/tests -v
"""

import ctypes
import ctypes.util
import gzip
import json
import math
import pathlib
import struct
import unittest

from test_contract import (
    BATCHES, EXTERNAL, MOBILITY, PLACEMENT, PUBLIC_BATCH, SHADOWING, SplitMix64,
    derive_seed, partial_shuffle, pcg32_key, random_range_u32, rng, shuffle,
)
from ziggurat_tables import ZIG_NORM_F, ZIG_NORM_R, ZIG_NORM_X

ROOT = pathlib.Path(__file__).resolve().parents[2]
_libm = ctypes.CDLL(ctypes.util.find_library("m") or "libm.so.6")
_libm.hypot.restype = ctypes.c_double
_libm.hypot.argtypes = [ctypes.c_double, ctypes.c_double]

STREAMS = {"Placement (1)": 1, "Shadowing (2)": 2, "Fading (3)": 3, "Jitter (4)": 4,
           "FrameLoss (5)": 5, "External (6)": 6, "Mobility (7)": 7, "AirNoise (8)": 8}


# --- Floats, normal, gamma ---------------------------------------------------------------

def _f64(bits):
    return struct.unpack("<d", struct.pack("<Q", bits))[0]


def random_f64(r):
    return (r.next_u64() >> 11) * 2.0 ** -53


def open01(r):
    return _f64((r.next_u64() >> 12) | 0x3FF0_0000_0000_0000) - (1.0 - 2.0 ** -53)


def standard_normal(r):
    x_tab, f_tab = ZIG_NORM_X, ZIG_NORM_F
    while True:
        bits = r.next_u64()
        i = bits & 0xFF
        u = _f64((bits >> 12) | 0x4000_0000_0000_0000) - 3.0
        x = u * x_tab[i]
        if abs(x) < x_tab[i + 1]:
            return x
        if i == 0:
            x, y = 1.0, 0.0
            while -2.0 * y < x * x:
                x = math.log(open01(r)) / ZIG_NORM_R
                y = math.log(open01(r))
            return x - ZIG_NORM_R if u < 0.0 else ZIG_NORM_R - x
        if f_tab[i + 1] + (f_tab[i] - f_tab[i + 1]) * random_f64(r) < math.exp(-x * x / 2.0):
            return x


def gamma(r, shape):
    assert shape > 1.0, "shape 1 (Exp1) and below are not used"
    d = shape - 1.0 / 3.0
    c = 1.0 / math.sqrt(9.0 * d)
    while True:
        x = standard_normal(r)
        v = 1.0 + c * x
        if v <= 0.0:
            continue
        v = v * v * v
        u = open01(r)
        x2 = x * x
        if u < 1.0 - 0.0331 * x2 * x2 or math.log(u) < 0.5 * x2 + d * (1.0 - v + math.log(v)):
            return d * v


# --- The data split ------------------------------------------------------------------------

def equal_sizes(total, n):
    return [total // n + (1 if k < total % n else 0) for k in range(n)]


def equal_runs(items, n):
    runs, start = [], 0
    for size in equal_sizes(len(items), n):
        runs.append(items[start:start + size])
        start += size
    return runs


def log_gamma(r, a):
    u = 1.0 - random_f64(r)
    return math.log(gamma(r, a + 1.0)) + math.log(u) / a


def weights(logs, is_open):
    top = max((l for l, o in zip(logs, is_open) if o), default=-math.inf)
    return [math.exp(l - top) if o else 0.0 for l, o in zip(logs, is_open)]


def class_order(r, classes):
    order = list(range(classes))
    shuffle(order, r)
    return order


def per_class_dirichlet(r, by_class, order, nodes, alpha, balanced):
    total_pool = sum(len(m) for m in by_class)
    fair_share = total_pool / nodes
    for _ in range(1000):
        shards = [[] for _ in range(nodes)]
        for c in order:
            members = by_class[c]
            is_open = [(not balanced) or len(s) < fair_share for s in shards]
            logs = [log_gamma(r, alpha) for _ in range(nodes)]
            w = weights(logs, is_open)
            total = 0.0
            for x in w:
                total += x
            cumulative, start = 0.0, 0
            for k in range(nodes):
                cumulative += w[k]
                if k == nodes - 1:
                    end = len(members)
                else:
                    v = cumulative / total * len(members) if total > 0 else math.nan
                    end = min(max(0 if v != v else int(v), start), len(members))
                shards[k] += members[start:end]
                start = end
        if all(len(s) >= 10 for s in shards):
            return shards
    raise ValueError("no split after 1000 draws")


def per_node_dirichlet(r, by_class, order, nodes, alpha):
    n = [len(by_class[c]) for c in order]
    total = sum(n)
    q = []
    for _ in range(nodes):
        logs = [log_gamma(r, alpha * ni / total) if ni > 0 else -math.inf for ni in n]
        q.append(weights(logs, [ni > 0 for ni in n]))
    used = [0] * len(n)

    def pick(w, u):
        allowed = [i for i in range(len(w)) if used[i] < n[i]]
        mass = 0.0
        for i in allowed:
            mass += w[i]
        if mass <= 0.0:
            return None
        target, cumulative, last = u * mass, 0.0, None
        for i in allowed:
            if w[i] > 0.0:
                cumulative += w[i]
                last = i
                if cumulative > target:
                    return i
        return last

    sizes = equal_sizes(total, nodes)
    shards = [[] for _ in range(nodes)]
    for step in range(sizes[0]):
        for k in range(nodes):
            if step >= sizes[k]:
                continue
            u = random_f64(r)
            i = pick(q[k], u)
            if i is None:
                i = pick([float(x) for x in n], u)
            shards[k].append(by_class[order[i]][used[i]])
            used[i] += 1
    return shards


def split(labels, seed, nodes, partition, public_pool):
    """(public, class order or None, shards) as docs/determinism.md specifies."""
    r = rng(seed)
    order = list(range(len(labels)))
    shuffle(order, r)
    public, pool = order[:public_pool], order[public_pool:]
    kind, _, arg = partition.partition(":")
    kind = kind.strip().lower()
    if kind == "iid":
        return public, None, equal_runs(pool, nodes)
    if kind == "shards":
        k = int(arg)
        shards = equal_runs(sorted(pool, key=lambda i: labels[i]), nodes * k)
        deal = list(range(nodes * k))
        shuffle(deal, r)
        return public, None, [sum((shards[d] for d in deal[j * k:(j + 1) * k]), []) for j in range(nodes)]
    alpha = float(arg)
    # The dataset's classes (its highest label + 1; a file's, as the vectors are), or more
    # if the pool's labels go higher (docs/determinism.md).
    classes = max(max(labels) + 1, max((labels[i] + 1 for i in pool), default=0))
    by_class = [[] for _ in range(classes)]
    for i in pool:
        by_class[labels[i]].append(i)
    corder = class_order(r, classes)
    if kind in ("dirichlet", "dirichlet-balanced"):
        shards = per_class_dirichlet(r, by_class, corder, nodes, alpha, kind == "dirichlet-balanced")
    elif kind == "dirichlet-per-node":
        shards = per_node_dirichlet(r, by_class, corder, nodes, alpha)
    else:
        raise ValueError(partition)
    return public, corder, shards


def embedded_labels():
    data = gzip.decompress((ROOT / "data/fashion-mnist-subset/train-labels-idx1-ubyte.gz").read_bytes())
    magic, count = struct.unpack(">II", data[:8])
    assert magic == 0x801
    return list(data[8:8 + count])


# --- Positions and neighbours -------------------------------------------------------------

RADIO_DEFAULTS = {"path_loss": "d2d", "min_distance_m": 1.0, "shadowing_sigma_db": 8.0,
                  "bandwidth_hz": 1e6, "tx_power_dbm": 20.0, "noise_density_dbm_per_hz": -174.0,
                  "noise_figure_db": 9.0}


def distance(a, b):
    return _libm.hypot(a[0] - b[0], a[1] - b[1])


def placement(channel, run_seed, nodes):
    spec = channel["placement"]
    if "explicit" in spec:
        return [(p["x_m"], p["y_m"]) for p in spec["explicit"]["positions"]]
    area = spec["uniform_square"]["area_m"]
    positions = []
    for i in range(nodes):
        r = SplitMix64(derive_seed(run_seed, PLACEMENT, [i]))
        x = area * random_f64(r)
        positions.append((x, area * random_f64(r)))
    return positions


def waypoint(walk, run_seed, node, start, t):
    r = SplitMix64(derive_seed(run_seed, MOBILITY, [node]))
    at, now, area = start, 0.0, walk["area_m"]
    while True:
        to_x = area * random_f64(r)
        to = (to_x, area * random_f64(r))
        speed = walk["speed_min_mps"] + (walk["speed_max_mps"] - walk["speed_min_mps"]) * random_f64(r)
        leg = distance(at, to) / speed
        if now + leg >= t:
            f = (t - now) / leg if leg > 0.0 else 1.0
            return (at[0] + f * (to[0] - at[0]), at[1] + f * (to[1] - at[1]))
        now += leg
        at = to
        if now + walk.get("pause_s", 0.0) >= t:
            return at
        now += walk.get("pause_s", 0.0)


def traced(samples, node, start, t):
    before = after = None
    for s in samples:
        if s["node"] != node:
            continue
        if s["time_s"] <= t and (before is None or s["time_s"] >= before["time_s"]):
            before = s
        if s["time_s"] >= t and (after is None or s["time_s"] < after["time_s"]):
            after = s
    if before and after and after["time_s"] > before["time_s"]:
        f = (t - before["time_s"]) / (after["time_s"] - before["time_s"])
        return (before["x_m"] + f * (after["x_m"] - before["x_m"]),
                before["y_m"] + f * (after["y_m"] - before["y_m"]))
    s = before or after
    return (s["x_m"], s["y_m"]) if s else start


def positions_at(channel, run_seed, start, t):
    mobility = channel.get("mobility", "static")
    if mobility == "static":
        return list(start)
    if "random_waypoint" in mobility:
        return [waypoint(mobility["random_waypoint"], run_seed, i, p, t) for i, p in enumerate(start)]
    return [traced(mobility["trace"]["samples"], i, p, t) for i, p in enumerate(start)]


class Channel:
    """The links of `channel` (the JSON of RunSettings.channel) at emulated time t."""

    def __init__(self, channel, run_seed, nodes, t):
        self.channel, self.run_seed = channel, run_seed
        self.radio = dict(RADIO_DEFAULTS, **channel.get("radio", {}))
        start = placement(channel, run_seed, nodes)
        self.positions = positions_at(channel, run_seed, start, t)
        self.grid = None
        if channel.get("mobility", "static") != "static":
            self.grid = [positions_at(channel, run_seed, start, float(k)) for k in range(int(math.floor(t)) + 1)]

    def distance(self, i, j):
        return distance(self.positions[i], self.positions[j])

    def shadowing(self, i, j):
        lo, hi = min(i, j), max(i, j)
        sigma = self.radio["shadowing_sigma_db"]
        value = sigma * standard_normal(SplitMix64(derive_seed(self.run_seed, SHADOWING, [lo, hi])))
        decorrelation = self.channel.get("shadowing_decorrelation_m", 8.3)
        for k in range(1, len(self.grid or [])):
            moved = distance(self.grid[k][lo], self.grid[k - 1][lo]) + distance(self.grid[k][hi], self.grid[k - 1][hi])
            if moved == 0.0:
                continue
            rho = math.exp(-moved / decorrelation)
            draw = sigma * standard_normal(SplitMix64(derive_seed(self.run_seed, SHADOWING, [lo, hi, k])))
            value = rho * value + math.sqrt(1.0 - rho * rho) * draw
        return value

    def mean_snr(self, i, j):
        radio = self.radio
        d = max(self.distance(i, j), radio["min_distance_m"])
        law = radio["path_loss"]
        if law == "d2d":
            loss = 148.0 + 40.0 * math.log10(d / 1000.0)
        elif law == "urban":
            loss = 128.1 + 37.6 * math.log10(d / 1000.0)
        else:
            loss = 20.0 * math.log10(4.0 * math.pi * d * law["free_space"]["carrier_hz"] / 299_792_458.0)
        noise = radio["noise_density_dbm_per_hz"] + 10.0 * math.log10(radio["bandwidth_hz"]) + radio["noise_figure_db"]
        return radio["tx_power_dbm"] - loss - self.shadowing(i, j) + 10.0 * math.log10(1.0) - noise

    def neighbours(self):
        n, topology = len(self.positions), self.channel["topology"]
        if topology == "full_mesh":
            return [[j for j in range(n) if j != i] for i in range(n)]
        if topology == "ring":
            return [[j for j in range(n) if j != i and (j == (i + 1) % n or j == (i + n - 1) % n)] for i in range(n)]
        if "k_nearest" in topology:
            k = topology["k_nearest"]["k"]
            nearest = [[j for _, j in sorted((self.distance(i, j), j) for j in range(n) if j != i)[:k]]
                       for i in range(n)]
            return [[j for j in range(n) if j != i and (j in nearest[i] or i in nearest[j])] for i in range(n)]
        threshold = topology["radio_range"]["min_snr_db"]
        return [[j for j in range(n) if j != i and self.mean_snr(i, j) >= threshold] for i in range(n)]


# --- The vectors ---------------------------------------------------------------------------

def blocks(page):
    found, current = [], None
    for number, line in enumerate((ROOT / page).read_text().splitlines(), 1):
        if current is None:
            if line.strip().startswith("```vector"):
                kind = next(w[5:] for w in line.split() if w.startswith("kind="))
                current = (number, kind, {})
        elif line.strip() == "```":
            found.append(current)
            current = None
        elif line.strip():
            key, value = line.split(":", 1)
            current[2][key.strip()] = value.strip()
    return found


def ints(text):
    return [int(x, 0) for x in text.split(",") if x.strip()]


def show(x):
    """A float as Rust's `{:?}` prints it (Python's repr, exponents written as Rust does)."""
    text = repr(x)
    if "e" in text:
        mantissa, exponent = text.split("e")
        text = "%se%d" % (mantissa, int(exponent))
    return text


def join(items):
    return ", ".join(str(i) for i in items)


def compute(kind, v):
    """The outputs of a block of `kind` with inputs `v`, or None for a kind not done here."""
    if kind == "splitmix64":
        r = SplitMix64(int(v["seed"], 0))
        return {"next_u64": ", ".join("0x%016x" % r.next_u64() for _ in range(int(v["count"])))}
    if kind == "derive-seed":
        return {"seed": str(derive_seed(int(v["run_seed"]), STREAMS[v["stream"]], ints(v["words"])))}
    if kind == "chacha12":
        seed = int(v["seed"])
        r = rng(seed)
        out = {"key": ", ".join("0x%08x" % w for w in pcg32_key(seed)),
               "next_u32 x 8": ", ".join("0x%08x" % r.next_u32() for _ in range(8))}
        r = rng(seed)
        r.next_u32()
        out["next_u64 after 1 next_u32"] = "0x%016x" % r.next_u64()
        r = rng(seed)
        for _ in range(63):
            r.next_u32()
        out["next_u64 after 63 next_u32"] = "0x%016x" % r.next_u64()
        out["next_u32 after that"] = "0x%08x" % r.next_u32()
        return out
    if kind == "uniform-f64":
        seed = int(v["seed"])
        r1, r2, r3 = rng(seed), rng(seed), SplitMix64(seed)
        return {"chacha12 random f64 x 4": join(show(random_f64(r1)) for _ in range(4)),
                "chacha12 open01 f64 x 4": join(show(open01(r2)) for _ in range(4)),
                "splitmix64 random f64 x 4": join(show(random_f64(r3)) for _ in range(4))}
    if kind == "bounded-u32":
        r = rng(int(v["seed"]))
        return {"draws": join(random_range_u32(r, int(v["bound"])) for _ in range(int(v["count"])))}
    if kind == "shuffle":
        seed, length, amount = int(v["seed"]), int(v["len"]), int(v["amount"])
        order = list(range(length))
        shuffle(order, rng(seed))
        chosen, rest = partial_shuffle(list(range(length)), rng(seed), amount)
        return {"shuffle": join(order), "partial_shuffle chosen": join(chosen), "partial_shuffle rest": join(rest)}
    if kind == "normal":
        r = SplitMix64(int(v["seed"]))
        return {"splitmix64 standard normal": join(show(standard_normal(r)) for _ in range(int(v["count"])))}
    if kind == "gamma":
        r = rng(int(v["seed"]))
        return {"chacha12 gamma": join(show(gamma(r, float(v["shape"]))) for _ in range(int(v["count"])))}
    if kind == "public-batch":
        seed = derive_seed(int(v["run_seed"]), EXTERNAL, [PUBLIC_BATCH, int(v["round"])])
        chosen, _ = partial_shuffle(list(range(int(v["public_pool"]))), rng(seed), int(v["public_batch"]))
        return {"public_seed": str(seed), "rows": join(chosen)}
    if kind == "private-batches":
        seed = derive_seed(int(v["run_seed"]), EXTERNAL, [BATCHES, int(v["node"])])
        samples = int(v["samples"])
        b = max(min(int(v["batch_size"]), samples), 1)
        r = rng(seed)
        order = list(range(samples))
        shuffle(order, r)
        out, position = {"seed": str(seed)}, 0
        for k in range(int(v["batches"])):
            if position + b > samples:
                shuffle(order, r)
                position = 0
            out["batch %d" % k] = join(order[position:position + b])
            position += b
        return out
    if kind in ("split", "split-embedded"):
        labels = ints(v["labels"]) if kind == "split" else embedded_labels()
        public, corder, shards = split(labels, int(v["seed"]), int(v["nodes"]), v["partition"], int(v["public_pool"]))
        if kind == "split":
            out = {"public": join(public)}
            if corder is not None:
                out["class order"] = join(corder)
            out.update(("node %d" % k, join(s)) for k, s in enumerate(shards))
            return out
        test = int(v["test_size"]) or 1000
        out = {"public (first 10)": join(public[:10]), "test": "0 .. %d" % test}
        if corder is not None:
            out["class order"] = join(corder)
        for k, s in enumerate(shards):
            histogram = [0] * 10
            for i in s:
                histogram[labels[i]] += 1
            out["node %d histogram" % k] = join(histogram)
            out["node %d (first 10)" % k] = join(s[:10])
        return out
    if kind in ("placement", "topology"):
        nodes = int(v["nodes"])
        channel = Channel(json.loads(v["channel"]), int(v["run_seed"]), nodes, float(v["t"]))
        out = {"position %d" % i: "%s, %s" % (show(x), show(y)) for i, (x, y) in enumerate(channel.positions)}
        if kind == "topology":
            for i in range(nodes):
                for j in range(i + 1, nodes):
                    out["link %d-%d" % (i, j)] = "distance %s, shadowing %s, mean snr %s" % (
                        show(channel.distance(i, j)), show(channel.shadowing(i, j)), show(channel.mean_snr(i, j)))
            for i, neighbours in enumerate(channel.neighbours()):
                out["neighbours %d" % i] = join(neighbours) or "none"
        return out
    return None


class DocumentVectors(unittest.TestCase):
    def test_determinism_page(self):
        checked = 0
        for line, kind, values in blocks("docs/determinism.md"):
            outputs = compute(kind, values)
            if outputs is None:
                continue
            with self.subTest(line=line, kind=kind):
                for key, value in outputs.items():
                    self.assertEqual(values.get(key), value, "docs/determinism.md:%d %s" % (line, key))
            checked += 1
        self.assertGreaterEqual(checked, 25)


if __name__ == "__main__":
    unittest.main()
