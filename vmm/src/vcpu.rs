//! vCPU threads: one per vCPU, running KVM_RUN and handling port I/O in place.
//!
//! Stopping: whoever stops the VM sets [`VmStop`] and then kicks each thread with
//! [`kick_signal`]. The handler sets `immediate_exit` in that thread's `kvm_run`, so
//! a kick that lands just before KVM_RUN still makes it return at once (EINTR); a
//! kick during KVM_RUN interrupts it. The thread then sees the stop flag and ends.
//! (Firecracker and Cloud Hypervisor do the same.)

use std::cell::Cell;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use devices::PioBus;
use kvm_bindings::{kvm_run, KVM_SYSTEM_EVENT_CRASH};
use kvm_ioctls::{VcpuExit, VcpuFd};

use crate::metrics::ExitCounters;
use crate::stop::{StopReason, VmStop};

thread_local! {
    /// This thread's kvm_run, for the kick handler. Const-initialised: no lazy set-up
    /// or destructor, so the handler may touch it.
    static KVM_RUN: Cell<*mut kvm_run> = const { Cell::new(std::ptr::null_mut()) };
}

/// The real-time signal used to kick vCPU threads out of KVM_RUN.
pub fn kick_signal() -> libc::c_int {
    vmm_sys_util::signal::SIGRTMIN()
}

extern "C" fn handle_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    KVM_RUN.with(|run| {
        let ptr = run.get();
        if !ptr.is_null() {
            // SAFETY: ptr is this thread's kvm_run mapping, set by the vCPU loop while
            // its VcpuFd is alive and cleared before it is dropped; writing one byte
            // is async-signal-safe.
            unsafe { (*ptr).immediate_exit = 1 };
        }
    });
}

/// Install the kick handler (once per process, before any vCPU thread runs).
pub fn register_kick_handler() -> std::io::Result<()> {
    vmm_sys_util::signal::register_signal_handler(kick_signal(), handle_kick)
        .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))
}

/// What every vCPU thread shares.
#[derive(Clone)]
pub struct VcpuContext {
    /// Port-I/O devices.
    pub bus: Arc<PioBus>,
    /// The stop switch.
    pub stop: Arc<VmStop>,
    /// Exit counters.
    pub counters: Arc<ExitCounters>,
    /// Pauses and resumes the vCPUs (a scheduler that runs VMs in turns).
    pub gate: Arc<VcpuGate>,
}

#[derive(Default)]
struct GateState {
    paused: bool,
    /// vCPU threads waiting at the gate now.
    parked: usize,
    /// The vCPU threads, to kick out of KVM_RUN when pausing.
    threads: Vec<libc::pthread_t>,
}

/// Pauses a VM's vCPUs between two KVM_RUNs and resumes them: a paused vCPU thread
/// waits at the gate instead of entering the guest. Pausing kicks every vCPU out of
/// KVM_RUN as stopping does; a stop request also ends the wait.
#[derive(Default)]
pub struct VcpuGate {
    state: Mutex<GateState>,
    changed: Condvar,
}

impl VcpuGate {
    fn lock(&self) -> std::sync::MutexGuard<'_, GateState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Stops the vCPUs at their next exit (kicking each out of KVM_RUN). Returns at
    /// once; [`VcpuGate::wait_parked`] waits for them.
    pub fn pause(&self) {
        let mut s = self.lock();
        s.paused = true;
        for &t in &s.threads {
            // SAFETY: t is a live vCPU thread of this process (threads unregister
            // before they end, under this lock); the kick handler is installed
            // before any vCPU thread starts.
            unsafe { libc::pthread_kill(t, kick_signal()) };
        }
        drop(s);
        self.changed.notify_all();
    }

    /// Lets the vCPUs run again.
    pub fn resume(&self) {
        self.lock().paused = false;
        self.changed.notify_all();
    }

    /// Waits up to `timeout` until `vcpus` vCPU threads wait at the gate; whether
    /// they all do.
    pub fn wait_parked(&self, vcpus: usize, timeout: Duration) -> bool {
        let s = self.lock();
        let (s, _) = self
            .changed
            .wait_timeout_while(s, timeout, |s| s.paused && s.parked < vcpus)
            .unwrap_or_else(|e| e.into_inner());
        s.parked >= vcpus
    }

    fn register(&self) {
        // SAFETY: pthread_self has no preconditions.
        let me = unsafe { libc::pthread_self() };
        self.lock().threads.push(me);
    }

    fn unregister(&self) {
        // SAFETY: as above.
        let me = unsafe { libc::pthread_self() };
        self.lock().threads.retain(|&t| t != me);
    }

    /// Called by a vCPU thread before KVM_RUN: waits while paused (and not stopping).
    fn pass(&self, stop: &VmStop) {
        let mut s = self.lock();
        if !s.paused {
            return;
        }
        s.parked += 1;
        self.changed.notify_all();
        while s.paused && !stop.is_stopping() {
            // A stop request does not signal this condition: look again every 10 ms.
            s = self
                .changed
                .wait_timeout(s, Duration::from_millis(10))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        s.parked -= 1;
    }
}

/// Start vCPU `id` on its own thread.
pub fn spawn(id: u8, vcpu: VcpuFd, ctx: VcpuContext) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name(format!("vcpu{id}"))
        .spawn(move || run_vcpu(id, vcpu, &ctx))
}

