//! File / block-device backend: O_DIRECT page transfers through io_uring.
//!
//! A regular file is created if needed and given its full size up front with
//! fallocate (so writes never allocate and a full disk shows at open, not
//! mid-run). A block device is used as is and must be large enough.

use super::notify::EventFd;
use super::sched::{delegate_tier_backend, Engine, EngineDone, Scheduled};
use super::{BackendError, DeviceProfile, IoOp, OpenError, PageBuf, QueueLimits, PAGE_SIZE};
use io_uring::{opcode, types, IoUring};
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// How to open a [`FileBackend`].
#[derive(Clone, Debug)]
pub struct FileConfig {
    /// A regular file (created and sized if needed) or a block device.
    pub path: PathBuf,
    /// Slots of 4 KiB.
    pub capacity_pages: u64,
    /// Emulated device; `None` for the real device's own speed.
    pub profile: Option<DeviceProfile>,
    /// In-flight limits per class.
    pub limits: QueueLimits,
}

impl FileConfig {
    /// A config with default limits and no profile.
    pub fn new(path: impl Into<PathBuf>, capacity_pages: u64) -> Self {
        Self {
            path: path.into(),
            capacity_pages,
            profile: None,
            limits: QueueLimits::default(),
        }
    }

    /// The same config with a device profile.
    pub fn with_profile(mut self, profile: DeviceProfile) -> Self {
        self.profile = Some(profile);
        self
    }
}

/// A tier on a file or block device. See the module docs of [`super`].
pub struct FileBackend {
    inner: Scheduled<UringFile>,
}

delegate_tier_backend!(FileBackend);

impl FileBackend {
    /// Open (creating a regular file if it does not exist) and size the store.
    pub fn open(config: &FileConfig) -> Result<Self, OpenError> {
        if config.capacity_pages == 0 {
            return Err(OpenError::ZeroCapacity);
        }
        let engine = UringFile::open(&config.path, config.capacity_pages, config.limits.total())?;
        Ok(Self {
            inner: Scheduled::new(engine, config.limits, config.profile.as_ref())?,
        })
    }

    /// The path the store lives at.
    pub fn path(&self) -> &Path {
        &self.inner.engine().path
    }

    /// The in-flight limits in force (after capping by the profile).
    pub fn limits(&self) -> QueueLimits {
        self.inner.limits()
    }
}

/// The iovecs of a multi-page transfer: pointers into the transfer's own buffers.
struct IoVecs {
    _held: Vec<libc::iovec>,
}

// SAFETY: the pointers point into the `PageBuf`s of the same `InFlight` entry, which
// moves between threads with them; nothing else reads or writes through them.
unsafe impl Send for IoVecs {}

/// A transfer the kernel has not finished.
struct InFlight {
    op: IoOp,
    slot: u64,
    bufs: Vec<PageBuf>,
    /// Kept alive (their heap array does not move) until the completion, as the
    /// kernel may read them until then; empty for a one-page transfer.
    _iovecs: IoVecs,
}

pub(crate) struct UringFile {
    path: PathBuf,
    file: File,
    ring: IoUring,
    capacity: u64,
    /// Buffers the kernel is reading into or writing from, by the transfer's first
    /// token. Holding them here keeps them alive (and unmoved: the page is boxed)
    /// until the completion arrives.
    in_flight: HashMap<u64, InFlight>,
    unsubmitted: usize,
    /// Signalled by the kernel for every completion posted to the ring.
    event: EventFd,
}

