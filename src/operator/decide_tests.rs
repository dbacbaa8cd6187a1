//! The state machine, without a cluster.

use std::time::Duration;

use chrono::Utc;

use super::*;
use crate::api::{ConditionStatus, MemberState, Mode, Role};
use crate::operator::failover::bootstrap_alone_after;
use crate::operator::observe::{AgentObs, LeaseObs, MemberObs, PodObs};
use crate::proto::AgentStatus;

pub(super) fn spec(extra: &str) -> HighAvailabilityPairSpec {
    serde_yaml::from_str(&format!(
        "template: {{spec: {{containers: [{{name: app, image: x}}]}}}}\nservice: {{ports: [{{name: http, port: 80}}]}}\n{extra}"
    ))
    .unwrap()
}

pub(super) fn member(m: Member, role: Role, healthy: Option<bool>) -> MemberObs {
    let uid = format!("{m}-uid");
    MemberObs {
        pod: Some(PodObs {
            name: format!("db-{m}"),
            uid: uid.clone(),
            ip: Some("10.0.0.1".into()),
            running: true,
            ..Default::default()
        }),
        agent: AgentObs {
            last: Some(AgentStatus {
                member: m,
                pod_uid: uid,
                role,
                epoch: 1,
                app_healthy: healthy,
                wall_clock: Utc::now(),
                peer_reachable: Some(true),
                sync_generation: 0,
                lease_renew_failures: 0,
                released: None,
                draining: false,
                failsafe: false,
                marks_drain: true,
                handover_given_up_seconds_ago: None,
                sync: None,
                volume: None,
                uptime_seconds: None,
                certificate_not_after: None,
                certificate_sha256: None,
                trusted_ca_sha256: Vec::new(),
            }),
            missed: 0,
            since_answer: Some(Duration::ZERO),
            malformed: 0,
            skew_ms: Some(0),
        },
    }
}

pub(in crate::operator) fn lease(holder: Member, epoch: i64, unchanged_for: Duration) -> LeaseObs {
    LeaseObs {
        holder: Some((holder, format!("{holder}-uid"))),
        epoch,
        resource_version: "42".into(),
        duration: Duration::from_secs(15),
        released_reason: None,
        released_by: None,
        operation_id: None,
        drained_at: None,
        unchanged_for,
        renewed_ago: None,
        interval_seconds: Some(5),
        missed_threshold: Some(3),
    }
}

/// Primary active at epoch 1, secondary standby, both healthy.
/// The status of a pair past its registration (mode `Enabled` once): a
/// round from no status at all is a new pair's, which registers first.
pub(super) fn registered() -> crate::api::HighAvailabilityPairStatus {
    crate::api::HighAvailabilityPairStatus { mode: Some(Mode::Enabled), ..Default::default() }
}

pub(super) fn enabled() -> Observed {
    Observed {
        primary: member(Member::Primary, Role::Active, Some(true)),
        secondary: member(Member::Secondary, Role::Standby, Some(true)),
        lease: Some(lease(Member::Primary, 1, Duration::from_secs(1))),
        vip_exists: true,
        ..Default::default()
    }
}

/// Both members up before any Lease was ever granted: agents at epoch 0.
pub(super) fn never_leased() -> Observed {
    let mut obs = enabled();
    obs.lease = None;
    for m in Member::BOTH {
        let a = obs.member_mut(m).agent.last.as_mut().unwrap();
        (a.role, a.epoch) = (Role::Standby, 0);
    }
    obs
}

pub(super) fn clock() -> RoundInputs {
    RoundInputs { pair: "db".into(), now: Utc::now(), generation: Some(1) }
}

pub(super) fn takeover(plan: &Decision) -> Option<(Member, i64, &str)> {
    match &plan.lease {
        Some(LeaseAction::Takeover { to, epoch, transition, .. }) => Some((*to, *epoch, transition.reason.as_str())),
        _ => None,
    }
}

pub(super) fn condition(plan: &Decision, t: &str) -> (ConditionStatus, String) {
    let c = plan.status.conditions.iter().find(|c| c.type_ == t).unwrap();
    (c.status, c.reason.clone())
}

