//! Decide: the pair's state machine as a pure function of the spec, the
//! current status and what was observed. Every decision is re-derived from
//! observed state, so an operator restart at any point converges without a
//! second failover.
//!
//! [`decide`] reads top to bottom as the precedence list; each rule lives in
//! its own module and returns what it changes:
//!
//! 0. `spec.standby: Removed`: the standby is stopped and absent to every
//!    rule below (the pair runs one member);
//! 1. no Lease: bootstrap, or (deleted) recreated past the highest epoch
//!    ever seen (`failover::without_lease`); a Lease edited by hand is
//!    written again the same way (`failover::edited_lease`);
//! 2. the heartbeat settings on the Lease follow the spec;
//! 3. a user's request, `spec.operation` (`operations`);
//! 4. otherwise automatic failback (`failback`);
//! 5. otherwise, while the holder is sound, split-brain repair by the
//!    policy (`split_brain`);
//! 6. when none of those moves the Lease and its holder failed: automatic
//!    failover behind its gates (`failover`);
//! 7. then the resyncs that follow (`outage`, `returning`), the split-brain
//!    repair Job, and the status (`status`, `resync_status`).

use std::time::Duration;

use super::failover::{self, Blocked};
use super::model::{
    ConditionType, Decision, LeaseAction, Pending, Reason, RoundInputs, Step, can_take_over, record_operation,
};
use super::observe::{LeaseObs, Observed};
use super::split_brain::{self, RepairJob};
use super::{failback, operations, outage, resync_status, returning, status};
use crate::api::{
    HighAvailabilityPairSpec, HighAvailabilityPairStatus, Member, StandbyPresence, Transition, TransitionType,
};

/// Re-checks while agents drain, pull or promote.
const SOON: Duration = Duration::from_millis(200);

pub fn decide(
    spec: &HighAvailabilityPairSpec,
    current: Option<&HighAvailabilityPairStatus>,
    obs: &Observed,
    round: &RoundInputs,
) -> Decision {
    let interval = Duration::from_secs(spec.heartbeat.interval_seconds as u64);
    let mut d = Decision::new(current.cloned().unwrap_or_default(), interval);
    // 0. One member by configuration: the removed member counts as absent
    //    to every rule below.
    let removed = removed_member(spec, current, obs);
    d.status.removed_member = removed;
    let masked;
    let obs = match removed {
        Some(m) => {
            masked = obs.without(m);
            &masked
        }
        None => obs,
    };
    let Some(lease) = &obs.lease else {
        // 1. No Lease: bootstrap, or the Lease back past the highest epoch.
        if !spec.paused {
            match failover::without_lease(spec, &d.status, obs) {
                Ok(create) => d.lease = Some(create),
                Err(wait) => d.recheck = d.recheck.min(wait.unwrap_or(d.recheck)),
            }
        }
        return conclude(spec, obs, d, None, round);
    };
    // 1b. A Lease edited by hand is written again past the highest epoch,
    //     for the member that served (drift repair, also while paused: it
    //     keeps what was, it moves nothing).
    if let Some(restore) = failover::edited_lease(spec, &d.status, obs, lease) {
        d.lease = Some(restore);
        return conclude(spec, obs, d, None, round);
    }
    // 2. The heartbeat settings the agents read follow the spec.
    if lease.interval_seconds != Some(spec.heartbeat.interval_seconds)
        || lease.missed_threshold != Some(spec.heartbeat.missed_threshold)
    {
        d.lease = Some(LeaseAction::UpdateTimings);
    }
    // The VIP stays with the holder until the Lease moves: nothing changes
    // without a takeover (manual mode "does nothing else").
    let holder = lease.holder.as_ref().map(|(m, _)| *m);
    d.vip = holder;
    let failure = failover::holder_failure(obs);
    // 3. A user's request.
    let op = operations::step(spec, &d.status, obs, round.now);
    if let Some(record) = op.record {
        record_operation(&mut d.status, record);
    }
    if op.release_isolated {
        d.status.isolated_member = None;
    }
    let mut step = op.step;
    // 4. Automatic failback.
    if step == Step::Idle {
        step = failback::step(spec, obs, holder, failure.is_some(), lease.epoch);
    }
    // 5. Split-brain repair by the policy, while the holder is sound.
    if step == Step::Idle && failure.is_none() && !spec.paused {
        let sb = split_brain::step(spec, obs, d.status.isolated_member, holder, lease.epoch, None);
        if sb.isolate {
            d.status.isolated_member = Some(Member::Secondary);
        }
        d.split_brain_hold = sb.hold;
        step = sb.step;
    }
    take_step(&mut d, obs, lease, holder, step, round);
    // 6. Automatic failover, when nothing above moves the Lease.
    let mut blocked = None;
    if let (None, Some(f)) = (&d.lease, &failure) {
        d.failure = Some(f.reason.to_string());
        let r = failover::failover(spec, obs, lease, f, &d.status, round.now);
        if let Some((to, transition)) = r.takeover {
            if transition.type_ == TransitionType::Failover {
                failover::record_automatic_failover(spec, &mut d.status, round.now);
            }
            commit(&mut d, obs, lease, to, transition);
        }
        d.recheck = d.recheck.min(r.recheck.unwrap_or(d.recheck));
        blocked = r.blocked;
    }
    if failure.is_none_or(|f| !f.confirmed) {
        // Wake up when an unrenewed Lease would expire.
        let left = lease.duration.saturating_sub(lease.unchanged_for);
        d.recheck = d.recheck.min(left.max(Duration::from_millis(50)));
    }
    conclude(spec, obs, d, blocked, round)
}

