#!/usr/bin/env bash
# `make demo`: boot the test guest under tiervisor with a few workloads and print what
# each run reports: all in RAM, on tiered memory, the same VM with demand paging and
# with the GRU advisor, two VMs sharing one RAM budget, and a recorded trace replayed
# through the advisors. Run from the repository root after `make build` (about 20 s).
set -euo pipefail

cd "$(dirname "$0")/../.."
. resources/scripts/built.sh demo
tiervisor=$TIERVISOR
guest=$GUEST
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

# field NAME FILE: a number from the flat metrics JSON.
field() { grep -o "\"$1\": *[0-9.]*" "$2" | head -1 | sed 's/.*: *//'; }
# tier_field NAME FILE: a field of the metrics' tiered-memory report (`tiers`), whose
# per-tier entries repeat some names.
tier_field() { python3 -c 'import json, sys; print(json.load(open(sys.argv[2]))["tiers"][sys.argv[1]])' "$1" "$2"; }

echo "tiervisor demo: the test guest under KVM, all guest memory in RAM"
echo
runs=(
    "1 256M workload=scan mem=64M iters=400000 seed=1"
    "2 256M workload=zipf mem=64M iters=400000 seed=2"
    "2 256M workload=kv mem=32M iters=200000 seed=3"
)
status=0
# run_guest ARGS...: print the command, boot the test guest with ARGS (metrics to
# $out/m.json), show its result line; a failed run makes the demo fail.
run_guest() {
    local shown="" arg rc=0
    for arg in "$@"; do
        if [[ $arg == *' '* ]]; then shown+=" '$arg'"; else shown+=" $arg"; fi
    done
    echo "\$ tiervisor run --kernel $guest$shown"
    "$tiervisor" run --kernel "$guest" "$@" --metrics-out "$out/m.json" </dev/null \
        2> >(grep -v '^tiervisor: note:' >&2) | grep '^testguest: workload=' || rc=$?
    [ "$rc" -eq 0 ] || status=1
}
for run in "${runs[@]}"; do
    read -r vcpus memory cmdline <<<"$run"
    run_guest --memory "$memory" --vcpus "$vcpus" --cmdline "$cmdline"
    if [ -s "$out/m.json" ]; then
        printf '  exit=%s boot_ms=%.2f vmm_overhead_kib=%s guest_rss_kib=%s io_exits=%s\n' \
            "$(field exit_status "$out/m.json")" "$(field boot_ms "$out/m.json")" \
            "$(field vmm_overhead_kib "$out/m.json")" "$(field guest_rss_kib "$out/m.json")" \
            "$(field io "$out/m.json")"
    fi
    rm -f "$out/m.json"
    echo
done
# Tiered memory: 25% of the workload's memory in RAM, the rest over the tiers of
# resources/tiers/by-speed.toml (tier files under target/ - O_DIRECT needs a disk file
# system, not tmpfs - and tier 5 on a qemu-nbd started here).
echo "tiervisor demo: tiered memory, RAM budget 25% of the working memory"
echo
tiers=$(disk_workdir demo-tiers)
trap 'if [ -n "${nbd_pid:-}" ]; then kill "$nbd_pid" 2>/dev/null; fi; rm -rf "$out" "$tiers"' EXIT
. resources/scripts/nbd.sh
start_nbd "$tiers" demo
TIERVISOR_WORKDIR="$tiers" run_guest --memory 64M --cmdline "workload=zipf mem=16M iters=50000 seed=4" \
    --tiers resources/tiers/by-speed.toml --ram-budget 4M --trace-out "$out/zipf.tvt"
if [ -s "$out/m.json" ]; then
    printf '  exit=%s demand_faults=%s evictions=%s fault_p50_us=%s fault_p99_us=%s\n' \
        "$(field exit_status "$out/m.json")" "$(field demand_faults "$out/m.json")" \
        "$(field evictions "$out/m.json")" "$(field fault_latency_p50_us "$out/m.json")" \
        "$(field fault_latency_p99_us "$out/m.json")"
