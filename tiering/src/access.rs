//! One observed guest memory access: the unit every monitor produces, every trace
//! stores and every advisor consumes.

/// Guest page size the tiering layer works in.
pub const PAGE_SIZE: u64 = 4096;

/// Guest page frame number (guest physical address / [`PAGE_SIZE`]).
pub type PageNumber = u64;

/// What the access did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum AccessOp {
    Read = 0,
    Write = 1,
    Exec = 2,
}

/// What the page holds, as far as the monitor can tell (guest page-table walk,
/// content hashes across VMs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[repr(u8)]
pub enum PageKind {
    #[default]
    Unknown = 0,
    Code = 1,
    Data = 2,
    Shared = 3,
}

/// How the access was seen; tells an advisor how much of the stream it observes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[repr(u8)]
pub enum AccessSource {
    /// A complete trace (valgrind lackey, the test guest's own log): every access.
    #[default]
    Full = 0,
    /// A userfaultfd MISSING fault on a non-resident page.
    MissingFault = 1,
    /// A sampled minor fault on a resident page whose mapping was zapped.
    SampledMinor = 2,
    /// A page found dirty in the KVM dirty log / dirty ring.
    DirtyLog = 3,
}

/// One access event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Access {
    /// Nanoseconds since the VM (or traced program) started; for lackey imports the
    /// instruction count stands in as the clock.
    pub time_ns: u64,
    pub page: PageNumber,
    pub vcpu: u16,
    pub op: AccessOp,
    pub kind: PageKind,
    pub source: AccessSource,
}
