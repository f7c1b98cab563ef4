#!/usr/bin/env bash
# Test-guest VMs (two unless VMS says) taking turns on one CPU in an 8 MiB RAM pool,
# each a Zipf workload over MEM (6M) over RAM and one file tier with the device
# profile PROFILE: one run, no static baseline (with a
# slow profile a static half would thrash for many minutes). This is what
# docs/pool.md's "Slower tiers" figures come from. `make bench-pool` compares turns
# against static halves on an NVMe profile.
#
#   resources/scripts/pool-turns.sh PROFILE [MANAGER FLAGS...]
#   resources/scripts/pool-turns.sh hdd --slice-ms 300
#   ITERS=800000 ADVISOR=gru resources/scripts/pool-turns.sh ssd --slice-ms 300 --no-staging
#   VMS=3 MEM=4M resources/scripts/pool-turns.sh nvme --slice-ms 300 --prestaging
# PROFILE: nvme, ssd or hdd (tiering::backend::DeviceProfile presets).
# ITERS: Zipf operations per VM (1500000); ADVISOR: paging advisor (none);
# VMS: how many VMs (2); MEM: each one's Zipf region (6M);
# SPREAD=1: VM i on CPU i mod CPUs instead of all on CPU 0;
# TIMEOUT: seconds before the VMs are stopped (600); LOG: a file to copy the manager's
# log to (its turns, staging times and lent room).
#
# Prints per VM: run time, demand faults that were not first touches (refaults),
# turns taken after a pause, time spent staging as turns began (summed, longest), pages
# staged (and how many of them before their turns, in lent room), and
# its tier's page requests and transfers; then the makespan (the last VM's run time).
set -euo pipefail
cd "$(dirname "$0")/../.."
. resources/scripts/built.sh pool-turns
if [ $# -lt 1 ]; then
    echo "pool-turns: name a device profile: nvme, ssd or hdd" >&2
    exit 2
fi
profile=$1
shift
case $profile in nvme | ssd | hdd) ;; *)
    echo "pool-turns: unknown profile $profile (nvme, ssd or hdd)" >&2
    exit 2
    ;;
esac
VMS=${VMS:-2}
# CPU 0 for every VM, or with SPREAD=1 VM i on CPU i mod (this host's CPUs).
cpu_of() { if [ "${SPREAD:-0}" = 1 ]; then echo $(($1 % $(nproc))); else echo 0; fi; }
WORK=$(disk_workdir pool-turns)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    if [ -n "${LOG:-}" ]; then cp "$WORK/pool.log" "$LOG" 2>/dev/null || true; fi
    rm -rf "$WORK"
}
trap cleanup EXIT
"$TIERVISOR" pool --dir "$WORK/pool" --size 8M --exit-when-empty "$@" 2>"$WORK/pool.log" &
pids+=($!)
for _ in $(seq 500); do
    [ -e "$WORK/pool/pool.json" ] && break
    sleep 0.01
done
vm_pids=()
for i in $(seq 0 $((VMS - 1))); do
    mkdir -p "$WORK/vm$i"
    cat >"$WORK/vm$i/tiers.toml" <<EOF
[tier1]
capacity = "64M"
backend = "ram"
[tier2]
capacity = "64M"
file = "$WORK/vm$i/t2.img"
profile = "$profile"
EOF
    TIERVISOR_WORKDIR="$WORK/vm$i" timeout "${TIMEOUT:-600}" "$TIERVISOR" run \
        --kernel "$GUEST" --memory 64M \
        --cmdline "workload=zipf mem=${MEM:-6M} iters=${ITERS:-1500000} seed=$((6 + i))" \
        --tiers "$WORK/vm$i/tiers.toml" --advisor "${ADVISOR:-none}" --cpu "$(cpu_of "$i")" \
        --ram-pool "$WORK/pool" --metrics-out "$WORK/vm$i/m.json" >"$WORK/vm$i/out.log" 2>&1 &
    pids+=($!)
    vm_pids+=($!)
done
failed=0
for p in "${vm_pids[@]}"; do wait "$p" || failed=1; done
wait "${pids[0]}" || true
for i in $(seq 0 $((VMS - 1))); do
    grep -q "result=ok" "$WORK/vm$i/out.log" || failed=1
done
if [ $failed -ne 0 ]; then
    echo "pool-turns: a VM failed or ran out of time (TIMEOUT=${TIMEOUT:-600} s):" >&2
    tail -n 3 "$WORK"/vm*/out.log >&2
    exit 1
fi
python3 - "$WORK" "$profile" "$VMS" <<'PY'
import json, os, sys
work, profile, vms = sys.argv[1], sys.argv[2], int(sys.argv[3])
ends = []
for i in range(vms):
    with open(os.path.join(work, f"vm{i}", "m.json")) as f:
        m = json.load(f)
    t, p = m["tiers"], m["tiers"]["pool"]
    tier = t["per_tier"][2]
    ends.append(m["run_ms"])
    print(f"vm{i} ({profile}): {m['run_ms']:,.0f} ms, "
          f"{t['demand_faults'] - t['zero_fills']} refaults, {p['turns']} turns after a pause, "
          f"staging {p['staging_ms']:,.0f} ms (longest {p['max_staging_ms']:,.0f}), "
          f"{p['staged_pages']} pages staged ({p.get('prestaged_pages', 0)} before turns), "
          f"tier: {tier['io_requests']} requests in {tier['io_transfers']} transfers")
print(f"makespan {max(ends):,.0f} ms")
PY
