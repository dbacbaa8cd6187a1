//! The role the member's application sees: `/var/run/hapair/role`
//! (`active`, `standby` or `fenced`), `/var/run/hapair/epoch` and
//! `/var/run/hapair/deadline`, each replaced atomically (write to a
//! temporary file, fsync, rename) so the application never reads half a
//! word.
//!
//! The deadline makes the role valid on its own, without a live agent: the
//! seconds on `CLOCK_BOOTTIME` (what `/proc/uptime` shows first, the same
//! for every container of the pod) after which `active` no longer holds
//! unless the agent has written a later deadline — the agent's own fence
//! deadline, refreshed at every renewal. A frozen, killed or partitioned
//! agent cannot refresh it, so the application stops acting as active in
//! time even though nobody rewrites `role`. `0` while not active.

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

    /// Publishes `role` at `epoch`, active until `deadline` (seconds on
    /// `CLOCK_BOOTTIME`). Becoming active, the deadline and the epoch are
    /// written before the role, so an application that sees `active` sees
    /// them too; leaving, the role goes first, so it stops at once.
    pub fn publish(&self, role: Role, epoch: i64, deadline: Option<f64>) -> std::io::Result<()> {
        let deadline = deadline.filter(|_| role == Role::Active);
        if deadline.is_some() {
            self.refresh(deadline)?;
            write_atomic(&self.dir.join("epoch"), format!("{epoch}\n").as_bytes())?;
            write_atomic(&self.dir.join("role"), format!("{}\n", role_word(role)).as_bytes())
        } else {
            write_atomic(&self.dir.join("role"), format!("{}\n", role_word(role)).as_bytes())?;
            write_atomic(&self.dir.join("epoch"), format!("{epoch}\n").as_bytes())?;
            self.refresh(None)
        }
    }

    /// Moves the deadline (after a renewal); `None` writes `0`.
    pub fn refresh(&self, deadline: Option<f64>) -> std::io::Result<()> {
        write_atomic(&self.dir.join("deadline"), format!("{:.3}\n", deadline.unwrap_or(0.0)).as_bytes())
    }
}

/// Seconds on `CLOCK_BOOTTIME`: the clock every container of the pod reads
/// in `/proc/uptime`.
pub fn boottime() -> f64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Boottime);
    t.tv_sec as f64 + t.tv_nsec as f64 / 1e9
}

impl RoleFiles {}

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
        let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap();
        files.publish(Role::Active, 4, Some(1234.5)).unwrap();
        assert_eq!(
            (read("role"), read("epoch"), read("deadline")),
            ("active\n".into(), "4\n".into(), "1234.500\n".into())
        );
        files.refresh(Some(1236.25)).unwrap();
        assert_eq!(read("deadline"), "1236.250\n");
        files.publish(Role::Fenced, 4, Some(2000.0)).unwrap();
        assert_eq!(
            (read("role"), read("deadline")),
            ("fenced\n".into(), "0.000\n".into()),
            "no deadline unless active"
        );
        assert!(!dir.join("role.tmp").exists());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn the_deadline_clock_is_the_one_proc_uptime_shows() {
        let uptime: f64 =
            std::fs::read_to_string("/proc/uptime").unwrap().split_whitespace().next().unwrap().parse().unwrap();
        assert!((boottime() - uptime).abs() < 1.0, "boottime {} against /proc/uptime {uptime}", boottime());
    }
}
