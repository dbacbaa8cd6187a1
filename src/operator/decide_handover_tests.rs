//! The state machine's planned handovers, without a cluster: a switchover
//! drains, waits for the drain mark, moves the Lease; a handover the active
//! gave up is not drained again; automatic failback's hysteresis.

use std::time::Duration;

use chrono::Utc;

use super::tests::{clock, enabled, lease, member, op_status, spec, with_op};
use super::*;
use crate::api::{OperationKind, OperationPhase, Role};

#[test]
fn a_switchover_drains_the_active_then_moves_the_lease_then_succeeds() {
    let s = with_op("", "{id: sw-1, switchover: {}}");
    let obs = enabled();
    let plan = decide(&s, None, &obs, &clock());
    assert_eq!(plan.drain, Some((Member::Primary, 1)), "the active drains first");
    assert_eq!(plan.lease, None);
    let op = op_status(&plan);
    assert_eq!(
        (op.kind, op.phase, op.target),
        (OperationKind::Switchover, OperationPhase::Running, Some(Member::Secondary))
    );

    let mut drained = obs.clone();
    drained.primary.agent.last.as_mut().unwrap().draining = true;
    drained.primary.agent.last.as_mut().unwrap().role = Role::Standby;
    // Drained, but the Lease read does not carry the mark (yet, or any more:
    // the member gave the handover up and serves again): no move.
    let waiting = decide(&s, Some(&plan.status), &drained, &clock());
    assert_eq!(waiting.lease, None, "no handover from a Lease not marked drained");
    assert_eq!((waiting.drain, op_status(&waiting).phase), (None, OperationPhase::Running));
    drained.lease.as_mut().unwrap().drained_at = Some(0);
    assert_eq!(decide(&s, Some(&plan.status), &drained, &clock()).lease, None, "a mark of another epoch");
    drained.lease.as_mut().unwrap().drained_at = Some(1);
    // An agent of an earlier version never marks: its report alone counts.
    let mut older = drained.clone();
    older.lease.as_mut().unwrap().drained_at = None;
    older.primary.agent.last.as_mut().unwrap().marks_drain = false;
    assert!(decide(&s, Some(&plan.status), &older, &clock()).lease.is_some(), "the switchover that upgrades a pair");
    let plan = decide(&s, Some(&plan.status), &drained, &clock());
    match &plan.lease {
        Some(LeaseAction::Takeover { to, epoch, transition, .. }) => {
            assert_eq!((*to, *epoch), (Member::Secondary, 2));
            assert_eq!(transition.type_, TransitionType::Switchover);
            assert_eq!(transition.operation_id.as_deref(), Some("sw-1"));
            assert!(!transition.data_loss_possible);
        }
        other => panic!("expected the lease to move, got {other:?}"),
    }

    let mut moved = enabled();
    moved.primary = member(Member::Primary, Role::Standby, Some(true));
    moved.secondary = member(Member::Secondary, Role::Active, Some(true));
    moved.secondary.agent.last.as_mut().unwrap().epoch = 2;
    moved.lease = Some(lease(Member::Secondary, 2, Duration::ZERO));
    moved.lease.as_mut().unwrap().operation_id = Some("sw-1".into());
    let done = decide(&s, Some(&plan.status), &moved, &clock());
    assert_eq!(op_status(&done).phase, OperationPhase::Succeeded);
    assert_eq!(done.lease, None);
}

/// Automatic failback after 30 s; the secondary active at epoch 2, the
/// primary a healthy standby.
fn failed_over_with_automatic_failback() -> (HighAvailabilityPairSpec, Observed) {
    let mut obs = enabled();
    obs.primary = member(Member::Primary, Role::Standby, Some(true));
    obs.secondary = member(Member::Secondary, Role::Active, Some(true));
    obs.lease = Some(lease(Member::Secondary, 2, Duration::ZERO));
    (spec("failback: {mode: Automatic, delaySeconds: 30}"), obs)
}

#[test]
fn automatic_failback_waits_for_the_primary_to_be_stable() {
    let (s, mut obs) = failed_over_with_automatic_failback();
    obs.primary_usable_for = Some(Duration::from_secs(29));
    assert_eq!(decide(&s, None, &obs, &clock()).drain, None, "hysteresis");
    obs.primary_usable_for = Some(Duration::from_secs(30));
    assert_eq!(decide(&s, None, &obs, &clock()).drain, Some((Member::Secondary, 2)));
    assert_eq!(decide(&spec(""), None, &obs, &clock()).drain, None, "manual failback waits for a request");
}

#[test]
fn a_handover_the_active_gave_up_is_not_drained_again() {
    let s = with_op("", "{id: sw-1, switchover: {}}");
    let first = decide(&s, None, &enabled(), &clock());
    let mut status = first.status.clone();
    status.operations[0].start_time = Some(Utc::now() - chrono::Duration::seconds(20));
    // Drained for this request, the hold ran out, it serves again.
    let mut resumed = enabled();
    resumed.primary.agent.last.as_mut().unwrap().handover_given_up_seconds_ago = Some(5.0);
    let plan = decide(&s, Some(&status), &resumed, &clock());
    assert_eq!((plan.drain, plan.lease.is_some()), (None, false), "no second drain, no move");
    let op = op_status(&plan);
    assert_eq!((op.phase, op.reason.as_deref()), (OperationPhase::Failed, Some("HandoverTimedOut")));
    assert!(op.message.as_deref().is_some_and(|m| m.contains("gave the handover up")), "{op:?}");
    // A give-up older than the request (an earlier one) does not count.
    resumed.primary.agent.last.as_mut().unwrap().handover_given_up_seconds_ago = Some(25.0);
    assert_eq!(decide(&s, Some(&status), &resumed, &clock()).drain, Some((Member::Primary, 1)));
}

#[test]
fn a_failback_the_secondary_gave_up_waits_its_delay_anew() {
    let (s, mut obs) = failed_over_with_automatic_failback();
    obs.secondary.agent.last.as_mut().unwrap().epoch = 2;
    obs.primary_usable_for = Some(Duration::from_secs(300));
    obs.secondary.agent.last.as_mut().unwrap().handover_given_up_seconds_ago = Some(29.0);
    assert_eq!(decide(&s, None, &obs, &clock()).drain, None, "the delay starts at the give-up");
    obs.secondary.agent.last.as_mut().unwrap().handover_given_up_seconds_ago = Some(31.0);
    assert_eq!(decide(&s, None, &obs, &clock()).drain, Some((Member::Secondary, 2)));
    // A give-up at an earlier epoch is another story.
    obs.secondary.agent.last.as_mut().unwrap().handover_given_up_seconds_ago = Some(1.0);
    obs.secondary.agent.last.as_mut().unwrap().epoch = 1;
    obs.lease = Some(lease(Member::Secondary, 2, Duration::ZERO));
    assert_eq!(decide(&s, None, &obs, &clock()).drain, Some((Member::Secondary, 2)));
}