impl UringFile {
    fn open(path: &Path, capacity: u64, depth: usize) -> Result<Self, OpenError> {
        let open_err = |source| OpenError::Open {
            path: path.to_path_buf(),
            source,
        };
        let bytes = capacity
            .checked_mul(PAGE_SIZE as u64)
            .ok_or_else(|| OpenError::Reserve {
                path: path.to_path_buf(),
                bytes: u64::MAX,
                source: std::io::Error::from_raw_os_error(libc::EFBIG),
            })?;
        let is_block = std::fs::metadata(path)
            .map(|m| m.file_type().is_block_device())
            .unwrap_or(false);
        let mut options = OpenOptions::new();
        options.read(true).write(true).custom_flags(libc::O_DIRECT);
        if !is_block {
            options.create(true);
        }
        let mut file = match options.open(path) {
            Ok(f) => f,
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                return Err(OpenError::DirectIoUnsupported {
                    path: path.to_path_buf(),
                    source: e,
                })
            }
            Err(e) => return Err(open_err(e)),
        };
        lock_for_this_process(&file, path)?;
        if is_block {
            let size = file.seek(SeekFrom::End(0)).map_err(open_err)?;
            let available = size / PAGE_SIZE as u64;
            if available < capacity {
                return Err(OpenError::TooSmall {
                    what: path.display().to_string(),
                    available,
                    wanted: capacity,
                });
            }
        } else {
            reserve(&file, bytes).map_err(|source| OpenError::Reserve {
                path: path.to_path_buf(),
                bytes,
                source,
            })?;
        }
        probe_direct_io(&file).map_err(|source| OpenError::DirectIoUnsupported {
            path: path.to_path_buf(),
            source,
        })?;
        let entries = depth.next_power_of_two().clamp(8, 4096) as u32;
        let ring = IoUring::new(entries).map_err(OpenError::Uring)?;
        // Registering the file saves a file-table lookup per request.
        ring.submitter()
            .register_files(&[file.as_raw_fd()])
            .map_err(OpenError::Uring)?;
        let event = EventFd::new().map_err(OpenError::Resources)?;
        ring.submitter()
            .register_eventfd(event.raw())
            .map_err(OpenError::Uring)?;
        Ok(Self {
            path: path.to_path_buf(),
            file,
            ring,
            capacity,
            in_flight: HashMap::new(),
            unsubmitted: 0,
            event,
        })
    }

    fn submit_to_kernel(&mut self, wait_for: usize) {
        match self.ring.submit_and_wait(wait_for) {
            Ok(n) => self.unsubmitted = self.unsubmitted.saturating_sub(n),
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EINTR | libc::EAGAIN | libc::EBUSY)
                ) => {}
            Err(e) => log::error!("{}: io_uring_enter failed: {e}", self.path.display()),
        }
    }

    fn drain(&mut self, out: &mut Vec<EngineDone>) {
        for cqe in self.ring.completion() {
            let head = cqe.user_data();
            let Some(t) = self.in_flight.remove(&head) else {
                continue;
            };
            let res = cqe.result();
            for (i, buf) in t.bufs.into_iter().enumerate() {
                let slot = t.slot + i as u64;
                let op = t.op;
                // Bytes of this page the transfer moved: a short transfer may end in
                // the middle of the run.
                let bytes = (res.max(0) as usize)
                    .saturating_sub(i * PAGE_SIZE)
                    .min(PAGE_SIZE);
                let result = if res < 0 {
                    Err(BackendError::Io {
                        op,
                        slot,
                        source: std::io::Error::from_raw_os_error(-res),
                    })
                } else if bytes != PAGE_SIZE {
                    Err(BackendError::ShortTransfer { op, slot, bytes })
                } else {
                    Ok(())
                };
                let token = head + i as u64;
                out.push(EngineDone { token, result, buf });
            }
        }
    }
}

/// Give a regular file its full size with real blocks behind it.
fn reserve(file: &File, bytes: u64) -> std::io::Result<()> {
    let len = i64::try_from(bytes).map_err(|_| std::io::Error::from_raw_os_error(libc::EFBIG))?;
    // SAFETY: fallocate on an fd we own; no memory is passed.
    let rc = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, len) };
    if rc == 0 {
        return Ok(());
    }
    let err = std::io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::EOPNOTSUPP) {
        // File systems without fallocate: a sparse file still works.
        if file.metadata()?.len() < bytes {
            file.set_len(bytes)?;
        }
        return Ok(());
    }
    Err(err)
}

/// Takes a write lock on the whole file for this process, so that a second VM given
/// the same tier file is refused instead of overwriting the first one's pages. A POSIX
/// record lock (fcntl) belongs to the process, so this process's other backends on
/// the same file (the migrator thread's) take it again; it ends with the process.
fn lock_for_this_process(file: &File, path: &Path) -> Result<(), OpenError> {
    // SAFETY: flock is plain data; zeroed is a valid value, the fields are set below.
    let mut lock: libc::flock = unsafe { std::mem::zeroed() };
    lock.l_type = libc::F_WRLCK as libc::c_short;
    lock.l_whence = libc::SEEK_SET as libc::c_short;
    // l_start = 0, l_len = 0: the whole file, however it grows.
    // SAFETY: F_SETLK on a descriptor we own, with a valid flock.
    if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETLK, &lock) } == 0 {
        return Ok(());
    }
    let err = std::io::Error::last_os_error();
    if !matches!(err.raw_os_error(), Some(libc::EAGAIN) | Some(libc::EACCES)) {
        return Err(OpenError::Open {
            path: path.to_path_buf(),
            source: err,
        });
    }
    // SAFETY: as above; F_GETLK fills in the holder's pid.
    unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETLK, &mut lock) };
    Err(OpenError::InUse {
        path: path.to_path_buf(),
        pid: lock.l_pid,
    })
}

