//! NBD backend against a real qemu-nbd, plus a scripted peer for the error
//! paths qemu-nbd cannot be made to produce (a reply cut off mid-page).

use super::super::tests::{
    adjacent_requests_merge, collect_all, drive_by_notify_fd, round_trip, submit_pattern_writes,
    TempDir,
};
use super::super::*;
use super::proto;
use std::io::{Read, Write};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A qemu-nbd serving a fresh raw image; killed on drop, even if the test panics.
struct QemuNbd {
    child: Child,
    address: NbdAddress,
    _dir: TempDir,
}

impl QemuNbd {
    /// Serve `pages` pages over a unix socket, or TCP on 127.0.0.1 when `tcp`.
    fn start(name: &str, pages: u64, tcp: bool) -> Self {
        let dir = TempDir::new(name);
        let image = dir.0.join("tier5.raw");
        std::fs::File::create(&image)
            .and_then(|f| f.set_len(pages * PAGE_SIZE as u64))
            .expect("create image");
        let mut cmd = Command::new("qemu-nbd");
        let address = if tcp {
            let port = free_tcp_port();
            cmd.args(["-b", "127.0.0.1", "-p", &port.to_string()]);
            NbdAddress::Tcp(format!("127.0.0.1:{port}").parse().expect("addr"))
        } else {
            let sock = dir.0.join("nbd.sock");
            cmd.arg("-k").arg(&sock);
            NbdAddress::Unix(sock)
        };
        cmd.args(["-f", "raw", "-x", "tier5", "-t", "--discard=unmap"])
            .arg(&image);
        let child = cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::inherit()).spawn().expect(
            "start qemu-nbd (Debian package qemu-utils; resources/scripts/setup.sh installs it)",
        );
        let server = Self {
            child,
            address,
            _dir: dir,
        };
        server.wait_ready();
        server
    }

    /// Ready once a full NBD handshake succeeds (a bare connect probe would
    /// make qemu-nbd log a failed negotiation).
    fn wait_ready(&self) {
        let started = Instant::now();
        let mut config = self.config();
        config.connect_timeout = Duration::from_secs(2);
        loop {
            match NbdBackend::connect(&config) {
                Ok(_) => return,
                Err(e) => assert!(
                    started.elapsed() < Duration::from_secs(10),
                    "qemu-nbd did not come up at {}: {e}",
                    self.address
                ),
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn config(&self) -> NbdConfig {
        NbdConfig::new(self.address.clone(), "tier5")
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for QemuNbd {
    fn drop(&mut self) {
        self.kill();
    }
}

fn free_tcp_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

#[test]
fn nbd_round_trip_over_unix_socket() {
    let server = QemuNbd::start("nbd-unix", 512, false);
    let mut backend = NbdBackend::connect(&server.config()).expect("connect");
    assert_eq!(backend.capacity_pages(), 512);
    assert_eq!(backend.export_size(), 512 * PAGE_SIZE as u64);
    round_trip(&mut backend, 256);
    drive_by_notify_fd(&mut backend, 64);
    // Merged runs are single NBD commands of up to 128 KiB, read and written whole.
    adjacent_requests_merge(&mut backend);

    let page = write_page(&mut backend, 511, PageBuf::from_slice(b"tier five")).expect("write");
    let page = read_page(&mut backend, 511, page).expect("read");
    assert_eq!(&page[..9], b"tier five");
    backend.flush().expect("flush");
    backend.trim(511).expect("trim");
    let page = read_page(&mut backend, 511, page).expect("read after trim");
    assert!(
        page.iter().all(|&b| b == 0),
        "qemu-nbd --discard=unmap reads a trimmed raw range as zeros"
    );
}

#[test]
fn nbd_over_tcp_loopback() {
    let server = QemuNbd::start("nbd-tcp", 64, true);
    let mut config = server.config();
    config.capacity_pages = Some(32);
    let mut backend = NbdBackend::connect(&config).expect("connect");
    assert_eq!(backend.capacity_pages(), 32);
    round_trip(&mut backend, 32);
    drop(backend); // qemu-nbd serves one client at a time
    config.capacity_pages = Some(65);
    match NbdBackend::connect(&config) {
        Err(OpenError::TooSmall {
            available: 64,
            wanted: 65,
            ..
        }) => {}
        other => panic!("expected TooSmall, got {:?}", other.err()),
    }
}

#[test]
fn nbd_unknown_export_is_refused_clearly() {
    let server = QemuNbd::start("nbd-refuse", 16, false);
    let mut config = server.config();
    config.export = "no-such-export".into();
    let err = NbdBackend::connect(&config).err().expect("must be refused");
    assert!(matches!(err, OpenError::ExportRefused { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("no-such-export") && msg.contains("NBD_REP_ERR_UNKNOWN"),
        "{msg}"
    );
}

#[test]
fn nbd_missing_socket_is_a_connect_error() {
    let config = NbdConfig::new(NbdAddress::Unix("/nonexistent/nbd.sock".into()), "tier5");
    let err = NbdBackend::connect(&config).err().expect("must fail");
    assert!(matches!(err, OpenError::Connect { .. }), "{err}");
    assert!(err.to_string().contains("/nonexistent/nbd.sock"));
    assert!("tcp:127.0.0.1:10809".parse::<NbdAddress>().is_ok());
    assert!("nonsense".parse::<NbdAddress>().is_err());
}

#[test]
fn nbd_server_killed_mid_run_fails_requests_without_hanging() {
    let mut server = QemuNbd::start("nbd-kill", 256, false);
    let mut backend = NbdBackend::connect(&server.config()).expect("connect");
    let pool = PagePool::new(256);
    submit_pattern_writes(&mut backend, &pool, 0..64);
    // Kill the server with requests outstanding; whatever had not been answered must fail.
    server.kill();
    let started = Instant::now();
    let mut refused = 0;
    for slot in 64..128 {
        let req = IoRequest {
            op: IoOp::Read,
            slot,
            buf: pool.get(),
            priority: IoPriority::Demand,
            tag: slot,
        };
        if let Err(e) = backend.submit(req) {
            assert!(
                matches!(e.error, BackendError::ConnectionLost { .. }),
                "{}",
                e.error
            );
            refused += 1;
        }
    }
    let done = collect_all(&mut backend, 128 - refused);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "failing took {:?}",
        started.elapsed()
    );
    let lost = done
        .iter()
        .filter(|c| matches!(c.result, Err(BackendError::ConnectionLost { .. })))
        .count();
    assert!(
        lost + refused >= 64,
        "the 64 reads after the kill cannot succeed ({lost} lost, {refused} refused)"
    );
    assert_eq!(backend.outstanding(), 0);
    // Once the link is known dead, new requests are refused at once.
    let req = IoRequest {
        op: IoOp::Read,
        slot: 0,
        buf: pool.get(),
        priority: IoPriority::Demand,
        tag: 0,
    };
    let err = backend.submit(req).expect_err("dead link");
    assert!(err.error.to_string().contains("lost"), "{}", err.error);
    assert!(matches!(
        backend.flush(),
        Err(BackendError::ConnectionLost { .. })
    ));
}

/// A one-shot peer that completes the handshake for a 16-page export (announcing
/// `max_block` as its largest payload, if given), then hands the connection to `serve`.
fn scripted_server(
    sock: &Path,
    max_block: Option<u32>,
    serve: impl FnOnce(std::os::unix::net::UnixStream) + Send + 'static,
) -> std::thread::JoinHandle<()> {
    let listener = UnixListener::bind(sock).expect("bind");
    std::thread::spawn(move || {
        let (mut s, _) = listener.accept().expect("accept");
        let mut hello = Vec::new();
        hello.extend_from_slice(&proto::NBDMAGIC.to_be_bytes());
        hello.extend_from_slice(&proto::IHAVEOPT.to_be_bytes());
        hello
            .extend_from_slice(&(proto::FLAG_FIXED_NEWSTYLE | proto::FLAG_NO_ZEROES).to_be_bytes());
        s.write_all(&hello).unwrap();
        let mut client_flags = [0; 4];
        s.read_exact(&mut client_flags).unwrap();
        let mut opt_head = [0; 16];
        s.read_exact(&mut opt_head).unwrap();
        let len = u32::from_be_bytes(opt_head[12..16].try_into().unwrap());
        let mut opt = vec![0; len as usize];
        s.read_exact(&mut opt).unwrap();
        let reply = |kind: u32, data: &[u8]| {
            let mut r = Vec::new();
            r.extend_from_slice(&proto::OPTION_REPLY_MAGIC.to_be_bytes());
            r.extend_from_slice(&proto::OPT_GO.to_be_bytes());
            r.extend_from_slice(&kind.to_be_bytes());
            r.extend_from_slice(&(data.len() as u32).to_be_bytes());
            r.extend_from_slice(data);
            r
        };
        let mut info = proto::INFO_EXPORT.to_be_bytes().to_vec();
        info.extend_from_slice(&(16 * PAGE_SIZE as u64).to_be_bytes());
        info.extend_from_slice(&1u16.to_be_bytes());
        s.write_all(&reply(proto::REP_INFO, &info)).unwrap();
        if let Some(max) = max_block {
            let mut sizes = proto::INFO_BLOCK_SIZE.to_be_bytes().to_vec();
            for v in [1, PAGE_SIZE as u32, max] {
                sizes.extend_from_slice(&v.to_be_bytes());
            }
            s.write_all(&reply(proto::REP_INFO, &sizes)).unwrap();
        }
        s.write_all(&reply(proto::REP_ACK, &[])).unwrap();
        serve(s);
    })
}

/// The header of a simple reply to `req` without error.
fn simple_reply(req: &[u8; proto::REQUEST_LEN]) -> Vec<u8> {
    let mut answer = Vec::new();
    answer.extend_from_slice(&proto::SIMPLE_REPLY_MAGIC.to_be_bytes());
    answer.extend_from_slice(&0u32.to_be_bytes());
    answer.extend_from_slice(&req[8..16]); // the handle
    answer
}

/// Answers the first READ with a header and only 100 bytes before closing.
fn scripted_short_read_server(sock: &Path) -> std::thread::JoinHandle<()> {
    scripted_server(sock, None, |mut s| {
        let mut req = [0; proto::REQUEST_LEN];
        s.read_exact(&mut req).unwrap();
        let mut answer = simple_reply(&req);
        answer.extend_from_slice(&[0xab; 100]);
        s.write_all(&answer).unwrap();
        // Dropping the stream closes the connection mid-payload.
    })
}

/// A server that takes at most 8 KiB per request: merged runs stay within it.
#[test]
fn nbd_runs_respect_the_server_s_largest_payload() {
    let dir = TempDir::new("nbd-max-block");
    let sock: PathBuf = dir.0.join("small.sock");
    let (lengths_tx, lengths) = std::sync::mpsc::channel();
    let peer = scripted_server(&sock, Some(2 * PAGE_SIZE as u32), move |mut s| {
        // Serve reads (page i of the export filled with byte i) until the client leaves.
        let mut req = [0; proto::REQUEST_LEN];
        while s.read_exact(&mut req).is_ok() {
            let kind = u16::from_be_bytes([req[6], req[7]]);
            if kind != proto::CMD_READ {
                break;
            }
            let offset = u64::from_be_bytes(req[16..24].try_into().unwrap());
            let length = u32::from_be_bytes(req[24..28].try_into().unwrap());
            lengths_tx.send(length).unwrap();
            let mut answer = simple_reply(&req);
            for page in 0..length as u64 / PAGE_SIZE as u64 {
                let fill = (offset / PAGE_SIZE as u64 + page) as u8;
                answer.extend_from_slice(&[fill; PAGE_SIZE]);
            }
            s.write_all(&answer).unwrap();
        }
    });
    let mut backend =
        NbdBackend::connect(&NbdConfig::new(NbdAddress::Unix(sock), "x")).expect("connect");
    let pool = PagePool::new(8);
    backend.plug();
    super::super::tests::submit_reads(&mut backend, &pool, 0..8, IoPriority::Prefetch);
    backend.unplug();
    for c in collect_all(&mut backend, 8) {
        c.result.expect("read");
        assert!(c.buf.iter().all(|&b| b == c.slot as u8), "slot {}", c.slot);
    }
    assert_eq!(backend.stats().transfers, 4, "runs of 2 pages");
    drop(backend);
    peer.join().expect("peer");
    let lengths: Vec<u32> = lengths.try_iter().collect();
    assert_eq!(lengths, [2 * PAGE_SIZE as u32; 4]);
}

/// An error reply to a merged write fails every page of it, each with its own offset,
/// and the link stays usable.
#[test]
fn nbd_error_reply_to_a_merged_write_fails_each_page() {
    let dir = TempDir::new("nbd-write-error");
    let sock: PathBuf = dir.0.join("eio.sock");
    let peer = scripted_server(&sock, None, |mut s| {
        // Answer every WRITE with EIO (5) after taking its data, until the client leaves.
        let mut req = [0; proto::REQUEST_LEN];
        while s.read_exact(&mut req).is_ok() {
            if u16::from_be_bytes([req[6], req[7]]) != proto::CMD_WRITE {
                break;
            }
            let length = u32::from_be_bytes(req[24..28].try_into().unwrap());
            let mut data = vec![0; length as usize];
            s.read_exact(&mut data).unwrap();
            let mut answer = simple_reply(&req);
            answer[4..8].copy_from_slice(&5u32.to_be_bytes());
            s.write_all(&answer).unwrap();
        }
    });
    let mut backend =
        NbdBackend::connect(&NbdConfig::new(NbdAddress::Unix(sock), "x")).expect("connect");
    let pool = PagePool::new(4);
    backend.plug();
    submit_pattern_writes(&mut backend, &pool, 4..7);
    backend.unplug();
    let mut done = collect_all(&mut backend, 3);
    done.sort_by_key(|c| c.slot);
    assert_eq!(backend.stats().transfers, 1, "one command for slots 4-6");
    for c in &done {
        match &c.result {
            Err(BackendError::Remote { offset, .. }) => {
                assert_eq!(*offset, c.slot * PAGE_SIZE as u64, "slot {}", c.slot)
            }
            other => panic!("slot {}: {other:?}", c.slot),
        }
    }
    // The error was the server's answer, not a broken link: the next write is sent too.
    submit_pattern_writes(&mut backend, &pool, 9..10);
    assert!(collect_all(&mut backend, 1)[0].result.is_err());
    assert_eq!(backend.stats().transfers, 2);
    drop(backend);
    peer.join().expect("peer");
}

#[test]
fn nbd_short_read_is_a_clear_error() {
    let dir = TempDir::new("nbd-short");
    let sock: PathBuf = dir.0.join("short.sock");
    let peer = scripted_short_read_server(&sock);
    let mut backend =
        NbdBackend::connect(&NbdConfig::new(NbdAddress::Unix(sock), "x")).expect("connect");
    assert_eq!(backend.capacity_pages(), 16);
    let err = read_page(&mut backend, 3, PageBuf::new()).expect_err("short read");
    assert!(err.to_string().contains("short read"), "{err}");
    peer.join().expect("peer");
}

#[test]
fn nbd_deep_queue_fills_the_socket_without_deadlock() {
    // 512 writes of 4 KiB in flight are more than a unix socket buffers: sending
    // must keep reading replies, or client and server would both block.
    let server = QemuNbd::start("nbd-deep", 1024, false);
    let mut config = server.config();
    config.limits = QueueLimits {
        demand: 512,
        prefetch: 512,
        writeback: 512,
    };
    let mut backend = NbdBackend::connect(&config).expect("connect");
    let started = Instant::now();
    round_trip(&mut backend, 1024);
    assert!(started.elapsed() < Duration::from_secs(20));
}
