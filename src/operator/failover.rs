//! Automatic failover: whether the Lease holder has failed, whether a
//! failover may happen now (its gates, in order), and who gets the Lease
//! when nobody has held it yet (bootstrap).
//!
//! Failure of the Lease holder is either **confirmed** (its pod is gone or
//! being deleted, its application container terminated, its agent reports
//! the application failing, or it released the Lease) — fail over at once —
//! or **unconfirmed** (nothing heard) — fail over only after the Lease has
//! gone a full lease duration without any change on the operator's own clock,
//! by which time the old active has fenced itself.

use std::time::Duration;

use chrono::{DateTime, Utc};

use super::cold_start;
use super::model::{LeaseAction, can_take_over, standby_lag, syncs_files, words};
use super::observe::{LeaseObs, Observed};
use crate::api::{
    FailoverMode, HighAvailabilityPairSpec, HighAvailabilityPairStatus, Member, Transition, TransitionType,
};

words! {
    /// Why the Lease holder counts as failed (the transition's reason).
    pub enum FailureReason {
        /// The holder released the Lease (its application failed).
        LeaseReleased,
        /// The Lease names nobody and nobody released it.
        NoHolder,
        PodGone,
        PodReplaced,
        PodDeleted,
        ContainerTerminated,
        AppHealthCheckFailed,
        /// Unconfirmed: nothing heard for a full lease duration.
        LeaseExpired,
    }
}

impl FailureReason {
    /// Failures after which the same member may take the role back once it
    /// serves again (a restart, not a failover).
    fn restartable(self) -> bool {
        matches!(self, FailureReason::PodReplaced | FailureReason::PodGone | FailureReason::LeaseReleased)
    }
}

/// Why the Lease holder counts as failed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Failure {
    pub reason: FailureReason,
    pub confirmed: bool,
}

words! {
    /// What holds an automatic failover back, checked in this order (the
    /// `FailoverRequired` condition's reason).
    pub enum Gate {
        NoStandbyAvailable,
        ManualFailover,
        FlapBudgetExhausted,
        SyncLagTooHigh,
        Paused,
        /// Both members were down and the one that held the role last (the
        /// newest files) has not returned yet: a bounded wait.
        WaitingForLastActive,
    }
}

/// A failover that cannot happen now, and why in words.
#[derive(Debug, Clone, PartialEq)]
pub struct Blocked {
    pub gate: Gate,
    pub message: String,
}

/// How long to wait for the second member at bootstrap before starting alone.
pub fn bootstrap_alone_after(spec: &HighAvailabilityPairSpec) -> Duration {
    cold_start::wait_for_other(spec)
}

pub fn holder_failure(obs: &Observed) -> Option<Failure> {
    use FailureReason::*;
    let confirmed = |reason| Some(Failure { reason, confirmed: true });
    let lease = obs.lease.as_ref()?;
    let Some((member, uid)) = &lease.holder else {
        return confirmed(if lease.released_reason.is_some() { LeaseReleased } else { NoHolder });
    };
    let m = obs.member(*member);
    let Some(pod) = &m.pod else { return confirmed(PodGone) };
    if &pod.uid != uid {
        return confirmed(PodReplaced);
    }
    if pod.deleting {
        return confirmed(PodDeleted);
    }
    if pod.app_down {
        return confirmed(ContainerTerminated);
    }
    if m.agent.missed == 0 && m.agent.last.as_ref().is_some_and(|a| a.app_healthy == Some(false)) {
        return confirmed(AppHealthCheckFailed);
    }
    if lease.unchanged_for >= lease.duration && !vouched_for(&m.agent, uid, lease) {
        return Some(Failure { reason: LeaseExpired, confirmed: false });
    }
    None
}

