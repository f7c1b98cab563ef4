#!/usr/bin/env bash
# RAM pool benchmark: two test-guest VMs side by side, each over RAM and an
# NVMe-profiled file tier, sharing POOL of RAM (8M by default). Modes:
#   static  each VM has half of it (--ram-budget POOL/2), what a host without a pool
#           would give two equal VMs;
#   pool    both join a `tiervisor pool --size POOL` manager (--ram-pool), which moves
#           budget between them while they run (docs/pool.md);
#   turns, turns+staging, turns+prestaging   (the turns scenario) the manager runs
#           them one at a time in turns of SLICE_MS (300) ms, without staging
#           (`--no-staging`: a VM faults its pages back in), with staging as a turn
#           begins (the default: a turn begins by asking them back in a batch), and
#           with staging before it too (`--prestaging`: the next VM in line stages into
#           the room the running VM does not use).
# Scenarios (SCENARIOS, comma-separated; the vCPU and fault handler of the first VM on
# CPU 0, of the second on CPU 1, but for turns):
#   uneven     a Zipf workload over 12 MiB (refaults at any share) beside a pointer
#              chase over 3 MiB (fits in its half, with room to spare);
#   staggered  two Zipf workloads over 8 MiB, one with a fifth of the other's work:
#              it leaves early, and its share goes to the other;
#   priority   two identical Zipf workloads over 8 MiB, the first at --priority 3 in the
#              pool (static: halves, as ever);
#   turns      two Zipf workloads over 6 MiB, both on CPU 0 (more VMs than CPUs): the
#              pool holds one working set but not two. Static, the host's scheduler
#              interleaves the two VMs. (resources/scripts/pool-turns.sh runs turns
#              with more VMs, other set sizes and slower tiers, without a baseline.)
# Rounds are interleaved (every mode of every scenario once per round), ROUNDS of each
# (3 by default); medians over the rounds. Reports per VM its run time (ms, the VM's
# own run_ms: from process start to exit, so a pooled VM's wait for its first budget
# counts) per mode and its ratio to static, the same ratio of the guest's own ns per
# operation (its result line), its demand faults that were not first touches
# (refaults), and its budget range in the last mode; per scenario and mode the ratio
# of the makespans (the later VM's end) and of the summed run times to static. Every
# run must pass the guest's own verification, or the benchmark fails.
#
#   resources/scripts/bench-pool.sh              (make bench-pool builds what it needs)
#   ROUNDS=5 SCENARIOS=uneven ADVISOR=gru resources/scripts/bench-pool.sh
set -euo pipefail
cd "$(dirname "$0")/../.."

. resources/scripts/built.sh bench-pool
WORKDIR=$(disk_workdir bench-pool)
trap 'rm -rf "$WORKDIR"' EXIT
trap 'if [ -n "${child:-}" ]; then pkill -TERM -P "$child"; kill "$child"; fi 2>/dev/null; exit 130' INT TERM
export TIERVISOR GUEST WORKDIR

python3 - "$@" <<'PY' &
import json, os, re, statistics, subprocess, sys, time

TIERVISOR = os.environ["TIERVISOR"]
GUEST = os.environ["GUEST"]
WORKDIR = os.environ["WORKDIR"]
ROUNDS = int(os.environ.get("ROUNDS", "3"))
POOL = os.environ.get("POOL", "8M")
ADVISOR = os.environ.get("ADVISOR", "none")
SLICE_MS = os.environ.get("SLICE_MS", "300")
SCENARIOS = os.environ.get("SCENARIOS", "uneven,staggered,priority,turns").split(",")
RESULT = re.compile(r"ops=(\d+) ns=(\d+) checksum=(\S+) (?:op_\S+ )*result=(\S+)")

# Modes: name -> manager flags (None: no pool, each VM a static half of it).
SHARED = {"static": None, "pool": []}
TURNS = {"static": None,
         "turns": ["--slice-ms", SLICE_MS, "--no-staging"],
         "turns+staging": ["--slice-ms", SLICE_MS],
         "turns+prestaging": ["--slice-ms", SLICE_MS, "--prestaging"]}
# name -> (modes, [(label, cmdline, priority, cpu)]), two VMs each
ALL = {
    "uneven": (SHARED, [("zipf 12M", "workload=zipf mem=12M iters=300000 seed=1", 1, 0),
                        ("chase 3M", "workload=chase mem=3M iters=8000000 seed=2", 1, 1)]),
    "staggered": (SHARED, [("zipf 8M long", "workload=zipf mem=8M iters=400000 seed=3", 1, 0),
                           ("zipf 8M short", "workload=zipf mem=8M iters=80000 seed=4", 1, 1)]),
    "priority": (SHARED, [("zipf 8M prio 3", "workload=zipf mem=8M iters=250000 seed=5", 3, 0),
                          ("zipf 8M prio 1", "workload=zipf mem=8M iters=250000 seed=5", 1, 1)]),
    "turns": (TURNS, [("zipf 6M a", "workload=zipf mem=6M iters=1500000 seed=6", 1, 0),
                      ("zipf 6M b", "workload=zipf mem=6M iters=1500000 seed=7", 1, 0)]),
}
for s in SCENARIOS:
    if s not in ALL:
        sys.exit(f"bench-pool: unknown scenario {s!r} (known: {', '.join(ALL)})")
units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
m = re.fullmatch(r"(\d+)([KMG]?)", POOL)
if not m:
    sys.exit(f"bench-pool: POOL must be a size such as 8M, got {POOL!r}")
pool_bytes = int(m.group(1)) * units.get(m.group(2), 1)
half = f"{pool_bytes // 2 // 1024}K"

