//! Assembling a VM from a [`VmConfig`] and running it to its end (after Firecracker's
//! builder.rs): guest RAM, KVM VM, kernel, boot structures, devices, vCPUs, then the
//! event loop until a stop, then an orderly tear-down.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use devices::{BootTimer, BootTimes, DebugExit, PioBus, SerialConsole, I8042};
use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use kvm_ioctls::Kvm;
use linux_loader::cmdline::Cmdline;
use vm_memory::GuestAddress;
use vmm_sys_util::eventfd::EventFd;

use crate::boot::{self, BootProtocol, KernelEntry};
use crate::cpu::CpuModel;
use crate::event_loop::{SignalWatcher, StdinInput, StopWatcher};
use crate::layout;
use crate::memory::{self, GuestRam};
use crate::metrics::{self, ExitCounters, RunMetrics};
use crate::stop::{StopReason, VmStop};
use crate::vcpu::{self, VcpuContext};

/// Everything `tiervisor run` was asked for, validated.
#[derive(Debug, Clone)]
pub struct VmConfig {
    /// Kernel image (PVH ELF or bzImage).
    pub kernel: PathBuf,
    /// Optional initrd.
    pub initrd: Option<PathBuf>,
    /// Kernel command line.
    pub cmdline: String,
    /// Guest RAM in bytes.
    pub memory: u64,
    /// Number of vCPUs.
    pub vcpus: u8,
}

