//! Everything that runs at ring 0: the PVH note, the 32-bit entry, the switch to long
//! mode, the exception stubs and the AP trampoline.
//!
//! Ring 0 is emulated instruction by instruction on this host's KVM (PVM), so the
//! tables it needs (GDT, TSS with its I/O bitmap, identity page tables for the first
//! 4 GiB) are built by the assembler at fixed addresses (`link.ld` pins them) and ring 0
//! only loads them. Everything else - zeroing .bss, filling the IDT, the workloads - runs
//! at CPL3, natively.

use core::arch::global_asm;

/// GDT selectors (see the table below).
pub const KERNEL_CODE64: u16 = 0x08;
/// Highest number of CPUs the guest brings up (one TSS, kernel stack and user stack each).
pub const MAX_CPUS: usize = 4;
/// The boot tables map the first 4 GiB.
pub const BOOT_MAPPED: u64 = 1 << 32;
/// RAM is identity-mapped up to here at most ([`map_high_ram`]).
pub const MAP_LIMIT: u64 = 64 << 30;
/// Page directories reserved for RAM between [`BOOT_MAPPED`] and [`MAP_LIMIT`].
const HIGH_PD_PAGES: usize = ((MAP_LIMIT - BOOT_MAPPED) >> 30) as usize;
/// The page-directory-pointer table the boot tables use (fixed in link.ld / above).
const PDPT_ADDR: u64 = 0x10_2000;
/// Page-table entry bits: present, writable, user, 2 MiB page.
const PDE_2M_USER: u64 = 0x87;
/// Entry bits of a table pointer: present, writable, user.
const TABLE_USER: u64 = 0x7;
/// Physical address the AP trampoline is copied to; the SIPI vector is this >> 12.
pub const TRAMPOLINE_ADDR: u64 = 0x7000;