fn run_vcpu(id: u8, mut vcpu: VcpuFd, ctx: &VcpuContext) {
    crate::tiered::on_vcpu_thread_start(id);
    KVM_RUN.with(|run| run.set(vcpu.get_kvm_run() as *mut kvm_run));
    ctx.gate.register();
    while !ctx.stop.is_stopping() {
        ctx.gate.pass(&ctx.stop);
        if ctx.stop.is_stopping() {
            break;
        }
        if let Some(reason) = run_once(id, &mut vcpu, ctx) {
            ctx.stop.request(reason);
            break;
        }
    }
    ctx.gate.unregister();
    KVM_RUN.with(|run| run.set(std::ptr::null_mut()));
    // Where each vCPU was when the VM stopped: the first clue for a hung guest
    // (RUST_LOG=info).
    log::info!("vCPU {id} stopped at rip={:#x}", rip(&vcpu));
}

/// One KVM_RUN and the handling of its exit; Some(reason) ends the VM.
fn run_once(id: u8, vcpu: &mut VcpuFd, ctx: &VcpuContext) -> Option<StopReason> {
    let c = &ctx.counters;
    crate::tiered::observe_vcpu(vcpu);
    match vcpu.run() {
        Ok(VcpuExit::IoOut(port, data)) => {
            ExitCounters::bump(&c.io_out);
            if !ctx.bus.write(port, data) {
                log::debug!("vCPU {id}: out to unclaimed port {port:#x}");
            }
            None
        }
        Ok(VcpuExit::IoIn(port, data)) => {
            ExitCounters::bump(&c.io_in);
            ctx.bus.read(port, data);
            None
        }
        Ok(VcpuExit::MmioRead(addr, data)) => {
            // No MMIO devices yet: reads of unclaimed addresses see all ones.
            ExitCounters::bump(&c.mmio_read);
            log::debug!("vCPU {id}: MMIO read at {addr:#x}");
            data.fill(0xff);
            None
        }
        Ok(VcpuExit::MmioWrite(addr, _)) => {
            ExitCounters::bump(&c.mmio_write);
            log::debug!("vCPU {id}: MMIO write at {addr:#x}");
            None
        }
        Ok(VcpuExit::Hlt) => {
            ExitCounters::bump(&c.hlt);
            Some(StopReason::Halted { vcpu: id })
        }
        Ok(VcpuExit::Shutdown) => {
            ExitCounters::bump(&c.shutdown);
            Some(StopReason::TripleFault {
                vcpu: id,
                rip: rip(vcpu),
            })
        }
        Ok(VcpuExit::InternalError) => {
            ExitCounters::bump(&c.internal_error);
            // SAFETY: exit_reason is KVM_EXIT_INTERNAL_ERROR, so `internal` is the
            // union member KVM filled.
            let suberror = unsafe { vcpu.get_kvm_run().__bindgen_anon_1.internal.suberror };
            Some(StopReason::InternalError {
                vcpu: id,
                suberror,
                rip: rip(vcpu),
            })
        }
        Ok(VcpuExit::FailEntry(reason, _cpu)) => {
            ExitCounters::bump(&c.fail_entry);
            Some(StopReason::FailEntry { vcpu: id, reason })
        }
        Ok(VcpuExit::SystemEvent(kind, _)) => {
            ExitCounters::bump(&c.system_event);
            if kind == KVM_SYSTEM_EVENT_CRASH {
                Some(StopReason::GuestCrash { vcpu: id })
            } else {
                Some(StopReason::SystemEvent { vcpu: id, kind })
            }
        }
        Ok(VcpuExit::Intr) => {
            ExitCounters::bump(&c.intr);
            None
        }
        Ok(other) => {
            ExitCounters::bump(&c.other);
            Some(StopReason::UnhandledExit {
                vcpu: id,
                what: format!("{other:?}"),
            })
        }
        Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
            // A kick: clear immediate_exit; the caller re-checks the stop flag.
            ExitCounters::bump(&c.intr);
            vcpu.set_kvm_immediate_exit(0);
            None
        }
        Err(e) => Some(StopReason::VcpuError {
            vcpu: id,
            error: e.to_string(),
        }),
    }
}

fn rip(vcpu: &VcpuFd) -> u64 {
    vcpu.get_regs().map(|r| r.rip).unwrap_or(0)
}

/// Kick every thread until it has ended, then join it. Repeats the kick because a
/// thread may not have reached KVM_RUN when the first one lands.
pub fn stop_all(handles: Vec<JoinHandle<()>>) {
    use vmm_sys_util::signal::Killable;
    for handle in handles {
        while !handle.is_finished() {
            if let Err(e) = handle.kill(kick_signal()) {
                log::warn!("cannot kick a vCPU thread: {e}");
            }
            std::thread::sleep(std::time::Duration::from_micros(200));
        }
        if handle.join().is_err() {
            log::error!("a vCPU thread panicked");
        }
    }
}
