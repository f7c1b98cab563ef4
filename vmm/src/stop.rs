//! Why and how the VM stops. Every exit path (guest debug-exit, i8042 reset, triple
//! fault, KVM error, SIGINT/SIGTERM) records a [`StopReason`] here; the first one wins
//! and decides tiervisor's exit status. The event loop wakes on the EventFd, kicks
//! every vCPU out of KVM_RUN and joins the threads.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use devices::{GuestStop, StopRequest};
use vmm_sys_util::eventfd::EventFd;

/// Why the VM ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopReason {
    /// A device asked (debug-exit value or i8042 reset).
    Guest(GuestStop),
    /// A vCPU executed HLT with nothing to wake it (exits only without an in-kernel
    /// LAPIC, kept for completeness).
    Halted { vcpu: u8 },
    /// KVM_EXIT_SHUTDOWN: the guest triple-faulted.
    TripleFault { vcpu: u8, rip: u64 },
    /// KVM_EXIT_INTERNAL_ERROR (on PVM: usually an instruction it cannot emulate).
    InternalError { vcpu: u8, suberror: u32, rip: u64 },
    /// KVM_EXIT_FAIL_ENTRY.
    FailEntry { vcpu: u8, reason: u64 },
    /// KVM_EXIT_SYSTEM_EVENT of type crash.
    GuestCrash { vcpu: u8 },
    /// KVM_EXIT_SYSTEM_EVENT shutdown or reset.
    SystemEvent { vcpu: u8, kind: u32 },
    /// An exit tiervisor does not handle.
    UnhandledExit { vcpu: u8, what: String },
    /// KVM_RUN itself failed.
    VcpuError { vcpu: u8, error: String },
    /// SIGINT or SIGTERM.
    Signal(i32),
    /// The event loop failed.
    EventLoop(String),
    /// Tiered memory can no longer serve guest memory correctly.
    TieredMemory(String),
}

impl StopReason {
    /// tiervisor's exit status for this stop.
    pub fn exit_status(&self) -> i32 {
        match self {
            StopReason::Guest(GuestStop::DebugExit(v)) => (*v & 0xff) as i32,
            StopReason::Guest(GuestStop::Reset)
            | StopReason::Halted { .. }
            | StopReason::SystemEvent { .. } => 0,
            StopReason::Signal(n) => 128 + n,
            _ => 1,
        }
    }

    /// One line for stderr, or None when the stop is the guest's normal way out.
    pub fn message(&self) -> Option<String> {
        match self {
            StopReason::Guest(_) | StopReason::SystemEvent { .. } => None,
            StopReason::Halted { vcpu } => Some(format!("vCPU {vcpu} halted; VM stopped")),
            StopReason::TripleFault { vcpu, rip } => Some(format!(
                "guest triple fault (KVM_EXIT_SHUTDOWN) on vCPU {vcpu} at rip={rip:#x}"
            )),
            StopReason::InternalError {
                vcpu,
                suberror,
                rip,
            } => Some(format!(
                "KVM internal error (KVM_EXIT_INTERNAL_ERROR suberror {suberror}{}) on vCPU {vcpu} at rip={rip:#x}",
                if *suberror == 1 {
                    ": instruction emulation failed"
                } else {
                    ""
                }
            )),
            StopReason::FailEntry { vcpu, reason } => Some(format!(
                "KVM could not enter the guest (KVM_EXIT_FAIL_ENTRY reason {reason:#x}) on vCPU {vcpu}"
            )),
            StopReason::GuestCrash { vcpu } => Some(format!("guest reported a crash on vCPU {vcpu}")),
            StopReason::UnhandledExit { vcpu, what } => {
                Some(format!("unhandled VM exit {what} on vCPU {vcpu}"))
            }
            StopReason::VcpuError { vcpu, error } => Some(format!("KVM_RUN failed on vCPU {vcpu}: {error}")),
            StopReason::Signal(n) => Some(format!("stopped by signal {n}")),
            StopReason::EventLoop(e) => Some(format!("event loop failed: {e}")),
            StopReason::TieredMemory(e) => Some(e.clone()),
        }
    }
}

/// The shared stop switch.
pub struct VmStop {
    stopping: AtomicBool,
    reason: Mutex<Option<StopReason>>,
    /// Written on every request; the event loop waits on it.
    pub event: EventFd,
}

impl VmStop {
    /// A switch that is not yet thrown.
    pub fn new() -> std::io::Result<Self> {
        Ok(Self {
            stopping: AtomicBool::new(false),
            reason: Mutex::new(None),
            event: EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)?,
        })
    }

    /// Ask the VM to stop; the first reason is kept.
    pub fn request(&self, why: StopReason) {
        {
            let mut reason = self.reason.lock().unwrap_or_else(|e| e.into_inner());
            if reason.is_none() {
                *reason = Some(why);
            }
        }
        self.stopping.store(true, Ordering::SeqCst);
        if let Err(e) = self.event.write(1) {
            log::error!("cannot wake the event loop: {e}");
        }
    }

    /// Has anyone asked to stop?
    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// The first reason given.
    pub fn reason(&self) -> Option<StopReason> {
        self.reason
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl StopRequest for VmStop {
    fn request_stop(&self, why: GuestStop) {
        self.request(StopReason::Guest(why));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_reason_wins_and_maps_to_status() {
        let stop = VmStop::new().unwrap();
        assert!(!stop.is_stopping());
        stop.request_stop(GuestStop::DebugExit(0x1_0203));
        stop.request(StopReason::Signal(15));
        assert!(stop.is_stopping());
        assert_eq!(stop.event.read().unwrap(), 2);
        let r = stop.reason().unwrap();
        assert_eq!(r.exit_status(), 3);
        assert!(r.message().is_none());
    }

    #[test]
    fn statuses() {
        assert_eq!(StopReason::Guest(GuestStop::Reset).exit_status(), 0);
        assert_eq!(StopReason::Signal(2).exit_status(), 130);
        let tf = StopReason::TripleFault {
            vcpu: 0,
            rip: 0x1234,
        };
        assert_eq!(tf.exit_status(), 1);
        assert!(tf.message().unwrap().contains("rip=0x1234"));
    }
}
