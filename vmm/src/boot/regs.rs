//! Boot CPU state: GDT, segments, control registers, identity page tables (64-bit
//! entry), general registers and FPU (after Firecracker's arch/x86_64/regs.rs).

use kvm_bindings::{kvm_fpu, kvm_regs, kvm_sregs};
use kvm_ioctls::VcpuFd;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};

use super::gdt::{gdt_entry, kvm_segment_from_gdt};
use super::BootProtocol;
use crate::layout;

const X86_CR0_PE: u64 = 0x1;
const X86_CR0_ET: u64 = 0x10;
const X86_CR0_PG: u64 = 0x8000_0000;
const X86_CR4_PAE: u64 = 0x20;
const EFER_LME: u64 = 0x100;
const EFER_LMA: u64 = 0x400;
/// RFLAGS bit 1 is reserved and always set.
const RFLAGS_RESERVED: u64 = 0x2;

/// Errors setting up boot CPU state.
#[derive(Debug, thiserror::Error)]
pub enum RegsError {
    /// Writing GDT, IDT or page tables into guest memory failed.
    #[error("cannot write {what} into guest memory: {source}")]
    Write {
        what: &'static str,
        source: vm_memory::GuestMemoryError,
    },
    /// A KVM register ioctl failed.
    #[error("KVM {what} failed: {source}")]
    Kvm {
        what: &'static str,
        source: kvm_ioctls::Error,
    },
}

/// The boot GDT for `protocol`: null, code, data, TSS.
pub fn boot_gdt(protocol: BootProtocol) -> [u64; layout::BOOT_GDT_ENTRIES] {
    match protocol {
        // PVH: flat 32-bit segments with 4 GiB limits.
        BootProtocol::Pvh => [
            gdt_entry(0, 0, 0),
            gdt_entry(0xc09b, 0, 0xffff_ffff),
            gdt_entry(0xc093, 0, 0xffff_ffff),
            gdt_entry(0x008b, 0, 0x67),
        ],
        // 64-bit: L=1 code segment.
        BootProtocol::Linux64 => [
            gdt_entry(0, 0, 0),
            gdt_entry(0xa09b, 0, 0xfffff),
            gdt_entry(0xc093, 0, 0xfffff),
            gdt_entry(0x808b, 0, 0xfffff),
        ],
    }
}

/// Write the GDT, an empty IDT and (64-bit entry) the identity page tables, and fill
/// `sregs` to match.
pub fn setup_sregs(
    mem: &GuestMemoryMmap,
    sregs: &mut kvm_sregs,
    protocol: BootProtocol,
) -> Result<(), RegsError> {
    let gdt = boot_gdt(protocol);
    let write = |what, source| RegsError::Write { what, source };
    for (i, entry) in gdt.iter().enumerate() {
        mem.write_obj(*entry, layout::BOOT_GDT_START.unchecked_add(i as u64 * 8))
            .map_err(|e| write("GDT", e))?;
    }
    mem.write_obj(0u64, layout::BOOT_IDT_START)
        .map_err(|e| write("IDT", e))?;
    sregs.gdt.base = layout::BOOT_GDT_START.0;
    sregs.gdt.limit = (gdt.len() * 8 - 1) as u16;
    sregs.idt.base = layout::BOOT_IDT_START.0;
    sregs.idt.limit = 7;

    let code = kvm_segment_from_gdt(gdt[1], 1);
    let data = kvm_segment_from_gdt(gdt[2], 2);
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = kvm_segment_from_gdt(gdt[3], 3);

    match protocol {
        BootProtocol::Pvh => {
            sregs.cr0 = X86_CR0_PE | X86_CR0_ET;
            sregs.cr4 = 0;
            sregs.efer = 0;
        }
        BootProtocol::Linux64 => {
            setup_identity_page_tables(mem)?;
            sregs.cr3 = layout::PML4_START.0;
            sregs.cr4 |= X86_CR4_PAE;
            sregs.cr0 |= X86_CR0_PE | X86_CR0_PG;
            sregs.efer |= EFER_LME | EFER_LMA;
        }
    }
    Ok(())
}

