//! NBD backend (tier 5): a client for a real NBD server (qemu-nbd, nbdkit,
//! nbd-server) over a unix socket or TCP.
//!
//! Requests go out on the owner's thread; a reader thread matches simple
//! replies to requests by handle (many in flight), reads READ payloads into
//! the request's page buffer and passes completions back over a channel. If
//! the connection drops, every request in flight completes with
//! [`BackendError::ConnectionLost`] and later submissions are refused.

mod proto;
#[cfg(test)]
mod tests;

use super::notify::EventFd;
use super::sched::{delegate_tier_backend, Engine, EngineDone, Scheduled};
use super::{BackendError, DeviceProfile, IoOp, OpenError, PageBuf, QueueLimits, PAGE_SIZE};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Where the NBD server listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NbdAddress {
    /// A unix domain socket path (`qemu-nbd -k PATH`).
    Unix(PathBuf),
    /// A TCP address (`qemu-nbd -b 127.0.0.1 -p PORT`).
    Tcp(SocketAddr),
}

impl std::fmt::Display for NbdAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NbdAddress::Unix(p) => write!(f, "unix:{}", p.display()),
            NbdAddress::Tcp(a) => write!(f, "tcp:{a}"),
        }
    }
}

impl std::str::FromStr for NbdAddress {
    type Err = String;
    /// `unix:/path`, `/path` (a unix socket), `tcp:HOST:PORT` or `HOST:PORT`.
    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(path) = s.strip_prefix("unix:") {
            return Ok(NbdAddress::Unix(path.into()));
        }
        if s.starts_with('/') {
            return Ok(NbdAddress::Unix(s.into()));
        }
        let hostport = s.strip_prefix("tcp:").unwrap_or(s);
        hostport.parse().map(NbdAddress::Tcp).map_err(|_| {
            format!("bad NBD address '{s}': use unix:/path/to.sock or tcp:127.0.0.1:10809")
        })
    }
}

/// How to connect an [`NbdBackend`].
#[derive(Clone, Debug)]
pub struct NbdConfig {
    /// Server address.
    pub address: NbdAddress,
    /// Export name to ask for with NBD_OPT_GO.
    pub export: String,
    /// Slots to use; `None` uses the whole export. More than the export holds is an error.
    pub capacity_pages: Option<u64>,
    /// Emulated network/device profile on top of the real link; usually `None`.
    pub profile: Option<DeviceProfile>,
    /// In-flight limits per class.
    pub limits: QueueLimits,
    /// How long connecting and the handshake may take.
    pub connect_timeout: Duration,
}

impl NbdConfig {
    /// A config with default limits, no profile, the whole export.
    pub fn new(address: NbdAddress, export: impl Into<String>) -> Self {
        Self {
            address,
            export: export.into(),
            capacity_pages: None,
            profile: None,
            limits: QueueLimits::default(),
            connect_timeout: Duration::from_secs(5),
        }
    }
}

/// A tier on an NBD export. See the module docs of [`super`].
pub struct NbdBackend {
    inner: Scheduled<NbdLink>,
}

delegate_tier_backend!(NbdBackend);

impl NbdBackend {
    /// Connect, negotiate the export with NBD_OPT_GO and start the reply reader.
    pub fn connect(config: &NbdConfig) -> Result<Self, OpenError> {
        let link = NbdLink::connect(config)?;
        Ok(Self {
            inner: Scheduled::new(link, config.limits, config.profile.as_ref())?,
        })
    }

    /// The export's size in bytes as the server announced it.
    pub fn export_size(&self) -> u64 {
        self.inner.engine().export_size
    }
}

enum Stream {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Stream {
    fn connect(address: &NbdAddress, timeout: Duration) -> std::io::Result<Self> {
        let s = match address {
            NbdAddress::Unix(p) => Stream::Unix(UnixStream::connect(p)?),
            NbdAddress::Tcp(a) => {
                let t = TcpStream::connect_timeout(a, timeout)?;
                // Each request is one small write; do not let Nagle hold it back.
                t.set_nodelay(true)?;
                Stream::Tcp(t)
            }
        };
        s.set_timeouts(Some(timeout), Some(timeout))?;
        Ok(s)
    }

    fn set_timeouts(&self, read: Option<Duration>, write: Option<Duration>) -> std::io::Result<()> {
        match self {
            Stream::Unix(s) => {
                s.set_read_timeout(read)?;
                s.set_write_timeout(write)
            }
            Stream::Tcp(s) => {
                s.set_read_timeout(read)?;
                s.set_write_timeout(write)
            }
        }
    }

