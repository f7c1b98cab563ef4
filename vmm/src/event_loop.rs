//! Event-loop subscribers (event-manager): the stop EventFd, stdin for the serial
//! console, and SIGINT/SIGTERM through a signalfd.

use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex};

use devices::SerialConsole;
use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use vmm_sys_util::eventfd::EventFd;

use crate::stop::{StopReason, VmStop};

/// Wakes the loop when someone requests a stop; the loop then sees the flag.
pub struct StopWatcher {
    event: EventFd,
}

impl StopWatcher {
    /// Watch `event` (a clone of [`VmStop::event`]).
    pub fn new(event: EventFd) -> Self {
        Self { event }
    }
}

impl MutEventSubscriber for StopWatcher {
    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        // Drain the counter so a level-triggered epoll does not spin.
        let _ = self.event.read();
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.event, EventSet::IN)) {
            log::error!("cannot watch the stop event: {e:?}");
        }
    }
}

/// Feeds host stdin to the guest's UART. When stdin is a terminal it is switched to
/// character-at-a-time input without local echo (the guest echoes), and restored
/// when the subscriber is dropped. Signals stay enabled, so Ctrl-C still stops
/// tiervisor.
pub struct StdinInput {
    serial: Arc<Mutex<SerialConsole>>,
    saved_termios: Option<libc::termios>,
}

impl StdinInput {
    /// Input for `serial`.
    pub fn new(serial: Arc<Mutex<SerialConsole>>) -> Self {
        Self {
            serial,
            saved_termios: set_terminal_raw(),
        }
    }
}

/// Turn off canonical mode and echo on a terminal stdin; returns the old settings.
fn set_terminal_raw() -> Option<libc::termios> {
    // SAFETY: isatty only queries fd 0.
    if unsafe { libc::isatty(STDIN) } != 1 {
        return None;
    }
    // SAFETY: termios is plain data, filled by tcgetattr before use.
    let mut saved: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: fd 0 is a terminal and `saved` is a valid termios to fill.
    if unsafe { libc::tcgetattr(STDIN, &mut saved) } != 0 {
        return None;
    }
    let mut raw = saved;
    raw.c_lflag &= !(libc::ICANON | libc::ECHO);
    raw.c_cc[libc::VMIN] = 1;
    raw.c_cc[libc::VTIME] = 0;
    // SAFETY: `raw` is a valid termios derived from the terminal's own.
    if unsafe { libc::tcsetattr(STDIN, libc::TCSANOW, &raw) } != 0 {
        return None;
    }
    Some(saved)
}

impl Drop for StdinInput {
    fn drop(&mut self) {
        if let Some(saved) = self.saved_termios.take() {
            // SAFETY: restores the settings read from this terminal at start.
            unsafe { libc::tcsetattr(STDIN, libc::TCSANOW, &saved) };
        }
    }
}

const STDIN: RawFd = 0;

impl MutEventSubscriber for StdinInput {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let mut buf = [0u8; 64];
        // SAFETY: fd 0 stays open for the life of the process; ManuallyDrop keeps the
        // File from closing it.
        let mut stdin = std::mem::ManuallyDrop::new(unsafe { std::fs::File::from_raw_fd(STDIN) });
        match stdin.read(&mut buf) {
            Ok(0) | Err(_) => {
                // EOF or error: stop watching, or a level-triggered epoll would spin.
                let _ = ops.remove(events);
            }
            Ok(n) => {
                let mut serial = self.serial.lock().unwrap_or_else(|e| e.into_inner());
                let taken = serial.enqueue_input(&buf[..n]);
                if taken < n {
                    log::debug!("serial FIFO full: dropped {} input bytes", n - taken);
                }
            }
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        // Regular files and /dev/null cannot be polled; then there is no input.
        if let Err(e) = ops.add(Events::new_raw(STDIN, EventSet::IN)) {
            log::debug!("stdin not watched: {e:?}");
        }
    }
}

/// The set of SIGINT and SIGTERM.
fn stop_signal_set() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; sigemptyset initialises it.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: set is a valid sigset_t; the calls only write to it.
    unsafe {
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
    }
    set
}

/// Block SIGINT and SIGTERM in this thread; threads spawned later inherit the mask.
/// Call before starting any thread: a signal goes to any thread that does not block
/// it, and its default action ends the process without the VM's orderly stop (the
/// tiered-memory threads, started before the VM runs, once took SIGTERM this way and
/// the run's metrics were lost).
pub fn block_stop_signals() -> std::io::Result<()> {
    let set = stop_signal_set();
    // SAFETY: set is a valid sigset_t; the call only changes this thread's mask.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    // pthread_sigmask returns the error number; it does not set errno.
    if rc != 0 {
        return Err(std::io::Error::from_raw_os_error(rc));
    }
    Ok(())
}

/// SIGINT/SIGTERM as events: blocked in every thread, read from a signalfd.
pub struct SignalWatcher {
    fd: OwnedFd,
    stop: Arc<VmStop>,
}

/// Block SIGINT and SIGTERM in this thread (threads spawned later inherit the mask)
/// and open a non-blocking signalfd for them.
pub fn stop_signal_fd() -> std::io::Result<OwnedFd> {
    block_stop_signals()?;
    let set = stop_signal_set();
    // SAFETY: set is a valid sigset_t; signalfd returns a new descriptor or -1.
    let fd = unsafe { libc::signalfd(-1, &set, libc::SFD_NONBLOCK | libc::SFD_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd is a new descriptor owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

impl SignalWatcher {
    /// Block SIGINT and SIGTERM in this thread (threads spawned later inherit the
    /// mask) and open a signalfd for them.
    pub fn new(stop: Arc<VmStop>) -> std::io::Result<Self> {
        Ok(Self {
            fd: stop_signal_fd()?,
            stop,
        })
    }
}

impl MutEventSubscriber for SignalWatcher {
    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        // SAFETY: signalfd_siginfo is plain data.
        let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
        let size = std::mem::size_of::<libc::signalfd_siginfo>();
        // SAFETY: reading at most `size` bytes into `info`, which is that large.
        let n = unsafe {
            libc::read(
                self.fd.as_raw_fd(),
                (&mut info as *mut libc::signalfd_siginfo).cast(),
                size,
            )
        };
        if n as usize == size {
            self.stop.request(StopReason::Signal(info.ssi_signo as i32));
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.fd, EventSet::IN)) {
            log::error!("cannot watch signals: {e:?}");
        }
    }
}
