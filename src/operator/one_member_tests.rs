//! One member by configuration (`spec.standby: Removed`, the manuals'
//! "remove HA") and adding the standby back (registration), decided
//! without a cluster.

use std::time::Duration;

use super::decide;
use super::tests::{clock, condition, enabled, op_status, registered, spec, with_op};
use crate::api::{ConditionStatus, Member, MemberState, Mode, OperationPhase, Role};
use crate::operator::model::{Decision, LeaseAction};
use crate::proto::SyncStatus;

const FILES: &str = "storage: {size: 1Gi, mountPath: /data}\nfileSync: {paths: [{path: .}]}";

fn removed(extra: &str) -> crate::api::HighAvailabilityPairSpec {
    spec(&format!("{FILES}\nstandby: Removed\n{extra}"))
}

fn states(plan: &Decision) -> Vec<MemberState> {
    plan.status.members.iter().map(|m| m.state).collect()
}

#[test]
fn removing_the_standby_stops_it_and_the_active_serves_alone_without_standby_alarms() {
    let plan = decide(&removed(""), Some(&registered()), &enabled(), &clock());
    let s = &plan.status;
    assert_eq!(
        (s.removed_member, s.mode, s.active_member),
        (Some(Member::Secondary), Some(Mode::NotConfigured), Some(Member::Primary))
    );
    assert_eq!(plan.lease, None, "the Lease stays where it is");
    assert_eq!(plan.vip, Some(Member::Primary));
    assert_eq!(plan.standby, None, "the standby Service reaches nobody");
    assert_eq!(states(&plan), [MemberState::StandAlone, MemberState::StandAlone]);
    assert_eq!(condition(&plan, "Available"), (ConditionStatus::True, "ActiveServing".into()));
    assert_eq!(condition(&plan, "Ready"), (ConditionStatus::False, "NotConfigured".into()));
    assert_eq!(condition(&plan, "Degraded").0, ConditionStatus::False, "a removed member is no degradation");
    assert_eq!(condition(&plan, "Synced"), (ConditionStatus::False, "StandbyRemoved".into()));
    assert_eq!(condition(&plan, "StandbyOutage").0, ConditionStatus::False);
    let secondary = &s.members[1];
    assert_eq!((secondary.sync_lag_seconds, secondary.last_seen_time), (None, None));
    assert!(plan.events.iter().any(|e| e.reason == "ModeNotConfigured" && !e.warning), "{:?}", plan.events);

    // The removed member is the standby of the moment, not the secondary by
    // configuration.
    let mut obs = enabled();
    let l = obs.lease.as_mut().unwrap();
    (l.holder, l.epoch) = (Some((Member::Secondary, "secondary-uid".into())), 2);
    for (m, role) in [(Member::Primary, Role::Standby), (Member::Secondary, Role::Active)] {
        let a = obs.member_mut(m).agent.last.as_mut().unwrap();
        (a.role, a.epoch) = (role, 2);
    }
    let plan = decide(&removed(""), Some(&registered()), &obs, &clock());
    assert_eq!(plan.status.removed_member, Some(Member::Primary));
}

#[test]
fn a_pair_of_one_never_moves_the_role_to_the_removed_member() {
    let current = decide(&removed(""), Some(&registered()), &enabled(), &clock()).status;
    // The active's application fails while the removed member's pod is
    // still there and healthy (its deletion not yet seen): no failover.
    let mut obs = enabled();
    obs.primary.pod.as_mut().unwrap().app_down = true;
    let plan = decide(&removed(""), Some(&current), &obs, &clock());
    assert_eq!(plan.lease, None, "{:?}", plan.lease);
    assert_eq!(condition(&plan, "FailoverRequired"), (ConditionStatus::True, "NoStandbyAvailable".into()));
    // Its pod replaced: it takes the role back itself, a restart.
    let mut obs = enabled();
    obs.primary.pod.as_mut().unwrap().uid = "primary-uid-2".into();
    obs.primary.agent.last.as_mut().unwrap().pod_uid = "primary-uid-2".into();
    obs.lease.as_mut().unwrap().unchanged_for = Duration::from_secs(5);
    let plan = decide(&removed(""), Some(&current), &obs, &clock());
    assert!(matches!(&plan.lease, Some(LeaseAction::Takeover { to: Member::Primary, .. })), "{:?}", plan.lease);
    // Requests that move the role or copy files are refused, saying why.
    for op in ["{id: r1, switchover: {}}", "{id: r2, failover: {force: true}}", "{id: r3, resync: {}}"] {
        let s = with_op(&format!("{FILES}\nstandby: Removed"), op);
        let plan = decide(&s, Some(&current), &enabled(), &clock());
        let o = op_status(&plan);
        assert_eq!((o.phase, o.reason.as_deref()), (OperationPhase::Refused, Some("StandbyRemoved")), "{op}");
        assert!(o.message.as_deref().unwrap().contains("spec.standby"), "{o:?}");
        assert_eq!(plan.lease, None);
    }
}

#[test]
fn adding_the_standby_back_registers_it_until_it_holds_the_active_members_files() {
    let s = spec(FILES);
    let alone = decide(&removed(""), Some(&registered()), &enabled(), &clock()).status;
    // The standby is back but has not copied yet: a registration.
    let mut obs = enabled();
    obs.primary.agent.last.as_mut().unwrap().sync =
        Some(SyncStatus { peer_lag_seconds: Some(40.0), ..Default::default() });
    obs.secondary.agent.last.as_mut().unwrap().sync = Some(SyncStatus::default());
    let plan = decide(&s, Some(&alone), &obs, &clock());
    assert_eq!((plan.status.removed_member, plan.status.mode), (None, Some(Mode::Initializing)));
    assert_eq!(states(&plan), [MemberState::HaInitializing, MemberState::HaInitializing]);
    // Synced: enabled.
    obs.primary.agent.last.as_mut().unwrap().sync =
        Some(SyncStatus { peer_lag_seconds: Some(0.0), ..Default::default() });
    let plan = decide(&s, Some(&plan.status), &obs, &clock());
    assert_eq!(plan.status.mode, Some(Mode::Enabled));
    assert_eq!(states(&plan), [MemberState::PrimaryActive, MemberState::SecondarySyncing]);
}