#[test]
fn a_healthy_pair_is_enabled_and_changes_nothing() {
    let plan = decide(&spec(""), None, &enabled(), &clock());
    assert_eq!(plan.lease, None);
    assert_eq!(plan.vip, Some(Member::Primary));
    assert_eq!(plan.standby, Some(Member::Secondary));
    assert_eq!(plan.status.mode, Some(Mode::Enabled));
    let states: Vec<_> = plan.status.members.iter().map(|m| m.state).collect();
    assert_eq!(states, [MemberState::PrimaryActive, MemberState::SecondarySyncing]);
    assert_eq!(condition(&plan, "Ready").0, ConditionStatus::True);
}

#[test]
fn bootstrap_makes_the_primary_active_once_both_agents_answer() {
    let obs = never_leased();
    let plan = decide(&spec(""), None, &obs, &clock());
    assert_eq!(
        plan.lease,
        Some(LeaseAction::Create { holder: Member::Primary, pod_uid: "primary-uid".into(), epoch: 1, lossy: false })
    );
    assert_eq!(plan.vip, Some(Member::Primary));
    assert_eq!(plan.status.epoch, 1);
    assert_eq!(plan.status.history[0].type_, TransitionType::Bootstrap);
}

#[test]
fn bootstrap_with_one_member_waits_a_bounded_time_then_runs_alone() {
    let mut obs = never_leased();
    obs.primary.pod = None;
    let plan = decide(&spec(""), None, &obs, &clock());
    assert_eq!(plan.lease, None, "waits for the second member first");
    assert_eq!(plan.status.mode, Some(Mode::Initializing));
    obs.without_lease_for = bootstrap_alone_after(&spec(""));
    let plan = decide(&spec(""), None, &obs, &clock());
    assert_eq!(
        plan.lease,
        Some(LeaseAction::Create {
            holder: Member::Secondary,
            pod_uid: "secondary-uid".into(),
            epoch: 1,
            lossy: false
        })
    );
    // It serves, but the pair never registered its standby: still
    // Initializing (HapairStandbyDown fires on that too, after 5m).
    assert_eq!(plan.status.mode, Some(Mode::Initializing));
    // A pair that had registered runs Alone.
    let plan = decide(&spec(""), Some(&registered()), &obs, &clock());
    assert_eq!(plan.status.mode, Some(Mode::Alone));
}

#[test]
fn an_app_failure_reported_by_the_active_agent_fails_over_at_once() {
    let mut obs = enabled();
    obs.primary = member(Member::Primary, Role::Active, Some(false));
    let plan = decide(&spec(""), None, &obs, &clock());
    assert_eq!(takeover(&plan), Some((Member::Secondary, 2, "AppHealthCheckFailed")));
    assert_eq!(plan.vip, Some(Member::Secondary));
    assert_eq!(plan.status.epoch, 2);
    // The transition enters the history with the decision (written only once
    // the Lease has moved), exactly as the bootstrap's does.
    let t = &plan.status.history[0];
    assert_eq!(
        (t.type_, t.to, t.epoch, t.reason.as_str()),
        (TransitionType::Failover, Some(Member::Secondary), 2, "AppHealthCheckFailed")
    );
    assert_eq!(plan.status.last_transition.as_ref(), Some(t));
    assert_eq!(plan.status.history.len(), 1);
}

#[test]
fn a_deleted_or_replaced_active_pod_is_a_confirmed_failure() {
    let mut obs = enabled();
    obs.primary.pod.as_mut().unwrap().deleting = true;
    assert_eq!(takeover(&decide(&spec(""), None, &obs, &clock())).map(|t| t.2), Some("PodDeleted"));
    let mut obs = enabled();
    obs.primary.pod.as_mut().unwrap().uid = "new".into();
    assert_eq!(takeover(&decide(&spec(""), None, &obs, &clock())).map(|t| t.2), Some("PodReplaced"));
    let mut obs = enabled();
    obs.primary.pod = None;
    assert_eq!(takeover(&decide(&spec(""), None, &obs, &clock())).map(|t| t.2), Some("PodGone"));
    let mut obs = enabled();
    obs.primary.pod.as_mut().unwrap().app_down = true;
    assert_eq!(takeover(&decide(&spec(""), None, &obs, &clock())).map(|t| t.2), Some("ContainerTerminated"));
}

