#!/usr/bin/env bash
# Live advisor benchmark: the test guest's workloads in real VMs (KVM, userfaultfd,
# io_uring) with 25% of their working memory in RAM (RAM_SHARES) and the rest on an
# NVMe-profiled file tier (resources/tiers/bench-live.toml; TIERS), once per advisor, against the same
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
#   TIERS=resources/tiers/by-speed.toml resources/scripts/bench-live.sh
#     (another tier file for every advisor, here the six tiers ranked by speed; a file
#     with an NBD tier gets a qemu-nbd on ${WORKDIR}/nbd.sock, export "", started here)
#   MEM=256M ITERS=100000 ADVISORS=stride,gru WORKLOADS=random,zipf,scan,chase resources/scripts/bench-live.sh
#     (a larger working memory, 8M by default; the VM gets it, a quarter more and 32 MiB, and the
#     tier file must hold what does not fit in RAM: bench-live.toml's NVMe file takes
#     256 MiB. The advisor column's share shows what gru's bookkeeping costs at scale,
#     docs/predictor.md "Live, on a larger VM")
#   MEM=1G VM=4G ITERS=100000 ROUNDS=2 ADVISORS=stride,gru WORKLOADS=random,zipf,chase \
#       TIERS=resources/tiers/bench-live-4g.toml resources/scripts/bench-live.sh
#     (VM sets the VM's size, here the issue's 4 GiB VM, whose advisor share is
#     docs/predictor.md's "Live, on a larger VM"; its tier file holds 2 GiB of NVMe)
#   RAM_SHARES=25,50,75 resources/scripts/bench-live.sh
#     (the RAM budget as percentages of the working memory, 25 by default; with more
#     than one, every share is a configuration of each advisor, interleaved like the
#     rest, and a last table gives each advisor's geometric means per share)
#
# Reports per workload: the guest's own ns per operation (its result line), its
# slowest round over its fastest (how far the configuration's own runs differ), the
# slowdown against all-in-RAM, demand faults, prefetches and their accuracy, sampled
# minor faults, the fault handler's time inside the advisor (ms per run) and for gru
# its background learner's CPU share; then the geometric
# mean over workloads of each advisor's slowdown and run time relative to `leap` and
# `none`. Every run must pass the guest's own verification and give the all-in-RAM
# checksum, or the benchmark fails.
set -euo pipefail
cd "$(dirname "$0")/../.."

. resources/scripts/built.sh bench-live
WORKDIR=$(disk_workdir bench-live)
# Not `exec python3`: the EXIT trap would never run and every run would leave its
# 256 MiB tier file behind (it did until session 17). On INT/TERM bash runs traps only
# between commands, so the Python below runs in the background and is waited for; a
# signal ends the VM it is running too.
trap 'if [ -n "${nbd_pid:-}" ]; then kill "$nbd_pid" 2>/dev/null; wait "$nbd_pid" 2>/dev/null; fi; rm -rf "$WORKDIR"' EXIT
trap 'if [ -n "${child:-}" ]; then pkill -TERM -P "$child"; kill "$child"; fi 2>/dev/null; exit 130' INT TERM
TIERS=${TIERS:-resources/tiers/bench-live.toml}
export TIERVISOR GUEST WORKDIR TIERS

# Tier files with an NBD tier (the TIERS one and any ADVISOR@TIERS=FILE) expect a server
# at ${WORKDIR}/nbd.sock: one qemu-nbd serves every run.
tier_files=("$TIERS")
IFS=, read -ra entries <<<"${ADVISORS:-}"
for e in "${entries[@]}"; do
    if [[ $e =~ @TIERS=([^@]*) ]]; then tier_files+=("${BASH_REMATCH[1]}"); fi
done
for f in "${tier_files[@]}"; do
    if [ ! -r "$f" ]; then
        echo "bench-live: tier file $f cannot be read" >&2
        exit 1
    fi
done
if grep -qs '^ *nbd *=' "${tier_files[@]}"; then
    . resources/scripts/nbd.sh
    start_nbd "$WORKDIR" bench-live
fi

python3 - "$@" <<'PY' &
import json, math, os, re, statistics, subprocess, sys

