#!/usr/bin/env bash
# Several VMs in one RAM budget (docs/benchmarks.md, "Several VMs in one RAM budget"):
# baseline B1 of DESIGN.md with more VMs than fit, against a `tiervisor pool`. The test
# guests of VMS (one workload each, 8 MiB of working memory in a 64 MiB guest, seed 7+i),
# VM i on host CPU i mod (CPUs):
#   - QEMU + swap: one stock QEMU microvm (KVM) per VM, all in one cgroup-v1 memory
#     controller over a Linux swap file. All start paused with their kernels loaded; the
#     cgroup's limit is set then (each of LIMITS in turn, MiB, 24 and 32 by default: the
#     QEMUs' own memory and their guests') and QMP `cont` starts them together. The
#     guests' resident RAM (each QEMU's guest RAM mapping in smaps) is summed every 20 ms
#     and its largest sum kept: the guest RAM the VMs really had.
#   - tiervisor: a `tiervisor pool` of that sum (rounded down to 1/4 MiB) and the same
#     VMs joining it together, each paging to its own tier-2 file on the same disk as the
#     swap file (O_DIRECT, no emulated latency: the disk as it is), per advisor (ADVISORS)
#     and mode (MODES): `pool`, all VMs running at once, the manager moving budget among
#     them; `turns`, the manager running them in turns of 300 ms, as many at once as
#     there are CPUs, each staged as its turn begins (docs/pool.md); `auto`, all at
#     once until the pool is over-committed and in such turns from then on
#     (`--turns-when-over-committed`); and `first`, in such turns from the start and all
#     at once once what each VM held at the end of its turn fits (`--turns-first`).
# Every VM's ns per operation (the guest's own, so start-up and exit are not in it) is
# set against the same VM alone all in RAM under the same VMM, measured in the same
# round; makespan is from the start of the guests (QEMU's `cont`, tiervisor's launch) to
# the last VM's exit. Every guest run must pass its own verification (the checksum of
# each workload must agree across runs and VMMs), or the benchmark fails.
#
#   resources/scripts/bench-density.sh        (make bench-density builds what it needs;
#                                              3 rounds by default)
#   ROUNDS=1 VMS=zipf,zipf,kv LIMITS=16 ADVISORS=gru MODES=pool resources/scripts/bench-density.sh
# ITERS: operations per VM (100000); TIMEOUT: seconds the VMs of one run may take (120);
# OOM_KILLER=off: QEMU's cgroup makes its tasks wait for memory instead of killing one
# (memory.oom_control).
#
# Needs root, a cgroup-v1 memory controller at /sys/fs/cgroup/memory, swapon, and
# qemu-system-x86_64 (`make setup`). The swap file is made under target/ (a disk file
# system) and removed, with the cgroup, on exit.
set -euo pipefail
cd "$(dirname "$0")/../.."

. resources/scripts/built.sh bench-density
. resources/scripts/qemu-swap.sh bench-density

python3 - "$@" <<'PY' &
import math, os, statistics, sys, time
sys.path.insert(0, "resources/scripts")
from qemu_swap import MIB, Cgroup, PausedQemu, pages_swapped_in
from tiervisor_runs import Fleet, fmt, geo, med, run_together, start_pool

TIERVISOR, GUEST = os.environ["TIERVISOR"], os.environ["GUEST"]
WORKDIR, CGROUP = os.environ["WORKDIR"], Cgroup(os.environ["CGROUP"])
ROUNDS = int(os.environ.get("ROUNDS", "3"))
VMS = os.environ.get("VMS", "zipf,kv,phases,random").split(",")
LIMITS = [float(x) for x in os.environ.get("LIMITS", "24,32").split(",")]
ADVISORS = os.environ.get("ADVISORS", "none,gru").split(",")
MODES = os.environ.get("MODES", "pool,turns,auto,first").split(",")
ITERS = int(os.environ.get("ITERS", "100000"))
TIMEOUT_S = int(os.environ.get("TIMEOUT", "120"))
OOM_KILLER = os.environ.get("OOM_KILLER", "on") != "off"
SLICE_MS = 300
MEM_MIB, GUEST_MIB = 8, 64
CPUS = len(os.sched_getaffinity(0))
for mode in MODES:
    if mode not in ("static", "pool", "turns", "auto", "first"):
        sys.exit(f"bench-density: unknown mode {mode} (static, pool, turns, auto, first)")
N = len(VMS)
FLEET = Fleet("bench-density", TIERVISOR, GUEST, WORKDIR, VMS, MEM_MIB, GUEST_MIB, ITERS)
cmdline, check = FLEET.cmdline, FLEET.check


def qemu_alone(i):
    CGROUP.reset()
    vm = PausedQemu(GUEST, GUEST_MIB, cmdline(i), CGROUP, os.path.join(WORKDIR, "qmp0.sock"),
                    cpu=i % CPUS)
    vm.cont()
    ns, checksum = vm.wait(TIMEOUT_S)
    if ns is None:
        sys.exit(f"bench-density: vm{i} ({VMS[i]}) under QEMU all in RAM failed: {checksum}")
    check(i, checksum, "QEMU")
    return ns


