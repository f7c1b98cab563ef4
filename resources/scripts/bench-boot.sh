#!/usr/bin/env bash
# Boot benchmark: the same test guest under tiervisor and under stock QEMU microvm (KVM),
# interleaved. Reports, per VMM, the median time from process spawn to the guest's first
# serial byte and the VMM's memory overhead (resident memory not counting guest RAM),
# and the ratios tiervisor/QEMU against the targets (<= 0.5x QEMU's boot time,
# <= 8 MiB overhead).
#
#   resources/scripts/bench-boot.sh            (make bench-boot builds what it needs)
#   RUNS=20 MEM_RUNS=5 resources/scripts/bench-boot.sh
#
# Method (docs/benchmarks.md, section "Boot"):
# - boot time: spawn (just before fork/exec) to the first byte on the VMM's stdout, which
#   carries the guest's COM1; the guest prints first thing after setting up long mode.
# - memory overhead: the guest runs a long workload; 0.5 s after its first line we read
#   /proc/PID/smaps and take the sum of Rss over all mappings minus the Rss of the guest
#   RAM mapping (the one writable mapping whose size is exactly the guest memory: the
#   memfd in tiervisor, QEMU's anonymous RAM block), i.e. RSS minus guest RAM touched.
#   tiervisor's own --metrics-out vmm_overhead_kib is printed beside it as a cross-check.
set -euo pipefail
cd "$(dirname "$0")/../.."

. resources/scripts/built.sh bench-boot
command -v qemu-system-x86_64 >/dev/null || {
    echo "bench-boot: qemu-system-x86_64 is missing: run \`make setup\`" >&2
    exit 1
}

export TIERVISOR GUEST
exec python3 - "$@" <<'PY'
import json, os, select, statistics, subprocess, sys, tempfile, time

TIERVISOR = os.environ["TIERVISOR"]
GUEST = os.environ["GUEST"]
RUNS = int(os.environ.get("RUNS", "15"))
MEM_RUNS = int(os.environ.get("MEM_RUNS", "3"))
MEM_MIB = 64
BOOT_CMDLINE = "workload=scan mem=1M iters=1000 seed=1"
# Long enough to still be running when smaps is read; the process is killed after.
LONG_CMDLINE = "workload=scan mem=4M iters=50000000 seed=1"
FIRST_BYTE_TIMEOUT = 20.0


def tiervisor_cmd(cmdline, metrics=None):
    cmd = [TIERVISOR, "run", "--kernel", GUEST, "--memory", f"{MEM_MIB}M", "--vcpus", "1",
           "--cmdline", cmdline]
    if metrics:
        cmd += ["--metrics-out", metrics]
    return cmd


def qemu_cmd(cmdline):
    return ["qemu-system-x86_64", "-M", "microvm", "-accel", "kvm", "-m", f"{MEM_MIB}M",
            "-smp", "1", "-nodefaults", "-no-user-config", "-nographic", "-serial", "stdio",
            "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04",
            "-kernel", GUEST, "-append", cmdline]


def first_byte(cmd):
    """Seconds from spawn to the first byte on stdout; the run then goes to its end."""
    t0 = time.monotonic()
    p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL)
    r, _, _ = select.select([p.stdout], [], [], FIRST_BYTE_TIMEOUT)
    t = time.monotonic() - t0 if r and os.read(p.stdout.fileno(), 1) else None
    out = p.stdout.read()
    p.wait()
    if t is None or b"result=ok" not in out:
        sys.exit(f"bench-boot: {cmd[0]} did not boot the guest (status {p.returncode}):\n"
                 + out.decode(errors="replace"))
    return t


def smaps_overhead_kib(pid):
    """Sum of Rss over all mappings minus the Rss of the guest RAM mapping."""
    total = guest = 0
    writable = False
    size = 0
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            head = line.split()
            if "-" in head[0] and len(head) >= 5 and not head[0].endswith(":"):
                writable = head[1].startswith("rw")
                size = 0
            elif head[0] == "Size:":
                size = int(head[1])
            elif head[0] == "Rss:":
                rss = int(head[1])
                total += rss
                if writable and size == MEM_MIB * 1024:
                    guest += rss
    if guest == 0:
        sys.exit(f"bench-boot: no guest RAM mapping of {MEM_MIB} MiB in /proc/{pid}/smaps")
    return total - guest, guest


