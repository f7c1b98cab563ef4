# Sourced by the benchmarks of baseline B1 (bench-swap.sh, bench-density.sh,
# bench-priority.sh), after
# built.sh: checks for root, a cgroup-v1 memory controller, QEMU and swapon; makes a
# fresh disk work directory (WORKDIR), a 512 MiB swap file in it (SWAPFILE, on at the
# highest priority) and an empty memory cgroup (CGROUP); removes all three on exit, and
# ends whatever is left in the cgroup first. Exports TIERVISOR GUEST WORKDIR CGROUP.
# Usage: . resources/scripts/qemu-swap.sh NAME   (NAME prefixes messages and names)
# The caller runs its Python in the background as $child and waits for it: bash runs
# traps only between commands, so INT/TERM would otherwise wait for the Python.
_qs_name=$1
fail() { echo "$_qs_name: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || fail "needs root (cgroup limits and swapon)"
CG_ROOT=/sys/fs/cgroup/memory
[ -e "$CG_ROOT/memory.limit_in_bytes" ] || fail "no cgroup-v1 memory controller at $CG_ROOT"
command -v qemu-system-x86_64 >/dev/null || fail "qemu-system-x86_64 is missing: run \`make setup\`"
command -v swapon >/dev/null || fail "swapon is missing"

WORKDIR=$(disk_workdir "$_qs_name")
CGROUP="$CG_ROOT/tiervisor-$_qs_name-$$"
SWAPFILE="$WORKDIR/swapfile"
cleanup() {
    # A QEMU still in the cgroup or a child of it (the run was interrupted) holds swap:
    # end it first. Children (bench-priority's) go before their parent.
    local cg
    for cg in "$CGROUP"/*/ "$CGROUP"; do
        [ -e "$cg/cgroup.procs" ] || continue
        xargs -r kill -9 <"$cg/cgroup.procs" 2>/dev/null || true
        for _ in 1 2 3 4 5 6 7 8 9 10; do
            [ -s "$cg/cgroup.procs" ] || break
            sleep 0.2
        done
        rmdir "$cg" 2>/dev/null || true
    done
    swapoff "$SWAPFILE" || true
    rm -rf "$WORKDIR"
}
trap cleanup EXIT
trap 'if [ -n "${child:-}" ]; then pkill -TERM -P "$child"; kill "$child"; fi 2>/dev/null; exit 130' INT TERM
# Written out and synced before mkswap: a swap file still in dirty page cache stalls
# the first runs into OOM kills (HOST-NOTES.md).
dd if=/dev/zero of="$SWAPFILE" bs=1M count=512 conv=fsync status=none
chmod 600 "$SWAPFILE"
mkswap -q "$SWAPFILE"
swapon -p 32767 "$SWAPFILE" || fail "swapon $SWAPFILE failed"
# Swap is host-wide: other areas, and other processes' pages, share the disk with it.
others=$(tail -n +2 /proc/swaps | awk -v f="$SWAPFILE" '$1 != f {print $1}')
[ -z "$others" ] || echo "$_qs_name: note: other swap areas are on ($others): other processes' swapping can disturb the QEMU runs" >&2
mkdir "$CGROUP"
export TIERVISOR GUEST WORKDIR CGROUP