def qemu_shared(limit_mib):
    """All VMs under QEMU in the cgroup at limit_mib. Returns (ns/op per VM or None, why
    each failed, the largest sum of the guests' resident RAM in MiB, makespan s, pages
    swapped in, the median of that sum while all VMs ran)."""
    CGROUP.reset()
    vms = [PausedQemu(GUEST, GUEST_MIB, cmdline(i), CGROUP,
                      os.path.join(WORKDIR, f"qmp{i}.sock"), cpu=i % CPUS) for i in range(N)]
    try:
        if not OOM_KILLER:
            # The cgroup's tasks wait for memory instead of being killed.
            CGROUP.write("memory.oom_control", 1)
        CGROUP.write("memory.limit_in_bytes", int(limit_mib * MIB))
    except OSError as e:
        for vm in vms:
            vm.kill()
        sys.exit(f"bench-density: the cgroup refused a limit of {limit_mib:g} MiB ({e.strerror})")
    swapped_before = pages_swapped_in()
    started = time.monotonic()
    for vm in vms:
        vm.cont()
    peak_kib, sums_kib, last_end = 0, [], 0.0
    # Every 20 ms: reading smaps takes a QEMU's mmap lock and a good part of a core to
    # parse (bench-swap reads one QEMU's every 5 ms).
    while True:
        alive = [vm for vm in vms if vm.running()]
        now = time.monotonic() - started
        if not alive or now > TIMEOUT_S:
            break
        last_end = now
        total = sum(vm.resident_kib() or 0 for vm in alive)
        peak_kib = max(peak_kib, total)
        if len(alive) == N:
            sums_kib.append(total)
        time.sleep(0.02)
    results = [vm.wait(max(0.0, TIMEOUT_S - (time.monotonic() - started))) for vm in vms]
    results = [(None, f"over {TIMEOUT_S} s") if ns is None and why.startswith("over ")
               else (ns, why) for ns, why in results]
    makespan = time.monotonic() - started if any(r[0] is None for r in results) else last_end
    for i, (ns, checksum) in enumerate(results):
        if ns is not None:
            check(i, checksum, "QEMU")
    return ([r[0] for r in results], [r[1] for r in results],
            peak_kib / 1024, makespan, pages_swapped_in() - swapped_before,
            statistics.median(sums_kib) / 1024 if sums_kib else None)


def tiervisor_shared(pool_mib, advisor, mode):
    """All VMs in pool_mib of RAM: in one `tiervisor pool` of it, or (static) each with a
    fixed --ram-budget of an equal share. Returns (ns/op per VM, refaults per VM,
    makespan s)."""
    pool_dir = os.path.join(WORKDIR, "pool")
    if mode == "static":
        manager = None
        share = ["--ram-budget", f"{int(pool_mib * 1024 / N)}K"]
    else:
        turns = ["--slice-ms", str(SLICE_MS), "--run-slots", str(CPUS)]
        flags = {"turns": turns, "auto": turns + ["--turns-when-over-committed"],
                 "first": turns + ["--turns-first"]}.get(mode, [])
        manager = start_pool(TIERVISOR, pool_dir, pool_mib * 1024,
                             os.path.join(WORKDIR, "pool.log"), flags)
        share = ["--ram-pool", pool_dir]
    done = run_together(
        FLEET, lambda i, tiers: ["--tiers", tiers, "--advisor", advisor, "--cpu",
                                 str(i % CPUS)] + share,
        [i % CPUS for i in range(N)], TIMEOUT_S, f"{advisor} {mode}", manager)
    return [r[0] for _, r, _ in done], [f for _, _, f in done], max(e for e, _, _ in done)


CONFIGS = [(a, m) for a in ADVISORS for m in MODES]
FLEET.total = ROUNDS * (2 * N + len(LIMITS) * (1 + len(CONFIGS)))
progress = FLEET.progress


alone = {"qemu": [[] for _ in range(N)], "tiervisor": [[] for _ in range(N)]}
# Per limit, per round: {"qemu": (ns per VM, why, peak MiB, makespan, pages swapped in,
# median MiB while all ran),
# "pool_mib": ..., "tiervisor": {config: (ns per VM, refaults per VM, makespan)}}
# (QEMU's per-VM swap-ins cannot be told apart: they are counted for all its VMs.)
rounds = {limit: [] for limit in LIMITS}
for r in range(ROUNDS):
    for i in range(N):
        alone["qemu"][i].append(qemu_alone(i))
        progress(f"round {r + 1}, vm{i} {VMS[i]}, QEMU all in RAM")
        alone["tiervisor"][i].append(FLEET.run_alone(i, i % CPUS)[0])
        progress(f"round {r + 1}, vm{i} {VMS[i]}, tiervisor all in RAM")
    for limit in LIMITS:
        q = qemu_shared(limit)
        progress(f"round {r + 1}, {N} VMs under QEMU at {limit:g} MiB")
        row = {"qemu": q, "pool_mib": math.floor(q[2] * 4) / 4, "tiervisor": {}}
        rounds[limit].append(row)
        for a, m in CONFIGS:
            if row["pool_mib"] <= 0:
                progress()
                continue
            row["tiervisor"][(a, m)] = tiervisor_shared(row["pool_mib"], a, m)
            progress(f"round {r + 1}, {N} VMs under tiervisor {a} {m} in "
                     f"{row['pool_mib']:g} MiB")