/// `spec.standby: Removed`: the member that was standby when it was set,
/// kept while it stays removed — never the Lease's holder. `None` while
/// nobody holds the Lease yet, and once `spec.standby` is `Enabled`.
fn removed_member(
    spec: &HighAvailabilityPairSpec,
    current: Option<&HighAvailabilityPairStatus>,
    obs: &Observed,
) -> Option<Member> {
    if spec.standby != StandbyPresence::Removed {
        return None;
    }
    let holder = obs.lease.as_ref().and_then(|l| l.holder.as_ref().map(|(m, _)| *m));
    current.and_then(|s| s.removed_member).filter(|r| Some(*r) != holder).or(holder.map(Member::peer))
}

/// Step 7: what follows from the round's Lease decision: who serves and who
/// stands by, the resyncs and repair Job due, and the status.
fn conclude(
    spec: &HighAvailabilityPairSpec,
    obs: &Observed,
    mut d: Decision,
    blocked: Option<Blocked>,
    round: &RoundInputs,
) -> Decision {
    let missed = spec.heartbeat.missed_threshold as u32;
    let active = match &d.lease {
        Some(LeaseAction::Takeover { to, .. }) => Some(*to),
        Some(LeaseAction::Create { holder, .. } | LeaseAction::Restore { holder, .. }) => Some(*holder),
        _ => d.vip,
    };
    d.vip = active;
    d.standby = active.map(Member::peer).filter(|s| can_take_over(obs.member(*s), missed));
    if d.start_resync.is_none() {
        let condition = d.status.conditions.iter().find(|c| c.type_ == ConditionType::StandbyOutage.as_str());
        if let Some(o) = outage::resync_after(spec, obs, active, condition) {
            d.start_resync = o.order;
            d.outage_resync = Some(Pending { reason: o.reason, message: o.message });
        }
    }
    if d.start_resync.is_none() {
        // After a split brain resolved by keeping the standby's side, the
        // former active's resync is that repair's resync.
        let after_split =
            d.status.last_transition.as_ref().is_some_and(|t| t.type_ == TransitionType::SplitBrainResolved);
        d.start_resync = returning::returning_member(spec, obs, active, d.lease.is_some(), after_split);
    }
    match split_brain::repair_job(spec, obs) {
        RepairJob::None => {}
        RepairJob::Start { label } => {
            let message = format!("starting the repair Job after {label}");
            d.repair_pending = Some(Pending { reason: Reason::RepairJobRunning, message });
            if !spec.paused && d.lease.is_none() {
                d.repair = Some(label);
            }
        }
        RepairJob::Running { job } => {
            let message = format!("waiting for the repair Job {job}");
            d.repair_pending = Some(Pending { reason: Reason::RepairJobRunning, message });
        }
        RepairJob::Failed { job, why } => {
            let msg = format!("the repair Job {job} failed ({why}); fix the cause and delete the Job to run it again");
            d.repair_pending = Some(Pending { reason: Reason::RepairJobFailed, message: msg });
        }
    }
    status::compute(spec, obs, &mut d, active, blocked, round);
    resync_status::resync(obs, &mut d);
    d
}

/// What a rule's step asks of this round.
fn take_step(
    d: &mut Decision,
    obs: &Observed,
    lease: &LeaseObs,
    holder: Option<Member>,
    step: Step,
    round: &RoundInputs,
) {
    match step {
        Step::Takeover { to, type_, force, lossy, id, reason } => {
            let message = if force {
                format!("forced {type_:?} to {to}: the standby's state was not checked, data may be missing")
            } else {
                format!("{type_:?} to {to}")
            };
            let transition = Transition {
                type_,
                from: holder.or(lease.released_by),
                to: Some(to),
                epoch: lease.epoch + 1,
                message: Some(message),
                reason,
                time: round.now,
                detection_millis: None,
                lease_to_selector_millis: None,
                data_loss_possible: force || lossy,
                operation_id: Some(id).filter(|i| !i.is_empty()),
            };
            commit(d, obs, lease, to, transition);
        }
        Step::Drain { member, epoch } => {
            d.drain = Some((member, epoch));
            d.recheck = d.recheck.min(SOON);
        }
        Step::SyncWait { member } => {
            d.sync_now = Some(member);
            d.recheck = d.recheck.min(SOON);
        }
        Step::Wait => d.recheck = d.recheck.min(SOON),
        Step::Resync { target, order } => d.start_resync = Some((target, order)),
        Step::Idle => {}
    }
}

/// Plans the compare-and-swap of the Lease to `to` at the transition's epoch,
/// and the VIP move that follows it.
fn commit(d: &mut Decision, obs: &Observed, lease: &LeaseObs, to: Member, transition: Transition) {
    let pod_uid = obs.member(to).pod.as_ref().map(|p| p.uid.clone()).unwrap_or_default();
    let epoch = transition.epoch;
    d.lease =
        Some(LeaseAction::Takeover { to, pod_uid, expected_rv: lease.resource_version.clone(), epoch, transition });
    d.vip = Some(to);
}

#[cfg(test)]
#[path = "decide_tests.rs"]
pub(super) mod tests;

#[cfg(test)]
#[path = "decide_sync_tests.rs"]
mod sync_tests;

#[cfg(test)]
#[path = "decide_gate_tests.rs"]
mod gate_tests;

#[cfg(test)]
#[path = "decide_handover_tests.rs"]
mod handover_tests;

#[cfg(test)]
#[path = "cold_start_tests.rs"]
mod cold_start_tests;

#[cfg(test)]
#[path = "one_member_tests.rs"]
mod one_member_tests;

#[cfg(test)]
#[path = "rotation_tests.rs"]
mod rotation_tests;
