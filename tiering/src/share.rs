//! Page kind "shared" from content hashes across VMs.
//!
//! Each tiered VM hashes the content of its pages at a bounded rate (the handler
//! scans a few resident pages per window, as KSM does, and hashes every page it
//! writes back, whose content it has in a buffer anyway) and publishes the set of
//! its hashes to a share directory, one file per VM (`<pid>.hashes`), replaced
//! atomically by rename. Every [`PEER_REFRESH`] it re-reads the other VMs' files; a
//! page whose hash is in another live VM's set is kind `Shared` (a page KSM could
//! merge, or a host could keep once for both). All-zero pages are skipped: they are
//! shared by every VM and say nothing. Files of VMs whose process is gone (the pid
//! in the name no longer exists) are ignored; a VM removes its own file when it stops.
//!
//! A page's hash is the one taken when it was last hashed: a page the guest rewrote
//! since keeps its old hash until the scan or a write-back comes to it again.
//!
//! File format (little endian): `TVSHARE1`, u32 pid, u32 0, u64 count, then `count`
//! sorted distinct u64 hashes.

use std::hash::Hasher;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rustc_hash::{FxHashMap, FxHashSet, FxHasher};

/// How often the own hash set is written and the peers' re-read.
pub const PEER_REFRESH: Duration = Duration::from_secs(1);
const MAGIC: &[u8; 8] = b"TVSHARE1";
const HEADER: usize = 24;

