//! Paths a peer may name, and opening them without leaving the data volume.
//!
//! Every path that crosses the wire is relative to a synced directory and
//! checked here before it touches the file system: no empty, `.` or `..`
//! segments, no absolute paths, no NUL, bounded length, never the agent's
//! own state directory. Opening then goes through `openat2` with
//! `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`, so even a symlink swapped in
//! after the check cannot lead outside: the kernel refuses it. A file with
//! more than one hard link is refused too: it may be the same inode as a
//! file outside the synced directory.

use std::fs::File;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rustix::fs::{Mode, OFlags, ResolveFlags};

/// The agent's own directory at the root of the data volume (sync state,
/// temporary files, quarantine). Never synced, never served, never written
/// by a peer.
pub const STATE_DIR: &str = ".hapair";
/// Longest relative path accepted.
pub const MAX_PATH: usize = 4096;
/// Deepest directory nesting walked.
pub const MAX_DEPTH: usize = 64;

/// Why a path or a file was refused; also the `reason` label of the
/// refusal counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum Refusal {
    #[error("empty path")]
    Empty,
    #[error("path too long")]
    TooLong,
    #[error("absolute path")]
    Absolute,
    #[error("path with an empty, '.' or '..' segment")]
    Traversal,
    #[error("path with a NUL byte")]
    Nul,
    #[error("path inside the agent's state directory")]
    Reserved,
    #[error("not one of the synced directories")]
    UnknownDir,
    #[error("symbolic link")]
    Symlink,
    #[error("device, FIFO or socket")]
    Special,
    #[error("file with more than one hard link")]
    Hardlink,
    #[error("file name is not UTF-8")]
    Name,
    #[error("directory nesting too deep")]
    Depth,
}

impl Refusal {
    pub fn label(self) -> &'static str {
        match self {
            Refusal::Empty => "empty",
            Refusal::TooLong => "too_long",
            Refusal::Absolute => "absolute",
            Refusal::Traversal => "traversal",
            Refusal::Nul => "nul",
            Refusal::Reserved => "reserved",
            Refusal::UnknownDir => "unknown_dir",
            Refusal::Symlink => "symlink",
            Refusal::Special => "special",
            Refusal::Hardlink => "hardlink",
            Refusal::Name => "name",
            Refusal::Depth => "depth",
        }
    }
}

/// Checks a path relative to a synced directory (or a synced directory
/// relative to the volume, where `.` alone means the whole volume).
pub fn check(rel: &str) -> Result<(), Refusal> {
    if rel.is_empty() {
        return Err(Refusal::Empty);
    }
    if rel.len() > MAX_PATH {
        return Err(Refusal::TooLong);
    }
    if rel.contains('\0') {
        return Err(Refusal::Nul);
    }
    if rel.starts_with('/') {
        return Err(Refusal::Absolute);
    }
    if rel.split('/').any(|s| s.is_empty() || s == "." || s == "..") {
        return Err(Refusal::Traversal);
    }
    Ok(())
}

/// The path of `rel` inside synced directory `dir`, relative to the
/// volume; refuses anything under the agent's state directory.
pub fn volume_path(dir: &str, rel: &str) -> Result<String, Refusal> {
    check(rel)?;
    if dir != "." {
        check(dir)?;
    }
    let joined = if dir == "." { rel.to_string() } else { format!("{dir}/{rel}") };
    if joined.split('/').next() == Some(STATE_DIR) {
        return Err(Refusal::Reserved);
    }
    Ok(joined)
}

/// Opens a regular file at `vpath` (relative to `root`) for reading,
/// refusing symlinks anywhere on the way, special files and hard links.
pub fn open_beneath(root: &Path, vpath: &str) -> io::Result<File> {
    let dir = rustix::fs::open(root, OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())?;
    let fd = rustix::fs::openat2(
        &dir,
        vpath,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
    )
    .map_err(|e| match e {
        rustix::io::Errno::LOOP | rustix::io::Errno::XDEV => refused(Refusal::Symlink),
        e => e.into(),
    })?;
    let file = File::from(fd);
    let meta = file.metadata()?;
    if !meta.file_type().is_file() {
        return Err(refused(Refusal::Special));
    }
    if meta.nlink() > 1 {
        return Err(refused(Refusal::Hardlink));
    }
    Ok(file)
}

/// An I/O error carrying a refusal, so callers can count it.
pub fn refused(r: Refusal) -> io::Error {
    io::Error::new(io::ErrorKind::PermissionDenied, r)
}

/// The refusal inside an error made by [`refused`], if any.
pub fn refusal_of(e: &io::Error) -> Option<Refusal> {
    e.get_ref().and_then(|inner| inner.downcast_ref::<Refusal>()).copied()
}