#[test]
fn a_released_lease_is_taken_over_at_once() {
    let mut obs = enabled();
    let l = obs.lease.as_mut().unwrap();
    l.holder = None;
    l.released_reason = Some("AppHealthCheckFailed".into());
    l.released_by = Some(Member::Primary);
    assert_eq!(takeover(&decide(&spec(""), None, &obs, &clock())), Some((Member::Secondary, 2, "LeaseReleased")));
}

#[test]
fn active_missing_heartbeats_fails_over_only_after_a_full_lease_duration() {
    let mut obs = enabled();
    obs.primary.agent.missed = 5;
    obs.lease.as_mut().unwrap().unchanged_for = Duration::from_millis(14_900);
    let plan = decide(&spec(""), None, &obs, &clock());
    assert_eq!(plan.lease, None, "the old active may still be inside its renew deadline");
    assert!(plan.recheck <= Duration::from_millis(100), "wakes up when the lease expires: {:?}", plan.recheck);
    obs.lease.as_mut().unwrap().unchanged_for = Duration::from_secs(15);
    assert_eq!(takeover(&decide(&spec(""), None, &obs, &clock())), Some((Member::Secondary, 2, "LeaseExpired")));
}

#[test]
fn an_unrenewed_lease_is_no_failure_while_its_holder_answers_as_active_at_its_epoch() {
    // The API server does not hear the active (it serves on its peer's
    // promise), but the operator reaches its agent.
    let mut obs = enabled();
    obs.lease.as_mut().unwrap().unchanged_for = Duration::from_secs(60);
    obs.primary.agent.last.as_mut().unwrap().failsafe = true;
    let plan = decide(&spec(""), None, &obs, &clock());
    assert_eq!(plan.lease, None, "the holder vouches for itself");
    // Each part of the vouching matters: a fresh answer, active, at the Lease's
    // epoch, from the pod the Lease names.
    let breaks: [fn(&mut Observed); 5] = [
        |o| o.primary.agent.missed = 1,
        |o| o.primary.agent.since_answer = Some(Duration::from_secs(11)),
        |o| o.primary.agent.last.as_mut().unwrap().role = Role::Fenced,
        |o| o.primary.agent.last.as_mut().unwrap().epoch = 0,
        |o| o.primary.agent.last.as_mut().unwrap().pod_uid = "other".into(),
    ];
    for (i, b) in breaks.into_iter().enumerate() {
        let mut o = obs.clone();
        b(&mut o);
        assert_eq!(
            takeover(&decide(&spec(""), None, &o, &clock())),
            Some((Member::Secondary, 2, "LeaseExpired")),
            "case {i}"
        );
    }
}

#[test]
fn a_silent_agent_whose_lease_is_still_renewed_is_not_failed_over() {
    let mut obs = enabled();
    obs.primary.agent.missed = 10;
    obs.lease.as_mut().unwrap().unchanged_for = Duration::from_secs(2);
    let plan = decide(&spec(""), None, &obs, &clock());
    assert_eq!(plan.lease, None);
    assert_eq!(plan.vip, Some(Member::Primary));
}

#[test]
fn no_failover_to_a_standby_that_cannot_serve() {
    for broken in [
        |o: &mut MemberObs| o.pod = None,
        |o: &mut MemberObs| o.agent.missed = 3,
        |o: &mut MemberObs| o.agent.last.as_mut().unwrap().app_healthy = Some(false),
        |o: &mut MemberObs| o.agent.last.as_mut().unwrap().role = Role::Fenced,
        |o: &mut MemberObs| o.pod.as_mut().unwrap().running = false,
    ] {
        let mut obs = enabled();
        obs.primary.pod.as_mut().unwrap().deleting = true;
        broken(&mut obs.secondary);
        let plan = decide(&spec(""), None, &obs, &clock());
        assert_eq!(plan.lease, None);
        assert_eq!(condition(&plan, "FailoverRequired"), (ConditionStatus::True, "NoStandbyAvailable".into()));
        assert_eq!(condition(&plan, "Available").0, ConditionStatus::False);
    }
}

