//! `make bench-predict`: every advisor on every evaluation trace at one RAM budget,
//! summed into one table, then the targets checked for `gru`.
//!
//! `cargo run --release -p predictor --example bench_predict -- [--ram-fraction F]
//!  [--visibility full|sampled:N] [--probe-pages N] [--tiers FILE] TRACE...`
//!
//! `--tiers FILE` (a tier file, as for `tiervisor replay --tiers`) sets the storage
//! tiers' capacities and speeds; without it every storage tier is unbounded.

use std::collections::BTreeMap;
use std::path::PathBuf;

use predictor::replay::{replay_all, ReplayConfig, TraceInput, Visibility};

const ADVISORS: &[&str] = &[
    "gru",
    "leap",
    "stride",
    "workingset",
    "lru",
    "none",
    "belady",
    "oracle",
];

/// Replays of `gru` per real-program trace whose least advisor CPU is reported.
const CPU_REPEATS: usize = 5;

#[derive(Default, Clone, Copy)]
struct Sum {
    faults: u64,
    issued: u64,
    useful: u64,
    wasted: u64,
    stall: u64,
    samples: u64,
    sample_stall: u64,
    cpu: u64,
    windows: u64,
    none_faults: u64,
}

fn main() {
    let mut cfg = ReplayConfig {
        ram_fraction: 0.25,
        ..ReplayConfig::default()
    };
    let mut traces = Vec::new();
    let mut tiers: Option<String> = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--ram-fraction" => {
                cfg.ram_fraction = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| die("--ram-fraction F"))
            }
            "--visibility" => {
                cfg.visibility = args
                    .next()
                    .and_then(|v| v.parse::<Visibility>().ok())
                    .unwrap_or_else(|| die("--visibility full|sampled:N"))
            }
            "--tiers" => {
                let path = args.next().unwrap_or_else(|| die("--tiers FILE"));
                let file = tiering::config::TierConfig::load(std::path::Path::new(&path))
                    .unwrap_or_else(|e| die(&e.to_string()));
                let (latency, capacity) = cfg
                    .latency
                    .with_tier_file(&file, tiering::access::PAGE_SIZE);
                cfg.latency = latency;
                cfg.policy.tier_capacity_pages = capacity;
                tiers = Some(path);
            }
            "--probe-pages" => {
                cfg.probe_pages = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| die("--probe-pages N"))
            }
            _ => traces.push(PathBuf::from(a)),
        }
    }
    if traces.is_empty() {
        die("give evaluation traces (resources/out/traces/eval/*.tvt; `make traces` makes them)");
    }
    let names: Vec<String> = ADVISORS.iter().map(|s| s.to_string()).collect();
    // The issue states its targets for real-program traces: the test-guest recordings
    // (`guest-*`) are replayed and shown, but summed apart.
    let mut sums: BTreeMap<&str, Sum> = BTreeMap::new();
    let mut guest_sums: BTreeMap<&str, Sum> = BTreeMap::new();
    println!(
        "RAM fraction {}, visibility {}, probe pages {}, window {} ns, storage tiers: {}",
        cfg.ram_fraction,
        cfg.visibility,
        cfg.probe_pages,
        cfg.policy.window_ns,
        tiers.as_deref().unwrap_or("unbounded (defaults)")
    );
    println!("\nper trace: demand faults (accuracy)");
    print!("| trace |");
    for n in ADVISORS {
        print!(" {n} |");
    }
    println!();
    println!("|---|{}", "---|".repeat(ADVISORS.len()));
    for t in &traces {
        let reports = match replay_all(&TraceInput::File(t.clone()), &names, &cfg, None) {
            Ok(r) => r,
            Err(e) => die(&format!("{}: {e}", t.display())),
        };
        let none = reports
            .iter()
            .find(|r| r.advisor == "none")
            .map_or(0, |r| r.demand_faults);
        let stem = t
            .file_stem()
            .map_or_else(String::new, |s| s.to_string_lossy().into_owned());
        let real_program = !stem.starts_with("guest-");
        // The host is noisy: gru's CPU on the target traces is the least of several
        // replays (its decisions are the same every time; preemption only adds).
        let mut gru_cpu = reports
            .iter()
            .find(|r| r.advisor == "gru")
            .map_or(0, |r| r.advisor_cpu_ns);
        if real_program {
            for _ in 1..CPU_REPEATS {
                let again = replay_all(
                    &TraceInput::File(t.clone()),
                    &["gru".to_string()],
                    &cfg,
                    None,
                )
                .unwrap_or_else(|e| die(&format!("{}: {e}", t.display())));
                if let Some(r) = again.iter().find(|r| r.advisor == "gru") {
                    gru_cpu = gru_cpu.min(r.advisor_cpu_ns);
                }
            }
        }
        print!("| {stem} |");
        for n in ADVISORS {
            let r = reports
                .iter()
                .find(|r| r.advisor == *n)
                .expect("every advisor reported");
            print!(" {} ({:.2}) |", r.demand_faults, r.accuracy);
            let s = if real_program {
                sums.entry(n).or_default()
            } else {
                guest_sums.entry(n).or_default()
            };
            s.faults += r.demand_faults;
            s.issued += r.prefetch_issued;
            s.useful += r.prefetch_useful;
            s.wasted += r.prefetch_wasted;
            s.stall += r.stall_ns;
            s.samples += r.samples;
            s.sample_stall += r.sample_stall_ns;
            s.cpu += if *n == "gru" {
                gru_cpu
            } else {
                r.advisor_cpu_ns
            };
            s.windows += r.windows;
            s.none_faults += none;
        }
        println!();
    }
    if !guest_sums.is_empty() {
        println!("\ntest-guest recordings (not counted for the targets)");
        print_sums(&guest_sums, cfg.policy.window_ns);
    }
    if sums.is_empty() {
        die("no real-program traces given: the targets are stated for them");
    }
    println!("\nreal-program traces (the targets)");
    print_sums(&sums, cfg.policy.window_ns);
    let (g, l, o) = (sums["gru"], sums["leap"], sums["oracle"]);
    let fewer = 1.0 - g.faults as f64 / l.faults.max(1) as f64;
    // Share of the leap -> `limit` stall gap that gru closes.
    let closed_to = |limit: u64| {
        let gap = l.stall as f64 - limit as f64;
        if gap > 0.0 {
            (l.stall as f64 - g.stall as f64) / gap
        } else {
            0.0
        }
    };
    let closed = closed_to(o.stall);
    let acc = if g.issued == 0 {
        0.0
    } else {
        g.useful as f64 / g.issued as f64
    };
    println!(
        "\ntargets: gru has {:.1}% fewer demand faults than leap (target >= 25%): {}",
        fewer * 100.0,
        verdict(fewer >= 0.25)
    );
    let (lo, hi) = wilson_interval(g.useful, g.issued);
    println!(
        "         gru accuracy {acc:.3} ({} of {} prefetches used, {} evicted unused, {} unused in RAM \
         at the end; 95% interval {lo:.3}-{hi:.3} counting prefetches as independent) \
         (target >= 0.9): {}",
        g.useful,
        g.issued,
        g.wasted,
        g.issued - g.useful - g.wasted,
        verdict(acc >= 0.9)
    );
    println!(
        "         gru closes {:.1}% of the leap->oracle stall gap (target >= 50%): {}",
        closed * 100.0,
        verdict(closed >= 0.5)
    );
    if let Some(b) = sums.get("belady") {
        // The issue names the oracle "Belady with future knowledge"; MIN alone is the
        // other reading of it (docs/predictor-experiments.md, "History of the targets").
        println!(
            "         (against belady, MIN eviction without prefetch, the other reading of \
             the issue's oracle: {:.1}%)",
            closed_to(b.stall) * 100.0
        );
    }
    let core = g.cpu as f64 / g.windows.max(1) as f64 / cfg.policy.window_ns.max(1) as f64;
    println!(
        "         gru advisor CPU {:.2}% of a core per window, least of {CPU_REPEATS} replays (target <= 2%): {}",
        core * 100.0,
        verdict(core <= 0.02)
    );
}