/// The holder's agent answered the last poll (polls go out every
/// interval, so within two) as active at the Lease's epoch: it is inside its
/// deadline (renewed, or on its peer's promise while the API server does
/// not hear it), so a Lease that looks unrenewed here is no failure of the
/// holder. Failing over would only make the standby wait out the promise
/// the active holds. Safety does not rest on this: a failover that happens
/// anyway is safe by the promise rules (`agent::failsafe`).
fn vouched_for(agent: &super::observe::AgentObs, uid: &str, lease: &LeaseObs) -> bool {
    let interval = lease.duration / lease.missed_threshold.unwrap_or(3).max(1) as u32;
    agent.missed == 0
        && agent.since_answer.is_some_and(|t| t <= 2 * interval)
        && agent
            .last
            .as_ref()
            .is_some_and(|a| a.role == crate::api::Role::Active && a.epoch == lease.epoch && a.pod_uid == uid)
}

/// Automatic failovers within the flap budget's window: those recorded for
/// the budget, and any in the history a status from before that record
/// still shows.
fn automatic_failovers_in_window(
    spec: &HighAvailabilityPairSpec,
    status: &HighAvailabilityPairStatus,
    now: DateTime<Utc>,
) -> usize {
    let window = chrono::Duration::seconds(i64::from(spec.failover.flap_budget.window_seconds));
    let from_history = status
        .history
        .iter()
        .filter(|t| t.type_ == TransitionType::Failover && t.operation_id.is_none())
        .map(|t| t.time);
    let mut times: Vec<DateTime<Utc>> = status.automatic_failovers.iter().copied().chain(from_history).collect();
    times.sort();
    times.dedup();
    times.into_iter().filter(|t| now - *t < window).count()
}

/// Records an automatic failover at `at` for the flap budget, keeping only
/// those still inside the window (at most the budget's maximum).
pub fn record_automatic_failover(
    spec: &HighAvailabilityPairSpec,
    status: &mut HighAvailabilityPairStatus,
    at: DateTime<Utc>,
) {
    let budget = &spec.failover.flap_budget;
    let window = chrono::Duration::seconds(i64::from(budget.window_seconds));
    status.automatic_failovers.insert(0, at);
    status.automatic_failovers.retain(|t| at - *t < window);
    status.automatic_failovers.truncate(budget.max_automatic_failovers.clamp(1, 100) as usize);
}

/// What the automatic failover rule says this round.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct FailoverRound {
    /// Move the Lease to this member with this transition.
    pub takeover: Option<(Member, Transition)>,
    /// Why no failover happens although one is due.
    pub blocked: Option<Blocked>,
    /// Look again within this time (`failover.delaySeconds` running).
    pub recheck: Option<Duration>,
}

