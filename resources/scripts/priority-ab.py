#!/usr/bin/env python3
"""bench-priority's tiervisor side, A/B: its four test-guest VMs (vm0 a kv store with
1,000,000 operations alone on CPU 0; random, zipf and scan with 100,000 each on CPU 1;
8 MiB of working memory in 64 MiB guests, seed 7+i) in a `tiervisor pool` of a fixed
size, under two or more tiervisor binaries, in interleaved rounds (the order flips
every round). No QEMU: this compares tiervisor with itself, where bench-priority's pool
is whatever QEMU's guests held.

    resources/scripts/priority-ab.py BINARY[,BINARY...]
    ROUNDS=4 MODES=equal ADVISOR=gru resources/scripts/priority-ab.py OLD,NEW
    resources/scripts/priority-ab.py NEW,NEW@TV_SOME_VARIABLE=1

BINARY: a tiervisor binary, then any @VAR=VALUE environment settings for its runs.
MODES: priority (vm0 at --priority 4, the others at 1) and/or equal (all at 1),
default both; ADVISOR: none; ROUNDS: 3; POOL_KIB: the pool (23296: bench-priority's
pool at the median in its session 29 run). Prints each run's vm0 op p99 and p99.9 (ns,
from the guest), vm0's refaults and the others' makespan, then the medians per binary
and mode. Work directories stay in target/prio-ab. Needs `make build`."""
import os
import shutil
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from tiervisor_runs import (  # noqa: E402
    Fleet, environment, parse_config, run_together, start_pool)

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
GUEST = os.path.join(ROOT, "resources", "out", "testguest.elf")
VMS = ["kv", "random", "zipf", "scan"]
ITERS = [1000000, 100000, 100000, 100000]
CPUS = [0, 1, 1, 1]
ROUNDS = int(os.environ.get("ROUNDS", "3"))
ADVISOR = os.environ.get("ADVISOR", "none")
POOL_KIB = int(os.environ.get("POOL_KIB", "23296"))
MODES = os.environ.get("MODES", "priority,equal").split(",")
PRIORITY = 4


def run(config, mode, workdir, checksums):
    binary, env = parse_config(config, "priority-ab")
    with environment(env):
        fleet = Fleet("priority-ab", binary, GUEST, workdir, VMS, 8, 64, ITERS)
        fleet.checksums = checksums
        pool = os.path.join(workdir, "pool")
        manager = start_pool(binary, pool, POOL_KIB, os.path.join(workdir, "pool.log"))

        def flags(i, tiers):
            priority = PRIORITY if i == 0 and mode == "priority" else 1
            return ["--tiers", tiers, "--advisor", ADVISOR, "--cpu", str(CPUS[i]),
                    "--ram-pool", pool, "--priority", str(priority)]
        return run_together(fleet, flags, CPUS, 120, f"{config} {mode}", manager)


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    configs = sys.argv[1].split(",")
    for c in configs:
        parse_config(c, "priority-ab")
    for m in MODES:
        if m not in ("priority", "equal"):
            sys.exit(f"priority-ab: MODES: {m} is not priority or equal")
    checksums = {}
    results = {(c, m): [] for c in configs for m in MODES}
    for r in range(ROUNDS):
        for c in configs if r % 2 == 0 else configs[::-1]:
            for mode in MODES:
                workdir = os.path.join(ROOT, "target", "prio-ab", f"r{r}c{configs.index(c)}{mode}")
                shutil.rmtree(workdir, ignore_errors=True)
                os.makedirs(workdir)
                done = run(c, mode, workdir, checksums)
                lat = done[0][1][2]
                others = max(end for end, _, _ in done[1:])
                results[(c, mode)].append((lat["p99"], lat["p999"], done[0][2], others))
                print(f"round {r + 1} {c} {mode}: vm0 p99 {lat['p99']} ns, p99.9 "
                      f"{lat['p999']} ns, refaults {done[0][2]}; others {others:.2f} s",
                      flush=True)
    for (c, m), v in results.items():
        med = lambda k: statistics.median(x[k] for x in v)  # noqa: E731
        print(f"{c} {m}: vm0 p99 {med(0):.0f} ns, p99.9 {med(1):.0f} ns, refaults "
              f"{med(2):.0f}, others' makespan {med(3):.2f} s")


if __name__ == "__main__":
    main()
