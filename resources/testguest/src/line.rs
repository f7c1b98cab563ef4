//! A fixed-size text buffer for the serial lines (no allocator in the guest).

use core::fmt;

/// Up to 256 bytes of text; what does not fit is dropped (and marked with `...`).
pub struct Line {
    bytes: [u8; 256],
    len: usize,
    truncated: bool,
}

impl Line {
    /// An empty line.
    pub const fn new() -> Line {
        Line {
            bytes: [0; 256],
            len: 0,
            truncated: false,
        }
    }

    /// The text so far.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }

    /// Whether text was dropped.
    pub fn truncated(&self) -> bool {
        self.truncated
    }
}

impl Default for Line {
    fn default() -> Self {
        Line::new()
    }
}

impl fmt::Write for Line {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        for &byte in text.as_bytes() {
            if self.len == self.bytes.len() {
                self.truncated = true;
                self.bytes[self.len - 3..].copy_from_slice(b"...");
                return Ok(());
            }
            self.bytes[self.len] = byte;
            self.len += 1;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::fmt::Write;

    #[test]
    fn formats_and_truncates() {
        let mut line = Line::new();
        write!(line, "testguest: ops={} ns={:#x}", 5, 255).unwrap();
        assert_eq!(line.as_bytes(), b"testguest: ops=5 ns=0xff");
        assert!(!line.truncated());
        let mut long = Line::new();
        for _ in 0..100 {
            write!(long, "abcd").unwrap();
        }
        assert_eq!(long.as_bytes().len(), 256);
        assert!(long.as_bytes().ends_with(b"..."));
        assert!(long.truncated());
    }
}
