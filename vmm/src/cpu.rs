//! Per-vCPU CPU model: CPUID (KVM's supported table with each vCPU's APIC id), the
//! boot MSRs KVM says it has, LAPIC LINT0/LINT1 wiring and the FPU.

use kvm_bindings::{kvm_lapic_state, kvm_msr_entry, CpuId, Msrs, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::{Kvm, VcpuFd};

use crate::boot::regs::{setup_fpu, RegsError};

/// Errors configuring a vCPU's CPU model.
#[derive(Debug, thiserror::Error)]
pub enum CpuError {
    /// A KVM ioctl failed.
    #[error("KVM {what} failed: {source}")]
    Kvm {
        what: &'static str,
        source: kvm_ioctls::Error,
    },
    /// The MSR list could not be built.
    #[error("cannot build the MSR list: {0}")]
    Msrs(String),
    /// KVM set fewer MSRs than asked.
    #[error("KVM_SET_MSRS set {set} of {wanted} MSRs (stopped at index {index:#x})")]
    MsrsPartial {
        set: usize,
        wanted: usize,
        index: u32,
    },
    /// FPU set-up failed.
    #[error(transparent)]
    Fpu(#[from] RegsError),
}

fn kvm(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> CpuError {
    move |source| CpuError::Kvm { what, source }
}

const MSR_IA32_SYSENTER_CS: u32 = 0x174;
const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MSR_IA32_MISC_ENABLE_FAST_STRING: u64 = 1;
const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;

/// The MSRs a production VMM sets at boot (Firecracker's list less the TSC, which
/// PVM does not reset), with their values.
pub const BOOT_MSRS: [(u32, u64); 10] = [
    (MSR_IA32_SYSENTER_CS, 0),
    (MSR_IA32_SYSENTER_ESP, 0),
    (MSR_IA32_SYSENTER_EIP, 0),
    (MSR_STAR, 0),
    (MSR_CSTAR, 0),
    (MSR_KERNEL_GS_BASE, 0),
    (MSR_SYSCALL_MASK, 0),
    (MSR_LSTAR, 0),
    (MSR_IA32_MISC_ENABLE, MSR_IA32_MISC_ENABLE_FAST_STRING),
    // MTRRs enabled (bit 11), default type write-back (6).
    (MSR_MTRR_DEF_TYPE, (1 << 11) | 6),
];

/// What every vCPU gets, read from KVM once.
pub struct CpuModel {
    cpuid: CpuId,
    boot_msrs: Vec<(u32, u64)>,
}

impl CpuModel {
    /// KVM_GET_SUPPORTED_CPUID, and the boot MSRs that KVM_GET_MSR_INDEX_LIST lists
    /// (others fail: PVM refuses MSR 0x10a, for one).
    pub fn from_kvm(kvm_sys: &Kvm) -> Result<Self, CpuError> {
        let cpuid = kvm_sys
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(kvm("KVM_GET_SUPPORTED_CPUID"))?;
        let listed = kvm_sys
            .get_msr_index_list()
            .map_err(kvm("KVM_GET_MSR_INDEX_LIST"))?;
        let listed = listed.as_slice();
        let boot_msrs = BOOT_MSRS
            .iter()
            .copied()
            .filter(|(index, _)| listed.contains(index))
            .collect();
        Ok(Self { cpuid, boot_msrs })
    }

    /// The boot MSRs this host accepts.
    pub fn boot_msrs(&self) -> &[(u32, u64)] {
        &self.boot_msrs
    }

    /// Configure vCPU `id`: CPUID, MSRs, LAPIC, FPU.
    pub fn configure(&self, vcpu: &VcpuFd, id: u8) -> Result<(), CpuError> {
        let mut cpuid = self.cpuid.clone();
        set_apic_id(&mut cpuid, id);
        vcpu.set_cpuid2(&cpuid).map_err(kvm("KVM_SET_CPUID2"))?;

        let entries: Vec<kvm_msr_entry> = self
            .boot_msrs
            .iter()
            .map(|&(index, data)| kvm_msr_entry {
                index,
                data,
                ..Default::default()
            })
            .collect();
        let msrs = Msrs::from_entries(&entries).map_err(|e| CpuError::Msrs(format!("{e:?}")))?;
        let set = vcpu.set_msrs(&msrs).map_err(kvm("KVM_SET_MSRS"))?;
        if set != entries.len() {
            return Err(CpuError::MsrsPartial {
                set,
                wanted: entries.len(),
                index: entries[set].index,
            });
        }

        let mut lapic = vcpu.get_lapic().map_err(kvm("KVM_GET_LAPIC"))?;
        set_lint(&mut lapic);
        vcpu.set_lapic(&lapic).map_err(kvm("KVM_SET_LAPIC"))?;

        setup_fpu(vcpu)?;
        Ok(())
    }
}

/// Put `id` where the guest reads its APIC id: leaf 1 EBX[31:24], and the x2APIC id
/// in EDX of the topology leaves 0xb and 0x1f.
pub fn set_apic_id(cpuid: &mut CpuId, id: u8) {
    for entry in cpuid.as_mut_slice() {
        match entry.function {
            1 => entry.ebx = (entry.ebx & 0x00ff_ffff) | (u32::from(id) << 24),
            0xb | 0x1f => entry.edx = u32::from(id),
            _ => {}
        }
    }
}

const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

fn lapic_reg(lapic: &kvm_lapic_state, offset: usize) -> u32 {
    let b = &lapic.regs[offset..offset + 4];
    u32::from_le_bytes([b[0] as u8, b[1] as u8, b[2] as u8, b[3] as u8])
}

fn set_lapic_reg(lapic: &mut kvm_lapic_state, offset: usize, value: u32) {
    for (i, byte) in value.to_le_bytes().iter().enumerate() {
        lapic.regs[offset + i] = *byte as _;
    }
}

/// LINT0 delivers ExtINT (the PIC), LINT1 delivers NMI, as on a PC.
pub fn set_lint(lapic: &mut kvm_lapic_state) {
    let with_mode = |reg: u32, mode: u32| (reg & !0x700) | (mode << 8);
    let lint0 = lapic_reg(lapic, APIC_LVT0);
    set_lapic_reg(lapic, APIC_LVT0, with_mode(lint0, APIC_MODE_EXTINT));
    let lint1 = lapic_reg(lapic, APIC_LVT1);
    set_lapic_reg(lapic, APIC_LVT1, with_mode(lint1, APIC_MODE_NMI));
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvm_bindings::kvm_cpuid_entry2;

    #[test]
    fn boot_msrs_are_those_kvm_lists_and_a_vcpu_takes_them() {
        let kvm_sys = Kvm::new().expect("/dev/kvm");
        let model = CpuModel::from_kvm(&kvm_sys).unwrap();
        let listed = kvm_sys.get_msr_index_list().unwrap();
        for (index, _) in model.boot_msrs() {
            assert!(listed.as_slice().contains(index), "{index:#x}");
            assert!(BOOT_MSRS.iter().any(|(i, _)| i == index));
        }
        let vm = kvm_sys.create_vm().unwrap();
        vm.create_irq_chip().unwrap();
        let vcpu = vm.create_vcpu(1).unwrap();
        model.configure(&vcpu, 1).unwrap();
        let lapic = vcpu.get_lapic().unwrap();
        assert_eq!((lapic_reg(&lapic, APIC_LVT0) >> 8) & 7, APIC_MODE_EXTINT);
        assert_eq!((lapic_reg(&lapic, APIC_LVT1) >> 8) & 7, APIC_MODE_NMI);
    }

    #[test]
    fn lint_modes_are_extint_and_nmi() {
        let mut lapic = kvm_lapic_state::default();
        set_lapic_reg(&mut lapic, APIC_LVT0, 0x0001_0700);
        set_lint(&mut lapic);
        assert_eq!(lapic_reg(&lapic, APIC_LVT0), 0x0001_0700);
        assert_eq!(lapic_reg(&lapic, APIC_LVT1), 0x400);
    }

    #[test]
    fn apic_id_goes_to_leaf_1_and_topology_leaves() {
        let entries = [
            kvm_cpuid_entry2 {
                function: 1,
                ebx: 0x0a0b_0c0d,
                ..Default::default()
            },
            kvm_cpuid_entry2 {
                function: 0xb,
                ..Default::default()
            },
        ];
        let mut cpuid = CpuId::from_entries(&entries).unwrap();
        set_apic_id(&mut cpuid, 3);
        let s = cpuid.as_slice();
        assert_eq!(s[0].ebx, 0x030b_0c0d);
        assert_eq!(s[1].edx, 3);
    }
}