/// Makes sure every directory on the way to `vpath` exists and is a real
/// directory (not a symlink), creating what is missing; returns the
/// absolute path of the file's parent.
pub fn ensure_parent(root: &Path, vpath: &str) -> io::Result<PathBuf> {
    let mut dir = root.to_path_buf();
    let mut segments: Vec<&str> = vpath.split('/').collect();
    segments.pop();
    for seg in segments {
        dir.push(seg);
        match std::fs::symlink_metadata(&dir) {
            Ok(m) if m.file_type().is_dir() => {}
            Ok(m) if m.file_type().is_symlink() => return Err(refused(Refusal::Symlink)),
            Ok(_) => {
                // A file where the source has a directory: the caller
                // quarantines or deletes it first (it is in its plan).
                return Err(io::Error::new(io::ErrorKind::AlreadyExists, format!("{} is not a directory", seg)));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                std::fs::create_dir(&dir)?;
                std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))?;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(dir)
}

/// Where `vpath` would be, if every directory on the way is real (no
/// symlink); `None` when one is not.
pub fn real_path(root: &Path, vpath: &str) -> io::Result<PathBuf> {
    let mut p = root.to_path_buf();
    let segments: Vec<&str> = vpath.split('/').collect();
    for (i, seg) in segments.iter().enumerate() {
        p.push(seg);
        match std::fs::symlink_metadata(&p) {
            Ok(m) if m.file_type().is_symlink() => return Err(refused(Refusal::Symlink)),
            Ok(m) if i + 1 < segments.len() && !m.file_type().is_dir() => {
                return Err(io::Error::new(io::ErrorKind::NotFound, "parent is not a directory"));
            }
            Ok(_) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(p)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn only_clean_relative_paths_pass() {
        for ok in ["a", "a/b.txt", "uploads/2026/x y", ".profile", "a/.b/..c", "...", "dir\\x"] {
            assert_eq!(check(ok), Ok(()), "{ok}");
        }
        let bad = [
            ("", Refusal::Empty),
            ("/etc/passwd", Refusal::Absolute),
            ("../x", Refusal::Traversal),
            ("a/../../x", Refusal::Traversal),
            ("a//b", Refusal::Traversal),
            ("a/./b", Refusal::Traversal),
            ("a/", Refusal::Traversal),
            (".", Refusal::Traversal),
            ("a\0b", Refusal::Nul),
        ];
        for (p, why) in bad {
            assert_eq!(check(p), Err(why), "{p:?}");
        }
        assert_eq!(check(&"a/".repeat(3000)), Err(Refusal::TooLong));
    }

    #[test]
    fn the_state_directory_is_never_reachable() {
        assert_eq!(volume_path(".", ".hapair/sync.json"), Err(Refusal::Reserved));
        assert_eq!(volume_path(".", ".hapair"), Err(Refusal::Reserved));
        assert_eq!(volume_path(".hapair", "x"), Err(Refusal::Reserved));
        assert_eq!(volume_path("uploads", ".hapair/x"), Ok("uploads/.hapair/x".into()));
        assert_eq!(volume_path(".", "a/b"), Ok("a/b".into()));
        assert_eq!(volume_path("up", "../x"), Err(Refusal::Traversal));
    }

    #[test]
    fn opening_refuses_symlinks_hard_links_and_special_files() {
        let tmp = tempdir();
        let root = tmp.join("vol");
        std::fs::create_dir_all(root.join("d")).unwrap();
        std::fs::write(root.join("d/ok"), b"x").unwrap();
        std::fs::write(tmp.join("secret"), b"outside").unwrap();
        std::os::unix::fs::symlink(tmp.join("secret"), root.join("d/link")).unwrap();
        std::os::unix::fs::symlink(tmp.as_path(), root.join("escape")).unwrap();
        std::fs::hard_link(tmp.join("secret"), root.join("d/hard")).unwrap();
        assert!(open_beneath(&root, "d/ok").is_ok());
        let why = |p: &str| refusal_of(&open_beneath(&root, p).unwrap_err());
        assert_eq!(why("d/link"), Some(Refusal::Symlink));
        assert_eq!(why("escape/secret"), Some(Refusal::Symlink));
        assert_eq!(why("d/hard"), Some(Refusal::Hardlink));
        assert_eq!(why("d"), Some(Refusal::Special));
        assert!(open_beneath(&root, "../secret").is_err());
        assert_eq!(refusal_of(&real_path(&root, "escape/secret").unwrap_err()), Some(Refusal::Symlink));
        assert_eq!(refusal_of(&ensure_parent(&root, "escape/new/file").unwrap_err()), Some(Refusal::Symlink));
        assert_eq!(ensure_parent(&root, "n/m/file").unwrap(), root.join("n/m"));
        std::fs::remove_dir_all(&tmp).unwrap();
    }

    pub(crate) fn tempdir() -> PathBuf {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "hapair-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        p
    }
}
