//! Helpers shared by the integration tests: the tiervisor binary, the test guest,
//! and tiny hand-assembled PVH guests for exercising exit paths.
#![allow(dead_code)] // each test binary uses a different subset

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// The built tiervisor binary.
pub fn tiervisor() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tiervisor"));
    cmd.stdin(Stdio::null());
    cmd
}

/// Repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// `resources/out/testguest.elf`, or a panic telling how to build it. Tests that
/// need the guest must fail, never silently pass, when it is missing.
pub fn testguest() -> PathBuf {
    let path = repo_root().join("resources/out/testguest.elf");
    assert!(
        path.exists(),
        "{} is missing: run `make guest` (or `make test`, which builds it) first",
        path.display()
    );
    path
}

/// A scratch directory for one test, `NAME-PID` in Cargo's per-target scratch space
/// (nothing goes to /tmp), emptied if it was there and removed when dropped. A test
/// that fails keeps it for a look. Left behind, the tests' tier files added up to
/// gigabytes under target/ over a day of `make test` runs.
pub struct Scratch(PathBuf);

impl Scratch {
    pub fn new(name: &str) -> Self {
        let dir =
            Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl std::ops::Deref for Scratch {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<Path> for Scratch {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<std::ffi::OsStr> for Scratch {
    fn as_ref(&self) -> &std::ffi::OsStr {
        self.0.as_os_str()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// A scratch directory for one test of tests/boot.rs.
pub fn scratch(name: &str) -> Scratch {
    Scratch::new(&format!("boot-{name}"))
}

/// stdout, stderr and status of a finished run, for assertion messages.
pub fn describe(out: &Output) -> String {
    format!(
        "status {:?}\n--- stdout\n{}\n--- stderr\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Asserts that a guest run exited 0 and the guest verified its own memory
/// (`result=ok`); `what` names the run in the failure message.
pub fn assert_guest_ok(out: &Output, what: &str) {
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("result=ok"),
        "{what}: {}",
        describe(out)
    );
}

/// Lines of stderr that are not the PVM host note.
pub fn error_lines(out: &Output) -> Vec<String> {
    String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter(|l| !l.starts_with("tiervisor: note:"))
        .map(str::to_string)
        .collect()
}

/// Where the tiny guests load and start.
pub const TINY_ENTRY: u32 = 0x10_0000;

/// 32-bit code that marks the boot timer, prints `OK\n` on COM1 and ends through the
/// debug-exit port with `status`.
pub fn code_debug_exit(status: u32) -> Vec<u8> {
    let mut c = vec![
        0x66, 0xba, 0xf0, 0x03, // mov dx, 0x3f0
        0xee, // out dx, al      (boot timer)
        0x66, 0xba, 0xf8, 0x03, // mov dx, 0x3f8
        0xb0, b'O', 0xee, // mov al,'O'; out dx, al
        0xb0, b'K', 0xee, // mov al,'K'; out dx, al
        0xb0, b'\n', 0xee, // mov al,'\n'; out dx, al
        0xb8, // mov eax, imm32
    ];
    c.extend_from_slice(&status.to_le_bytes());
    c.extend_from_slice(&[
        0x66, 0xba, 0xf4, 0x00, // mov dx, 0xf4
        0xef, // out dx, eax
        0xf4, // hlt
    ]);
    c
}

/// 32-bit code that resets the CPU through the i8042.
pub fn code_i8042_reset() -> Vec<u8> {
    vec![
        0xb0, 0xfe, // mov al, 0xfe
        0x66, 0xba, 0x64, 0x00, // mov dx, 0x64
        0xee, // out dx, al
        0xf4, // hlt
    ]
}

/// 32-bit code that triple-faults: ud2 with an empty IDT.
pub fn code_triple_fault() -> Vec<u8> {
    vec![0x0f, 0x0b]
}

/// 32-bit code that executes `int3` at ring 0: PVM cannot emulate it
/// (KVM_EXIT_INTERNAL_ERROR); with hardware virtualization the empty IDT turns the
/// #BP into a triple fault. Either way the VM fails.
pub fn code_ring0_int3() -> Vec<u8> {
    vec![0x90, 0xcc, 0xf4]
}

/// 32-bit code that spins forever after marking the boot timer.
pub fn code_spin() -> Vec<u8> {
    vec![0x66, 0xba, 0xf0, 0x03, 0xee, 0xeb, 0xfe]
}

/// A minimal ELF64 executable: one PT_LOAD of `code` at [`TINY_ENTRY`] and a PT_NOTE
/// holding XEN_ELFNOTE_PHYS32_ENTRY (18) = [`TINY_ENTRY`].
pub fn pvh_elf(code: &[u8]) -> Vec<u8> {
    const EHDR: usize = 64;
    const PHDR: usize = 56;
    let note_off = EHDR + 2 * PHDR;
    let mut note = Vec::new();
    note.extend_from_slice(&4u32.to_le_bytes()); // namesz
    note.extend_from_slice(&4u32.to_le_bytes()); // descsz
    note.extend_from_slice(&18u32.to_le_bytes()); // XEN_ELFNOTE_PHYS32_ENTRY
    note.extend_from_slice(b"Xen\0");
    note.extend_from_slice(&TINY_ENTRY.to_le_bytes());
    let code_off = 0x1000usize;

    let mut f = Vec::new();
    f.extend_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    f.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    f.extend_from_slice(&0x3eu16.to_le_bytes()); // EM_X86_64
    f.extend_from_slice(&1u32.to_le_bytes()); // EV_CURRENT
    f.extend_from_slice(&u64::from(TINY_ENTRY).to_le_bytes()); // e_entry
    f.extend_from_slice(&(EHDR as u64).to_le_bytes()); // e_phoff
    f.extend_from_slice(&0u64.to_le_bytes()); // e_shoff
    f.extend_from_slice(&0u32.to_le_bytes()); // e_flags
    f.extend_from_slice(&(EHDR as u16).to_le_bytes());
    f.extend_from_slice(&(PHDR as u16).to_le_bytes());
    f.extend_from_slice(&2u16.to_le_bytes()); // e_phnum
    f.extend_from_slice(&64u16.to_le_bytes()); // e_shentsize
    f.extend_from_slice(&0u16.to_le_bytes()); // e_shnum
    f.extend_from_slice(&0u16.to_le_bytes()); // e_shstrndx
    let phdr = |f: &mut Vec<u8>,
                p_type: u32,
                flags: u32,
                off: usize,
                addr: u64,
                size: usize,
                align: u64| {
        f.extend_from_slice(&p_type.to_le_bytes());
        f.extend_from_slice(&flags.to_le_bytes());
        f.extend_from_slice(&(off as u64).to_le_bytes());
        f.extend_from_slice(&addr.to_le_bytes()); // p_vaddr
        f.extend_from_slice(&addr.to_le_bytes()); // p_paddr
        f.extend_from_slice(&(size as u64).to_le_bytes()); // p_filesz
        f.extend_from_slice(&(size as u64).to_le_bytes()); // p_memsz
        f.extend_from_slice(&align.to_le_bytes());
    };
    phdr(
        &mut f,
        1,
        5,
        code_off,
        u64::from(TINY_ENTRY),
        code.len(),
        0x1000,
    );
    phdr(&mut f, 4, 4, note_off, 0, note.len(), 4);
    assert_eq!(f.len(), note_off);
    f.extend_from_slice(&note);
    f.resize(code_off, 0);
    f.extend_from_slice(code);
    f
}

/// A tiny guest's ELF file in its own scratch directory, removed with it.
pub struct TinyGuest {
    _dir: Scratch,
    path: PathBuf,
}

impl std::ops::Deref for TinyGuest {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.path
    }
}

impl AsRef<std::ffi::OsStr> for TinyGuest {
    fn as_ref(&self) -> &std::ffi::OsStr {
        self.path.as_os_str()
    }
}

/// Write a tiny guest to a scratch file; the guard holds its path.
pub fn write_tiny_guest(name: &str, code: &[u8]) -> TinyGuest {
    let dir = Scratch::new(&format!("boot-guest-{name}"));
    let path = dir.join(format!("{name}.elf"));
    std::fs::write(&path, pvh_elf(code)).unwrap();
    TinyGuest { _dir: dir, path }
}

/// A tier file in `dir`: 64M of RAM (tier 1) and an NVMe-profiled file tier 2 of
/// `nvme` (a size), so no NBD server is needed.
pub fn ram_and_nvme_tiers(dir: &Path, nvme: &str) -> PathBuf {
    let tiers = dir.join("tiers.toml");
    std::fs::write(
        &tiers,
        format!(
            "[tier1]\ncapacity = \"64M\"\nbackend = \"ram\"\n[tier2]\ncapacity = \"{nvme}\"\nfile = \"{}\"\nprofile = \"nvme\"\n",
            dir.join("t2.img").display()
        ),
    )
    .unwrap();
    tiers
}

/// The metrics JSON a run wrote to `path` (`--metrics-out`); panics if it is missing
/// or not JSON.
pub fn read_metrics(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("no metrics at {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("metrics at {}: {e}", path.display()))
}

/// `tiervisor run` of the test guest (64 MiB) over the tier file `tiers`, with `dir` as
/// its `TIERVISOR_WORKDIR` and its metrics at `dir/metrics.json`; callers add the RAM
/// budget or pool.
pub fn tiered_run(dir: &Path, tiers: &Path, cmdline: &str) -> Command {
    let mut command = tiervisor();
    command
        .env("TIERVISOR_WORKDIR", dir)
        .arg("run")
        .arg("--kernel")
        .arg(testguest())
        .args(["--memory", "64M", "--cmdline", cmdline])
        .arg("--tiers")
        .arg(tiers)
        .arg("--metrics-out")
        .arg(dir.join("metrics.json"));
    command
}

/// A counter of a metrics section; panics, naming it, when it is missing.
pub fn u(v: &serde_json::Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("metrics lack {key}: {v}"))
}

/// The threads of process `pid`: each one's name and its /proc/PID/task/TID/status
/// text (empty once the process is gone). Read a field with [`status_field`].
pub fn thread_statuses(pid: u32) -> Vec<(String, String)> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .filter_map(|t| {
            let t = t.ok()?.path();
            let name = std::fs::read_to_string(t.join("comm")).ok()?;
            let status = std::fs::read_to_string(t.join("status")).ok()?;
            Some((name.trim().to_string(), status))
        })
        .collect()
}

/// The value of `key` (e.g. "Cpus_allowed_list") in a /proc status text, trimmed.
pub fn status_field<'a>(status: &'a str, key: &str) -> Option<&'a str> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .map(str::trim)
}
