#!/usr/bin/env bash
# Live advisor benchmark: the test guest's workloads in real VMs (KVM, userfaultfd,
# io_uring) with 25% of their working memory in RAM and the rest on an NVMe-profiled
# file tier (resources/tiers/bench-live.toml), once per advisor, against the same
# workload all in RAM. Rounds are interleaved (every configuration once per round) so
# the host's load drifts over all of them alike; medians over the rounds.
#
#   resources/scripts/bench-live.sh                 (make bench-live builds what it needs)
#   ROUNDS=5 ADVISORS=none,leap,gru WORKLOADS=zipf,kv resources/scripts/bench-live.sh
#   ADVISORS=gru,gru@TIERVISOR_GRU_CHAIN_INFERENCE=1 resources/scripts/bench-live.sh
#     (an entry ADVISOR@VAR=VALUE[@VAR=VALUE...] runs ADVISOR with those environment
#     variables: two settings of one advisor, interleaved like any two advisors)
#   ADVISORS=gru,gru@TIERS=resources/tiers/bench-live-no-tier0.toml resources/scripts/bench-live.sh
#     (@TIERS=FILE is not an environment variable: that entry runs over another tier file)
#
# Reports per workload: the guest's own ns per operation (its result line), the
# slowdown against all-in-RAM, demand faults, prefetches and their accuracy, sampled
# minor faults, the fault handler's time inside the advisor (ms per run) and for gru
# its background learner's CPU share; then the geometric
# mean over workloads of each advisor's slowdown and run time relative to `leap` and
# `none`. Every run must pass the guest's own verification and give the all-in-RAM
# checksum, or the benchmark fails.
set -euo pipefail
cd "$(dirname "$0")/../.."

. resources/scripts/built.sh bench-live
# O_DIRECT tier files need a disk file system: under target/, not /tmp (often tmpfs).
mkdir -p target
WORKDIR=$(cd "$(mktemp -d -p target bench-live.XXXXXX)" && pwd)
# Not `exec python3`: the EXIT trap would never run and every run would leave its
# 256 MiB tier file behind (it did until session 17). On INT/TERM bash runs traps only
# between commands, so the Python below runs in the background and is waited for; a
# signal ends the VM it is running too.
trap 'rm -rf "$WORKDIR"' EXIT
trap 'if [ -n "${child:-}" ]; then pkill -TERM -P "$child"; kill "$child"; fi 2>/dev/null; exit 130' INT TERM
export TIERVISOR GUEST WORKDIR

python3 - "$@" <<'PY' &
import json, math, os, re, statistics, subprocess, sys

TIERVISOR = os.environ["TIERVISOR"]
GUEST = os.environ["GUEST"]
WORKDIR = os.environ["WORKDIR"]
ROUNDS = int(os.environ.get("ROUNDS", "3"))
ADVISORS = os.environ.get("ADVISORS", "none,lru,stride,leap,workingset,gru").split(",")
WORKLOADS = os.environ.get("WORKLOADS", "scan,stride,random,zipf,chase,phases,kv").split(",")
MEM = "8M"           # the workload's working memory
RAM_BUDGET = "2M"    # 25% of it
ITERS = int(os.environ.get("ITERS", "20000"))
TIERS = "resources/tiers/bench-live.toml"
RESULT = re.compile(r"workload=(\S+) ops=(\d+) ns=(\d+) checksum=(\S+) result=(\S+)")


def run(workload, config, seed):
    """One VM run; config None means all memory in RAM, else ADVISOR[@VAR=VALUE...].
    Returns (ns/op, checksum, metrics)."""
    metrics = os.path.join(WORKDIR, "m.json")
    advisor, env = None, dict(os.environ, TIERVISOR_WORKDIR=WORKDIR)
    tiers = TIERS
    if config is not None:
        advisor, *assignments = config.split("@")
        for a in assignments:
            var, sep, value = a.partition("=")
            if not sep or not var:
                sys.exit(f"bench-live: {config}: expected ADVISOR@VAR=VALUE")
            if var == "TIERS":
                tiers = value
            else:
                env[var] = value
    cmd = [TIERVISOR, "run", "--kernel", GUEST, "--memory", "64M", "--vcpus", "1",
           "--cmdline", f"workload={workload} mem={MEM} iters={ITERS} seed={seed}",
           "--metrics-out", metrics]
    if advisor is not None:
        cmd += ["--tiers", tiers, "--ram-budget", RAM_BUDGET, "--advisor", advisor]
    p = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                       env=env)
    m = RESULT.search(p.stdout)
    if p.returncode != 0 or not m or m.group(5) != "ok":
        sys.exit(f"bench-live: {workload} with {config or 'all RAM'} failed "
                 f"(status {p.returncode}):\n{p.stdout}{p.stderr}")
    with open(metrics) as f:
        return int(m.group(3)) / int(m.group(2)), m.group(4), json.load(f)


