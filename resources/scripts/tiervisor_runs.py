"""tiervisor's side of the benchmarks that set several VMs against QEMU + swap
(bench-density.sh, bench-priority.sh): each VM's own tier files, a `tiervisor pool`
manager, and reading a VM's result and metrics."""
import json
import os
import subprocess
import time

from qemu_swap import RESULT, op_latency_ns


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
