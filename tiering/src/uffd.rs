//! userfaultfd over the guest RAM mapping: registration, page installation with the
//! retry rules this host needs (EAGAIN: retry; EEXIST: someone installed it, wake the
//! waiter), and the host primitives around it (zap, punch, CPU pinning).
//!
//! Never sets `UFFD_USER_MODE_ONLY`: KVM touches guest memory from the kernel (GUP)
//! and gets EFAULT with it (HOST-NOTES.md).

use std::fs::File;
use std::os::fd::AsRawFd;

use userfaultfd::{FeatureFlags, RegisterMode, Uffd, UffdBuilder};

use crate::access::PAGE_SIZE;

const PAGE: usize = PAGE_SIZE as usize;

/// `UFFD_FEATURE_MINOR_SHMEM` (linux/userfaultfd.h); the crate's flag set predates it.
const FEATURE_MINOR_SHMEM: u64 = 1 << 10;
/// `UFFD_FEATURE_THREAD_ID`: fault messages carry the faulting thread's id.
const FEATURE_THREAD_ID: u64 = 1 << 8;

/// How often an install is retried on EAGAIN (the mm was changing under it).
const EAGAIN_RETRIES: usize = 1000;

/// userfaultfd set-up and install failures.
#[derive(Debug, thiserror::Error)]
pub enum UffdError {
    #[error("cannot create a userfaultfd with MISSING and MINOR (shmem) support: {0} (needs Linux >= 5.13, and root or vm.unprivileged_userfaultfd=1)")]
    Create(userfaultfd::Error),
    #[error("cannot register guest RAM at {addr:#x} (+{len:#x}) with userfaultfd: {source}")]
    Register {
        addr: usize,
        len: usize,
        source: userfaultfd::Error,
    },
    #[error("UFFDIO_{what} at {addr:#x} failed: {detail}")]
    Install {
        what: &'static str,
        addr: usize,
        detail: String,
    },
    #[error("{what} failed: {source}")]
    Host {
        what: &'static str,
        source: std::io::Error,
    },
}

/// A userfaultfd that guest RAM ranges are registered with.
pub struct GuestUffd {
    uffd: Uffd,
}

impl GuestUffd {
    /// A non-blocking userfaultfd with MINOR-fault support on shmem.
    pub fn new() -> Result<Self, UffdError> {
        let uffd = UffdBuilder::new()
            .close_on_exec(true)
            .non_blocking(true)
            .user_mode_only(false)
            .require_features(FeatureFlags::from_bits_retain(
                FEATURE_MINOR_SHMEM | FEATURE_THREAD_ID,
            ))
            .create()
            .map_err(UffdError::Create)?;
        Ok(Self { uffd })
    }

    /// Register `[addr, addr+len)` (a MAP_SHARED memfd mapping) in MISSING and MINOR mode.
    pub fn register(&self, addr: usize, len: usize) -> Result<(), UffdError> {
        self.uffd
            .register_with_mode(
                addr as *mut libc::c_void,
                len,
                RegisterMode::MISSING | RegisterMode::MINOR,
            )
            .map(|_| ())
            .map_err(|source| UffdError::Register { addr, len, source })
    }

    /// Unregister a range (before the mapping goes away).
    pub fn unregister(&self, addr: usize, len: usize) {
        if let Err(e) = self.uffd.unregister(addr as *mut libc::c_void, len) {
            log::warn!("userfaultfd unregister {addr:#x}+{len:#x}: {e}");
        }
    }

    /// The underlying crate object (event reads).
    pub fn raw(&self) -> &Uffd {
        &self.uffd
    }

    /// Install the page at `src` (PAGE_SIZE bytes) at `dst` and wake its waiters.
    /// An already-present page (EEXIST: another path filled it) only wakes.
    pub fn copy_page(&self, src: &[u8], dst: usize) -> Result<(), UffdError> {
        debug_assert_eq!(src.len(), PAGE);
        let mut done = 0usize;
        for _ in 0..EAGAIN_RETRIES {
            // SAFETY: src is a live PAGE-byte buffer; dst..dst+PAGE lies in a range
            // registered with this userfaultfd (callers map guest pages only), and
            // UFFDIO_COPY only fills a missing page, never overwrites memory.
            let r = unsafe {
                self.uffd.copy(
                    src[done..].as_ptr().cast(),
                    (dst + done) as *mut libc::c_void,
                    PAGE - done,
                    true,
                )
            };
            match r {
                Ok(_) => return Ok(()),
                Err(userfaultfd::Error::PartiallyCopied(n)) => {
                    done += n;
                    if done >= PAGE {
                        return Ok(());
                    }
                }
                Err(userfaultfd::Error::CopyFailed(e)) if e as i32 == libc::EEXIST => {
                    return self.wake(dst, PAGE);
                }
                Err(userfaultfd::Error::CopyFailed(e)) if e as i32 == libc::EAGAIN => {}
                Err(e) => {
                    return Err(UffdError::Install {
                        what: "COPY",
                        addr: dst,
                        detail: e.to_string() + &errno_of(&e),
                    })
                }
            }
        }
        Err(UffdError::Install {
            what: "COPY",
            addr: dst,
            detail: format!("still EAGAIN after {EAGAIN_RETRIES} tries"),
        })
    }

