#!/usr/bin/env bash
# A high-priority VM's tail latency under memory contention (DESIGN.md's "p99 of a
# high-priority VM under contention"; docs/benchmarks.md, "A high-priority VM among
# others"). The test guests of VMS (8 MiB of working memory in a 64 MiB guest, seed
# 7+i, ITERS operations each, the first HIGH_ITERS so that it runs as long as the
# others thrash) start together; the first is the high-priority one, a kv store by
# default, alone on the first host CPU; the others share the last CPU, so what it
# contends for is memory, not CPU. Its per-operation times come from the guest
# (op_p50_ns ... op_max_ns on the result line, docs/testguest.md) and are set against
# the same VM alone all in RAM under the same VMM, measured in the same round.
#   - QEMU + swap `shared`: one stock QEMU microvm per VM, all in one cgroup-v1 memory
#     controller of LIMIT MiB (QEMU's own memory and its guests') over a Linux swap
#     file, as bench-density runs them. The largest sum of the guests' resident RAM
#     (every 20 ms) is the guest RAM they had: tiervisor's pool below.
#   - QEMU + swap `split`: the same LIMIT cut in two cgroups, the high-priority VM's of
#     PRIORITY/(PRIORITY + VMs - 1) of it, the others' of the rest. Cgroup v1 has no
#     memory.low; a limit of its own is how it keeps others from a VM's pages.
#   - tiervisor `priority`: a `tiervisor pool` of that guest RAM, the first VM at
#     `--priority PRIORITY` and the others at 1, each paging to its own tier-2 file on
#     the same disk as the swap file, per advisor (ADVISORS); `equal`: all at priority 1.
# Every guest run must pass its own verification, with the same checksum under both
# VMMs, or the benchmark fails.
#
#   resources/scripts/bench-priority.sh        (make bench-priority builds what it
#                                               needs; 3 rounds by default)
#   ROUNDS=1 VMS=kv,random,random LIMIT=24 ADVISORS=none resources/scripts/bench-priority.sh
# PRIORITY: the first VM's (4); ITERS: operations per other VM (100000); HIGH_ITERS:
# the first VM's (1000000); TIMEOUT: seconds the VMs of one run may take (120).
#
# Needs root, a cgroup-v1 memory controller at /sys/fs/cgroup/memory, swapon, and
# qemu-system-x86_64 (`make setup`). The swap file is made under target/ and removed,
# with the cgroups, on exit.
set -euo pipefail
cd "$(dirname "$0")/../.."

. resources/scripts/built.sh bench-priority
. resources/scripts/qemu-swap.sh bench-priority

python3 - "$@" <<'PY' &
import math, os, statistics, sys, time
sys.path.insert(0, "resources/scripts")
from qemu_swap import MIB, Cgroup, PausedQemu
from tiervisor_runs import Fleet, fmt, med, run_together, start_pool

TIERVISOR, GUEST = os.environ["TIERVISOR"], os.environ["GUEST"]
WORKDIR, CGROUP = os.environ["WORKDIR"], os.environ["CGROUP"]
ROUNDS = int(os.environ.get("ROUNDS", "3"))
VMS = os.environ.get("VMS", "kv,random,zipf,scan").split(",")
LIMIT = float(os.environ.get("LIMIT", "28"))
PRIORITY = int(os.environ.get("PRIORITY", "4"))
ADVISORS = os.environ.get("ADVISORS", "none,gru").split(",")
ITERS = int(os.environ.get("ITERS", "100000"))
HIGH_ITERS = int(os.environ.get("HIGH_ITERS", "1000000"))
TIMEOUT_S = int(os.environ.get("TIMEOUT", "120"))
MEM_MIB, GUEST_MIB = 8, 64
N = len(VMS)
if N < 2:
    sys.exit("bench-priority: VMS needs the high-priority VM and at least one other")
if not 1 <= PRIORITY <= 1000:
    sys.exit(f"bench-priority: PRIORITY {PRIORITY} is not in 1-1000 (tiervisor run --priority)")
ALLOWED = sorted(os.sched_getaffinity(0))
# The high-priority VM alone on the first CPU, the others on the last.
CPU = [ALLOWED[0]] + [ALLOWED[-1]] * (N - 1)
HIGH_SHARE = PRIORITY / (PRIORITY + N - 1)
MANAGER_CPU = {"first": ALLOWED[0], "last": ALLOWED[-1]}.get(os.environ.get("MANAGER_CPU"))


def cgroup(name):
    path = os.path.join(CGROUP, name)
    os.makedirs(path, exist_ok=True)
    return Cgroup(path)


HIGH, LOW = cgroup("high"), cgroup("low")


