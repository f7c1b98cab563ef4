//! `tiervisor pool`: the manager that shares one RAM budget among the VMs that join
//! it with `tiervisor run --ram-pool DIR` (docs/pool.md).

use std::os::fd::AsFd;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use tiering::access::PAGE_SIZE;
use tiering::pool::PoolConfig;
use vmm::pool::{Manager, ManagerOptions, Schedule};

const POOL_EXAMPLES: &str = "\
Examples:
  A 16 MiB pool, then two VMs in it (the second with three times the first's priority;
  each with its own tier files, here its own TIERVISOR_WORKDIR):
    tiervisor pool --dir /run/tv-pool --size 16M &
    TIERVISOR_WORKDIR=/var/tmp/tv-a tiervisor run --kernel resources/out/testguest.elf \\
        --memory 64M --cmdline 'workload=zipf mem=24M iters=400000 seed=1' \\
        --tiers resources/tiers/bench-live.toml --ram-pool /run/tv-pool --cpu 0 &
    TIERVISOR_WORKDIR=/var/tmp/tv-b tiervisor run --kernel resources/out/testguest.elf \\
        --memory 64M --cmdline 'workload=scan mem=8M iters=400000 seed=2' \\
        --tiers resources/tiers/bench-live.toml --ram-pool /run/tv-pool --cpu 1 --priority 3
  A pool for one batch of VMs, ended when the last one leaves:
    tiervisor pool --dir /tmp/pool --size 8M --exit-when-empty
  VMs taking turns of 300 ms on one CPU, each staged as its turn begins:
    tiervisor pool --dir /tmp/pool --size 8M --slice-ms 300 --run-slots 1
  All at once while their working sets fit, two at a time in turns of 300 ms once they
  do not (load control):
    tiervisor pool --dir /tmp/pool --size 24M --slice-ms 300 --run-slots 2 \\
        --turns-when-over-committed
  A batch started together: in turns until what each VM held at the end of its turn
  fits, then all at once (and back to turns if they thrash):
    tiervisor pool --dir /tmp/pool --size 24M --slice-ms 300 --run-slots 2 \\
        --turns-first --exit-when-empty

Each round the manager reads every member's report (priority, size, resident pages,
faults), then: a VM that joins gets its priority's share of the pool; a VM that
neither refaults nor touches new pages gives back the budget it does not use; free
pages go to the VMs that refault; and one step moves from the VM least pressed
(refaults per second times priority) to the one most pressed. A VM that exits gives
its share back. The budgets never add up to more than --size. When every VM has
refaulted at its budget for 5 rounds (2 if each 1,000 times a second or more), their
working sets do not fit together: the manager prints `over-committed: ...` once and,
until no VM refaults for 10 rounds, gives a step a round to the first VM (by priority,
then joining; the lead moves on every 30 s) that refaults from the last ones, down to
a quarter of their shares: the first VMs run at speed and leave room for the next.
--slice-ms is the better remedy where VMs may be paused (--turns-when-over-committed
takes it then, and only then; --turns-first starts with it and runs the VMs all at
once once their working sets, measured in their turns, fit).

With --slice-ms the manager runs the VMs in turns instead (a gang scheduler over whole
VMs): at most --run-slots run at once, each for a slice, while the others wait with
their vCPUs paused and a thirty-second of the pool each; the running VMs share the
rest by priority. A turn begins by asking back, in one batch, the pages the VM held
when it was paused (--no-staging: it faults them in); its slice counts from when
those pages are in, and lasts at least twice as long as they took, so that on a slow
tier a turn is not spent staging. With --prestaging, once the running VMs' pages are
in, the room they hold but do not use is lent to the next VM in line, which stages as
much of its set as fits before its turn (off by default: measured no faster, docs/pool.md).

Exit status: 0 after SIGINT/SIGTERM or, with --exit-when-empty, once the last VM
left; 2 for bad input (or another manager on --dir).";

