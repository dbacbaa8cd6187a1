//! A pair's life beyond failovers, on the real nodes: deleted and created
//! again over the members' kept claims (the manuals' "remove HA" without
//! losing data), and the claims going with the pair when asked.

mod common;
#[path = "../harness/mod.rs"]
mod harness;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use hapair::api::{ConditionStatus, HighAvailabilityPair, LABEL_PAIR, Member};
use harness::{Harness, test_pair};
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams};
use serde_json::json;

/// How long the garbage collector and the kubelets may take to remove what
/// a deleted pair owned.
const GONE: Duration = Duration::from_secs(90);
const WAIT: Duration = Duration::from_secs(60);

fn synced_pair(extra: serde_json::Value) -> serde_json::Value {
    let mut spec = json!({"spec": {
        "storage": {"size": "1Gi", "mountPath": "/data"},
        "fileSync": {"paths": [{"path": "."}], "realtimeIntervalSeconds": 1, "batchIntervalSeconds": 2}
    }});
    common::merge(&mut spec, &json!({"spec": extra}));
    test_pair("web", 2, spec)
}

fn synced(p: &HighAvailabilityPair) -> bool {
    p.status
        .as_ref()
        .is_some_and(|s| s.conditions.iter().any(|c| c.type_ == "Synced" && c.status == ConditionStatus::True))
}

/// The claims of pair `web`, by name: uid and the uids of their owners.
async fn claims(h: &Harness) -> BTreeMap<String, (String, Vec<String>)> {
    let api: Api<PersistentVolumeClaim> = Api::namespaced(h.client.clone(), &h.ns.name);
    let list = api.list(&ListParams::default().labels(&format!("{LABEL_PAIR}=web"))).await.unwrap();
    list.items
        .into_iter()
        .map(|c| {
            let owners = c.owner_references().iter().map(|o| o.uid.clone()).collect();
            (c.name_any(), (c.uid().unwrap_or_default(), owners))
        })
        .collect()
}

/// Waits until `check` holds for the claims, or fails saying what they were.
async fn wait_claims(h: &Harness, what: &str, check: impl Fn(&BTreeMap<String, (String, Vec<String>)>) -> bool) {
    let start = Instant::now();
    loop {
        let now = claims(h).await;
        if check(&now) {
            return;
        }
        assert!(start.elapsed() < GONE, "{what}: the claims are {now:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn delete_pair_and_wait_for_its_pods(h: &Harness) {
    h.pairs().delete("web", &DeleteParams::default()).await.unwrap();
    let pods: Api<Pod> = h.pods();
    let start = Instant::now();
    loop {
        let left = pods.list(&ListParams::default().labels(&format!("{LABEL_PAIR}=web"))).await.unwrap().items;
        if left.is_empty() && h.pairs().get_opt("web").await.unwrap().is_none() {
            return;
        }
        assert!(
            start.elapsed() < GONE,
            "the deleted pair's pods are still there: {:?}",
            left.iter().map(|p| p.name_any()).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn until_file(path: &Path, content: &[u8]) {
    let start = Instant::now();
    while std::fs::read(path).ok().as_deref() != Some(content) {
        assert!(start.elapsed() < WAIT, "{} never held what was written", path.display());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_pair_keeps_its_claims_and_the_same_pair_applied_again_serves_their_files() {
    let h = Harness::new("lifecycle-retain").await;
    h.apply(&synced_pair(json!({}))).await;
    h.wait_enabled("web", WAIT).await;
    h.wait_for("web", "Synced", WAIT, synced).await;
    let first_uid = h.pair("web").await.uid().unwrap();
    let (primary, secondary) = (h.data_dir("web", Member::Primary).await, h.data_dir("web", Member::Secondary).await);
    let kept: &[u8] = b"written before the pair was deleted";
    std::fs::write(primary.join("kept.txt"), kept).unwrap();
    until_file(&secondary.join("kept.txt"), kept).await;
    let before = claims(&h).await;
    assert_eq!(before.len(), 2, "{before:?}");
    assert!(before.values().all(|(_, owners)| owners.is_empty()), "kept claims have no owner: {before:?}");

    // Deleted: the pods go, the claims stay as they were.
    delete_pair_and_wait_for_its_pods(&h).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(claims(&h).await, before, "the claims outlive the pair");

    // Applied again: the same claims, the same files, on both members.
    h.apply(&synced_pair(json!({}))).await;
    let p = h.wait_enabled("web", WAIT).await;
    assert_ne!(p.uid().unwrap(), first_uid, "a new pair");
    h.wait_for("web", "Synced", WAIT, synced).await;
    assert_eq!(claims(&h).await, before, "the new pair mounts the kept claims");
    assert_eq!(h.data_dir("web", Member::Primary).await, primary);
    assert_eq!(h.data_dir("web", Member::Secondary).await, secondary);
    for dir in [&primary, &secondary] {
        assert_eq!(std::fs::read(dir.join("kept.txt")).unwrap(), kept, "{}", dir.display());
    }
    // And it goes on syncing over them.
    let active = h.pair("web").await.status.and_then(|s| s.active_member).expect("an active member");
    let (from, to) = if active == Member::Primary { (&primary, &secondary) } else { (&secondary, &primary) };
    std::fs::write(from.join("after.txt"), b"written after").unwrap();
    until_file(&to.join("after.txt"), b"written after").await;

    // `whenDeleted: Delete`: the claims become the pair's, and go with it.
    let second_uid = h.pair("web").await.uid().unwrap();
    h.merge_spec("web", json!({"persistentVolumeClaimRetentionPolicy": {"whenDeleted": "Delete"}})).await;
    wait_claims(&h, "owned by the pair", |c| c.len() == 2 && c.values().all(|(_, o)| o == &vec![second_uid.clone()]))
        .await;
    // Back to `Retain` releases them again.
    h.merge_spec("web", json!({"persistentVolumeClaimRetentionPolicy": {"whenDeleted": "Retain"}})).await;
    wait_claims(&h, "released", |c| c.len() == 2 && c.values().all(|(_, o)| o.is_empty())).await;
    h.merge_spec("web", json!({"persistentVolumeClaimRetentionPolicy": {"whenDeleted": "Delete"}})).await;
    wait_claims(&h, "owned again", |c| c.len() == 2 && c.values().all(|(_, o)| o == &vec![second_uid.clone()])).await;
    delete_pair_and_wait_for_its_pods(&h).await;
    wait_claims(&h, "deleted with the pair", |c| c.is_empty()).await;
}
