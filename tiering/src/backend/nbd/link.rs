//! The NBD transmission phase on the owner's thread: non-blocking reads of
//! simple replies parsed incrementally, sends that keep reading replies while
//! the socket is full (so client and server never both block on a full
//! buffer), and failure of everything in flight when the link drops.

use super::super::notify::EventFd;
use super::super::sched::{Engine, EngineDone};
use super::super::{BackendError, IoOp, OpenError, PageBuf, MAX_RUN_PAGES, PAGE_SIZE};
use super::{proto, NbdConfig, Stream};
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// A request the server has not answered yet.
enum Pending {
    /// A transfer of `bufs.len()` pages from `slot` on; its handle is the first
    /// page's token.
    Pages {
        op: IoOp,
        slot: u64,
        bufs: Vec<PageBuf>,
    },
    Control,
}

/// Where the next received bytes go.
enum Rx {
    Header {
        buf: [u8; proto::REPLY_LEN],
        have: usize,
    },
    /// A read's data, delivered page by page as it arrives: page `page` of the
    /// transfer `handle` (the front of `bufs`, the pages still to come) has `have`
    /// bytes so far.
    Payload {
        handle: u64,
        slot: u64,
        bufs: VecDeque<PageBuf>,
        page: usize,
        have: usize,
    },
}

impl Rx {
    fn header() -> Self {
        Rx::Header {
            buf: [0; proto::REPLY_LEN],
            have: 0,
        }
    }
}

/// Handles of trim/flush have the top bit set; page requests use the scheduler's token.
const CONTROL_HANDLE: u64 = 1 << 63;
/// How long a trim, a flush, or a send into a full socket may take.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(30);

pub(crate) struct NbdLink {
    address: String,
    export: String,
    stream: Stream,
    pub(super) export_size: u64,
    flags: u16,
    /// Most pages one command may carry: the server's maximum payload, at most
    /// [`MAX_RUN_PAGES`].
    max_run_pages: usize,
    capacity: u64,
    pending: HashMap<u64, Pending>,
    rx: Rx,
    /// Set once the connection is gone; nothing is sent after that.
    dead: Option<String>,
    /// Page completions read while sending or waiting for a control reply.
    stash: Vec<EngineDone>,
    control_done: HashMap<u64, Result<(), BackendError>>,
    /// Signalled when `stash` gains entries outside `reap`, so `notify_fd` fires.
    event: EventFd,
    send_buf: Vec<u8>,
    next_control: u64,
}

enum Io {
    Done(usize),
    WouldBlock,
    Closed,
    Failed(std::io::Error),
}

fn recv(fd: i32, buf: &mut [u8]) -> Io {
    // SAFETY: `buf` is a live, writable slice of the given length.
    let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
    classify(n)
}

fn send(fd: i32, buf: &[u8]) -> Io {
    // SAFETY: `buf` is a live slice; MSG_NOSIGNAL turns a closed peer into EPIPE, not SIGPIPE.
    let n = unsafe {
        libc::send(
            fd,
            buf.as_ptr().cast(),
            buf.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    };
    classify(n)
}

fn classify(n: isize) -> Io {
    if n > 0 {
        return Io::Done(n as usize);
    }
    if n == 0 {
        return Io::Closed;
    }
    let e = std::io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EAGAIN | libc::EINTR) => Io::WouldBlock,
        _ => Io::Failed(e),
    }
}

/// Wait until the socket is readable (or writable too, if `write`), at most `left`.
fn wait_fd(fd: i32, write: bool, left: Duration) -> (bool, bool) {
    let events = libc::POLLIN | if write { libc::POLLOUT } else { 0 };
    let mut pfd = libc::pollfd {
        fd,
        events,
        revents: 0,
    };
    let ts = libc::timespec {
        tv_sec: left.as_secs() as libc::time_t,
        tv_nsec: libc::c_long::from(left.subsec_nanos()),
    };
    // SAFETY: one live pollfd and a live timespec for the duration of the call.
    let rc = unsafe { libc::ppoll(&mut pfd, 1, &ts, std::ptr::null()) };
    if rc <= 0 {
        return (false, false);
    }
    let readable = pfd.revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0;
    (readable, pfd.revents & libc::POLLOUT != 0)
}

