//! Decide: the pair's state machine as a pure function of the spec and what
//! was observed. Every decision is re-derived from observed state, so an
//! operator restart at any point converges without a second failover.
//!
//! Failure of the Lease holder is either **confirmed** (its pod is gone or
//! being deleted, its application container terminated, its agent reports
//! the application failing, or it released the Lease) — fail over at once —
//! or **unconfirmed** (nothing heard) — fail over only after the Lease has
//! gone a full lease duration without any change on the operator's own clock,
//! by which time the old active has fenced itself.

use std::time::Duration;

use chrono::{DateTime, Utc};

use super::observe::{LeaseObs, MemberObs, Observed};
use super::operations::{self, Step};
use super::status::{self, Usable};
use crate::api::{
    FailbackMode, FailoverMode, HighAvailabilityPairSpec, HighAvailabilityPairStatus, Member, Transition,
    TransitionType,
};

/// A change to the leader Lease: the commit point of every role change.
#[derive(Debug, Clone, PartialEq)]
pub enum LeaseAction {
    /// First grant (bootstrap) at epoch 1.
    Create { holder: Member, pod_uid: String },
    /// Compare-and-swap to a new holder at `epoch` (current + 1).
    Takeover { to: Member, pod_uid: String, expected_rv: String, epoch: i64, transition: Transition },
    /// Heartbeat settings on the Lease differ from the spec.
    UpdateTimings,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PlanEvent {
    pub warning: bool,
    pub reason: String,
    pub note: String,
}

/// What the operator should make true.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub lease: Option<LeaseAction>,
    /// Ask this member's agent to drain at this epoch (planned handover).
    pub drain: Option<(Member, i64)>,
    /// Ask this member's agent to pull every synced directory now.
    pub sync_now: Option<Member>,
    /// Run the resync Job for this member (the target) and order.
    pub resync: Option<(Member, crate::proto::ResyncOrder)>,
    /// Why a split brain is not being repaired right now.
    pub split_brain_hold: Option<String>,
    /// Start the user's repair Job after the split-brain resync so labelled.
    pub repair: Option<String>,
    /// The repair Job is due, running or failed: not `Enabled` yet.
    pub repair_pending: Option<(&'static str, String)>,
    /// A standby back from an outage past its limit gets a full resync:
    /// the condition's reason and message meanwhile.
    pub outage_resync: Option<(&'static str, String)>,
    /// Member the VIP Service should select once the Lease action is done.
    pub vip: Option<Member>,
    pub standby: Option<Member>,
    pub status: HighAvailabilityPairStatus,
    pub events: Vec<PlanEvent>,
    /// The failure currently holding the pair up, if any (the worker times it).
    pub failure: Option<String>,
    /// Reconcile again within this time even if nothing happens.
    pub recheck: Duration,
}

/// Why the Lease holder counts as failed.
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    pub reason: &'static str,
    pub confirmed: bool,
}

/// Inputs besides spec and observation.
pub struct Clock {
    pub pair: String,
    pub now: DateTime<Utc>,
    pub generation: Option<i64>,
}

/// How long to wait for the second member at bootstrap before starting alone.
pub fn bootstrap_alone_after(spec: &HighAvailabilityPairSpec) -> Duration {
    let lease = (spec.heartbeat.interval_seconds * spec.heartbeat.missed_threshold) as u64;
    Duration::from_secs(2 * lease + 5)
}

pub fn holder_failure(obs: &Observed) -> Option<Failure> {
    let lease = obs.lease.as_ref()?;
    let Some((member, uid)) = &lease.holder else {
        let reason = if lease.released_reason.is_some() { "LeaseReleased" } else { "NoHolder" };
        return Some(Failure { reason, confirmed: true });
    };
    let m = obs.member(*member);
    let Some(pod) = &m.pod else { return Some(Failure { reason: "PodGone", confirmed: true }) };
    if &pod.uid != uid {
        return Some(Failure { reason: "PodReplaced", confirmed: true });
    }
    if pod.deleting {
        return Some(Failure { reason: "PodDeleted", confirmed: true });
    }
    if pod.app_down {
        return Some(Failure { reason: "ContainerTerminated", confirmed: true });
    }
    if m.agent.missed == 0 && m.agent.last.as_ref().is_some_and(|a| a.app_healthy == Some(false)) {
        return Some(Failure { reason: "AppHealthCheckFailed", confirmed: true });
    }
    if lease.unchanged_for >= lease.duration {
        return Some(Failure { reason: "LeaseExpired", confirmed: false });
    }
    None
}

/// Whether `m` can take the active role now: pod running, agent answering,
/// application not failing, not fenced.
pub fn can_take_over(m: &MemberObs, missed_threshold: u32) -> bool {
    status::usable(m, missed_threshold) == Usable::Yes
}

fn automatic_failovers_in_window(spec: &HighAvailabilityPairSpec, history: &[Transition], now: DateTime<Utc>) -> usize {
    let window = chrono::Duration::seconds(i64::from(spec.failover.flap_budget.window_seconds));
    history
        .iter()
        .filter(|t| t.type_ == TransitionType::Failover && t.operation_id.is_none() && now - t.time < window)
        .count()
}

pub fn decide(
    spec: &HighAvailabilityPairSpec,
    current: Option<&HighAvailabilityPairStatus>,
    obs: &Observed,
    clock: &Clock,
) -> Plan {
    let missed = spec.heartbeat.missed_threshold as u32;
    let interval = Duration::from_secs(spec.heartbeat.interval_seconds as u64);
    let mut plan = Plan {
        lease: None,
        drain: None,
        sync_now: None,
        resync: None,
        split_brain_hold: None,
        repair: None,
        repair_pending: None,
        outage_resync: None,
        vip: None,
        standby: None,
        status: current.cloned().unwrap_or_default(),
        events: Vec::new(),
        failure: None,
        recheck: interval,
    };
    let holder = obs.lease.as_ref().and_then(|l| l.holder.as_ref().map(|(m, _)| *m));
    let failure = holder_failure(obs);
    let mut blocked: Option<(&'static str, String)> = None;

    match &obs.lease {
        None if !spec.paused => bootstrap(spec, obs, &mut plan),
        None => {}
        Some(lease) => {
            if lease.interval_seconds != Some(spec.heartbeat.interval_seconds)
                || lease.missed_threshold != Some(spec.heartbeat.missed_threshold)
            {
                plan.lease = Some(LeaseAction::UpdateTimings);
            }
            // The VIP stays with the holder until the Lease moves: nothing changes
            // without a takeover (manual mode "does nothing else").
            plan.vip = holder;
            let step = match operations::step(spec, &mut plan.status, obs, clock.now) {
                Step::Idle => match automatic_failback(spec, obs, holder, failure.is_some(), lease.epoch) {
                    Step::Idle if failure.is_none() && !spec.paused => {
                        let (step, hold) = split_brain_step(spec, obs, &mut plan.status, holder, lease.epoch, None);
                        plan.split_brain_hold = hold;
                        step
                    }
                    s => s,
                },
                s => s,
            };
            match step {
                Step::Takeover { to, type_, force, id, reason } => {
                    let epoch = lease.epoch + 1;
                    let transition = Transition {
                        type_,
                        from: holder.or(lease.released_by),
                        to: Some(to),
                        epoch,
                        message: Some(if force {
                            format!(
                                "forced {type_:?} to {to}: the standby's state was not checked, data may be missing"
                            )
                        } else {
                            format!("{type_:?} to {to}")
                        }),
                        reason,
                        time: clock.now,
                        detection_millis: None,
                        lease_to_selector_millis: None,
                        data_loss_possible: force,
                        operation_id: Some(id).filter(|i| !i.is_empty()),
                    };
                    commit(&mut plan, obs, lease, to, transition);
                }
                Step::Drain { member, epoch } => {
                    plan.drain = Some((member, epoch));
                    plan.recheck = plan.recheck.min(Duration::from_millis(200));
                }
                Step::SyncWait { member } => {
                    plan.sync_now = Some(member);
                    plan.recheck = plan.recheck.min(Duration::from_millis(200));
                }
                Step::Wait => plan.recheck = plan.recheck.min(Duration::from_millis(200)),
                Step::Resync { target, order } => plan.resync = Some((target, order)),
                Step::Idle => {}
            }
            if plan.lease.is_some() {
                // An operation is moving the Lease; nothing automatic this round.
            } else if let Some(f) = &failure {
                plan.failure = Some(f.reason.to_string());
                let from = holder;
                // The peer takes over; if the holder's own pod was replaced and the
                // peer cannot, the new pod of the same member restarts the role.
                // The peer takes over (a failover, subject to the gates). Failing
                // that, the same member may take the role back once it serves
                // again: its pod was replaced, or it released the Lease and its
                // application recovered. That is a restart, not a failover.
                let from = from.or(lease.released_by);
                let peer = match from {
                    Some(h) => Some(h.peer()).filter(|p| can_take_over(obs.member(*p), missed)),
                    None => Member::BOTH.into_iter().find(|c| can_take_over(obs.member(*c), missed)),
                };
                let restartable = matches!(f.reason, "PodReplaced" | "PodGone" | "LeaseReleased");
                // Only on an answer given after the Lease last changed: an answer
                // from before the release would hand the role straight back to a
                // member whose application is still down.
                let fresh = |m: Member| {
                    let a = &obs.member(m).agent;
                    a.since_answer.is_some_and(|t| t < lease.unchanged_for)
                        && a.last.as_ref().is_some_and(|s| s.app_healthy != Some(false))
                };
                let same = from.filter(|h| restartable && can_take_over(obs.member(*h), missed) && fresh(*h));
                let waited = obs.failure_for.unwrap_or_default();
                let delay = Duration::from_secs(spec.failover.delay_seconds as u64);
                let gate = if peer.is_none() {
                    Some(("NoStandbyAvailable", format!("{}: no member can take over", f.reason)))
                } else if spec.failover.mode == FailoverMode::Manual {
                    Some((
                        "ManualFailover",
                        format!("{}: failover.mode is Manual; request a failover to proceed", f.reason),
                    ))
                } else if automatic_failovers_in_window(spec, &plan.status.history, clock.now)
                    >= spec.failover.flap_budget.max_automatic_failovers as usize
                {
                    Some((
                        "FlapBudgetExhausted",
                        format!(
                            "{}: {} automatic failovers within {}s already; request a failover to proceed",
                            f.reason,
                            spec.failover.flap_budget.max_automatic_failovers,
                            spec.failover.flap_budget.window_seconds
                        ),
                    ))
                } else if let Some((lag, max)) = from
                    .and_then(|h| standby_lag(obs, h))
                    .zip(spec.failover.max_sync_lag_seconds)
                    .filter(|(lag, max)| *lag > f64::from(*max) && operations::syncs_files(spec))
                {
                    Some((
                        "SyncLagTooHigh",
                        format!(
                            "{}: the standby's files were {lag:.0}s behind at the last answer, over \
                             failover.maxSyncLagSeconds ({max}s); request a forced failover to proceed",
                            f.reason
                        ),
                    ))
                } else {
                    None
                };
                let (to, restart) = match (&gate, peer, same) {
                    (None, Some(p), _) => (Some(p), false),
                    (_, _, Some(s)) => (Some(s), true),
                    _ => (None, false),
                };
                if spec.paused {
                    blocked = Some(("Paused", format!("{} but the pair is paused", f.reason)));
                } else if to.is_none() {
                    blocked = gate;
                } else if waited < delay {
                    plan.recheck = plan.recheck.min(delay - waited);
                } else if let Some(to) = to {
                    let epoch = lease.epoch + 1;
                    let transition = Transition {
                        type_: if restart { TransitionType::Bootstrap } else { TransitionType::Failover },
                        from,
                        to: Some(to),
                        epoch,
                        reason: f.reason.to_string(),
                        message: Some(if f.confirmed {
                            format!(
                                "confirmed failure of {}: {}",
                                from.map_or("no holder".into(), |m| m.to_string()),
                                f.reason
                            )
                        } else {
                            format!(
                                "lease unrenewed for {}s (full lease duration, operator clock)",
                                lease.unchanged_for.as_secs()
                            )
                        }),
                        time: clock.now,
                        detection_millis: Some(waited.as_millis() as i64),
                        lease_to_selector_millis: None,
                        // Files the old active had that the new one never pulled.
                        data_loss_possible: !restart
                            && operations::syncs_files(spec)
                            && from.and_then(|h| standby_lag(obs, h)).is_none_or(|lag| lag > 0.0),
                        operation_id: None,
                    };
                    commit(&mut plan, obs, lease, to, transition);
                }
            }
            if failure.as_ref().is_none_or(|f| !f.confirmed) {
                // Wake up when an unrenewed Lease would expire.
                let left = lease.duration.saturating_sub(lease.unchanged_for);
                plan.recheck = plan.recheck.min(left.max(Duration::from_millis(50)));
            }
        }
    }
    let active = match &plan.lease {
        Some(LeaseAction::Takeover { to, .. }) => Some(*to),
        Some(LeaseAction::Create { holder, .. }) => Some(*holder),
        _ => plan.vip,
    };
    plan.vip = active;
    plan.standby = active.map(Member::peer).filter(|s| can_take_over(obs.member(*s), missed));
    if plan.resync.is_none() {
        outage_resync(spec, obs, active, &mut plan);
    }
    if plan.resync.is_none() {
        // After a split brain resolved by keeping the standby's side, the
        // former active's resync is that repair's resync (its repair Job
        // follows it).
        let after_split =
            plan.status.last_transition.as_ref().is_some_and(|t| t.type_ == TransitionType::SplitBrainResolved);
        plan.resync = returning_member_resync(spec, obs, active, plan.lease.is_some(), after_split);
    }
    match super::split_brain::repair_job(spec, obs) {
        super::split_brain::RepairJob::None => {}
        super::split_brain::RepairJob::Start { label } => {
            plan.repair_pending = Some(("RepairJobRunning", format!("starting the repair Job after {label}")));
            if !spec.paused && plan.lease.is_none() {
                plan.repair = Some(label);
            }
        }
        super::split_brain::RepairJob::Running { job } => {
            plan.repair_pending = Some(("RepairJobRunning", format!("waiting for the repair Job {job}")));
        }
        super::split_brain::RepairJob::Failed { job, why } => {
            plan.repair_pending = Some((
                "RepairJobFailed",
                format!("the repair Job {job} failed ({why}); fix the cause and delete the Job to run it again"),
            ));
        }
    }
    status::compute(spec, obs, &mut plan, active, blocked, clock);
    super::resync_status::resync(obs, &mut plan);
    plan
}

/// Plans the compare-and-swap of the Lease to `to` at the transition's epoch,
/// and the VIP move that follows it.
fn commit(plan: &mut Plan, obs: &Observed, lease: &LeaseObs, to: Member, transition: Transition) {
    let pod_uid = obs.member(to).pod.as_ref().map(|p| p.uid.clone()).unwrap_or_default();
    let epoch = transition.epoch;
    plan.lease =
        Some(LeaseAction::Takeover { to, pod_uid, expected_rv: lease.resource_version.clone(), epoch, transition });
    plan.vip = Some(to);
}

/// A standby whose files diverged — a former active returning with
/// changes its successor never got — is resynced from the active member
/// by the `resync` rules (its own versions quarantined by default). Not
/// when its files changed while it was standby (split-brain evidence: that
/// waits for the split-brain policy), not while paused or while the Lease
/// is moving.
fn returning_member_resync(
    spec: &HighAvailabilityPairSpec,
    obs: &Observed,
    active: Option<Member>,
    moving: bool,
    after_split: bool,
) -> Option<(Member, crate::proto::ResyncOrder)> {
    if !operations::syncs_files(spec) || spec.paused || moving {
        return None;
    }
    let a = active?;
    let target = a.peer();
    let epoch = obs.lease.as_ref()?.epoch;
    let sync = obs.member(target).agent.last.as_ref()?.sync.as_ref()?;
    let label = if after_split { format!("splitbrain-{epoch}-handover") } else { format!("resync-{epoch}") };
    // Once per label: a Job that failed for good is reported, not re-run
    // (a resync request runs a new one).
    let ordered = sync.resync.as_ref().is_some_and(|r| r.label == label && !r.dry_run)
        || obs.resync_jobs.iter().any(|j| j.label == label);
    if sync.diverged.is_empty() || !sync.changed_while_standby.is_empty() || ordered {
        return None;
    }
    Some((target, operations::resync_order(spec, obs, label, false, false)))
}

/// One round of split-brain repair by the policy, or by `keep` (a resolve
/// request): the step to take and, when holding, why.
pub fn split_brain_step(
    spec: &HighAvailabilityPairSpec,
    obs: &Observed,
    status: &mut HighAvailabilityPairStatus,
    holder: Option<Member>,
    epoch: i64,
    keep: Option<Member>,
) -> (Step, Option<String>) {
    use super::split_brain::{Repair, evidence, repair};
    let missed = spec.heartbeat.missed_threshold as u32;
    let Some(h) = holder else { return (Step::Idle, None) };
    let Some((standby, since)) = evidence(obs, holder) else { return (Step::Idle, None) };
    if status.isolated_member == Some(standby) {
        return (Step::Idle, None);
    }
    match repair(spec, obs, h, standby, since, epoch, keep) {
        Repair::Resync { target, order } => (Step::Resync { target, order }, None),
        Repair::HandOver { to } if can_take_over(obs.member(to), missed) => {
            // IsolateSecondary with the secondary active: the primary takes
            // over, then the secondary is stopped (never while it holds the
            // Lease) until a resolve request.
            if keep.is_none() && spec.split_brain.policy == crate::api::SplitBrainPolicy::IsolateSecondary {
                status.isolated_member = Some(Member::Secondary);
            }
            let takeover = Step::Takeover {
                to,
                type_: TransitionType::SplitBrainResolved,
                force: false,
                id: String::new(),
                reason: "SplitBrainRepair".into(),
            };
            (operations::handover(obs, to, epoch, holder, false, takeover), None)
        }
        Repair::HandOver { to } => (Step::Idle, Some(format!("the side to keep, {to}, cannot serve now"))),
        Repair::Isolate => {
            status.isolated_member = Some(Member::Secondary);
            (Step::Idle, None)
        }
        Repair::Hold(why) => (Step::Idle, Some(why)),
    }
}

/// A standby that comes back after its outage went past the
/// `standbyOutage` limit gets a full resync (every directory, by the
/// `resync` rules, so what only it holds is quarantined rather than
/// deleted) instead of the usual incremental pull; the pair reports
/// `StandbyOutage` (`FullResync`) until that Job has succeeded.
fn outage_resync(spec: &HighAvailabilityPairSpec, obs: &Observed, active: Option<Member>, plan: &mut Plan) {
    use super::observe::JobPhase;
    let Some(a) = active else { return };
    let standby = a.peer();
    let Some(c) = plan.status.conditions.iter().find(|c| {
        c.type_ == "StandbyOutage" && matches!(c.reason.as_str(), "LimitExceeded" | "FullResync" | "FullResyncFailed")
    }) else {
        return;
    };
    let label = format!("outage-{}-{}", obs.lease.as_ref().map_or(0, |l| l.epoch), c.last_transition_time.timestamp());
    let back = {
        let x = &obs.member(standby).agent;
        x.missed == 0 && x.last.as_ref().is_some_and(|l| l.sync.is_some())
    };
    match obs.resync_jobs.iter().find(|j| j.label == label) {
        None if back && !spec.paused && operations::syncs_files(spec) => {
            plan.resync = Some((standby, operations::resync_order(spec, obs, label.clone(), false, true)));
            plan.outage_resync = Some(("FullResync", format!("{standby} is back: full resync {label} starting")));
        }
        None => {
            plan.outage_resync = Some(("LimitExceeded", format!("{standby} is still away past the outage limit")));
        }
        Some(j) if j.phase == JobPhase::Running => {
            plan.outage_resync = Some(("FullResync", format!("{standby} is back: full resync Job {} running", j.name)));
        }
        Some(j) if j.phase == JobPhase::Failed => {
            plan.outage_resync = Some((
                "FullResyncFailed",
                format!("the full resync Job {} failed; request a resync to try again", j.name),
            ));
        }
        Some(_) => {}
    }
}

/// How far behind the active member `holder` last said its standby's files
/// were, in seconds; `None` when it never said.
pub fn standby_lag(obs: &Observed, holder: Member) -> Option<f64> {
    obs.member(holder).agent.last.as_ref()?.sync.as_ref()?.peer_lag_seconds
}

/// `failback.mode: Automatic`: once the primary has served as a healthy,
/// reachable standby for `failback.delaySeconds` (hysteresis against a
/// flapping primary), hand the active role back to it.
fn automatic_failback(
    spec: &HighAvailabilityPairSpec,
    obs: &Observed,
    holder: Option<Member>,
    failing: bool,
    epoch: i64,
) -> Step {
    let delay = Duration::from_secs(spec.failback.delay_seconds as u64);
    let stable = obs.primary_usable_for.is_some_and(|d| d >= delay);
    if spec.failback.mode != FailbackMode::Automatic
        || spec.paused
        || failing
        || holder != Some(Member::Secondary)
        || !stable
    {
        return Step::Idle;
    }
    let takeover = Step::Takeover {
        to: Member::Primary,
        type_: TransitionType::Failback,
        force: false,
        id: String::new(),
        reason: "AutomaticFailback".into(),
    };
    operations::handover(obs, Member::Primary, epoch, holder, operations::syncs_files(spec), takeover)
}

fn bootstrap(spec: &HighAvailabilityPairSpec, obs: &Observed, plan: &mut Plan) {
    let missed = spec.heartbeat.missed_threshold as u32;
    let ready: Vec<Member> = Member::BOTH.into_iter().filter(|m| can_take_over(obs.member(*m), missed)).collect();
    let holder = match ready.as_slice() {
        [_, _] => Some(Member::Primary),
        [only] if obs.without_lease_for >= bootstrap_alone_after(spec) => Some(*only),
        [_] => {
            plan.recheck = plan.recheck.min(bootstrap_alone_after(spec).saturating_sub(obs.without_lease_for));
            None
        }
        _ => None,
    };
    if let Some(holder) = holder {
        let pod_uid = obs.member(holder).pod.as_ref().map(|p| p.uid.clone()).unwrap_or_default();
        plan.lease = Some(LeaseAction::Create { holder, pod_uid });
    }
}

#[cfg(test)]
#[path = "decide_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "decide_sync_tests.rs"]
mod sync_tests;