def overhead(cmd):
    p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL)
    try:
        r, _, _ = select.select([p.stdout], [], [], FIRST_BYTE_TIMEOUT)
        if not r:
            sys.exit(f"bench-boot: {cmd[0]} printed nothing")
        time.sleep(0.5)
        if p.poll() is not None:
            sys.exit(f"bench-boot: {cmd[0]} ended before its memory could be read")
        return smaps_overhead_kib(p.pid)
    finally:
        p.kill()
        p.wait()


def med(xs):
    return statistics.median(xs)


boot = {"tiervisor": [], "qemu": []}
tv_boot_ms = []
with tempfile.TemporaryDirectory() as tmp:
    metrics = os.path.join(tmp, "m.json")
    # One warm-up each so that both start with the binaries and guest in page cache.
    first_byte(tiervisor_cmd(BOOT_CMDLINE))
    first_byte(qemu_cmd(BOOT_CMDLINE))
    for i in range(RUNS):
        # Alternate which goes first, so neither always runs right after the other.
        order = ["tiervisor", "qemu"] if i % 2 == 0 else ["qemu", "tiervisor"]
        for vmm in order:
            if vmm == "tiervisor":
                boot[vmm].append(first_byte(tiervisor_cmd(BOOT_CMDLINE, metrics)))
                tv_boot_ms.append(json.load(open(metrics))["boot_ms"])
            else:
                boot[vmm].append(first_byte(qemu_cmd(BOOT_CMDLINE)))

    mem = {"tiervisor": [], "qemu": []}
    guest_rss = {"tiervisor": [], "qemu": []}
    tv_reported = []
    for i in range(MEM_RUNS):
        for vmm in ["tiervisor", "qemu"]:
            if vmm == "tiervisor":
                o, g = overhead(tiervisor_cmd(LONG_CMDLINE))
                # tiervisor's own figure, from a short run that ends normally.
                subprocess.run(tiervisor_cmd(BOOT_CMDLINE, metrics), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, check=True)
                tv_reported.append(json.load(open(metrics))["vmm_overhead_kib"])
            else:
                o, g = overhead(qemu_cmd(LONG_CMDLINE))
            mem[vmm].append(o)
            guest_rss[vmm].append(g)

ms = lambda s: s * 1000.0
tv, qm = med(boot["tiervisor"]), med(boot["qemu"])
tvo, qmo = med(mem["tiervisor"]), med(mem["qemu"])
print(f"boot benchmark: {GUEST}, {MEM_MIB} MiB, 1 vCPU, cmdline '{BOOT_CMDLINE}', "
      f"{RUNS} interleaved runs each")
print(f"  {'':10} {'spawn->first serial byte (ms)':>32}   {'VMM overhead (KiB)':>20}")
print(f"  {'':10} {'median':>8} {'min':>7} {'max':>7}          {'median':>8} "
      f"{'guest RAM Rss':>14}")
for vmm in ["tiervisor", "qemu"]:
    b = boot[vmm]
    print(f"  {vmm:10} {ms(med(b)):8.2f} {ms(min(b)):7.2f} {ms(max(b)):7.2f}          "
          f"{med(mem[vmm]):8.0f} {med(guest_rss[vmm]):14.0f}")
print(f"  tiervisor boot_ms (its own metric, spawn->guest's boot-timer write): "
      f"median {med(tv_boot_ms):.2f} ms")
print(f"  tiervisor vmm_overhead_kib (its own metric): median {med(tv_reported):.0f} KiB")
ratio_boot, ratio_mem = tv / qm, tvo / qmo
print(f"  ratio tiervisor/QEMU: boot time {ratio_boot:.3f}x, memory overhead {ratio_mem:.3f}x")
ok_boot, ok_mem = ratio_boot <= 0.5, tvo <= 8 * 1024
print(f"  target boot <= 0.5x QEMU: {'met' if ok_boot else 'MISSED'}; "
      f"target overhead <= 8 MiB: {'met' if ok_mem else 'MISSED'} ({tvo / 1024:.2f} MiB)")
PY
