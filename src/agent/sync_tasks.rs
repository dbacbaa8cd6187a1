//! The agent's file-sync tasks: scanning and pulling by role, and keeping
//! the quarantine within its limits.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tracing::warn;

use super::Agent;
use crate::api::Role;

/// Scans as active, pulls as standby; after serving, one last scan so the
/// changes made at the epoch that ended are counted as that epoch's.
pub(super) async fn sync_loop(agent: Arc<Agent>) {
    let Some(syncer) = agent.syncer.clone() else { return };
    let tick = Duration::from_secs(syncer.spec.realtime_interval_seconds.max(1) as u64);
    let mut was_serving: Option<i64> = None;
    let mut forced = true;
    loop {
        let (role, epoch, draining) = {
            let s = agent.lock();
            (s.role, s.epoch, s.draining_since.is_some())
        };
        if role == Role::Active || draining {
            if let Err(e) = syncer.refresh(epoch).await {
                warn!(error = %e, "cannot scan the synced directories");
            }
            was_serving = Some(epoch);
        } else {
            if let Some(old) = was_serving.take() {
                if let Err(e) = syncer.refresh(old).await {
                    warn!(error = %e, "cannot scan the synced directories");
                }
                syncer.close_active().await;
            }
            if let Some(peer) = agent.peer_target() {
                syncer.pull_round(&peer, forced).await;
            }
        }
        // A standby that has not reached the active yet retries every
        // second rather than every interval: the first copy matters most.
        let wait = if role != Role::Active && !draining && syncer.never_pulled().await {
            tick.min(Duration::from_secs(1))
        } else {
            tick
        };
        forced = tokio::select! {
            _ = tokio::time::sleep(wait) => false,
            _ = syncer.wake.notified() => true,
        };
    }
}

/// Keeps the quarantine within `spec.fileSync.quarantine` (see
/// [`crate::sync::quarantine`]), every half minute.
pub(super) async fn quarantine_loop(agent: Arc<Agent>) {
    use crate::sync::quarantine::{Limits, Scanner, prune};
    let Some(syncer) = agent.syncer.clone() else { return };
    let q = &syncer.spec.quarantine;
    let limits = Limits {
        retention: chrono::Duration::days(i64::from(q.retention_days.max(1))),
        max_bytes: q.max_bytes.as_ref().and_then(|m| crate::api::quantity_bytes(&m.0)),
    };
    if let (Some(m), None) = (&q.max_bytes, limits.max_bytes) {
        // The API accepts any positive quantity; a fraction of a byte
        // (`500m`) is none. Say so rather than drop the limit silently.
        warn!(max_bytes = %m.0, "spec.fileSync.quarantine.maxBytes is not a whole number of bytes: no size limit");
    }
    let scanner = Arc::new(Mutex::new(Scanner::default()));
    loop {
        let busy = syncer.status().resync.filter(|r| !r.done).map(|r| r.label);
        let (root, scanner) = (syncer.root.clone(), scanner.clone());
        let pass = move || {
            let mut scanner = scanner.lock().unwrap_or_else(|p| p.into_inner());
            prune(&root, limits, crate::clock::now(), busy.as_deref(), &mut scanner)
        };
        match tokio::task::spawn_blocking(pass).await {
            Ok(Ok(crate::sync::quarantine::Outcome { removed, usage, failed })) => {
                for p in &removed {
                    warn!(label = %p.label, files = p.files, bytes = p.bytes, why = %p.why, "quarantine removed");
                }
                for (label, e) in &failed {
                    warn!(%label, error = %e, "cannot remove a quarantine past its limits; trying again later");
                }
                syncer.record_quarantine(removed, usage);
            }
            Ok(Err(e)) => warn!(error = %e, "cannot prune the quarantine"),
            Err(e) => warn!(error = %e, "quarantine pruning stopped"),
        }
        tokio::time::sleep(Duration::from_secs(30)).await;
    }
}
