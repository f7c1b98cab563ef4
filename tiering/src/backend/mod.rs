//! Tier storage backends (tiers 2-5): page stores addressed by slot.
//!
//! A backend holds `capacity_pages()` pages of 4 KiB, each addressed by a slot
//! number. I/O is asynchronous: [`TierBackend::submit`] queues a request,
//! [`TierBackend::poll`] / [`TierBackend::wait`] hand back completions, each
//! carrying the caller's `tag` and the page buffer. One owner drives a backend
//! (it is `Send`, not `Sync`).
//!
//! Priorities: every backend keeps one queue per [`IoPriority`] and a bounded
//! number of requests in flight per class ([`QueueLimits`]). A demand request is
//! issued to the device at once (up to its own, larger limit); prefetches and
//! write-backs beyond their small limits wait in user space, so a demand read
//! never queues behind a long line of write-backs, only behind at most
//! `prefetch + writeback` requests already at the device.
//!
//! Implementations: [`FileBackend`] (a file or block device, O_DIRECT through
//! io_uring) and [`NbdBackend`] (an NBD export over a unix socket or TCP). Both
//! can carry a [`DeviceProfile`] that makes one disk behave like NVMe, a SATA
//! SSD or an HDD. See `docs/tier-backends.md`.

mod buf;
mod error;
mod file;
mod nbd;
mod notify;
mod profile;
mod sched;

pub use buf::{PageBuf, PagePool};
pub use error::{BackendError, OpenError, SubmitError};
pub use file::{FileBackend, FileConfig};
pub use nbd::{NbdAddress, NbdBackend, NbdConfig};
pub(crate) use notify::EventFd;
pub use profile::{DeviceProfile, ProfileError};
pub use sched::{QueueLimits, MAX_RUN_PAGES};

use std::time::Duration;

/// Size of one page and of every transfer, in bytes.
pub const PAGE_SIZE: usize = 4096;

/// What a request does with its slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IoOp {
    /// Fill the request's buffer from the slot.
    Read,
    /// Store the request's buffer in the slot.
    Write,
}

impl std::fmt::Display for IoOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            IoOp::Read => "read",
            IoOp::Write => "write",
        })
    }
}

/// Scheduling class of a request. Lower classes never hold up higher ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum IoPriority {
    /// A vCPU is stalled on this page: issued before anything queued.
    Demand = 0,
    /// Predicted need: issued after queued demand requests.
    Prefetch = 1,
    /// Eviction of a dirty page: issued last.
    Writeback = 2,
}

impl IoPriority {
    /// All classes, highest first.
    pub const ALL: [IoPriority; 3] = [
        IoPriority::Demand,
        IoPriority::Prefetch,
        IoPriority::Writeback,
    ];

    fn index(self) -> usize {
        self as usize
    }
}

/// One page transfer.
#[derive(Debug)]
pub struct IoRequest {
    /// Read or write.
    pub op: IoOp,
    /// Page slot within the backend, `0..capacity_pages()`.
    pub slot: u64,
    /// The page: filled by a read, stored by a write; handed back in the completion.
    pub buf: PageBuf,
    /// Scheduling class.
    pub priority: IoPriority,
    /// Caller's cookie, returned unchanged in the completion.
    pub tag: u64,
}

/// The outcome of one [`IoRequest`].
#[derive(Debug)]
pub struct IoCompletion {
    /// The request's tag.
    pub tag: u64,
    /// The request's operation, slot and class (for bookkeeping without a lookup).
    pub op: IoOp,
    /// The request's slot.
    pub slot: u64,
    /// The request's class.
    pub priority: IoPriority,
    /// `Ok` when the whole page was transferred.
    pub result: Result<(), BackendError>,
    /// The request's buffer (holds the page after a successful read).
    pub buf: PageBuf,
    /// From `submit` to delivery, queueing and emulated device time included.
    pub latency_ns: u64,
}

/// What a backend has done so far: requests taken, and the transfers they left in
/// (fewer when requests for adjacent slots merged).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BackendStats {
    /// Requests submitted and accepted.
    pub requests: u64,
    /// Transfers started at the device: one per request, or one per merged run.
    pub transfers: u64,
}

/// A page store with asynchronous, prioritised I/O.
pub trait TierBackend: Send {
    /// Short description for logs and errors, e.g. `file:/var/tier2.img (nvme)`.
    fn describe(&self) -> String;

