//! i8042 controller, only as far as a guest reboot needs it: 0xfe written to the
//! command port (0x64) resets the CPU, which ends the VM (tiervisor exits 0).

use std::sync::Arc;

use vm_superio::{I8042Device, Trigger};

use crate::{GuestStop, PioDevice, StopRequest};

/// Turns vm-superio's reset trigger into a stop request.
struct ResetTrigger(Arc<dyn StopRequest>);

impl Trigger for ResetTrigger {
    type E = std::convert::Infallible;

    fn trigger(&self) -> Result<(), Self::E> {
        self.0.request_stop(GuestStop::Reset);
        Ok(())
    }
}

/// The i8042 device, spanning ports 0x60..=0x64.
pub struct I8042 {
    inner: I8042Device<ResetTrigger>,
}

impl I8042 {
    /// An i8042 whose CPU reset reports through `stop`.
    pub fn new(stop: Arc<dyn StopRequest>) -> Self {
        Self {
            inner: I8042Device::new(ResetTrigger(stop)),
        }
    }
}

impl PioDevice for I8042 {
    fn read(&mut self, offset: u16, data: &mut [u8]) {
        data.fill(0);
        if let (Some(first), Ok(offset)) = (data.first_mut(), u8::try_from(offset)) {
            *first = self.inner.read(offset);
        }
    }

    fn write(&mut self, offset: u16, data: &[u8]) {
        if let (Some(&value), Ok(offset)) = (data.first(), u8::try_from(offset)) {
            // Infallible: the trigger cannot fail.
            let _ = self.inner.write(offset, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Recorded(Mutex<Vec<GuestStop>>);
    impl StopRequest for Recorded {
        fn request_stop(&self, why: GuestStop) {
            self.0.lock().unwrap().push(why);
        }
    }

    #[test]
    fn reset_command_requests_stop() {
        let rec = Arc::new(Recorded::default());
        let mut dev = I8042::new(rec.clone());
        dev.write(0, &[0xfe]); // data port: not a command
        dev.write(4, &[0xaa]); // other command
        assert!(rec.0.lock().unwrap().is_empty());
        dev.write(4, &[0xfe]);
        assert_eq!(*rec.0.lock().unwrap(), vec![GuestStop::Reset]);
    }
}
