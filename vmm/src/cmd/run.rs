//! `tiervisor run`: validate the request, build the VM, run it, report.

use std::path::PathBuf;
use std::time::Instant;

use kvm_ioctls::{Cap, Kvm};

use vmm::host;
use vmm::layout;
use vmm::machine::{Machine, VmConfig};

const RUN_EXAMPLES: &str = "\
Examples:
  Boot the test guest with a workload (exit status = guest's debug-exit value):
    tiervisor run --kernel resources/out/testguest.elf \\
        --cmdline 'workload=zipf mem=64M iters=200000 seed=1' --memory 256M --vcpus 2
  Boot a Linux bzImage with an initramfs, writing metrics:
    tiervisor run --kernel resources/out/vmlinuz --initrd resources/out/initramfs.cpio.gz \\
        --cmdline 'console=ttyS0 earlyprintk=ttyS0' --memory 512M --metrics-out run.json
  Tiered memory, 2 MiB in RAM and the rest over tiers 2-5 ranked by speed, with the GRU
  advisor (tier 5 needs an NBD server on $TIERVISOR_WORKDIR/nbd.sock, docs/tiering.md):
    TIERVISOR_WORKDIR=/var/tmp/tv tiervisor run --kernel resources/out/testguest.elf \\
        --cmdline 'workload=chase mem=8M iters=10000 seed=7' --memory 64M \\
        --tiers resources/tiers/by-speed.toml --ram-budget 2M --advisor gru
  The same in a RAM pool shared with other VMs, at priority 2 (docs/pool.md):
    tiervisor run --kernel resources/out/testguest.elf \\
        --cmdline 'workload=chase mem=8M iters=10000 seed=7' --memory 64M \\
        --tiers resources/tiers/by-speed.toml --ram-pool /run/tv-pool --priority 2
  Priority, advisor and tier thresholds from an admin policy by application type
  (docs/policy.md; flags given here win over the file):
    tiervisor run --kernel resources/out/testguest.elf \\
        --cmdline 'workload=kv mem=8M iters=10000 seed=7' --memory 64M \\
        --tiers resources/tiers/by-speed.toml --ram-pool /run/tv-pool \\
        --policy resources/policies/default.toml --app-type database
  The GRU advisor's model of this VM kept across runs: the first run starts from the
  shipped base model and saves what online learning made of it when the VM ends; the
  next starts from that file (docs/predictor.md, \"Per-VM models across runs\"):
    tiervisor run --kernel resources/out/testguest.elf --memory 64M \\
        --cmdline 'workload=phases mem=8M iters=20000 seed=7' \\
        --tiers resources/tiers/bench-live.toml --ram-budget 2M --advisor gru \\
        --save-model vm1.bpk
    tiervisor run ... --advisor gru --model vm1.bpk --save-model vm1.bpk

Exit status: the guest's debug-exit value (port 0xf4) & 0xff; 0 after an i8042 reset;
1 when the VM fails (triple fault, KVM internal error) or its --metrics-out or
--save-model file cannot be written at the end; 2 for bad input;
128+N when stopped by signal N.";

/// `tiervisor run` arguments.
#[derive(clap::Args, Debug)]
#[command(after_help = RUN_EXAMPLES)]
pub struct RunArgs {
    /// Kernel image: an ELF with a PVH note, or a bzImage.
    #[arg(long, value_name = "FILE")]
    pub kernel: PathBuf,
    /// Initial ramdisk, loaded at the top of low RAM.
    #[arg(long, value_name = "FILE")]
    pub initrd: Option<PathBuf>,
    /// Kernel command line.
    #[arg(long, value_name = "STR", default_value = "")]
    pub cmdline: String,
    /// Guest memory: bytes or with a K/M/G/T suffix.
    #[arg(long, value_name = "SIZE", default_value = "256M")]
    pub memory: String,
    /// Number of vCPUs.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub vcpus: u32,
    /// Write run metrics (boot_ms, vmm_overhead_kib, exits, ...) as JSON here.
    #[arg(long, value_name = "FILE.json")]
    pub metrics_out: Option<PathBuf>,
    /// Tier file (TOML, see docs/tiering.md): puts guest memory in tiers 0-5.
    #[arg(long, value_name = "FILE.toml")]
    pub tiers: Option<PathBuf>,
    /// Most guest RAM resident at once (e.g. 16M); the rest lives in the tiers.
    #[arg(long, value_name = "SIZE", requires = "tiers")]
    pub ram_budget: Option<String>,
    /// Record guest memory access events to this trace file.
    #[arg(long, value_name = "FILE", requires = "tiers")]
    pub trace_out: Option<PathBuf>,
    /// Paging advisor: none (CLOCK demand paging), lru, lfu, arc, lirs, workingset, stride, leap, gru
    /// (any but none needs --tiers) [default: the --policy file's, else none].
    #[arg(long, value_name = "NAME")]
    pub advisor: Option<String>,
    /// Model the gru advisor starts from [default: $TIERVISOR_GRU_MODEL, else the
    /// shipped base model].
    #[arg(long, value_name = "FILE.bpk", requires = "tiers")]
    pub model: Option<PathBuf>,
    /// When the VM ends, write the gru advisor's model, as online learning left it,
    /// here: this VM's own model, for `--model` in its next run (may be the same file).
    #[arg(long, value_name = "FILE.bpk", requires = "tiers")]
    pub save_model: Option<PathBuf>,
    /// Admin policy file (TOML, docs/policy.md): per application type, the priority in
    /// a RAM pool, the advisor and the tier thresholds; flags given here win over it.
    #[arg(long, value_name = "FILE.toml", requires = "tiers")]
    pub policy: Option<PathBuf>,
    /// Application type in the --policy file (its `[app.NAME]` table) [default: the
    /// file's `[defaults]` alone].
    #[arg(long, value_name = "NAME", requires = "policy")]
    pub app_type: Option<String>,
    /// Directory where tiered VMs publish page content hashes; pages another live
    /// VM also holds are kind "shared" in the trace and metrics (default: off).
    #[arg(long, value_name = "DIR", requires = "tiers")]
    pub share_dir: Option<PathBuf>,
    /// Join the RAM pool a `tiervisor pool --dir DIR` manager runs: the VM's RAM budget
    /// is its share of the pool, and changes while it runs (instead of --ram-budget).
    #[arg(
        long,
        value_name = "DIR",
        requires = "tiers",
        conflicts_with = "ram_budget"
    )]
    pub ram_pool: Option<PathBuf>,
    /// Host CPU for vCPU 0 and the fault handler of tiered memory (vCPU i goes on the
    /// i-th CPU from it that this process may run on); VMs side by side on one host pin
    /// apart with it [default: the first CPU this process may run on].
    #[arg(long, value_name = "N", requires = "tiers")]
    pub cpu: Option<usize>,
    /// Priority in the RAM pool, 1-1000: shares and pressure are weighted by it [default: 1].
    #[arg(long, value_name = "N", requires = "ram_pool", value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub priority: Option<u32>,
}

