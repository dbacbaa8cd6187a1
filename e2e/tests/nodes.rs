//! Whole nodes failing, on the testbed's real nodes: the active member's node
//! frozen (a paused VM), partitioned (its frames dropped, its processes
//! running on) and killed (powered off), and the operator keeping the two
//! members on different nodes. Each test fails a node every other pod also
//! runs on, so they run one at a time (`make e2e-nodes`), hold the node-fault
//! lock, and bring the node back before they end. The checker samples each.

mod common;
#[path = "../harness/mod.rs"]
mod harness;

use std::time::{Duration, Instant};

use hapair::api::{HighAvailabilityPair, Member, Role, TransitionType};
use harness::nodes::{self, NodeFault, NodeFaultLock};
use harness::{Harness, test_pair};
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;

const BOOT: Duration = Duration::from_secs(90);
const FAILOVER: Duration = Duration::from_secs(30);

fn active(p: &HighAvailabilityPair) -> Option<Member> {
    p.status.as_ref().and_then(|s| s.active_member)
}

fn epoch(p: &HighAvailabilityPair) -> i64 {
    p.status.as_ref().map_or(0, |s| s.epoch)
}

/// A pair with both members running, each on its own node; returns the
/// number of the active member's node.
async fn up(name: &str) -> (Harness, u32) {
    let h = Harness::new(name).await;
    nodes_ready(&h).await;
    h.apply(&test_pair("web", 1, json!({}))).await;
    let p = h.wait_enabled("web", BOOT).await;
    let mut on = Vec::new();
    for m in Member::BOTH {
        on.push(nodes::node_number(&h.member_pod("web", m).await).expect("scheduled to a testbed node"));
    }
    assert_ne!(on[0], on[1], "both members on node {}: the operator must keep them apart", on[0]);
    let active_node = h.member_pod("web", active(&p).unwrap()).await;
    (h, nodes::node_number(&active_node).unwrap())
}

