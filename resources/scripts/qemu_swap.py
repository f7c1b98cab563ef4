"""Stock QEMU over Linux swap in a cgroup-v1 memory controller: the parts baseline B1's
benchmarks share (bench-swap.sh: one VM per limit; bench-density.sh: several VMs under
one limit). The shell scripts set up the swap file and the cgroup directory; this module
starts QEMU paused inside the cgroup, talks QMP and reads how much guest RAM is resident.
"""
import ctypes
import json
import os
import re
import socket
import subprocess
import time

MIB = 1 << 20
# The test guest's result line (docs/testguest.md).
RESULT = re.compile(r"workload=(\S+) ops=(\d+) ns=(\d+) checksum=(\S+) (?:op_\S+ )*result=(\S+)")
# Its operation times (ns): median, 99th and 99.9th percentiles, maximum.
OP_LATENCY = re.compile(r"op_p50_ns=(\d+) op_p99_ns=(\d+) op_p999_ns=(\d+) op_max_ns=(\d+)")
_libc = ctypes.CDLL(None, use_errno=True)
_PR_SET_THP_DISABLE = 41


class Cgroup:
    """One cgroup-v1 memory controller directory."""

    def __init__(self, path):
        self.path = path

    def read(self, name):
        with open(os.path.join(self.path, name)) as f:
            return f.read()

    def write(self, name, value):
        with open(os.path.join(self.path, name), "w") as f:
            f.write(str(value))

    def reset(self):
        """No limit, and nothing charged: the last run's page cache is charged here."""
        self.write("memory.limit_in_bytes", -1)
        self.write("memory.force_empty", 0)

    def major_faults(self):
        """Swap-ins of the processes in the cgroup so far (pgmajfault)."""
        for line in self.read("memory.stat").splitlines():
            key, value = line.split()
            if key == "pgmajfault":
                return int(value)
        return 0


def op_latency_ns(out):
    """{"p50", "p99", "p999", "max"} of the result line's operation times in ns, or
    None when the line has none."""
    m = OP_LATENCY.search(out)
    return dict(zip(("p50", "p99", "p999", "max"), map(int, m.groups()))) if m else None


def pages_swapped_in():
    """Pages read back from swap host-wide so far (/proc/vmstat pswpin). A major fault
    reads up to 2^page-cluster pages (swap readahead), so the cgroup's pgmajfault counts
    fewer swap-ins than pages read back; while only the benchmark's swap file is on and
    busy, this is the pages its VMs read back."""
    with open("/proc/vmstat") as f:
        for line in f:
            key, value = line.split()
            if key == "pswpin":
                return int(value)
    return 0


def qmp(path):
    """Connects to QEMU's QMP socket; returns (socket, command function)."""
    started = time.monotonic()
    while True:
        try:
            sock = socket.socket(socket.AF_UNIX)
            sock.connect(path)
            break
        except OSError:
            sock.close()
            if time.monotonic() - started > 10:
                raise
            time.sleep(0.005)
    f = sock.makefile("rw")
    f.readline()  # the greeting

    def command(name):
        f.write(json.dumps({"execute": name}) + "\n")
        f.flush()
        while True:
            reply = json.loads(f.readline())
            if "return" in reply or "error" in reply:
                return reply

    command("qmp_capabilities")
    return sock, command


def guest_resident_kib(pid, guest_mib):
    """Resident KiB of QEMU's guest RAM (its anonymous mapping of guest_mib), or None."""
    try:
        with open(f"/proc/{pid}/smaps") as f:
            text = f.read()
    except OSError:
        return None
    for block in re.split(r"\n(?=[0-9a-f]+-[0-9a-f]+ )", text):
        size = re.search(r"^Size:\s+(\d+) kB", block, re.M)
        if size and int(size.group(1)) == guest_mib * 1024:
            return int(re.search(r"^Rss:\s+(\d+) kB", block, re.M).group(1))
    return None


class PausedQemu:
    """The test guest under stock QEMU (microvm, KVM, one vCPU), started paused (-S) with
    its kernel loaded, inside the cgroup, with transparent huge pages off (they stay
    resident and the cgroup kills QEMU: HOST-NOTES.md), on host CPU `cpu` if given.
    `cont()` starts the guest; `wait(timeout)` returns (ns/op, checksum) or
    (None, why it failed), and leaves the guest's operation times in `latency`."""

    def __init__(self, guest, guest_mib, cmdline, cgroup, sock_path, cpu=None):
        if os.path.exists(sock_path):
            os.unlink(sock_path)

        def enter():
            _libc.prctl(_PR_SET_THP_DISABLE, 1, 0, 0, 0)
            if cpu is not None:
                os.sched_setaffinity(0, {cpu})
            with open(os.path.join(cgroup.path, "cgroup.procs"), "w") as f:
                f.write(str(os.getpid()))

        cmd = ["qemu-system-x86_64", "-M", "microvm", "-accel", "kvm", "-m", f"{guest_mib}M",
               "-smp", "1", "-nodefaults", "-no-user-config", "-nographic", "-serial",
               "stdio", "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04", "-kernel",
               guest, "-append", cmdline, "-S", "-qmp", f"unix:{sock_path},server=on,wait=off"]
        self.guest_mib = guest_mib
        self.latency = None
        self.process = subprocess.Popen(cmd, preexec_fn=enter, stdin=subprocess.DEVNULL,
                                        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                        text=True)
        self.sock, self.command = qmp(sock_path)

    def cont(self):
        self.command("cont")

    def running(self):
        return self.process.poll() is None

    def resident_kib(self):
        return guest_resident_kib(self.process.pid, self.guest_mib)

    def kill(self):
        self.process.kill()
        self.process.communicate()
        self.sock.close()

    def wait(self, timeout):
        try:
            out, _ = self.process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            # Thrashing under a tight limit can go on for many minutes.
            self.kill()
            return None, f"over {timeout} s"
        self.sock.close()
        m = RESULT.search(out)
        if not m or m.group(5) != "ok":
            return None, "OOM-killed" if self.process.returncode == -9 else \
                f"status {self.process.returncode}"
        self.latency = op_latency_ns(out)
        return int(m.group(3)) / int(m.group(2)), m.group(4)
