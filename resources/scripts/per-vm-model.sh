#!/usr/bin/env bash
# What a VM's own model buys its next run (docs/predictor.md, "Per-VM models across
# runs"): each trace is replayed twice with gru, as two runs of the same VM. The first
# starts from the shipped base model and saves what online learning made of it
# (`--save-model`); the second starts from that file (`--model`). Prints, per trace and
# summed, the weight updates online learning made in the first run, the model's mean
# loss over its windows (what the anomaly detector sees, TIERVISOR_ANOMALY_DEBUG), and
# demand faults, prefetch accuracy and stall of both runs.
#
#   resources/scripts/per-vm-model.sh TRACE...
#   TIERS=resources/tiers/bench-constrained.toml resources/scripts/per-vm-model.sh \
#       resources/out/traces/eval/*.tvt
# TIERS: a tier file for both replays (default: none, unbounded storage tiers).
set -euo pipefail
cd "$(dirname "$0")/../.."
. resources/scripts/built.sh per-vm-model
if [ $# -eq 0 ]; then
    echo "per-vm-model: name the traces to replay (e.g. resources/out/traces/eval/*.tvt)" >&2
    exit 2
fi
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
tiers=()
[ -n "${TIERS:-}" ] && tiers=(--tiers "$TIERS")
echo "per-vm-model: ${#} traces, tiers ${TIERS:-unbounded}" >&2
for t in "$@"; do
    name=$(basename "$t" .tvt)
    TIERVISOR_ANOMALY_DEBUG=1 "$TIERVISOR" replay --trace "$t" --ram-fraction 0.25 \
        --advisor gru "${tiers[@]}" --json --save-model "$WORK/$name.bpk" \
        > "$WORK/$name.first.json" 2> "$WORK/$name.first.err" \
        || { grep -v '^anomaly:' "$WORK/$name.first.err" >&2; exit 1; }
    TIERVISOR_ANOMALY_DEBUG=1 "$TIERVISOR" replay --trace "$t" --ram-fraction 0.25 \
        --advisor gru "${tiers[@]}" --json --model "$WORK/$name.bpk" \
        > "$WORK/$name.second.json" 2> "$WORK/$name.second.err" \
        || { grep -v '^anomaly:' "$WORK/$name.second.err" >&2; exit 1; }
    echo "  $name" >&2
done
python3 - "$WORK" "$@" <<'PY'
import json, os, sys
work, traces = sys.argv[1], sys.argv[2:]
import re
def mean_loss(name, run):
    with open(os.path.join(work, f"{name}.{run}.err")) as f:
        losses = [float(m.group(1)) for m in re.finditer(r"^anomaly: window \d+ loss ([0-9.]+)", f.read(), re.M)]
    return sum(losses) / len(losses) if losses else float("nan")


print("| trace | weight updates in the first run | mean model loss first -> second | faults first -> second | accuracy first -> second | stall ms first -> second | second / first stall |")
print("|---|---|---|---|---|---|---|")
tot = {"first": [0, 0, 0, 0.0], "second": [0, 0, 0, 0.0]}
for t in traces:
    name = os.path.basename(t)[:-4]
    r = {}
    for run in ("first", "second"):
        with open(os.path.join(work, f"{name}.{run}.json")) as f:
            g = json.load(f)[0]
        r[run] = g
        tot[run][0] += g["demand_faults"]
        tot[run][1] += g["prefetch_issued"]
        tot[run][2] += g["prefetch_useful"]
        tot[run][3] += g["stall_ns"] / 1e6
    a, b = r["first"], r["second"]
    with open(os.path.join(work, f"{name}.first.err")) as f:
        m = re.search(r"\((\d+) weight updates", f.read())
    updates = m.group(1) if m else "?"
    print(f"| {name} | {updates} | {mean_loss(name, 'first'):.4f} -> {mean_loss(name, 'second'):.4f} | {a['demand_faults']:,} -> {b['demand_faults']:,} | "
          f"{a['accuracy']:.3f} -> {b['accuracy']:.3f} | "
          f"{a['stall_ns'] / 1e6:,.1f} -> {b['stall_ns'] / 1e6:,.1f} | "
          f"{b['stall_ns'] / max(a['stall_ns'], 1):.3f} |")
a, b = tot["first"], tot["second"]
acc = lambda x: x[2] / x[1] if x[1] else 0.0
print(f"| all | | | {a[0]:,} -> {b[0]:,} | {acc(a):.3f} -> {acc(b):.3f} | "
      f"{a[3]:,.1f} -> {b[3]:,.1f} | {b[3] / max(a[3], 1e-9):.3f} |")
PY