/// The failover for `f`, the failure of the Lease's holder, if its gates
/// let it happen now.
pub fn failover(
    spec: &HighAvailabilityPairSpec,
    obs: &Observed,
    lease: &LeaseObs,
    f: &Failure,
    status: &HighAvailabilityPairStatus,
    now: DateTime<Utc>,
) -> FailoverRound {
    let missed = spec.heartbeat.missed_threshold as u32;
    let holder = lease.holder.as_ref().map(|(m, _)| *m);
    // The peer takes over (a failover, subject to the gates). Failing that,
    // the same member may take the role back once it serves again: its pod
    // was replaced, or it released the Lease and its application recovered.
    // That is a restart, not a failover.
    let from = holder.or(lease.released_by);
    let peer = match from {
        Some(h) => Some(h.peer()).filter(|p| can_take_over(obs.member(*p), missed)),
        None => Member::BOTH.into_iter().find(|c| can_take_over(obs.member(*c), missed)),
    };
    // Only on an answer given after the Lease last changed: an answer from
    // before the release would hand the role straight back to a member whose
    // application is still down.
    let fresh = |m: Member| {
        let a = &obs.member(m).agent;
        a.since_answer.is_some_and(|t| t < lease.unchanged_for)
            && a.last.as_ref().is_some_and(|s| s.app_healthy != Some(false))
    };
    // Both members were down (`cold_start`): the holder held the role last
    // and has the newest files. It takes the role back when it returns (a
    // restart, whatever its failure was), and the peer waits for it a
    // bounded time.
    let waiting = cold_start::was_waiting(status, Gate::WaitingForLastActive.as_str());
    let cold = from.zip(peer).filter(|(h, p)| cold_start::both_were_down(obs, lease, *h, *p, waiting));
    let same = from
        .filter(|h| (f.reason.restartable() || cold.is_some()) && can_take_over(obs.member(*h), missed) && fresh(*h));
    let waited = obs.failure_for.unwrap_or_default();
    let delay = Duration::from_secs(spec.failover.delay_seconds as u64);
    let mut round = FailoverRound::default();
    let wait_cold = cold.and_then(|(h, p)| Some((h, p, cold_start::still_waiting(spec, obs, p)?)));
    let gate = match wait_cold {
        Some((h, p, left)) => {
            round.recheck = Some(left);
            Some(Blocked {
                gate: Gate::WaitingForLastActive,
                message: format!(
                    "{}: both members were down; waiting up to {}s more for {h}, which held the role last, \
                     before {p} serves with the files it has",
                    f.reason,
                    left.as_secs().max(1)
                ),
            })
        }
        None => gate(spec, obs, f, from, peer.is_some(), status, now),
    };
    let (to, restart) = match (&gate, peer, same) {
        (_, _, Some(s)) if cold.is_some() => (Some(s), true),
        (None, Some(p), _) => (Some(p), false),
        (_, _, Some(s)) => (Some(s), true),
        _ => (None, false),
    };
    let Some(to) = to.filter(|_| !spec.paused) else {
        round.blocked = if spec.paused {
            Some(Blocked { gate: Gate::Paused, message: format!("{} but the pair is paused", f.reason) })
        } else {
            gate.map(|g| match (g.gate, cold) {
                (Gate::ManualFailover, Some((h, _))) => Blocked {
                    message: format!(
                        "{}; both members were down and {h}, which held the role last, is not back",
                        g.message
                    ),
                    ..g
                },
                _ => g,
            })
        };
        return round;
    };
    if waited < delay {
        round.recheck = Some(delay - waited);
        return round;
    }
    let transition = Transition {
        type_: if restart { TransitionType::Bootstrap } else { TransitionType::Failover },
        from,
        to: Some(to),
        epoch: lease.epoch + 1,
        reason: f.reason.to_string(),
        message: Some(if let Some((h, _)) = cold.filter(|_| restart) {
            format!("both members were down: {h}, which held the role last, serves again")
        } else if let Some((h, _)) = cold {
            format!(
                "both members were down and {h}, which held the role last, did not return within {}s: {to} serves \
                 with the files it has",
                cold_start::wait_for_other(spec).as_secs()
            )
        } else if f.confirmed {
            format!("confirmed failure of {}: {}", from.map_or("no holder".into(), |m| m.to_string()), f.reason)
        } else {
            format!("lease unrenewed for {}s (full lease duration, operator clock)", lease.unchanged_for.as_secs())
        }),
        time: now,
        detection_millis: Some(waited.as_millis() as i64),
        lease_to_selector_millis: None,
        // Files the old active had that the new one never pulled.
        data_loss_possible: !restart
            && syncs_files(spec)
            && (cold.is_some() || !from.is_some_and(|h| caught_up_after_failure(obs, h))),
        operation_id: None,
    };
    round.takeover = Some((to, transition));
    round
}

/// Whether the standby is known to hold everything the failed holder
/// wrote: the holder's agent said so (lag 0) in an answer that arrived
/// after the failure was first seen. From then on the holder's files cannot
/// change (its application is down, or it is past its fence deadline: a
/// Lease counts as expired only after the holder has fenced), so nothing it
/// acknowledged can be missing. An answer from before the failure proves
/// nothing — the application may have acknowledged writes after it, which
/// the standby never pulled (found by the chaos suite: a partitioned active
/// kept writing for two seconds after its last report of lag 0).
fn caught_up_after_failure(obs: &Observed, holder: Member) -> bool {
    let agent = &obs.member(holder).agent;
    let after = matches!((agent.since_answer, obs.failure_for), (Some(answer), Some(failed)) if answer < failed);
    agent.missed == 0 && after && standby_lag(obs, holder) == Some(0.0)
}