/// Why the share directory cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ShareError {
    #[error("--share-dir {path}: cannot create the directory: {source}")]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("--share-dir {path}: cannot write this VM's hash file: {source}")]
    Publish {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// A 64-bit hash of a page's content; `None` for an all-zero page.
pub fn hash_page(data: &[u8]) -> Option<u64> {
    if data.iter().all(|&b| b == 0) {
        return None;
    }
    let mut h = FxHasher::default();
    h.write(data);
    // 0 marks "no hash" in the per-page table.
    Some(h.finish().max(1))
}

/// This VM's page hashes and the hashes of the other live VMs.
pub struct ShareRegistry {
    dir: PathBuf,
    pid: u32,
    /// Per guest page index: its content hash when last hashed, 0 for none.
    page_hash: Vec<u64>,
    /// Distinct local hashes with how many pages have each.
    local: FxHashMap<u64, u32>,
    peers: FxHashSet<u64>,
    /// Live peer VMs whose files were read at the last refresh.
    live_peers: usize,
    shared_pages: u64,
    last_refresh: Option<Instant>,
}

impl ShareRegistry {
    /// A registry for a VM of `pages` pages publishing into `dir` (created if needed).
    pub fn new(dir: &Path, pages: usize) -> Result<Self, ShareError> {
        std::fs::create_dir_all(dir).map_err(|source| ShareError::CreateDir {
            path: dir.to_path_buf(),
            source,
        })?;
        Ok(Self {
            dir: dir.to_path_buf(),
            pid: std::process::id(),
            page_hash: vec![0; pages],
            local: FxHashMap::default(),
            peers: FxHashSet::default(),
            live_peers: 0,
            shared_pages: 0,
            last_refresh: None,
        })
    }

    /// Record the content of page `index`.
    pub fn record(&mut self, index: usize, data: &[u8]) {
        let new = hash_page(data).unwrap_or(0);
        let old = std::mem::replace(&mut self.page_hash[index], new);
        if old == new {
            return;
        }
        if old != 0 {
            if let Some(n) = self.local.get_mut(&old) {
                *n -= 1;
                if *n == 0 {
                    self.local.remove(&old);
                }
            }
            if self.peers.contains(&old) {
                self.shared_pages -= 1;
            }
        }
        if new != 0 {
            *self.local.entry(new).or_insert(0) += 1;
            if self.peers.contains(&new) {
                self.shared_pages += 1;
            }
        }
    }

    /// Whether page `index`'s content (as last hashed) is in another live VM.
    pub fn is_shared(&self, index: usize) -> bool {
        let h = self.page_hash[index];
        h != 0 && self.peers.contains(&h)
    }

    /// Pages of this VM whose content is in another live VM.
    pub fn shared_pages(&self) -> u64 {
        self.shared_pages
    }

    /// Other live VMs seen at the last refresh.
    pub fn live_peers(&self) -> usize {
        self.live_peers
    }

    /// Distinct non-zero contents hashed so far.
    pub fn local_hashes(&self) -> usize {
        self.local.len()
    }

    /// Publish and re-read the peers if [`PEER_REFRESH`] has passed.
    pub fn maybe_refresh(&mut self) -> Result<(), ShareError> {
        if self
            .last_refresh
            .is_some_and(|t| t.elapsed() < PEER_REFRESH)
        {
            return Ok(());
        }
        self.refresh()
    }

    /// Write this VM's hash set, then read every other live VM's.
    pub fn refresh(&mut self) -> Result<(), ShareError> {
        self.last_refresh = Some(Instant::now());
        self.publish()?;
        self.read_peers();
        Ok(())
    }

    fn own_file(&self) -> PathBuf {
        self.dir.join(format!("{}.hashes", self.pid))
    }

    fn publish(&self) -> Result<(), ShareError> {
        let mut hashes: Vec<u64> = self.local.keys().copied().collect();
        hashes.sort_unstable();
        let mut bytes = Vec::with_capacity(HEADER + hashes.len() * 8);
        bytes.extend_from_slice(MAGIC);
        bytes.extend_from_slice(&self.pid.to_le_bytes());
        bytes.extend_from_slice(&0u32.to_le_bytes());
        bytes.extend_from_slice(&(hashes.len() as u64).to_le_bytes());
        for h in hashes {
            bytes.extend_from_slice(&h.to_le_bytes());
        }
        let tmp = self.dir.join(format!(".{}.hashes.tmp", self.pid));
        let err = |source| ShareError::Publish {
            path: self.dir.clone(),
            source,
        };
        let mut f = std::fs::File::create(&tmp).map_err(err)?;
        f.write_all(&bytes).map_err(err)?;
        // Readers see the old file or the new one, never a part-written one.
        std::fs::rename(&tmp, self.own_file()).map_err(err)
    }

    /// Re-read the hash files of the other live VMs; unreadable or malformed files
    /// are skipped (a peer may be replacing its file right now).
    fn read_peers(&mut self) {
        let mut peers = FxHashSet::default();
        let mut live = 0;
        if let Ok(entries) = std::fs::read_dir(&self.dir) {
            for entry in entries.flatten() {
                let name = entry.file_name();
                let Some(pid) = name
                    .to_str()
                    .and_then(|n| n.strip_suffix(".hashes"))
                    .and_then(|p| p.parse::<u32>().ok())
                else {
                    continue;
                };
                if pid == self.pid || !process_alive(pid) {
                    continue;
                }
                if let Ok(bytes) = std::fs::read(entry.path()) {
                    if let Some(hashes) = parse(&bytes, pid) {
                        live += 1;
                        peers.extend(hashes);
                    }
                }
            }
        }
        self.peers = peers;
        self.live_peers = live;
        self.shared_pages = self
            .page_hash
            .iter()
            .filter(|&&h| h != 0 && self.peers.contains(&h))
            .count() as u64;
    }
}

impl Drop for ShareRegistry {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(self.own_file());
    }
}

/// The hashes of a well-formed file written by `pid`.
fn parse(bytes: &[u8], pid: u32) -> Option<impl Iterator<Item = u64> + '_> {
    if bytes.len() < HEADER || &bytes[..8] != MAGIC {
        return None;
    }
    let file_pid = u32::from_le_bytes(bytes[8..12].try_into().ok()?);
    let count = u64::from_le_bytes(bytes[16..24].try_into().ok()?) as usize;
    if file_pid != pid || bytes.len() != HEADER + count.checked_mul(8)? {
        return None;
    }
    Some(
        bytes[HEADER..]
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().expect("8-byte chunk"))),
    )
}