fi
echo
# One VM twice over the same tiers: demand paging (`none`, baseline B0) and the GRU
# advisor (shipped base model, learning online as the VM runs). chase follows a random
# cycle through its pages, which no stride or trend predicts; gru learns the cycle.
echo "tiervisor demo: the same VM with demand paging (none) and with the GRU advisor (gru)"
echo
declare -A ns_op
for advisor in none gru; do
    # Into a file, not $(...): run_guest must set `status` in this shell.
    TIERVISOR_WORKDIR="$tiers" run_guest --memory 64M \
        --cmdline "workload=chase mem=8M iters=10000 seed=7" \
        --tiers resources/tiers/by-speed.toml --ram-budget 2M --advisor "$advisor" >"$out/run.txt"
    cat "$out/run.txt"
    ns_op[$advisor]=$(grep -o ' ns=[0-9]*' "$out/run.txt" | head -1 | cut -d= -f2)
    if [ -s "$out/m.json" ]; then
        printf '  demand_faults=%s prefetch_issued=%s prefetch_useful=%s fault_p50_us=%s\n' \
            "$(tier_field demand_faults "$out/m.json")" "$(tier_field prefetch_issued "$out/m.json")" \
            "$(tier_field prefetch_useful "$out/m.json")" "$(tier_field fault_latency_p50_us "$out/m.json")"
    fi
    rm -f "$out/m.json"
done
if [ -n "${ns_op[none]:-}" ] && [ -n "${ns_op[gru]:-}" ]; then
    awk -v n="${ns_op[none]}" -v g="${ns_op[gru]}" \
        'BEGIN { printf "  gru ran the workload in %.2f of the time demand paging took\n", g / n }'
fi
echo
# Two VMs in separate processes sharing one 8 MiB RAM budget through a pool manager:
# a Zipf VM over 12 MiB (pages at any share) and a pointer chase over 3 MiB (fits in
# half). The manager's log shows budget moving to the VM that refaults (docs/pool.md).
echo "tiervisor demo: two VMs sharing one 8 MiB RAM budget (tiervisor pool)"
echo
echo "\$ tiervisor pool --dir POOL --size 8M --exit-when-empty &"
"$tiervisor" pool --dir "$tiers/pool" --size 8M --exit-when-empty 2>"$out/pool.log" &
pool_pid=$!
for _ in $(seq 200); do [ -e "$tiers/pool/pool.json" ] && break; sleep 0.05; done
pool_vm() { # NAME CPU CMDLINE: a VM in the pool, over RAM and an NVMe-profiled file tier
    mkdir -p "$tiers/$1"
    echo "\$ tiervisor run --kernel $guest --memory 64M --cmdline '$3' --tiers resources/tiers/bench-live.toml --ram-pool POOL --cpu $2 &"
    TIERVISOR_WORKDIR="$tiers/$1" "$tiervisor" run --kernel "$guest" --memory 64M \
        --cmdline "$3" --tiers resources/tiers/bench-live.toml --ram-pool "$tiers/pool" \
        --cpu "$2" --metrics-out "$out/$1.json" </dev/null 2>/dev/null >"$out/$1.txt"
}
pool_vm zipf 0 "workload=zipf mem=12M iters=150000 seed=1" & zipf_pid=$!
pool_vm chase 1 "workload=chase mem=3M iters=4000000 seed=2" & chase_pid=$!
wait "$zipf_pid" || status=1
wait "$chase_pid" || status=1
wait "$pool_pid" || status=1
grep -h '^testguest: workload=' "$out/zipf.txt" "$out/chase.txt" || status=1
echo "  the manager's log:"
sed 's/^/  /' "$out/pool.log"
echo
# What the monitor saw in that run (faults and sampled accesses), replayed through the
# same paging policy with each advisor: the baselines, the GRU and the oracle (the limit).
if [ -s "$out/zipf.tvt" ]; then
    echo "tiervisor demo: the recorded access trace replayed through each advisor at 25% RAM"
    echo
    echo "\$ tiervisor replay --trace zipf.tvt --ram-fraction 0.25 --advisor none,lru,leap,gru,oracle"
    "$tiervisor" replay --trace "$out/zipf.tvt" --ram-fraction 0.25 \
        --advisor none,lru,leap,gru,oracle || status=1
    echo
fi
exit $status