configs = [None] + ADVISORS
samples = {}   # (workload, config) -> list of (ns/op, metrics)
checksums = {}
total = ROUNDS * len(WORKLOADS) * len(configs)
done = 0
for r in range(ROUNDS):
    for w in WORKLOADS:
        for c in configs:
            ns_op, checksum, m = run(w, c, seed=7)
            if checksums.setdefault(w, checksum) != checksum:
                sys.exit(f"bench-live: {w} with {c or 'all RAM'} gave checksum {checksum}, "
                         f"all RAM gave {checksums[w]}")
            samples.setdefault((w, c), []).append((ns_op, m))
            done += 1
            print(f"\rbench-live: run {done}/{total} (round {r + 1}, {w}, {c or 'all RAM'})",
                  end="", file=sys.stderr, flush=True)
print(file=sys.stderr)


def med_ns(w, c):
    return statistics.median(ns for ns, _ in samples[(w, c)])


def med_tier(w, c, key):
    return statistics.median(m["tiers"][key] for _, m in samples[(w, c)])


print(f"Test guest, mem={MEM} iters={ITERS} seed=7, RAM budget {RAM_BUDGET} (25%), "
      f"tiers {TIERS}; median of {ROUNDS} interleaved rounds\n")
for w in WORKLOADS:
    ram = med_ns(w, None)
    print(f"{w} (all in RAM: {ram:,.0f} ns/op)")
    print("| advisor | ns/op | slowdown | demand faults | prefetches | late prefetches "
          "| accuracy | minor faults | advisor ms | learner CPU |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for a in ADVISORS:
        ns = med_ns(w, a)
        issued = med_tier(w, a, "prefetch_issued")
        useful = med_tier(w, a, "prefetch_useful")
        acc = f"{useful / issued:.3f}" if issued else "-"
        online = [m["tiers"].get("advisor_online") for _, m in samples[(w, a)]]
        learner = "-"
        if all(online):
            learner = f"{statistics.median(o['background_cpu_share'] for o in online):.2%}"
        print(f"| {a} | {ns:,.0f} | {ns / ram:.1f}x | {med_tier(w, a, 'demand_faults'):,.0f} "
              f"| {issued:,.0f} | {med_tier(w, a, 'prefetches_late'):,.0f} | {acc} "
              f"| {med_tier(w, a, 'minor_faults'):,.0f} "
              f"| {med_tier(w, a, 'advisor_cpu_ms'):,.1f} | {learner} |")
    print()


def geo(xs):
    return math.exp(sum(math.log(x) for x in xs) / len(xs))


first = ADVISORS[0]
print("Geometric mean over the workloads:")
print("| advisor | slowdown vs all RAM | run time vs none | run time vs leap | faults vs leap "
      f"| run time vs {first} | faults vs {first} |")
print("|---|---|---|---|---|---|---|")
for a in ADVISORS:
    slow = geo([med_ns(w, a) / med_ns(w, None) for w in WORKLOADS])
    def rel(b, f):
        return f"{geo([f(w, a) / f(w, b) for w in WORKLOADS]):.3f}" if b in ADVISORS else "-"
    faults = lambda w, c: max(med_tier(w, c, "demand_faults"), 1)
    print(f"| {a} | {slow:.1f}x | {rel('none', med_ns)} | {rel('leap', med_ns)} "
          f"| {rel('leap', faults)} | {rel(first, med_ns)} | {rel(first, faults)} |")
PY
child=$!
wait "$child"
