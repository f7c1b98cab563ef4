//! Waiting for the pool directory to change (inotify) rather than polling it: the
//! manager and each member's thread sleep until a file they care about is renamed in or
//! removed, a stop is asked for, or their next round is due. A thread that woke every
//! few milliseconds took its host CPU from a vCPU each time, and on this PVM host that
//! showed in the guest's tail latency (docs/pool.md, "Waking up").

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::time::{Duration, Instant};

/// What ended a [`DirWatch::wait`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wake {
    /// A file the caller asked about was renamed into or removed from the directory.
    File,
    /// The other descriptor became readable (a stop signal, a leave request).
    Other,
    /// The time was up.
    Timeout,
}

/// An inotify watch on one directory for files renamed in or deleted: every pool file is
/// replaced by rename, and a member that leaves deletes its own.
pub(crate) struct DirWatch {
    fd: OwnedFd,
}

impl DirWatch {
    pub(crate) fn new(dir: &Path) -> io::Result<Self> {
        // SAFETY: inotify_init1 takes flags only and returns a new descriptor or -1.
        let raw = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: raw is a new descriptor owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let path = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        // SAFETY: a valid inotify descriptor and a NUL-terminated path.
        let wd = unsafe {
            libc::inotify_add_watch(
                fd.as_raw_fd(),
                path.as_ptr(),
                libc::IN_MOVED_TO | libc::IN_DELETE,
            )
        };
        if wd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self { fd })
    }

    /// Waits up to `timeout` for a change `wanted` accepts (a file's name, and whether
    /// it was removed rather than renamed in), or for `other` to become readable (it
    /// is not read here). Other changes are read and passed over.
    pub(crate) fn wait(
        &self,
        timeout: Duration,
        other: Option<RawFd>,
        wanted: impl Fn(&str, bool) -> bool,
    ) -> Wake {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match wait_readable(&[Some(self.fd.as_raw_fd()), other], left) {
                Some(0) if self.drain(&wanted) => return Wake::File,
                Some(0) => {}
                Some(_) => return Wake::Other,
                None => return Wake::Timeout,
            }
        }
    }

    /// Reads every queued event; whether `wanted` accepted one.
    fn drain(&self, wanted: &impl Fn(&str, bool) -> bool) -> bool {
        // Room for many events: each is a 16-byte header and a padded name.
        let mut buf = [0u8; 4096];
        let mut hit = false;
        loop {
            // SAFETY: reads at most buf.len() bytes into buf from our descriptor.
            let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                return hit;
            }
            hit |= events(&buf[..n as usize]).any(|(name, removed)| wanted(name, removed));
        }
    }
}

/// The inotify events in `bytes` (whole events, as read(2) returns them: `struct
/// inotify_event` followed by `len` bytes of NUL-padded name): each file's name, and
/// whether it was removed.
fn events(bytes: &[u8]) -> impl Iterator<Item = (&str, bool)> {
    const HEADER: usize = std::mem::size_of::<libc::inotify_event>();
    let field = |at: usize| -> Option<u32> {
        Some(u32::from_ne_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
    };
    let mut at = 0;
    std::iter::from_fn(move || {
        while at + HEADER <= bytes.len() {
            // The header: wd, mask, cookie, name length.
            let mask = field(at + 4)?;
            let len = field(at + 12)? as usize;
            let name = bytes.get(at + HEADER..at + HEADER + len)?;
            at += HEADER + len;
            let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
            if let Ok(s) = std::str::from_utf8(&name[..end]) {
                if !s.is_empty() {
                    return Some((s, mask & libc::IN_DELETE != 0));
                }
            }
        }
        None
    })
}

/// Waits up to `timeout` for one of `fds` to become readable; its index, or None at
/// the timeout. `None` entries are skipped.
pub(crate) fn wait_readable(fds: &[Option<i32>], timeout: Duration) -> Option<usize> {
    let mut polls: Vec<libc::pollfd> = fds
        .iter()
        .map(|fd| libc::pollfd {
            fd: fd.unwrap_or(-1),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    // Rounded up, so that a wait of under a millisecond still waits.
    let ms = timeout.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32;
    // SAFETY: a valid array of pollfds (negative fds are ignored by poll).
    let n = unsafe { libc::poll(polls.as_mut_ptr(), polls.len() as libc::nfds_t, ms) };
    if n <= 0 {
        return None;
    }
    polls.iter().position(|p| p.revents != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(tag: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("tv-watch-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn a_wanted_file_renamed_in_or_removed_wakes_the_watch_and_others_do_not() {
        let d = temp_dir("rename");
        let watch = DirWatch::new(&d).unwrap();
        let wanted = |name: &str, _removed: bool| name.starts_with("vm-");
        // Nothing happened: the time runs out.
        assert_eq!(
            watch.wait(Duration::from_millis(20), None, wanted),
            Wake::Timeout
        );
        // Another file renamed in is read and passed over.
        std::fs::write(d.join("tmp"), "x").unwrap();
        std::fs::rename(d.join("tmp"), d.join("pool.json")).unwrap();
        assert_eq!(
            watch.wait(Duration::from_millis(20), None, wanted),
            Wake::Timeout
        );
        // A wanted one wakes it, whether renamed in or removed, and says which.
        std::fs::write(d.join("tmp"), "x").unwrap();
        std::fs::rename(d.join("tmp"), d.join("vm-1.json")).unwrap();
        assert_eq!(watch.wait(Duration::from_secs(5), None, wanted), Wake::File);
        let only_removed = |name: &str, removed: bool| wanted(name, removed) && removed;
        std::fs::write(d.join("vm-2.json"), "x").unwrap();
        assert_eq!(
            watch.wait(Duration::from_millis(20), None, only_removed),
            Wake::Timeout,
            "written in place, not renamed: no event it asks for"
        );
        std::fs::remove_file(d.join("vm-1.json")).unwrap();
        assert_eq!(
            watch.wait(Duration::from_secs(5), None, only_removed),
            Wake::File
        );
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn the_other_descriptor_wakes_the_watch() {
        let d = temp_dir("other");
        let watch = DirWatch::new(&d).unwrap();
        let mut fds = [0i32; 2];
        // SAFETY: pipe fills the two-element array.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        // SAFETY: both are new descriptors owned by nobody else.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // SAFETY: writes one byte from a valid buffer to our pipe.
        let written = unsafe { libc::write(write.as_raw_fd(), [1u8].as_ptr().cast(), 1) };
        assert_eq!(written, 1);
        let woke = watch.wait(Duration::from_secs(5), Some(read.as_raw_fd()), |_, _| true);
        assert_eq!(woke, Wake::Other);
        std::fs::remove_dir_all(&d).unwrap();
    }
}
