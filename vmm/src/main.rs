//! `tiervisor`: a KVM virtual machine monitor with tiered, predicted guest memory.

mod cmd;

use std::time::Instant;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "tiervisor",
    version,
    about = "KVM VMM whose guest memory spans six tiers, moved ahead of need by a learned predictor"
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
    /// Replay a trace through simulated tiered memory and compare advisors.
    Replay(cmd::replay::ReplayArgs),
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
        Command::Replay(args) => cmd::replay::run(args),
    };
    std::process::exit(code);
}