#[test]
fn manual_mode_raises_failover_required_and_does_nothing_else() {
    let mut obs = enabled();
    obs.primary.pod.as_mut().unwrap().deleting = true;
    let plan = decide(&spec("failover: {mode: Manual}"), None, &obs, &clock());
    assert_eq!(plan.lease, None);
    assert_eq!(plan.vip, Some(Member::Primary), "the VIP stays where it was");
    assert_eq!(condition(&plan, "FailoverRequired"), (ConditionStatus::True, "ManualFailover".into()));
    assert!(plan.events.iter().any(|e| e.reason == "FailoverRequired"));
}

#[test]
fn paused_pairs_observe_and_report_but_never_act() {
    let mut obs = enabled();
    obs.primary.pod.as_mut().unwrap().deleting = true;
    let plan = decide(&spec("paused: true"), None, &obs, &clock());
    assert_eq!(plan.lease, None);
    assert_eq!(plan.status.mode, Some(Mode::Paused));
    assert_eq!(condition(&plan, "Paused").0, ConditionStatus::True);
    let fresh = never_leased();
    assert_eq!(decide(&spec("paused: true"), None, &fresh, &clock()).lease, None, "no bootstrap either");
}

#[test]
fn failover_delay_is_respected() {
    let mut obs = enabled();
    obs.primary.pod.as_mut().unwrap().deleting = true;
    obs.failure_for = Some(Duration::from_secs(1));
    let plan = decide(&spec("failover: {delaySeconds: 3}"), None, &obs, &clock());
    assert_eq!(plan.lease, None);
    assert_eq!(plan.recheck, Duration::from_secs(2));
    obs.failure_for = Some(Duration::from_secs(3));
    assert!(takeover(&decide(&spec("failover: {delaySeconds: 3}"), None, &obs, &clock())).is_some());
}

#[test]
fn the_flap_budget_stops_the_third_automatic_failover_in_a_window() {
    let s = spec("failover: {flapBudget: {maxAutomaticFailovers: 2, windowSeconds: 600}}");
    let mut obs = enabled();
    obs.primary.pod.as_mut().unwrap().deleting = true;
    let mut status = HighAvailabilityPairStatus::default();
    for (i, minutes_ago) in [(3, 20), (2, 5)] {
        let t = decide(&s, None, &obs, &clock()).lease;
        let Some(LeaseAction::Takeover { mut transition, .. }) = t else { panic!("expected a takeover") };
        transition.epoch = i;
        transition.time = Utc::now() - chrono::Duration::minutes(minutes_ago);
        crate::operator::model::push_history(&mut status, transition);
    }
    // One failover 20 minutes ago (outside the window) and one 5 minutes ago;
    // the Lease is at the epoch the latest of them wrote.
    obs.lease.as_mut().unwrap().epoch = 3;
    assert!(takeover(&decide(&s, Some(&status), &obs, &clock())).is_some());
    status.history[1].time = Utc::now() - chrono::Duration::minutes(1);
    let plan = decide(&s, Some(&status), &obs, &clock());
    assert_eq!(plan.lease, None);
    assert_eq!(condition(&plan, "FailoverRequired"), (ConditionStatus::True, "FlapBudgetExhausted".into()));
}

#[test]
fn a_replaced_active_pod_takes_the_role_back_when_the_peer_cannot() {
    let mut obs = enabled();
    obs.secondary.pod = None;
    obs.primary.pod.as_mut().unwrap().uid = "primary-uid-2".into();
    obs.primary.agent.last.as_mut().unwrap().pod_uid = "primary-uid-2".into();
    obs.primary.agent.last.as_mut().unwrap().role = Role::Standby;
    let plan = decide(&spec("failover: {mode: Manual}"), None, &obs, &clock());
    match plan.lease {
        Some(LeaseAction::Takeover { to, pod_uid, transition, .. }) => {
            assert_eq!((to, pod_uid.as_str()), (Member::Primary, "primary-uid-2"));
            assert_eq!(transition.type_, TransitionType::Bootstrap);
        }
        other => panic!("expected the new primary pod to take the role, got {other:?}"),
    }
}

#[test]
fn after_a_restart_mid_failover_the_selector_follows_the_lease_without_a_second_failover() {
    // The Lease already names the secondary at epoch 2, the VIP still the primary.
    let mut obs = enabled();
    obs.primary = member(Member::Primary, Role::Standby, Some(true));
    obs.secondary = member(Member::Secondary, Role::Active, Some(true));
    obs.lease = Some(lease(Member::Secondary, 2, Duration::ZERO));
    let plan = decide(&spec(""), None, &obs, &clock());
    assert_eq!(plan.lease, None);
    assert_eq!(plan.vip, Some(Member::Secondary));
    assert_eq!(plan.status.epoch, 2);
}