/// Bad input or a host that cannot run the request: one line, exit status 2.
#[derive(Debug, thiserror::Error)]
pub enum RunInputError {
    /// --memory did not parse.
    #[error("--memory: {0}")]
    MemorySyntax(String),
    /// Below the minimum.
    #[error("--memory {given} is too small: the minimum is {min}")]
    MemoryTooSmall { given: String, min: String },
    /// More than the host has.
    #[error(
        "--memory {given} is larger than this host's physical RAM ({total}; {available} available)"
    )]
    MemoryTooLarge {
        given: String,
        total: String,
        available: String,
    },
    /// Not page aligned.
    #[error("--memory {0} is not a multiple of 4 KiB")]
    MemoryUnaligned(String),
    /// Zero vCPUs.
    #[error("--vcpus must be at least 1")]
    NoVcpus,
    /// More vCPUs than KVM recommends here.
    #[error("--vcpus {given} is more than this host's KVM supports: at most {max} (KVM_CAP_NR_VCPUS {nr}, KVM_CAP_MAX_VCPUS {hard})")]
    TooManyVcpus {
        given: u32,
        max: usize,
        nr: usize,
        hard: usize,
    },
    /// Command line longer than the boot protocol allows.
    #[error("--cmdline is {len} bytes; the limit is {max} bytes")]
    CmdlineTooLong { len: usize, max: usize },
    /// A file named on the command line cannot be read.
    #[error("cannot read {what} {path}: {source}")]
    File {
        what: &'static str,
        path: String,
        source: std::io::Error,
    },
    /// An output file named on the command line could not be written at the end of the run.
    #[error("cannot write {what} {path}: {why}")]
    Output {
        what: &'static str,
        path: String,
        why: String,
    },
    /// /dev/kvm missing.
    #[error("/dev/kvm does not exist: this host has no KVM (load kvm_intel/kvm_amd, or run where virtualization is available)")]
    NoKvm,
    /// /dev/kvm not accessible.
    #[error("no permission to open /dev/kvm: run as root or add this user to the 'kvm' group")]
    KvmPermission,
    /// Another /dev/kvm failure.
    #[error("cannot open /dev/kvm: {0}")]
    KvmOpen(kvm_ioctls::Error),
    /// A KVM capability tiervisor needs is missing.
    #[error("this host's KVM lacks {0}, which tiervisor needs")]
    MissingCap(&'static str),
}

