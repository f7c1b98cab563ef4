//! Cost of the GRU advisor for a large VM: time of one model step (one window) when
//! N blocks of a 1 M-page (4 GiB) VM are active, with the shipped model.
//!
//! `cargo run --release -p predictor --example gru_cost [-- MODEL]`

use std::time::Instant;

use predictor::gru::{base_model_path, GruAdvisor, GruOptions};
use tiering::access::{Access, AccessOp, AccessSource, PageKind};
use tiering::advisor::Advisor;

fn main() {
    let path = std::env::args()
        .nth(1)
        .map_or_else(base_model_path, Into::into);
    let pages: u64 = 1 << 20;
    println!("model {} ; VM of {pages} pages (4 GiB)", path.display());
    println!("| active blocks | stepped blocks | model step (inference) ms | end_window total ms | on_access ns |");
    println!("|---|---|---|---|---|");
    for active in [256u64, 1024, 4096, 8192] {
        let mut adv = match GruAdvisor::from_file(&path, GruOptions::default()) {
            Ok(a) => a,
            Err(e) => {
                eprintln!("gru_cost: {e}");
                std::process::exit(2);
            }
        };
        let bp = 1u64 << adv.meta().block_shift;
        let stride = (pages / bp / active).max(1);
        let mut on_access_ns = 0u128;
        let mut n = 0u128;
        let mut best = (u64::MAX, u64::MAX, 0u64);
        for w in 0..6u64 {
            let t = Instant::now();
            for i in 0..active {
                for k in 0..4 {
                    let a = Access {
                        time_ns: w * 1_000_000 + i,
                        page: (i * stride) * bp + k,
                        vcpu: 0,
                        op: AccessOp::Read,
                        kind: PageKind::Data,
                        source: AccessSource::MissingFault,
                    };
                    adv.on_access(&a, false);
                }
            }
            on_access_ns += t.elapsed().as_nanos();
            n += u128::from(active * 4);
            let before = adv.stats;
            let t = Instant::now();
            adv.end_window(w * 1_000_000 + 999_999);
            let total = t.elapsed().as_nanos() as u64;
            let inf = adv.stats.inference_ns - before.inference_ns;
            let stepped = adv.stats.stepped_blocks - before.stepped_blocks;
            if w >= 2 && total < best.1 {
                best = (inf, total, stepped);
            }
        }
        println!(
            "| {active} | {} | {:.2} | {:.2} | {:.0} |",
            best.2,
            best.0 as f64 / 1e6,
            best.1 as f64 / 1e6,
            on_access_ns as f64 / n as f64
        );
    }
}
