#!/usr/bin/env python3
"""Draws scripts/scale/bench.py's results.jsonl as one SVG: round time and the
coordinator's gap between rounds against the node count, per topology, on log axes.

    scripts/scale/plot.py docs/results/scale/results-2026-11-26.jsonl docs/results/scale/scale.svg

No dependencies: the SVG is written by hand (the bench machine need not have a plotting
library). Node colours follow the figures' palette: full mesh blue, k-nearest orange.
"""

import json
import math
import sys

W, H, PAD_L, PAD_R, PAD_T, PAD_B = 420, 300, 64, 16, 36, 52
COLOURS = {"full_mesh": "#1f77b4", "k_nearest=3": "#ff7f0e"}
NAMES = {"full_mesh": "full mesh", "k_nearest=3": "k-nearest (k = 3)"}


def panel(x0, title, key, label, runs, y_range):
    lo, hi = y_range
    nodes = [4, 1024]
    sx = lambda n: x0 + PAD_L + (math.log10(n) - math.log10(nodes[0])) / (math.log10(nodes[1]) - math.log10(nodes[0])) * (W - PAD_L - PAD_R)
    sy = lambda v: PAD_T + (math.log10(hi) - math.log10(v)) / (math.log10(hi) - math.log10(lo)) * (H - PAD_T - PAD_B)
    out = [f'<text x="{x0 + W / 2}" y="20" text-anchor="middle" font-size="14">{title}</text>']
    out.append(f'<rect x="{x0 + PAD_L}" y="{PAD_T}" width="{W - PAD_L - PAD_R}" height="{H - PAD_T - PAD_B}" fill="none" stroke="#444"/>')
    for n in [4, 16, 64, 256, 1024]:
        out.append(f'<line x1="{sx(n)}" x2="{sx(n)}" y1="{H - PAD_B}" y2="{H - PAD_B + 4}" stroke="#444"/>')
        out.append(f'<text x="{sx(n)}" y="{H - PAD_B + 16}" text-anchor="middle" font-size="11">{n}</text>')
    out.append(f'<text x="{x0 + PAD_L + (W - PAD_L - PAD_R) / 2}" y="{H - 12}" text-anchor="middle" font-size="12">nodes</text>')
    v = lo
    while v <= hi * 1.0001:
        text = f"{v:g}" if v < 1000 else f"{v / 1000:g}k"
        out.append(f'<line x1="{x0 + PAD_L - 4}" x2="{x0 + W - PAD_R}" y1="{sy(v)}" y2="{sy(v)}" stroke="#ddd"/>')
        out.append(f'<text x="{x0 + PAD_L - 7}" y="{sy(v) + 4}" text-anchor="end" font-size="11">{text}</text>')
        v *= 10
    out.append(f'<text transform="translate({x0 + 16},{PAD_T + (H - PAD_T - PAD_B) / 2}) rotate(-90)" text-anchor="middle" font-size="12">{label}</text>')
    if key == "gap_ms_median":
        # Issue 15's target for 256 nodes.
        out.append(f'<line x1="{x0 + PAD_L}" x2="{x0 + W - PAD_R}" y1="{sy(10)}" y2="{sy(10)}" stroke="#d62728" stroke-dasharray="5,4"/>')
        out.append(f'<text x="{x0 + W - PAD_R - 4}" y="{sy(10) - 5}" text-anchor="end" font-size="11" fill="#d62728">target 10 ms</text>')
    for topology, points in runs.items():
        pts = [(n, r[key]) for n, r in sorted(points.items()) if r.get(key)]
        colour = COLOURS.get(topology, "#7f7f7f")
        path = " ".join(f"{sx(n):.1f},{sy(max(y, lo)):.1f}" for n, y in pts)
        out.append(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="2"/>')
        for n, y in pts:
            out.append(f'<circle cx="{sx(n):.1f}" cy="{sy(max(y, lo)):.1f}" r="3" fill="{colour}"/>')
    return out


def main():
    source, target = sys.argv[1], sys.argv[2]
    runs = {}
    for line in open(source):
        r = json.loads(line)
        runs.setdefault(r["topology"], {})[r["nodes"]] = r
    svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{2 * W}" height="{H + 24}" font-family="DejaVu Sans, sans-serif">',
           '<rect width="100%" height="100%" fill="white"/>']
    svg += panel(0, "round time (median)", "round_ms_median", "ms", runs, (1, 100000))
    svg += panel(W, "coordinator gap between rounds (median)", "gap_ms_median", "ms", runs, (0.1, 1000))
    x = PAD_L
    for topology in runs:
        colour = COLOURS.get(topology, "#7f7f7f")
        svg.append(f'<rect x="{x}" y="{H + 6}" width="14" height="4" fill="{colour}"/>')
        svg.append(f'<text x="{x + 20}" y="{H + 12}" font-size="12">{NAMES.get(topology, topology)}</text>')
        x += 180
    svg.append("</svg>")
    with open(target, "w") as f:
        f.write("\n".join(svg) + "\n")


if __name__ == "__main__":
    main()
