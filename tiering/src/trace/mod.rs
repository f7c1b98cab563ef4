//! The tiervisor trace format (version 1): a compact, versioned binary file of
//! [`Access`](crate::access::Access) records, with a streaming writer and reader.
//!
//! Every producer (the live VMM's `--trace-out`, `tiervisor trace import --lackey`)
//! writes through [`TraceWriter`] and every consumer (replay, training, `trace info`)
//! reads through [`TraceReader`], so the byte layout lives in one place: `codec.rs`.
//! `docs/trace-format.md` describes the layout byte by byte.
//!
//! Layout in short: a header (magic `TVTRACE\0`, version, flags, page size, VM id,
//! description, key/value metadata, CRC32), then blocks of delta/varint-encoded
//! records, each with its record count, payload length and CRC32, then an end marker
//! holding the total record count. Every block decodes on its own (the delta state
//! resets), so a damaged block is reported with its byte offset and never misread.

mod codec;
pub mod lackey;
mod reader;
pub mod summary;
mod writer;

pub use reader::{read_all, TraceReader};
pub use writer::{TraceWriter, MAX_RECORDS_PER_BLOCK};

use std::collections::BTreeMap;

/// The file starts with these 8 bytes.
pub const MAGIC: [u8; 8] = *b"TVTRACE\0";
/// The format version this build writes and reads.
pub const VERSION: u16 = 1;

/// What `Access::time_ns` counts in a trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Clock {
    /// Nanoseconds since the VM or program started (live VMM recordings).
    #[default]
    Nanoseconds,
    /// Instructions executed so far (valgrind lackey imports): a stand-in clock.
    Instructions,
}

impl Clock {
    /// Unit name for reports.
    pub fn unit(self) -> &'static str {
        match self {
            Clock::Nanoseconds => "ns",
            Clock::Instructions => "instructions",
        }
    }
}

/// Everything a trace says about itself before its records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceHeader {
    /// Size of one page in bytes; `Access::page` is an address divided by this.
    pub page_size: u32,
    /// What `Access::time_ns` counts.
    pub clock: Clock,
    /// The VM that produced the trace, if it came from a VM.
    pub vm_id: Option<u64>,
    /// One line saying where the trace came from (program, workload, command).
    pub description: String,
    /// Free-form key/value pairs (workload, seed, guest memory size, ...).
    pub metadata: BTreeMap<String, String>,
}

impl Default for TraceHeader {
    fn default() -> Self {
        TraceHeader {
            page_size: crate::access::PAGE_SIZE as u32,
            clock: Clock::Nanoseconds,
            vm_id: None,
            description: String::new(),
            metadata: BTreeMap::new(),
        }
    }
}

/// Why a trace could not be written or read. Offsets are bytes from the start of
/// the file, so `xxd -s OFFSET` shows the damage.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error("not a tiervisor trace: the file starts with {found:02x?}, expected \"TVTRACE\\0\"")]
    BadMagic { found: Vec<u8> },
    #[error(
        "trace format version {found} is not supported (this build reads version {supported})"
    )]
    UnsupportedVersion { found: u16, supported: u16 },
    #[error("corrupt trace at byte offset {offset}: {detail}")]
    Corrupt { offset: u64, detail: String },
    #[error("truncated trace: {detail} (file ends at byte offset {offset})")]
    Truncated { offset: u64, detail: String },
    #[error("cannot write a trace record: {0}")]
    InvalidRecord(String),
    #[error("trace i/o error at byte offset {offset}: {source}")]
    Io {
        offset: u64,
        #[source]
        source: std::io::Error,
    },
}

#[cfg(test)]
mod tests;
