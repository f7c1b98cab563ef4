//! Cost of GRU inference: burn's `AccessModel::step` against the hand-written
//! `GruCell` on each instruction set this CPU has, in ns per stepped row, for several
//! model shapes and batch sizes; then the time to step one window of a 1 M-page (4 GiB)
//! VM if every one of its 65,536 16-page blocks, or every one of its 1,048,576 pages,
//! were stepped; whether a steady-state step allocates; and one training step (Adam
//! on 128 samples x 8 windows) on burn's autodiff against the hand-written step.
//!
//! `cargo run --release -p predictor --example gru_cost [-- --quick | --advisor-window]`
//! (`--advisor-window`: only the last table, the whole advisor's window)
//!
//! Times are medians of this thread's CPU time over repeated calls (each case runs for about 0.2 s, 0.05 s with
//! `--quick`); the host is shared and noisy, so compare ratios within one run.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use burn::tensor::Device;
use predictor::gru::backprop::BpttTrainer;
use predictor::gru::features::{Sample, NUM_FEATURES};
use predictor::gru::model::{tensor2, to_vec};
use predictor::gru::train::{BurnTrainer, TrainConfig};
use predictor::gru::{base_model_path, AccessModel, GruCell, Isa};

/// Counts heap allocations so the example can show the cell's step makes none.
struct CountingAlloc;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: every method forwards to the system allocator with the caller's arguments
// unchanged, so `System`'s guarantees are ours; the counter does not allocate.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as our caller's (forwarded unchanged).
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System.alloc` with this layout (via `alloc` above).
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as our caller's (forwarded unchanged).
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

const SHAPES: [(usize, usize); 3] = [(16, 32), (12, 16), (8, 16)];
const BATCHES: [usize; 5] = [1, 16, 256, 4096, 65536];

/// CPU time of this thread, ns: unlike wall time it does not count the time other
/// processes on the shared 2-core host hold the CPU.
fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; the clock id is a constant Linux has.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Median thread-CPU ns per call of `f`, each sample timing `calls` calls (so the
/// clock's own cost, a syscall, is amortised), for at least `budget` and 3 samples.
fn median_ns(budget: Duration, calls: usize, mut f: impl FnMut()) -> f64 {
    let mut times = Vec::new();
    let start = Instant::now();
    while times.len() < 3 || (start.elapsed() < budget && times.len() < 100_000) {
        let t = thread_cpu_ns();
        for _ in 0..calls {
            f();
        }
        times.push((thread_cpu_ns() - t) as f64 / calls as f64);
    }
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

/// Deterministic inputs in the features' usual range.
fn inputs(n: usize, seed: u32) -> Vec<f32> {
    (0..n)
        .map(|i| ((i as u32).wrapping_mul(2_654_435_761) ^ seed) as f32 / u32::MAX as f32)
        .collect()
}

/// Calls per timed sample: about 4,096 rows.
fn calls_for(rows: usize) -> usize {
    (4096 / rows).max(1)
}

fn cell_ns_per_row(cell: &GruCell, n: usize, budget: Duration) -> f64 {
    let xs = inputs(n * cell.d_input(), 1);
    let mut hs = inputs(n * cell.d_hidden(), 2);
    let mut probs = vec![0.0; n];
    median_ns(budget, calls_for(n), || cell.step(&xs, &mut hs, &mut probs)) / n as f64
}

fn burn_ns_per_row(model: &AccessModel, f: usize, h: usize, n: usize, budget: Duration) -> f64 {
    let device = Device::flex();
    let xs = inputs(n * f, 1);
    let mut hs = inputs(n * h, 2);
    // What an advisor pays: tensors in, step, values out.
    median_ns(budget, calls_for(n).min(64), || {
        let (h_t, p_t) = model.step(
            tensor2(xs.clone(), n, f, &device),
            tensor2(hs.clone(), n, h, &device),
        );
        hs = to_vec(h_t);
        std::hint::black_box(to_vec(p_t));
    }) / n as f64
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    if std::env::args().any(|a| a == "--advisor-window") {
        advisor_window_cost();
        return;
    }
    let budget = Duration::from_millis(if quick { 50 } else { 200 });
    let isas = Isa::available();
    println!("instruction sets: {isas:?}");
    print!("| shape | batch | burn ns/row |");
    for isa in &isas {
        print!(" cell {isa:?} ns/row |");
    }
    println!(" burn / best cell |");
    println!("|---|---|---|{}---|", "---|".repeat(isas.len()));
    for (f, h) in SHAPES {
        let model = AccessModel::with_input(f, h, &Device::flex());
        let cell = GruCell::from_model(&model);
        for n in BATCHES {
            let burn = burn_ns_per_row(&model, f, h, n, budget);
            print!("| {f}->{h} | {n} | {burn:.0} |");
            let mut best = f64::MAX;
            for &isa in &isas {
                let c = cell.clone().with_isa(isa).expect("available isa");
                let ns = cell_ns_per_row(&c, n, budget);
                best = best.min(ns);
                print!(" {ns:.1} |");
            }
            println!(" {:.0}x |", burn / best);
        }
    }

    println!();
    println!(
        "One window of a 1 M-page (4 GiB) VM, cell on {:?}:",
        Isa::best()
    );
    println!("| shape | 65,536 blocks stepped ms | 1,048,576 pages stepped ms |");
    println!("|---|---|---|");
    let mut shapes: Vec<(String, GruCell)> = SHAPES
        .iter()
        .map(|&(f, h)| {
            let m = AccessModel::with_input(f, h, &Device::flex());
            (format!("{f}->{h}"), GruCell::from_model(&m))
        })
        .collect();
    match AccessModel::load_cpu(&base_model_path()) {
        Ok((m, meta)) => shapes.push((
            format!("shipped model ({}->{})", meta.num_features, meta.hidden),
            GruCell::from_model(&m),
        )),
        Err(e) => println!("(shipped model not measured: {e})"),
    }
    for (name, cell) in &shapes {
        let blocks = cell_ns_per_row(cell, 65_536, budget) * 65_536.0 / 1e6;
        let pages = cell_ns_per_row(cell, 1 << 20, budget) * f64::from(1u32 << 20) / 1e6;
        println!("| {name} | {blocks:.2} | {pages:.1} |");
    }

    // What swapping in new weights costs (online learning rebuilds the cell).
    let model = AccessModel::with_input(16, 32, &Device::flex());
    let rebuild = median_ns(budget, 1, || {
        std::hint::black_box(GruCell::from_model(&model));
    });
    println!();
    println!("GruCell::from_model (16->32): {:.1} us", rebuild / 1e3);

    // Steady state: after a first call has grown the thread's scratch, a step of any
    // batch size allocates nothing.
    let (name, cell) = &shapes[0];
    let n = 4096;
    let xs = inputs(n * cell.d_input(), 3);
    let mut hs = vec![0.0; n * cell.d_hidden()];
    let mut probs = vec![0.0; n];
    cell.step(&xs, &mut hs, &mut probs);
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    for _ in 0..100 {
        cell.step(&xs, &mut hs, &mut probs);
        cell.step_one(&xs[..cell.d_input()], &mut hs[..cell.d_hidden()]);
    }
    let allocs = ALLOCATIONS.load(Ordering::Relaxed) - before;
    println!();
    println!(
        "heap allocations in 100 steady-state steps of {n} rows + 100 step_one ({name}): {allocs}"
    );
    training_step_cost(budget);
    advisor_window_cost();
}

/// One training step (loss, gradients, Adam) on a batch of 128 samples x 8 windows:
/// burn's autodiff and Adam (`BurnTrainer`, what `Trainer` ran before) against the
/// hand-written step (`BpttTrainer`, what `Trainer` runs) on each instruction set.
fn training_step_cost(budget: Duration) {
    const BATCH: usize = 128;
    const SEQ: usize = 8;
    let isas = Isa::available();
    let values = inputs(BATCH * SEQ * (NUM_FEATURES + 1), 4);
    let samples: Vec<Sample> = values
        .chunks_exact(SEQ * (NUM_FEATURES + 1))
        .map(|s| Sample {
            features: s
                .chunks_exact(NUM_FEATURES + 1)
                .map(|w| std::array::from_fn(|i| w[i]))
                .collect(),
            labels: s
                .chunks_exact(NUM_FEATURES + 1)
                .map(|w| f32::from(w[NUM_FEATURES] > 0.7))
                .collect(),
        })
        .collect();
    let batch: Vec<&Sample> = samples.iter().collect();
    // A small rate: the timed steps should not drive the weights anywhere unusual.
    let cfg = TrainConfig {
        lr: 1e-4,
        batch: BATCH,
    };
    println!();
    println!("Training step, batch {BATCH} x seq {SEQ}, median us of CPU per step:");
    print!("| shape | burn (autodiff + Adam) |");
    for isa in &isas {
        print!(" hand-written {isa:?} |");
    }
    println!(" burn / best hand-written |");
    println!("|---|---|{}---|", "---|".repeat(isas.len()));
    let mut allocs = None;
    for h in [16, 32] {
        let model = AccessModel::with_input(NUM_FEATURES, h, &Device::flex());
        let mut burn = BurnTrainer::new(&model, cfg);
        let burn_ns = median_ns(budget, 1, || {
            std::hint::black_box(burn.step(&batch, 1.0));
        });
        print!("| {NUM_FEATURES}->{h} | {:.0} |", burn_ns / 1e3);
        let weights = model.export_weights().expect("burn GRU");
        let mut best = f64::MAX;
        for &isa in &isas {
            let mut t = BpttTrainer::new(&weights)
                .expect("burn GRU")
                .with_isa(isa)
                .expect("available isa");
            let ns = median_ns(budget, 8, || {
                std::hint::black_box(t.step_samples(&batch, cfg.lr as f32));
            });
            best = best.min(ns);
            print!(" {:.0} |", ns / 1e3);
            if allocs.is_none() {
                let before = ALLOCATIONS.load(Ordering::Relaxed);
                for _ in 0..100 {
                    t.step_samples(&batch, cfg.lr as f32);
                }
                allocs = Some(ALLOCATIONS.load(Ordering::Relaxed) - before);
            }
        }
        println!(" {:.1}x |", burn_ns / best);
    }
    println!(
        "heap allocations in 100 steady-state hand-written training steps: {}",
        allocs.unwrap_or(0)
    );
}

/// The whole advisor's `end_window` (features, inference through the cell, victim and
/// prefetch bookkeeping; online learning off) for a 1 M-page VM with N active blocks,
/// each touched 4 times in the window: best of 4 windows after 2 warm-up windows.
fn advisor_window_cost() {
    use predictor::gru::online::{OnlineConfig, OnlineMode};
    use predictor::gru::{base_model_path, GruAdvisor, GruOptions};
    use tiering::access::{Access, AccessOp, AccessSource, PageKind};
    use tiering::advisor::Advisor;

    let path = base_model_path();
    let pages: u64 = 1 << 20;
    println!();
    println!(
        "GruAdvisor::end_window, shipped model {}, VM of {pages} pages (4 GiB):",
        path.display()
    );
    println!("| active blocks | stepped blocks | inference ms | end_window ms |");
    println!("|---|---|---|---|");
    for active in [1024u64, 4096, 16384] {
        let opts = GruOptions {
            online: OnlineConfig {
                mode: OnlineMode::Off,
                ..OnlineConfig::default()
            },
            ..GruOptions::default()
        };
        let mut adv = match GruAdvisor::from_file(&path, opts) {
            Ok(a) => a,
            Err(e) => {
                eprintln!("gru_cost: {e}");
                std::process::exit(2);
            }
        };
        let bp = 1u64 << adv.meta().block_shift;
        let stride = (pages / bp / active).max(1);
        let mut best = (u64::MAX, u64::MAX, 0u64);
        for w in 0..6u64 {
            for i in 0..active {
                for k in 0..4 {
                    let a = Access {
                        time_ns: w * 1_000_000 + i,
                        page: (i * stride) * bp + k % bp,
                        vcpu: 0,
                        op: AccessOp::Read,
                        kind: PageKind::Data,
                        source: AccessSource::MissingFault,
                    };
                    adv.on_access(&a, false);
                }
            }
            let before = adv.stats;
            let t = thread_cpu_ns();
            adv.end_window(w * 1_000_000 + 999_999);
            let total = thread_cpu_ns() - t;
            let inf = adv.stats.inference_ns - before.inference_ns;
            let stepped = adv.stats.stepped_blocks - before.stepped_blocks;
            if w >= 2 && total < best.1 {
                best = (inf, total, stepped);
            }
        }
        println!(
            "| {active} | {} | {:.2} | {:.2} |",
            best.2,
            best.0 as f64 / 1e6,
            best.1 as f64 / 1e6
        );
    }
}