global_asm!(
    r#"
    .equ BOOT_TABLES,   0x100000
    .equ GDT_ADDR,      0x100000
    .equ GDT_LIMIT,     0x6f
    .equ GDT_PTR,       0x100080
    .equ IDT_PTR,       0x100090
    .equ TSS_BASE,      0x100100
    .equ TSS_STRIDE,    0x100
    .equ TSS_LIMIT,     232
    .equ PML4_ADDR,     0x101000
    .equ PDPT_ADDR,     0x102000
    .equ PD_ADDR,       0x103000
    .equ MAX_CPUS,      {max_cpus}
    .equ KSTACK_SIZE,   0x4000
    .equ USTACK_SIZE,   0x10000
    .equ SEL_KCODE64,   0x08
    .equ SEL_KDATA,     0x10
    .equ SEL_UCODE64,   0x1b
    .equ SEL_UDATA,     0x23
    .equ SEL_KCODE32,   0x28
    .equ SEL_TSS0,      0x30

    /* ---------------- fixed boot tables, 0x100000 - 0x106fff ---------------- */
    .section .boot.tables, "aw"
    /* GDT: null, kernel code64, kernel data, user code64 (DPL3), user data (DPL3),
       kernel code32 (AP trampoline), then one 16-byte TSS descriptor per CPU. */
    .quad 0
    .quad 0x00af9a000000ffff
    .quad 0x00cf92000000ffff
    .quad 0x00affa000000ffff
    .quad 0x00cff2000000ffff
    .quad 0x00cf9a000000ffff
    .set cpu, 0
    .rept MAX_CPUS
    .quad TSS_LIMIT | ((TSS_BASE + cpu * TSS_STRIDE) << 16) | (0x89 << 40)
    .quad 0
    .set cpu, cpu + 1
    .endr

    .org GDT_PTR - BOOT_TABLES
    .word GDT_LIMIT
    .quad GDT_ADDR
    .org IDT_PTR - BOOT_TABLES
    .word 32 * 16 - 1
    .quad testguest_idt

    /* One TSS per CPU: rsp0 = that CPU's kernel stack (exceptions from CPL3 land
       there), I/O bitmap allowing ports 0-0x3ff (IOPL does not work on PVM). */
    .org TSS_BASE - BOOT_TABLES
    .set cpu, 0
    .rept MAX_CPUS
    .long 0
    .quad testguest_kstacks + KSTACK_SIZE * (cpu + 1)
    .fill 23, 4, 0
    .word 0
    .word 104
    .fill 128, 1, 0
    .byte 0xff
    .balign TSS_STRIDE, 0
    .set cpu, cpu + 1
    .endr

    /* Identity map of the first 4 GiB with 2 MiB pages, U bit set so CPL3 reaches all
       of RAM; the top GiB (LAPIC, IOAPIC, MMIO) uncached. */
    .org PML4_ADDR - BOOT_TABLES
    .quad PDPT_ADDR | 0x7
    .fill 511, 8, 0
    .quad PD_ADDR | 0x7
    .quad (PD_ADDR + 0x1000) | 0x7
    .quad (PD_ADDR + 0x2000) | 0x7
    .quad (PD_ADDR + 0x3000) | 0x7
    .fill 508, 8, 0
    .set pde, 0
    .rept 2048
    .if pde < 1536
    .quad (pde << 21) | 0x87
    .else
    .quad (pde << 21) | 0x9f
    .endif
    .set pde, pde + 1
    .endr

    /* ---------------- PVH note (XEN_ELFNOTE_PHYS32_ENTRY) ---------------- */
    .section .note.Xen, "a", @note
    .balign 4
    .long 4
    .long 8
    .long 18
    .asciz "Xen"
    .balign 4
    .quad pvh_start32
    .balign 4

    /* ---------------- 32-bit entry (BSP from the VMM, APs from the trampoline) ---- */
    .section .text.boot32, "ax"
    .code32
    .globl pvh_start32
pvh_start32:
    cli
    cld
    /* Boot-timer port first: the VMM records the time to this write. */
    movw $0x3f0, %dx
    outb %al, %dx
    movl %ebx, %esi          /* hvm_start_info */
    xorl %ebp, %ebp          /* 0 = BSP */
    jmp 1f
ap_start32:
    movl $SEL_KDATA, %eax
    movl %eax, %ds
    movl %eax, %es
    movl %eax, %ss
    xorl %esi, %esi
    movl $1, %ebp            /* 1 = AP */
1:
    lgdtl GDT_PTR
    movl $PML4_ADDR, %eax
    movl %eax, %cr3
    movl %cr4, %eax
    orl $0x20, %eax          /* PAE */
    movl %eax, %cr4
    movl $0xc0000080, %ecx   /* EFER.LME */
    rdmsr
    orl $0x100, %eax
    wrmsr
    movl %cr0, %eax
    orl $0x80000001, %eax    /* PG | PE */
    movl %eax, %cr0
    ljmpl $SEL_KCODE64, $2f

    .code64
2:
    movl $SEL_KDATA, %eax
    movl %eax, %ds
    movl %eax, %es
    movl %eax, %ss
    xorl %ebx, %ebx          /* BSP is CPU 0 */
    testl %ebp, %ebp
    jz 3f
    movl $1, %ebx
    lock xaddl %ebx, testguest_next_cpu
    cmpl $MAX_CPUS, %ebx
    jae 9f
3:
    movl %ebx, %eax
    shll $14, %eax
    leaq testguest_kstacks + KSTACK_SIZE(%rax), %rsp
    movl %ebx, %eax
    shll $4, %eax
    addl $SEL_TSS0, %eax
    ltr %ax
    lidt IDT_PTR
    movl %ebx, %eax
    shll $16, %eax
    leaq testguest_ustacks + USTACK_SIZE(%rax), %rcx
    pushq $SEL_UDATA
    pushq %rcx
    pushq $0x2               /* RFLAGS: IF=0, IOPL=0 */
    pushq $SEL_UCODE64
    testl %ebp, %ebp
    jnz 4f
    pushq $testguest_bsp_user_entry
    movl %esi, %edi
    iretq
4:
    pushq $testguest_ap_user_entry
    movl %ebx, %edi
    iretq
9:                           /* more CPUs than this guest has stacks for */
    cli
    hlt
    jmp 9b

    /* ---------------- CPL3 entry points ---------------- */
    .section .text.testguest_user, "ax"
testguest_bsp_user_entry:
    movq %rdi, %r12
    movl $__bss_start, %edi
    movl $__bss_end, %ecx
    subl %edi, %ecx
    shrl $3, %ecx
    xorl %eax, %eax
    rep stosq
    movq %r12, %rdi
    call testguest_bsp_main
    ud2
testguest_ap_user_entry:
    call testguest_ap_main
    ud2

    /* ---------------- exception stubs: 16 bytes each, vector = index ---------------- */
    .section .text.testguest_isr, "ax"
    .balign 16
    .globl testguest_isr_stubs
testguest_isr_stubs:
    .set vec, 0
    .rept 32
    .balign 16
    .if ((0x60227d00 >> vec) & 1) == 0
    pushq $0                 /* no CPU error code for this vector */
    .endif
    pushq $vec
    jmp testguest_isr_common
    .set vec, vec + 1
    .endr
testguest_isr_common:
    movq %rsp, %rdi
    andq $-16, %rsp
    call testguest_exception
    ud2

    /* ---------------- AP trampoline, copied to TRAMPOLINE_ADDR ---------------- */
    .section .rodata.testguest_trampoline, "a"
    .code16
    .globl testguest_trampoline_start
    .globl testguest_trampoline_end
testguest_trampoline_start:
    cli
    cld
    movw %cs, %ax
    movw %ax, %ds
    lgdtl trampoline_gdt_ptr - testguest_trampoline_start
    movl %cr0, %eax
    orl $1, %eax
    movl %eax, %cr0
    ljmpl $SEL_KCODE32, $ap_start32
    .balign 8
trampoline_gdt_ptr:
    .word GDT_LIMIT
    .long GDT_ADDR
testguest_trampoline_end:
    .code64

    /* ---------------- data and stacks ---------------- */
    .section .data.testguest_next_cpu, "aw"
    .balign 4
    .globl testguest_next_cpu
testguest_next_cpu:
    .long 1

    .section .bss.testguest_idt, "aw", @nobits
    .balign 16
    .globl testguest_idt
testguest_idt:
    .zero 32 * 16

    /* Page directories for RAM above 4 GiB, filled at CPL3 by map_high_ram() - all 512
       entries of each one used, so not zeroed at boot (and never touched without such
       RAM: no page faults for them in a VMM that backs guest RAM lazily). */
    .section .noinit.testguest_high_pds, "aw", @nobits
    .balign 4096
    .globl testguest_high_pds
testguest_high_pds:
    .zero {high_pd_bytes}

    .section .noinit.stacks, "aw", @nobits
    .balign 4096
    .globl testguest_kstacks
testguest_kstacks:
    .zero KSTACK_SIZE * MAX_CPUS
    .globl testguest_ustacks
testguest_ustacks:
    .zero USTACK_SIZE * MAX_CPUS
"#,
    max_cpus = const MAX_CPUS,
    high_pd_bytes = const HIGH_PD_PAGES * 4096,
    options(att_syntax)
);

