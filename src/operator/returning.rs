//! The automatic resync of a returning member: a standby whose files
//! diverged — a former active back with changes its successor never got —
//! is resynced from the active member by the `resync` rules (its own
//! versions quarantined by default).

use super::model::{ResyncLabel, resync_order, syncs_files};
use super::observe::Observed;
use crate::api::{HighAvailabilityPairSpec, Member};
use crate::proto::ResyncOrder;

/// The resync for the returning member, if one is due. Not when its files
/// changed while it was standby (split-brain evidence: that waits for the
/// split-brain policy), not while paused or while the Lease is moving
/// (`moving`). `after_split`: the last transition resolved a split brain by
/// keeping the other side, so this resync is that repair's (its repair Job
/// follows it).
pub fn returning_member(
    spec: &HighAvailabilityPairSpec,
    obs: &Observed,
    active: Option<Member>,
    moving: bool,
    after_split: bool,
) -> Option<(Member, ResyncOrder)> {
    if !syncs_files(spec) || spec.paused || moving {
        return None;
    }
    let target = active?.peer();
    let epoch = obs.lease.as_ref()?.epoch;
    let sync = obs.member(target).agent.last.as_ref()?.sync.as_ref()?;
    let label = if after_split { ResyncLabel::SplitBrainHandover { epoch } } else { ResyncLabel::Returning { epoch } }
        .to_string();
    // Once per label: a Job that failed for good is reported, not re-run
    // (a resync request runs a new one).
    let ordered =
        sync.resync_report(&label).is_some_and(|r| !r.dry_run) || obs.resync_jobs.iter().any(|j| j.label == label);
    if sync.diverged.is_empty() || !sync.changed_while_standby.is_empty() || ordered {
        return None;
    }
    Some((target, resync_order(spec, obs, label, false, false)))
}