/// Check the arguments that need no KVM.
pub fn validate(args: &RunArgs) -> Result<VmConfig, RunInputError> {
    let check_file = |what, path: &PathBuf| {
        std::fs::File::open(path)
            .and_then(|f| f.metadata())
            .and_then(|m| {
                if m.is_dir() {
                    Err(std::io::Error::other("is a directory"))
                } else {
                    Ok(())
                }
            })
            .map_err(|source| RunInputError::File {
                what,
                path: path.display().to_string(),
                source,
            })
    };
    check_file("kernel", &args.kernel)?;
    if let Some(path) = &args.metrics_out {
        check_output("metrics", path)?;
    }
    if let Some(path) = &args.trace_out {
        check_output("trace", path)?;
    }
    if let Some(path) = &args.save_model {
        check_output("model", path)?;
    }
    if let Some(initrd) = &args.initrd {
        check_file("initrd", initrd)?;
    }
    let max_cmdline = layout::CMDLINE_MAX_SIZE - 1;
    if args.cmdline.len() > max_cmdline {
        return Err(RunInputError::CmdlineTooLong {
            len: args.cmdline.len(),
            max: max_cmdline,
        });
    }
    let memory = host::parse_size(&args.memory).map_err(RunInputError::MemorySyntax)?;
    if memory < layout::MIN_MEMORY {
        return Err(RunInputError::MemoryTooSmall {
            given: args.memory.clone(),
            min: host::format_size(layout::MIN_MEMORY),
        });
    }
    if memory % layout::PAGE_SIZE != 0 {
        return Err(RunInputError::MemoryUnaligned(args.memory.clone()));
    }
    if let Some(hm) = host::host_memory() {
        if memory > hm.total {
            return Err(RunInputError::MemoryTooLarge {
                given: args.memory.clone(),
                total: human(hm.total),
                available: human(hm.available),
            });
        }
        if memory > hm.available {
            log::warn!(
                "--memory {} is more than the {} available now; the guest may be OOM-killed if it touches it all",
                args.memory,
                human(hm.available)
            );
        }
    }
    if args.vcpus == 0 {
        return Err(RunInputError::NoVcpus);
    }
    Ok(VmConfig {
        kernel: args.kernel.clone(),
        initrd: args.initrd.clone(),
        cmdline: args.cmdline.clone(),
        memory,
        // Checked against KVM's limit (<= 255 is enforced there) in open_kvm.
        vcpus: u8::try_from(args.vcpus).unwrap_or(u8::MAX),
    })
}

/// Tells what became of `--save-model` (one line on stderr) and returns the saved
/// model, or `None` if it could not be written.
fn report_saved_model(
    saver: &predictor::saved_model::ModelSaver,
) -> Option<predictor::saved_model::SavedModel> {
    match saver.result() {
        Ok(saved) => {
            eprintln!(
                "tiervisor: saved this VM's model to {} ({} weight updates from online learning in this run)",
                saved.path, saved.weight_updates
            );
            Some(saved)
        }
        Err(e) => {
            eprintln!("tiervisor: --save-model: {e}");
            None
        }
    }
}