/// Wilson score interval (95%) for `k` successes in `n` trials: how far a share
/// measured on this few prefetches can be from the advisor's long-run one.
fn wilson_interval(k: u64, n: u64) -> (f64, f64) {
    if n == 0 {
        return (0.0, 1.0);
    }
    let (k, n, z) = (k as f64, n as f64, 1.96f64);
    let p = k / n;
    let centre = (p + z * z / (2.0 * n)) / (1.0 + z * z / n);
    let half = z / (1.0 + z * z / n) * (p * (1.0 - p) / n + z * z / (4.0 * n * n)).sqrt();
    (centre - half, centre + half)
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "NOT met"
    }
}

fn die(msg: &str) -> ! {
    eprintln!("bench_predict: {msg}");
    std::process::exit(2)
}

fn print_sums(sums: &BTreeMap<&str, Sum>, window_ns: u64) {
    println!("| advisor | demand_faults | prefetch_issued | accuracy | coverage | minor faults (sampled) | stall_ms (of it sampling) | advisor_cpu_ms | cpu per 1 ms window |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for n in ADVISORS {
        let s = sums[n];
        let acc = if s.issued == 0 {
            0.0
        } else {
            s.useful as f64 / s.issued as f64
        };
        let cov = if s.none_faults == 0 {
            0.0
        } else {
            1.0 - s.faults as f64 / s.none_faults as f64
        };
        let per_window = s.cpu as f64 / s.windows.max(1) as f64;
        println!(
            "| {n} | {} | {} | {acc:.3} | {cov:.3} | {} | {:.1} ({:.1}) | {:.1} | {:.1} us ({:.2}% of a core) |",
            s.faults,
            s.issued,
            s.samples,
            s.stall as f64 / 1e6,
            s.sample_stall as f64 / 1e6,
            s.cpu as f64 / 1e6,
            per_window / 1e3,
            per_window / window_ns as f64 * 100.0
        );
    }
}
