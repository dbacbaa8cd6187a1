//! The role the member's application sees: `/var/run/hapair/role`
//! (`active`, `standby` or `fenced`) and `/var/run/hapair/epoch`, each
//! replaced atomically (write to a temporary file, fsync, rename) so the
//! application never reads half a word.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::api::Role;

pub struct RoleFiles {
    dir: PathBuf,
}

pub fn role_word(role: Role) -> &'static str {
    match role {
        Role::Active => "active",
        Role::Standby => "standby",
        Role::Fenced => "fenced",
        Role::Unknown => "unknown",
    }
}

impl RoleFiles {
    pub fn new(dir: impl Into<PathBuf>) -> std::io::Result<Self> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir)?;
        Ok(RoleFiles { dir })
    }

    /// Publishes `role` at `epoch`. The epoch is written first, so an
    /// application that sees `active` also sees the epoch it is active at.
    pub fn publish(&self, role: Role, epoch: i64) -> std::io::Result<()> {
        write_atomic(&self.dir.join("epoch"), format!("{epoch}\n").as_bytes())?;
        write_atomic(&self.dir.join("role"), format!("{}\n", role_word(role)).as_bytes())
    }
}

fn write_atomic(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_and_epoch_are_published_as_single_words() {
        let dir = std::env::temp_dir().join(format!("hapair-role-{}", std::process::id()));
        let files = RoleFiles::new(&dir).unwrap();
        files.publish(Role::Active, 4).unwrap();
        assert_eq!(std::fs::read_to_string(dir.join("role")).unwrap(), "active\n");
        assert_eq!(std::fs::read_to_string(dir.join("epoch")).unwrap(), "4\n");
        files.publish(Role::Fenced, 4).unwrap();
        assert_eq!(std::fs::read_to_string(dir.join("role")).unwrap(), "fenced\n");
        assert!(!dir.join("role.tmp").exists());
        std::fs::remove_dir_all(dir).unwrap();
    }
}