    fn try_clone(&self) -> std::io::Result<Self> {
        Ok(match self {
            Stream::Unix(s) => Stream::Unix(s.try_clone()?),
            Stream::Tcp(s) => Stream::Tcp(s.try_clone()?),
        })
    }

    fn shutdown(&self) {
        let _ = match self {
            Stream::Unix(s) => s.shutdown(Shutdown::Both),
            Stream::Tcp(s) => s.shutdown(Shutdown::Both),
        };
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Unix(s) => s.read(buf),
            Stream::Tcp(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Stream::Unix(s) => s.write(buf),
            Stream::Tcp(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A request the server has not answered yet.
enum Pending {
    Page { op: IoOp, slot: u64, buf: PageBuf },
    Control,
}

struct Table {
    pending: HashMap<u64, Pending>,
    /// Set once the connection is gone; no request is added after that.
    dead: Option<String>,
}

struct Reply {
    handle: u64,
    result: Result<(), BackendError>,
    buf: Option<PageBuf>,
}

/// Handles of trim/flush have the top bit set, page requests use the scheduler's token.
const CONTROL_HANDLE: u64 = 1 << 63;
/// How long a trim or flush may wait for its reply.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(30);

pub(crate) struct NbdLink {
    address: String,
    export: String,
    stream: Stream,
    table: Arc<Mutex<Table>>,
    replies: Receiver<Reply>,
    reader: Option<JoinHandle<()>>,
    export_size: u64,
    flags: u16,
    capacity: u64,
    stash: Vec<EngineDone>,
    /// Signalled by the reader thread after each reply it passes on.
    event: Arc<EventFd>,
    send_buf: Vec<u8>,
    next_control: u64,
}

impl NbdLink {
    fn connect(config: &NbdConfig) -> Result<Self, OpenError> {
        let address = config.address.to_string();
        let mut stream =
            Stream::connect(&config.address, config.connect_timeout).map_err(|source| {
                OpenError::Connect {
                    address: address.clone(),
                    source,
                }
            })?;
        let info = proto::handshake(&mut stream, &config.export).map_err(|e| match e {
            proto::HandshakeError::Protocol(reason) => OpenError::Handshake {
                address: address.clone(),
                reason,
            },
            proto::HandshakeError::Refused(reason) => OpenError::ExportRefused {
                address: address.clone(),
                export: config.export.clone(),
                reason,
            },
        })?;
        if info.min_block as usize > PAGE_SIZE {
            return Err(OpenError::Handshake {
                address,
                reason: format!(
                    "the export's minimum block size {} exceeds a 4 KiB page",
                    info.min_block
                ),
            });
        }
        let available = info.size / PAGE_SIZE as u64;
        let capacity = config.capacity_pages.unwrap_or(available);
        if capacity == 0 {
            return Err(OpenError::ZeroCapacity);
        }
        if capacity > available {
            return Err(OpenError::TooSmall {
                what: format!("NBD export '{}' at {address}", config.export),
                available,
                wanted: capacity,
            });
        }
        // The reader waits for replies as long as it takes; a dead server shows as EOF.
        stream
            .set_timeouts(None, Some(CONTROL_TIMEOUT))
            .map_err(|source| OpenError::Connect {
                address: address.clone(),
                source,
            })?;
        let reader_stream = stream.try_clone().map_err(|source| OpenError::Connect {
            address: address.clone(),
            source,
        })?;
        let table = Arc::new(Mutex::new(Table {
            pending: HashMap::new(),
            dead: None,
        }));
        let (tx, rx) = mpsc::channel();
        let event = Arc::new(EventFd::new().map_err(OpenError::Resources)?);
        let reader = {
            let table = table.clone();
            let address = address.clone();
            let event = event.clone();
            std::thread::Builder::new()
                .name("nbd-reader".into())
                .spawn(move || read_replies(reader_stream, &table, &Wake { tx, event }, &address))
                .map_err(OpenError::Thread)?
        };
        Ok(Self {
            address,
            export: config.export.clone(),
            stream,
            table,
            replies: rx,
            reader: Some(reader),
            export_size: info.size,
            flags: info.flags,
            capacity,
            stash: Vec::new(),
            send_buf: Vec::with_capacity(proto::REQUEST_LEN + PAGE_SIZE),
            next_control: 0,
            event,
        })
    }

    fn lost(&self, reason: impl Into<String>) -> BackendError {
        BackendError::ConnectionLost {
            address: self.address.clone(),
            reason: reason.into(),
        }
    }

    /// Register `pending` under `handle`, then send `self.send_buf`. On a
    /// failed send the request is taken back (unless the reader already failed it).
    fn send(
        &mut self,
        handle: u64,
        pending: Pending,
    ) -> Result<(), (BackendError, Option<Pending>)> {
        {
            let mut table = self.table.lock().expect("nbd table lock");
            if let Some(reason) = &table.dead {
                let err = self.lost(reason.clone());
                return Err((err, Some(pending)));
            }
            table.pending.insert(handle, pending);
        }
        if let Err(e) = self.stream.write_all(&self.send_buf) {
            // A half-sent request leaves the stream unusable: close it so the
            // reader fails everything else in flight too.
            self.stream.shutdown();
            let taken = self
                .table
                .lock()
                .expect("nbd table lock")
                .pending
                .remove(&handle);
            return match taken {
                Some(p) => Err((self.lost(format!("sending a request failed: {e}")), Some(p))),
                None => Ok(()), // the reader has already completed it with an error
            };
        }
        Ok(())
    }

    /// Send a trim or flush and wait for its reply, stashing page replies.
    fn control(
        &mut self,
        kind: u16,
        offset: u64,
        length: u32,
        what: &'static str,
    ) -> Result<(), BackendError> {
        let handle = CONTROL_HANDLE | self.next_control;
        self.next_control += 1;
        self.send_buf.clear();
        self.send_buf
            .extend_from_slice(&proto::request(kind, handle, offset, length));
        self.send(handle, Pending::Control).map_err(|(e, _)| e)?;
        let deadline = Instant::now() + CONTROL_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.replies.recv_timeout(left) {
                Ok(r) if r.handle == handle => {
                    return r.result.map_err(|e| match e {
                        BackendError::Remote {
                            errno, errno_name, ..
                        } => BackendError::Remote {
                            op: what.to_string(),
                            offset,
                            errno,
                            errno_name,
                        },
                        other => other,
                    })
                }
                Ok(r) => self.stash_reply(r),
                Err(RecvTimeoutError::Timeout) => {
                    return Err(BackendError::Timeout {
                        waited: CONTROL_TIMEOUT,
                    })
                }
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(self.lost("reply reader stopped"))
                }
            }
        }
    }

    fn stash_reply(&mut self, r: Reply) {
        if let Some(buf) = r.buf {
            self.stash.push(EngineDone {
                token: r.handle,
                result: r.result,
                buf,
            });
        }
    }
}

/// The reader thread: match replies to requests until the stream ends.
/// The reader's side of the reply channel: send, then wake the owner's poll.
struct Wake {
    tx: Sender<Reply>,
    event: Arc<EventFd>,
}

impl Wake {
    fn send(&self, reply: Reply) -> Result<(), mpsc::SendError<Reply>> {
        let sent = self.tx.send(reply);
        self.event.signal();
        sent
    }
}

fn read_replies(mut stream: Stream, table: &Mutex<Table>, tx: &Wake, address: &str) {
    let reason = loop {
        let mut header = [0u8; proto::REPLY_LEN];
        if let Err(e) = stream.read_exact(&mut header) {
            break match e.kind() {
                std::io::ErrorKind::UnexpectedEof => "the server closed the connection".to_string(),
                _ => format!("reading a reply failed: {e}"),
            };
        }
        let (magic, error, handle) = proto::parse_reply(&header);
        if magic != proto::SIMPLE_REPLY_MAGIC {
            break if magic == proto::STRUCTURED_REPLY_MAGIC {
                "the server sent a structured reply, which was not negotiated".to_string()
            } else {
                format!("bad reply magic {magic:#x}: the stream is out of step")
            };
        }
        let Some(pending) = table
            .lock()
            .expect("nbd table lock")
            .pending
            .remove(&handle)
        else {
            break format!("reply for unknown handle {handle:#x}");
        };
        let remote = |op: String, offset: u64| BackendError::Remote {
            op,
            offset,
            errno: error,
            errno_name: proto::errno_name(error),
        };
        let reply = match pending {
            Pending::Control => Reply {
                handle,
                result: if error == 0 {
                    Ok(())
                } else {
                    Err(remote("command".into(), 0))
                },
                buf: None,
            },
            Pending::Page { op, slot, buf } if error != 0 => Reply {
                handle,
                result: Err(remote(op.to_string(), slot * PAGE_SIZE as u64)),
                buf: Some(buf),
            },
            Pending::Page {
                op: IoOp::Read,
                slot,
                mut buf,
            } => {
                if let Err(e) = stream.read_exact(&mut buf) {
                    let lost = BackendError::ConnectionLost {
                        address: address.to_string(),
                        reason: format!("short read: the data of slot {slot} was cut off ({e})"),
                    };
                    let _ = tx.send(Reply {
                        handle,
                        result: Err(lost),
                        buf: Some(buf),
                    });
                    break "the connection ended in the middle of a read reply".to_string();
                }
                Reply {
                    handle,
                    result: Ok(()),
                    buf: Some(buf),
                }
            }
            Pending::Page {
                op: IoOp::Write,
                buf,
                ..
            } => Reply {
                handle,
                result: Ok(()),
                buf: Some(buf),
            },
        };
        if tx.send(reply).is_err() {
            break "backend closed".to_string();
        }
    };
    // Fail everything still in flight; nothing is added once `dead` is set.
    let orphans: Vec<(u64, Pending)> = {
        let mut t = table.lock().expect("nbd table lock");
        t.dead = Some(reason.clone());
        t.pending.drain().collect()
    };
    for (handle, pending) in orphans {
        let err = BackendError::ConnectionLost {
            address: address.to_string(),
            reason: reason.clone(),
        };
        let buf = match pending {
            Pending::Page { buf, .. } => Some(buf),
            Pending::Control => None,
        };
        let _ = tx.send(Reply {
            handle,
            result: Err(err),
            buf,
        });
    }
}

impl Engine for NbdLink {
    fn describe(&self) -> String {
        format!("nbd:{}/{}", self.address, self.export)
    }

    fn capacity_pages(&self) -> u64 {
        self.capacity
    }

    fn check(&self, op: IoOp) -> Result<(), BackendError> {
        if op == IoOp::Write && self.flags & proto::TRANS_READ_ONLY != 0 {
            return Err(BackendError::ReadOnly { op: "write".into() });
        }
        if let Some(reason) = &self.table.lock().expect("nbd table lock").dead {
            return Err(self.lost(reason.clone()));
        }
        Ok(())
    }

    fn start(
        &mut self,
        token: u64,
        op: IoOp,
        slot: u64,
        buf: PageBuf,
    ) -> Result<(), (BackendError, PageBuf)> {
        let offset = slot * PAGE_SIZE as u64;
        self.send_buf.clear();
        let kind = if op == IoOp::Read {
            proto::CMD_READ
        } else {
            proto::CMD_WRITE
        };
        self.send_buf
            .extend_from_slice(&proto::request(kind, token, offset, PAGE_SIZE as u32));
        if op == IoOp::Write {
            self.send_buf.extend_from_slice(&buf);
        }
        self.send(token, Pending::Page { op, slot, buf })
            .map_err(|(e, p)| match p {
                Some(Pending::Page { buf, .. }) => (e, buf),
                _ => unreachable!("a page request comes back as a page request"),
            })
    }

    fn event_fd(&self) -> Option<i32> {
        Some(self.event.raw())
    }

    fn clear_event(&self) {
        self.event.clear();
    }

    fn reap(&mut self, out: &mut Vec<EngineDone>, block_until: Option<Instant>) {
        out.append(&mut self.stash);
        fn take(r: Reply, out: &mut Vec<EngineDone>) {
            // Control replies are consumed by `control`; a late one is dropped here.
            if let Some(buf) = r.buf {
                out.push(EngineDone {
                    token: r.handle,
                    result: r.result,
                    buf,
                });
            }
        }
        while let Ok(r) = self.replies.try_recv() {
            take(r, out);
        }
        if !out.is_empty() {
            return;
        }
        let Some(until) = block_until else { return };
        let left = until.saturating_duration_since(Instant::now());
        match self.replies.recv_timeout(left) {
            Ok(r) => take(r, out),
            Err(_) => return,
        }
        while let Ok(r) = self.replies.try_recv() {
            take(r, out);
        }
    }

    fn trim(&mut self, slot: u64) -> Result<(), BackendError> {
        if self.flags & proto::TRANS_READ_ONLY != 0 {
            return Err(BackendError::ReadOnly { op: "trim".into() });
        }
        if self.flags & proto::TRANS_SEND_TRIM == 0 {
            return Ok(()); // the export has no discard: trim is only a hint
        }
        self.control(
            proto::CMD_TRIM,
            slot * PAGE_SIZE as u64,
            PAGE_SIZE as u32,
            "trim",
        )
    }

    fn flush(&mut self) -> Result<(), BackendError> {
        if self.flags & proto::TRANS_SEND_FLUSH == 0 {
            return Ok(()); // the server writes through: nothing to flush
        }
        self.control(proto::CMD_FLUSH, 0, 0, "flush")
    }
}

impl Drop for NbdLink {
    fn drop(&mut self) {
        // Polite disconnect, then close so the reader's blocking read returns.
        let disc = proto::request(proto::CMD_DISC, CONTROL_HANDLE - 1, 0, 0);
        let _ = self.stream.write_all(&disc);
        self.stream.shutdown();
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }
}
