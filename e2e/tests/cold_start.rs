//! Both members down at once, on the testbed's real nodes (the EPN manual's
//! "Both HA servers are powered down" and "the secondary will not
//! restart"): the standby's node is killed first, the active writes on
//! alone, then its node is killed too, so the former active holds the
//! newest files. Whatever order the nodes come back in, the former active
//! serves again and the other resyncs from it; if only the older member
//! comes back, it serves after a bounded wait with `dataLossPossible`
//! recorded, and what the newer member held is kept in its quarantine when
//! it returns. Each test kills both nodes, so they run one at a time
//! (`make e2e-nodes`) under the node-fault lock.

mod common;
#[path = "../harness/mod.rs"]
mod harness;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hapair::api::{ConditionStatus, HighAvailabilityPair, Member, Mode, TransitionType};
use harness::nodes::{self, NodeFault, NodeFaultLock};
use harness::{Harness, WriteLog, test_pair};
use k8s_openapi::api::core::v1::Event;
use kube::api::{Api, ListParams};
use serde_json::json;

const BOOT: Duration = Duration::from_secs(120);
/// Heartbeat interval: a 9 s lease, so a member that returns waits
/// 2 × 9 + 5 = 23 s for the other (longer than a node takes to restart).
const INTERVAL: i32 = 3;
const WAIT_FOR_OTHER: Duration = Duration::from_secs(23);

fn status(p: &HighAvailabilityPair) -> &hapair::api::HighAvailabilityPairStatus {
    p.status.as_ref().expect("a status")
}

fn converged(p: &HighAvailabilityPair, active: Member) -> bool {
    p.status.as_ref().is_some_and(|s| {
        s.active_member == Some(active)
            && s.mode == Some(Mode::Enabled)
            && s.conditions.iter().any(|c| c.type_ == "Synced" && c.status == ConditionStatus::True)
    })
}

/// A pair syncing its whole volume every second, the primary active, each
/// member on its own node; returns the nodes (primary's, secondary's).
async fn up(name: &str) -> (Harness, [u32; 2]) {
    let h = Harness::new(name).await;
    let extra = json!({"spec": {
        "storage": {"size": "1Gi", "mountPath": "/data"},
        "fileSync": {"paths": [{"path": "."}], "realtimeIntervalSeconds": 1, "batchIntervalSeconds": 2}
    }});
    h.apply(&test_pair("web", INTERVAL, extra)).await;
    h.wait_for("web", "the primary active, the secondary synced", BOOT, |p| converged(p, Member::Primary)).await;
    let mut on = [0; 2];
    for (i, m) in Member::BOTH.into_iter().enumerate() {
        on[i] = nodes::node_number(&h.member_pod("web", m).await).expect("scheduled to a testbed node");
    }
    assert_ne!(on[0], on[1], "both members on one node");
    (h, on)
}

/// Both members go down, the standby first: the active writes alone for a
/// few seconds (writes only it holds), then its node dies too. Returns the
/// two faults (primary's node, secondary's) and the writes acknowledged.
async fn both_down(h: &Harness, on: [u32; 2]) -> (NodeFault, NodeFault, WriteLog) {
    let writer = h.writer("web").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let secondary = NodeFault::apply("kill", "restart", on[1]);
    h.wait_for("web", "the primary alone", BOOT, |p| p.status.as_ref().is_some_and(|s| s.mode == Some(Mode::Alone)))
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let primary = NodeFault::apply("kill", "restart", on[0]);
    let log = writer.stop().await;
    assert!(!log.acknowledged.is_empty(), "no write acknowledged before the nodes died");
    (primary, secondary, log)
}

/// The transitions recorded since `epoch` (newest first).
fn since(p: &HighAvailabilityPair, epoch: i64) -> Vec<&hapair::api::Transition> {
    status(p).history.iter().filter(|t| t.epoch > epoch).collect()
}

/// Every file under `dir` named `name`, at any depth.
fn find(dir: &Path, name: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else { return found };
    for e in entries.flatten() {
        let path = e.path();
        if path.is_dir() {
            found.extend(find(&path, name));
        } else if path.file_name().is_some_and(|n| n == name) {
            found.push(path);
        }
    }
    found
}

