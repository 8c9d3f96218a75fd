#!/usr/bin/env python3
"""Many devices on one machine: runs `wdml run examples/scale.toml` at growing node
counts and topologies, and measures what the README's performance section reports.

    scripts/scale/bench.py --out /tmp/scale full_mesh:4,16,64,128,256 k_nearest=3:64,256,1024

Per run, from the run directory and from /proc while it runs (sampled every 0.1 to 0.5 s):
- whether it finished, rounds closed, nodes not "finished";
- round time: the coordinator's log, from "round started" to "round closed", median;
- the coordinator's gap between rounds, as its log gives it (`gap_ms`: from the
  barrier's decision, through filing the round into the record, fsync included, to the
  next round's last StartRound handed to its stream), median and largest, and each
  gap's filing (`filed_ms` on "round closed");
- the coordinator's CPU seconds and peak RSS; the nodes' largest peak RSS (VmHWM), and
  the peak of all processes' summed PSS (shared pages counted once);
- the nodes' CPU seconds in all, and per message sent (process CPU clocks, every
  thread: model work included, so read it with the compute share beside it).

Writes OUT/results.jsonl (one object per run) and prints a Markdown table. Nothing here
asserts a speed: these are measurements, to be read with the machine beside them.
"""

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")
PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024


def descendants(root):
    """Pids of every process under `root` (itself included)."""
    children = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(entry))
        except OSError:
            continue
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def read_process(pid):
    """(role, cpu seconds, VmHWM KiB, PSS KiB) of a live process, or None."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
        role = argv[1].decode() if len(argv) > 1 else "?"
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        cpu = (int(fields[11]) + int(fields[12])) / TICK
        hwm = 0
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    hwm = int(line.split()[1])
        pss = 0
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    pss = int(line.split()[1])
        return role, cpu, hwm, pss
    except (OSError, IndexError, ValueError):
        return None


class Sampler(threading.Thread):
    def __init__(self, root):
        super().__init__(daemon=True)
        self.root, self.stop = root, threading.Event()
        self.seen = {}  # pid -> [role, cpu, hwm]
        self.peak_pss_kib = 0

    def run(self):
        while not self.stop.is_set():
            swept = time.monotonic()
            total = 0
            for pid in descendants(self.root):
                if pid == self.root:
                    continue
                got = read_process(pid)
                if got is None:
                    continue
                role, cpu, hwm, pss = got
                entry = self.seen.setdefault(pid, [role, 0.0, 0])
                entry[1] = max(entry[1], cpu)
                entry[2] = max(entry[2], hwm)
                total += pss
            self.peak_pss_kib = max(self.peak_pss_kib, total)
            # Every 0.1 s while a sweep is quick (a run of a few nodes may last about a
            # second, and its nodes would be missed), up to every 0.5 s when a sweep of
            # many processes is itself work for the machine.
            self.stop.wait(min(0.5, max(0.1, 4 * (time.monotonic() - swept))))


STAMP = re.compile(r"^(\S+Z)\s+\S+\s+round (started|closed) round=(\d+)")


def log_times(log):
    """Round number -> {"started": t, "closed": t} in seconds, from the coordinator log."""
    rounds = {}
    for line in log.read_text(errors="replace").splitlines():
        m = STAMP.match(re.sub(r"\x1b\[[0-9;]*m", "", line))
        if not m:
            continue
        t = datetime.fromisoformat(m.group(1).replace("Z", "+00:00")).timestamp()
        entry = rounds.setdefault(int(m.group(3)), {})
        entry[m.group(2)] = t
        for field in ("gap_ms", "filed_ms"):
            value = re.search(field + r"=([0-9.e+-]+)", line)
            if value:
                entry[field] = float(value.group(1))
    return rounds


def one_run(args, topology, nodes):
    name = topology.replace("=", "").replace(":", "") + f"-{nodes}"
    out = Path(args.out) / name
    toml = {"full_mesh": '"full_mesh"', "ring": '"ring"'}.get(topology)
    if toml is None:
        kind, k = topology.split("=")
        toml = f"{{ {kind} = {{ k = {k} }} }}"
    cmd = [args.wdml, "run", args.scenario, "--out", str(out), "--overwrite", "--nodes", str(nodes),
           "--set", f"channel.topology={toml}", "--rounds", str(args.rounds)]
    if args.data_dir:
        cmd += ["--data-dir", args.data_dir]
    for assignment in args.set:
        cmd += ["--set", assignment]
    started = time.monotonic()
    with open(Path(args.out) / f"{name}.log", "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        sampler = Sampler(proc.pid)
        sampler.start()
        try:
            rc = proc.wait(timeout=args.timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = "timeout"
        sampler.stop.set()
        sampler.join()
    wall = time.monotonic() - started
    result = {"topology": topology, "nodes": nodes, "rc": rc, "wall_s": round(wall, 1)}
    summary_file = out / "summary.json"
    if summary_file.exists():
        summary = json.loads(summary_file.read_text())
        statuses = {}
        for node in summary["nodes"]:
            statuses[node["status"]] = statuses.get(node["status"], 0) + 1
        result.update(finished=summary["finished"], rounds_closed=summary["rounds_closed"], statuses=statuses)
    coordinator_log = out / "logs" / "coordinator.log"
    if coordinator_log.exists():
        rounds = log_times(coordinator_log)
        spans = [r["closed"] - r["started"] for r in rounds.values() if {"started", "closed"} <= r.keys()]
        # The coordinator logs each gap: from the barrier's decision (before the
        # record is written) to the next round's last StartRound handed to a stream.
        gaps = [r["gap_ms"] for r in rounds.values() if "gap_ms" in r]
        if spans:
            result["round_ms_median"] = round(1e3 * statistics.median(spans), 1)
        if gaps:
            result["gap_ms_median"] = round(statistics.median(gaps), 2)
            result["gap_ms_max"] = round(max(gaps), 2)
            result["gaps_ms"] = [round(g, 2) for g in gaps]
        # Filing each round (its journal entry and fsync), the gap's first part; the
        # last round's is not followed by a gap.
        filed = [r["filed_ms"] for n, r in sorted(rounds.items()) if "filed_ms" in r and "gap_ms" in rounds.get(n + 1, {})]
        if filed:
            result["filed_ms"] = [round(f, 2) for f in filed]
    roles = {}
    for role, cpu, hwm in sampler.seen.values():
        r = roles.setdefault(role, {"count": 0, "cpu_s": 0.0, "hwm_kib": []})
        r["count"] += 1
        r["cpu_s"] += cpu
        r["hwm_kib"].append(hwm)
    if "coordinator" in roles:
        c = roles["coordinator"]
        result["coordinator_cpu_s"] = round(c["cpu_s"], 2)
        result["coordinator_peak_mib"] = round(max(c["hwm_kib"]) / 1024, 1)
    if "node" in roles:
        n = roles["node"]
        result["node_processes"] = n["count"]
        result["nodes_cpu_s"] = round(n["cpu_s"], 1)
        result["node_peak_mib_max"] = round(max(n["hwm_kib"]) / 1024, 1)
        result["node_peak_mib_median"] = round(statistics.median(n["hwm_kib"]) / 1024, 1)
    result["peak_pss_total_mib"] = round(sampler.peak_pss_kib / 1024, 1)
    metrics = out / "metrics.jsonl"
    if metrics.exists():
        sent = compute = 0.0
        for line in metrics.read_text().splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue
            sent += row.get("messages_sent", 0)
            compute += row.get("compute_cpu_ms", 0) / 1e3
        result["messages_sent"] = int(sent)
        result["nodes_compute_cpu_s"] = round(compute, 1)
        if sent and "nodes_cpu_s" in result:
            result["node_cpu_ms_per_message"] = round(1e3 * (result["nodes_cpu_s"] - compute) / sent, 3)
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="TOPOLOGY:N,N,… (full_mesh, ring, k_nearest=K)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--wdml", default="target/release/wdml")
    parser.add_argument("--scenario", default="examples/scale.toml")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--data-dir")
    parser.add_argument("--set", action="append", default=[])
    parser.add_argument("--timeout", type=float, default=3600)
    args = parser.parse_args()
    Path(args.out).mkdir(parents=True, exist_ok=True)
    results = []
    for spec in args.runs:
        topology, counts = spec.split(":")
        for nodes in map(int, counts.split(",")):
            result = one_run(args, topology, nodes)
            print(json.dumps(result), flush=True)
            with open(Path(args.out) / "results.jsonl", "a") as f:
                f.write(json.dumps(result) + "\n")
            results.append(result)
    print("\n| topology | nodes | finished | round (median) | coordinator gap (median / max) "
          "| node peak RSS | all PSS peak | node CPU per message |")
    print("| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: |")
    for r in results:
        print(f"| {r['topology']} | {r['nodes']} | {r.get('finished')} | {r.get('round_ms_median', '–')} ms "
              f"| {r.get('gap_ms_median', '–')} / {r.get('gap_ms_max', '–')} ms "
              f"| {r.get('node_peak_mib_max', '–')} MiB | {r.get('peak_pss_total_mib', '–')} MiB "
              f"| {r.get('node_cpu_ms_per_message', '–')} ms |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
