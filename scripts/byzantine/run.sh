#!/bin/bash
# docs/results.md, "Byzantine predictions": the quickstart with 8 nodes, 0, 1 and 2
# confident liars, under each aggregate, for each seed. One run at a time, niced; a run
# whose summary.json exists is skipped, so the script can be started again.
# Usage: scripts/byzantine/run.sh [OUT (runs/byz)] [SEEDS ("1 2 3 4 5")]
set -u
cd "$(dirname "$0")/../.."
out_dir=${1:-runs/byz}
seeds=${2:-1 2 3 4 5}
mkdir -p "$out_dir"
for seed in $seeds; do
  for liars in "[3]" "[]" "[3,6]"; do
    for agg in mean median trimmed-mean trust-weighted; do
      tag=$(echo "$liars" | tr -d '[],'); tag=${tag:-none}
      out=$out_dir/s$seed-l$tag-$agg
      [ -f "$out/summary.json" ] && continue
      nice -n 10 target/release/wdml run --set nodes.count=8 --set "adversary.nodes=$liars" \
        --set train.aggregate=$agg --set run.seed=$seed --set channel.time_scale=0 \
        --out "$out" --overwrite > "$out.log" 2>&1
      echo "exit $? $out $(grep 'mean final accuracy' "$out.log")"
    done
  done
done