TIERS = """[tier1]
capacity = "64M"
backend = "ram"
[tier2]
capacity = "64M"
file = "{dir}/t2.img"
profile = "nvme"
"""


def run_pair(scenario, mode, rnd):
    """Both VMs of `scenario` at once in `mode`; their metrics."""
    modes, vms_spec = ALL[scenario]
    flags = modes[mode]
    base = os.path.join(WORKDIR, f"{scenario}-{mode}-{rnd}")
    manager = None
    if flags is not None:
        pool_dir = os.path.join(base, "pool")
        manager = subprocess.Popen(
            [TIERVISOR, "pool", "--dir", pool_dir, "--size", POOL, "--exit-when-empty"] + flags,
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            text=True)
        start = time.time()
        while not os.path.exists(os.path.join(pool_dir, "pool.json")):
            if time.time() - start > 10 or manager.poll() is not None:
                sys.exit(f"bench-pool: the pool manager did not start:\n{manager.stderr.read()}")
            time.sleep(0.01)
    vms = []
    for i, (label, cmdline, prio, cpu) in enumerate(vms_spec):
        d = os.path.join(base, f"vm{i}")
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, "tiers.toml"), "w") as f:
            f.write(TIERS.format(dir=d))
        cmd = [TIERVISOR, "run", "--kernel", GUEST, "--memory", "64M", "--cmdline", cmdline,
               "--tiers", os.path.join(d, "tiers.toml"), "--advisor", ADVISOR,
               "--cpu", str(cpu), "--metrics-out", os.path.join(d, "m.json")]
        if flags is not None:
            cmd += ["--ram-pool", pool_dir]
            if prio != 1:
                cmd += ["--priority", str(prio)]
        else:
            cmd += ["--ram-budget", half]
        p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True,
                             env=dict(os.environ, TIERVISOR_WORKDIR=d))
        vms.append((label, d, p))
    out = []
    for label, d, p in vms:
        stdout, stderr = p.communicate()
        r = RESULT.search(stdout)
        if p.returncode != 0 or not r or r.group(4) != "ok":
            sys.exit(f"bench-pool: {scenario} {mode}: {label} failed "
                     f"(status {p.returncode}):\n{stdout}{stderr}")
        with open(os.path.join(d, "m.json")) as f:
            m = json.load(f)
        m["ns_per_op"] = int(r.group(2)) / int(r.group(1))
        out.append(m)
    if manager is not None:
        _, err = manager.communicate(timeout=30)
        if manager.returncode != 0:
            sys.exit(f"bench-pool: the pool manager failed:\n{err}")
    subprocess.run(["rm", "-rf", base])
    return out


print(f"bench-pool: {ROUNDS} rounds, pool {POOL} (static: {half} each), advisor {ADVISOR}, "
      f"turns of {SLICE_MS} ms", flush=True)
results = {}   # (scenario, mode) -> list of [metrics vm0, metrics vm1]
total = ROUNDS * sum(len(ALL[s][0]) for s in SCENARIOS)
done = 0
for rnd in range(ROUNDS):
    for s in SCENARIOS:
        for mode in ALL[s][0]:
            results.setdefault((s, mode), []).append(run_pair(s, mode, rnd))
            done += 1
            print(f"  [{done}/{total}] round {rnd + 1}: {s} {mode}", file=sys.stderr,
                  flush=True)


def med(values):
    return statistics.median(values)


def refaults(m):
    return m["tiers"]["demand_faults"] - m["tiers"]["zero_fills"]


for s in SCENARIOS:
    modes, vms_spec = ALL[s]
    others = [m for m in modes if m != "static"]
    print(f"\n### {s}\n")
    head = ["VM", "static ms"]
    for m in others:
        head += [f"{m} ms", f"{m} / static", f"guest ns/op, {m} / static"]
    head += ["refaults " + " -> ".join(modes), "budget pages (min-max, final)"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    st = results[(s, "static")]
    for i, (label, *_rest) in enumerate(vms_spec):
        ms_s = med([r[i]["run_ms"] for r in st])
        ns_s = med([r[i]["ns_per_op"] for r in st])
        row = [label, f"{ms_s:,.0f}"]
        for m in others:
            rs = results[(s, m)]
            ms_m = med([r[i]["run_ms"] for r in rs])
            ns_m = med([r[i]["ns_per_op"] for r in rs])
            row += [f"{ms_m:,.0f}", f"{ms_m / ms_s:.3f}", f"{ns_m / ns_s:.3f}"]
        row.append(" -> ".join(f"{med([refaults(r[i]) for r in results[(s, m)]]):,.0f}"
                               for m in modes))
        last = results[(s, others[-1])]
        pools = [r[i]["tiers"]["pool"] for r in last]
        row.append(f"{min(p['min_budget_pages'] for p in pools)}-"
                   f"{max(p['max_budget_pages'] for p in pools)}, "
                   f"{med([p['final_budget_pages'] for p in pools]):.0f} ({others[-1]})")
        print("| " + " | ".join(row) + " |")
    mk_s = med([max(v["run_ms"] for v in r) for r in st])
    sum_s = med([sum(v["run_ms"] for v in r) for r in st])
    for m in others:
        rs = results[(s, m)]
        mk = med([max(v["run_ms"] for v in r) for r in rs])
        sm = med([sum(v["run_ms"] for v in r) for r in rs])
        print(f"\n{m}: makespan (the later VM's run time) {mk:,.0f} ms against static "
              f"{mk_s:,.0f} ms, {m} / static {mk / mk_s:.3f}; summed run time "
              f"{sm / sum_s:.3f}")
PY
child=$!
wait "$child"
