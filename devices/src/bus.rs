//! Port-I/O bus: dispatches guest `in`/`out` to the device whose port range holds the
//! port. Ranges are fixed after set-up, so the bus itself needs no lock; each device
//! has its own, so two vCPUs touching different devices never contend.

use std::sync::{Arc, Mutex};

/// A device on the port-I/O bus. `offset` is relative to the device's base port.
pub trait PioDevice: Send {
    /// Guest `in`: fill `data` (1, 2 or 4 bytes).
    fn read(&mut self, offset: u16, data: &mut [u8]);
    /// Guest `out` of `data` (1, 2 or 4 bytes).
    fn write(&mut self, offset: u16, data: &[u8]);
}

/// Errors building the bus.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    /// A new device's range overlaps one already on the bus.
    #[error("ports {base:#x}..{end:#x} overlap a device already on the bus")]
    Overlap { base: u16, end: u32 },
    /// A zero-length range or one that runs past port 0xffff.
    #[error("invalid port range base {base:#x} length {len}")]
    InvalidRange { base: u16, len: u16 },
}

struct BusEntry {
    base: u16,
    len: u16,
    device: Arc<Mutex<dyn PioDevice>>,
}

/// The port-I/O bus.
#[derive(Default)]
pub struct PioBus {
    // Sorted by base; a handful of entries, so a linear scan beats anything clever.
    entries: Vec<BusEntry>,
}

impl PioBus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Put `device` at ports `base..base+len`.
    pub fn insert(
        &mut self,
        base: u16,
        len: u16,
        device: Arc<Mutex<dyn PioDevice>>,
    ) -> Result<(), BusError> {
        let end = u32::from(base) + u32::from(len);
        if len == 0 || end > 0x1_0000 {
            return Err(BusError::InvalidRange { base, len });
        }
        let overlaps = self.entries.iter().any(|e| {
            let e_end = u32::from(e.base) + u32::from(e.len);
            u32::from(base) < e_end && u32::from(e.base) < end
        });
        if overlaps {
            return Err(BusError::Overlap { base, end });
        }
        self.entries.push(BusEntry { base, len, device });
        self.entries.sort_by_key(|e| e.base);
        Ok(())
    }

    fn find(&self, port: u16) -> Option<(&BusEntry, u16)> {
        self.entries
            .iter()
            .find(|e| port >= e.base && u32::from(port) < u32::from(e.base) + u32::from(e.len))
            .map(|e| (e, port - e.base))
    }

    /// Guest `in` from `port`. Returns false (and leaves `data` as all ones, as an
    /// empty ISA bus reads) when no device sits there.
    pub fn read(&self, port: u16, data: &mut [u8]) -> bool {
        match self.find(port) {
            Some((entry, offset)) => {
                lock(&entry.device).read(offset, data);
                true
            }
            None => {
                data.fill(0xff);
                false
            }
        }
    }

    /// Guest `out` to `port`. Returns false when no device sits there.
    pub fn write(&self, port: u16, data: &[u8]) -> bool {
        match self.find(port) {
            Some((entry, offset)) => {
                lock(&entry.device).write(offset, data);
                true
            }
            None => false,
        }
    }
}

/// Lock a device, surviving a poisoned lock: a panic in one vCPU thread must not turn
/// every later port access into a second panic.
fn lock<'a>(
    device: &'a Mutex<dyn PioDevice + 'static>,
) -> std::sync::MutexGuard<'a, dyn PioDevice + 'static> {
    device.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Recorder(Vec<(u16, Vec<u8>)>);
    impl PioDevice for Recorder {
        fn read(&mut self, offset: u16, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u16, data: &[u8]) {
            self.0.push((offset, data.to_vec()));
        }
    }

    #[test]
    fn dispatches_by_range_with_offsets() {
        let dev = Arc::new(Mutex::new(Recorder(Vec::new())));
        let mut bus = PioBus::new();
        bus.insert(0x3f8, 8, dev.clone()).unwrap();
        assert!(bus.write(0x3fb, &[7]));
        assert!(!bus.write(0x400, &[1]));
        let mut b = [0u8; 1];
        assert!(bus.read(0x3ff, &mut b));
        assert_eq!(b, [7]);
        assert!(!bus.read(0x3f7, &mut b));
        assert_eq!(b, [0xff]);
        assert_eq!(dev.lock().unwrap().0, vec![(3, vec![7])]);
    }

    #[test]
    fn rejects_overlap_and_bad_ranges() {
        let mut bus = PioBus::new();
        bus.insert(0x60, 5, Arc::new(Mutex::new(Recorder(Vec::new()))))
            .unwrap();
        let e = bus.insert(0x64, 1, Arc::new(Mutex::new(Recorder(Vec::new()))));
        assert!(matches!(e, Err(BusError::Overlap { .. })));
        let e = bus.insert(0xffff, 2, Arc::new(Mutex::new(Recorder(Vec::new()))));
        assert!(matches!(e, Err(BusError::InvalidRange { .. })));
        bus.insert(0x65, 1, Arc::new(Mutex::new(Recorder(Vec::new()))))
            .unwrap();
    }
}
