//! A pollable fd per backend so an owner thread can sleep in one poll()/epoll
//! on its other fds (userfaultfd, ...) and on tier completions together.
//!
//! It is an epoll fd watching two fds: the engine's eventfd (signalled by the
//! kernel for each io_uring completion, or by the NBD reader thread per reply)
//! and a timerfd armed for the next completion that an emulated device profile
//! holds back. Readable means `poll()` may have something; `poll()` resets it.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::time::Duration;

/// An eventfd that engines signal when a completion arrives.
pub(crate) struct EventFd(OwnedFd);

impl EventFd {
    pub(crate) fn new() -> io::Result<Self> {
        // SAFETY: plain syscall; the returned fd is checked and then owned.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh descriptor nobody else owns.
        Ok(Self(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// Wake whoever polls the notifier (used by the NBD reader thread).
    pub(crate) fn signal(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64 to our eventfd. A full
        // counter (EAGAIN) already means "readable", so errors are ignored.
        let _ = unsafe { libc::write(self.0.as_raw_fd(), (&one as *const u64).cast(), 8) };
    }

    /// Reset to not-readable.
    pub(crate) fn clear(&self) {
        drain(self.0.as_fd());
    }

    pub(crate) fn raw(&self) -> i32 {
        self.0.as_raw_fd()
    }
}

fn drain(fd: BorrowedFd<'_>) {
    let mut count: u64 = 0;
    // SAFETY: reads at most 8 bytes into a live u64; the fd is non-blocking.
    let _ = unsafe { libc::read(fd.as_raw_fd(), (&mut count as *mut u64).cast(), 8) };
}

/// The epoll fd plus the profile timer.
pub(crate) struct Notifier {
    epoll: OwnedFd,
    timer: OwnedFd,
}

impl Notifier {
    /// Watch `event_fd` (if the engine has one) and an internal timer.
    pub(crate) fn new(event_fds: &[i32]) -> io::Result<Self> {
        // SAFETY: plain syscalls; each returned fd is checked and then owned.
        let epoll = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if epoll < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fresh descriptor nobody else owns.
        let epoll = unsafe { OwnedFd::from_raw_fd(epoll) };
        // SAFETY: as above.
        let timer = unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            )
        };
        if timer < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fresh descriptor nobody else owns.
        let timer = unsafe { OwnedFd::from_raw_fd(timer) };
        for &fd in event_fds.iter().chain([&timer.as_raw_fd()]) {
            let mut ev = libc::epoll_event {
                events: libc::EPOLLIN as u32,
                u64: fd as u64,
            };
            // SAFETY: both fds are open; `ev` is a live epoll_event.
            if unsafe { libc::epoll_ctl(epoll.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut ev) } < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(Self { epoll, timer })
    }

    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.epoll.as_fd()
    }

    /// Fire after `after` (zero: at once); `None` disarms.
    pub(crate) fn arm(&self, after: Option<Duration>) {
        let value = match after {
            // A zero it_value would disarm: use 1 ns for "now".
            Some(d) => libc::timespec {
                tv_sec: d.as_secs() as libc::time_t,
                tv_nsec: libc::c_long::from(d.subsec_nanos().max(u32::from(d.as_secs() == 0))),
            },
            None => libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
        };
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: value,
        };
        // SAFETY: our timerfd; `spec` is live; the old value is not asked for.
        let _ = unsafe {
            libc::timerfd_settime(self.timer.as_raw_fd(), 0, &spec, std::ptr::null_mut())
        };
    }

    /// Sleep until the timer fires (or `cap` passes, as a safety net).
    pub(crate) fn wait_timer(&self, cap: Duration) {
        let mut pfd = libc::pollfd {
            fd: self.timer.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = i32::try_from(cap.as_millis().max(1)).unwrap_or(i32::MAX);
        // SAFETY: one live pollfd for the duration of the call.
        let _ = unsafe { libc::poll(&mut pfd, 1, ms) };
    }

    /// Reset the timer's readable state (it is re-armed after each poll).
    pub(crate) fn clear_timer(&self) {
        drain(self.timer.as_fd());
    }
}
