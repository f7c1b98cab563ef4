//! Import of `valgrind --tool=lackey --trace-mem=yes` output.
//!
//! Lackey prints one line per memory access of the traced program:
//! `I  04010173,3` (instruction fetch), ` L 04222cac,8` (load), ` S 04222cac,8`
//! (store), ` M 0421b4b4,4` (modify: load and store). Addresses are the program's
//! *virtual* addresses, so pages are virtual page numbers (address >> 12), not
//! guest-physical frames. The clock is the number of `I` lines seen so far: an
//! instruction and the data accesses that follow it share one time stamp. Lackey
//! serialises the program's threads and does not say which ran, so vcpu is 0.
//!
//! The parser walks the bytes of a large buffer by hand (no regex, no per-line
//! allocation): it must keep up with lackey output at millions of lines per second.

use super::{Clock, TraceError, TraceHeader, TraceWriter};
use crate::access::{Access, AccessOp, AccessSource, PageKind};
use std::collections::HashSet;
use std::hash::{BuildHasherDefault, Hasher};
use std::io::{ErrorKind, Read, Write};

/// Which instruction fetches become records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum InstrFetches {
    /// One exec record per run of fetches on the same page: the predictor sees code
    /// page changes without a record per instruction swamping the data accesses.
    #[default]
    PageChanges,
    /// Every `I` line (traces grow ~3x).
    All,
    /// No exec records; `I` lines still advance the clock.
    None,
}

/// How to import.
#[derive(Debug, Clone, Default)]
pub struct LackeyOptions {
    pub instr: InstrFetches,
    /// Stop after this many records (the input is left unread; a piped valgrind
    /// then ends on SIGPIPE). Bounds trace size and capture time.
    pub max_records: Option<u64>,
}

/// What an import saw; printed as the importer's one-line summary.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImportStats {
    pub lines: u64,
    pub bytes: u64,
    pub instructions: u64,
    pub records: u64,
    /// Valgrind's own `==PID==` lines.
    pub valgrind_lines: u64,
    /// Anything else that is not an access line (the program's own output, junk).
    pub skipped_lines: u64,
    pub distinct_pages: u64,
    /// The import stopped at `max_records` before the input ended.
    pub stopped_at_limit: bool,
}

