//! Space on the member's data volume: measured every few seconds off the
//! agent's other tasks (a `statvfs` on a stalled network volume must not
//! hold up a heartbeat), reported in the agent's status, and checked by a
//! standby before it pulls files into the volume.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tracing::warn;

use super::Agent;
use crate::proto::VolumeUsage;

/// How often the volume is measured.
const EVERY: Duration = Duration::from_secs(5);

/// The file system holding `path`, as an unprivileged writer sees it.
pub fn measure(path: &Path) -> io::Result<VolumeUsage> {
    let v = rustix::fs::statvfs(path)?;
    let block = v.f_frsize.max(1);
    Ok(VolumeUsage {
        capacity_bytes: v.f_blocks.saturating_mul(block),
        used_bytes: v.f_blocks.saturating_sub(v.f_bfree).saturating_mul(block),
        available_bytes: v.f_bavail.saturating_mul(block),
    })
}

/// Free space a standby keeps when it pulls: 1 % of the volume, at least
/// 8 MiB (its own sync state, quarantine manifests and the application's
/// start-up must still fit) and at most 1 GiB (a large volume, or one that
/// shares a large disk, need not leave tens of gigabytes unused).
pub fn reserve(v: &VolumeUsage) -> u64 {
    (v.capacity_bytes / 100).clamp(8 << 20, 1 << 30)
}

pub(crate) async fn volume_loop(agent: Arc<Agent>, dir: PathBuf) {
    let mut failing = false;
    loop {
        let d = dir.clone();
        match tokio::task::spawn_blocking(move || measure(&d)).await {
            Ok(Ok(v)) => {
                failing = false;
                agent.lock().volume = Some(v);
            }
            Ok(Err(e)) => {
                if !std::mem::replace(&mut failing, true) {
                    warn!(error = %e, dir = %dir.display(), "cannot measure the data volume");
                }
                agent.lock().volume = None;
            }
            Err(e) => warn!(error = %e, "measuring the data volume stopped"),
        }
        tokio::time::sleep(EVERY).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_volume_of_a_directory_is_measured_and_a_missing_one_is_an_error() {
        let v = measure(&std::env::temp_dir()).unwrap();
        assert!(v.capacity_bytes > 0 && v.used_bytes <= v.capacity_bytes && v.available_bytes <= v.capacity_bytes);
        assert!(v.used_percent().is_some(), "{v:?}");
        assert!(measure(Path::new("/nonexistent/hapair")).is_err());
        let small = VolumeUsage { capacity_bytes: 400 << 20, used_bytes: 0, available_bytes: 400 << 20 };
        assert_eq!(reserve(&small), 8 << 20);
        let mid = VolumeUsage { capacity_bytes: 50 << 30, used_bytes: 0, available_bytes: 50 << 30 };
        assert_eq!(reserve(&mid), (50 << 30) / 100);
        let large = VolumeUsage { capacity_bytes: 1 << 40, used_bytes: 0, available_bytes: 1 << 40 };
        assert_eq!(reserve(&large), 1 << 30);
    }
}