/// Every node Ready: a node failed by an earlier test is back (a thawed
/// kubelet takes a status update or two to say so).
async fn nodes_ready(h: &Harness) {
    let api: Api<Node> = Api::all(h.client.clone());
    let start = Instant::now();
    loop {
        let list = api.list(&Default::default()).await.unwrap().items;
        let ready = |n: &Node| {
            n.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
                && !n.spec.as_ref().and_then(|s| s.unschedulable).unwrap_or(false)
        };
        if list.len() >= 2 && list.iter().all(ready) {
            return;
        }
        assert!(start.elapsed() < BOOT, "nodes not all Ready and schedulable");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn wait_failed_over(h: &Harness, from: Member, since: i64) -> HighAvailabilityPair {
    h.wait_for("web", "the other member active at a later epoch", FAILOVER, |p| {
        active(p) == Some(from.peer()) && epoch(p) > since
    })
    .await
}

async fn wait_writable(h: &Harness) {
    h.wait_vip_writable("web", FAILOVER).await;
}

/// The scenario every node fault shares: fail the active's node under
/// writes, see the standby promoted only after the old active's Lease ran out
/// (nothing can confirm a dead node), writes acknowledged again through the
/// ClusterIP by the new active, then heal the node and see the old active
/// come back as standby.
async fn active_node_fails(name: &str, fail: &str, heal: &'static str) {
    let _lock = NodeFaultLock::take();
    let (h, node) = up(name).await;
    let checker = h.checker("web").await;
    let p = h.pair("web").await;
    let (was, at) = (active(&p).unwrap(), epoch(&p));
    let writer = h.writer("web").await;
    let clients = h.clients("web", 3).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let failed = Instant::now();
    let fault = NodeFault::apply(fail, heal, node);
    let p = wait_failed_over(&h, was, at).await;
    let waited = failed.elapsed();
    let t = p.status.as_ref().unwrap().last_transition.clone().unwrap();
    assert_eq!(t.type_, TransitionType::Failover);
    // Lease of 3 s: the old active fences at 2 s; nobody is promoted before.
    assert!(
        waited >= Duration::from_secs(2),
        "promoted {waited:?} after the node {fail}: before the old active fenced"
    );
    wait_writable(&h).await;
    let new_epoch = epoch(&p);
    // The writer's own connection finds the new active too.
    writer.wait_epoch(new_epoch, FAILOVER).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let log = writer.stop().await;
    let served: Vec<_> = log
        .acknowledged
        .iter()
        .zip(&log.answered_by)
        .filter(|((_, e), _)| *e == new_epoch)
        .map(|(_, (_, m))| m.as_str())
        .collect();
    assert!(!served.is_empty(), "no write acknowledged at epoch {new_epoch}: {log:?}");
    assert!(served.iter().all(|m| *m == was.peer().as_str()), "epoch {new_epoch} writes answered by {served:?}");
    eprintln!("node {fail}: promoted after {waited:?}, client outage {:?}", log.longest_outage);

    fault.undo();
    let p = h
        .wait_for("web", "the old active back as standby", BOOT, |p| {
            p.status.as_ref().is_some_and(|s| {
                s.active_member == Some(was.peer())
                    && s.members.iter().any(|m| m.name == was && m.role == Role::Standby && m.healthy == Some(true))
            })
        })
        .await;
    assert_eq!(epoch(&p), new_epoch, "healing the node moved the role again");
    harness::history::assert_sound(&clients.stop().await);
    checker.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_active_node_frozen_fails_over_after_the_lease_and_returns_as_standby_when_thawed() {
    active_node_fails("node-freeze", "freeze", "thaw").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_active_node_partitioned_fails_over_after_the_lease_and_returns_as_standby_when_healed() {
    active_node_fails("node-partition", "partition", "heal").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_active_node_killed_fails_over_after_the_lease_and_returns_as_standby_when_restarted() {
    active_node_fails("node-kill", "kill", "restart").await;
}

/// The API server stalls for 20 s under a healthy pair. The agents still
/// reach each other, so the active serves on the standby's promise: no
/// write fails for longer than a blip, nothing fails over, and the epoch
/// is the same after. Before, the active fenced 2 s in and the service was
/// down for the whole stall.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_api_server_does_not_stop_a_healthy_pair() {
    let _lock = NodeFaultLock::take();
    let (h, _) = up("api-stall").await;
    let checker = h.checker("web").await;
    let p = h.pair("web").await;
    let (was, at) = (active(&p).unwrap(), epoch(&p));
    let writer = h.writer("web").await;
    let clients = h.clients("web", 3).await;
    let start = Instant::now();
    writer.wait_epoch(at, FAILOVER).await;
    let frozen_at = start.elapsed();
    let stall = nodes::ApiServerFrozen::freeze();
    tokio::time::sleep(Duration::from_secs(20)).await;
    stall.thaw();
    // Renewals reach the API server again; nothing may move meanwhile.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let log = writer.stop().await;
    let p = h.wait_enabled("web", BOOT).await;
    assert_eq!((active(&p), epoch(&p)), (Some(was), at), "the role moved after an API server stall");
    assert!(log.acknowledged.iter().all(|(_, e)| *e == at), "a write at another epoch: {log:?}");
    assert!(
        log.longest_outage < Duration::from_secs(1),
        "writes stopped for {:?} until {:?} after the writer started; the API server stalled from {frozen_at:?} for 20 s",
        log.longest_outage,
        log.longest_outage_ended,
    );
    eprintln!(
        "API server stalled 20 s: longest client outage {:?}, {} writes",
        log.longest_outage,
        log.acknowledged.len()
    );
    harness::history::assert_sound(&clients.stop().await);
    checker.assert_clean();
}

/// With one node unschedulable both members still run (on the other), and a
/// member recreated once both nodes take pods lands beside nobody.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_share_a_node_only_while_no_other_node_can_take_one() {
    let _lock = NodeFaultLock::take();
    let h = Harness::new("spread").await;
    nodes_ready(&h).await;
    let node_api: Api<Node> = Api::all(h.client.clone());
    let cordon = |on: bool| {
        let api = node_api.clone();
        async move {
            api.patch("hapair-node-2", &PatchParams::default(), &Patch::Merge(json!({"spec": {"unschedulable": on}})))
                .await
                .unwrap();
        }
    };
    cordon(true).await;
    h.apply(&test_pair("web", 1, json!({}))).await;
    let enabled = tokio::time::timeout(BOOT, h.wait_enabled("web", BOOT)).await;
    let placed: Vec<_> = {
        let mut v = Vec::new();
        for m in Member::BOTH {
            v.push(nodes::node_number(&h.member_pod("web", m).await));
        }
        v
    };
    cordon(false).await;
    assert!(enabled.is_ok(), "the pair did not come up on one node");
    assert_eq!(placed, [Some(1), Some(1)], "with node 2 cordoned both members run on node 1");

    // The standby's pod deleted: its replacement goes to the free node.
    let p = h.pair("web").await;
    let standby = active(&p).unwrap().peer();
    h.pods().delete(&standby.pod_name("web"), &Default::default()).await.unwrap();
    let start = Instant::now();
    loop {
        if let Ok(pod) = h.pods().get(&standby.pod_name("web")).await
            && pod.metadata.deletion_timestamp.is_none()
            && let Some(n) = nodes::node_number(&pod)
        {
            assert_eq!(n, 2, "the recreated {standby} must go to the node without a member");
            break;
        }
        assert!(start.elapsed() < BOOT, "the {standby} pod was not recreated");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