#[test]
fn both_members_reporting_active_is_a_split_brain() {
    let mut obs = enabled();
    obs.secondary = member(Member::Secondary, Role::Active, Some(true));
    let plan = decide(&spec(""), None, &obs, &clock());
    assert_eq!(plan.status.mode, Some(Mode::SplitBrain));
    assert_eq!(condition(&plan, "SplitBrain").0, ConditionStatus::True);
}

#[test]
fn conditions_keep_their_transition_time_while_unchanged() {
    let first = decide(&spec(""), None, &enabled(), &clock());
    let later = RoundInputs { now: Utc::now() + chrono::Duration::minutes(5), ..clock() };
    let second = decide(&spec(""), Some(&first.status), &enabled(), &later);
    assert_eq!(first.status.conditions, second.status.conditions);
    assert!(second.events.is_empty(), "steady state raises no events: {:?}", second.events);
}

#[test]
fn heartbeat_settings_that_differ_from_the_lease_are_written_to_it() {
    let plan = decide(&spec("heartbeat: {intervalSeconds: 1}"), None, &enabled(), &clock());
    assert_eq!(plan.lease, Some(LeaseAction::UpdateTimings));
}

#[test]
fn a_member_that_released_the_lease_takes_it_back_once_healthy_when_no_failover_is_allowed() {
    let mut obs = enabled();
    let l = obs.lease.as_mut().unwrap();
    l.holder = None;
    l.released_reason = Some("AppHealthCheckFailed".into());
    l.released_by = Some(Member::Primary);
    l.unchanged_for = Duration::from_secs(2);
    obs.primary.agent.last.as_mut().unwrap().role = Role::Standby;
    // An answer from before the release does not count.
    obs.primary.agent.since_answer = Some(Duration::from_secs(3));
    assert_eq!(decide(&spec("failover: {mode: Manual}"), None, &obs, &clock()).lease, None);
    obs.primary.agent.since_answer = Some(Duration::from_millis(500));
    let plan = decide(&spec("failover: {mode: Manual}"), None, &obs, &clock());
    match plan.lease {
        Some(LeaseAction::Takeover { to, transition, .. }) => {
            assert_eq!(to, Member::Primary);
            assert_eq!(transition.type_, TransitionType::Bootstrap, "a restart, not a failover");
        }
        other => panic!("expected the recovered primary to take the role back, got {other:?}"),
    }
    // While its application still fails, nobody takes over in manual mode.
    obs.primary.agent.last.as_mut().unwrap().app_healthy = Some(false);
    let plan = decide(&spec("failover: {mode: Manual}"), None, &obs, &clock());
    assert_eq!(plan.lease, None);
    assert_eq!(condition(&plan, "FailoverRequired"), (ConditionStatus::True, "ManualFailover".into()));
}

// ---- operations -------------------------------------------------------------

use crate::api::OperationPhase;

pub(super) fn with_op(extra: &str, op: &str) -> HighAvailabilityPairSpec {
    spec(&format!("{extra}\noperation: {op}"))
}

pub(super) fn op_status(plan: &Decision) -> &crate::api::OperationStatus {
    plan.status.operations.first().expect("the request is acknowledged")
}

#[test]
fn a_switchover_overtaken_by_an_automatic_failover_is_refused_with_the_reason() {
    let s = with_op("", "{id: sw-1, switchover: {}}");
    let accepted = decide(&s, None, &enabled(), &clock());
    let mut failed_over = enabled();
    failed_over.primary.pod.as_mut().unwrap().deleting = true;
    failed_over.secondary = member(Member::Secondary, Role::Active, Some(true));
    failed_over.secondary.agent.last.as_mut().unwrap().epoch = 2;
    failed_over.lease = Some(lease(Member::Secondary, 2, Duration::ZERO));
    let plan = decide(&s, Some(&accepted.status), &failed_over, &clock());
    let op = op_status(&plan);
    assert_eq!((op.phase, op.reason.as_deref()), (OperationPhase::Refused, Some("Superseded")));
    assert_eq!(plan.lease, None, "no second move");
}

