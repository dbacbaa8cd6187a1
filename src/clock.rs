//! The wall clock, as the agent and file sync read it.
//!
//! hapair measures every duration that safety depends on with the monotonic
//! clock (`Instant`, `CLOCK_BOOTTIME` for the role file's deadline) and
//! judges a Lease's expiry by how long the *observer* saw it unchanged, so a
//! member whose wall clock jumps cannot make anyone fence or promote early.
//! The wall clock is read only for what is a date: the time an agent reports
//! (the operator's clock-skew check), a Lease's `renewTime` (compared, never
//! read as a time), when a generation of files was scanned (newest-wins
//! resync, refused while the clocks disagree), quarantine ages.
//!
//! Every such reading goes through [`now`]. With the `fault-injection`
//! feature (test builds and the e2e fault image, never the release image) it
//! adds the offset, in signed milliseconds, that the file `clock-offset-ms`
//! in the agent's run directory holds: the chaos suite's clock step on one
//! member. A real step of one member's wall clock cannot be made on a test
//! cluster whose nodes share one kernel: `CLOCK_REALTIME` has no namespace
//! (a time namespace offsets only the monotonic and boot-time clocks), and
//! stepping the host's would step the API server, etcd and both nodes too.

use chrono::{DateTime, Utc};

/// The wall clock now.
pub fn now() -> DateTime<Utc> {
    Utc::now() + fault::offset()
}

/// Where a fault-injection build reads its clock offset from (the agent's
/// run directory); no-op otherwise.
pub fn offset_file_in(dir: &std::path::Path) {
    fault::set_dir(dir);
}

#[cfg(feature = "fault-injection")]
mod fault {
    use std::path::{Path, PathBuf};
    use std::sync::OnceLock;

    /// The file's name in the run directory.
    pub const FILE: &str = "clock-offset-ms";

    static DIR: OnceLock<PathBuf> = OnceLock::new();

    pub fn set_dir(dir: &Path) {
        let _ = DIR.set(dir.to_path_buf());
    }

    /// Read at every call: a test steps the clock by rewriting the file.
    pub fn offset() -> chrono::Duration {
        DIR.get().map_or(chrono::Duration::zero(), |d| offset_in(d))
    }

    pub fn offset_in(dir: &Path) -> chrono::Duration {
        std::fs::read_to_string(dir.join(FILE))
            .ok()
            .and_then(|s| s.trim().parse::<i64>().ok())
            .map_or(chrono::Duration::zero(), chrono::Duration::milliseconds)
    }
}

#[cfg(not(feature = "fault-injection"))]
mod fault {
    #[inline(always)]
    pub fn set_dir(_dir: &std::path::Path) {}

    #[inline(always)]
    pub fn offset() -> chrono::Duration {
        chrono::Duration::zero()
    }
}

// The process-wide directory is never set here: other tests of this binary
// read the clock at the same time.
#[cfg(all(test, feature = "fault-injection"))]
mod tests {
    use super::fault::{FILE, offset_in};

    #[test]
    fn the_offset_file_steps_the_clock_and_garbage_does_not() {
        let dir = std::env::temp_dir().join(format!("hapair-clock-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let step = |text: &str| {
            std::fs::write(dir.join(FILE), text).unwrap();
            offset_in(&dir).num_milliseconds()
        };
        assert_eq!(step("60000"), 60_000);
        assert_eq!(step("-60000\n"), -60_000);
        assert_eq!(step("a minute"), 0);
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(offset_in(&dir).num_milliseconds(), 0);
    }
}
