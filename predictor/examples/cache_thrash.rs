//! A stand-in for a guest's random memory traffic: reads and writes random words of a
//! large buffer until killed or for a number of seconds, so that a replay run beside
//! it on the other core meets caches as cold as the fault handler's in a live VM
//! (docs/predictor.md, "What a live event costs any advisor").
//!
//! `cargo run --release -p predictor --example cache_thrash -- [MIB] [SECONDS]`
//! (1024 MiB and 60 s by default)

use std::time::{Duration, Instant};

fn main() {
    let mut args = std::env::args().skip(1);
    let parse = |a: Option<String>, default: u64, what: &str| -> u64 {
        match a {
            None => default,
            Some(s) => s.parse().unwrap_or_else(|_| {
                eprintln!("cache_thrash: {what} must be a whole number, not {s:?}");
                std::process::exit(2)
            }),
        }
    };
    let mib = parse(args.next(), 1024, "MIB").max(1);
    let secs = parse(args.next(), 60, "SECONDS");
    // The largest power of two of 8-byte words that fits, so a random index is a mask
    // away.
    let words = 1u64 << (63 - ((mib << 20) / 8).leading_zeros());
    let mut buf: Vec<u64> = (0..words).collect();
    let end = Instant::now() + Duration::from_secs(secs);
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut sum = 0u64;
    while Instant::now() < end {
        for _ in 0..1 << 20 {
            // xorshift64: a new random word each time, as the guest's random workload.
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let w = &mut buf[(x & (words - 1)) as usize];
            sum = sum.wrapping_add(*w);
            *w = w.wrapping_add(1);
        }
    }
    std::hint::black_box(sum);
}
