//! Failover scenarios on the testbed's real nodes, and the fencing that
//! keeps them safe (the role file's deadline, the peer's promise).
//! A checker samples every scenario for breaches of the safety invariants.

mod common;
#[path = "../harness/mod.rs"]
mod harness;

use std::time::{Duration, Instant};

use hapair::api::{ConditionStatus, HighAvailabilityPair, Member, MemberState, Mode, TransitionType};
use harness::{Harness, Kill, test_pair};
use serde_json::json;

const BOOT: Duration = Duration::from_secs(60);
const FAILOVER: Duration = Duration::from_secs(30);
/// How long a member that serves may take to acknowledge a write through the VIP.
const WRITABLE: Duration = Duration::from_secs(20);

fn active(p: &HighAvailabilityPair) -> Option<Member> {
    p.status.as_ref().and_then(|s| s.active_member)
}

fn epoch(p: &HighAvailabilityPair) -> i64 {
    p.status.as_ref().map_or(0, |s| s.epoch)
}

fn condition(p: &HighAvailabilityPair, t: &str) -> Option<(ConditionStatus, String)> {
    p.status.as_ref()?.conditions.iter().find(|c| c.type_ == t).map(|c| (c.status, c.reason.clone()))
}

async fn up(name: &str, interval: i32, extra: serde_json::Value) -> Harness {
    let h = Harness::new(name).await;
    h.apply(&test_pair("web", interval, extra)).await;
    h.wait_enabled("web", BOOT).await;
    h.wait_vip_writable("web", WRITABLE).await;
    h
}