FLEET = Fleet("bench-priority", TIERVISOR, GUEST, WORKDIR, VMS, MEM_MIB, GUEST_MIB,
              [HIGH_ITERS] + [ITERS] * (N - 1))
cmdline, check = FLEET.cmdline, FLEET.check


def limit(group, mib):
    try:
        group.write("memory.limit_in_bytes", int(mib * MIB))
    except OSError as e:
        sys.exit(f"bench-priority: the cgroup refused a limit of {mib:g} MiB ({e.strerror})")


def qemu_alone():
    """The high-priority VM alone under QEMU with no limit: (ns/op, op times)."""
    HIGH.reset()
    vm = PausedQemu(GUEST, GUEST_MIB, cmdline(0), HIGH, os.path.join(WORKDIR, "qmp0.sock"),
                    cpu=CPU[0])
    vm.cont()
    ns, checksum = vm.wait(TIMEOUT_S)
    if ns is None:
        sys.exit(f"bench-priority: vm0 ({VMS[0]}) under QEMU all in RAM failed: {checksum}")
    check(0, checksum, "QEMU")
    return ns, vm.latency


def qemu_together(mode):
    """All VMs under QEMU, `shared` or `split` (see the top). Returns {"ns": per VM or
    None, "why": per VM, "latency": the first VM's op times or None, "peak_mib": the
    largest sum of the guests' resident RAM, "others_s": when the last other VM ended}."""
    HIGH.reset()
    LOW.reset()
    groups = [LOW] * N if mode == "shared" else [HIGH] + [LOW] * (N - 1)
    vms = [PausedQemu(GUEST, GUEST_MIB, cmdline(i), groups[i],
                      os.path.join(WORKDIR, f"qmp{i}.sock"), cpu=CPU[i]) for i in range(N)]
    if mode == "shared":
        limit(LOW, LIMIT)
    else:
        limit(HIGH, LIMIT * HIGH_SHARE)
        limit(LOW, LIMIT * (1 - HIGH_SHARE))
    started = time.monotonic()
    for vm in vms:
        vm.cont()
    peak_kib, ends = 0, [None] * N
    while True:
        now = time.monotonic() - started
        for i, vm in enumerate(vms):
            if ends[i] is None and not vm.running():
                ends[i] = now
        alive = [vm for vm in vms if vm.running()]
        if not alive or now > TIMEOUT_S:
            break
        peak_kib = max(peak_kib, sum(vm.resident_kib() or 0 for vm in alive))
        time.sleep(0.02)
    results = [vm.wait(max(0.0, TIMEOUT_S - (time.monotonic() - started))) for vm in vms]
    for i, (ns, checksum) in enumerate(results):
        if ns is not None:
            check(i, checksum, "QEMU")
    others = [ends[i] for i in range(1, N) if results[i][0] is not None]
    return {"ns": [r[0] for r in results], "why": [r[1] for r in results],
            "latency": vms[0].latency if results[0][0] is not None else None,
            "peak_mib": peak_kib / 1024,
            "others_s": max(others) if len(others) == N - 1 else None}


def tiervisor_pool(pool_mib, advisor, mode):
    """All VMs in one `tiervisor pool` of pool_mib, the first at PRIORITY (mode
    `priority`) or at 1 (`equal`). Returns the shape qemu_together does, with
    "refaults": the first VM's."""
    pool_dir = os.path.join(WORKDIR, "pool")
    manager = start_pool(TIERVISOR, pool_dir, pool_mib * 1024, os.path.join(WORKDIR, "pool.log"),
                         cpu=MANAGER_CPU)
    done = run_together(
        FLEET, lambda i, tiers: ["--tiers", tiers, "--advisor", advisor, "--cpu", str(CPU[i]),
                                 "--ram-pool", pool_dir, "--priority",
                                 str(PRIORITY if i == 0 and mode == "priority" else 1)],
        CPU, TIMEOUT_S, f"{advisor} {mode}", manager)
    return {"ns": [r[0] for _, r, _ in done], "why": [None] * N, "latency": done[0][1][2],
            "refaults": done[0][2], "others_s": max(e for e, _, _ in done[1:])}


QEMU_MODES = ["shared", "split"]
TV_CONFIGS = [(a, m) for a in ADVISORS for m in ("priority", "equal")]
FLEET.total = ROUNDS * (2 + len(QEMU_MODES) + len(TV_CONFIGS))
progress = FLEET.progress


