"""tiervisor's side of the benchmarks that set several VMs against QEMU + swap
(bench-density.sh, bench-priority.sh): each VM's own tier files, a `tiervisor pool`
manager, reading a VM's result and metrics, the VMs' command lines and checksums
(`Fleet`), the medians the reports print, and the A/B scripts' configurations
(`BINARY@VAR=VALUE...`, `parse_config`, `environment`)."""
import contextlib
import json
import math
import os
import statistics
import subprocess
import sys
import time

from qemu_swap import RESULT, op_latency_ns


def parse_config(config, who):
    """An A/B script's configuration `BINARY[@VAR=VALUE...]`: the binary and the
    environment settings for its runs. Exits with a one-line error, naming the script
    `who`, if a setting is not VAR=VALUE or the binary is not executable."""
    binary, *settings = config.split("@")
    env = {}
    for s in settings:
        var, eq, value = s.partition("=")
        if not eq:
            sys.exit(f"{who}: {s!r} in {config!r} is not VAR=VALUE")
        env[var] = value
    if not os.access(binary, os.X_OK):
        sys.exit(f"{who}: {binary} is not an executable (run `make build`?)")
    return binary, env


@contextlib.contextmanager
def environment(env):
    """Sets `env` in this process's environment (so the tiervisor processes started
    meanwhile inherit it) for the `with` block, then puts back what was there."""
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def vm_dir(workdir, name, guest_mib):
    """A VM's TIERVISOR_WORKDIR under workdir with a tiers.toml of RAM over one tier-2
    file on the same disk (O_DIRECT, no emulated latency: the disk as it is).
    Returns (directory, tiers file)."""
    d = os.path.join(workdir, name)
    os.makedirs(d, exist_ok=True)
    path = os.path.join(d, "tiers.toml")
    with open(path, "w") as f:
        f.write(f'[tier1]\ncapacity = "{guest_mib}M"\nbackend = "ram"\n'
                f'[tier2]\ncapacity = "{guest_mib}M"\nfile = "{d}/tier2.img"\n')
    return d, path


def pinned(cpu):
    """A preexec_fn that pins the whole process to one host CPU, as PausedQemu does."""
    return lambda: os.sched_setaffinity(0, {cpu})


def start_pool(tiervisor, pool_dir, size_kib, log_path, flags=(), cpu=None):
    """Starts `tiervisor pool` of size_kib KiB, ended when its last VM leaves, on host
    CPU `cpu` if given; returns its process once it is ready for VMs to join."""
    with open(log_path, "w") as log:
        manager = subprocess.Popen(
            [tiervisor, "pool", "--dir", pool_dir, "--size", f"{int(size_kib)}K",
             "--exit-when-empty", *flags], stdin=subprocess.DEVNULL, stdout=log, stderr=log,
            preexec_fn=None if cpu is None else pinned(cpu))
    for _ in range(500):
        if os.path.exists(os.path.join(pool_dir, "pool.json")):
            break
        time.sleep(0.01)
    return manager


def stop_pool(manager):
    """Waits for the manager to leave after its last VM, or ends it."""
    if manager is None:
        return
    try:
        manager.wait(timeout=10)
    except subprocess.TimeoutExpired:
        manager.kill()


def result(out):
    """(ns/op, checksum, operation times in ns) from a VM's output, or None when the
    guest did not report `result=ok`."""
    m = RESULT.search(out)
    if not m or m.group(5) != "ok":
        return None
    return int(m.group(3)) / int(m.group(2)), m.group(4), op_latency_ns(out)


def refaults(metrics_path):
    """The VM's demand faults that were not first touches (QEMU's major faults are
    swap-ins; its first touches are minor faults), or None without tiers."""
    with open(metrics_path) as f:
        t = json.load(f).get("tiers") or {}
    return t["demand_faults"] - t["zero_fills"] if t else None


