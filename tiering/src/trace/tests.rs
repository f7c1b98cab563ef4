//! Round trips, damage detection and edge cases of the trace format.

use super::*;
use crate::access::{Access, AccessOp, AccessSource, PageKind};

/// xorshift64*: deterministic pseudo-random records without a dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

fn random_records(n: usize, seed: u64) -> Vec<Access> {
    let mut rng = Rng(seed);
    let mut time = 0u64;
    let mut page = 1000u64;
    (0..n)
        .map(|i| {
            let r = rng.next();
            // Mostly small steps like real traces, sometimes huge jumps both ways.
            time = match r % 7 {
                0 => rng.next(),
                1 => time.wrapping_sub(r % 50),
                _ => time.wrapping_add((r >> 8) % 100),
            };
            page = match (r >> 3) % 5 {
                0 => rng.next(),
                1 => page,
                _ => page.wrapping_add((r >> 16) % 9).wrapping_sub(4),
            };
            Access {
                time_ns: time,
                page,
                vcpu: if i % 97 == 0 {
                    (r >> 40) as u16
                } else {
                    (r % 2) as u16
                },
                op: [AccessOp::Read, AccessOp::Write, AccessOp::Exec][(r >> 20) as usize % 3],
                kind: [
                    PageKind::Unknown,
                    PageKind::Code,
                    PageKind::Data,
                    PageKind::Shared,
                ][(r >> 24) as usize % 4],
                source: [
                    AccessSource::Full,
                    AccessSource::MissingFault,
                    AccessSource::SampledMinor,
                    AccessSource::DirtyLog,
                ][(r >> 28) as usize % 4],
            }
        })
        .collect()
}

fn header() -> TraceHeader {
    let mut h = TraceHeader {
        clock: Clock::Instructions,
        vm_id: Some(7),
        description: "unit test".into(),
        ..TraceHeader::default()
    };
    h.metadata.insert("workload".into(), "random".into());
    h
}

fn encode(h: &TraceHeader, records: &[Access]) -> Vec<u8> {
    let mut w = TraceWriter::new(Vec::new(), h).unwrap();
    w.write_all(records).unwrap();
    w.finish().unwrap()
}

fn decode(bytes: &[u8]) -> Result<(TraceHeader, Vec<Access>), TraceError> {
    let r = TraceReader::new(bytes)?;
    let h = r.header().clone();
    Ok((h, r.collect::<Result<Vec<_>, _>>()?))
}

#[test]
fn random_records_round_trip_across_blocks() {
    let records = random_records(MAX_RECORDS_PER_BLOCK as usize * 2 + 123, 42);
    let bytes = encode(&header(), &records);
    let (h, back) = decode(&bytes).unwrap();
    assert_eq!(h, header());
    assert_eq!(back, records);
}