impl NbdLink {
    pub(super) fn connect(config: &NbdConfig) -> Result<Self, OpenError> {
        let address = config.address.to_string();
        let connect_err = |source| OpenError::Connect {
            address: address.clone(),
            source,
        };
        let mut stream =
            Stream::connect(&config.address, config.connect_timeout).map_err(connect_err)?;
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
        let event = EventFd::new().map_err(OpenError::Resources)?;
        Ok(Self {
            address,
            export: config.export.clone(),
            stream,
            export_size: info.size,
            flags: info.flags,
            max_run_pages: (info.max_block as usize / PAGE_SIZE).clamp(1, MAX_RUN_PAGES),
            capacity,
            pending: HashMap::new(),
            rx: Rx::header(),
            dead: None,
            stash: Vec::new(),
            control_done: HashMap::new(),
            event,
            send_buf: Vec::with_capacity(proto::REQUEST_LEN + PAGE_SIZE),
            next_control: 0,
        })
    }

    fn fd(&self) -> i32 {
        self.stream.as_raw_fd()
    }

    fn lost(&self, reason: impl Into<String>) -> BackendError {
        BackendError::ConnectionLost {
            address: self.address.clone(),
            reason: reason.into(),
        }
    }

    /// The link is gone: fail every request in flight, refuse new ones.
    fn fail_all(&mut self, reason: String, out: &mut Vec<EngineDone>) {
        log::warn!("nbd {}: {reason}", self.address);
        self.stream.shutdown();
        if let Rx::Payload {
            handle,
            slot,
            bufs,
            page,
            have,
        } = std::mem::replace(&mut self.rx, Rx::header())
        {
            let cut = slot + page as u64;
            let why = format!("short read: the data of slot {cut} was cut off after {have} of 4096 bytes ({reason})");
            self.fail_pages(handle + page as u64, bufs, &why, out);
        }
        for (handle, pending) in std::mem::take(&mut self.pending) {
            match pending {
                Pending::Pages { bufs, .. } => self.fail_pages(handle, bufs, &reason, out),
                Pending::Control => {
                    self.control_done
                        .insert(handle, Err(self.lost(reason.clone())));
                }
            }
        }
        self.dead = Some(reason);
    }

    /// Every page of `bufs`, the first under token `first`, failed with the link.
    fn fail_pages(
        &self,
        first: u64,
        bufs: impl IntoIterator<Item = PageBuf>,
        why: &str,
        out: &mut Vec<EngineDone>,
    ) {
        for (i, buf) in bufs.into_iter().enumerate() {
            out.push(EngineDone {
                token: first + i as u64,
                result: Err(self.lost(why)),
                buf,
            });
        }
    }

    /// Read and dispatch every reply byte available now, without blocking.
    fn receive(&mut self, out: &mut Vec<EngineDone>) {
        while self.dead.is_none() {
            let fd = self.fd();
            let io = match &mut self.rx {
                Rx::Header { buf, have } => recv(fd, &mut buf[*have..]),
                Rx::Payload { bufs, have, .. } => recv(fd, &mut bufs[0][*have..]),
            };
            let n = match io {
                Io::Done(n) => n,
                Io::WouldBlock => return,
                Io::Closed => return self.fail_all("the server closed the connection".into(), out),
                Io::Failed(e) => return self.fail_all(format!("reading a reply failed: {e}"), out),
            };
            match &mut self.rx {
                Rx::Header { buf, have } => {
                    *have += n;
                    if *have == proto::REPLY_LEN {
                        let header = *buf;
                        self.rx = Rx::header();
                        self.dispatch(&header, out);
                    }
                }
                Rx::Payload {
                    handle,
                    bufs,
                    page,
                    have,
                    ..
                } => {
                    *have += n;
                    if *have == PAGE_SIZE {
                        // A page is whole: its waiter need not wait for the rest.
                        let buf = bufs.pop_front().expect("a page is being read");
                        out.push(EngineDone {
                            token: *handle + *page as u64,
                            result: Ok(()),
                            buf,
                        });
                        *have = 0;
                        *page += 1;
                        if bufs.is_empty() {
                            self.rx = Rx::header();
                        }
                    }
                }
            }
        }
    }