impl Harness {
    async fn wait_active(&self, member: Member, min_epoch: i64) -> HighAvailabilityPair {
        self.wait_for("web", &format!("{member} active at epoch >= {min_epoch}"), FAILOVER, |p| {
            active(p) == Some(member) && epoch(p) >= min_epoch
        })
        .await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pair_bootstraps_to_enabled_with_the_primary_active_behind_the_vip() {
    let h = up("boot", 1, json!({})).await;
    let checker = h.checker("web").await;
    // Each agent reports its peer reachable within a heartbeat or two.
    let states = [MemberState::PrimaryActive, MemberState::SecondarySyncing];
    let p = h
        .wait_for("web", "members PrimaryActive and SecondarySyncing", Duration::from_secs(10), |p| {
            p.status.as_ref().is_some_and(|s| s.members.iter().map(|m| m.state).eq(states))
        })
        .await;
    let s = p.status.unwrap();
    assert_eq!(s.active_member, Some(Member::Primary));
    assert_eq!(s.standby_member, Some(Member::Secondary));
    assert_eq!(s.epoch, 1);
    assert_eq!(s.history[0].type_, TransitionType::Bootstrap);
    let (code, body) = h.vip("web", "/write?key=a&value=1").await.unwrap();
    assert_eq!((code, body.as_str()), (200, "epoch=1"));
    // Real pods on real nodes, one member on each.
    let (primary, secondary) =
        (h.member_pod("web", Member::Primary).await, h.member_pod("web", Member::Secondary).await);
    let on = (harness::nodes::node_number(&primary), harness::nodes::node_number(&secondary));
    assert!(on.0.is_some() && on.0 != on.1, "members on nodes {on:?}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    checker.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_active_application_fails_over_at_once_and_the_old_active_returns_as_standby() {
    let h = up("kill-app", 1, json!({})).await;
    let checker = h.checker("web").await;
    let clients = h.clients("web", 3).await;
    let writer = h.writer("web").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    h.kill("web", Member::Primary, Kill::App).await;
    let p = h.wait_active(Member::Secondary, 2).await;
    let t = p.status.unwrap().last_transition.unwrap();
    assert_eq!(t.type_, TransitionType::Failover);
    assert!(
        ["ContainerTerminated", "AppHealthCheckFailed", "LeaseReleased"].contains(&t.reason.as_str()),
        "a confirmed failure, got {}",
        t.reason
    );
    // The old active's application restarts and it rejoins as standby.
    let p = h
        .wait_for("web", "primary back as standby", FAILOVER, |p| {
            p.status.as_ref().is_some_and(|s| {
                s.mode == Some(Mode::Enabled)
                    && s.members
                        .iter()
                        .any(|m| m.name == Member::Primary && m.state == MemberState::PrimaryPreparingForFailback)
            })
        })
        .await;
    assert_eq!(active(&p), Some(Member::Secondary));
    writer.wait_epoch(2, FAILOVER).await;
    let log = writer.stop().await;
    assert!(log.acknowledged.iter().any(|(_, e)| *e == 2), "writes continue at epoch 2");
    eprintln!("confirmed failure: client-visible outage {:?}", log.longest_outage);
    harness::history::assert_sound(&clients.stop().await);
    checker.assert_clean();
}

/// The operator wakes both agents when it moves the Lease; the new holder
/// asks the old one whether it still serves, and may ask before the old one
/// has read the Lease and stood down. Told "yes", it used to wait for its
/// next heartbeat — a whole interval, 5 s at the default — so the old agent
/// now wakes it once it stands down. With a 10 s heartbeat the difference
/// is plain: the new active serves within a few seconds of the kill (the
/// kubelet's report, kube-proxy), not after ten.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_confirmed_failure_promotes_the_standby_without_waiting_for_its_next_heartbeat() {
    let h = up("confirmed-long", 10, json!({})).await;
    let checker = h.checker("web").await;
    // An agent takes over an epoch only one lease duration after its own
    // start (it cannot know what a former life of it promised): past that,
    // as any pair that has run a while.
    tokio::time::sleep(Duration::from_secs(31)).await;
    let start = Instant::now();
    h.kill("web", Member::Primary, Kill::App).await;
    loop {
        if let Ok((200, body)) = h.vip("web", "/role").await
            && body.trim() == "active 2"
        {
            break;
        }
        assert!(start.elapsed() < FAILOVER, "the secondary never served at epoch 2");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let took = start.elapsed();
    eprintln!("confirmed failure at 10 s x 3: the new active serves {took:?} after the kill");
    assert!(took < Duration::from_secs(6), "the new active waited {took:?}, about a heartbeat, to promote");
    checker.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_under_writes_keeps_every_write_the_standby_had_synced() {
    let files = json!({"spec": {
        "storage": {"size": "1Gi", "mountPath": "/data"},
        "fileSync": {"paths": [{"path": "."}], "realtimeIntervalSeconds": 1}
    }});
    let h = up("kill-synced", 1, files).await;
    let checker = h.checker("web").await;
    let writer = h.writer("web").await;
    // Long enough for several pull rounds to carry writes to the standby.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(checker.synced_writes(Member::Secondary) > 0, "the standby never held a synced write");
    h.kill("web", Member::Primary, Kill::App).await;
    let p = h.wait_active(Member::Secondary, 2).await;
    h.wait_vip_writable("web", WRITABLE).await;
    writer.wait_epoch(2, FAILOVER).await;
    let log = writer.stop().await;
    let t = p.status.unwrap().last_transition.unwrap();
    // Writes acknowledged after the standby's last pull may be missing (the
    // sync is asynchronous): the transition must then say so.
    let lost = log.missing_from(&h.data_dir("web", Member::Secondary).await);
    eprintln!(
        "failover with file sync: {} acknowledged, {} not on the new active, dataLossPossible={}",
        log.acknowledged.len(),
        lost.len(),
        t.data_loss_possible
    );
    if !lost.is_empty() {
        assert!(t.data_loss_possible, "{} acknowledged writes lost without dataLossPossible", lost.len());
    }
    // Every write lost is one of the old active's last: within the realtime
    // interval and a pull round of the kill, never an old one.
    let first_epoch2 = log.acknowledged.iter().position(|(_, e)| *e == 2).unwrap_or(log.acknowledged.len());
    let per_second = 1000 / 20;
    for n in &lost {
        let at = log.acknowledged.iter().position(|(m, _)| m == n).unwrap();
        assert!(
            first_epoch2 - at <= 3 * per_second,
            "write {n} lost, {} writes before the failover",
            first_epoch2 - at
        );
    }
    checker.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_active_is_failed_over_only_after_its_lease_runs_out() {
    let h = up("kill-node", 1, json!({})).await;
    let checker = h.checker("web").await;
    let clients = h.clients("web", 3).await;
    // In steady state the standby follows the Lease by its watch: each of the
    // active's renewals reaches it, and it sends no read of its own.
    let views = |page: &str| {
        let v = |via: &str| {
            harness::scrape::metric_value(page, &format!("hapair_agent_lease_views_total{{via=\"{via}\"}}"))
        };
        (v("watch"), v("read"))
    };
    let before = views(&h.agent_metrics("web", Member::Secondary).await.unwrap());
    tokio::time::sleep(Duration::from_secs(5)).await;
    let after = views(&h.agent_metrics("web", Member::Secondary).await.unwrap());
    assert!(after.0 - before.0 >= 3.0, "the watch delivered {} renewals in 5 s of 1 s", after.0 - before.0);
    assert!(after.1 - before.1 <= 1.0, "the standby read the Lease {} times in 5 s", after.1 - before.1);
    let killed = Instant::now();
    h.kill("web", Member::Primary, Kill::Freeze).await;
    let p = h.wait_active(Member::Secondary, 2).await;
    let waited = killed.elapsed();
    let t = p.status.unwrap().last_transition.unwrap();
    assert_eq!(t.reason, "LeaseExpired");
    // Lease of 3 s: the old active fences at 2 s; nobody is promoted before.
    assert!(waited >= Duration::from_secs(2), "promoted after {waited:?}, before the old active could fence");
    h.wait_vip_writable("web", WRITABLE).await;
    eprintln!("unconfirmed failure: promoted {waited:?} after the kill");
    harness::history::assert_sound(&clients.stop().await);
    checker.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_the_active_pod_fails_over_and_the_pod_is_recreated_as_standby() {
    let h = up("delete-pod", 1, json!({})).await;
    let checker = h.checker("web").await;
    let clients = h.clients("web", 3).await;
    let pods = h.pods();
    let old_uid = pods.get("web-primary").await.unwrap().metadata.uid;
    pods.delete("web-primary", &Default::default()).await.unwrap();
    h.wait_active(Member::Secondary, 2).await;
    let p = h.wait_enabled("web", FAILOVER).await;
    assert_eq!(active(&p), Some(Member::Secondary));
    assert_ne!(pods.get("web-primary").await.unwrap().metadata.uid, old_uid, "a new primary pod");
    harness::history::assert_sound(&clients.stop().await);
    checker.assert_clean();
}

/// The API server cannot hear the active, but its peer can: the standby
/// promises not to act as active, the active serves on past its renewal
/// deadline, and the operator (which still reaches the active's agent) does
/// not fail over. Before, the active fenced at 2 s and the pair failed over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_active_cut_off_from_the_api_server_serves_on_while_its_peer_promises() {
    let h = up("partition", 1, json!({})).await;
    let checker = h.checker("web").await;
    let writer = h.writer("web").await;
    let clients = h.clients("web", 3).await;
    writer.wait_epoch(1, FAILOVER).await;
    h.partition("web", Member::Primary, true).await;
    // Five leases of 3 s without one renewal reaching the API server.
    tokio::time::sleep(Duration::from_secs(15)).await;
    let p = h.pair("web").await;
    assert_eq!((active(&p), epoch(&p)), (Some(Member::Primary), 1), "failed over although the active served on");
    h.partition("web", Member::Primary, false).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let log = writer.stop().await;
    assert!(log.acknowledged.iter().all(|(_, e)| *e == 1), "a write at another epoch: {log:?}");
    assert!(
        log.longest_outage < Duration::from_secs(1),
        "writes stopped for {:?} while the active was cut from the API server",
        log.longest_outage
    );
    let p = h.wait_enabled("web", FAILOVER).await;
    assert_eq!((active(&p), epoch(&p)), (Some(Member::Primary), 1));
    harness::history::assert_sound(&clients.stop().await);
    checker.assert_clean();
}

/// Cut from the API server and from its peer, nobody can promise: the
/// active fences before its Lease runs out, and only then is the standby
/// promoted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_active_cut_off_from_the_api_server_and_its_peer_fences_before_the_standby_is_promoted() {
    let h = up("partition-both", 1, json!({})).await;
    let checker = h.checker("web").await;
    let clients = h.clients("web", 3).await;
    h.cut_members_apart("web", true).await;
    h.partition("web", Member::Primary, true).await;
    h.wait_active(Member::Secondary, 2).await;
    h.wait_vip_writable("web", WRITABLE).await;
    assert_eq!(checker.both_active_samples(), 0, "the old active served while the new one was promoted");
    // Healed, the old active sees it lost the Lease and stays standby.
    h.partition("web", Member::Primary, false).await;
    h.cut_members_apart("web", false).await;
    let p = h.wait_enabled("web", FAILOVER).await;
    assert_eq!(active(&p), Some(Member::Secondary));
    harness::history::assert_sound(&clients.stop().await);
    checker.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manual_mode_raises_failover_required_and_does_not_fail_over() {
    let h = up("manual", 1, json!({"spec": {"failover": {"mode": "Manual"}}})).await;
    let checker = h.checker("web").await;
    h.kill("web", Member::Primary, Kill::Freeze).await;
    let p = h
        .wait_for("web", "FailoverRequired", FAILOVER, |p| {
            condition(p, "FailoverRequired").is_some_and(|c| c.0 == ConditionStatus::True)
        })
        .await;
    assert_eq!(condition(&p, "FailoverRequired").unwrap().1, "ManualFailover");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let p = h.pair("web").await;
    assert_eq!((active(&p), epoch(&p)), (Some(Member::Primary), 1), "no failover in manual mode");
    checker.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_flap_budget_stops_the_third_automatic_failover() {
    let budget = json!({"spec": {"failover": {"flapBudget": {"maxAutomaticFailovers": 2, "windowSeconds": 600}}}});
    let h = up("flap", 1, budget).await;
    let checker = h.checker("web").await;
    for (victim, next, e) in [(Member::Primary, Member::Secondary, 2), (Member::Secondary, Member::Primary, 3)] {
        h.kill("web", victim, Kill::App).await;
        h.wait_active(next, e).await;
        h.wait_enabled("web", FAILOVER).await;
    }
    h.kill("web", Member::Primary, Kill::App).await;
    let p = h
        .wait_for("web", "flap budget exhausted", FAILOVER, |p| {
            condition(p, "FailoverRequired").is_some_and(|c| c == (ConditionStatus::True, "FlapBudgetExhausted".into()))
        })
        .await;
    // The primary may take its own role back once its application
    // restarts (not a failover); the secondary must not get it a third time.
    let s = p.status.clone().unwrap();
    let failovers = s.history.iter().filter(|t| t.type_ == TransitionType::Failover).count();
    assert_eq!(failovers, 2, "no third failover: {:?}", s.history);
    assert_ne!(active(&p), Some(Member::Secondary));
    checker.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(feature = "fault-injection"), ignore = "needs the operator's test hooks: --features fault-injection")]
async fn an_operator_killed_between_the_lease_move_and_the_selector_move_converges_without_a_second_failover() {
    let mut h = Harness::new_with("restart", &[("HAPAIR_FAULT_EXIT_AT", "lease-moved")]).await;
    h.apply(&test_pair("web", 1, json!({}))).await;
    h.wait_enabled("web", BOOT).await;
    h.wait_vip_writable("web", WRITABLE).await;
    // The VIP may lag the Lease while no operator runs: a leader lease (4 s) and a reconcile.
    let checker = h.checker_with_grace("web", Duration::from_secs(8)).await;
    let clients = h.clients("web", 3).await;
    h.kill("web", Member::Primary, Kill::App).await;
    let leases: kube::Api<k8s_openapi::api::coordination::v1::Lease> =
        kube::Api::namespaced(h.client.clone(), &h.ns.name);
    let start = Instant::now();
    loop {
        let l = leases.get("web").await.unwrap().spec.unwrap();
        if l.lease_transitions == Some(2) {
            assert!(l.holder_identity.unwrap().starts_with("secondary/"));
            break;
        }
        assert!(start.elapsed() < FAILOVER, "the lease never moved");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let slices: kube::Api<k8s_openapi::api::discovery::v1::EndpointSlice> =
        kube::Api::namespaced(h.client.clone(), &h.ns.name);
    let routed: Vec<String> = slices
        .get("web-hapair")
        .await
        .unwrap()
        .endpoints
        .iter()
        .filter_map(|e| e.target_ref.as_ref()?.name.clone())
        .collect();
    assert_eq!(routed, ["web-primary"], "the operator died before moving the VIP's endpoint");
    h.start_operator();
    h.wait_active(Member::Secondary, 2).await;
    h.wait_vip_writable("web", WRITABLE).await;
    let p = h
        .wait_for("web", "status settled", FAILOVER, |p| {
            p.status.as_ref().is_some_and(|s| s.mode == Some(Mode::Enabled))
        })
        .await;
    assert_eq!(epoch(&p), 2, "no second failover");
    let s = h.pair("web").await.status.unwrap();
    assert_eq!(s.epoch, 2);
    harness::history::assert_sound(&clients.stop().await);
    checker.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_operator_leader_dies_the_other_replica_takes_over() {
    let mut h = Harness::new("leader").await;
    h.start_operator();
    h.apply(&test_pair("web", 1, json!({}))).await;
    h.wait_enabled("web", BOOT).await;
    h.wait_vip_writable("web", WRITABLE).await;
    let checker = h.checker_with_grace("web", Duration::from_secs(8)).await;
    let leader = h.leader().await.expect("one replica leads");
    h.kill_operator(leader).await;
    // A failure that lasts: a crashed application would be restarted by the
    // kubelet (at once, the first time) before the other replica leads.
    h.kill("web", Member::Primary, Kill::Freeze).await;
    h.wait_active(Member::Secondary, 2).await;
    assert_eq!(h.leader().await, Some(1 - leader), "the other replica leads");
    h.wait_vip_writable("web", WRITABLE).await;
    checker.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_application_whose_agent_is_frozen_stops_acting_as_active_by_the_role_files_deadline() {
    // 2 s x 3: the agent fences 4 s after its last renewal, the standby is
    // promoted only after 6 s without one.
    frozen_agent_stops_by_the_deadline("frozen-agent", 2, None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_shorter_heartbeat_a_frozen_agents_application_stops_by_the_new_deadline() {
    // 3 s x 3, then 1 s x 3: once the agent has published the shorter lease
    // its deadline is 2 s after a renewal, and the standby may be promoted
    // 3 s after one; an agent still counting 6 s would act past that.
    frozen_agent_stops_by_the_deadline("frozen-agent-hb", 3, Some(1)).await;
}

/// The active's agent frozen at a random phase of its renewal cycle (after
/// the heartbeat moved to `then` seconds, if given): its application, read
/// straight past the VIP, stops acknowledging by the role file's deadline,
/// `(missed - 1) x interval` after the last renewal, before the standby is
/// promoted.
async fn frozen_agent_stops_by_the_deadline(name: &str, interval: i32, then: Option<i32>) {
    use k8s_openapi::api::coordination::v1::Lease;
    use kube::Api;
    let h = up(name, interval, json!({})).await;
    let s = h.pair("web").await.status.unwrap();
    let (old, epoch) = (s.active_member.unwrap(), s.epoch);
    let interval = match then {
        None => interval,
        Some(i) => {
            h.merge_spec("web", json!({"heartbeat": {"intervalSeconds": i}})).await;
            // The agent has published the new lease, and the pair is whole again
            // (the standby's pod is replaced for its new settings).
            let leases: Api<Lease> = Api::namespaced(h.client.clone(), &h.ns.name);
            let start = Instant::now();
            while leases.get("web").await.unwrap().spec.unwrap().lease_duration_seconds != Some(3 * i) {
                assert!(start.elapsed() < Duration::from_secs(30), "the new lease was not published");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let p = h.wait_for("web", "Enabled with the new heartbeat", BOOT, |p| {
                p.status.as_ref().is_some_and(|s| {
                    s.mode == Some(hapair::api::Mode::Enabled)
                        && s.members.iter().all(|m| m.healthy == Some(true))
                        && s.epoch == epoch
                })
            });
            p.await;
            i
        }
    };
    let ip = h.member_pod("web", old).await.status.unwrap().pod_ip.unwrap();
    let writer = h.writer("web").await;
    writer.wait_epoch(epoch, Duration::from_secs(30)).await;
    // At a random phase of the renewal cycle.
    let cycle = 1000 * interval as u32;
    let phase =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_millis() * cycle / 1000;
    tokio::time::sleep(Duration::from_millis(phase as u64)).await;
    h.freeze_agent("web", old).await;
    let frozen = Instant::now();
    // Writes straight to the old active's application, past the VIP: the
    // way a client with a stale connection, or a job on the same pod, would.
    let fence = Duration::from_secs(2 * interval as u64);
    let mut last_ok = None;
    let mut n = 0;
    while frozen.elapsed() < fence + Duration::from_secs(interval as u64 + 3) {
        n += 1;
        // Once failed over, the former active's outdated pod may be replaced:
        // a refused or reset connection acknowledges nothing.
        let answer = harness::try_http_get(&format!("{ip}:8080"), &format!("/write?key=direct{n}&value={n}")).await;
        if answer.is_some_and(|(code, _)| code == 200) {
            last_ok = Some(frozen.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    writer.wait_epoch(epoch + 1, Duration::from_secs(30)).await;
    let promoted = frozen.elapsed();
    let last_ok = last_ok.expect("the old active served while its agent was frozen, until the deadline");
    eprintln!("agent frozen: old active acknowledged until {last_ok:?}; standby promoted by {promoted:?}");
    let limit = fence + Duration::from_millis(300);
    assert!(last_ok < limit, "the old active acted as active {last_ok:?} into the freeze (deadline {fence:?})");
    let log = writer.stop().await;
    let first_new = log.acknowledged.iter().position(|(_, e)| *e > epoch).expect("the new active acknowledged writes");
    assert!(log.answered_by[first_new..].iter().all(|(_, m)| *m != old.to_string()), "the old active answered again");
    h.thaw_all();
    h.wait_for("web", "the old active back as standby", Duration::from_secs(60), |p| {
        p.status.as_ref().is_some_and(|s| s.mode == Some(hapair::api::Mode::Enabled) && s.epoch > epoch)
    })
    .await;
}
