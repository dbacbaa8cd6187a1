//! Cold start, decided without a cluster: both orders of return, the one
//! member that comes back alone, manual mode, and what does not count as a
//! cold start (a hot standby, garbage, a peer that holds everything).

use std::time::Duration;

use super::decide;
use super::tests::{clock, condition, enabled, lease, member, registered, spec};
use crate::api::{ConditionStatus, HighAvailabilityPairStatus, Member, Role, TransitionType};
use crate::operator::model::{Decision, LeaseAction};
use crate::operator::observe::Observed;
use crate::proto::SyncStatus;
use crate::sync::state::Point;

const FILES: &str = "storage: {size: 1Gi, mountPath: /data}\nfileSync: {paths: [{path: .}]}";

fn at(obs: &mut Observed, m: Member, epoch: i64, generation: i64) {
    obs.member_mut(m).agent.last.as_mut().unwrap().sync =
        Some(SyncStatus { point: Point { epoch, generation }, ..Default::default() });
}

fn up(obs: &mut Observed, m: Member, seconds: f64) {
    obs.member_mut(m).agent.last.as_mut().unwrap().uptime_seconds = Some(seconds);
}

/// The primary held the role at epoch 3 and stopped renewing a minute ago
/// (files at 3.50); the secondary's files are at 3.40. Both were down: the
/// secondary is back (up 10 s), the primary's new pod not yet.
fn both_were_down() -> Observed {
    let mut obs = enabled();
    let lease = obs.lease.as_mut().unwrap();
    (lease.epoch, lease.unchanged_for) = (3, Duration::from_secs(60));
    for m in Member::BOTH {
        let a = obs.member_mut(m).agent.last.as_mut().unwrap();
        (a.role, a.epoch) = (Role::Standby, 0);
    }
    at(&mut obs, Member::Primary, 3, 50);
    at(&mut obs, Member::Secondary, 3, 40);
    up(&mut obs, Member::Secondary, 10.0);
    up(&mut obs, Member::Primary, 5.0);
    obs.primary.pod = None;
    obs.primary.agent = Default::default();
    obs.failure_for = Some(Duration::from_secs(50));
    obs
}

/// The primary's new pod is back and its agent answers.
fn primary_back(obs: &mut Observed) {
    let fresh = enabled();
    obs.primary = fresh.primary;
    obs.primary.pod.as_mut().unwrap().uid = "primary-uid-2".into();
    let a = obs.primary.agent.last.as_mut().unwrap();
    (a.role, a.epoch, a.pod_uid) = (Role::Standby, 0, "primary-uid-2".into());
    at(obs, Member::Primary, 3, 50);
    up(obs, Member::Primary, 5.0);
}

fn takeover(plan: &Decision) -> Option<(Member, TransitionType, bool)> {
    match &plan.lease {
        Some(LeaseAction::Takeover { to, transition, .. }) => {
            Some((*to, transition.type_, transition.data_loss_possible))
        }
        _ => None,
    }
}

#[test]
fn the_member_that_held_the_role_last_serves_again_whatever_order_they_return_in() {
    let s = spec(FILES);
    let current = registered();
    // The secondary first: it waits for the primary, and says so.
    let mut obs = both_were_down();
    let plan = decide(&s, Some(&current), &obs, &clock());
    assert_eq!(takeover(&plan), None, "the secondary with older files does not take over");
    assert_eq!(condition(&plan, "FailoverRequired"), (ConditionStatus::True, "WaitingForLastActive".into()));
    assert!(plan.recheck <= Duration::from_secs(25), "wakes up when the wait ends: {:?}", plan.recheck);
    // Then the primary: it takes the role back, a restart at the next epoch.
    primary_back(&mut obs);
    let plan = decide(&s, Some(&current), &obs, &clock());
    assert_eq!(takeover(&plan), Some((Member::Primary, TransitionType::Bootstrap, false)));
    let t = &plan.status.history[0];
    assert_eq!(t.epoch, 4);
    assert!(t.message.as_deref().unwrap().contains("held the role last"), "{t:?}");

    // The primary first, the secondary still down: the primary at once.
    let mut obs = both_were_down();
    primary_back(&mut obs);
    obs.secondary.pod = None;
    obs.secondary.agent = Default::default();
    let plan = decide(&s, Some(&current), &obs, &clock());
    assert_eq!(takeover(&plan).map(|t| t.0), Some(Member::Primary));

    // Both back at once: still the primary, although the secondary could
    // take over and automatic failover is on.
    let mut obs = both_were_down();
    primary_back(&mut obs);
    assert_eq!(takeover(&decide(&s, Some(&current), &obs, &clock())).map(|t| t.0), Some(Member::Primary));
}

