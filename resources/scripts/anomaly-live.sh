#!/usr/bin/env bash
# Pattern-change detection in live VMs, scored: the test guest's phases workload
# (a scan, a uniform, a Zipf and a strided walk over four 4 MiB regions, twice) under
# `tiervisor run --advisor gru`, recorded with --trace-out. Where the guest moves to
# another region is read from the recording by `anomaly_eval --region-moves`, the code
# that cuts the phases recording for the replays (docs/anomaly.md); the advisor's logged changes
# (tiers.advisor_online.anomalies) are scored against those times. Each entry of
# CONFIGS is one detector setting, run once per seed, interleaved.
#
#   resources/scripts/anomaly-live.sh
#   SEEDS=21,41,61,81 CONFIGS="TIERVISOR_ANOMALY_SPREAD=0 TIERVISOR_ANOMALY_SPREAD=1" resources/scripts/anomaly-live.sh
#
# An alarm counts for the latest region change before it if it comes within 16 of the
# run's mean model windows of it; any other alarm is false. A recording that does not
# show the initial fill of the four regions and then eight moves is reported and left
# out.
set -euo pipefail
cd "$(dirname "$0")/../.."

. resources/scripts/built.sh anomaly-live
# The region moves come from the same code that cuts the replays' phases recordings.
${CARGO:-cargo} build --release -q -p predictor --example anomaly_eval
export ANOMALY_EVAL=target/release/examples/anomaly_eval
WORKDIR=$(disk_workdir anomaly-live)
trap 'rm -rf "$WORKDIR"' EXIT
export TIERVISOR GUEST WORKDIR
export SEEDS=${SEEDS:-21,41,61}
export CONFIGS=${CONFIGS:-"TIERVISOR_ANOMALY_SPREAD=0 TIERVISOR_ANOMALY_SPREAD=1"}

python3 - <<'PY'
import json, os, subprocess, sys

TIERVISOR, GUEST, WORKDIR = os.environ["TIERVISOR"], os.environ["GUEST"], os.environ["WORKDIR"]
SEEDS = [int(s) for s in os.environ["SEEDS"].split(",")]
CONFIGS = os.environ["CONFIGS"].split()
TOLERANCE_WINDOWS = 16
REGIONS = 4


def region_moves(trace):
    """Times (ms) at which the recording enters each region: the initial fill of the
    four regions, then every move (predictor::changepoints::trace_region_runs)."""
    out = subprocess.run([os.environ["ANOMALY_EVAL"], "--region-moves", trace],
                         check=True, capture_output=True, text=True).stdout
    return [float(line) for line in out.split()]


totals = {c: [0, 0, 0, 0] for c in CONFIGS}  # found, changes, alarms, false
print(f"phases (mem=16M iters=100000), 4M of RAM over resources/tiers/bench-live.toml, "
      f"gru; seeds {SEEDS}")
for seed in SEEDS:
    for config in CONFIGS:
        env = dict(os.environ, TIERVISOR_WORKDIR=WORKDIR)
        for a in config.split("@"):
            var, sep, value = a.partition("=")
            if not sep:
                sys.exit(f"anomaly-live: {config}: expected VAR=VALUE[@VAR=VALUE...]")
            env[var] = value
        metrics, trace = f"{WORKDIR}/m.json", f"{WORKDIR}/t.tvt"
        p = subprocess.run(
            [TIERVISOR, "run", "--kernel", GUEST, "--memory", "64M", "--ram-budget", "4M",
             "--advisor", "gru", "--tiers", "resources/tiers/bench-live.toml",
             "--cmdline", f"workload=phases mem=16M iters=100000 seed={seed}",
             "--metrics-out", metrics, "--trace-out", trace],
            stdin=subprocess.DEVNULL, capture_output=True, text=True, env=env)
        if p.returncode != 0 or "result=ok" not in p.stdout:
            sys.exit(f"anomaly-live: seed {seed} with {config} failed "
                     f"(status {p.returncode}):\n{p.stdout}{p.stderr}")
        with open(metrics) as f:
            m = json.load(f)
        online = m["tiers"]["advisor_online"]
        moves = region_moves(trace)
        alarms = [(a["time_ms"], a["signal"]) for a in online["anomalies"]]
        if len(moves) != REGIONS + 8:
            print(f"seed {seed}, {config}: {len(moves)} region runs, not the fill of "
                  f"{REGIONS} and 8 moves; left out")
            continue
        changes = moves[REGIONS:]
        window_ms = m["run_ms"] / max(online["model_windows"], 1)
        tolerance = TOLERANCE_WINDOWS * window_ms
        found, false = set(), 0
        for t, _ in alarms:
            before = [c for c in changes if c <= t]
            if before and t - before[-1] <= tolerance:
                found.add(before[-1])
            else:
                false += 1
        k = totals[config]
        k[0] += len(found); k[1] += len(changes); k[2] += len(alarms); k[3] += false
        print(f"seed {seed}, {config}: {online['model_windows']} model windows "
              f"({window_ms:.1f} ms each); moves at "
              f"{', '.join(f'{c:.0f}' for c in changes)} ms; alarms at "
              f"{', '.join(f'{t:.0f} ({s})' for t, s in alarms) or 'none'}; "
              f"found {len(found)} of {len(changes)}, {false} false")
print()
print("| detector setting | changes found | alarms | false alarms |")
print("|---|---|---|---|")
for config, (found, changes, alarms, false) in totals.items():
    print(f"| {config} | {found} of {changes} | {alarms} | {false} |")
PY