/// Some file systems accept O_DIRECT at open and refuse it at the first read.
fn probe_direct_io(file: &File) -> std::io::Result<()> {
    let mut buf = PageBuf::new();
    // SAFETY: buf is a live, 4 KiB-aligned, 4 KiB buffer owned by this frame.
    let rc = unsafe { libc::pread(file.as_raw_fd(), buf.as_mut_ptr().cast(), PAGE_SIZE, 0) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

impl Engine for UringFile {
    fn describe(&self) -> String {
        format!("file:{}", self.path.display())
    }

    fn capacity_pages(&self) -> u64 {
        self.capacity
    }

    fn start(
        &mut self,
        token: u64,
        op: IoOp,
        slot: u64,
        mut bufs: Vec<PageBuf>,
    ) -> Result<(), (BackendError, Vec<PageBuf>)> {
        let offset = slot * PAGE_SIZE as u64;
        let fd = types::Fixed(0);
        let mut iovecs = Vec::new();
        let entry = if let [buf] = bufs.as_mut_slice() {
            let ptr = buf.as_mut_ptr();
            match op {
                IoOp::Read => opcode::Read::new(fd, ptr, PAGE_SIZE as u32)
                    .offset(offset)
                    .build(),
                IoOp::Write => opcode::Write::new(fd, ptr, PAGE_SIZE as u32)
                    .offset(offset)
                    .build(),
            }
        } else {
            iovecs.extend(bufs.iter_mut().map(|b| libc::iovec {
                iov_base: b.as_mut_ptr().cast(),
                iov_len: PAGE_SIZE,
            }));
            let (ptr, n) = (iovecs.as_ptr(), iovecs.len() as u32);
            match op {
                IoOp::Read => opcode::Readv::new(fd, ptr, n).offset(offset).build(),
                IoOp::Write => opcode::Writev::new(fd, ptr, n).offset(offset).build(),
            }
        }
        .user_data(token);
        if self.ring.submission().is_full() {
            self.submit_to_kernel(0);
        }
        // SAFETY: the buffers the entry points at (directly or through `iovecs`) are
        // moved into `in_flight` right below and stay there (boxed pages, and the
        // iovec array on the heap, so neither moves) until the completion is reaped
        // in `drain`, or `Drop` waits for it.
        let pushed = unsafe { self.ring.submission().push(&entry) };
        if pushed.is_err() {
            let source = std::io::Error::other("io_uring submission queue full");
            return Err((BackendError::Io { op, slot, source }, bufs));
        }
        let t = InFlight {
            op,
            slot,
            bufs,
            _iovecs: IoVecs { _held: iovecs },
        };
        self.in_flight.insert(token, t);
        self.unsubmitted += 1;
        Ok(())
    }

    fn event_fds(&self) -> Vec<i32> {
        vec![self.event.raw()]
    }

    fn clear_event(&self) {
        self.event.clear();
    }

    fn kick(&mut self) {
        if self.unsubmitted > 0 {
            self.submit_to_kernel(0);
        }
    }

    fn reap(&mut self, out: &mut Vec<EngineDone>, block_until: Option<Instant>) {
        self.kick();
        let before = out.len();
        self.drain(out);
        if out.len() > before || self.in_flight.is_empty() {
            return;
        }
        let Some(until) = block_until else { return };
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        let ts = types::Timespec::new()
            .sec(left.as_secs())
            .nsec(left.subsec_nanos());
        let args = types::SubmitArgs::new().timespec(&ts);
        match self.ring.submitter().submit_with_args(1, &args) {
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ETIME | libc::EINTR | libc::EAGAIN | libc::EBUSY)
                ) => {}
            Err(e) => log::error!("{}: io_uring wait failed: {e}", self.path.display()),
        }
        self.drain(out);
    }

    fn trim(&mut self, slot: u64) -> Result<(), BackendError> {
        let offset = i64::try_from(slot * PAGE_SIZE as u64).unwrap_or(i64::MAX);
        // SAFETY: fallocate on an fd we own; no memory is passed.
        let rc = unsafe {
            libc::fallocate(
                self.file.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                offset,
                PAGE_SIZE as i64,
            )
        };
        if rc == 0 {
            return Ok(());
        }
        let err = std::io::Error::last_os_error();
        match err.raw_os_error() {
            // Discard is a hint: a device without it keeps the old bytes.
            Some(libc::EOPNOTSUPP) => Ok(()),
            _ => Err(BackendError::Sync {
                op: "discard",
                source: err,
            }),
        }
    }

    fn flush(&mut self) -> Result<(), BackendError> {
        self.file.sync_data().map_err(|source| BackendError::Sync {
            op: "fdatasync",
            source,
        })
    }
}

impl Drop for UringFile {
    fn drop(&mut self) {
        // The kernel may still write into buffers we own: wait for every
        // outstanding request before the buffers are freed.
        let mut sink = Vec::new();
        let give_up = Instant::now() + std::time::Duration::from_secs(30);
        while !self.in_flight.is_empty() && Instant::now() < give_up {
            self.submit_to_kernel(1);
            self.drain(&mut sink);
        }
        if !self.in_flight.is_empty() {
            // Leaking is the only safe choice for buffers the kernel may still use.
            log::error!(
                "{}: {} requests never completed; leaking their buffers",
                self.path.display(),
                self.in_flight.len()
            );
            std::mem::forget(std::mem::take(&mut self.in_flight));
        }
    }
}
