//! The failover gates (sync lag, flap budget) and the epoch of a Lease
//! that has to be recreated, without a cluster.

use std::time::Duration;

use chrono::Utc;

use super::tests::{clock, condition, enabled, lease, member, op_status, spec, takeover, with_op};
use super::*;
use crate::api::{ConditionStatus, MAX_HISTORY, OperationPhase, Role};

#[test]
fn max_sync_lag_holds_back_an_automatic_failover_to_a_standby_too_far_behind() {
    let s = spec(
        "storage: {size: 1Gi, mountPath: /data}\nfileSync: {paths: [{path: .}]}\nfailover: {maxSyncLagSeconds: 30}",
    );
    let lagging = |lag: f64| {
        let mut obs = enabled();
        obs.primary.pod.as_mut().unwrap().deleting = true;
        let a = obs.primary.agent.last.as_mut().unwrap();
        a.sync = Some(crate::proto::SyncStatus { peer_lag_seconds: Some(lag), ..Default::default() });
        obs
    };
    let plan = decide(&s, None, &lagging(45.0), &clock());
    assert_eq!(plan.lease, None, "45 s behind, limit 30 s");
    assert_eq!(condition(&plan, "FailoverRequired").1, "SyncLagTooHigh");
    let plan = decide(&s, None, &lagging(12.0), &clock());
    assert!(takeover(&plan).is_some());
    let Some(LeaseAction::Takeover { transition, .. }) = plan.lease else { panic!() };
    assert!(transition.data_loss_possible, "12 s behind: what the old active had since may be missing");
    // Lag 0 in an answer from after the failure was seen: nothing the old
    // active acknowledged can be missing.
    let mut caught_up = lagging(0.0);
    caught_up.failure_for = Some(Duration::from_millis(1500));
    caught_up.primary.agent.since_answer = Some(Duration::from_millis(200));
    let Some(LeaseAction::Takeover { transition, .. }) = decide(&s, None, &caught_up, &clock()).lease else { panic!() };
    assert!(!transition.data_loss_possible, "a standby that had everything loses nothing");
    // The same lag 0 from before the failure: the application may have
    // acknowledged writes since, which the standby never pulled.
    caught_up.primary.agent.since_answer = Some(Duration::from_millis(1800));
    let Some(LeaseAction::Takeover { transition, .. }) = decide(&s, None, &caught_up, &clock()).lease else { panic!() };
    assert!(transition.data_loss_possible, "lag 0 from before the failure proves nothing");
    // Without file sync the limit has nothing to measure and does not apply.
    assert!(takeover(&decide(&spec("failover: {maxSyncLagSeconds: 30}"), None, &lagging(45.0), &clock())).is_some());
}

