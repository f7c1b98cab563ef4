#!/usr/bin/env bash
# Baseline B1 of DESIGN.md (docs/benchmarks.md): stock QEMU (microvm, KVM) with its memory in a cgroup-v1
# memory controller over a Linux swap file, against tiervisor paging the same guest to a
# plain file on the same disk (O_DIRECT, no emulated latency: the disk as it is, like
# the swap file). The test guest's workloads of `make bench-live` (8 MiB of working
# memory in a 64 MiB guest):
#   - QEMU under memory limits of LIMITS MiB (QEMU's own memory and the guest's). QEMU
#     starts paused with the kernel loaded and the limit is set then (its start-up
#     would thrash under a limit this small, and the reclaim of what it touched
#     starting up is not what is measured). Transparent huge pages are off for QEMU
#     (PR_SET_THP_DISABLE), or they stay resident and the cgroup kills QEMU
#     (HOST-NOTES.md). The kernel decides how much of the limit the guest's RAM gets:
#     the guest RAM mapping's resident size (smaps) is sampled every 5 ms and its
#     largest value reported, so runs compare at the guest memory they really had.
#   - after each QEMU run that finished, tiervisor with a `--ram-budget` of the guest
#     memory QEMU's guest had resident (rounded down to 1/4 MiB), the rest on the
#     tier-2 file: the two compare at the same guest RAM.
# Each VMM's slowdown is against its own all-in-RAM run; ns/op are the guest's own (its
# result line), so VMM start-up and exit are not in them.
#
#   resources/scripts/bench-swap.sh            (make bench-swap builds what it needs;
#                                               1 round by default, about 4 minutes)
#   ROUNDS=3 LIMITS=6,8 WORKLOADS=zipf,random ADVISORS=none,gru TIMEOUT=300 \
#       resources/scripts/bench-swap.sh     (TIMEOUT: seconds a QEMU run may take, 120)
#
# Needs root, a cgroup-v1 memory controller at /sys/fs/cgroup/memory, swapon, and
# qemu-system-x86_64 (`make setup`). The swap file is made under target/ (a disk file
# system) and removed, with the cgroup, on exit.
set -euo pipefail
cd "$(dirname "$0")/../.."

. resources/scripts/built.sh bench-swap
. resources/scripts/qemu-swap.sh bench-swap

python3 - "$@" <<'PY' &
import json, math, os, statistics, subprocess, sys, threading, time
sys.path.insert(0, "resources/scripts")
from qemu_swap import MIB, Cgroup, PausedQemu
from tiervisor_runs import Fleet, fmt, geo, result, vm_dir

TIERVISOR, GUEST = os.environ["TIERVISOR"], os.environ["GUEST"]
WORKDIR, CGROUP = os.environ["WORKDIR"], Cgroup(os.environ["CGROUP"])
ROUNDS = int(os.environ.get("ROUNDS", "1"))
LIMITS = [float(x) for x in os.environ.get("LIMITS", "4,5,6,8").split(",")]
ADVISORS = os.environ.get("ADVISORS", "none,leap,gru").split(",")
WORKLOADS = os.environ.get("WORKLOADS", "scan,stride,random,zipf,chase,phases,kv").split(",")
ITERS = int(os.environ.get("ITERS", "20000"))
TIMEOUT_S = int(os.environ.get("TIMEOUT", "120"))  # per QEMU run
MEM_MIB = 8          # the workload's working memory
GUEST_MEM_MIB = 64
GUEST_MEM = f"{GUEST_MEM_MIB}M"