class Fleet:
    """The test-guest VMs of one benchmark: their command lines (workload i of
    `workloads`, mem_mib of working memory in a guest_mib guest, `iters` operations (or
    iters[i]), seed 7+i), the checksum every run of a VM must repeat (the guest's own verification,
    docs/testguest.md), tiervisor command lines and progress output. `bench` names the
    benchmark in messages."""

    def __init__(self, bench, tiervisor, guest, workdir, workloads, mem_mib, guest_mib, iters):
        self.bench, self.tiervisor, self.guest, self.workdir = bench, tiervisor, guest, workdir
        self.workloads, self.mem_mib, self.guest_mib = workloads, mem_mib, guest_mib
        self.iters = iters
        self.checksums = {}
        self.total, self.done = 0, 0

    def cmdline(self, i):
        iters = self.iters[i] if isinstance(self.iters, list) else self.iters
        return f"workload={self.workloads[i]} mem={self.mem_mib}M iters={iters} seed={7 + i}"

    def check(self, i, checksum, who):
        """Ends the benchmark if VM i's checksum differs from its first run's."""
        if self.checksums.setdefault(i, checksum) != checksum:
            sys.exit(f"{self.bench}: vm{i} ({self.workloads[i]}) under {who} gave checksum "
                     f"{checksum}, expected {self.checksums[i]}")

    def tiervisor_cmd(self, i, name, extra):
        """(its TIERVISOR_WORKDIR, metrics file, command) of VM i in work directory
        `name`; extra(tiers file) gives the flags after the common ones."""
        d, tiers = vm_dir(self.workdir, name, self.guest_mib)
        metrics = os.path.join(d, "metrics.json")
        return d, metrics, [self.tiervisor, "run", "--kernel", self.guest, "--memory",
                            f"{self.guest_mib}M", "--cmdline", self.cmdline(i),
                            "--metrics-out", metrics] + extra(tiers)

    def checked(self, i, p, out, who):
        """result() of VM i's run under tiervisor; ends the benchmark if it failed or
        its checksum differs."""
        r = result(out)
        if p.returncode != 0 or r is None:
            sys.exit(f"{self.bench}: vm{i} ({self.workloads[i]}) under tiervisor {who} failed "
                     f"(status {p.returncode}):\n{out}")
        self.check(i, r[1], f"tiervisor {who}")
        return r

    def run_alone(self, i, cpu):
        """VM i alone all in RAM under tiervisor, pinned to `cpu`: result()."""
        d, _, cmd = self.tiervisor_cmd(i, f"alone{i}", lambda tiers: [])
        p = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                           env=dict(os.environ, TIERVISOR_WORKDIR=d), preexec_fn=pinned(cpu))
        return self.checked(i, p, p.stdout + p.stderr, "all in RAM")

    def progress(self, what=None):
        """Counts a run done (of `total`) and says which, on one line of stderr; None
        counts one skipped."""
        self.done += 1
        if what is not None:
            print(f"\r{self.bench}: run {self.done}/{self.total} ({what})          ", end="",
                  file=sys.stderr, flush=True)


def med(xs):
    """Median of the values that are not None, or None."""
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def geo(xs):
    """Geometric mean, or None of nothing."""
    return math.exp(sum(math.log(x) for x in xs) / len(xs)) if xs else None


def fmt(x, spec):
    return "-" if x is None else format(x, spec)


def run_together(fleet, flags, cpus, timeout_s, who, manager=None):
    """Starts every VM of `fleet` at once under tiervisor, VM i with flags(i, its tiers
    file) after the common flags, pinned to cpus[i], and waits for them in order.
    Returns per VM (seconds from the start until its exit was seen, fleet.checked(),
    refaults()). Waited for in order, a VM's end is seen once the earlier ones' are; the
    latest is the makespan. Over timeout_s, every VM and `manager` are killed and the
    benchmark ends."""
    started = time.monotonic()
    runs = []
    for i in range(len(fleet.workloads)):
        d, metrics, cmd = fleet.tiervisor_cmd(i, f"vm{i}", lambda tiers: flags(i, tiers))
        out = open(os.path.join(d, "out.log"), "w+")
        runs.append((subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out,
                                      stderr=subprocess.STDOUT, preexec_fn=pinned(cpus[i]),
                                      env=dict(os.environ, TIERVISOR_WORKDIR=d)), out, metrics))
    done = []
    for i, (p, out, metrics) in enumerate(runs):
        try:
            p.wait(timeout=max(1.0, timeout_s - (time.monotonic() - started)))
        except subprocess.TimeoutExpired:
            for q, _, _ in runs:
                q.kill()
            if manager:
                manager.kill()
            sys.exit(f"{fleet.bench}: tiervisor {who}: over {timeout_s} s")
        end = time.monotonic() - started
        out.seek(0)
        r = fleet.checked(i, p, out.read(), who)
        out.close()
        done.append((end, r, refaults(metrics)))
    stop_pool(manager)
    return done