print(file=sys.stderr)


def report(limit, ran):
    failures = sum(1 for row in ran for ns in row["qemu"][0] if ns is None)
    whole = [row for row in ran if all(ns is not None for ns in row["qemu"][0])]
    print(f"QEMU + swap in a cgroup of {limit:g} MiB. Guest RAM its guests had together: "
          f"at most {med(row['pool_mib'] for row in ran):.2f} MiB (tiervisor's pool), "
          f"{fmt(med(row['qemu'][5] for row in ran), '.2f')} MiB at the median sample while "
          f"all ran, of "
          f"{N * MEM_MIB} MiB of working memory. QEMU runs that failed: {failures} of "
          f"{N * len(ran)}. Pages read back, in the {len(whole)} rounds where every QEMU run "
          f"finished: QEMU's swap-ins {fmt(med(row['qemu'][4] for row in whole), ',.0f')}; "
          f"tiervisor's refaults " +
          ", ".join(f"{a} {m} {fmt(med(sum(row['tiervisor'][(a, m)][1]) for row in whole), ',.0f')}"
                    for a, m in CONFIGS))
    print("ns per operation (slowdown against the same VM alone all in RAM under the same "
          "VMM; tiervisor's refaults). QEMU's medians and the ratios are over the rounds its "
          "run finished. In turns a VM's ns/op counts the time it waits paused during its "
          "operations, not before them: compare makespans")
    head = ["VM", "QEMU + swap"] + [f"tiervisor {a} {m}" for a, m in CONFIGS] + \
           [f"{a} {m} / QEMU" for a, m in CONFIGS]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    ratios = {c: [] for c in CONFIGS}
    for i in range(N):
        q_ram = statistics.median(alone["qemu"][i])
        t_ram = statistics.median(alone["tiervisor"][i])
        finished = [row for row in ran if row["qemu"][0][i] is not None]
        whys = sorted({row["qemu"][1][i] for row in ran if row["qemu"][0][i] is None})
        q = med(row["qemu"][0][i] for row in finished)
        if q is None:
            cell = f"failed: {', '.join(whys)}"
        else:
            lost = f"; failed {len(ran) - len(finished)}x: {', '.join(whys)}" if whys else ""
            cell = f"{q:,.0f} ({q / q_ram:.1f}x{lost})"
        cells = [f"vm{i} {VMS[i]}", cell]
        ts = {}
        for c in CONFIGS:
            ts[c] = med(row["tiervisor"][c][0][i] for row in ran)
            f = med(row["tiervisor"][c][1][i] for row in ran)
            cells.append(f"{ts[c]:,.0f} ({ts[c] / t_ram:.1f}x; {fmt(f, ',.0f')})")
            ratios[c] += [row["tiervisor"][c][0][i] / row["qemu"][0][i] for row in finished]
        cells += ["-" if q is None else f"{ts[c] / q:.3f}" for c in CONFIGS]
        print("| " + " | ".join(cells) + " |")
    print()
    print("| | QEMU + swap | " + " | ".join(f"tiervisor {a} {m}" for a, m in CONFIGS) + " |")
    print("|---|---|" + "---|" * len(CONFIGS))
    print(f"| VMs that finished | {N * len(ran) - failures} of {N * len(ran)} | " +
          " | ".join(f"{N * len(ran)} of {N * len(ran)}" for _ in CONFIGS) + " |")
    print(f"| makespan s | {fmt(med(row['qemu'][3] for row in whole), '.2f')} "
          f"({len(whole)} rounds with every VM) | " +
          " | ".join(f"{med(row['tiervisor'][c][2] for row in ran):.2f}" for c in CONFIGS) +
          " |")
    print(f"| makespan against QEMU's, in those rounds | 1 | " + " | ".join(
        fmt(med(row["tiervisor"][c][2] / row["qemu"][3] for row in whole), ".3f")
        for c in CONFIGS) + " |")
    print("| geometric mean of ns/op against QEMU's, over the VMs and rounds it finished | 1 | "
          + " | ".join(fmt(geo(ratios[c]), ".3f") for c in CONFIGS) + " |")
    print()


print(f"{N} test-guest VMs ({', '.join(VMS)}; mem={MEM_MIB}M iters={ITERS} in {GUEST_MIB} MiB "
      f"guests), VM i on CPU i mod {CPUS}; tiervisor in a pool of the guest RAM QEMU's guests "
      f"had at most; swap file and tier-2 files on the same disk; {ROUNDS} round(s), medians "
      f"over them\n")
for limit in LIMITS:
    ran = [row for row in rounds[limit] if row["tiervisor"]]
    if ran:
        report(limit, ran)
    else:
        print(f"QEMU + swap in a cgroup of {limit:g} MiB: its guests never had RAM resident; "
              "nothing to compare\n")
PY
child=$!
wait "$child"
