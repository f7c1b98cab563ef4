//! Boot-timer port: any guest write records the time since the tiervisor process
//! started. The first write is the guest's "I am running" mark (`boot_ms`); the test
//! guest writes it first thing.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::PioDevice;

/// What the boot timer saw, shared with whoever reports metrics.
#[derive(Debug)]
pub struct BootTimes {
    start: Instant,
    marks: Mutex<Vec<Duration>>,
}

impl BootTimes {
    /// Times measured from `start` (the process start as the VMM knows it).
    pub fn new(start: Instant) -> Self {
        Self {
            start,
            marks: Mutex::new(Vec::new()),
        }
    }

    /// Record a mark now.
    pub fn mark(&self) {
        let elapsed = self.start.elapsed();
        self.marks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(elapsed);
    }

    /// The first mark: time from process start to the guest's first write.
    pub fn first(&self) -> Option<Duration> {
        self.all().first().copied()
    }

    /// Every mark, in order.
    pub fn all(&self) -> Vec<Duration> {
        self.marks.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// The boot-timer device.
pub struct BootTimer {
    times: Arc<BootTimes>,
}

impl BootTimer {
    /// A boot timer recording into `times`.
    pub fn new(times: Arc<BootTimes>) -> Self {
        Self { times }
    }
}

impl PioDevice for BootTimer {
    fn read(&mut self, _offset: u16, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, _offset: u16, _data: &[u8]) {
        self.times.mark();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_write_is_kept() {
        let times = Arc::new(BootTimes::new(Instant::now()));
        let mut dev = BootTimer::new(times.clone());
        assert!(times.first().is_none());
        dev.write(0, &[1]);
        std::thread::sleep(Duration::from_millis(2));
        dev.write(0, &[1]);
        let all = times.all();
        assert_eq!(all.len(), 2);
        assert_eq!(times.first(), Some(all[0]));
        assert!(all[1] > all[0]);
    }
}
