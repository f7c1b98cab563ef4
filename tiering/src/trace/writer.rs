//! Streaming trace writer: records are delta-encoded into a block in memory and
//! written out a block at a time.

use super::codec::{self, DeltaState, BLOCK_TAG, END_TAG};
use super::{TraceError, TraceHeader};
use crate::access::Access;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

/// Records per block. 64 Ki records is ~200 KiB of payload for a lackey trace: big
/// enough that block overhead (16 bytes, one CRC) is noise, small enough that a
/// live recording loses little if the VMM dies between flushes.
pub const MAX_RECORDS_PER_BLOCK: u32 = 1 << 16;

/// Writes a trace. Call [`TraceWriter::finish`] at the end: it writes the end
/// marker, without which readers report the trace as truncated (after yielding
/// every record of every complete block). Dropping an unfinished writer writes
/// the pending block but no end marker, so the file reads as truncated.
pub struct TraceWriter<W: Write> {
    out: Option<W>,
    payload: Vec<u8>,
    state: DeltaState,
    block_records: u32,
    total_records: u64,
    offset: u64,
}

impl TraceWriter<BufWriter<File>> {
    /// Creates (or truncates) `path` and writes the header.
    pub fn create(path: impl AsRef<Path>, header: &TraceHeader) -> Result<Self, TraceError> {
        let file = File::create(path).map_err(|source| TraceError::Io { offset: 0, source })?;
        Self::new(BufWriter::with_capacity(1 << 20, file), header)
    }
}

impl<W: Write> TraceWriter<W> {
    /// Writes the header to `out`; records follow with [`TraceWriter::write`].
    pub fn new(mut out: W, header: &TraceHeader) -> Result<Self, TraceError> {
        let bytes = codec::encode_header(header)?;
        out.write_all(&bytes)
            .map_err(|source| TraceError::Io { offset: 0, source })?;
        Ok(TraceWriter {
            out: Some(out),
            payload: Vec::with_capacity(MAX_RECORDS_PER_BLOCK as usize * 4),
            state: DeltaState::default(),
            block_records: 0,
            total_records: 0,
            offset: bytes.len() as u64,
        })
    }

    /// Appends one record.
    #[inline]
    pub fn write(&mut self, a: &Access) -> Result<(), TraceError> {
        codec::encode_record(&mut self.payload, &mut self.state, a);
        self.block_records += 1;
        self.total_records += 1;
        if self.block_records == MAX_RECORDS_PER_BLOCK {
            self.write_block()?;
        }
        Ok(())
    }

    /// Appends many records.
    pub fn write_all(&mut self, records: &[Access]) -> Result<(), TraceError> {
        records.iter().try_for_each(|a| self.write(a))
    }

    /// Records written so far.
    pub fn records_written(&self) -> u64 {
        self.total_records
    }

    /// Ends the current block early and flushes the underlying writer, so what was
    /// written so far survives a crash (a live recording calls this periodically).
    pub fn flush(&mut self) -> Result<(), TraceError> {
        self.write_block()?;
        let offset = self.offset;
        if let Some(out) = self.out.as_mut() {
            out.flush()
                .map_err(|source| TraceError::Io { offset, source })?;
        }
        Ok(())
    }

    /// Writes the last block and the end marker, flushes, and returns the inner writer.
    pub fn finish(mut self) -> Result<W, TraceError> {
        self.write_block()?;
        let mut end = Vec::with_capacity(codec::END_MARKER_LEN);
        end.extend_from_slice(&END_TAG);
        end.extend_from_slice(&self.total_records.to_le_bytes());
        let crc = crc32fast::hash(&end);
        end.extend_from_slice(&crc.to_le_bytes());
        let offset = self.offset;
        let mut out = self.out.take().expect("writer present until finish");
        out.write_all(&end)
            .and_then(|()| out.flush())
            .map_err(|source| TraceError::Io { offset, source })?;
        Ok(out)
    }

    fn write_block(&mut self) -> Result<(), TraceError> {
        if self.block_records == 0 {
            return Ok(());
        }
        let Some(out) = self.out.as_mut() else {
            return Ok(());
        };
        let mut head = [0u8; codec::BLOCK_HEADER_LEN];
        head[..4].copy_from_slice(&BLOCK_TAG);
        head[4..8].copy_from_slice(&self.block_records.to_le_bytes());
        head[8..12].copy_from_slice(&(self.payload.len() as u32).to_le_bytes());
        head[12..].copy_from_slice(&crc32fast::hash(&self.payload).to_le_bytes());
        let offset = self.offset;
        out.write_all(&head)
            .and_then(|()| out.write_all(&self.payload))
            .map_err(|source| TraceError::Io { offset, source })?;
        self.offset += (head.len() + self.payload.len()) as u64;
        self.payload.clear();
        self.block_records = 0;
        self.state = DeltaState::default();
        Ok(())
    }
}

impl<W: Write> Drop for TraceWriter<W> {
    fn drop(&mut self) {
        // Best effort: keep the complete records of an abandoned trace readable.
        if self.out.is_some() {
            let _ = self.flush();
        }
    }
}