    /// Install zero pages over `[dst, dst+len)` and wake waiters. A page that is
    /// there already (e.g. written by the kernel loader before any fault) is left as
    /// it is: [`ZeroFill::AlreadyPresent`] tells the caller its content is not zeros.
    pub fn zero_pages(&self, dst: usize, len: usize) -> Result<ZeroFill, UffdError> {
        for _ in 0..EAGAIN_RETRIES {
            // SAFETY: the range lies in registered guest RAM; ZEROPAGE only fills
            // missing pages.
            match unsafe { self.uffd.zeropage(dst as *mut libc::c_void, len, true) } {
                Ok(_) => return Ok(ZeroFill::Zeroed),
                Err(userfaultfd::Error::ZeropageFailed(e)) if e as i32 == libc::EEXIST => {
                    return self.wake(dst, len).map(|()| ZeroFill::AlreadyPresent);
                }
                Err(userfaultfd::Error::ZeropageFailed(e)) if e as i32 == libc::EAGAIN => {}
                Err(e) => {
                    return Err(UffdError::Install {
                        what: "ZEROPAGE",
                        addr: dst,
                        detail: e.to_string() + &errno_of(&e),
                    })
                }
            }
        }
        Err(UffdError::Install {
            what: "ZEROPAGE",
            addr: dst,
            detail: format!("still EAGAIN after {EAGAIN_RETRIES} tries"),
        })
    }

    /// Map the page-cache page behind a MINOR fault at `dst` again and wake waiters.
    pub fn continue_page(&self, dst: usize) -> Result<(), UffdError> {
        for _ in 0..EAGAIN_RETRIES {
            match self.uffd.r#continue(dst as *mut libc::c_void, PAGE, true) {
                Ok(_) => return Ok(()),
                Err(userfaultfd::Error::SystemError(e)) if e as i32 == libc::EEXIST => {
                    return self.wake(dst, PAGE);
                }
                Err(userfaultfd::Error::SystemError(e)) if e as i32 == libc::EAGAIN => {}
                Err(e) => {
                    return Err(UffdError::Install {
                        what: "CONTINUE",
                        addr: dst,
                        detail: e.to_string() + &errno_of(&e),
                    })
                }
            }
        }
        Err(UffdError::Install {
            what: "CONTINUE",
            addr: dst,
            detail: format!("still EAGAIN after {EAGAIN_RETRIES} tries"),
        })
    }

    /// Wake threads waiting on a range that is already filled.
    pub fn wake(&self, dst: usize, len: usize) -> Result<(), UffdError> {
        self.uffd
            .wake(dst as *mut libc::c_void, len)
            .map_err(|e| UffdError::Install {
                what: "WAKE",
                addr: dst,
                detail: e.to_string(),
            })
    }
}

/// What [`GuestUffd::zero_pages`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ZeroFill {
    /// Zero pages were installed.
    Zeroed,
    /// A page was present already; its content is whatever was written there.
    AlreadyPresent,
}

fn errno_of(e: &userfaultfd::Error) -> String {
    match e {
        userfaultfd::Error::CopyFailed(n) | userfaultfd::Error::ZeropageFailed(n) => {
            format!(" ({n})")
        }
        userfaultfd::Error::SystemError(n) => format!(" ({n})"),
        _ => String::new(),
    }
}

/// Drop the mapping of `[addr, addr+len)` from this process's page tables. On a shared
/// memfd mapping the data stays in the file; the next access is a MINOR fault.
pub fn zap(addr: usize, len: usize) -> Result<(), UffdError> {
    // SAFETY: MADV_DONTNEED on a MAP_SHARED file mapping only drops page-table entries;
    // the memory stays mapped and its contents stay in the memfd.
    let r = unsafe { libc::madvise(addr as *mut libc::c_void, len, libc::MADV_DONTNEED) };
    if r != 0 {
        return Err(UffdError::Host {
            what: "madvise(MADV_DONTNEED)",
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// Free `[offset, offset+len)` of the memfd: the data is gone and the next access to
/// its mapping is a MISSING fault.
pub fn punch(file: &File, offset: u64, len: u64) -> Result<(), UffdError> {
    // SAFETY: fallocate on a descriptor we own; the range is inside the file.
    let r = unsafe {
        libc::fallocate(
            file.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            offset as libc::off_t,
            len as libc::off_t,
        )
    };
    if r != 0 {
        return Err(UffdError::Host {
            what: "fallocate(PUNCH_HOLE) on guest memory",
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// Pin the calling thread to `cpu` (the fault handler runs where the vCPU runs, so a
/// fault is served without a cross-CPU wake-up: 6-7 us instead of 33 us here).
pub fn pin_current_thread(cpu: usize) -> std::io::Result<()> {
    // SAFETY: cpu_set_t is plain data; CPU_ZERO/CPU_SET write only inside it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: as above; cpu is bounds-checked by CPU_SET against the set size.
    unsafe {
        libc::CPU_ZERO(&mut set);
        libc::CPU_SET(cpu % libc::CPU_SETSIZE as usize, &mut set);
    }
    // SAFETY: pid 0 is the calling thread; set is a valid cpu_set_t.
    let r = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The host CPUs the calling thread may run on (its affinity mask, as `taskset` or a
/// cpuset left it), in increasing order.
pub fn allowed_cpus() -> std::io::Result<Vec<usize>> {
    // SAFETY: cpu_set_t is plain data; zeroed is a valid empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: pid 0 is the calling thread; set is a valid cpu_set_t of the size given.
    let r = unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok((0..libc::CPU_SETSIZE as usize)
        // SAFETY: cpu is below CPU_SETSIZE; CPU_ISSET reads only inside the set.
        .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
        .collect())
}