def qemu(cmdline, limit):
    """The guest under stock QEMU in the cgroup. QEMU starts paused with the kernel
    loaded; the limit (bytes, or None) is set then, so the reclaim of what QEMU touched
    starting up is neither thrashed through nor timed; QMP `cont` starts the guest.
    Returns (ns/op, checksum, the most the guest's RAM had resident while it ran, in
    MiB: under the limit, its steady state, and the cgroup's major faults: swap-ins,
    QEMU's own included) or (None, why it failed, None, None)."""
    CGROUP.reset()
    vm = PausedQemu(GUEST, GUEST_MEM_MIB, cmdline, CGROUP, os.path.join(WORKDIR, "qmp.sock"))
    if limit is not None:
        try:
            CGROUP.write("memory.limit_in_bytes", limit)
        except OSError as e:
            vm.kill()
            return None, f"limit {limit} refused ({e.strerror})", None, None
    resident = []

    def sample():
        # Every 5 ms, and only under a limit: reading smaps costs a core's worth of
        # parsing and takes QEMU's mmap lock, so reading it without pause (as the
        # first runs did) competed with the VM it measures on this 2-core host.
        while limit is not None and vm.running():
            kib = vm.resident_kib()
            if kib is not None:
                resident.append(kib)
            time.sleep(0.005)

    faults_before = CGROUP.major_faults()
    sampler = threading.Thread(target=sample, daemon=True)
    vm.cont()
    sampler.start()
    ns, checksum = vm.wait(TIMEOUT_S)
    sampler.join()
    if ns is None:
        return None, checksum, None, None
    mib = max(resident) / 1024 if resident else None
    return ns, checksum, mib, CGROUP.major_faults() - faults_before


def tiervisor(cmdline, budget_mib, advisor):
    d, tiers = vm_dir(WORKDIR, "vm", GUEST_MEM_MIB)
    metrics = os.path.join(d, "metrics.json")
    cmd = [TIERVISOR, "run", "--kernel", GUEST, "--memory", GUEST_MEM, "--cmdline", cmdline,
           "--metrics-out", metrics]
    if advisor is not None:
        budget_kib = int(budget_mib * 1024)
        cmd += ["--tiers", tiers, "--ram-budget", f"{budget_kib}K", "--advisor", advisor]
    p = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                       env=dict(os.environ, TIERVISOR_WORKDIR=d))
    r = result(p.stdout)
    if p.returncode != 0 or r is None:
        sys.exit(f"bench-swap: tiervisor {advisor or 'all RAM'} failed "
                 f"(status {p.returncode}):\n{p.stdout}{p.stderr}")
    with open(metrics) as f:
        faults = (json.load(f).get("tiers") or {}).get("demand_faults")
    return r[0], r[1], faults


def cmdline(workload):
    return f"workload={workload} mem={MEM_MIB}M iters={ITERS} seed=7"


# Per workload and round: each VMM all in RAM; then per limit, QEMU under it, and
# tiervisor with a RAM budget of the guest memory QEMU's guest had resident in that
# run (rounded down to 1/4 MiB), so the two compare at the same guest RAM.
# [workload, limit, QEMU ns/op or None, checksum or why it failed, guest RAM resident
#  MiB, {advisor: (budget MiB, ns/op, demand faults)}, QEMU's major faults]
runs = []
ram = {}         # (workload, vmm) -> [ns/op all in RAM]
# Checksums per workload and progress (its command lines are this script's: seed 7 for
# every workload).
FLEET = Fleet("bench-swap", TIERVISOR, GUEST, WORKDIR, WORKLOADS, MEM_MIB, GUEST_MEM_MIB,
              ITERS)
FLEET.total = ROUNDS * len(WORKLOADS) * (2 + len(LIMITS) * (1 + len(ADVISORS)))
progress = FLEET.progress


def check(w, checksum, who):
    FLEET.check(WORKLOADS.index(w), checksum, who)


