//! The pinned Debian 6.1 cloud kernel (`make linux`) booted by `tiervisor run`, and the
//! same kernel and initramfs under stock QEMU TCG as a check of the artifacts.
//!
//! With hardware virtualization (VT-x/SVM) the test boots both the bzImage (64-bit boot
//! protocol) and the same kernel's ELF (PVH entry) to the marker line that the
//! initramfs' /init prints, and checks that init saw both vCPUs. On a PVM host (KVM
//! without VT-x/SVM: guest ring-0 code is emulated) Linux dies on `lock cmpxchg16b` long
//! before init, and the bzImage's decompressor alone runs for minutes under emulation;
//! there the test boots the ELF through its PVH entry and asserts the kernel's own early
//! serial log, which proves the load, start info, e820 map, command line, entry, UART
//! and the ACPI tables (RSDP, XSDT, FADT, MADT, DSDT; 2 CPUs from the MADT), then stops
//! the VM. `linux_bzimage_early_log_on_pvm` (ignored: it takes minutes) does the same
//! with the bzImage.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;

/// What resources/linux/init prints (resources/scripts/fetch-linux.sh writes it).
const INIT_MARKER: &str = "tiervisor-init: hello from init";
/// `reboot=k`: /init's `reboot -f` resets through the i8042, which ends the VM cleanly.
const CMDLINE: &str = "console=ttyS0 earlyprintk=ttyS0 reboot=k panic=-1";
const MEMORY_MIB: u64 = 512;
const VCPUS: u32 = 2;
/// Longest a tiervisor boot may take to show what this host allows.
const TIERVISOR_TIMEOUT: Duration = Duration::from_secs(120);
/// The bzImage on PVM: minutes of emulated decompression come first.
const BZIMAGE_PVM_TIMEOUT: Duration = Duration::from_secs(1200);
/// QEMU TCG emulates every instruction; the boot to init takes 5-20 s here.
const QEMU_TIMEOUT: Duration = Duration::from_secs(120);

/// How this host runs KVM guests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HostKind {
    /// VT-x or SVM: guest kernels run natively.
    HardwareVirt,
    /// KVM's PVM module without VT-x/SVM: guest ring 0 is emulated.
    Pvm,
}

fn host_kind() -> HostKind {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let hw = cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"));
    if hw && !Path::new("/sys/module/kvm_pvm").exists() {
        HostKind::HardwareVirt
    } else {
        HostKind::Pvm
    }
}

/// What `make linux` builds in resources/out.
struct LinuxArtifacts {
    /// The bzImage.
    bzimage: PathBuf,
    /// The same kernel uncompressed: an ELF with a PVH entry note.
    elf: PathBuf,
    initrd: PathBuf,
}

/// The kernel images and initramfs `make linux` builds; a missing one fails the test.
fn linux_artifacts() -> LinuxArtifacts {
    let out = repo_root().join("resources/out");
    let artifacts = LinuxArtifacts {
        bzimage: out.join("vmlinuz"),
        elf: out.join("vmlinux"),
        initrd: out.join("initramfs.cpio.gz"),
    };
    for f in [&artifacts.bzimage, &artifacts.elf, &artifacts.initrd] {
        assert!(
            f.exists(),
            "{} is missing: run `make linux` (or `make test`, which runs it) first",
            f.display()
        );
    }
    artifacts
}

/// `tiervisor run` of `kernel` with the test initramfs, command line, memory and vCPUs.
fn tiervisor_linux(kernel: &Path, initrd: &Path) -> Command {
    let mut cmd = tiervisor();
    cmd.arg("run")
        .arg("--kernel")
        .arg(kernel)
        .arg("--initrd")
        .arg(initrd)
        .args(["--cmdline", CMDLINE])
        .args(["--memory", &format!("{MEMORY_MIB}M")])
        .args(["--vcpus", &VCPUS.to_string()]);
    cmd
}

/// A VMM run watched line by line on its serial output.
struct SerialRun {
    lines: Vec<String>,
    stderr: String,
    /// Exit status when the VMM ended by itself; None when we stopped it.
    status: Option<i32>,
    /// We stopped it because `done` held.
    stopped_when_done: bool,
    elapsed: Duration,
}

impl SerialRun {
    fn has(&self, needle: &str) -> bool {
        self.lines.iter().any(|l| l.contains(needle))
    }

    fn log(&self) -> String {
        format!(
            "status {:?} after {:.1?} (stopped by the test: {})\n--- serial\n{}\n--- stderr\n{}",
            self.status,
            self.elapsed,
            self.status.is_none(),
            self.lines.join("\n"),
            self.stderr
        )
    }
}