/// Errors building or running the VM.
#[derive(Debug, thiserror::Error)]
pub enum MachineError {
    /// Guest memory could not be created.
    #[error(transparent)]
    Memory(#[from] memory::MemoryError),
    /// KVM VM set-up failed.
    #[error(transparent)]
    Vm(#[from] crate::vm::VmError),
    /// The kernel or initrd could not be loaded (bad input).
    #[error(transparent)]
    Load(#[from] boot::LoadError),
    /// The command line was refused.
    #[error("invalid kernel command line: {0}")]
    Cmdline(String),
    /// Boot structures could not be written.
    #[error("cannot write boot structures: {0}")]
    BootInfo(String),
    /// vCPU set-up failed.
    #[error("vCPU {vcpu}: {source}")]
    Cpu {
        vcpu: u8,
        source: crate::cpu::CpuError,
    },
    /// Registers of the boot vCPU.
    #[error(transparent)]
    Regs(#[from] boot::regs::RegsError),
    /// KVM refused something (vCPU creation, irqfd).
    #[error("KVM {what} failed: {source}")]
    Kvm {
        what: &'static str,
        source: kvm_ioctls::Error,
    },
    /// Devices could not be wired.
    #[error("device set-up failed: {0}")]
    Devices(String),
    /// Threads, eventfds, signals, the event loop.
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        source: std::io::Error,
    },
}

impl MachineError {
    /// True when the user's input is at fault (exit status 2).
    pub fn is_bad_input(&self) -> bool {
        matches!(self, MachineError::Load(_) | MachineError::Cmdline(_))
    }
}

fn io(what: &'static str) -> impl FnOnce(std::io::Error) -> MachineError {
    move |source| MachineError::Io { what, source }
}

/// What a finished run produced.
pub struct RunOutcome {
    /// Why it ended.
    pub reason: StopReason,
    /// Metrics for --metrics-out.
    pub metrics: RunMetrics,
}

/// A VM ready to run: every structure written, vCPUs configured, not yet started.
pub struct Machine {
    config: VmConfig,
    // Dropped before `ram`: KVM lets go of the slots before the mapping goes away.
    _vm: kvm_ioctls::VmFd,
    ram: GuestRam,
    vcpus: Vec<kvm_ioctls::VcpuFd>,
    entry: KernelEntry,
    serial: Arc<Mutex<SerialConsole>>,
    bus: Arc<PioBus>,
    stop: Arc<VmStop>,
    boot_times: Arc<BootTimes>,
    counters: Arc<ExitCounters>,
    gate: Arc<vcpu::VcpuGate>,
    process_start: Instant,
}

impl Machine {
    /// Build the VM. `kvm_sys` is the opened /dev/kvm; `process_start` is when the
    /// process started (boot times are measured from it).
    pub fn build(
        kvm_sys: &Kvm,
        config: VmConfig,
        process_start: Instant,
    ) -> Result<Self, MachineError> {
        let ram = memory::create_guest_memory(config.memory)?;
        let vm = crate::vm::create_vm(kvm_sys, &ram.memory)?;

        let entry = boot::load_kernel(&ram.memory, &config.kernel)?;
        let initrd = match &config.initrd {
            Some(path) => {
                let max = entry
                    .setup_header
                    .map_or(u64::MAX, |h| u64::from(h.initrd_addr_max));
                Some(boot::load_initrd(&ram.memory, path, entry.kernel_end, max)?)
            }
            None => None,
        };
        let cmdline = write_cmdline(&ram, &config.cmdline)?;
        let rsdp = write_acpi(&ram, config.vcpus)?;
        let regions: Vec<(GuestAddress, u64)> = layout::ram_regions(config.memory);
        match entry.protocol {
            BootProtocol::Pvh => {
                boot::pvh::write_start_info(&ram.memory, &regions, initrd.as_ref(), rsdp)
                    .map_err(|e| MachineError::BootInfo(e.to_string()))?
            }
            BootProtocol::Linux64 => {
                let hdr = entry.setup_header.unwrap_or_default();
                let params =
                    boot::zero_page::build_zero_page(hdr, cmdline, &regions, initrd.as_ref(), rsdp)
                        .map_err(|e| MachineError::BootInfo(e.to_string()))?;
                boot::zero_page::write_zero_page(&ram.memory, &params)
                    .map_err(|e| MachineError::BootInfo(e.to_string()))?;
            }
        }

        let stop = Arc::new(VmStop::new().map_err(io("eventfd"))?);
        let boot_times = Arc::new(BootTimes::new(process_start));
        let serial_irq =
            EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC).map_err(io("eventfd"))?;
        vm.register_irqfd(&serial_irq, layout::COM1_IRQ)
            .map_err(|source| MachineError::Kvm {
                what: "KVM_IRQFD",
                source,
            })?;
        let serial = Arc::new(Mutex::new(SerialConsole::new(
            serial_irq,
            Box::new(std::io::stdout()),
        )));
        let bus = Arc::new(build_bus(&serial, &stop, &boot_times)?);

        let cpu_model =
            CpuModel::from_kvm(kvm_sys).map_err(|source| MachineError::Cpu { vcpu: 0, source })?;
        let mut vcpus = Vec::with_capacity(usize::from(config.vcpus));
        for id in 0..config.vcpus {
            let fd = vm
                .create_vcpu(u64::from(id))
                .map_err(|source| MachineError::Kvm {
                    what: "KVM_CREATE_VCPU",
                    source,
                })?;
            cpu_model
                .configure(&fd, id)
                .map_err(|source| MachineError::Cpu { vcpu: id, source })?;
            // Only the boot vCPU starts at the entry; with the in-kernel LAPIC, KVM
            // leaves the others waiting for INIT/SIPI.
            if id == 0 {
                boot::regs::setup_boot_vcpu(&fd, &ram.memory, entry.entry, entry.protocol)?;
            }
            vcpus.push(fd);
        }

        Ok(Self {
            config,
            _vm: vm,
            ram,
            vcpus,
            entry,
            serial,
            bus,
            stop,
            boot_times,
            counters: Arc::new(ExitCounters::default()),
            gate: Arc::new(vcpu::VcpuGate::default()),
            process_start,
        })
    }

    /// Guest RAM (for the tiering layer to take over before [`Machine::run`]).
    pub fn guest_ram(&self) -> &GuestRam {
        &self.ram
    }

    /// The KVM VM (the tiering layer turns on dirty logging and reads the log).
    pub fn vm_fd(&self) -> &kvm_ioctls::VmFd {
        &self._vm
    }

    /// The stop switch (the tiering layer stops the VM when a page is lost).
    pub fn stop_handle(&self) -> Arc<VmStop> {
        self.stop.clone()
    }

    /// Pauses and resumes the vCPUs while the VM runs (a scheduler running VMs in turns).
    pub fn vcpu_gate(&self) -> Arc<vcpu::VcpuGate> {
        self.gate.clone()
    }

    /// How many vCPUs the VM has.
    pub fn vcpu_count(&self) -> usize {
        usize::from(self.config.vcpus)
    }

    /// Run until the VM stops; every thread has ended when this returns.
    pub fn run(mut self) -> Result<RunOutcome, MachineError> {
        let mut events: EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>> =
            EventManager::new().map_err(|e| MachineError::Io {
                what: "event manager",
                source: std::io::Error::other(format!("{e:?}")),
            })?;
        // SIGINT/SIGTERM arrive through a signalfd; block them before any thread
        // starts so every thread inherits the mask.
        let signals = SignalWatcher::new(self.stop.clone()).map_err(io("signalfd"))?;
        events.add_subscriber(Arc::new(Mutex::new(signals)));
        let stop_evt = self.stop.event.try_clone().map_err(io("eventfd"))?;
        events.add_subscriber(Arc::new(Mutex::new(StopWatcher::new(stop_evt))));
        events.add_subscriber(Arc::new(Mutex::new(StdinInput::new(self.serial.clone()))));

        vcpu::register_kick_handler().map_err(io("kick signal handler"))?;
        let ctx = VcpuContext {
            bus: self.bus.clone(),
            stop: self.stop.clone(),
            counters: self.counters.clone(),
            gate: self.gate.clone(),
        };
        let mut handles = Vec::new();
        for (id, fd) in self.vcpus.drain(..).enumerate() {
            match vcpu::spawn(id as u8, fd, ctx.clone()) {
                Ok(h) => handles.push(h),
                Err(e) => {
                    self.stop.request(StopReason::EventLoop(format!(
                        "cannot start vCPU thread: {e}"
                    )));
                    break;
                }
            }
        }

        while !self.stop.is_stopping() {
            if let Err(e) = events.run() {
                self.stop.request(StopReason::EventLoop(format!("{e:?}")));
            }
        }
        vcpu::stop_all(handles);
        if let Err(e) = self
            .serial
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .flush()
        {
            log::warn!("cannot flush serial output: {e}");
        }

        let reason = self
            .stop
            .reason()
            .unwrap_or(StopReason::EventLoop("stopped without a reason".into()));
        let metrics = self.metrics(&reason);
        Ok(RunOutcome { reason, metrics })
    }

    fn metrics(&self, reason: &StopReason) -> RunMetrics {
        let ms = |d: std::time::Duration| d.as_secs_f64() * 1000.0;
        let (vmm_kib, guest_kib) =
            metrics::resident_split(&self.ram.host_ranges()).unwrap_or((0, 0));
        RunMetrics {
            boot_ms: self.boot_times.first().map(ms),
            boot_timer_marks_ms: self.boot_times.all().into_iter().map(ms).collect(),
            vmm_overhead_kib: vmm_kib,
            guest_rss_kib: guest_kib,
            run_ms: ms(self.process_start.elapsed()),
            exit_status: reason.exit_status(),
            stop_reason: describe(reason),
            vcpus: self.config.vcpus,
            memory_mib: self.config.memory >> 20,
            boot_protocol: match self.entry.protocol {
                BootProtocol::Pvh => "pvh",
                BootProtocol::Linux64 => "linux64",
            },
            exits: self.counters.snapshot(),
            tiers: None,
        }
    }
}

fn describe(reason: &StopReason) -> String {
    match reason {
        StopReason::Guest(devices::GuestStop::DebugExit(v)) => format!("debug-exit {v:#x}"),
        StopReason::Guest(devices::GuestStop::Reset) => "i8042 reset".into(),
        other => other.message().unwrap_or_else(|| format!("{other:?}")),
    }
}

/// Write the command line; returns its length without the NUL.
fn write_cmdline(ram: &GuestRam, text: &str) -> Result<usize, MachineError> {
    let mut cmdline =
        Cmdline::new(layout::CMDLINE_MAX_SIZE).map_err(|e| MachineError::Cmdline(e.to_string()))?;
    if !text.is_empty() {
        cmdline
            .insert_str(text)
            .map_err(|e| MachineError::Cmdline(e.to_string()))?;
    }
    linux_loader::loader::load_cmdline(&ram.memory, layout::CMDLINE_START, &cmdline)
        .map_err(|e| MachineError::Cmdline(e.to_string()))?;
    Ok(text.len())
}

/// ACPI tables (RSDP, XSDT, MADT, FADT, DSDT) describe the vCPUs to the guest: the
/// reference kernel has no MP-table parser, and the test guest starts its APs from
/// the MADT. Returns the RSDP address for the start info / zero page.
fn write_acpi(ram: &GuestRam, vcpus: u8) -> Result<Option<GuestAddress>, MachineError> {
    crate::acpi::write_acpi_tables(
        &ram.memory,
        layout::RSDP_START,
        layout::ACPI_TABLES_START,
        vcpus,
    )
    .map_err(|e| MachineError::BootInfo(format!("ACPI tables: {e}")))?;
    Ok(Some(layout::RSDP_START))
}

fn build_bus(
    serial: &Arc<Mutex<SerialConsole>>,
    stop: &Arc<VmStop>,
    boot_times: &Arc<BootTimes>,
) -> Result<PioBus, MachineError> {
    let err = |e: devices::BusError| MachineError::Devices(e.to_string());
    let mut bus = PioBus::new();
    bus.insert(layout::COM1_PORT, layout::COM1_PORTS, serial.clone())
        .map_err(err)?;
    bus.insert(
        layout::I8042_PORT,
        layout::I8042_PORTS,
        Arc::new(Mutex::new(I8042::new(stop.clone()))),
    )
    .map_err(err)?;
    bus.insert(
        layout::DEBUG_EXIT_PORT,
        layout::DEBUG_EXIT_PORTS,
        Arc::new(Mutex::new(DebugExit::new(stop.clone()))),
    )
    .map_err(err)?;
    bus.insert(
        layout::BOOT_TIMER_PORT,
        layout::BOOT_TIMER_PORTS,
        Arc::new(Mutex::new(BootTimer::new(boot_times.clone()))),
    )
    .map_err(err)?;
    Ok(bus)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::Bytes;

    fn read_cstr(ram: &GuestRam, addr: GuestAddress, max: usize) -> Vec<u8> {
        let mut buf = vec![0u8; max];
        ram.memory.read_slice(&mut buf, addr).unwrap();
        let end = buf.iter().position(|&b| b == 0).expect("NUL terminator");
        buf.truncate(end);
        buf
    }

    #[test]
    fn cmdline_is_written_nul_terminated_at_its_address() {
        let ram = memory::create_guest_memory(16 << 20).unwrap();
        let text = "workload=zipf mem=64M iters=1000 seed=3";
        assert_eq!(write_cmdline(&ram, text).unwrap(), text.len());
        assert_eq!(read_cstr(&ram, layout::CMDLINE_START, 256), text.as_bytes());
        // An empty command line is an empty string, not garbage.
        write_cmdline(&ram, "").unwrap();
        assert!(read_cstr(&ram, layout::CMDLINE_START, 256).is_empty());
    }

    #[test]
    fn cmdline_at_the_limit_fits_and_one_more_byte_does_not() {
        let ram = memory::create_guest_memory(16 << 20).unwrap();
        let longest = "a".repeat(layout::CMDLINE_MAX_SIZE - 1);
        write_cmdline(&ram, &longest).unwrap();
        assert_eq!(
            read_cstr(&ram, layout::CMDLINE_START, layout::CMDLINE_MAX_SIZE).len(),
            longest.len()
        );
        let e = write_cmdline(&ram, &"a".repeat(layout::CMDLINE_MAX_SIZE)).unwrap_err();
        assert!(e.is_bad_input());
    }

    #[test]
    fn bus_has_every_contract_port() {
        let stop = Arc::new(VmStop::new().unwrap());
        let times = Arc::new(BootTimes::new(Instant::now()));
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let serial = Arc::new(Mutex::new(SerialConsole::new(
            irq,
            Box::new(std::io::sink()),
        )));
        let bus = build_bus(&serial, &stop, &times).unwrap();
        assert!(bus.write(layout::BOOT_TIMER_PORT, &[1]));
        assert!(times.first().is_some());
        assert!(bus.write(layout::COM1_PORT, b"x"));
        assert!(!stop.is_stopping());
        assert!(bus.write(layout::DEBUG_EXIT_PORT, &7u32.to_le_bytes()));
        assert_eq!(stop.reason().unwrap().exit_status(), 7);
    }
}