fn quarantined(data: &Path) -> Vec<PathBuf> {
    find(&data.join(".hapair").join("quarantine"), "writes.log")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_member_that_served_last_serves_again_whichever_node_returns_first() {
    let _lock = NodeFaultLock::take();
    let (h, on) = up("cold-start").await;
    let checker = h.checker("web").await;
    let data = [h.data_dir("web", Member::Primary).await, h.data_dir("web", Member::Secondary).await];

    // The secondary's node first: it waits for the primary, and says so.
    let at = status(&h.pair("web").await).epoch;
    let (primary, secondary, log) = both_down(&h, on).await;
    secondary.undo();
    h.wait_for("web", "the secondary waiting for the last active", BOOT, |p| {
        p.status.as_ref().is_some_and(|s| {
            s.conditions.iter().any(|c| c.type_ == "FailoverRequired" && c.reason == "WaitingForLastActive")
        })
    })
    .await;
    let waiting = Instant::now();
    primary.undo();
    assert!(
        waiting.elapsed() < WAIT_FOR_OTHER,
        "the primary's node took {:?} to return: longer than the wait, the test proves nothing",
        waiting.elapsed()
    );
    let p = h
        .wait_for("web", "the primary active again, the secondary synced", BOOT, |p| converged(p, Member::Primary))
        .await;
    let moves = since(&p, at);
    assert!(moves.iter().all(|t| t.to != Some(Member::Secondary)), "the secondary served: {moves:?}");
    assert!(moves.iter().all(|t| !t.data_loss_possible), "{moves:?}");
    let missing = log.missing_from(&data[1]);
    assert!(missing.is_empty(), "the secondary lacks acknowledged writes {missing:?} although synced");
    for d in &data {
        assert_eq!(quarantined(d), Vec::<PathBuf>::new(), "nothing is quarantined on {}", d.display());
    }

    // The primary's node first: it serves at once.
    let at = status(&p).epoch;
    let (primary, secondary, log) = both_down(&h, on).await;
    primary.undo();
    h.wait_for("web", "the primary active alone", BOOT, |p| {
        p.status.as_ref().is_some_and(|s| {
            s.active_member == Some(Member::Primary)
                && s.members.iter().any(|m| m.name == Member::Primary && m.role == hapair::api::Role::Active)
        })
    })
    .await;
    secondary.undo();
    let p = h.wait_for("web", "the pair whole again", BOOT, |p| converged(p, Member::Primary)).await;
    let moves = since(&p, at);
    assert!(moves.iter().all(|t| t.to != Some(Member::Secondary) && !t.data_loss_possible), "{moves:?}");
    assert!(log.missing_from(&data[1]).is_empty(), "the secondary lacks acknowledged writes");
    for d in &data {
        assert_eq!(quarantined(d), Vec::<PathBuf>::new(), "nothing is quarantined on {}", d.display());
    }
    checker.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_older_member_alone_serves_after_the_wait_and_the_newer_files_are_kept() {
    let _lock = NodeFaultLock::take();
    let (h, on) = up("cold-alone").await;
    let checker = h.checker("web").await;
    let data = [h.data_dir("web", Member::Primary).await, h.data_dir("web", Member::Secondary).await];
    let at = status(&h.pair("web").await).epoch;
    let (primary, secondary, log) = both_down(&h, on).await;
    let only_on_primary = log.missing_from(&data[1]);
    assert!(!only_on_primary.is_empty(), "the primary wrote nothing alone: the test proves nothing");

    // Only the secondary's node comes back.
    secondary.undo();
    let back = Instant::now();
    let p = h
        .wait_for("web", "the secondary serving after the wait", BOOT, |p| {
            p.status.as_ref().is_some_and(|s| s.active_member == Some(Member::Secondary))
        })
        .await;
    assert!(back.elapsed() >= WAIT_FOR_OTHER / 2, "the secondary served {:?} after its node returned", back.elapsed());
    let t = status(&p).last_transition.clone().unwrap();
    assert_eq!((t.type_, t.data_loss_possible, t.epoch > at), (TransitionType::Failover, true, true), "{t:?}");
    assert!(t.message.as_deref().unwrap_or_default().contains("did not return"), "{t:?}");
    let events: Api<Event> = Api::namespaced(h.client.clone(), &h.ns.name);
    let start = Instant::now();
    loop {
        let list = events.list(&ListParams::default().fields("involvedObject.name=web")).await.unwrap();
        if list.items.iter().any(|e| {
            e.type_.as_deref() == Some("Warning")
                && e.message.as_deref().is_some_and(|m| m.contains("data loss possible"))
        }) {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "no Warning Event saying data may be lost");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // The primary returns: it follows the secondary, and what only it held
    // is in its quarantine, not gone.
    primary.undo();
    h.wait_for("web", "the primary back as standby, synced", BOOT, |p| converged(p, Member::Secondary)).await;
    let kept: String = quarantined(&data[0]).iter().map(|f| std::fs::read_to_string(f).unwrap()).collect();
    let lost: Vec<u64> = only_on_primary
        .iter()
        .copied()
        .filter(|n| !kept.lines().any(|l| l.split(' ').nth(2) == Some(n.to_string().as_str())))
        .collect();
    assert!(lost.is_empty(), "acknowledged writes {lost:?} neither served on nor kept in the primary's quarantine");
    checker.assert_clean();
}
