//! What the host allows: /dev/kvm, PVM detection, memory, and size parsing for the
//! command line.

use std::path::Path;

/// Parse a size such as `512M`, `2G`, `64K`, `1T` or a byte count. Suffixes are
/// binary (K = 1024) and case-insensitive; an optional trailing `B`/`iB` is accepted.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let lower = t.to_ascii_lowercase();
    let stripped = lower
        .strip_suffix("ib")
        .or_else(|| lower.strip_suffix('b'))
        .unwrap_or(&lower);
    let (digits, shift) = match stripped.chars().last() {
        Some('k') => (&stripped[..stripped.len() - 1], 10),
        Some('m') => (&stripped[..stripped.len() - 1], 20),
        Some('g') => (&stripped[..stripped.len() - 1], 30),
        Some('t') => (&stripped[..stripped.len() - 1], 40),
        _ => (stripped, 0),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("'{t}' is not a size (examples: 256M, 1G, 65536)"))?;
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| format!("'{t}' is too large"))
}

/// Format a byte count with the largest binary unit that divides it.
pub fn format_size(bytes: u64) -> String {
    for (shift, unit) in [(40, "T"), (30, "G"), (20, "M"), (10, "K")] {
        if bytes >= 1 << shift && bytes.is_multiple_of(1 << shift) {
            return format!("{}{unit}", bytes >> shift);
        }
    }
    bytes.to_string()
}

/// Host memory from /proc/meminfo, in bytes.
#[derive(Debug, Clone, Copy)]
pub struct HostMemory {
    /// MemTotal: physical RAM.
    pub total: u64,
    /// MemAvailable: what can be had without swapping.
    pub available: u64,
}

/// Read /proc/meminfo.
pub fn host_memory() -> Option<HostMemory> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let field = |name: &str| -> Option<u64> {
        let line = text.lines().find(|l| l.starts_with(name))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024)
    };
    Some(HostMemory {
        total: field("MemTotal:")?,
        available: field("MemAvailable:")?,
    })
}

/// True when KVM here is PVM (no VT-x/SVM; guest ring 0 is emulated).
pub fn is_pvm_host() -> bool {
    if Path::new("/sys/module/kvm_pvm").exists() {
        return true;
    }
    match std::fs::read_to_string("/proc/cpuinfo") {
        Ok(info) => !info
            .lines()
            .filter(|l| l.starts_with("flags"))
            .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm")),
        Err(_) => false,
    }
}

/// Make sure fds 0-2 are open (on /dev/null if they were closed), before the VMM
/// opens anything: otherwise /dev/kvm, the guest memfd or an eventfd could land on
/// fd 0 and the console would read it as stdin.
pub fn ensure_std_fds() {
    for fd in 0..3 {
        // SAFETY: F_GETFD only queries the descriptor.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } == -1 {
            let flags = if fd == 0 {
                libc::O_RDONLY
            } else {
                libc::O_WRONLY
            };
            // SAFETY: the path is a valid C string; open returns the lowest free fd,
            // which is `fd` because the lower ones are open.
            unsafe { libc::open(c"/dev/null".as_ptr(), flags) };
        }
    }
}

/// The note printed once per run on a PVM host.
pub const PVM_NOTE: &str = "note: this host's KVM is PVM (no VT-x/SVM): guest ring-0 code runs under instruction emulation, so an unmodified guest kernel cannot boot to init here; guests that run their work at ring 3 (the test guest) run natively";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_suffixes() {
        assert_eq!(parse_size("65536").unwrap(), 65536);
        assert_eq!(parse_size("64K").unwrap(), 64 << 10);
        assert_eq!(parse_size("256m").unwrap(), 256 << 20);
        assert_eq!(parse_size("2G").unwrap(), 2 << 30);
        assert_eq!(parse_size("2GiB").unwrap(), 2 << 30);
        assert_eq!(parse_size("1MB").unwrap(), 1 << 20);
        assert_eq!(parse_size("100T").unwrap(), 100 << 40);
        assert!(parse_size("").is_err());
        assert!(parse_size("12X").is_err());
        assert!(parse_size("-1M").is_err());
        assert!(parse_size("99999999999T").is_err());
    }

    #[test]
    fn sizes_format_back() {
        assert_eq!(format_size(16 << 20), "16M");
        assert_eq!(format_size(3 << 30), "3G");
        assert_eq!(format_size(1000), "1000");
    }

    #[test]
    fn host_memory_is_read() {
        let m = host_memory().unwrap();
        assert!(m.total > 0 && m.available <= m.total);
    }
}
