//! Measures the tier backends on this machine (numbers for docs/tier-backends.md):
//! 4 KiB O_DIRECT read latency through the io_uring file backend against a plain
//! pread(O_DIRECT) (interleaved in rounds, so both see the same disk weather),
//! throughput with 32 reads in flight, the same through qemu-nbd over a unix
//! socket, and how closely the nvme/ssd/hdd profiles are honoured.
//!
//! `cargo run --release -p tiering --example backend_bench -- [--dir DIR] [--pages N] [--samples N] [--no-nbd]`
//! DIR must be on a disk-backed file system (default /var/tmp).

use std::fs::OpenOptions;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tiering::backend::{
    DeviceProfile, FileBackend, FileConfig, IoOp, IoPriority, IoRequest, NbdAddress, NbdBackend,
    NbdConfig, PageBuf, PagePool, TierBackend, PAGE_SIZE,
};

struct Args {
    dir: PathBuf,
    pages: u64,
    samples: usize,
    nbd: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        dir: "/var/tmp".into(),
        pages: 65_536,
        samples: 2_000,
        nbd: true,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{a} needs a value"));
        match a.as_str() {
            "--dir" => args.dir = value()?.into(),
            "--pages" => args.pages = value()?.parse().map_err(|_| "--pages: not a number")?,
            "--samples" => {
                args.samples = value()?.parse().map_err(|_| "--samples: not a number")?
            }
            "--no-nbd" => args.nbd = false,
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(args)
}

/// xorshift64: repeatable random slots.
struct Rng(u64);
impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

fn summary(name: &str, mut ns: Vec<u64>) {
    ns.sort_unstable();
    let n = ns.len();
    let us = |v: u64| v as f64 / 1000.0;
    println!(
        "{name:<44} n={n:<6} median {:>8.1} us  p99 {:>8.1} us  mean {:>8.1} us",
        us(ns[n / 2]),
        us(ns[(n * 99 / 100).min(n - 1)]),
        us(ns.iter().sum::<u64>() / n as u64)
    );
}

/// One request at a time: wall time from submit to its completion.
fn qd1(backend: &mut dyn TierBackend, pool: &PagePool, rng: &mut Rng, count: usize) -> Vec<u64> {
    let mut out = Vec::new();
    let mut lat = Vec::with_capacity(count);
    for i in 0..count {
        let slot = rng.below(backend.capacity_pages());
        let t = Instant::now();
        let req = IoRequest {
            op: IoOp::Read,
            slot,
            buf: pool.get(),
            priority: IoPriority::Demand,
            tag: i as u64,
        };
        backend.submit(req).expect("submit");
        out.clear();
        while out.is_empty() {
            backend.wait(&mut out, Duration::from_secs(10));
        }
        out[0].result.as_ref().expect("read");
        lat.push(t.elapsed().as_nanos() as u64);
    }
    lat
}

/// Keep `depth` requests in flight for `count` requests; returns (elapsed, latencies).
fn qd_n(
    backend: &mut dyn TierBackend,
    pool: &PagePool,
    rng: &mut Rng,
    op: IoOp,
    depth: usize,
    count: usize,
) -> (Duration, Vec<u64>) {
    let mut out = Vec::new();
    let mut lat = Vec::with_capacity(count);
    let started = Instant::now();
    let mut issued = 0;
    while lat.len() < count {
        while issued < count && backend.outstanding() < depth {
            let slot = if op == IoOp::Write {
                issued as u64 % backend.capacity_pages()
            } else {
                rng.below(backend.capacity_pages())
            };
            let req = IoRequest {
                op,
                slot,
                buf: pool.get(),
                priority: IoPriority::Demand,
                tag: issued as u64,
            };
            backend.submit(req).expect("submit");
            issued += 1;
        }
        out.clear();
        backend.wait(&mut out, Duration::from_secs(10));
        for c in out.drain(..) {
            c.result.as_ref().expect("I/O");
            lat.push(c.latency_ns);
        }
    }
    (started.elapsed(), lat)
}

/// Reads at `class` while >= 256 write-backs stay queued: how long does a read wait?
fn read_under_writeback_load(
    backend: &mut dyn TierBackend,
    pool: &PagePool,
    rng: &mut Rng,
    class: IoPriority,
    reads: usize,
) -> Vec<u64> {
    const READ_TAG: u64 = 1 << 62;
    let mut out = Vec::new();
    let mut lat = Vec::with_capacity(reads);
    let mut writebacks = 0usize;
    let mut next = 0u64;
    for i in 0..reads {
        while writebacks < 256 {
            let slot = rng.below(backend.capacity_pages());
            let req = IoRequest {
                op: IoOp::Write,
                slot,
                buf: pool.get(),
                priority: IoPriority::Writeback,
                tag: next,
            };
            next += 1;
            backend.submit(req).expect("submit write-back");
            writebacks += 1;
        }
        let slot = rng.below(backend.capacity_pages());
        let tag = READ_TAG | i as u64;
        let req = IoRequest {
            op: IoOp::Read,
            slot,
            buf: pool.get(),
            priority: class,
            tag,
        };
        backend.submit(req).expect("submit read");
        let mut done = false;
        while !done {
            out.clear();
            backend.wait(&mut out, Duration::from_secs(10));
            for c in out.drain(..) {
                c.result.as_ref().expect("I/O");
                if c.tag == tag {
                    lat.push(c.latency_ns);
                    done = true;
                } else {
                    writebacks -= 1;
                }
            }
        }
    }
    while backend.outstanding() > 0 {
        backend.wait(&mut out, Duration::from_secs(10));
    }
    lat
}

fn throughput(name: &str, elapsed: Duration, lat: Vec<u64>) {
    let n = lat.len() as f64;
    let secs = elapsed.as_secs_f64();
    println!(
        "{name:<44} {:>9.0} IOPS  {:>7.1} MiB/s",
        n / secs,
        n * PAGE_SIZE as f64 / secs / (1024.0 * 1024.0)
    );
    summary(&format!("{name} (per-request latency)"), lat);
}

fn pread_direct(path: &Path, pages: u64, rng: &mut Rng, count: usize) -> Vec<u64> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .expect("open O_DIRECT");
    let mut buf = PageBuf::new();
    let mut lat = Vec::with_capacity(count);
    for _ in 0..count {
        let offset = (rng.below(pages) * PAGE_SIZE as u64) as libc::off_t;
        let t = Instant::now();
        // SAFETY: buf is a live, aligned 4 KiB buffer owned by this frame.
        let n =
            unsafe { libc::pread(file.as_raw_fd(), buf.as_mut_ptr().cast(), PAGE_SIZE, offset) };
        assert_eq!(n, PAGE_SIZE as isize, "pread");
        lat.push(t.elapsed().as_nanos() as u64);
    }
    lat
}

