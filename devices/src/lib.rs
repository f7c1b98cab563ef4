//! Legacy devices for tiervisor: a port-I/O bus and the devices the guest contract
//! names (docs/vmm.md): COM1 16550 UART, i8042 reset, debug-exit and boot-timer ports.
//!
//! The surface is small on purpose: a [`PioDevice`] trait, a [`PioBus`] that
//! dispatches by port range, the devices, and [`StopRequest`], through which a device
//! asks the VMM to end the VM. Nothing here knows about KVM.

pub mod boot_timer;
pub mod bus;
pub mod debug_exit;
pub mod i8042;
pub mod serial;

pub use boot_timer::{BootTimer, BootTimes};
pub use bus::{BusError, PioBus, PioDevice};
pub use debug_exit::DebugExit;
pub use i8042::I8042;
pub use serial::{EventFdTrigger, SerialConsole};

/// Why a device asks for the VM to end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestStop {
    /// The guest reset the CPU through the i8042 (0xfe to port 0x64).
    Reset,
    /// The guest wrote this value to the debug-exit port.
    DebugExit(u32),
}

/// Implemented by the VMM: a device calls it to end the VM.
pub trait StopRequest: Send + Sync {
    /// Record why the VM should end and wake whoever stops it. The first request wins.
    fn request_stop(&self, why: GuestStop);
}
