//! NBD backend (tier 5): a client for a real NBD server (qemu-nbd, nbdkit,
//! nbd-server) over a unix socket or TCP.
//!
//! The owner's thread does all socket I/O (see `link.rs`): requests are sent
//! as they are issued, replies are read without blocking whenever the owner
//! polls, matched to requests by handle (many in flight) and READ payloads
//! land straight in the request's page buffer. No extra thread means no extra
//! wake-up per reply. If the connection drops, every request in flight
//! completes with [`BackendError::ConnectionLost`] and later submissions are
//! refused.

mod link;
mod proto;
#[cfg(test)]
mod tests;

use super::sched::{delegate_tier_backend, Scheduled};
use super::{DeviceProfile, OpenError, QueueLimits};
use link::NbdLink;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

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

    fn as_raw_fd(&self) -> RawFd {
        match self {
            Stream::Unix(s) => s.as_raw_fd(),
            Stream::Tcp(s) => s.as_raw_fd(),
        }
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