#[test]
fn a_lease_edited_by_hand_is_written_again_past_the_highest_epoch_for_the_member_that_served() {
    let s = spec("");
    // Epoch 3, primary active, as the status recorded.
    let mut obs = enabled();
    obs.lease.as_mut().unwrap().epoch = 3;
    for m in Member::BOTH {
        obs.member_mut(m).agent.last.as_mut().unwrap().epoch = 3;
    }
    let current = HighAvailabilityPairStatus { epoch: 3, active_member: Some(Member::Primary), ..Default::default() };
    assert_eq!(decide(&s, Some(&current), &obs, &clock()).lease, None, "as the operator left it");
    let restored = |o: &Observed| match decide(&s, Some(&current), o, &clock()).lease {
        Some(LeaseAction::Restore { holder, epoch, edit, expected_rv, .. }) => {
            assert_eq!(expected_rv, "42", "a compare-and-swap on what was read");
            Some((holder, epoch, edit))
        }
        other => panic!("{other:?}"),
    };
    // The holder changed to the standby at the same epoch.
    let mut edited = obs.clone();
    edited.lease.as_mut().unwrap().holder = Some((Member::Secondary, "secondary-uid".into()));
    let (holder, epoch, edit) = restored(&edited).unwrap();
    assert_eq!((holder, epoch), (Member::Primary, 4));
    assert!(edit.contains("holder was changed to secondary at epoch 3"), "{edit}");
    let plan = decide(&s, Some(&current), &edited, &clock());
    let t = &plan.status.history[0];
    assert_eq!((t.epoch, t.reason.as_str(), t.to), (4, "LeaseRestored", Some(Member::Primary)));
    assert_eq!((plan.status.epoch, plan.vip), (4, Some(Member::Primary)));
    assert!(plan.events.iter().any(|e| e.warning && e.reason == "LeaseRestored"));
    // The holder cleared without a release (an agent always says why).
    let mut cleared = obs.clone();
    cleared.lease.as_mut().unwrap().holder = None;
    assert_eq!(restored(&cleared).unwrap().0, Member::Primary);
    cleared.lease.as_mut().unwrap().released_reason = Some("AppHealthCheckFailed".into());
    cleared.lease.as_mut().unwrap().released_by = Some(Member::Primary);
    assert!(
        !matches!(decide(&s, Some(&current), &cleared, &clock()).lease, Some(LeaseAction::Restore { .. })),
        "a release is the agent's, not an edit"
    );
    // The epoch set back: past the highest recorded, for the same member.
    let mut back = obs.clone();
    back.lease.as_mut().unwrap().epoch = 0;
    let (holder, epoch, edit) = restored(&back).unwrap();
    assert_eq!((holder, epoch), (Member::Primary, 4));
    assert!(edit.contains("set back to 0"), "{edit}");
    // A later epoch under a new holder is how the operator moves the role
    // (its status write may not have landed yet): not an edit.
    let mut moved = obs.clone();
    let l = moved.lease.as_mut().unwrap();
    (l.epoch, l.holder) = (4, Some((Member::Secondary, "secondary-uid".into())));
    assert!(!matches!(decide(&s, Some(&current), &moved, &clock()).lease, Some(LeaseAction::Restore { .. })));
}

#[test]
fn a_deleted_lease_comes_back_past_the_highest_epoch_for_the_member_that_served() {
    let s = spec("");
    // Epoch 3, secondary active; then the Lease is deleted.
    let mut obs = enabled();
    obs.lease = None;
    for (m, role) in [(Member::Primary, Role::Standby), (Member::Secondary, Role::Active)] {
        let a = obs.member_mut(m).agent.last.as_mut().unwrap();
        (a.role, a.epoch) = (role, 3);
    }
    let current = HighAvailabilityPairStatus { epoch: 3, active_member: Some(Member::Secondary), ..Default::default() };
    let plan = decide(&s, Some(&current), &obs, &clock());
    assert_eq!(
        plan.lease,
        Some(LeaseAction::Create {
            holder: Member::Secondary,
            pod_uid: "secondary-uid".into(),
            epoch: 4,
            lossy: false
        }),
        "not a bootstrap at epoch 1 for the primary"
    );
    let t = &plan.status.history[0];
    assert_eq!((t.epoch, t.reason.as_str(), t.to), (4, "LeaseRecreated", Some(Member::Secondary)));
    assert_eq!(plan.status.epoch, 4);

    // The status was lost too (a restore): the members' reports still count.
    let a = obs.secondary.agent.last.as_mut().unwrap();
    a.epoch = 7;
    let plan = decide(&s, None, &obs, &clock());
    assert!(
        matches!(plan.lease, Some(LeaseAction::Create { holder: Member::Secondary, epoch: 8, .. })),
        "{:?}",
        plan.lease
    );

    // The one that served cannot serve now: the other member, still past
    // it, once the first has had its time to come back (its files may be
    // newer, which the transition records).
    obs.secondary.agent.last.as_mut().unwrap().app_healthy = Some(false);
    assert_eq!(decide(&s, Some(&current), &obs, &clock()).lease, None, "waits for the member that served");
    obs.without_lease_for = crate::operator::cold_start::wait_for_other(&s);
    let plan = decide(&s, Some(&current), &obs, &clock());
    assert!(
        matches!(plan.lease, Some(LeaseAction::Create { holder: Member::Primary, epoch: 8, lossy: true, .. })),
        "{:?}",
        plan.lease
    );
    assert!(plan.status.history[0].data_loss_possible);
    assert!(plan.status.history[0].message.as_deref().unwrap().contains("secondary did not return"));

    // A member reporting an epoch no Lease can hold is not believed.
    let mut liar = obs.clone();
    liar.primary.agent.last.as_mut().unwrap().epoch = i64::MAX;
    let plan = decide(&s, Some(&current), &liar, &clock());
    assert!(matches!(plan.lease, Some(LeaseAction::Create { epoch: 8, .. })), "{:?}", plan.lease);

    // Nobody can serve: wait, never a Lease for a member that cannot act on it.
    obs.primary.agent.missed = 5;
    assert_eq!(decide(&s, Some(&current), &obs, &clock()).lease, None);
}