    /// Every page of the transfer `handle` succeeded.
    fn pages_done(handle: u64, bufs: Vec<PageBuf>, out: &mut Vec<EngineDone>) {
        for (i, buf) in bufs.into_iter().enumerate() {
            out.push(EngineDone {
                token: handle + i as u64,
                result: Ok(()),
                buf,
            });
        }
    }

    fn dispatch(&mut self, header: &[u8; proto::REPLY_LEN], out: &mut Vec<EngineDone>) {
        let (magic, error, handle) = proto::parse_reply(header);
        if magic != proto::SIMPLE_REPLY_MAGIC {
            let reason = if magic == proto::STRUCTURED_REPLY_MAGIC {
                "the server sent a structured reply, which was not negotiated".to_string()
            } else {
                format!("bad reply magic {magic:#x}: the stream is out of step")
            };
            return self.fail_all(reason, out);
        }
        let Some(pending) = self.pending.remove(&handle) else {
            return self.fail_all(format!("reply for unknown handle {handle:#x}"), out);
        };
        let remote = |op: String, offset: u64| BackendError::Remote {
            op,
            offset,
            errno: error,
            errno_name: proto::errno_name(error),
        };
        match pending {
            Pending::Control => {
                let result = if error == 0 {
                    Ok(())
                } else {
                    Err(remote("command".into(), 0))
                };
                self.control_done.insert(handle, result);
            }
            Pending::Pages { op, slot, bufs } if error != 0 => {
                for (i, buf) in bufs.into_iter().enumerate() {
                    let offset = (slot + i as u64) * PAGE_SIZE as u64;
                    out.push(EngineDone {
                        token: handle + i as u64,
                        result: Err(remote(op.to_string(), offset)),
                        buf,
                    });
                }
            }
            // Simple replies to a successful READ carry the pages next.
            Pending::Pages {
                op: IoOp::Read,
                slot,
                bufs,
            } => {
                self.rx = Rx::Payload {
                    handle,
                    slot,
                    bufs: bufs.into(),
                    page: 0,
                    have: 0,
                }
            }
            Pending::Pages {
                op: IoOp::Write,
                bufs,
                ..
            } => Self::pages_done(handle, bufs, out),
        }
    }