TIERVISOR = os.environ["TIERVISOR"]
GUEST = os.environ["GUEST"]
WORKDIR = os.environ["WORKDIR"]
ROUNDS = int(os.environ.get("ROUNDS", "3"))
ADVISORS = os.environ.get("ADVISORS", "none,lru,stride,leap,workingset,gru").split(",")
WORKLOADS = os.environ.get("WORKLOADS", "scan,stride,random,zipf,chase,phases,kv").split(",")
MEM = os.environ.get("MEM", "8M")   # the workload's working memory
_mem = re.fullmatch(r"([1-9][0-9]*)([KMG])", MEM)
if not _mem:
    sys.exit(f"bench-live: MEM must be a size such as 8M, 65536K or 1G, got {MEM!r}")
MEM_KIB = int(_mem.group(1)) * {"K": 1, "M": 1024, "G": 1024 * 1024}[_mem.group(2)]
# The VM: 64 MiB as always, or for a larger working memory that and a quarter more
# and 32 MiB for the guest's image, page tables and metadata.
_mem_mib = -(-MEM_KIB // 1024)
VM_MIB = max(64, _mem_mib + _mem_mib // 4 + 32)
if os.environ.get("VM"):
    _vm = re.fullmatch(r"([1-9][0-9]*)([MG])", os.environ["VM"])
    if not _vm:
        sys.exit(f"bench-live: VM must be a size such as 512M or 4G, got {os.environ['VM']!r}")
    VM_MIB = int(_vm.group(1)) * {"M": 1, "G": 1024}[_vm.group(2)]
    if VM_MIB < _mem_mib + 32:
        sys.exit(f"bench-live: a VM of {VM_MIB} MiB cannot hold mem={MEM} and the guest")
try:
    SHARES = [int(x) for x in os.environ.get("RAM_SHARES", "25").split(",")]
except ValueError:
    sys.exit("bench-live: RAM_SHARES must be comma-separated integers (percent), "
             f"got {os.environ['RAM_SHARES']!r}")
if not SHARES or any(not 1 <= x < 100 for x in SHARES):
    sys.exit(f"bench-live: every RAM share must be 1-99 (percent), got {SHARES}")
ITERS = int(os.environ.get("ITERS", "20000"))
TIERS = os.environ["TIERS"]
RESULT = re.compile(r"workload=(\S+) ops=(\d+) ns=(\d+) checksum=(\S+) (?:op_\S+ )*result=(\S+)")


def budget(share):
    """The RAM budget at `share` percent of the working memory, in whole pages."""
    kib = MEM_KIB * share // 100 // 4 * 4
    return f"{kib // 1024}M" if kib % 1024 == 0 else f"{kib}K"


def run(workload, config, share, seed):
    """One VM run; config None means all memory in RAM, else ADVISOR[@VAR=VALUE...]
    with `share` percent of the working memory in RAM. Returns (ns/op, checksum,
    metrics)."""
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
    cmd = [TIERVISOR, "run", "--kernel", GUEST, "--memory", f"{VM_MIB}M", "--vcpus", "1",
           "--cmdline", f"workload={workload} mem={MEM} iters={ITERS} seed={seed}",
           "--metrics-out", metrics]
    if advisor is not None:
        cmd += ["--tiers", tiers, "--ram-budget", budget(share), "--advisor", advisor]
    p = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                       env=env)
    m = RESULT.search(p.stdout)
    if p.returncode != 0 or not m or m.group(5) != "ok":
        sys.exit(f"bench-live: {workload} with {config or 'all RAM'} failed "
                 f"(status {p.returncode}):\n{p.stdout}{p.stderr}")
    with open(metrics) as f:
        return int(m.group(3)) / int(m.group(2)), m.group(4), json.load(f)


# (advisor config, RAM share); (None, None) is all memory in RAM.
configs = [(None, None)] + [(a, share) for share in SHARES for a in ADVISORS]
samples = {}   # (workload, config, share) -> list of (ns/op, metrics)
checksums = {}
total = ROUNDS * len(WORKLOADS) * len(configs)
done = 0
for r in range(ROUNDS):
    for w in WORKLOADS:
        for c, share in configs:
            ns_op, checksum, m = run(w, c, share, seed=7)
            label = f"{c} at {share}%" if c else "all RAM"
            if checksums.setdefault(w, checksum) != checksum:
                sys.exit(f"bench-live: {w} with {label} gave checksum {checksum}, "
                         f"all RAM gave {checksums[w]}")
            samples.setdefault((w, c, share), []).append((ns_op, m))
            done += 1
            print(f"\rbench-live: run {done}/{total} (round {r + 1}, {w}, {label})",
                  end="", file=sys.stderr, flush=True)
print(file=sys.stderr)


def med_ns(w, c, share):
    return statistics.median(ns for ns, _ in samples[(w, c, share)])


def spread_ns(w, c, share):
    """Slowest round over fastest: how far one configuration's own runs differ. An
    A/B whose ratio lies within this spread is not a measured difference
    (docs/benchmarks.md, "How far two runs of the same advisor differ")."""
    ns = [ns for ns, _ in samples[(w, c, share)]]
    return f"{max(ns) / min(ns):.2f}" if len(ns) > 1 else "-"


def med_tier(w, c, share, key):
    return statistics.median(m["tiers"][key] for _, m in samples[(w, c, share)])


def advisor_share(w, c, share):
    """The fault handler's time inside the advisor over the run's time (median)."""
    return statistics.median(m["tiers"]["advisor_cpu_ms"] / m["run_ms"]
                             for _, m in samples[(w, c, share)])


def geo(xs):
    return math.exp(sum(math.log(x) for x in xs) / len(xs))


def slowdown(a, share):
    return geo([med_ns(w, a, share) / med_ns(w, None, None) for w in WORKLOADS])


for share in SHARES:
    print(f"Test guest, mem={MEM} iters={ITERS} seed=7 in a {VM_MIB} MiB VM, RAM budget "
          f"{budget(share)} ({share}%), tiers {TIERS}; median of {ROUNDS} interleaved rounds\n")
    for w in WORKLOADS:
        ram = med_ns(w, None, None)
        print(f"{w} (all in RAM: {ram:,.0f} ns/op)")
        print("| advisor | ns/op | slowest / fastest round | slowdown | demand faults "
              "| prefetches | late prefetches | accuracy | minor faults | advisor ms "
              "(share of the run) | learner CPU |")
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        for a in ADVISORS:
            ns = med_ns(w, a, share)
            issued = med_tier(w, a, share, "prefetch_issued")
            useful = med_tier(w, a, share, "prefetch_useful")
            acc = f"{useful / issued:.3f}" if issued else "-"
            online = [m["tiers"].get("advisor_online") for _, m in samples[(w, a, share)]]
            learner = "-"
            if all(online):
                learner = f"{statistics.median(o['background_cpu_share'] for o in online):.2%}"
            print(f"| {a} | {ns:,.0f} | {spread_ns(w, a, share)} | {ns / ram:.1f}x "
                  f"| {med_tier(w, a, share, 'demand_faults'):,.0f} "
                  f"| {issued:,.0f} | {med_tier(w, a, share, 'prefetches_late'):,.0f} | {acc} "
                  f"| {med_tier(w, a, share, 'minor_faults'):,.0f} "
                  f"| {med_tier(w, a, share, 'advisor_cpu_ms'):,.1f} ({advisor_share(w, a, share):.2%}) "
                  f"| {learner} |")
        print()

    first = ADVISORS[0]
    print(f"Geometric mean over the workloads ({share}% in RAM):")
    print("| advisor | slowdown vs all RAM | run time vs none | run time vs leap | faults vs leap "
          f"| run time vs {first} | faults vs {first} |")
    print("|---|---|---|---|---|---|---|")
    for a in ADVISORS:
        def rel(b, f):
            if b not in ADVISORS:
                return "-"
            return f"{geo([f(w, a, share) / f(w, b, share) for w in WORKLOADS]):.3f}"
        faults = lambda w, c, s: max(med_tier(w, c, s, "demand_faults"), 1)
        print(f"| {a} | {slowdown(a, share):.1f}x | {rel('none', med_ns)} "
              f"| {rel('leap', med_ns)} | {rel('leap', faults)} | {rel(first, med_ns)} "
              f"| {rel(first, faults)} |")
    print()

if len(SHARES) > 1:
    print("By RAM share: geometric-mean slowdown vs all RAM (run time vs none)")
    print("| advisor | " + " | ".join(f"{s}% in RAM" for s in SHARES) + " |")
    print("|---|" + "---|" * len(SHARES))
    for a in ADVISORS:
        cells = []
        for share in SHARES:
            vs_none = ""
            if "none" in ADVISORS:
                vs_none = " ({:.3f})".format(
                    geo([med_ns(w, a, share) / med_ns(w, "none", share) for w in WORKLOADS]))
            cells.append(f"{slowdown(a, share):.1f}x{vs_none}")
        print(f"| {a} | " + " | ".join(cells) + " |")
PY
child=$!
wait "$child"