#[test]
fn a_failover_request_honours_max_sync_lag_unless_forced_and_says_when_data_may_be_missing() {
    let files =
        "storage: {size: 1Gi, mountPath: /data}\nfileSync: {paths: [{path: .}]}\nfailover: {maxSyncLagSeconds: 30}";
    let lagging = |lag: f64| {
        let mut obs = enabled();
        let a = obs.primary.agent.last.as_mut().unwrap();
        a.sync = Some(crate::proto::SyncStatus { peer_lag_seconds: Some(lag), ..Default::default() });
        obs
    };
    let request = |force: bool| with_op(files, &format!("{{id: fo-1, failover: {{force: {force}}}}}"));
    let plan = decide(&request(false), None, &lagging(45.0), &clock());
    assert_eq!(plan.lease, None, "45 s behind, limit 30 s");
    let op = op_status(&plan);
    assert_eq!((op.phase, op.reason.as_deref()), (OperationPhase::Refused, Some("SyncLagTooHigh")));
    assert!(op.message.as_deref().unwrap().contains("forced failover"), "{:?}", op.message);
    let data_loss = |plan: &Decision| match &plan.lease {
        Some(LeaseAction::Takeover { transition, .. }) => transition.data_loss_possible,
        other => panic!("no takeover: {other:?}"),
    };
    assert!(data_loss(&decide(&request(true), None, &lagging(45.0), &clock())), "forced: taken, and said");
    assert!(data_loss(&decide(&request(false), None, &lagging(12.0), &clock())), "12 s behind: may be missing");
    // Lag 0 in the last report proves nothing: the active serves on until
    // it is told, and the standby never pulls what it takes meanwhile.
    assert!(data_loss(&decide(&request(false), None, &lagging(0.0), &clock())), "the active serves on");
    let mut unknown = lagging(0.0);
    unknown.primary.agent.last.as_mut().unwrap().sync = None;
    assert!(data_loss(&decide(&request(false), None, &unknown, &clock())), "lag unknown: may be missing");
    assert!(!data_loss(&decide(&with_op("", "{id: fo-1, failover: {}}"), None, &enabled(), &clock())), "no file sync");
}