#[test]
fn the_returning_holders_own_renewal_does_not_end_the_wait() {
    // Its agent is back and renewed the Lease at once (it is still the
    // holder), but the kubelet reports its application terminated: the
    // pair goes on waiting for it rather than failing over.
    let s = spec(FILES);
    let mut obs = both_were_down();
    let waiting = decide(&s, Some(&registered()), &obs, &clock()).status;
    primary_back(&mut obs);
    obs.primary.pod.as_mut().unwrap().uid = "primary-uid".into();
    obs.primary.pod.as_mut().unwrap().app_down = true;
    obs.lease.as_mut().unwrap().unchanged_for = Duration::ZERO;
    assert_eq!(takeover(&decide(&s, Some(&waiting), &obs, &clock())), None, "still waiting for the primary");
    // Without that record, a peer up longer than the Lease went unrenewed
    // is a hot standby.
    assert_eq!(takeover(&decide(&s, Some(&registered()), &obs, &clock())).map(|t| t.0), Some(Member::Secondary));
}

#[test]
fn nodes_that_come_back_with_the_same_pods_are_a_cold_start_too() {
    // The nodes lost power: the pods are the same, their agents restarted,
    // and the Lease simply expired.
    let s = spec(FILES);
    let current = registered();
    let mut obs = both_were_down();
    primary_back(&mut obs);
    obs.primary.pod.as_mut().unwrap().uid = "primary-uid".into();
    obs.primary.agent.last.as_mut().unwrap().pod_uid = "primary-uid".into();
    let plan = decide(&s, Some(&current), &obs, &clock());
    assert_eq!(takeover(&plan), Some((Member::Primary, TransitionType::Bootstrap, false)), "{:?}", plan.lease);
}

#[test]
fn the_older_member_alone_starts_after_the_wait_with_data_loss_recorded() {
    let s = spec(FILES);
    let current = registered();
    let mut obs = both_were_down();
    up(&mut obs, Member::Secondary, 36.0);
    let plan = decide(&s, Some(&current), &obs, &clock());
    assert_eq!(takeover(&plan), Some((Member::Secondary, TransitionType::Failover, true)));
    let t = &plan.status.history[0];
    assert!(t.message.as_deref().unwrap().contains("did not return within 35s"), "{t:?}");
    assert!(plan.events.iter().any(|e| e.warning && e.note.contains("did not return")), "a Warning Event");

    // Manual mode: the manual's "secondary will not restart" — the
    // administrator decides.
    let manual = spec(&format!("{FILES}\nfailover: {{mode: Manual}}"));
    let plan = decide(&manual, Some(&current), &obs, &clock());
    assert_eq!(takeover(&plan), None);
    assert_eq!(condition(&plan, "FailoverRequired"), (ConditionStatus::True, "ManualFailover".into()));
    let c = plan.status.conditions.iter().find(|c| c.type_ == "FailoverRequired").unwrap();
    assert!(c.message.contains("primary, which held the role last, is not back"), "{}", c.message);
    // ... and when the primary does come back, it serves again by itself.
    primary_back(&mut obs);
    assert_eq!(takeover(&decide(&manual, Some(&current), &obs, &clock())).map(|t| t.0), Some(Member::Primary));
}

#[test]
fn an_operator_that_started_after_the_holder_stopped_reads_the_renewal_time() {
    let s = spec(FILES);
    let mut obs = both_were_down();
    let lease = obs.lease.as_mut().unwrap();
    (lease.unchanged_for, lease.renewed_ago) = (Duration::from_secs(2), Some(Duration::from_secs(60)));
    assert_eq!(takeover(&decide(&s, Some(&registered()), &obs, &clock())), None, "still waits for the primary");
}