/// Refuses, before the guest runs, an output path whose file could not be written at
/// the end of the run ([`super::unwritable_output`]).
fn check_output(what: &'static str, path: &std::path::Path) -> Result<(), RunInputError> {
    match super::unwritable_output(path) {
        Some(why) => Err(RunInputError::Output {
            what,
            path: path.display().to_string(),
            why,
        }),
        None => Ok(()),
    }
}

/// An f32 as the f64 of its shortest decimal form.
fn decimal(x: f32) -> f64 {
    x.to_string().parse().unwrap_or(f64::from(x))
}

fn human(bytes: u64) -> String {
    format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64)
}

/// Open /dev/kvm and check it can run `vcpus` vCPUs.
pub fn open_kvm(vcpus: u32) -> Result<Kvm, RunInputError> {
    let kvm = Kvm::new().map_err(|e| match e.errno() {
        libc::ENOENT => RunInputError::NoKvm,
        libc::EACCES | libc::EPERM => RunInputError::KvmPermission,
        _ => RunInputError::KvmOpen(e),
    })?;
    for (cap, name) in [
        (Cap::Irqchip, "KVM_CAP_IRQCHIP"),
        (Cap::Pit2, "KVM_CAP_PIT2"),
        (Cap::Irqfd, "KVM_CAP_IRQFD"),
        (Cap::ImmediateExit, "KVM_CAP_IMMEDIATE_EXIT"),
    ] {
        if !kvm.check_extension(cap) {
            return Err(RunInputError::MissingCap(name));
        }
    }
    // NR_VCPUS is KVM's recommended maximum (the host's CPUs); more vCPUs than that
    // only time-share. The ACPI MADT and xAPIC ids cap it at 255 anyway.
    let nr = kvm.get_nr_vcpus();
    let hard = kvm.get_max_vcpus();
    let max = nr.min(hard).min(255);
    if vcpus as usize > max {
        return Err(RunInputError::TooManyVcpus {
            given: vcpus,
            max,
            nr,
            hard,
        });
    }
    Ok(kvm)
}