for r in range(ROUNDS):
    for w in WORKLOADS:
        ns, checksum, _, _ = qemu(cmdline(w), None)
        if ns is None:
            sys.exit(f"bench-swap: {w} under QEMU without a limit failed: {checksum}")
        check(w, checksum, "QEMU")
        ram.setdefault((w, "qemu"), []).append(ns)
        progress(f"round {r + 1}, {w}, QEMU all in RAM")
        ns, checksum, _ = tiervisor(cmdline(w), None, None)
        check(w, checksum, "tiervisor")
        ram.setdefault((w, "tiervisor"), []).append(ns)
        progress(f"round {r + 1}, {w}, tiervisor all in RAM")
        for limit in LIMITS:
            ns, why, resident, faults = qemu(cmdline(w), int(limit * MIB))
            progress(f"round {r + 1}, {w}, QEMU at {limit:g} MiB")
            row = [w, limit, ns, why, resident, {}, faults]
            runs.append(row)
            if ns is None:
                for _ in ADVISORS:
                    progress()
                continue
            check(w, why, "QEMU")
            budget = math.floor(resident * 4) / 4
            for a in ADVISORS:
                t_ns, checksum, t_faults = tiervisor(cmdline(w), budget, a)
                check(w, checksum, f"tiervisor {a}")
                row[5][a] = (budget, t_ns, t_faults)
                progress(f"round {r + 1}, {w}, tiervisor {a} at {budget:g} MiB")
print(file=sys.stderr)


print(f"Test guest, mem={MEM_MIB}M iters={ITERS} seed=7 in a {GUEST_MEM} guest; swap file "
      f"and tier-2 file on the same disk; {ROUNDS} round(s), medians where runs repeat\n")
for limit in LIMITS:
    print(f"QEMU memory limit {limit:g} MiB; tiervisor with the guest RAM QEMU's guest had "
          "resident (ns/op: slowdown against the same VMM all in RAM; faults: QEMU's "
          "major faults, tiervisor's demand faults)")
    head = ["workload", "QEMU + swap", "guest RAM resident MiB"] + \
           [f"tiervisor {a}" for a in ADVISORS] + [f"{a} / QEMU" for a in ADVISORS]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for w in WORKLOADS:
        rows = [x for x in runs if x[0] == w and x[1] == limit]
        ok = [x for x in rows if x[2] is not None]
        q_ram = statistics.median(ram[(w, "qemu")])
        t_ram = statistics.median(ram[(w, "tiervisor")])
        if not ok:
            fails = ", ".join(sorted({x[3] for x in rows}))
            print(f"| {w} | {fails} | - | " + " | ".join("-" for _ in ADVISORS * 2) + " |")
            continue
        q = statistics.median(x[2] for x in ok)
        qf = statistics.median(x[6] for x in ok)
        res = statistics.median(x[4] for x in ok)
        note = "" if len(ok) == len(rows) else f" ({len(rows) - len(ok)} of {len(rows)} failed)"
        cells = [w, f"{q:,.0f} ({q / q_ram:.1f}x; {qf:,.0f}){note}", f"{res:.2f}"]
        ts = {a: statistics.median(x[5][a][1] for x in ok) for a in ADVISORS}
        tf = {a: statistics.median(x[5][a][2] for x in ok) for a in ADVISORS}
        cells += [f"{ts[a]:,.0f} ({ts[a] / t_ram:.1f}x; {tf[a]:,.0f})" for a in ADVISORS]
        cells += [f"{ts[a] / q:.3f}" for a in ADVISORS]
        print("| " + " | ".join(cells) + " |")
    print()
print("Geometric mean of tiervisor's run time against QEMU + swap's at the same guest RAM, "
      "over the QEMU runs that finished (how many; QEMU runs that failed)")
print("| advisor | " + " | ".join(f"limit {m:g} MiB" for m in LIMITS) + " | all |")
print("|---|" + "---|" * (len(LIMITS) + 1))
for a in ADVISORS:
    cells, every = [a], []
    for limit in LIMITS:
        rows = [x for x in runs if x[1] == limit]
        ratios = [x[5][a][1] / x[2] for x in rows if x[2] is not None]
        every += ratios
        failed = sum(1 for x in rows if x[2] is None)
        cells.append(f"{fmt(geo(ratios), '.3f')} ({len(ratios)}; {failed} failed)")
    cells.append(f"{fmt(geo(every), '.3f')} ({len(every)})")
    print("| " + " | ".join(cells) + " |")
PY
child=$!
wait "$child"