alone = {"qemu": [], "tiervisor": []}
rows = {("QEMU + swap", m): [] for m in QEMU_MODES}
rows.update({(f"tiervisor {a}", m): [] for a, m in TV_CONFIGS})
pools = []
for r in range(ROUNDS):
    alone["qemu"].append(qemu_alone())
    progress(f"round {r + 1}, vm0 {VMS[0]} alone under QEMU")
    ns, _, latency = FLEET.run_alone(0, CPU[0])
    alone["tiervisor"].append((ns, latency))
    progress(f"round {r + 1}, vm0 {VMS[0]} alone under tiervisor")
    for mode in QEMU_MODES:
        rows[("QEMU + swap", mode)].append(qemu_together(mode))
        progress(f"round {r + 1}, {N} VMs under QEMU {mode} in {LIMIT:g} MiB")
    pool_mib = math.floor(rows[("QEMU + swap", "shared")][-1]["peak_mib"] * 4) / 4
    if pool_mib <= 0:
        sys.exit(f"bench-priority: QEMU's guests had no RAM resident at {LIMIT:g} MiB")
    pools.append(pool_mib)
    for a, mode in TV_CONFIGS:
        rows[(f"tiervisor {a}", mode)].append(tiervisor_pool(pool_mib, a, mode))
        progress(f"round {r + 1}, {N} VMs under tiervisor {a} {mode} in {pool_mib:g} MiB")
print(file=sys.stderr)


print(f"vm0 {VMS[0]} (high priority, alone on CPU {CPU[0]}) among "
      f"{', '.join(VMS[1:])} (on CPU {CPU[-1]}); mem={MEM_MIB}M iters={HIGH_ITERS} (vm0), "
      f"{ITERS} (the others) in {GUEST_MIB} "
      f"MiB guests. QEMU + swap in {LIMIT:g} MiB of cgroup (split: {LIMIT * HIGH_SHARE:.1f} "
      f"MiB for vm0); tiervisor in a pool of the guest RAM QEMU's guests had shared, "
      f"{fmt(med(pools), '.2f')} MiB at the median; vm0 at --priority {PRIORITY} "
      f"(`priority`) or 1 (`equal`). {ROUNDS} round(s), medians over the rounds each VM "
      f"finished.\n")
print("vm0 alone all in RAM: " + "; ".join(
    f"{who} {med(x[0] for x in runs):,.0f} ns/op, op p50 "
    f"{med(x[1]['p50'] for x in runs):,.0f} ns, p99 {med(x[1]['p99'] for x in runs):,.0f} ns, "
    f"p99.9 {med(x[1]['p999'] for x in runs):,.0f} ns"
    for who, runs in (("QEMU", alone["qemu"]), ("tiervisor", alone["tiervisor"]))) + "\n")
head = ["VMM", "mode", "vm0 finished", "vm0 ns/op (x alone)", "op p50 ns", "op p99 ns",
        "op p99.9 ns", "op max ns", "p99 x alone", "vm0 refaults",
        "others' makespan s", "others finished"]
print("| " + " | ".join(head) + " |")
print("|" + "---|" * len(head))
summary = {}
for (vmm, mode), runs in rows.items():
    base = alone["qemu" if vmm.startswith("QEMU") else "tiervisor"]
    base_ns = statistics.median(x[0] for x in base)
    base_p99 = statistics.median(x[1]["p99"] for x in base)
    done0 = [x for x in runs if x["ns"][0] is not None and x["latency"]]
    whys = sorted({x["why"][0] for x in runs if x["ns"][0] is None})
    ns = med(x["ns"][0] for x in done0)
    q = {k: med(x["latency"][k] for x in done0) for k in ("p50", "p99", "p999", "max")}
    others_done = sum(1 for x in runs for n in x["ns"][1:] if n is not None)
    summary[(vmm, mode)] = q["p99"]
    print("| " + " | ".join([
        vmm, mode, f"{len(done0)} of {len(runs)}" + (f" ({', '.join(whys)})" if whys else ""),
        "-" if ns is None else f"{ns:,.0f} ({ns / base_ns:.1f}x)",
        fmt(q["p50"], ",.0f"), fmt(q["p99"], ",.0f"), fmt(q["p999"], ",.0f"),
        fmt(q["max"], ",.0f"), "-" if q["p99"] is None else f"{q['p99'] / base_p99:.1f}",
        fmt(med(x.get("refaults") for x in done0), ",.0f"),
        fmt(med(x["others_s"] for x in runs), ".2f"),
        f"{others_done} of {(N - 1) * len(runs)}"]) + " |")
print()
q_shared = summary[("QEMU + swap", "shared")]
for (vmm, mode), p99 in summary.items():
    if vmm.startswith("tiervisor") and p99 is not None and q_shared:
        print(f"{vmm} {mode}: vm0's op p99 {p99 / q_shared:.3f}x QEMU + swap shared's")
PY
child=$!
wait "$child"
