//! Debug-exit port (QEMU's `isa-debug-exit,iobase=0xf4,iosize=0x04`): a guest write
//! of value v ends the VM and tiervisor exits with status v & 0xff.

use std::sync::Arc;

use crate::{GuestStop, PioDevice, StopRequest};

/// The debug-exit device.
pub struct DebugExit {
    stop: Arc<dyn StopRequest>,
}

impl DebugExit {
    /// A debug-exit port that reports through `stop`.
    pub fn new(stop: Arc<dyn StopRequest>) -> Self {
        Self { stop }
    }
}

impl PioDevice for DebugExit {
    fn read(&mut self, _offset: u16, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, _offset: u16, data: &[u8]) {
        // 1-, 2- or 4-byte writes all carry the value in their low bytes.
        let mut bytes = [0u8; 4];
        let n = data.len().min(4);
        bytes[..n].copy_from_slice(&data[..n]);
        self.stop
            .request_stop(GuestStop::DebugExit(u32::from_le_bytes(bytes)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Default)]
    pub(crate) struct Recorded(pub Mutex<Vec<GuestStop>>);
    impl StopRequest for Recorded {
        fn request_stop(&self, why: GuestStop) {
            self.0.lock().unwrap().push(why);
        }
    }

    #[test]
    fn value_of_any_width_is_reported() {
        let rec = Arc::new(Recorded::default());
        let mut dev = DebugExit::new(rec.clone());
        dev.write(0, &[3]);
        dev.write(0, &0x1_0203u32.to_le_bytes());
        assert_eq!(
            *rec.0.lock().unwrap(),
            vec![GuestStop::DebugExit(3), GuestStop::DebugExit(0x1_0203)]
        );
    }
}