/// Spawns `cmd`, collects its stdout lines until `done(lines)` holds (then kills it),
/// it exits, or `timeout` passes (then kills it).
fn watch(mut cmd: Command, timeout: Duration, done: impl Fn(&[String]) -> bool) -> SerialRun {
    let start = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {:?}: {e}", cmd.get_program()));
    let stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        // Lines as they come; serial output may hold stray bytes, so no UTF-8 demand.
        let mut reader = BufReader::new(stdout);
        let mut buf = Vec::new();
        while reader.read_until(b'\n', &mut buf).unwrap_or(0) > 0 {
            let line = String::from_utf8_lossy(&buf).trim_end().to_string();
            if tx.send(line).is_err() {
                break;
            }
            buf.clear();
        }
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });

    let mut lines = Vec::new();
    let mut stopped_when_done = false;
    loop {
        let left = timeout.saturating_sub(start.elapsed());
        match rx.recv_timeout(left.min(Duration::from_millis(200))) {
            Ok(line) => {
                lines.push(line);
                if done(&lines) {
                    stopped_when_done = true;
                    break;
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) if left.is_zero() => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
    }
    let status = match child.try_wait().unwrap() {
        Some(s) => s.code(),
        None => {
            // Still running: we stop it (done, or out of time).
            let _ = child.kill();
            let _ = child.wait();
            None
        }
    };
    let elapsed = start.elapsed();
    // Whatever was still in the pipe.
    reader.join().unwrap();
    lines.extend(rx.try_iter());
    SerialRun {
        lines,
        stderr: err_reader.join().unwrap(),
        status,
        stopped_when_done,
        elapsed,
    }
}

/// Sum of the e820 ranges Linux reports as usable, and the end of the highest one.
fn e820_usable(lines: &[String]) -> (u64, u64) {
    let (mut total, mut top) = (0, 0);
    for l in lines.iter().filter(|l| l.contains("BIOS-e820: [mem ")) {
        if !l.trim_end().ends_with("usable") {
            continue;
        }
        let range = l.split("[mem ").nth(1).and_then(|r| r.split(']').next());
        let Some((a, b)) = range.and_then(|r| r.split_once('-')) else {
            continue;
        };
        let parse = |s: &str| u64::from_str_radix(s.trim_start_matches("0x"), 16).unwrap();
        let (start, end) = (parse(a), parse(b) + 1);
        total += end - start;
        top = top.max(end);
    }
    (total, top)
}

/// Lines of Linux's early log that prove each piece of the boot path on a PVM host.
fn early_log_expectations() -> Vec<(&'static str, String)> {
    vec![
        ("kernel entry and UART", "Linux version 6.1".to_string()),
        ("command line", format!("Command line: {CMDLINE}")),
        ("ACPI RSDP found", "ACPI: RSDP".to_string()),
        ("XSDT", "ACPI: XSDT".to_string()),
        ("FADT", "ACPI: FACP".to_string()),
        ("DSDT via the FADT", "ACPI: DSDT".to_string()),
        ("MADT", "ACPI: APIC".to_string()),
        (
            "SMP from the MADT",
            "ACPI: Using ACPI (MADT) for SMP configuration information".to_string(),
        ),
        ("vCPU count", format!("smpboot: Allowing {VCPUS} CPUs")),
    ]
}

/// Boots `kernel` to the init marker (hardware virtualization only).
fn assert_reaches_init(kernel: &Path, initrd: &Path) {
    let run = watch(tiervisor_linux(kernel, initrd), TIERVISOR_TIMEOUT, |_| {
        false
    });
    let marker = run.lines.iter().find(|l| l.contains(INIT_MARKER));
    let marker = marker.unwrap_or_else(|| panic!("no init marker\n{}", run.log()));
    assert!(marker.contains(&format!("{VCPUS} cpus")), "{marker}");
    assert_eq!(
        run.status,
        Some(0),
        "reboot=k must end the VM\n{}",
        run.log()
    );
    eprintln!(
        "linux: {} reached init in {:.1?}: {marker}",
        kernel.display(),
        run.elapsed
    );
}

/// Boots `kernel` on a PVM host until Linux's early log shows every expected line,
/// asserts them and the e820 map, and stops the VM.
fn assert_early_log(kernel: &Path, initrd: &Path, timeout: Duration) {
    let expected = early_log_expectations();
    let all_seen = |lines: &[String]| {
        expected
            .iter()
            .all(|(_, needle)| lines.iter().any(|l| l.contains(needle.as_str())))
    };
    let run = watch(tiervisor_linux(kernel, initrd), timeout, all_seen);
    for (what, needle) in &expected {
        assert!(run.has(needle), "{what}: no `{needle}`\n{}", run.log());
    }
    let (usable, top) = e820_usable(&run.lines);
    let mem = MEMORY_MIB << 20;
    assert_eq!(top, mem, "top of usable RAM in the e820 map\n{}", run.log());
    assert!(
        usable > mem - (1 << 20) && usable <= mem,
        "usable e820 RAM {usable:#x} for --memory {MEMORY_MIB}M\n{}",
        run.log()
    );
    // Ending by itself is fine only the way PVM ends it: an emulation failure.
    if let Some(status) = run.status {
        assert!(
            status == 1 && run.stderr.to_lowercase().contains("internal error"),
            "the VM ended before its early log was complete\n{}",
            run.log()
        );
    }
    let how = if run.stopped_when_done {
        "stopped by the test"
    } else {
        "ended by a KVM internal error"
    };
    eprintln!(
        "linux: PVM host: {}: the kernel's early log is complete after {:.1?} ({} serial \
         lines; {how}). This host's KVM (kvm_pvm, no VT-x/SVM) emulates guest ring-0 code \
         and cannot execute `lock cmpxchg16b`, so Linux cannot reach init here; booting to \
         the init marker needs hardware virtualization.",
        kernel.display(),
        run.elapsed,
        run.lines.len()
    );
}

#[test]
fn linux_boots_in_tiervisor() {
    let linux = linux_artifacts();
    match host_kind() {
        HostKind::HardwareVirt => {
            assert_reaches_init(&linux.bzimage, &linux.initrd);
            assert_reaches_init(&linux.elf, &linux.initrd);
        }
        HostKind::Pvm => assert_early_log(&linux.elf, &linux.initrd, TIERVISOR_TIMEOUT),
    }
}

/// The bzImage on a PVM host: its decompressor runs at emulated ring 0 for minutes
/// before the kernel prints anything. `cargo test --release --test linux -- --ignored`.
#[test]
#[ignore = "takes minutes on a PVM host; run with --ignored"]
fn linux_bzimage_early_log_on_pvm() {
    let linux = linux_artifacts();
    if host_kind() == HostKind::HardwareVirt {
        eprintln!("linux: hardware virtualization: linux_boots_in_tiervisor covers the bzImage");
        return;
    }
    assert_early_log(&linux.bzimage, &linux.initrd, BZIMAGE_PVM_TIMEOUT);
}

/// The host's TSC rate in kHz from /proc/cpuinfo ("cpu MHz"); see the QEMU test.
fn host_tsc_khz() -> u64 {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap();
    let mhz: f64 = cpuinfo
        .lines()
        .find(|l| l.starts_with("cpu MHz"))
        .and_then(|l| l.split(':').nth(1))
        .and_then(|v| v.trim().parse().ok())
        .expect("cpu MHz in /proc/cpuinfo");
    (mhz * 1000.0) as u64
}

#[test]
fn initramfs_reaches_init_under_qemu_tcg() {
    let linux = linux_artifacts();
    // microvm has no HPET or PM timer, and under TCG the kernel's PIT calibration of
    // the TSC fails, after which it waits forever for a clock; give it the host's TSC
    // rate (TCG's TSC follows the host's) so that it does not have to calibrate.
    let cmdline = format!("{CMDLINE} quiet tsc_early_khz={}", host_tsc_khz());
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args(["-M", "microvm", "-accel", "tcg", "-smp", "1"])
        .args(["-m", &format!("{MEMORY_MIB}M")])
        .args(["-nodefaults", "-no-user-config", "-nographic", "-no-reboot"])
        .args(["-serial", "stdio"])
        .arg("-kernel")
        .arg(&linux.bzimage)
        .arg("-initrd")
        .arg(&linux.initrd)
        .args(["-append", &cmdline]);
    let run = watch(cmd, QEMU_TIMEOUT, |lines| {
        lines.iter().any(|l| l.contains(INIT_MARKER))
    });
    assert!(
        run.has(INIT_MARKER),
        "the initramfs did not reach init under QEMU TCG (is qemu-system-x86 installed? \
         `make setup`)\n{}",
        run.log()
    );
    eprintln!(
        "linux: QEMU TCG reached init in {:.1?}: the kernel and initramfs are good",
        run.elapsed
    );
}