/// Identity-map the first 1 GiB with 2 MiB pages.
fn setup_identity_page_tables(mem: &GuestMemoryMmap) -> Result<(), RegsError> {
    let write = |what, source| RegsError::Write { what, source };
    // Present | writable.
    mem.write_obj(layout::PDPTE_START.0 | 0x03, layout::PML4_START)
        .map_err(|e| write("PML4", e))?;
    mem.write_obj(layout::PDE_START.0 | 0x03, layout::PDPTE_START)
        .map_err(|e| write("PDPT", e))?;
    for i in 0..512u64 {
        // Present | writable | page size (2 MiB).
        mem.write_obj((i << 21) | 0x83, layout::PDE_START.unchecked_add(i * 8))
            .map_err(|e| write("PD", e))?;
    }
    Ok(())
}

/// General registers at the entry.
pub fn boot_regs(entry: GuestAddress, protocol: BootProtocol) -> kvm_regs {
    match protocol {
        BootProtocol::Pvh => kvm_regs {
            rflags: RFLAGS_RESERVED,
            rip: entry.0,
            rbx: layout::PVH_INFO_START.0,
            ..Default::default()
        },
        BootProtocol::Linux64 => kvm_regs {
            rflags: RFLAGS_RESERVED,
            rip: entry.0,
            rsp: layout::BOOT_STACK_POINTER.0,
            rbp: layout::BOOT_STACK_POINTER.0,
            rsi: layout::ZERO_PAGE_START.0,
            ..Default::default()
        },
    }
}

/// Put the boot vCPU at the kernel's entry.
pub fn setup_boot_vcpu(
    vcpu: &VcpuFd,
    mem: &GuestMemoryMmap,
    entry: GuestAddress,
    protocol: BootProtocol,
) -> Result<(), RegsError> {
    let kvm = |what, source| RegsError::Kvm { what, source };
    let mut sregs = vcpu.get_sregs().map_err(|e| kvm("KVM_GET_SREGS", e))?;
    setup_sregs(mem, &mut sregs, protocol)?;
    vcpu.set_sregs(&sregs)
        .map_err(|e| kvm("KVM_SET_SREGS", e))?;
    vcpu.set_regs(&boot_regs(entry, protocol))
        .map_err(|e| kvm("KVM_SET_REGS", e))
}

/// x87 control word and MXCSR as after FNINIT / reset, for every vCPU.
pub fn setup_fpu(vcpu: &VcpuFd) -> Result<(), RegsError> {
    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu).map_err(|source| RegsError::Kvm {
        what: "KVM_SET_FPU",
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap()
    }

    #[test]
    fn pvh_is_flat_protected_mode_without_paging() {
        let m = mem();
        let mut sregs = kvm_sregs::default();
        setup_sregs(&m, &mut sregs, BootProtocol::Pvh).unwrap();
        assert_eq!(sregs.cr0, X86_CR0_PE | X86_CR0_ET);
        assert_eq!(sregs.cr0 & X86_CR0_PG, 0);
        assert_eq!(sregs.efer, 0);
        assert_eq!(sregs.cs.limit, 0xffff_ffff);
        assert_eq!(sregs.cs.db, 1);
        assert_eq!(sregs.tr.limit, 0x67);
        let gdt1: u64 = m.read_obj(layout::BOOT_GDT_START.unchecked_add(8)).unwrap();
        assert_eq!(gdt1, 0x00cf_9b00_0000_ffff);
        let regs = boot_regs(GuestAddress(0x10_0000), BootProtocol::Pvh);
        assert_eq!(regs.rbx, layout::PVH_INFO_START.0);
    }

    #[test]
    fn linux64_is_long_mode_with_identity_paging() {
        let m = mem();
        let mut sregs = kvm_sregs::default();
        setup_sregs(&m, &mut sregs, BootProtocol::Linux64).unwrap();
        assert_ne!(sregs.cr0 & X86_CR0_PG, 0);
        assert_ne!(sregs.cr4 & X86_CR4_PAE, 0);
        assert_eq!(sregs.efer & (EFER_LME | EFER_LMA), EFER_LME | EFER_LMA);
        assert_eq!(sregs.cs.l, 1);
        assert_eq!(sregs.cr3, layout::PML4_START.0);
        let pde5: u64 = m.read_obj(layout::PDE_START.unchecked_add(5 * 8)).unwrap();
        assert_eq!(pde5, (5 << 21) | 0x83);
        let regs = boot_regs(GuestAddress(0x10_0200), BootProtocol::Linux64);
        assert_eq!(regs.rsi, layout::ZERO_PAGE_START.0);
    }
}