/// The first gate that holds an automatic failover back, if any.
fn gate(
    spec: &HighAvailabilityPairSpec,
    obs: &Observed,
    f: &Failure,
    from: Option<Member>,
    peer_can_serve: bool,
    status: &HighAvailabilityPairStatus,
    now: DateTime<Utc>,
) -> Option<Blocked> {
    let blocked = |gate, message| Some(Blocked { gate, message });
    let budget = &spec.failover.flap_budget;
    if !peer_can_serve {
        return blocked(Gate::NoStandbyAvailable, format!("{}: no member can take over", f.reason));
    }
    if spec.failover.mode == FailoverMode::Manual {
        return blocked(
            Gate::ManualFailover,
            format!("{}: failover.mode is Manual; request a failover to proceed", f.reason),
        );
    }
    if automatic_failovers_in_window(spec, status, now) >= budget.max_automatic_failovers as usize {
        return blocked(
            Gate::FlapBudgetExhausted,
            format!(
                "{}: {} automatic failovers within {}s already; request a failover to proceed",
                f.reason, budget.max_automatic_failovers, budget.window_seconds
            ),
        );
    }
    let lag = from.and_then(|h| standby_lag(obs, h)).zip(spec.failover.max_sync_lag_seconds);
    if let Some((lag, max)) = lag.filter(|(lag, max)| *lag > f64::from(*max) && syncs_files(spec)) {
        return blocked(
            Gate::SyncLagTooHigh,
            format!(
                "{}: the standby's files were {lag:.0}s behind at the last answer, over \
                 failover.maxSyncLagSeconds ({max}s); request a forced failover to proceed",
                f.reason
            ),
        );
    }
    None
}

/// The highest epoch the pair has ever been seen at: in its status and
/// history, and in what either member last reported. 0 for a pair that
/// never had a Lease.
pub fn highest_epoch(status: &HighAvailabilityPairStatus, obs: &Observed) -> i64 {
    let reported = Member::BOTH.iter().filter_map(|m| obs.member(*m).agent.last.as_ref().map(|a| a.epoch));
    let recorded = status.history.iter().map(|t| t.epoch).chain([status.epoch]);
    // A Lease counts epochs in an int32: a report past that is garbage (a
    // member cannot have read it from a Lease) and is not trusted.
    reported.chain(recorded).filter(|e| (0..MAX_EPOCH).contains(e)).max().unwrap_or(0)
}

/// The largest epoch a Lease can carry (`leaseTransitions` is an int32).
const MAX_EPOCH: i64 = i32::MAX as i64;

/// There is no Lease. A pair that never had one bootstraps; one whose Lease
/// was deleted (by hand, by a restore, by a namespace cleanup) gets it back
/// past the highest epoch ever seen — a fencing token never goes backwards —
/// for the member the evidence says was serving. Otherwise, when to look
/// again.
pub fn without_lease(
    spec: &HighAvailabilityPairSpec,
    status: &HighAvailabilityPairStatus,
    obs: &Observed,
) -> Result<LeaseAction, Option<Duration>> {
    // Past the epochs the members' files were written at too (kept on their
    // volumes: a pair created again over retained claims goes on past
    // them). Only here: a volume's record says nothing of the Lease's
    // history, so it never makes a live Lease look edited.
    let highest = highest_epoch(status, obs).max(cold_start::files_epoch(obs));
    if highest == 0 {
        return bootstrap(spec, obs);
    }
    // The member that reported serving at the highest epoch, else the one
    // the status named active, else the one with the newest files; one
    // nothing names starts alone only after waiting for the other.
    let (holder, lossy) =
        cold_start::without_lease_holder(spec, obs, [reported_active(obs, highest), status.active_member])?;
    let pod_uid = obs.member(holder).pod.as_ref().map(|p| p.uid.clone()).unwrap_or_default();
    Ok(LeaseAction::Create { holder, pod_uid, epoch: (highest + 1).min(MAX_EPOCH), lossy })
}

/// The member whose agent reported serving at `epoch`.
fn reported_active(obs: &Observed, epoch: i64) -> Option<Member> {
    Member::BOTH.into_iter().find(|m| {
        obs.member(*m).agent.last.as_ref().is_some_and(|a| a.epoch == epoch && a.role == crate::api::Role::Active)
    })
}

