//! Loading a kernel into guest memory and describing the machine to it.
//!
//! Two boot paths (docs/vmm.md): an ELF with a PVH note (entered in 32-bit protected
//! mode, paging off, `rbx` = `hvm_start_info`) and a bzImage (64-bit boot protocol,
//! `rsi` = zero page). [`load_kernel`] tells them apart; anything else is refused.

pub mod gdt;
pub mod loader;
pub mod pvh;
pub mod regs;
pub mod zero_page;

pub use loader::{load_initrd, load_kernel, BootProtocol, InitrdInfo, KernelEntry, LoadError};
