//! The standby's volume full during sync (`standby-volume-full`).
//!
//! The chaos pair's volumes are small file systems of their own (the
//! testbed's `hapair-small` class), so one can fill up for real. Space on
//! the standby's volume is taken by something the pair does not sync (a
//! file in the agent's state directory, as a log or a core dump would take
//! it) while the active's application writes on: every file the standby
//! pulls would meet `ENOSPC`, so the standby refuses to pull (or meets it,
//! when the space goes in the middle of a copy). What must hold: nothing
//! fails over, nothing acknowledged is lost, the pair says why its standby
//! is behind (`Synced=False`, reason `SyncFailing`, the refusal or the
//! error in the message) and that the standby's volume is full
//! (`VolumeSpaceLow`, `Above90Percent`, naming it); once the space is back
//! the standby catches up by itself.

use std::io::Write;
use std::time::{Duration, Instant};

use hapair::api::ConditionStatus;

use super::cases::{INTERVAL, Injected, LEASE, Target};

pub async fn fill_standby(t: &mut Target<'_>) -> Injected {
    let root = t.h.data_dir(t.pair, t.active.peer()).await;
    let filler = root.join(hapair::sync::path::STATE_DIR).join("chaos-filler");
    let path = filler.clone();
    let taken = tokio::task::spawn_blocking(move || fill(&path)).await.expect("the filler written");
    let mut out = Injected::default();
    let start = Instant::now();
    let mut said = None;
    let mut split = None;
    // Until the pair says why (or 20 s), then two leases more.
    let mut hold = Duration::from_secs(20);
    while start.elapsed() < hold {
        let s = t.h.pair(t.pair).await.status.unwrap_or_default();
        let failing = s
            .conditions
            .iter()
            .find(|c| c.type_ == "Synced" && c.status == ConditionStatus::False && c.reason == "SyncFailing")
            .filter(|c| {
                c.message.contains("No space left on device") || c.message.contains("would fill this member's volume")
            });
        let standby = t.active.peer().to_string();
        let low = s
            .conditions
            .iter()
            .find(|c| c.type_ == "VolumeSpaceLow" && c.status == ConditionStatus::True && c.reason == "Above90Percent")
            .filter(|c| c.message.contains(&format!("{standby}'s data volume")));
        if said.is_none()
            && let (Some(c), Some(l)) = (failing, low)
        {
            said = Some(format!("{}; {}", c.message, l.message));
            hold = start.elapsed() + LEASE * 2 + Duration::from_millis(t.rng.u64(0..2000));
        }
        // Copies that fail leave the standby's files as they were: nothing
        // there may look changed by the standby itself.
        if let Some(c) = s.conditions.iter().find(|c| c.type_ == "SplitBrain" && c.status == ConditionStatus::True) {
            split.get_or_insert_with(|| c.message.clone());
        }
        tokio::time::sleep(INTERVAL / 4).await;
    }
    std::fs::remove_file(&filler).expect("the filler removed");
    eprintln!(
        "chaos: the {}'s volume filled ({} MiB taken); the pair said: {}",
        t.active.peer(),
        taken >> 20,
        said.as_deref().unwrap_or("nothing")
    );
    out.crash = Some(("full-volume-reported", said.is_some()));
    if let Some(why) = split {
        out.breaches.push(("split-brain-from-a-full-volume", why));
    }
    out
}

/// Writes `path` until the file system is full; returns the bytes written.
fn fill(path: &std::path::Path) -> u64 {
    let mut f = std::fs::File::create(path).expect("the filler created");
    let chunk = vec![0u8; 1 << 20];
    let mut written = 0u64;
    loop {
        match f.write(&chunk) {
            Ok(0) => break,
            Ok(n) => written += n as u64,
            Err(e) if e.raw_os_error() == Some(28) => break,
            Err(e) => panic!("filling {}: {e}", path.display()),
        }
    }
    written
}
