//! 4 KiB-aligned page buffers (O_DIRECT needs the alignment) and a pool that
//! recycles them so the I/O path does not allocate per request.

use super::PAGE_SIZE;
use std::ops::{Deref, DerefMut};
use std::sync::{Arc, Mutex};

#[repr(C, align(4096))]
struct AlignedPage([u8; PAGE_SIZE]);

fn new_page() -> Box<AlignedPage> {
    Box::new(AlignedPage([0; PAGE_SIZE]))
}

struct PoolShared {
    free: Mutex<Vec<Box<AlignedPage>>>,
    keep: usize,
}

/// A recycling pool of page buffers. Cloning shares the pool.
#[derive(Clone)]
pub struct PagePool {
    shared: Arc<PoolShared>,
}

impl PagePool {
    /// A pool that keeps at most `keep` free buffers for reuse.
    pub fn new(keep: usize) -> Self {
        Self {
            shared: Arc::new(PoolShared {
                free: Mutex::new(Vec::new()),
                keep,
            }),
        }
    }

    /// A buffer from the pool (or a new one). Its content is unspecified:
    /// whatever the previous user left.
    pub fn get(&self) -> PageBuf {
        let page = self.shared.free.lock().ok().and_then(|mut free| free.pop());
        PageBuf {
            page: Some(page.unwrap_or_else(new_page)),
            pool: Some(self.shared.clone()),
        }
    }

    /// A buffer from the pool, zero-filled.
    pub fn get_zeroed(&self) -> PageBuf {
        let mut buf = self.get();
        buf.fill(0);
        buf
    }

    /// Free buffers held for reuse.
    pub fn free_count(&self) -> usize {
        self.shared.free.lock().map(|free| free.len()).unwrap_or(0)
    }
}

/// One 4 KiB page, 4 KiB-aligned. Dereferences to `[u8]` of length
/// [`PAGE_SIZE`]. A buffer taken from a [`PagePool`] goes back to it on drop.
pub struct PageBuf {
    // Always `Some` except inside `drop`.
    page: Option<Box<AlignedPage>>,
    pool: Option<Arc<PoolShared>>,
}

impl PageBuf {
    /// A zero-filled buffer that belongs to no pool.
    pub fn new() -> Self {
        Self {
            page: Some(new_page()),
            pool: None,
        }
    }

    /// A buffer holding a copy of `data` (at most one page; the rest is zero).
    pub fn from_slice(data: &[u8]) -> Self {
        let mut buf = Self::new();
        let n = data.len().min(PAGE_SIZE);
        buf[..n].copy_from_slice(&data[..n]);
        buf
    }

    fn page(&self) -> &AlignedPage {
        self.page
            .as_deref()
            .expect("page buffer present until drop")
    }

    fn page_mut(&mut self) -> &mut AlignedPage {
        self.page
            .as_deref_mut()
            .expect("page buffer present until drop")
    }
}

impl Default for PageBuf {
    fn default() -> Self {
        Self::new()
    }
}

impl Deref for PageBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.page().0
    }
}

impl DerefMut for PageBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.page_mut().0
    }
}

impl std::fmt::Debug for PageBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PageBuf({:p})", self.as_ptr())
    }
}

impl Drop for PageBuf {
    fn drop(&mut self) {
        if let (Some(pool), Some(page)) = (self.pool.take(), self.page.take()) {
            if let Ok(mut free) = pool.free.lock() {
                if free.len() < pool.keep {
                    free.push(page);
                }
            }
        }
    }
}
