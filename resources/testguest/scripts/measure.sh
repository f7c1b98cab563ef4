#!/usr/bin/env bash
# Runs every test-guest workload RUNS times under stock QEMU microvm (and under tiervisor
# when its binary exists) and prints the median ns per operation of each.
# Usage: resources/testguest/scripts/measure.sh [RUNS] [ARGS]   (from the repository root)
#   ARGS defaults to "mem=64M iters=200000 seed=1"; ACCEL=kvm|tcg, SMP=1|2, MEM=512M,
#   GUEST=resources/out/testguest.elf, TIERVISOR=target/release/tiervisor.
set -euo pipefail
runs=${1:-5}
args=${2:-"mem=64M iters=200000 seed=1"}
accel=${ACCEL:-kvm}
smp=${SMP:-1}
mem=${MEM:-512M}
guest=${GUEST:-resources/out/testguest.elf}
tiervisor=${TIERVISOR:-target/release/tiervisor}
iters=$(sed -n 's/.*iters=\([0-9]*\).*/\1/p' <<<"$args")

median() { sort -n | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : int((a[NR/2]+a[NR/2+1])/2)}'; }

run_qemu() {
    timeout 600 qemu-system-x86_64 -M microvm -accel "$accel" -smp "$smp" -m "$mem" -nographic \
        -no-reboot -kernel "$guest" -append "$1" \
        -device isa-debug-exit,iobase=0xf4,iosize=0x04 2>/dev/null | tail -1 || true
}

run_tiervisor() {
    timeout 600 "$tiervisor" run --kernel "$guest" --cmdline "$1" --memory "$mem" \
        --vcpus "$smp" 2>/dev/null | tail -1 || true
}

printf '%-8s %-10s %12s %10s  %s\n' workload vmm median_ns ns_per_op checksum
for workload in scan stride random zipf chase phases kv; do
    for vmm in qemu tiervisor; do
        [ "$vmm" = tiervisor ] && [ ! -x "$tiervisor" ] && continue
        results=()
        for _ in $(seq "$runs"); do
            line=$("run_$vmm" "workload=$workload $args")
            case "$line" in
            *result=ok*) results+=("$line") ;;
            *) echo "FAILED: $vmm $workload: $line" >&2; exit 1 ;;
            esac
        done
        ns=$(printf '%s\n' "${results[@]}" | sed -n 's/.* ns=\([0-9]*\) .*/\1/p' | median)
        checksum=$(printf '%s\n' "${results[@]}" | sed -n 's/.*checksum=\(0x[0-9a-f]*\).*/\1/p' | sort -u | tr '\n' ' ')
        printf '%-8s %-10s %12s %10s  %s\n' "$workload" "$vmm" "$ns" "$((ns / iters))" "$checksum"
    done
done