extern "C" {
    static testguest_isr_stubs: u8;
    static mut testguest_idt: [u64; 64];
    static mut testguest_high_pds: [u64; 512 * HIGH_PD_PAGES];
    static testguest_trampoline_start: u8;
    static testguest_trampoline_end: u8;
    static __image_end: u8;
}

/// Address of the first byte after the guest image (stacks included).
pub fn image_end() -> u64 {
    core::ptr::addr_of!(__image_end) as u64
}

/// Fills the IDT (exceptions 0-31) with the stubs. Runs at CPL3: the IDT is plain
/// memory in the identity map; the CPU reads it only when an exception arrives.
pub fn install_idt() {
    // The stubs are 16 bytes apart (boot assembly above).
    let stubs = core::ptr::addr_of!(testguest_isr_stubs) as u64;
    for vector in 0..32u64 {
        let handler = stubs + vector * 16;
        let low = (handler & 0xffff)
            | (u64::from(KERNEL_CODE64) << 16)
            | (0x8e << 40)
            | ((handler >> 16) & 0xffff) << 48;
        let high = handler >> 32;
        let index = (vector * 2) as usize;
        // SAFETY: the IDT is only written here, by the BSP, before any AP exists;
        // volatile so the stores are not dropped as dead (the CPU reads them, not Rust).
        unsafe {
            let idt = core::ptr::addr_of_mut!(testguest_idt) as *mut u64;
            idt.add(index).write_volatile(low);
            idt.add(index + 1).write_volatile(high);
        }
    }
}