/// The first of `evidence`, then primary, then secondary, that can serve.
fn served(spec: &HighAvailabilityPairSpec, obs: &Observed, evidence: [Option<Member>; 2]) -> Option<Member> {
    let missed = spec.heartbeat.missed_threshold as u32;
    evidence
        .into_iter()
        .chain([Some(Member::Primary), Some(Member::Secondary)])
        .flatten()
        .find(|m| can_take_over(obs.member(*m), missed))
}

/// The Lease says what the operator never writes: an epoch below the
/// highest ever recorded, or — at the epoch the status recorded — another
/// holder than the one it recorded, or none without a release (the
/// operator changes the holder only with a new epoch; an agent clears it
/// only with its reason). It is written again past the highest epoch for
/// the member that served: the one the status named active (the one clients
/// were told), else the one that reported serving. `None` when the Lease is
/// as the operator and the agents left it, or when no member can serve.
pub fn edited_lease(
    spec: &HighAvailabilityPairSpec,
    status: &HighAvailabilityPairStatus,
    obs: &Observed,
    lease: &LeaseObs,
) -> Option<LeaseAction> {
    let highest = highest_epoch(status, obs);
    let holder = lease.holder.as_ref().map(|(m, _)| *m);
    let recorded = status.active_member.filter(|_| status.epoch > 0 && lease.epoch == status.epoch);
    let edit = if lease.epoch < highest {
        format!("its epoch was set back to {} below the highest recorded, {highest}", lease.epoch)
    } else if let Some(was) = recorded.filter(|was| holder.is_some_and(|h| h != *was)) {
        format!(
            "its holder was changed to {} at epoch {}, which {was} held",
            holder.map_or("nobody".into(), |h| h.to_string()),
            lease.epoch
        )
    } else if let Some(was) = recorded.filter(|_| holder.is_none() && lease.released_reason.is_none()) {
        format!("its holder was cleared at epoch {}, which {was} held, without a release", lease.epoch)
    } else {
        return None;
    };
    let to = served(spec, obs, [status.active_member, reported_active(obs, highest)])?;
    let pod_uid = obs.member(to).pod.as_ref().map(|p| p.uid.clone()).unwrap_or_default();
    Some(LeaseAction::Restore {
        holder: to,
        pod_uid,
        epoch: (highest + 1).min(MAX_EPOCH),
        expected_rv: lease.resource_version.clone(),
        edit,
    })
}

/// Nobody has held the Lease yet: the primary once both members can serve,
/// or the only one that can after [`bootstrap_alone_after`]. Otherwise,
/// when to look again.
pub fn bootstrap(spec: &HighAvailabilityPairSpec, obs: &Observed) -> Result<LeaseAction, Option<Duration>> {
    let missed = spec.heartbeat.missed_threshold as u32;
    let ready: Vec<Member> = Member::BOTH.into_iter().filter(|m| can_take_over(obs.member(*m), missed)).collect();
    let holder = match ready.as_slice() {
        [_, _] => Member::Primary,
        [only] if obs.without_lease_for >= bootstrap_alone_after(spec) => *only,
        [_] => return Err(Some(bootstrap_alone_after(spec).saturating_sub(obs.without_lease_for))),
        _ => return Err(None),
    };
    let pod_uid = obs.member(holder).pod.as_ref().map(|p| p.uid.clone()).unwrap_or_default();
    Ok(LeaseAction::Create { holder, pod_uid, epoch: 1, lossy: false })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_reasons_and_gates_are_the_words_the_api_shows() {
        for r in FailureReason::ALL {
            assert_eq!(r.to_string().parse::<FailureReason>(), Ok(*r));
        }
        for g in Gate::ALL {
            assert_eq!(g.to_string().parse::<Gate>(), Ok(*g));
        }
        assert_eq!(FailureReason::ContainerTerminated.to_string(), "ContainerTerminated");
        assert_eq!(Gate::FlapBudgetExhausted.as_str(), "FlapBudgetExhausted");
        let restartable: Vec<_> = FailureReason::ALL.iter().filter(|r| r.restartable()).collect();
        assert_eq!(
            restartable,
            [&FailureReason::LeaseReleased, &FailureReason::PodGone, &FailureReason::PodReplaced],
            "only these let the same member take the role back"
        );
    }
}
