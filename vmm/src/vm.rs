//! The KVM VM: guest memory slots, TSS and identity map, in-kernel irqchip and PIT.

use kvm_bindings::{kvm_pit_config, kvm_userspace_memory_region, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Kvm, VmFd};
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use crate::layout;

/// Errors creating the VM.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// A KVM VM ioctl failed.
    #[error("KVM {what} failed: {source}")]
    Kvm {
        what: &'static str,
        source: kvm_ioctls::Error,
    },
}

fn kvm(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmError {
    move |source| VmError::Kvm { what, source }
}

/// Create the VM with `mem` as its RAM.
///
/// Order matters: memory slots go in before KVM_CREATE_IRQCHIP/PIT2. The other way
/// round, the first KVM_SET_USER_MEMORY_REGION waits ~6 ms (an SRCU grace period
/// once irq routing exists; HOST-NOTES.md).
pub fn create_vm(kvm_sys: &Kvm, mem: &GuestMemoryMmap) -> Result<VmFd, VmError> {
    let vm = kvm_sys.create_vm().map_err(kvm("KVM_CREATE_VM"))?;
    register_memory(&vm, mem)?;
    vm.set_tss_address(layout::KVM_TSS_START.0 as usize)
        .map_err(kvm("KVM_SET_TSS_ADDR"))?;
    vm.set_identity_map_address(layout::KVM_IDENTITY_MAP_START.0)
        .map_err(kvm("KVM_SET_IDENTITY_MAP_ADDR"))?;
    vm.create_irq_chip().map_err(kvm("KVM_CREATE_IRQCHIP"))?;
    // A dummy speaker port keeps port 0x61 in the kernel instead of exiting to us.
    let pit = kvm_pit_config {
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    };
    vm.create_pit2(pit).map_err(kvm("KVM_CREATE_PIT2"))?;
    Ok(vm)
}

/// One KVM memory slot per guest RAM region.
fn register_memory(vm: &VmFd, mem: &GuestMemoryMmap) -> Result<(), VmError> {
    for (slot, region) in mem.iter().enumerate() {
        let host = region
            .get_host_address(vm_memory::MemoryRegionAddress(0))
            .map_err(|_| VmError::Kvm {
                what: "KVM_SET_USER_MEMORY_REGION (no host address)",
                source: kvm_ioctls::Error::new(libc::EINVAL),
            })?;
        let slot_desc = kvm_userspace_memory_region {
            slot: slot as u32,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: host as u64,
            flags: 0,
        };
        // SAFETY: the region is a live mapping of exactly memory_size bytes owned by
        // `mem`, which outlives the VM (the VMM drops the VM before the memory).
        unsafe { vm.set_user_memory_region(slot_desc) }
            .map_err(kvm("KVM_SET_USER_MEMORY_REGION"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_with_memory_irqchip_and_pit_is_created() {
        let kvm_sys = Kvm::new().expect("/dev/kvm");
        let ram = crate::memory::create_guest_memory(4 << 30).unwrap();
        // Two regions around the 32-bit hole, two slots.
        assert_eq!(ram.memory.num_regions(), 2);
        let vm = create_vm(&kvm_sys, &ram.memory).unwrap();
        // The irqchip exists: an irqfd on GSI 4 is accepted.
        let evt = vmm_sys_util::eventfd::EventFd::new(libc::EFD_NONBLOCK).unwrap();
        vm.register_irqfd(&evt, layout::COM1_IRQ).unwrap();
    }
}
