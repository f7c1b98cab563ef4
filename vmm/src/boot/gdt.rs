//! GDT entries and their KVM segment form (after Firecracker's arch/x86_64/gdt.rs;
//! see Linux arch/x86/include/asm/segment.h for the bit layout).

use kvm_bindings::kvm_segment;

/// A conventional segment descriptor from flags (type/S/DPL/P in bits 0-7, AVL/L/D/G
/// in bits 12-15), base and 20-bit limit.
pub const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((base as u64 & 0xff00_0000) << (56 - 24))
        | ((flags as u64 & 0x0000_f0ff) << 40)
        | ((limit as u64 & 0x000f_0000) << (48 - 16))
        | ((base as u64 & 0x00ff_ffff) << 16)
        | (limit as u64 & 0x0000_ffff)
}

fn bit(entry: u64, shift: u32) -> u8 {
    ((entry >> shift) & 1) as u8
}

/// The `kvm_segment` KVM_SET_SREGS wants for GDT entry `entry` at `index`.
pub fn kvm_segment_from_gdt(entry: u64, index: u8) -> kvm_segment {
    let base = ((entry & 0xff00_0000_0000_0000) >> 32)
        | ((entry & 0x0000_00ff_0000_0000) >> 16)
        | ((entry & 0x0000_0000_ffff_0000) >> 16);
    let raw_limit = (((entry & 0x000f_0000_0000_0000) >> 32) | (entry & 0xffff)) as u32;
    let g = bit(entry, 55);
    // KVM takes the byte-granular limit: scale it as the CPU would with G set.
    let limit = if g == 1 {
        (raw_limit << 12) | 0xfff
    } else {
        raw_limit
    };
    let present = bit(entry, 47);
    kvm_segment {
        base,
        limit,
        selector: u16::from(index) * 8,
        type_: ((entry >> 40) & 0xf) as u8,
        present,
        dpl: ((entry >> 45) & 0x3) as u8,
        db: bit(entry, 54),
        s: bit(entry, 44),
        l: bit(entry, 53),
        g,
        avl: bit(entry, 52),
        padding: 0,
        unusable: u8::from(present == 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flat_code_segment_round_trips() {
        let e = gdt_entry(0xa09b, 0, 0xfffff);
        assert_eq!(e, 0x00af_9b00_0000_ffff);
        let s = kvm_segment_from_gdt(e, 1);
        assert_eq!(
            (s.selector, s.type_, s.present, s.l, s.g, s.db),
            (8, 0xb, 1, 1, 1, 0)
        );
        assert_eq!(s.limit, 0xffff_ffff);
        assert_eq!(s.base, 0);
    }

    #[test]
    fn base_and_byte_limit_are_decoded() {
        let e = gdt_entry(0x008b, 0x1234_5678, 0x67);
        let s = kvm_segment_from_gdt(e, 3);
        assert_eq!(s.base, 0x1234_5678);
        assert_eq!(s.limit, 0x67);
        assert_eq!(s.g, 0);
        assert_eq!(s.selector, 24);
        assert_eq!(s.unusable, 0);
        assert_eq!(kvm_segment_from_gdt(0, 0).unusable, 1);
    }
}
