//! Byte layout of trace version 1: header, blocks, end marker, records.
//! `docs/trace-format.md` is the prose version of this file; keep them in step.

use super::{Clock, TraceError, TraceHeader, MAGIC, VERSION};
use crate::access::{Access, AccessOp, AccessSource, PageKind};
use std::collections::BTreeMap;

/// Header bytes before the variable-length metadata.
pub const FIXED_HEADER_LEN: usize = 28;
/// Upper bound on the metadata section, so a damaged length cannot ask for gigabytes.
pub const MAX_META_LEN: u32 = 1 << 20;
/// Tag, record count, payload length, payload CRC32.
pub const BLOCK_HEADER_LEN: usize = 16;
/// Tag, total record count, CRC32 of the two.
pub const END_MARKER_LEN: usize = 16;
pub const BLOCK_TAG: [u8; 4] = *b"TVBK";
pub const END_TAG: [u8; 4] = *b"TVEN";
/// A record takes at most 1 + 10 + 10 + 3 bytes.
pub const MAX_RECORD_LEN: usize = 24;

const FLAG_CLOCK_INSTRUCTIONS: u16 = 1 << 0;
const FLAG_HAS_VM_ID: u16 = 1 << 1;
const KNOWN_FLAGS: u16 = FLAG_CLOCK_INSTRUCTIONS | FLAG_HAS_VM_ID;

/// Record tag byte: bits 0-1 op, 2-3 kind, 4-5 source, 6 a vCPU varint follows,
/// 7 same page as the previous record (no page delta stored).
const TAG_VCPU_FOLLOWS: u8 = 1 << 6;
const TAG_SAME_PAGE: u8 = 1 << 7;

pub fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