/// Why an import stopped.
#[derive(Debug, thiserror::Error)]
pub enum LackeyError {
    #[error("cannot read lackey input after {bytes} bytes: {source}")]
    Read {
        bytes: u64,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Trace(#[from] TraceError),
}

/// The header a lackey import writes: instruction clock, 4 KiB pages.
pub fn header(description: &str) -> TraceHeader {
    let mut h = TraceHeader {
        clock: Clock::Instructions,
        description: description.to_owned(),
        ..TraceHeader::default()
    };
    h.metadata.insert("importer".into(), "lackey".into());
    h.metadata.insert("address-space".into(), "virtual".into());
    h
}

const PAGE_SHIFT: u32 = 12;
const BUF_LEN: usize = 4 << 20;
/// Accesses wider than this are not lackey output (its widest is a 512-byte xsave).
const MAX_ACCESS_SIZE: u64 = 4096;

/// Pages are sequential-ish; a multiplicative hash is plenty and 5x cheaper than SipHash.
#[derive(Default)]
struct PageHasher(u64);
impl Hasher for PageHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = (v ^ (v >> 29)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

struct Importer<'w, W: Write> {
    out: &'w mut TraceWriter<W>,
    opts: LackeyOptions,
    stats: ImportStats,
    pages: HashSet<u64, BuildHasherDefault<PageHasher>>,
    last_counted_page: u64,
    last_instr_page: Option<u64>,
    max_records: u64,
}

/// Streams lackey output from `input` into `out` (which the caller finishes).
pub fn import<R: Read, W: Write>(
    mut input: R,
    out: &mut TraceWriter<W>,
    opts: &LackeyOptions,
) -> Result<ImportStats, LackeyError> {
    let mut imp = Importer {
        out,
        opts: opts.clone(),
        stats: ImportStats::default(),
        pages: HashSet::default(),
        last_counted_page: u64::MAX,
        last_instr_page: None,
        max_records: opts.max_records.unwrap_or(u64::MAX),
    };
    let mut buf = vec![0u8; BUF_LEN];
    let mut filled = 0usize;
    // Set while discarding the rest of a line longer than the whole buffer.
    let mut skipping_long_line = false;
    loop {
        let n = match input.read(&mut buf[filled..]) {
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(source) => {
                return Err(LackeyError::Read {
                    bytes: imp.stats.bytes,
                    source,
                })
            }
        };
        imp.stats.bytes += n as u64;
        if n == 0 {
            if filled > 0 && !skipping_long_line {
                // A last line without its newline.
                buf[filled] = b'\n';
                imp.parse_lines(&buf[..filled + 1])?;
                imp.stats.stopped_at_limit = imp.stats.records >= imp.max_records;
            }
            break;
        }
        let start = filled;
        filled += n;
        let Some(last_nl) = buf[start..filled].iter().rposition(|&b| b == b'\n') else {
            if filled == buf.len() {
                // No newline in 4 MiB: not lackey output; drop it as one bad line.
                if !skipping_long_line {
                    imp.stats.lines += 1;
                    imp.stats.skipped_lines += 1;
                }
                skipping_long_line = true;
                filled = 0;
            }
            continue;
        };
        let end = start + last_nl + 1;
        let mut from = 0;
        if skipping_long_line {
            from = buf[..end]
                .iter()
                .position(|&b| b == b'\n')
                .map_or(end, |p| p + 1);
            skipping_long_line = false;
        }
        if !imp.parse_lines(&buf[from..end])? {
            imp.stats.stopped_at_limit = true;
            break;
        }
        buf.copy_within(end..filled, 0);
        filled -= end;
    }
    imp.stats.distinct_pages = imp.pages.len() as u64;
    Ok(imp.stats)
}

#[inline]
fn hex_digit(b: u8) -> Option<u64> {
    match b {
        b'0'..=b'9' => Some(u64::from(b - b'0')),
        b'a'..=b'f' => Some(u64::from(b - b'a' + 10)),
        b'A'..=b'F' => Some(u64::from(b - b'A' + 10)),
        _ => None,
    }
}

/// Parses `ADDR,SIZE\n` at `*i`; on success `*i` is just past the newline.
#[inline]
fn parse_addr_size(b: &[u8], i: &mut usize) -> Option<(u64, u64)> {
    let mut p = *i;
    let mut addr = 0u64;
    let mut digits = 0;
    while let Some(d) = hex_digit(b[p]) {
        addr = (addr << 4) | d;
        p += 1;
        digits += 1;
    }
    if digits == 0 || digits > 16 || b[p] != b',' {
        return None;
    }
    p += 1;
    let mut size = 0u64;
    let size_start = p;
    while b[p].is_ascii_digit() {
        size = size * 10 + u64::from(b[p] - b'0');
        p += 1;
        if p - size_start > 6 {
            return None;
        }
    }
    if p == size_start || b[p] != b'\n' || size == 0 || size > MAX_ACCESS_SIZE {
        return None;
    }
    *i = p + 1;
    Some((addr, size))
}

impl<W: Write> Importer<'_, W> {
    /// `b` holds whole lines and ends with `\n`, so every scan stops in bounds.
    /// Returns false once `max_records` records are written.
    fn parse_lines(&mut self, b: &[u8]) -> Result<bool, TraceError> {
        let mut i = 0;
        while i < b.len() {
            self.stats.lines += 1;
            let line_start = i;
            let parsed = match b[i] {
                b'I' if b[i + 1] == b' ' => {
                    let mut p = i + 1;
                    while b[p] == b' ' {
                        p += 1;
                    }
                    parse_addr_size(b, &mut p).map(|(a, s)| (AccessOp::Exec, a, s, p))
                }
                // b[i + 1] is not the final newline, so b[i + 2] is in bounds.
                b' ' if matches!(b[i + 1], b'L' | b'S' | b'M') && b[i + 2] == b' ' => {
                    let op = if b[i + 1] == b'L' {
                        AccessOp::Read
                    } else {
                        AccessOp::Write
                    };
                    let mut p = i + 3;
                    parse_addr_size(b, &mut p).map(|(a, s)| (op, a, s, p))
                }
                _ => None,
            };
            match parsed {
                Some((op, addr, size, next)) => {
                    self.access(op, addr, size)?;
                    i = next;
                    if self.stats.records >= self.max_records {
                        return Ok(false);
                    }
                }
                None => {
                    if b[line_start] == b'=' && b.get(line_start + 1) == Some(&b'=') {
                        self.stats.valgrind_lines += 1;
                    } else {
                        self.stats.skipped_lines += 1;
                    }
                    i += b[i..]
                        .iter()
                        .position(|&c| c == b'\n')
                        .unwrap_or(b.len() - i)
                        + 1;
                }
            }
        }
        Ok(true)
    }

    #[inline]
    fn access(&mut self, op: AccessOp, addr: u64, size: u64) -> Result<(), TraceError> {
        let first = addr >> PAGE_SHIFT;
        let last = addr.saturating_add(size - 1) >> PAGE_SHIFT;
        let kind = if op == AccessOp::Exec {
            self.stats.instructions += 1;
            let record = match self.opts.instr {
                InstrFetches::All => true,
                InstrFetches::None => false,
                InstrFetches::PageChanges => self.last_instr_page != Some(first),
            };
            self.last_instr_page = Some(last);
            if !record {
                return Ok(());
            }
            PageKind::Code
        } else {
            PageKind::Data
        };
        let room = self.max_records.saturating_sub(self.stats.records);
        if room == 0 {
            return Ok(());
        }
        let last = last.min(first.saturating_add(room - 1));
        for page in first..=last {
            self.out.write(&Access {
                time_ns: self.stats.instructions,
                page,
                vcpu: 0,
                op,
                kind,
                source: AccessSource::Full,
            })?;
            self.stats.records += 1;
            if page != self.last_counted_page {
                self.pages.insert(page);
                self.last_counted_page = page;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::TraceReader;

    fn run(input: &[u8], instr: InstrFetches) -> (ImportStats, Vec<Access>) {
        let mut w = TraceWriter::new(Vec::new(), &header("test")).unwrap();
        let opts = LackeyOptions {
            instr,
            ..LackeyOptions::default()
        };
        let stats = import(input, &mut w, &opts).unwrap();
        let bytes = w.finish().unwrap();
        let r = TraceReader::new(&bytes[..]).unwrap();
        assert_eq!(r.header().clock, Clock::Instructions);
        (stats, r.map(Result::unwrap).collect())
    }

    const SAMPLE: &[u8] = b"==1242== Lackey, an example Valgrind tool\n\
I  04010173,3\n L 04222cac,8\n S 04222cac,8\nI  04010176,4\n M 0421b4b4,4\n\
hello from the program\nI  04011000,2\n L 04222ffc,8\n==1242== \nI  04011002,2";

    #[test]
    fn sample_lines_become_the_right_records() {
        let (stats, recs) = run(SAMPLE, InstrFetches::PageChanges);
        let got: Vec<_> = recs
            .iter()
            .map(|a| (a.time_ns, a.page, a.op, a.kind))
            .collect();
        use AccessOp::*;
        use PageKind::*;
        assert_eq!(
            got,
            vec![
                (1, 0x4010, Exec, Code),
                (1, 0x4222, Read, Data),
                (1, 0x4222, Write, Data),
                (2, 0x421b, Write, Data),
                (3, 0x4011, Exec, Code),
                // An 8-byte load at 0x...ffc crosses into the next page: both pages.
                (3, 0x4222, Read, Data),
                (3, 0x4223, Read, Data),
            ]
        );
        assert_eq!(stats.lines, 11);
        assert_eq!(stats.instructions, 4);
        assert_eq!(stats.valgrind_lines, 2);
        assert_eq!(stats.skipped_lines, 1);
        assert_eq!(stats.records, 7);
        assert_eq!(stats.distinct_pages, 5);
    }

    #[test]
    fn instruction_modes() {
        let (_, all) = run(SAMPLE, InstrFetches::All);
        assert_eq!(all.iter().filter(|a| a.op == AccessOp::Exec).count(), 4);
        let (stats, none) = run(SAMPLE, InstrFetches::None);
        assert!(none.iter().all(|a| a.op != AccessOp::Exec));
        assert_eq!(stats.instructions, 4);
        assert_eq!(none.last().unwrap().time_ns, 3);
    }

    #[test]
    fn max_records_stops_exactly() {
        for max in [1, 2, 3, 6, 7, 100] {
            let mut w = TraceWriter::new(Vec::new(), &header("t")).unwrap();
            let opts = LackeyOptions {
                max_records: Some(max),
                ..LackeyOptions::default()
            };
            let stats = import(SAMPLE, &mut w, &opts).unwrap();
            assert_eq!(stats.records, max.min(7), "max {max}");
            assert_eq!(stats.stopped_at_limit, max <= 7, "max {max}");
            let bytes = w.finish().unwrap();
            assert_eq!(
                TraceReader::new(&bytes[..]).unwrap().count() as u64,
                max.min(7)
            );
        }
    }

    #[test]
    fn junk_is_counted_not_fatal() {
        let junk = b"I  zz,3\n L 1234\n X 1000,4\n S 1000,0\nI  ,3\n\n L 1000,4\n \n";
        let (stats, recs) = run(junk, InstrFetches::PageChanges);
        assert_eq!(stats.skipped_lines, 7);
        assert_eq!(recs.len(), 1);
    }

    #[test]
    fn lines_split_across_reads_parse_whole() {
        // A reader that hands out 3 bytes at a time.
        struct Dribble<'a>(&'a [u8]);
        impl Read for Dribble<'_> {
            fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
                let n = self.0.len().min(3).min(out.len());
                out[..n].copy_from_slice(&self.0[..n]);
                self.0 = &self.0[n..];
                Ok(n)
            }
        }
        let mut w = TraceWriter::new(Vec::new(), &header("t")).unwrap();
        let stats = import(Dribble(SAMPLE), &mut w, &LackeyOptions::default()).unwrap();
        assert_eq!(stats, run(SAMPLE, InstrFetches::PageChanges).0);
    }
}