/// `tiervisor run`; returns the exit status.
pub fn run(args: RunArgs, process_start: Instant) -> i32 {
    // Before any thread starts (tiered memory and its advisor start theirs before the
    // VM runs), so a SIGTERM waits for the VM's signalfd instead of killing the process.
    if let Err(e) = vmm::event_loop::block_stop_signals() {
        eprintln!("tiervisor: cannot block SIGINT/SIGTERM: {e}");
        return 1;
    }
    let config = match validate(&args) {
        Ok(c) => c,
        Err(e) => return super::usage_error(e),
    };
    // The admin policy fills in what the flags leave out.
    let policy = match &args.policy {
        Some(path) => {
            let file = match tiering::admin::AdminPolicy::load(path) {
                Ok(f) => f,
                Err(e) => return super::usage_error(e),
            };
            match &args.app_type {
                Some(app) => match file.for_app(app) {
                    Ok(p) => Some(p),
                    Err(e) => return super::usage_error(e),
                },
                None => Some(file.defaults().clone()),
            }
        }
        None => None,
    };
    let advisor = args
        .advisor
        .clone()
        .or_else(|| policy.as_ref().and_then(|p| p.advisor.clone()))
        .unwrap_or_else(|| "none".into());
    if advisor != "gru" {
        for (flag, given) in [
            ("--model", args.model.is_some()),
            ("--save-model", args.save_model.is_some()),
        ] {
            if given {
                return super::usage_error(format!(
                    "{flag} is for the gru advisor, and this run's advisor is {advisor}"
                ));
            }
        }
    }
    let model_saver = args
        .save_model
        .clone()
        .map(predictor::saved_model::ModelSaver::new);
    let priority = args
        .priority
        .or_else(|| policy.as_ref().and_then(|p| p.priority))
        .unwrap_or(1);
    let tiered_request = match vmm::tiered::TieredRequest::from_args(
        args.tiers.as_ref(),
        args.ram_budget.as_deref(),
        args.trace_out.as_ref(),
        &advisor,
        args.cpu,
    ) {
        Ok(r) => r.map(|mut r| {
            r.share_dir = args.share_dir.clone();
            if let Some(t) = policy.as_ref().and_then(|p| p.thresholds) {
                r.thresholds = t;
            }
            r
        }),
        Err(e) => return super::usage_error(e),
    };
    let kvm = match open_kvm(args.vcpus) {
        Ok(k) => k,
        Err(e) => return super::usage_error(e),
    };
    let guest_pages = config.memory / tiering::access::PAGE_SIZE;
    // Joined before the VM is built, so that it starts within its share.
    let (tiered_request, membership) = match (tiered_request, &args.ram_pool) {
        (Some(mut req), Some(dir)) => {
            match vmm::pool::PoolMembership::join(
                dir,
                priority,
                guest_pages,
                Some(req.cpus.handler()),
            ) {
                Ok(m) => {
                    req.ram_budget_bytes =
                        Some(m.initial_budget_pages * tiering::access::PAGE_SIZE);
                    (Some(req), Some(m))
                }
                Err(e) => return super::usage_error(e),
            }
        }
        (req, _) => (req, None),
    };
    let machine = match Machine::build(&kvm, config, process_start) {
        Ok(m) => m,
        Err(e) if e.is_bad_input() => return super::usage_error(e),
        Err(e) => {
            eprintln!("tiervisor: {e}");
            return 1;
        }
    };
    if host::is_pvm_host() {
        eprintln!("tiervisor: {}", host::PVM_NOTE);
    }
    let tiered = match tiered_request {
        Some(req) => {
            let budget_pages = req
                .ram_budget_bytes
                .map_or(guest_pages, |b| b / tiering::access::PAGE_SIZE);
            let ctx = predictor::ReplayContext {
                ram_budget_pages: budget_pages as usize,
                distinct_pages: guest_pages,
                future: None,
                model: args.model.clone(),
                position: None,
                save_model: model_saver.clone(),
            };
            // Live: `gru` learns in a background thread (replay learns inline).
            let live = match predictor::make_live_advisor(&req.advisor, &ctx) {
                Ok(a) => a,
                Err(e) => {
                    let flag = if args.model.is_some() {
                        "--model"
                    } else {
                        "--advisor"
                    };
                    return super::usage_error(format!("{flag}: {e}"));
                }
            };
            match vmm::tiered::attach(&machine, req, live.advisor) {
                Ok(t) => {
                    let pool = membership.map(|m| {
                        let vm = vmm::pool::VmControl {
                            gate: machine.vcpu_gate(),
                            vcpus: machine.vcpu_count(),
                            pages: t.guest_pages(),
                        };
                        m.start(t.budget_handle(), vm)
                    });
                    Some((t, live.report, pool))
                }
                Err(e) => {
                    eprintln!("tiervisor: {e}");
                    return 1;
                }
            }
        }
        None => None,
    };
    let mut model_save_failed = false;
    let outcome = match machine.run() {
        Ok(mut o) => {
            if let Some((t, advisor_report, pool)) = tiered {
                let history = pool.and_then(|p| p.leave());
                let mut tiers = t.finish();
                if let (Some(path), Some(section)) = (&args.policy, tiers.as_object_mut()) {
                    let th = policy
                        .as_ref()
                        .and_then(|p| p.thresholds)
                        .unwrap_or_default();
                    section.insert(
                        "policy".into(),
                        serde_json::json!({
                            "file": path.display().to_string(),
                            "app_type": args.app_type,
                            "advisor": advisor,
                            "priority": priority,
                            // f32 -> shortest decimal, so 0.6 reads 0.6, not 0.6000000238.
                            "thresholds": {
                                "ram": decimal(th.ram), "nvme": decimal(th.nvme),
                                "ssd": decimal(th.ssd), "hdd": decimal(th.hdd),
                            },
                        }),
                    );
                }
                if let (Some(h), Some(section)) = (history, tiers.as_object_mut()) {
                    section.insert(
                        "pool".into(),
                        serde_json::to_value(h).unwrap_or(serde_json::Value::Null),
                    );
                }
                // The advisor's own counters (online learning, pattern changes).
                if let (Some(report), Some(section)) = (advisor_report, tiers.as_object_mut()) {
                    section.insert("advisor_online".into(), report());
                }
                // The advisor ended with the fault handler's thread, so it has saved.
                if let (Some(saver), Some(section)) = (&model_saver, tiers.as_object_mut()) {
                    let saved = report_saved_model(saver);
                    if saved.is_none() {
                        model_save_failed = true;
                    }
                    section.insert("saved_model".into(), serde_json::json!(saved));
                }
                o.metrics.tiers = Some(tiers);
            }
            o
        }
        Err(e) => {
            eprintln!("tiervisor: {e}");
            return 1;
        }
    };
    if let Some(msg) = outcome.reason.message() {
        eprintln!("tiervisor: {msg}");
    }
    let mut status = outcome.reason.exit_status();
    if model_save_failed && status == 0 {
        status = 1;
    }
    if let Some(path) = &args.metrics_out {
        let written = serde_json::to_string_pretty(&outcome.metrics)
            .map_err(std::io::Error::other)
            .and_then(|json| std::fs::write(path, json + "\n"));
        if let Err(e) = written {
            eprintln!("tiervisor: cannot write metrics to {}: {e}", path.display());
            return if status == 0 { 1 } else { status };
        }
    }
    status
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(memory: &str, cmdline: &str) -> RunArgs {
        RunArgs {
            kernel: PathBuf::from("/proc/self/exe"),
            initrd: None,
            cmdline: cmdline.into(),
            memory: memory.into(),
            vcpus: 1,
            metrics_out: None,
            tiers: None,
            ram_budget: None,
            trace_out: None,
            advisor: None,
            model: None,
            save_model: None,
            policy: None,
            app_type: None,
            share_dir: None,
            ram_pool: None,
            priority: None,
            cpu: None,
        }
    }

    #[test]
    fn memory_limits_are_checked() {
        assert!(validate(&args("64M", "")).is_ok());
        let e = validate(&args("1M", "")).unwrap_err();
        assert!(e.to_string().contains("minimum is 16M"), "{e}");
        let e = validate(&args("100T", "")).unwrap_err();
        assert!(e.to_string().contains("physical RAM"), "{e}");
        assert!(matches!(
            validate(&args("lots", "")),
            Err(RunInputError::MemorySyntax(_))
        ));
        assert!(matches!(
            validate(&args("16777217", "")),
            Err(RunInputError::MemoryUnaligned(_))
        ));
    }

    #[test]
    fn cmdline_length_is_checked() {
        assert!(validate(&args("64M", &"a".repeat(2047))).is_ok());
        let e = validate(&args("64M", &"a".repeat(2048))).unwrap_err();
        assert!(matches!(
            e,
            RunInputError::CmdlineTooLong {
                len: 2048,
                max: 2047
            }
        ));
    }

    #[test]
    fn an_unwritable_metrics_path_is_refused_before_the_run() {
        let mut a = args("64M", "");
        a.metrics_out = Some(PathBuf::from("/nonexistent/m.json"));
        let e = validate(&a).unwrap_err().to_string();
        assert_eq!(
            e,
            "cannot write metrics /nonexistent/m.json: there is no directory /nonexistent"
        );
        a.metrics_out = Some(std::env::temp_dir());
        let e = validate(&a).unwrap_err().to_string();
        assert!(e.ends_with("it is a directory"), "{e}");
        a.metrics_out = Some(PathBuf::from("m.json"));
        assert!(
            validate(&a).is_ok(),
            "a bare name is in the current directory"
        );
    }

    #[test]
    fn missing_kernel_is_reported() {
        let mut a = args("64M", "");
        a.kernel = PathBuf::from("/nonexistent/vmlinux");
        let e = validate(&a).unwrap_err();
        assert!(e
            .to_string()
            .starts_with("cannot read kernel /nonexistent/vmlinux"));
    }
}