    /// Send `self.send_buf`, reading replies whenever the socket is full.
    fn send_all(&mut self) -> Result<(), String> {
        let mut sent = 0;
        let deadline = Instant::now() + CONTROL_TIMEOUT;
        let mut stash = std::mem::take(&mut self.stash);
        let before = stash.len();
        let result = loop {
            if let Some(reason) = &self.dead {
                break Err(reason.clone());
            }
            if sent == self.send_buf.len() {
                break Ok(());
            }
            match send(self.fd(), &self.send_buf[sent..]) {
                Io::Done(n) => sent += n,
                Io::Closed => break Err("the server closed the connection".into()),
                Io::Failed(e) => break Err(format!("sending a request failed: {e}")),
                Io::WouldBlock => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        break Err(format!(
                            "the server accepted no data for {CONTROL_TIMEOUT:?}"
                        ));
                    }
                    let (readable, _) = wait_fd(self.fd(), true, left);
                    if readable {
                        self.receive(&mut stash);
                    }
                }
            }
        };
        if let Err(reason) = &result {
            if sent > 0 && sent < self.send_buf.len() {
                // A half-sent request leaves the stream out of step for good.
                self.fail_all(reason.clone(), &mut stash);
            }
        }
        if stash.len() > before {
            self.event.signal();
        }
        self.stash = stash;
        result
    }

    /// Send a trim or flush and wait for its reply, stashing page replies.
    fn control(
        &mut self,
        kind: u16,
        offset: u64,
        length: u32,
        what: &'static str,
    ) -> Result<(), BackendError> {
        if let Some(reason) = &self.dead {
            return Err(self.lost(reason.clone()));
        }
        let handle = CONTROL_HANDLE | self.next_control;
        self.next_control += 1;
        self.send_buf.clear();
        self.send_buf
            .extend_from_slice(&proto::request(kind, handle, offset, length));
        self.pending.insert(handle, Pending::Control);
        if let Err(reason) = self.send_all() {
            self.pending.remove(&handle);
            return Err(self.lost(reason));
        }
        let deadline = Instant::now() + CONTROL_TIMEOUT;
        let mut stash = std::mem::take(&mut self.stash);
        let before = stash.len();
        let result = loop {
            self.receive(&mut stash);
            if let Some(result) = self.control_done.remove(&handle) {
                break result;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break Err(BackendError::Timeout {
                    waited: CONTROL_TIMEOUT,
                });
            }
            wait_fd(self.fd(), false, left);
        };
        if stash.len() > before {
            self.event.signal();
        }
        self.stash = stash;
        result.map_err(|e| match e {
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
}

impl Engine for NbdLink {
    fn describe(&self) -> String {
        format!("nbd:{}/{}", self.address, self.export)
    }

    fn capacity_pages(&self) -> u64 {
        self.capacity
    }

    fn max_run_pages(&self) -> usize {
        self.max_run_pages
    }

    fn check(&self, op: IoOp) -> Result<(), BackendError> {
        if op == IoOp::Write && self.flags & proto::TRANS_READ_ONLY != 0 {
            return Err(BackendError::ReadOnly { op: "write".into() });
        }
        match &self.dead {
            Some(reason) => Err(self.lost(reason.clone())),
            None => Ok(()),
        }
    }

    fn start(
        &mut self,
        token: u64,
        op: IoOp,
        slot: u64,
        bufs: Vec<PageBuf>,
    ) -> Result<(), (BackendError, Vec<PageBuf>)> {
        if let Some(reason) = &self.dead {
            return Err((self.lost(reason.clone()), bufs));
        }
        let kind = if op == IoOp::Read {
            proto::CMD_READ
        } else {
            proto::CMD_WRITE
        };
        self.send_buf.clear();
        self.send_buf.extend_from_slice(&proto::request(
            kind,
            token,
            slot * PAGE_SIZE as u64,
            (bufs.len() * PAGE_SIZE) as u32,
        ));
        if op == IoOp::Write {
            for buf in &bufs {
                self.send_buf.extend_from_slice(buf);
            }
        }
        // Registered before sending: the reply may be read while we still send.
        self.pending
            .insert(token, Pending::Pages { op, slot, bufs });
        if let Err(reason) = self.send_all() {
            return match self.pending.remove(&token) {
                Some(Pending::Pages { bufs, .. }) => Err((self.lost(reason), bufs)),
                // fail_all already completed it with the error.
                _ => Ok(()),
            };
        }
        Ok(())
    }

    fn event_fds(&self) -> Vec<i32> {
        vec![self.fd(), self.event.raw()]
    }

    fn clear_event(&self) {
        self.event.clear();
    }

    fn reap(&mut self, out: &mut Vec<EngineDone>, block_until: Option<Instant>) {
        out.append(&mut self.stash);
        self.receive(out);
        if !out.is_empty() || self.dead.is_some() {
            return;
        }
        let Some(until) = block_until else { return };
        let left = until.saturating_duration_since(Instant::now());
        if !left.is_zero() && wait_fd(self.fd(), false, left).0 {
            self.receive(out);
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
        if let Some(reason) = &self.dead {
            return Err(self.lost(reason.clone()));
        }
        if self.flags & proto::TRANS_SEND_FLUSH == 0 {
            return Ok(()); // the server writes through: nothing to flush
        }
        self.control(proto::CMD_FLUSH, 0, 0, "flush")
    }
}

impl Drop for NbdLink {
    fn drop(&mut self) {
        if self.dead.is_none() {
            // Polite disconnect; best effort, never blocks.
            let disc = proto::request(proto::CMD_DISC, CONTROL_HANDLE - 1, 0, 0);
            let _ = send(self.fd(), &disc);
        }
        self.stream.shutdown();
    }
}
