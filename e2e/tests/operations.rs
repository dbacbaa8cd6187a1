//! Operations requested in the pair (`spec.operation`, `spec.paused`) on the
//! real control plane, with the safety checker running throughout.

mod common;
#[path = "../harness/mod.rs"]
mod harness;

use std::time::Duration;

use hapair::api::{ConditionStatus, HighAvailabilityPair, Member, MemberState, OperationPhase, TransitionType};
use harness::{Harness, Kill, test_pair};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(30);

fn op_phase(p: &HighAvailabilityPair, id: &str) -> Option<OperationPhase> {
    p.status.as_ref()?.operations.iter().find(|o| o.id == id).map(|o| o.phase)
}

async fn request(h: &Harness, id: &str, action: serde_json::Value) -> HighAvailabilityPair {
    let mut op = json!({"id": id});
    common::merge(&mut op, &action);
    h.merge_spec("web", json!({"operation": op})).await;
    h.wait_for("web", &format!("operation {id} to finish"), WAIT, |p| {
        op_phase(p, id).is_some_and(|ph| ph.is_terminal())
    })
    .await
}

async fn up(name: &str, extra: serde_json::Value) -> Harness {
    let h = Harness::new(name).await;
    h.apply(&test_pair("web", 1, extra)).await;
    h.wait_enabled("web", Duration::from_secs(60)).await;
    h
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switchover_and_back_twenty_times_under_writes_never_makes_two_actives() {
    let h = up("switchover", json!({})).await;
    let checker = h.checker("web").await;
    let writer = h.writer("web").await;
    let mut expect = Member::Secondary;
    for i in 0..20 {
        let p = request(&h, &format!("sw-{i}"), json!({"switchover": {}})).await;
        assert_eq!(
            op_phase(&p, &format!("sw-{i}")),
            Some(OperationPhase::Succeeded),
            "{:?}",
            p.status.unwrap().operations
        );
        let s = p.status.unwrap();
        assert_eq!(s.active_member, Some(expect));
        assert_eq!(s.epoch, i + 2);
        let t = s.last_transition.unwrap();
        assert_eq!(
            (t.type_, t.operation_id.as_deref()),
            (TransitionType::Switchover, Some(format!("sw-{i}").as_str()))
        );
        expect = expect.peer();
    }
    let log = writer.stop().await;
    assert!(log.acknowledged.len() > 50, "writes went on: {log:?}");
    eprintln!("20 switchovers: longest client outage {:?}", log.longest_outage);
    assert_eq!(checker.both_active_samples(), 0, "a planned handover never has two actives");
    checker.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_request_performs_what_manual_mode_held_back() {
    let h = up("manual-op", json!({"spec": {"failover": {"mode": "Manual"}}})).await;
    let checker = h.checker("web").await;
    h.kill("web", Member::Primary, Kill::Freeze).await;
    h.wait_for("web", "FailoverRequired", WAIT, |p| {
        p.status.as_ref().is_some_and(|s| {
            s.conditions.iter().any(|c| c.type_ == "FailoverRequired" && c.status == ConditionStatus::True)
        })
    })
    .await;
    let p = request(&h, "fo-1", json!({"failover": {}})).await;
    assert_eq!(op_phase(&p, "fo-1"), Some(OperationPhase::Succeeded));
    assert_eq!(p.status.unwrap().active_member, Some(Member::Secondary));
    checker.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_pair_reports_a_failure_but_acts_only_once_resumed() {
    let h = up("pause", json!({})).await;
    let checker = h.checker("web").await;
    h.merge_spec("web", json!({"paused": true})).await;
    h.wait_for("web", "Paused", WAIT, |p| p.status.as_ref().is_some_and(|s| s.mode == Some(hapair::api::Mode::Paused)))
        .await;
    h.kill("web", Member::Primary, Kill::Freeze).await;
    h.wait_for("web", "the failure reported", WAIT, |p| {
        p.status.as_ref().is_some_and(|s| {
            s.conditions
                .iter()
                .any(|c| c.type_ == "FailoverRequired" && c.status == ConditionStatus::True && c.reason == "Paused")
        })
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let p = h.pair("web").await;
    assert_eq!(p.status.as_ref().unwrap().epoch, 1, "nothing happens while paused");
    let refused = request(&h, "sw-paused", json!({"switchover": {}})).await;
    assert_eq!(op_phase(&refused, "sw-paused"), Some(OperationPhase::Refused));
    h.merge_spec("web", json!({"paused": false})).await;
    let p = h
        .wait_for("web", "failover after resume", WAIT, |p| {
            p.status.as_ref().is_some_and(|s| s.active_member == Some(Member::Secondary))
        })
        .await;
    assert_eq!(p.status.unwrap().epoch, 2);
    checker.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_plugin_shows_the_pair_and_drives_operations_to_their_outcome() {
    let h = up("plugin", json!({})).await;
    let checker = h.checker("web").await;
    let ns = h.ns.name.clone();
    let (ok, out, _) = tokio::task::block_in_place(|| h.plugin(&["status", "web"]));
    assert!(ok);
    assert!(
        out.contains(&format!("Pair {ns}/web")) && out.contains("mode Enabled") && out.contains("epoch 1"),
        "{out}"
    );
    assert!(out.contains("PrimaryActive") && out.contains("SecondarySyncing") && out.contains("web-primary"), "{out}");
    // The VIP line says what the Service's EndpointSlice routes to, as the
    // operator read it back (one reconcile after it wrote it).
    let start = std::time::Instant::now();
    let mut out = out;
    while !out.contains("VIP  Service web -> primary (web-primary, ") {
        assert!(start.elapsed() < Duration::from_secs(10), "{out}");
        tokio::time::sleep(Duration::from_millis(200)).await;
        out = tokio::task::block_in_place(|| h.plugin(&["status", "web"])).1;
    }

    let (ok, out, err) = tokio::task::block_in_place(|| h.plugin(&["switchover", "web", "--wait"]));
    assert!(ok, "{out}{err}");
    assert!(out.contains("succeeded") && err.contains("Running"), "progress and outcome: {out} {err}");
    let (ok, out, err) = tokio::task::block_in_place(|| h.plugin(&["failback", "web", "--wait"]));
    assert!(ok, "{out}{err}");
    let (ok, _, err) = tokio::task::block_in_place(|| h.plugin(&["failback", "web", "--wait"]));
    assert!(!ok && err.contains("Refused") && err.contains("AlreadyOnPrimary"), "{err}");

    let (ok, out, _) = tokio::task::block_in_place(|| h.plugin(&["events", "web"]));
    assert!(ok && out.contains("Switchover") && out.contains("Failback") && out.contains("Bootstrap"), "{out}");
    let (ok, out, _) = tokio::task::block_in_place(|| h.plugin(&["events", "web", "-o", "json"]));
    let rows: Vec<serde_json::Value> = serde_json::from_str(&out).expect("events -o json is a JSON list");
    let transitions: Vec<&str> =
        rows.iter().filter(|r| r["source"] == "transition").filter_map(|r| r["type"].as_str()).collect();
    assert!(ok && transitions.starts_with(&["Failback", "Switchover"]), "newest first: {out}");
    assert!(rows.iter().any(|r| r["source"] == "event" && r["reason"].is_string()), "Events too: {out}");
    let (ok, yaml, _) = tokio::task::block_in_place(|| h.plugin(&["events", "web", "-o", "yaml"]));
    let same: Vec<serde_json::Value> = serde_yaml::from_str(&yaml).expect("events -o yaml is a YAML list");
    assert!(ok && same.len() >= transitions.len() && same[0]["time"].is_string(), "{yaml}");
    let (ok, out, _) = tokio::task::block_in_place(|| h.plugin(&["status", "web", "-o", "json"]));
    let v: serde_json::Value = serde_json::from_str(&out).expect("status -o json is JSON");
    assert!(ok && v["status"]["epoch"] == 3, "{v}");

    let (ok, _, err) = tokio::task::block_in_place(|| h.plugin(&["status", "nosuch"]));
    assert!(!ok && err.trim() == format!("error: pair nosuch not found in namespace {ns}"), "{err}");
    let (ok, _, err) = tokio::task::block_in_place(|| h.plugin(&["go-standby", "web", "tertiary"]));
    assert!(!ok && err.contains("expected primary or secondary"), "{err}");
    let (ok, out, _) = tokio::task::block_in_place(|| h.plugin(&["pause", "web"]));
    assert!(ok && out.contains("paused"), "{out}");
    assert!(h.pair("web").await.spec.paused);
    let (ok, _, _) = tokio::task::block_in_place(|| h.plugin(&["resume", "web"]));
    assert!(ok && !h.pair("web").await.spec.paused);
    checker.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_switchover_racing_an_automatic_failover_has_one_winner_and_a_reasoned_refusal() {
    let h = up("race", json!({})).await;
    let checker = h.checker("web").await;
    h.merge_spec("web", json!({"operation": {"id": "sw-race", "switchover": {}}})).await;
    h.kill("web", Member::Primary, Kill::App).await;
    let p = h
        .wait_for("web", "the race to settle", WAIT, |p| op_phase(p, "sw-race").is_some_and(|ph| ph.is_terminal()))
        .await;
    let s = p.status.clone().unwrap();
    let op = s.operations.iter().find(|o| o.id == "sw-race").unwrap();
    let moved = s.history.iter().filter(|t| t.epoch > 1).count();
    assert_eq!(moved, 1, "exactly one move: {:?}", s.history);
    match op.phase {
        OperationPhase::Succeeded => assert_eq!(s.history[0].type_, TransitionType::Switchover),
        OperationPhase::Refused => {
            assert_eq!(op.reason.as_deref(), Some("Superseded"));
            assert_eq!(s.history[0].type_, TransitionType::Failover);
        }
        other => panic!("unexpected outcome {other:?}: {op:?}"),
    }
    eprintln!("race: operation {:?}, transition {:?}", op.phase, s.history[0].type_);
    checker.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_switchover_survives_an_operator_restart_in_the_middle() {
    let mut h = up("op-restart", json!({})).await;
    let checker = h.checker_with_grace("web", Duration::from_secs(8)).await;
    h.merge_spec("web", json!({"operation": {"id": "sw-1", "switchover": {}}})).await;
    h.wait_for("web", "sw-1 running", WAIT, |p| op_phase(p, "sw-1").is_some()).await;
    h.kill_operator(0).await;
    h.start_operator();
    let p = h.wait_for("web", "sw-1 to finish", WAIT, |p| op_phase(p, "sw-1").is_some_and(|ph| ph.is_terminal())).await;
    assert_eq!(op_phase(&p, "sw-1"), Some(OperationPhase::Succeeded), "{:?}", p.status.as_ref().unwrap().operations);
    let s = p.status.unwrap();
    assert_eq!((s.active_member, s.epoch), (Some(Member::Secondary), 2), "moved exactly once");
    checker.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_standby_on_the_active_moves_the_role_and_on_the_standby_changes_nothing() {
    let h = up("go-standby", json!({})).await;
    let checker = h.checker("web").await;
    let writer = h.writer("web").await;
    let p = request(&h, "gs-1", json!({"goStandby": {"member": "primary"}})).await;
    assert_eq!(op_phase(&p, "gs-1"), Some(OperationPhase::Succeeded), "{:?}", p.status.as_ref().unwrap().operations);
    let s = p.status.unwrap();
    assert_eq!((s.active_member, s.epoch), (Some(Member::Secondary), 2));
    let t = s.last_transition.unwrap();
    assert_eq!((t.type_, t.operation_id.as_deref()), (TransitionType::GoStandby, Some("gs-1")));
    // The primary stays standby: go-standby is not a switchover that the
    // operator would undo; it serves the VIP only when asked back.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let p = h.pair("web").await;
    assert_eq!(p.status.as_ref().unwrap().active_member, Some(Member::Secondary));
    // Asking a standby to go standby is done at once and says so.
    let p = request(&h, "gs-2", json!({"goStandby": {"member": "primary"}})).await;
    let op = p.status.as_ref().unwrap().operations.iter().find(|o| o.id == "gs-2").cloned().unwrap();
    assert_eq!((op.phase, op.reason.as_deref()), (OperationPhase::Succeeded, Some("AlreadyStandby")));
    assert_eq!(p.status.unwrap().epoch, 2, "nothing moved");
    writer.wait_epoch(2, WAIT).await;
    let log = writer.stop().await;
    assert!(log.acknowledged.iter().any(|(_, e)| *e == 2), "writes go on at epoch 2 through the VIP: {log:?}");
    assert_eq!(checker.both_active_samples(), 0, "a planned handover never has two actives");
    checker.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn automatic_failback_waits_until_a_flapping_primary_has_been_healthy_for_the_delay() {
    const DELAY: Duration = Duration::from_secs(6);
    let h = up("failback", json!({"spec": {"failback": {"mode": "Automatic", "delaySeconds": 6}}})).await;
    let checker = h.checker("web").await;
    h.kill("web", Member::Primary, Kill::App).await;
    h.wait_for("web", "failover to the secondary", WAIT, |p| {
        p.status.as_ref().is_some_and(|s| s.active_member == Some(Member::Secondary) && s.epoch == 2)
    })
    .await;
    // The primary comes back healthy, then crashes again within a couple of
    // seconds, three times: never healthy for the whole delay.
    let mut last_kill = std::time::Instant::now();
    for round in 0..3 {
        // The kubelet's crash back-off doubles (10 s, 20 s, 40 s): the third
        // restart alone can outlast WAIT on a loaded machine.
        let back = WAIT + Duration::from_secs(45);
        h.wait_for("web", &format!("the primary healthy again ({round})"), back, |p| {
            p.status.as_ref().is_some_and(|s| {
                s.members
                    .iter()
                    .any(|m| m.name == Member::Primary && m.state == MemberState::PrimaryPreparingForFailback)
            })
        })
        .await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let s = h.pair("web").await.status.unwrap();
        assert_eq!((s.active_member, s.epoch), (Some(Member::Secondary), 2), "no failback to a flapping primary");
        h.kill("web", Member::Primary, Kill::App).await;
        last_kill = std::time::Instant::now();
    }
    // Once it stays up, the role goes back to it, not before the delay. The
    // kubelet restarts a container that keeps crashing with a growing
    // back-off (10 s, 20 s, 40 s…): after the fourth crash the primary's
    // application is back only some 40 s later.
    let p = h
        .wait_for("web", "automatic failback", WAIT + Duration::from_secs(60), |p| {
            p.status.as_ref().is_some_and(|s| s.active_member == Some(Member::Primary))
        })
        .await;
    let quiet = last_kill.elapsed();
    assert!(quiet >= DELAY, "failback {quiet:?} after the last crash, within the {DELAY:?} hysteresis");
    let s = p.status.unwrap();
    let t = s.last_transition.unwrap();
    assert_eq!((t.type_, t.reason.as_str(), s.epoch), (TransitionType::Failback, "AutomaticFailback", 3));
    eprintln!("automatic failback {quiet:?} after the primary's last crash");
    checker.assert_clean();
}
