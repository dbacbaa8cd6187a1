//! Manifests: what a synced directory holds (relative path → size, mtime,
//! mode, content hash), built by walking the tree without following links.
//!
//! Hashing is the expensive part, so a [`Scanner`] remembers each file's
//! hash with the size, mtime and inode it was computed for; a quiet tree
//! costs one `lstat` per file.

use std::collections::{BTreeMap, HashMap};
use std::io::{self, Read};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::path::{MAX_DEPTH, Refusal, STATE_DIR};

/// One file in a manifest.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub size: u64,
    /// Modification time, nanoseconds since the Unix epoch (UTC).
    pub mtime: i64,
    /// Permission bits.
    pub mode: u32,
    /// SHA-256 of the content, hex.
    pub hash: String,
}

impl Entry {
    /// Same content (what sync compares; mtime and mode follow the content).
    pub fn same_content(&self, other: &Entry) -> bool {
        self.size == other.size && self.hash == other.hash
    }
}

/// Relative path (with `/`) → entry, sorted.
pub type Files = BTreeMap<String, Entry>;

/// The digest of a whole tree: changes when any path, size or content does.
pub fn digest(files: &Files) -> String {
    let mut h = Sha256::new();
    for (p, e) in files {
        h.update(p.as_bytes());
        h.update([0]);
        h.update(e.size.to_le_bytes());
        h.update(e.hash.as_bytes());
        h.update([b'\n']);
    }
    hex(&h.finalize())
}

pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// SHA-256 of a reader, streaming in 64 KiB blocks.
pub fn hash_reader(mut r: impl Read) -> io::Result<(String, u64)> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        total += n as u64;
    }
    Ok((hex(&h.finalize()), total))
}

/// What a scan skipped, by reason.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Skipped(pub BTreeMap<&'static str, u64>);

impl Skipped {
    fn add(&mut self, r: Refusal) {
        *self.0.entry(r.label()).or_default() += 1;
    }
    pub fn total(&self) -> u64 {
        self.0.values().sum()
    }
}

#[derive(Clone)]
struct Cached {
    size: u64,
    mtime: i64,
    ino: u64,
    hash: String,
}

/// Walks synced directories, remembering hashes between scans.
#[derive(Default)]
pub struct Scanner {
    cache: HashMap<String, Cached>,
    /// Files hashed (not served from the cache) by the last scan.
    pub hashed: u64,
}

impl Scanner {
    /// The manifest of `dir` (relative to the volume `root`; `.` is the
    /// whole volume, minus the agent's state directory). A missing
    /// directory is an empty one.
    pub fn scan(&mut self, root: &Path, dir: &str) -> io::Result<(Files, Skipped)> {
        let base = if dir == "." { root.to_path_buf() } else { root.join(dir) };
        let mut files = Files::new();
        let mut skipped = Skipped::default();
        let mut seen = HashMap::new();
        self.hashed = 0;
        match std::fs::symlink_metadata(&base) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((files, skipped)),
            Err(e) => return Err(e),
            Ok(m) if m.file_type().is_symlink() => {
                skipped.add(Refusal::Symlink);
                return Ok((files, skipped));
            }
            Ok(_) => {}
        }
        let mut stack = vec![(base, String::new(), 0usize)];
        while let Some((abs, rel, depth)) = stack.pop() {
            for item in std::fs::read_dir(&abs)? {
                let item = item?;
                let Some(name) = item.file_name().to_str().map(str::to_string) else {
                    skipped.add(Refusal::Name);
                    continue;
                };
                if dir == "." && rel.is_empty() && name == STATE_DIR {
                    continue;
                }
                let child = if rel.is_empty() { name } else { format!("{rel}/{name}") };
                let meta = match item.metadata() {
                    Ok(m) => m,
                    // Gone between readdir and lstat: it is simply not there.
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(e),
                };
                let ft = meta.file_type();
                if ft.is_symlink() {
                    skipped.add(Refusal::Symlink);
                } else if ft.is_dir() {
                    if depth + 1 >= MAX_DEPTH {
                        skipped.add(Refusal::Depth);
                    } else {
                        stack.push((item.path(), child, depth + 1));
                    }
                } else if !ft.is_file() {
                    skipped.add(Refusal::Special);
                } else if meta.nlink() > 1 {
                    skipped.add(Refusal::Hardlink);
                } else {
                    let mtime = meta.mtime() * 1_000_000_000 + meta.mtime_nsec();
                    let (size, ino) = (meta.size(), meta.ino());
                    let hash = match self.cache.get(&child) {
                        Some(c) if c.size == size && c.mtime == mtime && c.ino == ino => c.hash.clone(),
                        _ => match std::fs::File::open(item.path()).and_then(hash_reader) {
                            Ok((h, _)) => {
                                self.hashed += 1;
                                h
                            }
                            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                            Err(e) => return Err(e),
                        },
                    };
                    seen.insert(child.clone(), Cached { size, mtime, ino, hash: hash.clone() });
                    files.insert(child, Entry { size, mtime, mode: meta.permissions().mode() & 0o777, hash });
                }
            }
        }
        self.cache = seen;
        Ok((files, skipped))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sync::path::tests::tempdir;

    #[test]
    fn a_scan_lists_files_skips_links_and_hashes_only_what_changed() {
        let root = tempdir();
        std::fs::create_dir_all(root.join("up/a")).unwrap();
        std::fs::create_dir_all(root.join(".hapair/tmp")).unwrap();
        std::fs::write(root.join("up/a/one"), b"1").unwrap();
        std::fs::write(root.join("up/two"), b"22").unwrap();
        std::fs::write(root.join(".hapair/sync.json"), b"{}").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", root.join("up/link")).unwrap();
        let mut s = Scanner::default();
        let (files, skipped) = s.scan(&root, "up").unwrap();
        assert_eq!(files.keys().collect::<Vec<_>>(), ["a/one", "two"]);
        assert_eq!(files["two"].size, 2);
        assert_eq!(skipped.0.get("symlink"), Some(&1));
        assert_eq!(s.hashed, 2);
        let d1 = digest(&files);
        let (again, _) = s.scan(&root, "up").unwrap();
        assert_eq!((s.hashed, digest(&again)), (0, d1.clone()), "a quiet tree is not hashed again");
        std::fs::write(root.join("up/two"), b"23").unwrap();
        let (changed, _) = s.scan(&root, "up").unwrap();
        assert_ne!(digest(&changed), d1);
        // The whole volume: everything but the state directory.
        let (all, _) = Scanner::default().scan(&root, ".").unwrap();
        assert_eq!(all.keys().collect::<Vec<_>>(), ["up/a/one", "up/two"]);
        // A directory that does not exist yet is empty.
        assert!(Scanner::default().scan(&root, "none").unwrap().0.is_empty());
        std::fs::remove_dir_all(&root).unwrap();
    }
}