/// Whether a process with this pid exists (EPERM: it does, owned by someone else).
fn process_alive(pid: u32) -> bool {
    let Ok(pid) = i32::try_from(pid) else {
        return false;
    };
    // SAFETY: signal 0 only checks that the process exists; nothing is delivered.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(fill: u8) -> Vec<u8> {
        vec![fill; 4096]
    }

    fn dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("tier-share-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    /// Writes a hash file as another VM with `pid` would.
    fn write_peer(dir: &Path, pid: u32, hashes: &[u64]) {
        let mut b = MAGIC.to_vec();
        b.extend_from_slice(&pid.to_le_bytes());
        b.extend_from_slice(&0u32.to_le_bytes());
        b.extend_from_slice(&(hashes.len() as u64).to_le_bytes());
        for h in hashes {
            b.extend_from_slice(&h.to_le_bytes());
        }
        std::fs::write(dir.join(format!("{pid}.hashes")), b).unwrap();
    }

    #[test]
    fn zero_pages_have_no_hash_and_equal_pages_equal_hashes() {
        assert_eq!(hash_page(&page(0)), None);
        assert_eq!(hash_page(&page(7)), hash_page(&page(7)));
        assert_ne!(hash_page(&page(7)), hash_page(&page(8)));
        let mut p = page(0);
        p[4095] = 1;
        assert!(hash_page(&p).is_some());
    }

    #[test]
    fn a_page_is_shared_when_a_live_peer_has_its_content() {
        let d = dir("live");
        let mut me = ShareRegistry::new(&d, 4).unwrap();
        me.record(0, &page(1));
        me.record(1, &page(2));
        me.record(2, &page(0));
        // A live peer: this test's parent process (pid 1 is always alive too, but
        // may be another user's; both count).
        let parent = std::os::unix::process::parent_id();
        write_peer(&d, parent, &[hash_page(&page(2)).unwrap(), 12345]);
        me.refresh().unwrap();
        assert_eq!(me.live_peers(), 1);
        assert!(!me.is_shared(0));
        assert!(me.is_shared(1));
        assert!(!me.is_shared(2), "zero pages are never shared");
        assert_eq!(me.shared_pages(), 1);
        // Rewriting the page with other content ends the sharing.
        me.record(1, &page(3));
        assert_eq!(me.shared_pages(), 0);
        me.record(3, &page(2));
        assert_eq!(me.shared_pages(), 1);
        // Our own file is there, well formed, and the peer would see our hashes.
        let own = std::fs::read(d.join(format!("{}.hashes", std::process::id()))).unwrap();
        let ours: Vec<u64> = parse(&own, std::process::id()).unwrap().collect();
        assert_eq!(ours.len(), 2);
        drop(me);
        assert!(!d.join(format!("{}.hashes", std::process::id())).exists());
        std::fs::remove_dir_all(&d).ok();
    }

    #[test]
    fn files_of_dead_vms_and_malformed_files_are_ignored() {
        let d = dir("dead");
        let mut me = ShareRegistry::new(&d, 2).unwrap();
        me.record(0, &page(5));
        let h = hash_page(&page(5)).unwrap();
        // A pid that cannot exist (above the kernel's pid_max limit of 2^22).
        write_peer(&d, 4_999_999, &[h]);
        // A live pid, but a truncated file.
        let parent = std::os::unix::process::parent_id();
        write_peer(&d, parent, &[h]);
        let path = d.join(format!("{parent}.hashes"));
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 3]).unwrap();
        me.refresh().unwrap();
        assert_eq!(me.live_peers(), 0);
        assert_eq!(me.shared_pages(), 0);
        assert!(!me.is_shared(0));
        std::fs::remove_dir_all(&d).ok();
    }
}
