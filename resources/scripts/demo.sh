#!/usr/bin/env bash
# `make demo`: boot the test guest under tiervisor with a few workloads and print what
# each run reports. Run from the repository root after `make build`.
set -euo pipefail

cd "$(dirname "$0")/../.."
tiervisor=${TIERVISOR:-target/release/tiervisor}
guest=${GUEST:-resources/out/testguest.elf}
for f in "$tiervisor" "$guest"; do
    [ -e "$f" ] || { echo "demo: $f is missing; run 'make build' first" >&2; exit 1; }
done
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

# field NAME FILE: a number from the flat metrics JSON.
field() { grep -o "\"$1\": *[0-9.]*" "$2" | head -1 | sed 's/.*: *//'; }

echo "tiervisor demo: the test guest under KVM, all guest memory in RAM"
echo
runs=(
    "1 256M workload=scan mem=64M iters=400000 seed=1"
    "2 256M workload=zipf mem=64M iters=400000 seed=2"
    "2 256M workload=kv mem=32M iters=200000 seed=3"
)
status=0
for run in "${runs[@]}"; do
    read -r vcpus memory cmdline <<<"$run"
    echo "\$ tiervisor run --kernel $guest --memory $memory --vcpus $vcpus --cmdline '$cmdline'"
    rc=0
    "$tiervisor" run --kernel "$guest" --memory "$memory" --vcpus "$vcpus" \
        --cmdline "$cmdline" --metrics-out "$out/m.json" </dev/null \
        2> >(grep -v '^tiervisor: note:' >&2) | grep '^testguest: workload=' || rc=$?
    [ "$rc" -eq 0 ] || status=1
    if [ -s "$out/m.json" ]; then
        printf '  exit=%s boot_ms=%.2f vmm_overhead_kib=%s guest_rss_kib=%s io_exits=%s\n' \
            "$(field exit_status "$out/m.json")" "$(field boot_ms "$out/m.json")" \
            "$(field vmm_overhead_kib "$out/m.json")" "$(field guest_rss_kib "$out/m.json")" \
            "$(field io "$out/m.json")"
    fi
    rm -f "$out/m.json"
    echo
done
exit $status