#[test]
fn a_switchover_to_a_standby_that_cannot_serve_is_refused_with_the_reason() {
    let mut obs = enabled();
    obs.secondary.agent.last.as_mut().unwrap().app_healthy = Some(false);
    let plan = decide(&with_op("", "{id: sw-1, switchover: {}}"), None, &obs, &clock());
    let op = op_status(&plan);
    assert_eq!((op.phase, op.reason.as_deref()), (OperationPhase::Refused, Some("StandbyNotHealthy")));
    assert_eq!((plan.lease, plan.drain), (None, None));
}

#[test]
fn a_failback_to_an_active_primary_is_refused() {
    let plan = decide(&with_op("", "{id: fb-1, failback: {}}"), None, &enabled(), &clock());
    assert_eq!(op_status(&plan).reason.as_deref(), Some("AlreadyOnPrimary"));
    assert_eq!(op_status(&plan).phase, OperationPhase::Refused);
}

#[test]
fn a_failover_request_acts_on_failover_required_in_manual_mode_outside_the_flap_budget() {
    let mut obs = enabled();
    obs.primary.pod.as_mut().unwrap().deleting = true;
    let plan = decide(&with_op("failover: {mode: Manual}", "{id: fo-1, failover: {}}"), None, &obs, &clock());
    match plan.lease {
        Some(LeaseAction::Takeover { to, transition, .. }) => {
            assert_eq!(to, Member::Secondary);
            assert_eq!(transition.operation_id.as_deref(), Some("fo-1"), "requested failovers are not automatic");
        }
        other => panic!("expected the requested failover, got {other:?}"),
    }
}

#[test]
fn a_forced_failover_moves_to_a_failing_standby_and_says_data_may_be_missing() {
    let mut obs = enabled();
    obs.secondary.agent.last.as_mut().unwrap().app_healthy = Some(false);
    let plan = decide(&with_op("", "{id: fo-1, failover: {force: true}}"), None, &obs, &clock());
    match plan.lease {
        Some(LeaseAction::Takeover { to, transition, .. }) => {
            assert_eq!(to, Member::Secondary);
            assert!(transition.data_loss_possible);
        }
        other => panic!("expected the forced failover, got {other:?}"),
    }
    let plan = decide(&with_op("", "{id: fo-2, failover: {}}"), None, &obs, &clock());
    assert_eq!(op_status(&plan).phase, OperationPhase::Refused, "unforced, the standby's health counts");
}

#[test]
fn go_standby_of_a_standby_needs_nothing_and_of_the_active_hands_over() {
    let plan = decide(&with_op("", "{id: gs-1, goStandby: {member: secondary}}"), None, &enabled(), &clock());
    assert_eq!(
        (op_status(&plan).phase, op_status(&plan).reason.as_deref()),
        (OperationPhase::Succeeded, Some("AlreadyStandby"))
    );
    let plan = decide(&with_op("", "{id: gs-2, goStandby: {member: primary}}"), None, &enabled(), &clock());
    assert_eq!(plan.drain, Some((Member::Primary, 1)));
}

#[test]
fn requests_that_cannot_be_honoured_are_refused_never_ignored() {
    for (op, reason) in [
        ("{id: r-1, resync: {dryRun: true}}", "NoFileSync"),
        ("{id: r-2, resolveSplitBrain: {keep: primary}}", "NoSplitBrain"),
    ] {
        let plan = decide(&with_op("", op), None, &enabled(), &clock());
        assert_eq!(
            (op_status(&plan).phase, op_status(&plan).reason.as_deref()),
            (OperationPhase::Refused, Some(reason))
        );
    }
    let plan = decide(&with_op("paused: true", "{id: sw-1, switchover: {}}"), None, &enabled(), &clock());
    assert_eq!(op_status(&plan).reason.as_deref(), Some("Paused"));
}

#[test]
fn a_finished_request_is_not_performed_again() {
    let s = with_op("", "{id: sw-1, switchover: {}}");
    let first = decide(&s, None, &enabled(), &clock());
    let mut status = first.status.clone();
    status.operations[0].phase = OperationPhase::Succeeded;
    let again = decide(&s, Some(&status), &enabled(), &clock());
    assert_eq!((again.lease, again.drain), (None, None));
}
