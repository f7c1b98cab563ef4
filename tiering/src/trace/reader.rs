//! Streaming trace reader: an iterator of records, or whole blocks at a time.

use super::codec::{self, BLOCK_HEADER_LEN, BLOCK_TAG, END_TAG, FIXED_HEADER_LEN, MAX_RECORD_LEN};
use super::writer::MAX_RECORDS_PER_BLOCK;
use super::{TraceError, TraceHeader};
use crate::access::Access;
use std::fs::File;
use std::io::{BufReader, ErrorKind, Read};
use std::path::Path;

/// Reads a trace. As an iterator it yields every record of every intact block,
/// then at most one `Err` (corruption, truncation, I/O), then `None`.
pub struct TraceReader<R: Read> {
    input: R,
    header: TraceHeader,
    offset: u64,
    payload: Vec<u8>,
    records: Vec<Access>,
    next: usize,
    records_read: u64,
    finished: bool,
}

impl TraceReader<BufReader<File>> {
    /// Opens `path` and reads its header.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, TraceError> {
        let file = File::open(path).map_err(|source| TraceError::Io { offset: 0, source })?;
        Self::new(BufReader::with_capacity(1 << 20, file))
    }
}

/// Reads a whole trace into memory: the fast path for replay and training.
pub fn read_all(path: impl AsRef<Path>) -> Result<(TraceHeader, Vec<Access>), TraceError> {
    let mut reader = TraceReader::open(path)?;
    let mut records = Vec::new();
    while reader.read_block(&mut records)? {}
    Ok((reader.header, records))
}

impl<R: Read> TraceReader<R> {
    /// Reads and checks the header from `input`.
    pub fn new(mut input: R) -> Result<Self, TraceError> {
        let mut fixed = [0u8; FIXED_HEADER_LEN];
        let n = read_full(&mut input, &mut fixed, 0)?;
        let magic_len = n.min(8);
        if n == 0 {
            return Err(TraceError::Truncated {
                offset: 0,
                detail: "the file is empty".into(),
            });
        }
        if fixed[..magic_len] != super::MAGIC[..magic_len] {
            return Err(TraceError::BadMagic {
                found: fixed[..magic_len].to_vec(),
            });
        }
        if n < FIXED_HEADER_LEN {
            return Err(TraceError::Truncated {
                offset: n as u64,
                detail: "the header is incomplete".into(),
            });
        }
        let f = codec::decode_fixed_header(&fixed)?;
        let mut rest = vec![0u8; f.meta_len as usize + 4];
        let got = read_full(&mut input, &mut rest, FIXED_HEADER_LEN as u64)?;
        if got < rest.len() {
            return Err(TraceError::Truncated {
                offset: (FIXED_HEADER_LEN + got) as u64,
                detail: "the header metadata is incomplete".into(),
            });
        }
        let header = codec::decode_header_rest(&fixed, &f, &rest)?;
        Ok(TraceReader {
            input,
            header,
            offset: (FIXED_HEADER_LEN + rest.len()) as u64,
            payload: Vec::new(),
            records: Vec::new(),
            next: 0,
            records_read: 0,
            finished: false,
        })
    }

    /// The trace's header.
    pub fn header(&self) -> &TraceHeader {
        &self.header
    }

    /// Byte offset of the next unread block.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Appends the records of the next block to `out`. Returns `Ok(false)` after the
    /// end marker (checked against the records read), `Ok(true)` otherwise.
    pub fn read_block(&mut self, out: &mut Vec<Access>) -> Result<bool, TraceError> {
        if self.finished {
            return Ok(false);
        }
        let result = self.read_block_inner(out);
        if !matches!(result, Ok(true)) {
            self.finished = true;
        }
        result
    }

