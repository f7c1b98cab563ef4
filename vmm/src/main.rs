//! `tiervisor`: a KVM virtual machine monitor with tiered, predicted guest memory.

mod cmd;

use std::time::Instant;

use clap::{Parser, Subcommand};

const EXAMPLES: &str = "\
Examples:
  Boot the test guest with its memory in tiers, the GRU advisor deciding:
    tiervisor run --kernel resources/out/testguest.elf --memory 64M --ram-budget 16M \\
        --tiers resources/tiers/bench-live.toml --advisor gru \\
        --cmdline 'workload=zipf mem=32M iters=200000 seed=1'
  Compare paging advisors on a recorded trace:
    tiervisor replay --trace resources/out/traces/eval/gzip.tvt --ram-fraction 0.25 \\
        --advisor gru,leap,stride,lru,none,oracle
  Train a model and a first-touch prior, summarise a trace:
    tiervisor train --trace resources/out/traces/train/*.tvt -o model.bpk
    tiervisor train-prior --trace resources/out/traces/train/*.tvt -o prior.json
    tiervisor trace info resources/out/traces/eval/gzip.tvt

Each command's --help has more examples and its exit status. `make demo` builds
everything and runs the main job; docs/ describes each part.";

#[derive(Parser)]
#[command(
    name = "tiervisor",
    version,
    about = "KVM VMM whose guest memory spans six tiers, moved ahead of need by a learned predictor",
    after_help = EXAMPLES
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Boot a VM from a kernel image (PVH ELF or bzImage).
    Run(cmd::run::RunArgs),
    /// Inspect, dump and import memory access traces.
    #[command(subcommand)]
    Trace(cmd::trace::TraceCommand),
    /// Train a GRU access model from traces.
    Train(cmd::train::TrainArgs),
    /// Learn the first-touch prior (what programs touch first, as page deltas) from traces.
    TrainPrior(cmd::train_prior::TrainPriorArgs),
    /// Replay a trace through simulated tiered memory and compare advisors.
    Replay(cmd::replay::ReplayArgs),
    /// Share one RAM budget among the VMs that join with `run --ram-pool DIR`.
    Pool(cmd::pool::PoolArgs),
}

fn main() {
    // First thing: boot times (boot-timer port, boot_ms) are measured from here.
    let process_start = Instant::now();
    vmm::host::ensure_std_fds();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = Cli::parse();
    let code = match cli.command {
        Command::Run(args) => cmd::run::run(args, process_start),
        Command::Trace(c) => cmd::trace::run(c),
        Command::Train(args) => cmd::train::run(args),
        Command::TrainPrior(args) => cmd::train_prior::run(args),
        Command::Replay(args) => cmd::replay::run(args),
        Command::Pool(args) => cmd::pool::run(args),
    };
    std::process::exit(code);
}
