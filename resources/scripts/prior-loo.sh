#!/usr/bin/env bash
# The first-touch prior on the training traces, each left out of it in turn: for every
# training trace, a prior learned from the other training traces (tiervisor
# train-prior), then that trace replayed with gru following it (online learning off,
# as the replay loop that chose gru's other defaults). Prints the real programs'
# summed demand faults, accuracy and stall, and the geometric mean of stall over all
# training traces against gru without the prior. docs/predictor-experiments.md,
# "The first-touch prior", has the table this made.
#
#   resources/scripts/prior-loo.sh                         (the shipped settings)
#   resources/scripts/prior-loo.sh --min-traces 3           (options go to train-prior)
#   TIERVISOR_GRU_PRIOR_DEPTH=8 resources/scripts/prior-loo.sh   (gru's knobs from the environment)
#
# Needs target/release/tiervisor (make build) and the training traces (make traces).
set -euo pipefail
cd "$(dirname "$0")/../.."
tiervisor=target/release/tiervisor
traces=(resources/out/traces/train/*.tvt)
[ -x "$tiervisor" ] || { echo "prior-loo: no $tiervisor (make build)" >&2; exit 1; }
[ -e "${traces[0]}" ] || { echo "prior-loo: no training traces (make traces)" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

replay() { # TRACE [VAR=VALUE...]: name, demand faults, prefetches issued and used, stall ns
    local t=$1
    shift
    env TIERVISOR_GRU_ONLINE=off "$@" "$tiervisor" replay --trace "$t" --ram-fraction 0.25 \
        --advisor gru --json | python3 -c '
import json, sys
d = json.load(sys.stdin)[0]
print(sys.argv[1], d["demand_faults"], d["prefetch_issued"], d["prefetch_useful"], d["stall_ns"])
' "$(basename "$t" .tvt)"
}

for t in "${traces[@]}"; do
    name=$(basename "$t" .tvt)
    others=()
    for o in "${traces[@]}"; do [ "$o" = "$t" ] || others+=("$o"); done
    "$tiervisor" train-prior --trace "${others[@]}" -o "$work/$name.json" "$@" 2>/dev/null
    replay "$t" TIERVISOR_GRU_FIRST_TOUCH_PRIOR=0 >>"$work/without"
    replay "$t" TIERVISOR_GRU_FIRST_TOUCH_PRIOR=1 TIERVISOR_GRU_PRIOR="$work/$name.json" >>"$work/with"
    echo "prior-loo: $name done" >&2
done

python3 - "$work/without" "$work/with" <<'EOF'
import math, sys
def rows(path):
    return {r[0]: r[1:] for r in (line.split() for line in open(path))}
without, with_ = rows(sys.argv[1]), rows(sys.argv[2])
print("| | real-program faults | accuracy | stall (ms) | geo-mean stall |")
print("|---|---|---|---|---|")
for label, d in (("without the prior", without), ("with it, each trace left out", with_)):
    real = [v for n, v in d.items() if not n.startswith("guest-")]
    faults = sum(int(v[0]) for v in real)
    issued, used = sum(int(v[1]) for v in real), sum(int(v[2]) for v in real)
    stall = sum(float(v[3]) for v in real) / 1e6
    geo = math.exp(sum(math.log(float(d[n][3]) / float(without[n][3])) for n in d) / len(d))
    print(f"| {label} | {faults:,} | {used / max(issued, 1):.3f} | {stall:,.1f} | {geo:.3f} |")
EOF
