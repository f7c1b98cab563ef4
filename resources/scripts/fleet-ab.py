#!/usr/bin/env python3
"""bench-density's tiervisor side, A/B: the same test-guest VMs (one workload each, 8
MiB of working memory in a 64 MiB guest, seed 7+i, VM i pinned to CPU i mod 2) under
two or more tiervisor configurations, in interleaved rounds (the order flips every
round), all at once in a `tiervisor pool` or with static budgets. No QEMU: this
compares tiervisor with itself, at a fixed RAM size, which bench-density does not
(its pool is whatever QEMU's guests held, which moves from run to run).

    resources/scripts/fleet-ab.py CONFIG[,CONFIG...]
    ROUNDS=6 ADVISOR=gru resources/scripts/fleet-ab.py \\
        target/release/tiervisor,target/release/tiervisor@TIERVISOR_PROBE_INTERVAL_US=1000000000
    MODE=static SIZE=6592 VMS=zipf resources/scripts/fleet-ab.py /tmp/old/tiervisor,target/release/tiervisor

CONFIG: a tiervisor binary, then any @VAR=VALUE environment settings for its runs
(ADVISOR=NAME among them picks that configuration's advisor, POOL_FLAGS="..." more
flags for its `tiervisor pool`, e.g. "--slice-ms 300 --run-slots 2").
VMS: workloads (zipf,kv,phases,random); ITERS: operations per VM (100000); SIZE: the
pool, or with MODE=static the sum of the static budgets, in KiB (26368: what QEMU's
guests held at most in bench-density's 32 MiB runs); MODE: pool (default) or static;
ADVISOR: paging advisor (none); ROUNDS: 3; DETAIL=1: each VM's fault counters too;
KEEP=1: keep target/fleet-ab/rRcC (round R, configuration C: each VM's output and
metrics, the pool manager's log).

Prints per run the makespan (start to the last VM's exit), each VM's ns/op and the
faults summed over the VMs; then each configuration's median makespan. Every run must
pass the guest's own verification with the same checksum as the first, or the script
stops. Needs `make build` (the guest) and the tier files' disk (under target/)."""
import json
import os
import shutil
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from tiervisor_runs import (  # noqa: E402
    Fleet, environment, parse_config, run_together, start_pool)

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
GUEST = os.path.join(ROOT, "resources", "out", "testguest.elf")
VMS = os.environ.get("VMS", "zipf,kv,phases,random").split(",")
SIZE_KIB = int(os.environ.get("SIZE", "26368"))
ROUNDS = int(os.environ.get("ROUNDS", "3"))
ITERS = int(os.environ.get("ITERS", "100000"))
MODE = os.environ.get("MODE", "pool")
DETAIL = os.environ.get("DETAIL") == "1"
KEEP = os.environ.get("KEEP") == "1"
MEM_MIB, GUEST_MIB, TIMEOUT_S = 8, 64, 300


def run(config, workdir, fleet_checksums):
    binary, env = parse_config(config, "fleet-ab")
    advisor = env.get("ADVISOR", os.environ.get("ADVISOR", "none"))
    with environment(env):
        fleet = Fleet("fleet-ab", binary, GUEST, workdir, VMS, MEM_MIB, GUEST_MIB, ITERS)
        fleet.checksums = fleet_checksums
        pool = os.path.join(workdir, "pool")
        if MODE == "pool":
            manager = start_pool(binary, pool, SIZE_KIB, os.path.join(workdir, "pool.log"),
                                 flags=os.environ.get("POOL_FLAGS", "").split())

            def flags(_i, tiers):
                return ["--tiers", tiers, "--ram-pool", pool, "--advisor", advisor]
        elif MODE == "static":
            manager = None

            def flags(_i, tiers):
                return ["--tiers", tiers, "--ram-budget", f"{SIZE_KIB // len(VMS)}K",
                        "--advisor", advisor]
        else:
            sys.exit(f"fleet-ab: MODE={MODE}: pool or static")
        cpus = [i % 2 for i in range(len(VMS))]
        return run_together(fleet, flags, cpus, TIMEOUT_S, config, manager)


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    configs = sys.argv[1].split(",")
    for c in configs:
        parse_config(c, "fleet-ab")
    base = os.path.join(ROOT, "target", "fleet-ab")
    checksums = {}
    makespans = {c: [] for c in configs}
    for r in range(ROUNDS):
        for c in configs if r % 2 == 0 else configs[::-1]:
            workdir = os.path.join(base, f"r{r}c{configs.index(c)}")
            shutil.rmtree(workdir, ignore_errors=True)
            os.makedirs(workdir)
            done = run(c, workdir, checksums)
            makespan = max(d[0] for d in done)
            makespans[c].append(makespan)
            t = [json.load(open(os.path.join(workdir, f"vm{i}", "metrics.json")))["tiers"]
                 for i in range(len(VMS))]
            total = lambda key: sum(x[key] for x in t)  # noqa: E731
            print(f"round {r + 1} {c}: makespan {makespan:.2f} s; ns/op "
                  + " ".join(f"{d[1][0]:,.0f}" for d in done)
                  + f"; demand faults {total('demand_faults'):,} (first touches "
                  f"{total('zero_fills'):,}), minor {total('minor_faults'):,}, probes "
                  f"{total('probe_zaps'):,}", flush=True)
            if DETAIL:
                for i, x in enumerate(t):
                    print(f"    vm{i} {VMS[i]}: demand {x['demand_faults']} zero "
                          f"{x['zero_fills']} minor {x['minor_faults']} sampled "
                          f"{x['sampled_zaps']} probes {x['probe_zaps']} prefetches "
                          f"{x['prefetch_issued']} ({x['prefetch_useful']} used) "
                          f"cpu shared {x['cpu_shared_ms']:.0f} ms")
    if not KEEP:
        shutil.rmtree(base, ignore_errors=True)
    print(f"{MODE}, {len(VMS)} VMs ({','.join(VMS)}), {SIZE_KIB}K, {ROUNDS} rounds:")
    first = statistics.median(makespans[configs[0]])
    for c in configs:
        m = statistics.median(makespans[c])
        print(f"  {c}: median makespan {m:.2f} s ({m / first:.3f} of the first); "
              + ", ".join(f"{x:.2f}" for x in makespans[c]))


if __name__ == "__main__":
    main()
