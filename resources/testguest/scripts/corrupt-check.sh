#!/usr/bin/env bash
# End-to-end check that the test guest catches corrupted guest RAM: boots a long scan in
# stock QEMU with a monitor socket, flips one byte of a working-memory page from outside
# (QEMU's gpa2hva + /proc/PID/mem), and expects `result=FAIL reason=corrupt page=...`
# naming that page, and QEMU exit status 23 (debug-exit code 11).
# Usage: resources/testguest/scripts/corrupt-check.sh [GUEST]   (run as root)
set -euo pipefail
guest=${1:-resources/out/testguest.elf}
dir=$(mktemp -d)
trap 'kill "$qemu_pid" 2>/dev/null || true; rm -rf "$dir"' EXIT

qemu-system-x86_64 -M microvm -accel "${ACCEL:-kvm}" -m 256M -nographic -no-reboot \
    -kernel "$guest" -append "workload=scan mem=16M iters=100000000 seed=1" \
    -device isa-debug-exit,iobase=0xf4,iosize=0x04 \
    -monitor "unix:$dir/mon.sock,server,nowait" >"$dir/out" 2>/dev/null &
qemu_pid=$!

for _ in $(seq 100); do
    grep -q "testguest: boot" "$dir/out" && break
    sleep 0.1
done
base=$(sed -n 's/.* base=\(0x[0-9a-f]*\) .*/\1/p' "$dir/out")
[ -n "$base" ] || { echo "corrupt-check: no boot line"; cat "$dir/out"; exit 1; }
page=$(printf '%#x' $((base + 100 * 4096)))

python3 - "$dir/mon.sock" "$qemu_pid" "$page" <<'PY'
import re, socket, sys, time
sock_path, pid, gpa = sys.argv[1], int(sys.argv[2]), int(sys.argv[3], 16)
mon = socket.socket(socket.AF_UNIX)
mon.connect(sock_path)
mon.sendall(b"gpa2hva %#x\n" % gpa)
reply = b""
deadline = time.time() + 5
while b"Host virtual address" not in reply and time.time() < deadline:
    reply += mon.recv(4096)
hva = int(re.search(rb"is (0x[0-9a-f]+)", reply).group(1), 16)
with open("/proc/%d/mem" % pid, "r+b", buffering=0) as mem:
    mem.seek(hva + 8 * 100)
    word = bytearray(mem.read(8))
    word[0] ^= 0xFF
    mem.seek(hva + 8 * 100)
    mem.write(word)
print("corrupt-check: flipped the low byte of word 100 of page %#x" % gpa)
PY

status=0
wait "$qemu_pid" || status=$?
cat "$dir/out"
if grep -q "result=FAIL reason=corrupt page=$page .* word=100 " "$dir/out" && [ "$status" -eq 23 ]; then
    echo "corrupt-check: ok (guest reported page $page, QEMU exit $status)"
else
    echo "corrupt-check: FAILED (QEMU exit $status)"
    exit 1
fi