    fn read_block_inner(&mut self, out: &mut Vec<Access>) -> Result<bool, TraceError> {
        let start = self.offset;
        let mut head = [0u8; BLOCK_HEADER_LEN];
        let n = read_full(&mut self.input, &mut head, start)?;
        if n == 0 {
            return Err(TraceError::Truncated {
                offset: start,
                detail: format!(
                    "no end marker after {} records: the writer did not finish",
                    self.records_read
                ),
            });
        }
        let tag: [u8; 4] = head[..4].try_into().expect("4 bytes");
        if n < BLOCK_HEADER_LEN && (n < 4 || tag == BLOCK_TAG || tag == END_TAG) {
            return Err(TraceError::Truncated {
                offset: start + n as u64,
                detail: format!("block header at offset {start} is incomplete"),
            });
        }
        if tag == END_TAG {
            return self.check_end(&head, start).map(|()| false);
        }
        if tag != BLOCK_TAG {
            return Err(TraceError::Corrupt {
                offset: start,
                detail: format!("expected a block or the end marker, found bytes {tag:02x?}"),
            });
        }
        let count = codec::le_u32(&head[4..]);
        let len = codec::le_u32(&head[8..]) as usize;
        let crc = codec::le_u32(&head[12..]);
        if count == 0 || count > MAX_RECORDS_PER_BLOCK {
            return Err(TraceError::Corrupt {
                offset: start + 4,
                detail: format!(
                    "block record count {count} is outside 1..={MAX_RECORDS_PER_BLOCK}"
                ),
            });
        }
        if len < count as usize * 2 || len > count as usize * MAX_RECORD_LEN {
            return Err(TraceError::Corrupt {
                offset: start + 8,
                detail: format!("block payload length {len} cannot hold {count} records"),
            });
        }
        let payload_offset = start + BLOCK_HEADER_LEN as u64;
        self.payload.resize(len, 0);
        let got = read_full(&mut self.input, &mut self.payload, payload_offset)?;
        if got < len {
            return Err(TraceError::Truncated {
                offset: payload_offset + got as u64,
                detail: format!(
                    "block at offset {start} should hold {len} payload bytes, {got} remain"
                ),
            });
        }
        if crc32fast::hash(&self.payload) != crc {
            return Err(TraceError::Corrupt {
                offset: start,
                detail: format!("CRC32 mismatch in the block of {count} records"),
            });
        }
        codec::decode_block(&self.payload, count, payload_offset, out)?;
        self.offset = payload_offset + len as u64;
        self.records_read += u64::from(count);
        Ok(true)
    }

    fn check_end(&mut self, head: &[u8; BLOCK_HEADER_LEN], start: u64) -> Result<(), TraceError> {
        if crc32fast::hash(&head[..12]) != codec::le_u32(&head[12..]) {
            return Err(TraceError::Corrupt {
                offset: start,
                detail: "end marker CRC32 mismatch".into(),
            });
        }
        let total = codec::le_u64(&head[4..]);
        if total != self.records_read {
            return Err(TraceError::Corrupt {
                offset: start,
                detail: format!(
                    "end marker says {total} records, the blocks held {}",
                    self.records_read
                ),
            });
        }
        self.offset = start + BLOCK_HEADER_LEN as u64;
        let mut extra = [0u8; 1];
        if read_full(&mut self.input, &mut extra, self.offset)? != 0 {
            return Err(TraceError::Corrupt {
                offset: self.offset,
                detail: "unexpected bytes after the end marker".into(),
            });
        }
        Ok(())
    }
}

impl<R: Read> Iterator for TraceReader<R> {
    type Item = Result<Access, TraceError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.next == self.records.len() {
            self.records.clear();
            self.next = 0;
            let mut block = std::mem::take(&mut self.records);
            let r = self.read_block(&mut block);
            self.records = block;
            match r {
                Ok(true) => {}
                Ok(false) => return None,
                Err(e) => return Some(Err(e)),
            }
        }
        let a = self.records[self.next];
        self.next += 1;
        Some(Ok(a))
    }
}

/// Reads until `buf` is full or the input ends; returns the bytes read.
fn read_full(input: &mut impl Read, buf: &mut [u8], offset: u64) -> Result<usize, TraceError> {
    let mut n = 0;
    while n < buf.len() {
        match input.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(source) => {
                return Err(TraceError::Io {
                    offset: offset + n as u64,
                    source,
                })
            }
        }
    }
    Ok(n)
}