/// `tiervisor pool` arguments.
#[derive(clap::Args, Debug)]
#[command(after_help = POOL_EXAMPLES)]
pub struct PoolArgs {
    /// Pool directory (created if needed); VMs join with `tiervisor run --ram-pool DIR`.
    #[arg(long, value_name = "DIR")]
    pub dir: PathBuf,
    /// RAM the pool's VMs share: bytes or with a K/M/G suffix.
    #[arg(long, value_name = "SIZE")]
    pub size: String,
    /// Time between rounds, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 100)]
    pub interval_ms: u64,
    /// Most RAM moved from one VM to another in a round [default: a sixteenth of --size].
    #[arg(long, value_name = "SIZE")]
    pub step: Option<String>,
    /// End once every VM has left, after at least one joined.
    #[arg(long)]
    pub exit_when_empty: bool,
    /// Run the VMs in turns of this many milliseconds (counted once a turn's staged
    /// pages are in; at least twice the time they took), at most --run-slots at once,
    /// instead of all at once; a waiting VM's vCPUs are paused.
    #[arg(long, value_name = "MS")]
    pub slice_ms: Option<u64>,
    /// VMs that run at once when running in turns.
    #[arg(long, value_name = "N", default_value_t = 1, requires = "slice_ms")]
    pub run_slots: usize,
    /// In turns, do not ask a VM's pages back when its turn begins (for comparison):
    /// it faults them in.
    #[arg(long, requires = "slice_ms")]
    pub no_staging: bool,
    /// In turns, let the next VM in line stage its pages before its turn, in the room
    /// the running VMs do not use (off by default: it measured no faster than staging
    /// as the turn begins, and slower with the VMs on one CPU; docs/pool.md).
    #[arg(long, requires = "slice_ms", conflicts_with = "no_staging")]
    pub prestaging: bool,
    /// Run the VMs all at once, and in turns (--slice-ms, --run-slots) only once the
    /// pool is over-committed: every VM has refaulted at its budget for 5 rounds (2 if
    /// each 1,000 times a second or more), or, while some still fill their memory, the
    /// VMs have touched more pages than the pool holds and all the others refault.
    /// Turns then last until what the VMs hold at the ends of their turns fits in the
    /// pool, or no more VMs remain than --run-slots.
    #[arg(long, requires = "slice_ms")]
    pub turns_when_over_committed: bool,
    /// As --turns-when-over-committed, but start in turns: the VMs run all at once
    /// only once what each held at the end of its turn fits in the pool. For a batch
    /// of VMs started together, whose working sets are not known yet.
    #[arg(long, requires = "slice_ms")]
    pub turns_first: bool,
}

fn pages_of(flag: &str, text: &str) -> Result<u64, String> {
    let bytes = vmm::host::parse_size(text).map_err(|e| format!("{flag}: {e}"))?;
    if bytes < PAGE_SIZE {
        return Err(format!("{flag} {text} is less than one page (4 KiB)"));
    }
    Ok(bytes / PAGE_SIZE)
}

/// `tiervisor pool`; returns the exit status.
pub fn run(args: PoolArgs) -> i32 {
    let size_pages = match pages_of("--size", &args.size) {
        Ok(p) => p,
        Err(e) => return super::usage_error(e),
    };
    let mut config = PoolConfig::new(size_pages);
    if let Some(step) = &args.step {
        match pages_of("--step", step) {
            Ok(p) => config.step_pages = p,
            Err(e) => return super::usage_error(e),
        }
    }
    if args.interval_ms == 0 {
        return super::usage_error("--interval-ms must be at least 1");
    }
    if args.slice_ms == Some(0) {
        return super::usage_error("--slice-ms must be at least 1");
    }
    if args.run_slots == 0 {
        return super::usage_error("--run-slots must be at least 1");
    }
    let schedule = args.slice_ms.map(|ms| Schedule {
        slice: Duration::from_millis(ms),
        slots: args.run_slots,
        staging: !args.no_staging,
        prestaging: args.prestaging,
    });
    let signals = match vmm::event_loop::stop_signal_fd() {
        Ok(fd) => fd,
        Err(e) => {
            eprintln!("tiervisor: cannot watch SIGINT/SIGTERM: {e}");
            return 1;
        }
    };
    let interval = Duration::from_millis(args.interval_ms);
    let mut manager = match Manager::start(ManagerOptions {
        dir: args.dir.clone(),
        config,
        interval,
        exit_when_empty: args.exit_when_empty,
        schedule,
        turns_when_over_committed: args.turns_when_over_committed || args.turns_first,
        start_in_turns: args.turns_first,
    }) {
        Ok(m) => m,
        Err(e) => return super::usage_error(e),
    };
    eprintln!(
        "tiervisor pool: {} pages ({}) shared in {}; a round every {} ms",
        size_pages,
        vmm::host::format_size(size_pages * PAGE_SIZE),
        args.dir.display(),
        args.interval_ms
    );
    let mut most = 0usize;
    loop {
        let start = Instant::now();
        for line in manager.round() {
            eprintln!("{line}");
        }
        most = most.max(manager.member_count());
        if manager.done() {
            break;
        }
        // Until the next round, woken when a VM joins or leaves: a VM that joins waits
        // for its first budget before it boots, so it is answered at once, and when a
        // VM leaves, its share (or its turn) goes to the others at once.
        let mut stop = false;
        while start.elapsed() < interval {
            if manager.wait(interval.saturating_sub(start.elapsed()), signals.as_fd()) {
                stop = true;
                break;
            }
            if manager.membership_changed() {
                break;
            }
            for line in manager.tick() {
                eprintln!("{line}");
            }
        }
        if stop {
            break;
        }
    }
    let (size, assigned) = manager.assigned();
    eprintln!(
        "tiervisor pool: stopped; {} VMs at most at once, {assigned} of {size} pages assigned at the end",
        most
    );
    manager.close();
    0
}