#[test]
fn a_hot_standby_fails_over_at_once() {
    let s = spec(FILES);
    let current = registered();
    // Up for an hour: it followed the primary until the primary stopped.
    let mut obs = both_were_down();
    up(&mut obs, Member::Secondary, 3600.0);
    assert_eq!(takeover(&decide(&s, Some(&current), &obs, &clock())).map(|t| t.0), Some(Member::Secondary));
    // An agent of an earlier version, which reports no uptime: as before.
    obs.secondary.agent.last.as_mut().unwrap().uptime_seconds = None;
    assert_eq!(takeover(&decide(&s, Some(&current), &obs, &clock())).map(|t| t.0), Some(Member::Secondary));
    // Garbage is not trusted, and crashes nothing.
    for garbage in [f64::NAN, -1.0, f64::INFINITY, f64::MAX] {
        up(&mut obs, Member::Secondary, garbage);
        assert_eq!(
            takeover(&decide(&s, Some(&current), &obs, &clock())).map(|t| t.0),
            Some(Member::Secondary),
            "uptime {garbage}"
        );
    }
}

#[test]
fn a_peer_that_holds_everything_the_answering_holder_has_need_not_wait() {
    // The primary's agent answers but its application is down; the
    // secondary came back after the primary's last renewal with all its
    // files.
    let s = spec(FILES);
    let current = registered();
    let mut obs = both_were_down();
    primary_back(&mut obs);
    obs.primary.pod.as_mut().unwrap().uid = "primary-uid".into();
    obs.primary.agent.last.as_mut().unwrap().app_healthy = Some(false);
    at(&mut obs, Member::Secondary, 3, 50);
    assert_eq!(takeover(&decide(&s, Some(&current), &obs, &clock())).map(|t| t.0), Some(Member::Secondary));
    // Behind it: it waits for the primary's application.
    at(&mut obs, Member::Secondary, 3, 49);
    assert_eq!(takeover(&decide(&s, Some(&current), &obs, &clock())), None);
}

/// A pair created again over retained claims: no Lease, no status, agents
/// that never served in this life; only their files remember.
fn recreated() -> Observed {
    let mut obs = enabled();
    obs.lease = None;
    for m in Member::BOTH {
        let a = obs.member_mut(m).agent.last.as_mut().unwrap();
        (a.role, a.epoch) = (Role::Standby, 0);
    }
    at(&mut obs, Member::Primary, 6, 30);
    at(&mut obs, Member::Secondary, 7, 50);
    obs
}

fn created(plan: &Decision) -> Option<(Member, i64, bool)> {
    match &plan.lease {
        Some(LeaseAction::Create { holder, epoch, lossy, .. }) => Some((*holder, *epoch, *lossy)),
        _ => None,
    }
}

#[test]
fn a_pair_created_again_over_its_claims_goes_on_from_the_newest_files_past_their_epoch() {
    let s = spec(FILES);
    let none: Option<&HighAvailabilityPairStatus> = None;
    let obs = recreated();
    assert_eq!(created(&decide(&s, none, &obs, &clock())), Some((Member::Secondary, 8, false)));

    // Only the older one is back: it waits for the other, then starts with
    // data loss recorded.
    let mut obs = recreated();
    obs.secondary.pod = None;
    obs.secondary.agent = Default::default();
    let plan = decide(&s, none, &obs, &clock());
    assert_eq!(created(&plan), None, "waits for the member that may be newer");
    assert!(plan.recheck <= crate::operator::cold_start::wait_for_other(&s));
    obs.without_lease_for = crate::operator::cold_start::wait_for_other(&s);
    let plan = decide(&s, none, &obs, &clock());
    assert_eq!(created(&plan), Some((Member::Primary, 7, true)));
    assert!(plan.status.history[0].data_loss_possible);

    // Both back at the same point: nothing to tell apart, the primary.
    let mut obs = recreated();
    at(&mut obs, Member::Primary, 7, 50);
    assert_eq!(created(&decide(&s, none, &obs, &clock())), Some((Member::Primary, 8, false)));
    // ... and with one of the two still starting, the other at once.
    obs.primary.agent.last.as_mut().unwrap().app_healthy = Some(false);
    assert_eq!(created(&decide(&s, none, &obs, &clock())), Some((Member::Secondary, 8, false)));
}