#[test]
fn the_flap_budget_counts_past_the_twenty_transitions_the_history_keeps() {
    let s = spec("failover: {flapBudget: {maxAutomaticFailovers: 25, windowSeconds: 3600}}");
    let failing = |holder: Member, epoch: i64| {
        let mut obs = enabled();
        obs.lease = Some(lease(holder, epoch, Duration::from_secs(1)));
        *obs.member_mut(holder) = member(holder, Role::Active, Some(true));
        *obs.member_mut(holder.peer()) = member(holder.peer(), Role::Standby, Some(true));
        obs.member_mut(holder).pod.as_mut().unwrap().deleting = true;
        obs
    };
    let (mut status, mut holder) = (None, Member::Primary);
    for epoch in 1..=25 {
        let plan = decide(&s, status.as_ref(), &failing(holder, epoch), &clock());
        assert_eq!(takeover(&plan).map(|t| t.0), Some(holder.peer()), "failover {epoch} of 25 allowed");
        status = Some(plan.status);
        holder = holder.peer();
    }
    let s25 = status.as_ref().unwrap();
    assert_eq!((s25.history.len(), s25.automatic_failovers.len()), (MAX_HISTORY, 25));
    let plan = decide(&s, status.as_ref(), &failing(holder, 26), &clock());
    assert_eq!(plan.lease, None, "the 26th within the hour is held back");
    assert_eq!(condition(&plan, "FailoverRequired"), (ConditionStatus::True, "FlapBudgetExhausted".into()));
    // An hour later the window has moved on.
    let later = RoundInputs { now: Utc::now() + chrono::Duration::seconds(3601), ..clock() };
    assert!(takeover(&decide(&s, status.as_ref(), &failing(holder, 26), &later)).is_some());
}

#[test]
fn a_lease_moved_by_an_operator_that_died_before_its_status_write_enters_the_history_late() {
    let files = spec("storage: {size: 1Gi, mountPath: /data}\nfileSync: {paths: [{path: .}]}");
    // The status recorded epoch 3 with the primary active; the Lease is at 4
    // for the secondary, moved for the switchover `sw-1` the status shows.
    let mut obs = enabled();
    obs.lease = Some(lease(Member::Secondary, 4, Duration::from_secs(1)));
    obs.lease.as_mut().unwrap().operation_id = Some("sw-1".into());
    obs.primary.agent.last.as_mut().unwrap().role = Role::Standby;
    obs.secondary.agent.last.as_mut().unwrap().role = Role::Active;
    for m in Member::BOTH {
        obs.member_mut(m).agent.last.as_mut().unwrap().epoch = 4;
    }
    let recorded = crate::api::Transition {
        type_: crate::api::TransitionType::Bootstrap,
        from: None,
        to: Some(Member::Primary),
        epoch: 3,
        reason: "BothMembersUp".into(),
        message: None,
        time: Utc::now(),
        detection_millis: None,
        lease_to_selector_millis: None,
        data_loss_possible: false,
        operation_id: None,
    };
    let mut current = HighAvailabilityPairStatus {
        epoch: 3,
        active_member: Some(Member::Primary),
        history: vec![recorded],
        ..Default::default()
    };
    let op = serde_json::json!({"id": "sw-1", "kind": "Switchover", "phase": "Running"});
    current.operations.push(serde_json::from_value(op).unwrap());
    let plan = decide(&files, Some(&current), &obs, &clock());
    let t = &plan.status.history[0];
    assert_eq!(
        (t.type_, t.epoch, t.to, t.reason.as_str()),
        (crate::api::TransitionType::Switchover, 4, Some(Member::Secondary), "RecordedLate")
    );
    assert!(!t.data_loss_possible, "a switchover drained first");
    assert!(plan.events.iter().any(|e| e.warning && e.reason == "TransitionRecordedLate"));
    // Recorded once: the next round finds it in the history.
    let again = decide(&files, Some(&plan.status), &obs, &clock());
    assert_eq!(again.status.history.iter().filter(|t| t.epoch == 4).count(), 1);
    // Without a request the move is taken for an automatic failover, which
    // with file sync may have lost what the standby had not pulled.
    obs.lease.as_mut().unwrap().operation_id = None;
    let plan = decide(&files, Some(&current), &obs, &clock());
    let t = &plan.status.history[0];
    assert_eq!((t.type_, t.reason.as_str()), (crate::api::TransitionType::Failover, "RecordedLate"));
    assert!(t.data_loss_possible);
}