#[test]
fn read_all_matches_iterator() {
    let records = random_records(5000, 9);
    let path = std::env::temp_dir().join(format!("tv-trace-test-{}.tvt", std::process::id()));
    let mut w = TraceWriter::create(&path, &TraceHeader::default()).unwrap();
    w.write_all(&records).unwrap();
    assert_eq!(w.records_written(), 5000);
    w.finish().unwrap();
    let (h, all) = read_all(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    assert_eq!(h, TraceHeader::default());
    assert_eq!(all, records);
}

#[test]
fn empty_trace_round_trips() {
    let bytes = encode(&TraceHeader::default(), &[]);
    let (h, back) = decode(&bytes).unwrap();
    assert_eq!(h, TraceHeader::default());
    assert!(back.is_empty());
}

#[test]
fn every_flipped_payload_byte_is_detected_with_its_block_offset() {
    let records = random_records(300, 3);
    let bytes = encode(&header(), &records);
    let header_len = codec::encode_header(&header()).unwrap().len();
    for i in [header_len + 16, header_len + 100, bytes.len() - 20] {
        let mut bad = bytes.clone();
        bad[i] ^= 0x10;
        match decode(&bad) {
            Err(TraceError::Corrupt { offset, detail }) => {
                assert_eq!(offset, header_len as u64, "{detail}");
                assert!(detail.contains("CRC32"), "{detail}");
            }
            other => panic!("flip at {i}: {other:?}"),
        }
    }
}

#[test]
fn damaged_header_and_end_marker_are_detected() {
    let bytes = encode(&header(), &random_records(10, 5));
    let mut bad = bytes.clone();
    bad[20] ^= 1; // vm_id
    assert!(matches!(decode(&bad), Err(TraceError::Corrupt { .. })));
    let mut bad = bytes.clone();
    let n = bad.len();
    bad[n - 10] ^= 1; // total record count in the end marker
    assert!(matches!(decode(&bad), Err(TraceError::Corrupt { .. })));
    let mut bad = bytes.clone();
    bad.push(0);
    assert!(matches!(decode(&bad), Err(TraceError::Corrupt { .. })));
}

#[test]
fn truncation_anywhere_is_an_error_never_a_short_trace() {
    let records = random_records(MAX_RECORDS_PER_BLOCK as usize + 10, 11);
    let bytes = encode(&header(), &records);
    let header_len = codec::encode_header(&header()).unwrap().len();
    for cut in [
        1,
        5,
        27,
        header_len - 1,
        header_len,
        header_len + 7,
        bytes.len() / 2,
        bytes.len() - 16,
        bytes.len() - 1,
    ] {
        match decode(&bytes[..cut]) {
            Err(TraceError::Truncated { offset, .. }) => assert!(offset <= cut as u64),
            other => panic!("cut at {cut}: {:?}", other.map(|(_, r)| r.len())),
        }
    }
}

#[test]
fn truncated_trace_still_yields_its_complete_blocks() {
    let records = random_records(MAX_RECORDS_PER_BLOCK as usize + 10, 12);
    let bytes = encode(&header(), &records);
    let items: Vec<_> = TraceReader::new(&bytes[..bytes.len() - 30])
        .unwrap()
        .collect();
    let ok = items.iter().filter(|r| r.is_ok()).count();
    assert_eq!(ok, MAX_RECORDS_PER_BLOCK as usize);
    assert!(matches!(
        items.last(),
        Some(Err(TraceError::Truncated { .. }))
    ));
}

#[test]
fn unfinished_writer_leaves_a_readable_but_truncated_trace() {
    let records = random_records(100, 13);
    let mut buf = Vec::new();
    {
        let mut w = TraceWriter::new(&mut buf, &header()).unwrap();
        w.write_all(&records).unwrap();
    }
    let items: Vec<_> = TraceReader::new(&buf[..]).unwrap().collect();
    assert_eq!(items.len(), 101);
    assert!(matches!(items[100], Err(TraceError::Truncated { .. })));
}

#[test]
fn other_version_and_bad_magic_are_refused() {
    let mut bytes = encode(&header(), &[]);
    bytes[8] = 2;
    assert!(matches!(
        decode(&bytes),
        Err(TraceError::UnsupportedVersion {
            found: 2,
            supported: 1
        })
    ));
    let e = decode(b"GARBAGE-not-a-trace-at-all-0123456789").unwrap_err();
    assert!(matches!(e, TraceError::BadMagic { .. }), "{e}");
    assert!(matches!(decode(b""), Err(TraceError::Truncated { .. })));
}

#[test]
fn lackey_like_stream_is_compact() {
    // Sequential-ish accesses on a few pages: ~2-3 bytes per record.
    let records: Vec<Access> = (0..100_000u64)
        .map(|i| Access {
            time_ns: i / 3,
            page: 0x4000 + (i / 50) % 8,
            vcpu: 0,
            op: AccessOp::Read,
            kind: PageKind::Data,
            source: AccessSource::Full,
        })
        .collect();
    let bytes = encode(&TraceHeader::default(), &records);
    assert!(bytes.len() < records.len() * 3, "{} bytes", bytes.len());
}