/// Extends the identity map (2 MiB pages, U bit) to cover RAM up to `ram_end` (at most
/// [`MAP_LIMIT`]); returns the end of what is mapped now. Runs at CPL3 before any
/// access above 4 GiB: the page tables are user-accessible memory, the new page
/// directories are filled while no table points at them yet, and the PDPT entries
/// written last go from not-present to present, which needs no TLB flush (a shadow-paging
/// hypervisor sees the write to the PDPT, a page table it tracks).
pub fn map_high_ram(ram_end: u64) -> u64 {
    let end = ram_end.min(MAP_LIMIT).next_multiple_of(1 << 30);
    if end <= BOOT_MAPPED {
        return BOOT_MAPPED;
    }
    let pds = core::ptr::addr_of_mut!(testguest_high_pds) as *mut u64;
    for gib in (BOOT_MAPPED >> 30)..(end >> 30) {
        let index = (gib - (BOOT_MAPPED >> 30)) as usize;
        // SAFETY: index < HIGH_PD_PAGES (end <= MAP_LIMIT); the directory is in .noinit,
        // unused until its PDPT entry is written below; all 512 entries are written.
        let pd = unsafe { pds.add(index * 512) };
        for entry in 0..512u64 {
            let addr = (gib << 30) | (entry << 21);
            // SAFETY: inside the 512-entry directory above.
            unsafe { pd.add(entry as usize).write_volatile(addr | PDE_2M_USER) };
        }
        // SAFETY: the boot PDPT is a fixed, identity-mapped, user-writable page; entry
        // gib < 64 < 512 was not present.
        unsafe {
            (PDPT_ADDR as *mut u64)
                .add(gib as usize)
                .write_volatile(pd as u64 | TABLE_USER)
        };
    }
    end
}

/// The 16-bit AP start-up code, to be copied to [`TRAMPOLINE_ADDR`].
pub fn trampoline() -> &'static [u8] {
    // SAFETY: the two symbols delimit the trampoline bytes in .rodata.
    unsafe {
        let start = core::ptr::addr_of!(testguest_trampoline_start);
        let end = core::ptr::addr_of!(testguest_trampoline_end);
        core::slice::from_raw_parts(start, end as usize - start as usize)
    }
}

/// Registers pushed by an exception stub and the CPU, lowest address first.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct ExceptionFrame {
    /// Vector number (pushed by the stub).
    pub vector: u64,
    /// CPU error code, or 0 for vectors without one.
    pub error_code: u64,
    /// Faulting instruction.
    pub rip: u64,
    /// Code segment at the fault (its low two bits are the CPL).
    pub cs: u64,
    /// Flags at the fault.
    pub rflags: u64,
    /// Stack pointer at the fault.
    pub rsp: u64,
    /// Stack segment at the fault.
    pub ss: u64,
}

/// Reads CR2 (the faulting address of a page fault); ring 0 only.
pub fn read_cr2() -> u64 {
    let value: u64;
    // SAFETY: reading CR2 has no side effects; called only from the exception handler,
    // which runs at ring 0.
    unsafe { core::arch::asm!("mov {}, cr2", out(reg) value, options(nomem, nostack)) };
    value
}