struct Server(Child);
impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_nbd(image: &Path, sock: &Path, cache: &str) -> Server {
    let child = Command::new("qemu-nbd")
        .arg("-k")
        .arg(sock)
        .args(["-f", "raw", "-x", "bench", "--cache", cache])
        .args(if cache == "none" {
            &["--aio=native"][..]
        } else {
            &[][..]
        })
        .arg(image)
        .stdin(Stdio::null())
        .spawn()
        .expect("qemu-nbd");
    let server = Server(child);
    let started = Instant::now();
    while !sock.exists() && started.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(50));
    server
}

fn main() {
    let args = parse_args().unwrap_or_else(|e| {
        eprintln!("backend_bench: {e}");
        std::process::exit(2);
    });
    let dir = args
        .dir
        .join(format!("tiervisor-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create bench dir");
    let pool = PagePool::new(256);
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let image = dir.join("tier.img");
    println!(
        "file {} with {} pages ({} MiB)",
        image.display(),
        args.pages,
        args.pages * 4 / 1024
    );

    let mut backend =
        FileBackend::open(&FileConfig::new(&image, args.pages)).expect("open file backend");
    let (elapsed, lat) = qd_n(
        &mut backend,
        &pool,
        &mut rng,
        IoOp::Write,
        32,
        args.pages as usize,
    );
    throughput("file io_uring write, 32 in flight (fill)", elapsed, lat);

    // QD1, interleaved rounds so both paths see the same conditions.
    let (mut uring, mut pread) = (Vec::new(), Vec::new());
    for _ in 0..20 {
        uring.extend(qd1(&mut backend, &pool, &mut rng, args.samples / 20));
        pread.extend(pread_direct(
            &image,
            args.pages,
            &mut rng,
            args.samples / 20,
        ));
    }
    summary("4 KiB read QD1: pread(O_DIRECT)", pread);
    summary("4 KiB read QD1: io_uring backend", uring);
    let (elapsed, lat) = qd_n(
        &mut backend,
        &pool,
        &mut rng,
        IoOp::Read,
        32,
        args.samples * 10,
    );
    throughput("file io_uring read, 32 in flight", elapsed, lat);
    for (label, class) in [
        ("demand", IoPriority::Demand),
        ("same class (FIFO)", IoPriority::Writeback),
    ] {
        let lat =
            read_under_writeback_load(&mut backend, &pool, &mut rng, class, args.samples / 10);
        summary(&format!("read, 256 write-backs queued, {label}"), lat);
    }
    drop(backend);

    for (name, profile, n) in [
        ("nvme", DeviceProfile::nvme(), args.samples / 4),
        ("ssd", DeviceProfile::ssd(), args.samples / 4),
        ("hdd", DeviceProfile::hdd(), 40),
    ] {
        let config = FileConfig::new(&image, args.pages).with_profile(profile);
        let mut backend = FileBackend::open(&config).expect("open with profile");
        summary(
            &format!("4 KiB read QD1, profile {name}"),
            qd1(&mut backend, &pool, &mut rng, n),
        );
        let count = if name == "hdd" { 100 } else { args.samples * 2 };
        let (elapsed, lat) = qd_n(&mut backend, &pool, &mut rng, IoOp::Read, 32, count);
        throughput(&format!("read 32 in flight, profile {name}"), elapsed, lat);
    }

    if args.nbd {
        let nbd_pages = args.pages.min(16_384);
        let nbd_image = dir.join("nbd.raw");
        std::fs::File::create(&nbd_image)
            .and_then(|f| f.set_len(nbd_pages * PAGE_SIZE as u64))
            .expect("image");
        for cache in ["none", "writeback"] {
            let sock = dir.join(format!("nbd-{cache}.sock"));
            let _server = start_nbd(&nbd_image, &sock, cache);
            let mut backend = NbdBackend::connect(&NbdConfig::new(NbdAddress::Unix(sock), "bench"))
                .expect("connect to qemu-nbd");
            let label = format!("nbd unix (qemu-nbd --cache={cache})");
            if cache == "none" {
                let (elapsed, lat) = qd_n(
                    &mut backend,
                    &pool,
                    &mut rng,
                    IoOp::Write,
                    32,
                    nbd_pages as usize,
                );
                throughput(&format!("{label} write 32 in flight (fill)"), elapsed, lat);
            }
            summary(
                &format!("{label} read QD1"),
                qd1(&mut backend, &pool, &mut rng, args.samples),
            );
            let (elapsed, lat) = qd_n(
                &mut backend,
                &pool,
                &mut rng,
                IoOp::Read,
                32,
                args.samples * 10,
            );
            throughput(&format!("{label} read 32 in flight"), elapsed, lat);
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
