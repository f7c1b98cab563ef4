//! Errors of the tier backends: one enum for opening, one for I/O.

use super::{IoOp, IoRequest};
use std::path::PathBuf;
use std::time::Duration;

/// Why a backend could not be opened or connected.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The file or device could not be opened.
    #[error("cannot open tier file {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The file system refuses O_DIRECT (tmpfs, some FUSE/overlay setups).
    #[error(
        "{path}: the file system does not support O_DIRECT ({source}); put the tier file on a disk-backed file system such as ext4 or xfs, or use a block device"
    )]
    DirectIoUnsupported {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Reserving the file's space failed (usually: disk full).
    #[error("cannot reserve {bytes} bytes for tier file {path}: {source}")]
    Reserve {
        path: PathBuf,
        bytes: u64,
        source: std::io::Error,
    },
    /// The block device or export is smaller than the capacity asked for.
    #[error("{what} holds {available} pages but the tier needs {wanted}")]
    TooSmall {
        what: String,
        available: u64,
        wanted: u64,
    },
    /// Another process holds the tier file (another VM given the same tier files).
    #[error(
        "tier file {path} is in use by another process (pid {pid}): two VMs must not share tier files; give each its own (its own TIERVISOR_WORKDIR)"
    )]
    InUse { path: PathBuf, pid: i32 },
    /// A capacity of zero pages was asked for.
    #[error("a tier needs a capacity of at least one page")]
    ZeroCapacity,
    /// io_uring could not be set up.
    #[error(
        "cannot set up io_uring: {0} (is io_uring disabled by sysctl kernel.io_uring_disabled?)"
    )]
    Uring(std::io::Error),
    /// No NBD server answered at the address.
    #[error("cannot connect to NBD server at {address}: {source}")]
    Connect {
        address: String,
        source: std::io::Error,
    },
    /// The peer does not speak the NBD fixed-newstyle protocol as expected.
    #[error("NBD handshake with {address} failed: {reason}")]
    Handshake { address: String, reason: String },
    /// The server refused NBD_OPT_GO for the export.
    #[error("NBD server at {address} refused export '{export}': {reason}")]
    ExportRefused {
        address: String,
        export: String,
        reason: String,
    },
    /// The backend's event fds (eventfd, timerfd, epoll) could not be created.
    #[error("cannot create the backend's notification fds: {0} (out of file descriptors?)")]
    Resources(std::io::Error),
    /// A thread could not be started.
    #[error("cannot start the NBD reply reader thread: {0}")]
    Thread(std::io::Error),
}

/// Why an I/O request, trim or flush failed.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The slot is beyond the backend's capacity.
    #[error("slot {slot} is outside the tier's capacity of {capacity} pages")]
    SlotOutOfRange { slot: u64, capacity: u64 },
    /// The kernel reported an error for the transfer.
    #[error("{op} of slot {slot} failed: {source}")]
    Io {
        op: IoOp,
        slot: u64,
        source: std::io::Error,
    },
    /// Fewer bytes than a page were transferred (e.g. a block device shorter
    /// than it claimed, or a file truncated under us).
    #[error("{op} of slot {slot} transferred {bytes} of 4096 bytes")]
    ShortTransfer { op: IoOp, slot: u64, bytes: usize },
    /// The NBD server answered the command with an error.
    #[error("NBD server failed {op} at offset {offset}: {errno_name} (errno {errno})")]
    Remote {
        op: String,
        offset: u64,
        errno: u32,
        errno_name: &'static str,
    },
    /// The connection to the NBD server is gone; the backend is unusable.
    #[error("connection to NBD server {address} lost: {reason}")]
    ConnectionLost { address: String, reason: String },
    /// The NBD export does not accept writes or trims.
    #[error("NBD export is read-only; cannot {op}")]
    ReadOnly { op: String },
    /// A blocking helper was called with requests outstanding.
    #[error(
        "backend has {outstanding} requests outstanding; the blocking helpers need an idle backend"
    )]
    Busy { outstanding: usize },
    /// A blocking operation got no answer in time.
    #[error("no answer from the backend within {waited:?}")]
    Timeout { waited: Duration },
    /// fdatasync / discard failed.
    #[error("{op} failed: {source}")]
    Sync {
        op: &'static str,
        source: std::io::Error,
    },
}

impl BackendError {
    /// The same error again, for each page of a transfer that failed as a whole
    /// (`std::io::Error` is not `Clone`; the OS error code, or the kind and message,
    /// carry over).
    pub(crate) fn duplicate(&self) -> BackendError {
        let io = |e: &std::io::Error| match e.raw_os_error() {
            Some(code) => std::io::Error::from_raw_os_error(code),
            None => std::io::Error::new(e.kind(), e.to_string()),
        };
        match self {
            BackendError::SlotOutOfRange { slot, capacity } => BackendError::SlotOutOfRange {
                slot: *slot,
                capacity: *capacity,
            },
            BackendError::Io { op, slot, source } => BackendError::Io {
                op: *op,
                slot: *slot,
                source: io(source),
            },
            BackendError::ShortTransfer { op, slot, bytes } => BackendError::ShortTransfer {
                op: *op,
                slot: *slot,
                bytes: *bytes,
            },
            BackendError::Remote {
                op,
                offset,
                errno,
                errno_name,
            } => BackendError::Remote {
                op: op.clone(),
                offset: *offset,
                errno: *errno,
                errno_name,
            },
            BackendError::ConnectionLost { address, reason } => BackendError::ConnectionLost {
                address: address.clone(),
                reason: reason.clone(),
            },
            BackendError::ReadOnly { op } => BackendError::ReadOnly { op: op.clone() },
            BackendError::Busy { outstanding } => BackendError::Busy {
                outstanding: *outstanding,
            },
            BackendError::Timeout { waited } => BackendError::Timeout { waited: *waited },
            BackendError::Sync { op, source } => BackendError::Sync {
                op,
                source: io(source),
            },
        }
    }
}

/// A request refused at submission; carries the request back so its buffer is
/// not lost.
#[derive(Debug, thiserror::Error)]
#[error("request refused: {error}")]
pub struct SubmitError {
    /// Why.
    pub error: BackendError,
    /// The refused request, unchanged.
    pub request: Box<IoRequest>,
}