/// Reads a LEB128 varint from `buf` at `*pos`; `None` if it runs off the end or
/// is longer than 10 bytes.
#[inline]
fn get_varint(buf: &[u8], pos: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    let mut shift = 0u32;
    loop {
        let b = *buf.get(*pos)?;
        *pos += 1;
        if shift == 63 && b > 1 {
            return None;
        }
        v |= u64::from(b & 0x7f) << shift;
        if b < 0x80 {
            return Some(v);
        }
        shift += 7;
        if shift > 63 {
            return None;
        }
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_varint(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

fn get_str(buf: &[u8], pos: &mut usize) -> Option<String> {
    let len = usize::try_from(get_varint(buf, pos)?).ok()?;
    let end = pos.checked_add(len)?;
    let s = std::str::from_utf8(buf.get(*pos..end)?).ok()?.to_owned();
    *pos = end;
    Some(s)
}

/// The complete header, CRC included.
pub fn encode_header(h: &TraceHeader) -> Result<Vec<u8>, TraceError> {
    if !h.page_size.is_power_of_two() {
        return Err(TraceError::InvalidRecord(format!(
            "page size {} is not a power of two",
            h.page_size
        )));
    }
    let mut meta = Vec::new();
    put_str(&mut meta, &h.description);
    put_varint(&mut meta, h.metadata.len() as u64);
    for (k, v) in &h.metadata {
        put_str(&mut meta, k);
        put_str(&mut meta, v);
    }
    if meta.len() > MAX_META_LEN as usize {
        return Err(TraceError::InvalidRecord(format!(
            "header metadata is {} bytes, at most {MAX_META_LEN} fit",
            meta.len()
        )));
    }
    let mut flags = 0;
    if h.clock == Clock::Instructions {
        flags |= FLAG_CLOCK_INSTRUCTIONS;
    }
    if h.vm_id.is_some() {
        flags |= FLAG_HAS_VM_ID;
    }
    let mut out = Vec::with_capacity(FIXED_HEADER_LEN + meta.len() + 4);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&flags.to_le_bytes());
    out.extend_from_slice(&h.page_size.to_le_bytes());
    out.extend_from_slice(&h.vm_id.unwrap_or(0).to_le_bytes());
    out.extend_from_slice(&(meta.len() as u32).to_le_bytes());
    out.extend_from_slice(&meta);
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    Ok(out)
}

/// What the fixed part of the header says; the caller then reads `meta_len` + 4 bytes.
pub struct FixedHeader {
    flags: u16,
    page_size: u32,
    vm_id: u64,
    pub meta_len: u32,
}

fn le_u16(b: &[u8]) -> u16 {
    u16::from_le_bytes([b[0], b[1]])
}
pub fn le_u32(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}
pub fn le_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

fn corrupt(offset: u64, detail: impl Into<String>) -> TraceError {
    TraceError::Corrupt {
        offset,
        detail: detail.into(),
    }
}

/// Checks magic, version and flags of the first [`FIXED_HEADER_LEN`] bytes.
pub fn decode_fixed_header(b: &[u8; FIXED_HEADER_LEN]) -> Result<FixedHeader, TraceError> {
    if b[..8] != MAGIC {
        return Err(TraceError::BadMagic {
            found: b[..8].to_vec(),
        });
    }
    let version = le_u16(&b[8..]);
    if version != VERSION {
        return Err(TraceError::UnsupportedVersion {
            found: version,
            supported: VERSION,
        });
    }
    let flags = le_u16(&b[10..]);
    if flags & !KNOWN_FLAGS != 0 {
        return Err(corrupt(10, format!("unknown header flags 0x{flags:04x}")));
    }
    let page_size = le_u32(&b[12..]);
    if !page_size.is_power_of_two() {
        return Err(corrupt(
            12,
            format!("page size {page_size} is not a power of two"),
        ));
    }
    let meta_len = le_u32(&b[24..]);
    if meta_len > MAX_META_LEN {
        return Err(corrupt(
            24,
            format!("metadata length {meta_len} exceeds {MAX_META_LEN}"),
        ));
    }
    Ok(FixedHeader {
        flags,
        page_size,
        vm_id: le_u64(&b[16..]),
        meta_len,
    })
}

/// Finishes the header from its fixed part and `rest` = metadata + CRC32.
pub fn decode_header_rest(
    fixed_bytes: &[u8; FIXED_HEADER_LEN],
    f: &FixedHeader,
    rest: &[u8],
) -> Result<TraceHeader, TraceError> {
    let meta = &rest[..f.meta_len as usize];
    let stored = le_u32(&rest[f.meta_len as usize..]);
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(fixed_bytes);
    hasher.update(meta);
    let crc_offset = (FIXED_HEADER_LEN + meta.len()) as u64;
    if hasher.finalize() != stored {
        return Err(corrupt(crc_offset, "header CRC32 mismatch"));
    }
    let bad = || corrupt(FIXED_HEADER_LEN as u64, "malformed header metadata");
    let mut pos = 0;
    let description = get_str(meta, &mut pos).ok_or_else(bad)?;
    let n = get_varint(meta, &mut pos).ok_or_else(bad)?;
    let mut metadata = BTreeMap::new();
    for _ in 0..n {
        let k = get_str(meta, &mut pos).ok_or_else(bad)?;
        let v = get_str(meta, &mut pos).ok_or_else(bad)?;
        metadata.insert(k, v);
    }
    if pos != meta.len() {
        return Err(bad());
    }
    Ok(TraceHeader {
        page_size: f.page_size,
        clock: if f.flags & FLAG_CLOCK_INSTRUCTIONS != 0 {
            Clock::Instructions
        } else {
            Clock::Nanoseconds
        },
        vm_id: (f.flags & FLAG_HAS_VM_ID != 0).then_some(f.vm_id),
        description,
        metadata,
    })
}

/// Delta state of one block; it starts from zero in every block.
#[derive(Default)]
pub struct DeltaState {
    time: u64,
    page: u64,
    vcpu: u16,
}

/// Appends one record to a block payload.
#[inline]
pub fn encode_record(out: &mut Vec<u8>, st: &mut DeltaState, a: &Access) {
    let mut tag = (a.op as u8) | ((a.kind as u8) << 2) | ((a.source as u8) << 4);
    if a.vcpu != st.vcpu {
        tag |= TAG_VCPU_FOLLOWS;
    }
    if a.page == st.page {
        tag |= TAG_SAME_PAGE;
    }
    out.push(tag);
    put_varint(out, zigzag(a.time_ns.wrapping_sub(st.time) as i64));
    if a.page != st.page {
        put_varint(out, zigzag(a.page.wrapping_sub(st.page) as i64));
    }
    if a.vcpu != st.vcpu {
        put_varint(out, u64::from(a.vcpu));
    }
    st.time = a.time_ns;
    st.page = a.page;
    st.vcpu = a.vcpu;
}

fn op_of(bits: u8) -> Option<AccessOp> {
    match bits {
        0 => Some(AccessOp::Read),
        1 => Some(AccessOp::Write),
        2 => Some(AccessOp::Exec),
        _ => None,
    }
}
fn kind_of(bits: u8) -> PageKind {
    match bits {
        0 => PageKind::Unknown,
        1 => PageKind::Code,
        2 => PageKind::Data,
        _ => PageKind::Shared,
    }
}
fn source_of(bits: u8) -> AccessSource {
    match bits {
        0 => AccessSource::Full,
        1 => AccessSource::MissingFault,
        2 => AccessSource::SampledMinor,
        _ => AccessSource::DirtyLog,
    }
}

/// Decodes a whole block payload (already CRC-checked) holding `count` records into
/// `out`. `payload_offset` is the payload's file offset, for error messages.
pub fn decode_block(
    payload: &[u8],
    count: u32,
    payload_offset: u64,
    out: &mut Vec<Access>,
) -> Result<(), TraceError> {
    out.reserve(count as usize);
    let mut st = DeltaState::default();
    let mut pos = 0usize;
    for i in 0..count {
        let start = pos;
        let bad = |what: &str| {
            corrupt(
                payload_offset + start as u64,
                format!("record {i} of the block: {what}"),
            )
        };
        let tag = *payload.get(pos).ok_or_else(|| bad("payload ends early"))?;
        pos += 1;
        let op = op_of(tag & 3).ok_or_else(|| bad("invalid access op 3"))?;
        let dt = get_varint(payload, &mut pos).ok_or_else(|| bad("bad time varint"))?;
        st.time = st.time.wrapping_add(unzigzag(dt) as u64);
        if tag & TAG_SAME_PAGE == 0 {
            let dp = get_varint(payload, &mut pos).ok_or_else(|| bad("bad page varint"))?;
            st.page = st.page.wrapping_add(unzigzag(dp) as u64);
        }
        if tag & TAG_VCPU_FOLLOWS != 0 {
            let v = get_varint(payload, &mut pos).ok_or_else(|| bad("bad vcpu varint"))?;
            st.vcpu = u16::try_from(v).map_err(|_| bad("vcpu out of range"))?;
        }
        out.push(Access {
            time_ns: st.time,
            page: st.page,
            vcpu: st.vcpu,
            op,
            kind: kind_of((tag >> 2) & 3),
            source: source_of((tag >> 4) & 3),
        });
    }
    if pos != payload.len() {
        return Err(corrupt(
            payload_offset + pos as u64,
            format!(
                "{} bytes left over after the block's {count} records",
                payload.len() - pos
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varint_round_trips_extremes() {
        for v in [
            0u64,
            1,
            127,
            128,
            300,
            u32::MAX as u64,
            u64::MAX - 1,
            u64::MAX,
        ] {
            let mut b = Vec::new();
            put_varint(&mut b, v);
            let mut p = 0;
            assert_eq!(get_varint(&b, &mut p), Some(v));
            assert_eq!(p, b.len());
        }
        for v in [0i64, 1, -1, i64::MIN, i64::MAX] {
            assert_eq!(unzigzag(zigzag(v)), v);
        }
    }

    #[test]
    fn overlong_varint_is_rejected() {
        let b = [0xffu8; 11];
        assert_eq!(get_varint(&b, &mut 0), None);
    }
}