    /// Number of page slots.
    fn capacity_pages(&self) -> u64;

    /// Queue a request. Fails at once only for a request that can never succeed
    /// (slot out of range, write to a read-only export, backend closed); the
    /// request comes back inside the error. Everything else, device errors
    /// included, is reported by its completion.
    fn submit(&mut self, req: IoRequest) -> Result<(), SubmitError>;

    /// Append the completions available now to `out`, without blocking.
    /// Returns how many were appended.
    fn poll(&mut self, out: &mut Vec<IoCompletion>) -> usize;

    /// Like [`poll`](Self::poll), but sleeps (no busy loop) until at least one
    /// completion is available, nothing is outstanding, or `timeout` passes.
    fn wait(&mut self, out: &mut Vec<IoCompletion>, timeout: Duration) -> usize;

    /// Requests submitted whose completion has not been delivered yet.
    fn outstanding(&self) -> usize;

    /// Raise a submitted request to [`IoPriority::Demand`] (a vCPU now waits
    /// for a page whose prefetch is still queued). Returns `true` if the
    /// request was still waiting in a lower-class queue and has been moved
    /// ahead; `false` if it is already at the device, done, or unknown.
    fn expedite(&mut self, tag: u64) -> bool;

    /// An fd that polls readable (level-triggered, for poll/epoll) when
    /// [`poll`](Self::poll) may have completions to hand back, so the owner can
    /// sleep on it together with its other fds. `poll` resets it; spurious
    /// wake-ups are possible, lost ones are not.
    fn notify_fd(&self) -> std::os::fd::BorrowedFd<'_>;

    /// Tell the device the slot's content is no longer needed (discard / punch
    /// a hole). Synchronous; a device without discard support treats it as a no-op.
    /// Do not trim a slot with a write in flight.
    fn trim(&mut self, slot: u64) -> Result<(), BackendError>;

    /// Make every completed write durable. Synchronous.
    fn flush(&mut self) -> Result<(), BackendError>;

    /// Hold prefetches and write-backs submitted from now on until
    /// [`unplug`](Self::unplug) (or the next `poll` / `wait`), so that requests of
    /// one class and operation for adjacent slots leave as one transfer of up to
    /// [`MAX_RUN_PAGES`]. Each still completes on its own. Demand requests are never
    /// held. Merging also happens without a plug, among requests that wait in their
    /// queue behind the in-flight limit.
    fn plug(&mut self);

    /// Issue what [`plug`](Self::plug) held back.
    fn unplug(&mut self);

    /// Requests and transfers so far.
    fn stats(&self) -> BackendStats;
}

/// Blocking read of one slot, for tests and tools. Needs an idle backend
/// (nothing outstanding), so no other request's completion is swallowed.
pub fn read_page(
    backend: &mut dyn TierBackend,
    slot: u64,
    buf: PageBuf,
) -> Result<PageBuf, BackendError> {
    blocking(backend, IoOp::Read, slot, buf)
}

/// Blocking write of one slot; see [`read_page`].
pub fn write_page(
    backend: &mut dyn TierBackend,
    slot: u64,
    buf: PageBuf,
) -> Result<PageBuf, BackendError> {
    blocking(backend, IoOp::Write, slot, buf)
}

/// How long the blocking helpers wait before giving up (an HDD profile with a
/// deep queue stays far below this; a hung NBD server does not).
const BLOCKING_TIMEOUT: Duration = Duration::from_secs(30);

fn blocking(
    backend: &mut dyn TierBackend,
    op: IoOp,
    slot: u64,
    buf: PageBuf,
) -> Result<PageBuf, BackendError> {
    if backend.outstanding() != 0 {
        return Err(BackendError::Busy {
            outstanding: backend.outstanding(),
        });
    }
    let req = IoRequest {
        op,
        slot,
        buf,
        priority: IoPriority::Demand,
        tag: 0,
    };
    backend.submit(req).map_err(|e| e.error)?;
    let mut out = Vec::with_capacity(1);
    let started = std::time::Instant::now();
    while out.is_empty() {
        let left = BLOCKING_TIMEOUT.saturating_sub(started.elapsed());
        if left.is_zero() {
            return Err(BackendError::Timeout {
                waited: BLOCKING_TIMEOUT,
            });
        }
        backend.wait(&mut out, left);
    }
    let done = out.pop().expect("one completion");
    done.result.map(|()| done.buf)
}

#[cfg(test)]
pub(crate) mod tests;