#[test]
fn a_volume_that_remembers_a_later_epoch_does_not_make_a_live_lease_look_edited() {
    // Files restored from elsewhere (or a record the application wrote on
    // its volume) say epoch 50; the Lease and the status are at 1. Nothing
    // is rewritten; only a Lease created anew goes past it.
    let s = spec(FILES);
    let mut obs = enabled();
    at(&mut obs, Member::Secondary, 50, 7);
    let current = HighAvailabilityPairStatus { epoch: 1, active_member: Some(Member::Primary), ..registered() };
    assert_eq!(decide(&s, Some(&current), &obs, &clock()).lease, None);
    obs.lease = None;
    assert!(matches!(created(&decide(&s, Some(&current), &obs, &clock())), Some((_, 51, _))));
    // Garbage past what a Lease can count is not believed.
    at(&mut obs, Member::Secondary, i64::MAX, 7);
    assert!(matches!(created(&decide(&s, Some(&current), &obs, &clock())), Some((Member::Primary, 2, false))));
}

// After a lossy failover (a cold start's wait ends in one), the member that
// comes back is not in sync before its first complete pull.
#[test]
fn after_a_lossy_failover_the_other_member_is_not_in_sync_before_a_complete_pull_since() {
    use crate::api::Transition;
    use chrono::{DateTime, Utc};
    let s = spec(FILES);
    // The secondary took over at epoch 2 with data loss possible; the
    // primary is back as standby, its files still at epoch 1 and a
    // generation (14) the secondary's own count has passed (it reports no
    // lag for it): nothing has compared the two yet.
    let mut status = registered();
    let t = Transition {
        type_: TransitionType::Failover,
        from: Some(Member::Primary),
        to: Some(Member::Secondary),
        epoch: 2,
        reason: "LeaseExpired".into(),
        message: None,
        time: Utc::now(),
        detection_millis: None,
        lease_to_selector_millis: None,
        data_loss_possible: true,
        operation_id: None,
    };
    status.last_transition = Some(t.clone());
    status.history = vec![t];
    let mut obs = enabled();
    obs.primary = member(Member::Primary, Role::Standby, Some(true));
    obs.secondary = member(Member::Secondary, Role::Active, Some(true));
    obs.lease = Some(lease(Member::Secondary, 2, Duration::ZERO));
    for m in Member::BOTH {
        obs.member_mut(m).agent.last.as_mut().unwrap().epoch = 2;
    }
    let active =
        SyncStatus { point: Point { epoch: 2, generation: 20 }, peer_lag_seconds: Some(0.0), ..Default::default() };
    obs.secondary.agent.last.as_mut().unwrap().sync = Some(active);
    let standby = SyncStatus { point: Point { epoch: 1, generation: 14 }, ..Default::default() };
    obs.primary.agent.last.as_mut().unwrap().sync = Some(standby);
    let plan = decide(&s, Some(&status), &obs, &clock());
    assert_eq!(condition(&plan, "Synced"), (ConditionStatus::False, "Behind".to_string()));
    let took_over = plan.status.last_transition.as_ref().unwrap().time;
    let pulled = |obs: &mut Observed, at: DateTime<Utc>, point: Point| {
        let sync = obs.primary.agent.last.as_mut().unwrap().sync.as_mut().unwrap();
        (sync.in_sync_at, sync.point) = (Some(at), point);
    };
    // A complete pull from before the takeover compared nothing with it.
    pulled(&mut obs, took_over - chrono::TimeDelta::seconds(5), Point { epoch: 1, generation: 14 });
    assert_eq!(condition(&decide(&s, Some(&plan.status), &obs, &clock()), "Synced").0, ConditionStatus::False);
    // Its first complete pull since: its files matched the active's (the
    // point need not be at the new epoch: an active that wrote nothing
    // since still holds the older one).
    pulled(&mut obs, took_over + chrono::TimeDelta::seconds(1), Point { epoch: 1, generation: 12 });
    assert_eq!(
        condition(&decide(&s, Some(&plan.status), &obs, &clock()), "Synced"),
        (ConditionStatus::True, "InSync".to_string())
    );
    // A planned handover (nothing lost) is not held to that: the old
    // active's files are the new one's starting point.
    let mut planned = plan.status.clone();
    planned.last_transition.as_mut().unwrap().data_loss_possible = false;
    obs.primary.agent.last.as_mut().unwrap().sync.as_mut().unwrap().in_sync_at = None;
    assert_eq!(condition(&decide(&s, Some(&planned), &obs, &clock()), "Synced").0, ConditionStatus::True);
}
